"""Module by module: each vitjax class equals its vittorch twin on tiny, odd configs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import vittorch.vit as tv
from parity_tests.helpers import flax_twin, nchw, randomize_
from parity_tests.parity import assert_close
from vitjax.layers import LayerScale
from vitjax.models import vit as jv
from vitjax.models.vit_config import ViTConfig
from vitjax.util import to_2tuple

BASE = dict(img_size=(20, 28), patch_size=4, embed_dim=24, depth=2, num_heads=3, num_classes=5)
CONFIGS = {
    "plain": dict(BASE),
    "odd_width_rect_patch": dict(
        BASE,
        img_size=(15, 28),
        patch_size=(5, 7),
        embed_dim=30,
        num_heads=5,
        mlp_ratio=2.5,
        in_chans=1,
    ),
    "no_qkv_bias_eps1e-5": dict(BASE, qkv_bias=False, norm_eps=1e-5),
    "qk_norm_layerscale_gelu_tanh": dict(
        BASE, qk_norm=True, init_values=0.1, act_layer="gelu_tanh"
    ),
    "rmsnorm_avg_pool": dict(BASE, norm_layer="rmsnorm", global_pool="avg"),
    "reg_tokens_no_embed_class": dict(BASE, reg_tokens=2, no_embed_class=True),
    "clip_style": dict(BASE, pre_norm=True, act_layer="quick_gelu", norm_eps=1e-5),
    "no_cls_avgmax_embed_norm": dict(
        BASE, class_token=False, global_pool="avgmax", embed_norm=True
    ),
    "max_pool_no_proj_bias": dict(BASE, global_pool="max", proj_bias=False, fc_norm=False),
    "map_head": dict(BASE, global_pool="map", class_token=False),
    "no_pos_embed_no_pool": dict(BASE, pos_embed="none", global_pool="", final_norm=False),
    "pool_include_prefix": dict(BASE, global_pool="avg", reg_tokens=1, pool_include_prefix=True),
    "distilled": dict(BASE, distilled=True),
    "headless": dict(BASE, num_classes=0),
    "notebook_scale": dict(BASE, attn_scale=3**-0.5, qkv_bias=False, norm_eps=1e-5),
}


def _images(cfg: ViTConfig, batch: int, size: tuple[int, int] | None = None) -> np.ndarray:
    h, w = size or to_2tuple(cfg.img_size)
    return np.random.default_rng(1).standard_normal((batch, h, w, cfg.in_chans)).astype(np.float32)


def _tokens(cfg: ViTConfig, batch: int, n: int = 7) -> np.ndarray:
    return np.random.default_rng(2).standard_normal((batch, n, cfg.embed_dim)).astype(np.float32)


def _compare_on_tokens(t: torch.nn.Module, j, x: np.ndarray, name: str) -> None:
    """Randomise the torch module, copy its weights into the Flax one, compare outputs on x."""
    randomize_(t)
    with torch.no_grad():
        ref = t(torch.from_numpy(x)).numpy()
    assert_close(j.apply(flax_twin(j, t, x), x), ref, name)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_patch_embed_matches_torch(name):
    cfg = ViTConfig(**CONFIGS[name])
    x = _images(cfg, 3)
    t = randomize_(tv.PatchEmbed(cfg))
    j = jv.patch_embed_for(cfg)
    out = j.apply(flax_twin(j, t, x), x)
    with torch.no_grad():
        ref = t(nchw(x)).numpy()
    assert_close(out, ref, f"PatchEmbed[{name}]")


@pytest.mark.parametrize("name", list(CONFIGS))
def test_attention_matches_torch(name):
    cfg = ViTConfig(**CONFIGS[name])
    x = _tokens(cfg, 2)
    _compare_on_tokens(tv.Attention(cfg), jv.attention_for(cfg), x, f"Attention[{name}]")


@pytest.mark.parametrize("name", ["plain", "odd_width_rect_patch", "clip_style", "notebook_scale"])
def test_mlp_matches_torch(name):
    cfg = ViTConfig(**CONFIGS[name])
    x = _tokens(cfg, 3)
    _compare_on_tokens(
        tv.Mlp(cfg, cfg.embed_dim, cfg.mlp_hidden), jv.mlp_for(cfg), x, f"Mlp[{name}]"
    )


@pytest.mark.parametrize("name", list(CONFIGS))
def test_block_matches_torch(name):
    cfg = ViTConfig(**CONFIGS[name])
    x = _tokens(cfg, 3)
    _compare_on_tokens(tv.Block(cfg), jv.Block(cfg), x, f"Block[{name}]")


def test_layer_scale_matches_torch():
    x = _tokens(ViTConfig(**BASE), 2)
    _compare_on_tokens(tv.LayerScale(24, 0.1), LayerScale(24, 0.1), x, "LayerScale")


def test_attention_pool_matches_torch():
    cfg = ViTConfig(**CONFIGS["map_head"])
    x = _tokens(cfg, 3, n=11)
    _compare_on_tokens(tv.AttentionPoolLatent(cfg), jv.attn_pool_for(cfg), x, "AttentionPoolLatent")


def _vit_pair(cfg: ViTConfig, x: np.ndarray):
    t = randomize_(tv.VisionTransformer(cfg))
    j = jv.VisionTransformer(cfg)
    return t, j, flax_twin(j, t, x)


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("batch", [2, 3])
def test_vision_transformer_matches_torch(name, batch):
    cfg = ViTConfig(**CONFIGS[name])
    x = _images(cfg, batch)
    t, j, variables = _vit_pair(cfg, x)
    with torch.no_grad():
        feats = t.forward_features(nchw(x))
        pre, logits = t.forward_head(feats, pre_logits=True), t(nchw(x))
    assert_close(j.apply(variables, x, method=j.forward_features), feats, f"features[{name}]")
    assert_close(j.apply(variables, x, pre_logits=True), pre, f"pre_logits[{name}]")
    assert_close(j.apply(variables, x), logits, f"logits[{name}]")


@pytest.mark.parametrize("size", [(20, 28), (12, 36), (23, 17)], ids=str)
def test_dynamic_img_size_matches_torch(size):
    cfg = ViTConfig(**dict(BASE, dynamic_img_size=True, dynamic_img_pad=True, reg_tokens=1))
    x0 = _images(cfg, 2)
    t, j, variables = _vit_pair(cfg, x0)
    x = _images(cfg, 2, size)
    with torch.no_grad():
        ref = t(nchw(x)).numpy()
    assert_close(j.apply(variables, x), ref, f"dynamic_img_size[{size}]")


def test_train_mode_without_dropout_matches_eval():
    cfg = ViTConfig(**BASE)
    x = _images(cfg, 2)
    _, j, variables = _vit_pair(cfg, x)
    assert_close(
        j.apply(variables, x, train=True), j.apply(variables, x), "train==eval", atol=0, rtol=0
    )


def test_wrong_image_size_is_refused():
    cfg = ViTConfig(**BASE)
    j = jv.VisionTransformer(cfg)
    with pytest.raises(ValueError, match=r"\(24, 28\) does not match"):
        j.init(__import__("jax").random.PRNGKey(0), np.zeros((1, 24, 28, 3), np.float32))
