"""The option surface, option by option: timm's VisionTransformer(**option) -> vitjax and vittorch.

Each timm model is tiny (32 px, patch 8, width 48, depth 2) with random non-trivial weights;
vitjax.from_timm reads its config and weights, vittorch loads the same state_dict strictly, and
both match timm's logits. Parts vitjax does not mirror are refused by name.
"""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest
import torch
from devtools.timm_verify import flax_forward, randomize_, timm_forward
from timm.layers import AttentionPoolLatent
from timm.models.deit import VisionTransformerDistilled
from timm.models.vision_transformer import VisionTransformer

import vitjax
import vittorch
from parity_tests.parity import assert_close
from vitjax.models.vit_timm import UnsupportedModelError, config_from_timm

BASE = dict(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3, num_classes=5)

OPTIONS = {
    "plain": {},
    "no_class_token_avg": dict(class_token=False, global_pool="avg"),
    "reg_tokens_token_pool": dict(reg_tokens=2),
    "reg_tokens_avg": dict(reg_tokens=3, global_pool="avg"),
    "no_embed_class_reg": dict(no_embed_class=True, reg_tokens=2),
    "pos_embed_none": dict(pos_embed="none"),
    "pre_norm": dict(pre_norm=True),
    "final_norm_off": dict(final_norm=False),
    "fc_norm_on_token": dict(fc_norm=True),
    "fc_norm_off_avg": dict(global_pool="avg", fc_norm=False),
    "pool_none": dict(global_pool=""),
    "pool_max": dict(global_pool="max"),
    "pool_avgmax": dict(global_pool="avgmax"),
    "pool_map": dict(global_pool="map", class_token=False),
    "pool_map_include_prefix": dict(global_pool="map", reg_tokens=1, pool_include_prefix=True),
    "pool_avg_include_prefix": dict(global_pool="avg", pool_include_prefix=True),
    "qkv_bias_off": dict(qkv_bias=False),
    "qk_norm": dict(qk_norm=True),
    "proj_bias_off": dict(proj_bias=False),
    "init_values": dict(init_values=1e-5),
    "gelu_tanh": dict(act_layer="gelu_tanh"),
    "quick_gelu": dict(act_layer="quick_gelu"),
    "rmsnorm": dict(norm_layer="rmsnorm"),
    "rmsnorm_qk_norm": dict(norm_layer="rmsnorm", qk_norm=True),
    "layernorm_eps_1e-5": dict(norm_layer=partial(torch.nn.LayerNorm, eps=1e-5)),
    "mlp_ratio_2.7": dict(mlp_ratio=2.7),
    "embed_norm": dict(embed_norm_layer="layernorm"),
    "rect_img_and_patch": dict(img_size=(32, 48), patch_size=(8, 16)),
    "img_not_divisible_floors": dict(img_size=(36, 30)),  # as so400m_patch14 at 384 px
    "headless": dict(num_classes=0),
    "eval_with_drop_rates": dict(drop_rate=0.1, pos_drop_rate=0.1, proj_drop_rate=0.1,
                                 attn_drop_rate=0.1, drop_path_rate=0.2),
    "dynamic_img_size": dict(dynamic_img_size=True),
    "dynamic_img_pad": dict(dynamic_img_size=True, dynamic_img_pad=True),
}  # fmt: skip
DISTILLED = {"distilled": {}, "distilled_48px": dict(img_size=48)}
# Other input sizes for the dynamic options (H, W).
DYNAMIC_SIZES = {"dynamic_img_size": [(40, 24), (16, 56)], "dynamic_img_pad": [(37, 29)]}


def _timm(option: dict, cls=VisionTransformer, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return randomize_(cls(**{**BASE, **option}), seed)


def _x(module, size=None, batch=2) -> np.ndarray:
    h, w = size or module.patch_embed.img_size
    return np.random.default_rng(1).standard_normal((batch, h, w, 3)).astype(np.float32)


def _check(module: torch.nn.Module, label: str, sizes=(None,)) -> None:
    model, variables = vitjax.from_timm(module)
    net = vittorch.VisionTransformer(model.cfg)
    net.load_state_dict(module.state_dict(), strict=True)
    net.eval()
    for size in sizes:
        x = _x(module, size)
        want, want_pre = timm_forward(module, x)
        got, got_pre = flax_forward(model, variables, x)
        with torch.no_grad():
            ref = net(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
        assert_close(got, want, f"{label}{size or ''} logits")
        assert_close(got_pre, want_pre, f"{label}{size or ''} pre_logits")
        assert_close(ref, want, f"vittorch {label}{size or ''} logits")


@pytest.mark.parametrize("option", sorted(OPTIONS))
def test_option_matches_torch(option):
    module = _timm(OPTIONS[option])
    _check(module, option, [None, *DYNAMIC_SIZES.get(option, [])])


@pytest.mark.parametrize("option", sorted(DISTILLED))
def test_distilled_option_matches_torch(option):
    module = _timm(DISTILLED[option], VisionTransformerDistilled)
    assert config_from_timm(module).distilled
    _check(module, option)


def test_config_reads_timm_option_values():
    cfg = config_from_timm(_timm(OPTIONS["eval_with_drop_rates"]))
    assert (cfg.drop_rate, cfg.pos_drop_rate, cfg.proj_drop_rate, cfg.attn_drop_rate) == (0.1,) * 4
    assert cfg.drop_path_rate == pytest.approx(0.2)
    cfg = config_from_timm(_timm(dict(mlp_ratio=2.7, init_values=1e-5, norm_layer="rmsnorm")))
    assert (cfg.mlp_hidden, cfg.init_values, cfg.norm_layer) == (int(48 * 2.7), 1e-5, "rmsnorm")
    assert config_from_timm(_timm({})).fc_norm is None


def _swap_norm(m):
    m.norm = torch.nn.LayerNorm(48, eps=1e-5)
    return m


def _latent_pool(m):
    m.attn_pool = AttentionPoolLatent(48, num_heads=3, latent_len=2)
    return m


REFUSALS = {
    "patch_drop": (dict(patch_drop_rate=0.1), None),
    "prr": (dict(global_pool="prr"), None),
    "scale_attn_norm": (dict(scale_attn_norm=True), None),
    "scale_mlp_norm": (dict(scale_mlp_norm=True), None),
    "norm with another norm kind or eps": ({}, _swap_norm),
    "latent_len": (dict(global_pool="map"), _latent_pool),
    "pos_embed of shape": (dict(no_embed_class=True), VisionTransformerDistilled),
}


@pytest.mark.parametrize("part", sorted(REFUSALS))
def test_unsupported_part_is_refused_by_name(part):
    option, edit = REFUSALS[part]
    if edit is VisionTransformerDistilled:  # timm's own forward fails on this combination
        module = _timm(option, VisionTransformerDistilled)
    else:
        module = _timm(option) if edit is None else edit(_timm(option))
    with pytest.raises(UnsupportedModelError, match=part):
        vitjax.from_timm(module)
