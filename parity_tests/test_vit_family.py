"""timm's other VisionTransformer parts as whole models: ResPostBlock, ParallelThingsBlock,
ParallelScalingBlock (split and fused out_proj), DiffAttention (vector and dual lambdas),
DiffParallelScalingBlock, GluMlp / SwiGLUPacked / SwiGLU.

Each case is a timm name with kwargs (depth 2), built in timm from the kwargs
vitjax.models.vit_timm.timm_model_args gives for the config, with random weights; both paths
(vitjax.from_timm and vitjax.create_model(name, checkpoint_path=file, **kwargs)) must give the
config and the same variables, the logits must match timm's, and the export must load into
timm.create_model(name, **timm_kwargs) with strict=True and give the same logits. One model per
part runs at full depth where that stays small.
"""

from __future__ import annotations

import re
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import timm
import torch
from devtools.timm_verify import (
    flax_forward,
    images,
    make_timm,
    max_diff,
    save_timm_checkpoint,
    timm_forward,
)
from timm.models import vision_transformer as tv

import vitjax
from parity_tests.parity import assert_close
from vitjax.layers import blocks
from vitjax.models.common import UnsupportedModelError
from vitjax.models.vit_config import ViTConfig
from vitjax.models.vit_timm import checkpoint_filter_fn, config_from_timm, timm_model_args
from vitjax.registry import get_config

_SMALL = dict(embed_dim=192, num_heads=3)  # width cut for the wide ones; every feature kept

# id -> (timm name, create_model kwargs, file format); depth 2, small images (a 4x4 to 6x6 grid).
CASES = {
    "respost": ("vit_base_patch16_rpn_224", dict(depth=2, img_size=96), "safetensors"),
    "respost_diff_swiglu_packed": (
        "vit_base_patch16_rpn_224",
        dict(
            depth=2,
            img_size=64,
            attn_layer="diff",
            mlp_layer="swiglu_packed",
            act_layer="silu",
            **_SMALL,
        ),
        "pth",
    ),  # fmt: skip
    "things": ("vit_small_patch16_18x2_224", dict(depth=2, img_size=96), "pth"),
    "things_3x_diff_dual": (
        "vit_small_patch16_18x2_224",
        dict(depth=2, img_size=64, num_parallel=3, attn_layer="diff", dual_lambda=True, **_SMALL),
        "safetensors",
    ),
    "parallel_scaling_rms_qknorm": (
        "vit_base_patch16_xp_224",
        dict(depth=2, img_size=96),
        "safetensors",
    ),
    "parallel_scaling_fused_qkvbias": (
        "vit_pwee_patch16_reg1_gap_256",
        dict(depth=2, img_size=64, fuse_out_proj=True),
        "pth",
    ),
    "diff_attention": ("vit_dwee_patch16_reg1_gap_256", dict(depth=2, img_size=96), "safetensors"),
    "diff_attention_dual_qknorm": (
        "vit_dwee_patch16_reg1_gap_256",
        dict(depth=2, img_size=64, dual_lambda=True, qk_norm=True),
        "pth",
    ),
    "diff_parallel": ("vit_dpwee_patch16_reg1_gap_256", dict(depth=2, img_size=96), "safetensors"),
    "diff_parallel_dual_rms": (
        "vit_dpwee_patch16_reg1_gap_256",
        dict(depth=2, img_size=64, dual_lambda=True, norm_layer="rmsnorm", qkv_bias=False),
        "pth",
    ),
    "swiglu_packed": (
        "vit_giant_patch14_dinov2",
        dict(depth=2, img_size=70, embed_dim=384, num_heads=6),
        "safetensors",
    ),
    "swiglu": (
        "test_vit",
        dict(depth=2, img_size=64, mlp_layer="swiglu", act_layer="silu"),
        "pth",
    ),
    "glu": (
        "test_vit",
        dict(depth=2, img_size=64, mlp_layer="glu", proj_bias=False),
        "safetensors",
    ),
}

# One registered model per part at its full depth (the narrow ones; 128 px images). Not run at
# full depth: vit_base_patch16_rpn_224 (ResPostBlock, base width), vit_small_patch16_18x2_224
# (36 attention + 36 MLP branches), the xp models and the SwiGLUPacked giants (base to giant
# width); their depth-2 cases above keep every feature.
FULL_DEPTH = [
    "vit_pwee_patch16_reg1_gap_256",
    "vit_dwee_patch16_reg1_gap_256",
    "vit_dpwee_patch16_reg1_gap_256",
]


def _timm_twin(name: str, cfg: ViTConfig, seed: int = 0) -> torch.nn.Module:
    """timm.create_model(name) with the kwargs that make it cfg, random weights, eval mode."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return make_timm(name, seed, **timm_model_args(name, cfg))


def _timm_loading(name: str, cfg: ViTConfig, sd: dict[str, np.ndarray]) -> torch.nn.Module:
    """timm.create_model(name, ...) for cfg (built on meta, no init) holding sd (strict load)."""
    with warnings.catch_warnings(), torch.device("meta"):
        warnings.simplefilter("ignore")
        twin = timm.create_model(name, pretrained=False, **timm_model_args(name, cfg))
    sd = {k: torch.from_numpy(np.array(v)) for k, v in sd.items()}
    twin.load_state_dict(sd, strict=True, assign=True)
    return twin.eval()


def _assert_logits(got: np.ndarray, want: np.ndarray, what: str, dtype: str = "float32") -> None:
    assert_close(got, want, what, dtype=dtype)
    rel = max_diff(got, want)["rel"]
    assert rel <= 1e-5, f"{what}: relative max |diff| {rel:.2e}"


def _same_tree(a, b) -> None:
    fa, fb = (jax.tree_util.tree_flatten_with_path(t)[0] for t in (a, b))
    assert [p for p, _ in fa] == [p for p, _ in fb]
    for (path, x), (_, y) in zip(fa, fb, strict=True):
        assert np.array_equal(np.asarray(x), np.asarray(y)), jax.tree_util.keystr(path)


@pytest.mark.parametrize("case", list(CASES))
def test_vit_family_model_matches_torch(case, tmp_path):
    name, kwargs, fmt = CASES[case]
    cfg = get_config(name, **kwargs)
    module = _timm_twin(name, cfg)
    from_timm, from_timm_vars = vitjax.from_timm(module)
    assert from_timm.cfg == cfg
    path = save_timm_checkpoint(module, tmp_path / "ckpt", fmt)
    model, variables = vitjax.create_model(name, checkpoint_path=path, **kwargs)
    assert model.cfg == cfg
    _same_tree(from_timm_vars, variables)  # both paths hold timm's weights, bit for bit
    x = images(module, batch=2)
    want, want_pre = timm_forward(module, x)
    got, got_pre = flax_forward(model, variables, x)
    _assert_logits(got, want, f"{case} logits")
    _assert_logits(got_pre, want_pre, f"{case} pre_logits")

    twin = _timm_loading(name, cfg, vitjax.to_timm_state_dict(model, variables))
    _assert_logits(got, timm_forward(twin, x)[0], f"{case} exported logits")


@pytest.mark.slow
@pytest.mark.parametrize("name", FULL_DEPTH)
def test_vit_family_full_depth_matches_torch(name):
    module = make_timm(name, img_size=128)
    model, variables = vitjax.from_timm(module)
    assert model.cfg == get_config(name, img_size=128)
    x = images(module, batch=1)
    with jax.default_matmul_precision("highest"):
        got = np.asarray(jax.jit(model.apply)(variables, x))  # logits only: half the compile
    _assert_logits(got, timm_forward(module, x)[0], f"{name} logits (full depth)", "float32_model")


@pytest.mark.parametrize(
    "name,kwargs",
    [
        ("vit_dwee_patch16_reg1_gap_256", dict(depth=4)),
        ("vit_dpwee_patch16_reg1_gap_256", dict(depth=4)),
        ("vit_small_patch16_18x2_224", dict(depth=3, attn_layer="diff", **_SMALL)),
        ("vit_base_patch16_rpn_224", dict(depth=3, attn_layer="diff", **_SMALL)),
    ],
)
def test_diff_lambda_init_follows_block_index(name, kwargs):
    """Block i's lambda_init is timm's 0.8 - 0.6 exp(-0.3 i), in every block type."""
    cfg = get_config(name, **kwargs)
    module = _timm_twin(name, cfg)
    model, variables = vitjax.from_timm(module)
    got = _lambda_inits(model.bind(variables).blocks, cfg.block_fn)
    want = _lambda_inits(module.blocks, cfg.block_fn)
    assert got == want and len(set(got)) == len(got), (got, want)


def _lambda_inits(blocks, block_fn: str) -> list[float]:
    """Each block's lambda_init; timm's and vitjax's modules share the attribute names."""
    if block_fn == "DiffParallelScalingBlock":
        return [b.lambda_init for b in blocks]
    if block_fn == "ParallelThingsBlock":
        return [b.attns[0].attn.lambda_init for b in blocks]
    return [b.attn.lambda_init for b in blocks]


def test_config_from_timm_refuses_a_lambda_init_off_the_index_rule():
    name = "vit_dwee_patch16_reg1_gap_256"
    module = _timm_twin(name, get_config(name, depth=2))
    module.blocks[1].attn.set_lambda_init(0)  # block 1 with block 0's lambda_init
    with pytest.raises(UnsupportedModelError, match=r"blocks\.1\.attn\.lambda_init"):
        config_from_timm(module)


def test_res_post_block_norms_start_at_init_values():
    """timm's ResPostBlock.init_weights: norm1 / norm2 weights = init_values (vitjax's init)."""
    tm = tv.ResPostBlock(dim=24, num_heads=2, init_values=1e-5)
    fm = blocks.ResPostBlock(dim=24, num_heads=2, init_values=1e-5)
    params = fm.init(jax.random.PRNGKey(0), jnp.zeros((1, 3, 24)))["params"]
    for n in ("norm1", "norm2"):
        want = getattr(tm, n).weight.detach().numpy()
        assert np.array_equal(np.asarray(params[n]["scale"]), want), n
    assert want[0] == np.float32(1e-5)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(block_fn="ParallelScalingBlock", mlp_layer="swiglu"), "attn_layer / mlp_layer"),
        (dict(block_fn="DiffParallelScalingBlock", attn_layer="diff"), "attn_layer / mlp_layer"),
        (dict(fuse_out_proj=True), "fuse_out_proj"),
        (dict(block_fn="ResPostBlock", num_parallel=3), "num_parallel"),
        (dict(dual_lambda=True), "dual_lambda"),
        (dict(attn_layer="diff", num_heads=7, embed_dim=35), "2 \\* num_heads"),
        (dict(mlp_layer="glu", mlp_ratio=1.5, embed_dim=6, num_heads=1), "even"),
        (dict(block_fn="ResPostBlock", attn_scale=0.5), "attn_scale"),
        (dict(block_fn="Blocks"), "block_fn"),
        (dict(mlp_layer="geglu"), "mlp_layer"),
    ],
)
def test_config_refuses_options_the_block_does_not_use(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ViTConfig(**kwargs)


def test_config_round_trips_through_dict():
    cfg = get_config("vit_small_patch16_18x2_224", num_parallel=3, attn_layer="diff",
                     dual_lambda=True)  # fmt: skip
    assert ViTConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("name", ["vit_base_patch16_xp_224", "vit_giant_patch14_dinov2"])
def test_require_plain_names_the_option(name):
    cfg = get_config(name, depth=1)
    with pytest.raises(ValueError, match="block_fn='ParallelScalingBlock'|mlp_layer='swiglu_p"):
        cfg.require_plain()
    get_config("vit_base_patch16_224").require_plain()  # the plain ViT passes


def test_vittorch_refuses_non_plain_blocks():
    import vittorch

    with pytest.raises(ValueError, match="block_fn='ResPostBlock'"):
        vittorch.create_model("vit_base_patch16_rpn_224", depth=1)


def test_dinov2_swiglu_layout_filters_as_timm_does():
    """Meta's DINOv2 giant keys (mlp.w12 / mlp.w3, register_tokens, mask_token) -> timm's."""
    name, kwargs = "vit_giant_patch14_reg4_dinov2", dict(depth=1, embed_dim=96, num_heads=2)
    cfg = get_config(name, img_size=42, **kwargs)
    module = _timm_twin(name, cfg)
    sd = {k: v.detach().numpy() for k, v in module.state_dict().items()}
    meta = {re.sub(r"mlp\.fc([12])", lambda m: "mlp.w12" if m[1] == "1" else "mlp.w3", k): v
            for k, v in sd.items() if k not in ("cls_token", "pos_embed", "reg_token")}  # fmt: skip
    p0 = np.random.default_rng(0).standard_normal((1, 1, 96)).astype(np.float32)
    meta.update(
        register_tokens=sd["reg_token"], mask_token=np.zeros((1, 96), np.float32),
        cls_token=sd["cls_token"] - p0, pos_embed=np.concatenate([p0, sd["pos_embed"]], 1),
    )  # fmt: skip
    want = tv.checkpoint_filter_fn({k: torch.from_numpy(v) for k, v in meta.items()}, module)
    got = checkpoint_filter_fn(meta, cfg)
    assert sorted(got) == sorted(want) == sorted(sd)
    for k in sd:
        assert_close(got[k], want[k], f"dinov2 layout {k}", dtype="exact")
