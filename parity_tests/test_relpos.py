"""The relpos family (timm's VisionTransformerRelPos) against timm: buffers, modules, models."""

from __future__ import annotations

import json
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import timm
import torch
from timm.layers import RelPosBias as TorchRelPosBias
from timm.layers import RelPosMlp as TorchRelPosMlp
from timm.layers import resize_rel_pos_bias_table as torch_resize_table
from timm.models import vision_transformer_relpos as tr

from parity_tests.helpers import flax_twin, nchw, randomize_, torch_state
from parity_tests.parity import assert_close
from vitjax.models import relpos
from vitjax.weights import convert

GRIDS = [(3, 3), (2, 5), (4, 3)]


def _torch_rel_pos(kind: str, grid, heads: int, prefix: int, hidden: int = 16):
    if kind == "bias":
        return TorchRelPosBias(grid, heads, prefix_tokens=prefix)
    mode = "swin" if kind == "mlp_swin" else "cr"
    return TorchRelPosMlp(grid, heads, hidden_dim=hidden, prefix_tokens=prefix, mode=mode)


def _flax_rel_pos(kind: str, grid, heads: int, prefix: int, hidden: int = 16):
    if kind == "bias":
        return relpos.RelPosBias(grid, heads, prefix_tokens=prefix)
    mode = "swin" if kind == "mlp_swin" else "cr"
    return relpos.RelPosMlp(grid, heads, hidden_dim=hidden, prefix_tokens=prefix, mode=mode)


def _twin(flax_module, torch_module, *example, method=None):
    shapes = jax.eval_shape(
        partial(flax_module.init, method=method), jax.random.PRNGKey(0), *example
    )["params"]
    params = convert.torch_to_flax(torch_state(torch_module), shapes)
    return {"params": jax.tree_util.tree_map(jnp.asarray, params)}


# --- buffers and bias modules -----------------------------------------------------------------


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("prefix", [0, 1])
def test_relative_position_index_matches_torch(grid, prefix):
    want = TorchRelPosBias(grid, 2, prefix_tokens=prefix).relative_position_index.numpy()
    got = relpos.gen_relative_position_index(grid, class_token=prefix > 0).reshape(-1)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("mode", ["cr", "swin"])
def test_rel_coords_log_matches_torch(grid, mode):
    tm = TorchRelPosMlp(grid, 2, mode=mode)
    assert_close(relpos.gen_relative_log_coords(grid, mode=mode), tm.rel_coords_log,
                 f"rel_coords_log[{mode}-{grid}]")  # fmt: skip
    np.testing.assert_array_equal(
        relpos.gen_relative_position_index(grid).reshape(-1), tm.relative_position_index.numpy()
    )


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("prefix", [0, 1])
@pytest.mark.parametrize("kind", ["bias", "mlp", "mlp_swin"])
def test_rel_pos_bias_matches_torch(kind, grid, prefix):
    tm = randomize_(_torch_rel_pos(kind, grid, 3, prefix), seed=2)
    fm = _flax_rel_pos(kind, grid, 3, prefix)
    variables = _twin(fm, tm, method="get_bias")
    got = fm.apply(variables, method="get_bias")
    with torch.no_grad():
        want = tm.get_bias()
    assert_close(got, want, f"{type(tm).__name__}[{kind}-{grid}-prefix{prefix}]")


def test_rel_pos_buffers_are_not_state():
    """timm's index tables / log coords are non-persistent: no variables, no state_dict keys."""
    for kind in ("bias", "mlp"):
        tm = _torch_rel_pos(kind, (3, 4), 2, 1)
        fm = _flax_rel_pos(kind, (3, 4), 2, 1)
        shapes = jax.eval_shape(partial(fm.init, method="get_bias"), jax.random.PRNGKey(0))
        params = jax.tree_util.tree_map(lambda s: np.zeros(s.shape), shapes["params"])
        assert set(convert.flax_to_torch(params)) == set(tm.state_dict())
        assert not set(tm.state_dict()) & {"relative_position_index", "rel_coords_log"}


# --- attention and blocks ---------------------------------------------------------------------

ATTN = {
    "mlp_cr_qkvbias": dict(kind="mlp", qkv_bias=True, prefix=0),
    "mlp_swin_cls_qknorm": dict(kind="mlp_swin", qk_norm=True, prefix=1),
    "bias_table_cls": dict(kind="bias", prefix=1),
    "shared_bias": dict(kind="shared", prefix=0),
}


def _attn_pair(cfg: dict, grid=(2, 3), dim=36, heads=3):
    kind, prefix = cfg["kind"], cfg["prefix"]
    kw = dict(qkv_bias=cfg.get("qkv_bias", False), qk_norm=cfg.get("qk_norm", False))
    shared = None
    if kind == "shared":
        t_cls = f_cls = None
        shared = np.random.default_rng(3).standard_normal((1, heads, 6 + prefix, 6 + prefix))
        shared = shared.astype(np.float32)
    else:
        mode = "swin" if kind == "mlp_swin" else "cr"
        t_base = TorchRelPosBias if kind == "bias" else partial(TorchRelPosMlp, mode=mode)
        f_base = relpos.RelPosBias if kind == "bias" else partial(relpos.RelPosMlp, mode=mode)
        t_cls = partial(t_base, window_size=grid, prefix_tokens=prefix)
        f_cls = partial(f_base, window_size=grid, prefix_tokens=prefix)
    tm = tr.RelPosAttention(
        dim, heads, rel_pos_cls=t_cls, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), **kw
    )
    fm = relpos.RelPosAttention(dim, heads, rel_pos_cls=f_cls, **kw)
    return tm, fm, shared


@pytest.mark.parametrize("config", list(ATTN))
def test_rel_pos_attention_matches_torch(config):
    tm, fm, shared = _attn_pair(ATTN[config])
    randomize_(tm, seed=4)
    n = 6 + ATTN[config]["prefix"]
    x = np.random.default_rng(0).standard_normal((2, n, 36)).astype(np.float32)
    s = None if shared is None else jnp.asarray(shared)
    variables = flax_twin(fm, tm, jnp.asarray(x), s)
    got = fm.apply(variables, jnp.asarray(x), s)
    with torch.no_grad():
        t_shared = None if shared is None else torch.from_numpy(shared)
        want = tm(torch.from_numpy(x), shared_rel_pos=t_shared)
    assert_close(got, want, f"RelPosAttention[{config}]")


@pytest.mark.parametrize("block_fn", ["RelPosBlock", "ResPostRelPosBlock"])
@pytest.mark.parametrize("shared", [False, True])
def test_rel_pos_block_matches_torch(block_fn, shared):
    grid, heads, dim = (3, 2), 3, 30
    t_cls = partial(TorchRelPosMlp, window_size=grid, hidden_dim=12)
    f_cls = partial(relpos.RelPosMlp, window_size=grid, hidden_dim=12)
    kw = dict(mlp_ratio=2.5, qkv_bias=True, init_values=1e-5)
    tm = getattr(tr, block_fn)(
        dim, heads, rel_pos_cls=None if shared else t_cls,
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), **kw,
    )  # fmt: skip
    fm = getattr(relpos, block_fn)(dim, heads, rel_pos_cls=None if shared else f_cls, **kw)
    randomize_(tm, seed=5)
    x = np.random.default_rng(1).standard_normal((3, 6, dim)).astype(np.float32)
    bias = np.random.default_rng(2).standard_normal((1, heads, 6, 6)).astype(np.float32)
    s = jnp.asarray(bias) if shared else None
    variables = flax_twin(fm, tm, jnp.asarray(x), s)
    got = fm.apply(variables, jnp.asarray(x), s)
    with torch.no_grad():
        want = tm(torch.from_numpy(x), shared_rel_pos=torch.tensor(bias) if shared else None)
    assert_close(got, want, f"{block_fn}[shared={shared}]")


EXPORTS = ["mlp_cls_token_pool", "shared_srelpos", "bias_table_cls_qknorm"]

# --- whole models -----------------------------------------------------------------------------

_TINY = dict(depth=2, embed_dim=48, num_heads=3, img_size=(48, 64))
MODELS = {
    "mlp_cr_fcnorm": ("vit_relpos_small_patch16_224", {}),
    "mlp_cls_token_pool": ("vit_relpos_medium_patch16_cls_224", dict(rel_pos_dim=24)),
    "shared_srelpos": ("vit_srelpos_small_patch16_224", dict(rel_pos_dim=40)),
    "rpn_qkvbias": ("vit_relpos_base_patch32_plus_rpn_256", dict(patch_size=16)),
    "clsgap": ("vit_relpos_base_patch16_clsgap_224", {}),
    "bias_table_cls_qknorm": (
        "vit_relpos_base_patch16_cls_224",
        dict(rel_pos_type="bias", qk_norm=True),
    ),
    "mlp_swin_shared_nohead": (
        "vit_srelpos_medium_patch16_224",
        dict(rel_pos_type="mlp_swin", num_classes=0),
    ),
}


@pytest.mark.parametrize("config", list(MODELS))
def test_model_matches_torch(config):
    name, kw = MODELS[config]
    tm = randomize_(timm.create_model(name, pretrained=False, **_TINY, **kw), seed=6)
    cfg = relpos.config_from_timm(tm)
    assert cfg == relpos.RelPosConfig(**{**relpos.VARIANTS[name], **_TINY, **kw})
    fm = relpos.VisionTransformerRelPos(cfg)
    x = np.random.default_rng(0).standard_normal((2, 48, 64, 3)).astype(np.float32)
    variables = flax_twin(fm, tm, jnp.asarray(x))
    feats = jax.jit(partial(fm.apply, method="forward_features"))(variables, jnp.asarray(x))
    logits = jax.jit(fm.apply)(variables, jnp.asarray(x))
    pre = fm.apply(variables, feats, pre_logits=True, method="forward_head")
    with torch.no_grad():
        t_feats = tm.forward_features(nchw(x))
        t_logits, t_pre = tm.forward_head(t_feats), tm.forward_head(t_feats, pre_logits=True)
    assert_close(feats, t_feats, f"forward_features[{config}]", dtype="float32_model")
    assert_close(pre, t_pre, f"pre_logits[{config}]", dtype="float32_model")
    assert_close(logits, t_logits, f"logits[{config}]", dtype="float32_model")


@pytest.mark.parametrize("config", EXPORTS)
def test_export_loads_strict_into_timm(config):
    """Flax params -> timm keys load with strict=True, and the round trip is bit-exact."""
    name, kw = MODELS[config]
    cfg = relpos.RelPosConfig(**{**relpos.VARIANTS[name], **_TINY, **kw})
    fm = relpos.VisionTransformerRelPos(cfg)
    shapes = jax.eval_shape(fm.init, jax.random.PRNGKey(1), jnp.zeros((1, 48, 64, 3)))["params"]
    rng = np.random.default_rng(5)
    params = jax.tree_util.tree_map(
        lambda s: rng.standard_normal(s.shape).astype(np.float32), shapes
    )
    sd = convert.flax_to_torch(params)
    tm = timm.create_model(name, pretrained=False, **_TINY, **kw)
    tm.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in sd.items()}, strict=True)
    back = convert.flatten(convert.torch_to_flax(torch_state(tm), shapes))
    for path, leaf in convert.flatten(params).items():
        assert_close(back[path], leaf, f"roundtrip[{config}]/{'/'.join(path)}", dtype="exact")


def test_from_timm_and_back_through_the_registry():
    import vitjax

    tm = randomize_(timm.create_model("test_vit_relpos", depth=1, img_size=32), seed=7)
    model, variables = vitjax.from_timm(tm)
    assert isinstance(model, relpos.VisionTransformerRelPos)
    sd = vitjax.to_timm_state_dict(model, variables)
    assert set(sd) == set(tm.state_dict())
    for k, v in tm.state_dict().items():
        assert_close(sd[k], v, f"to_timm_state_dict[{k}]", dtype="exact")
    assert "test_vit_relpos" in vitjax.list_models("*relpos*")


# --- configs ----------------------------------------------------------------------------------


def test_variants_cover_timm_names():
    names = set(timm.list_models("vit_*relpos*")) | set(timm.list_models("test_vit_relpos"))
    assert set(relpos.VARIANTS) == names and len(names) == 14


@pytest.mark.parametrize("name", list(relpos.VARIANTS))
def test_config_matches_timm(name):
    tm = timm.create_model(name, pretrained=False, device="meta")
    cfg = relpos.config_from_timm(tm)
    assert cfg == relpos.RelPosConfig(**relpos.VARIANTS[name]), name
    assert cfg.num_classes == timm.models.get_pretrained_cfg(name).num_classes
    assert relpos.RelPosConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_config_from_timm_refuses_other_models():
    with pytest.raises(relpos.UnsupportedModelError, match="VisionTransformer"):
        relpos.config_from_timm(timm.create_model("vit_tiny_patch16_224", device="meta"))
    tm = timm.create_model("vit_relpos_small_patch16_224", depth=2, device="meta")
    tm.blocks[1].attn.rel_pos.mode = "swin"
    with pytest.raises(relpos.UnsupportedModelError, match="blocks.1.attn.rel_pos"):
        relpos.config_from_timm(tm)


# --- checkpoint filter ------------------------------------------------------------------------

RESIZES = {
    "up_square": (7, 9, 0),
    "down_square_cls": (9, 5, 3),
    "to_rect": (7, (5, 8), 0),
    "to_rect_cls": (5, (4, 6), 3),
}


@pytest.mark.parametrize("config", list(RESIZES))
def test_resize_rel_pos_bias_table_matches_torch(config):
    src, dst, extra = RESIZES[config]
    dst = dst if isinstance(dst, tuple) else (dst, dst)
    rng = np.random.default_rng(4)
    table = rng.standard_normal(((2 * src - 1) ** 2 + extra, 3)).astype(np.float32)
    shape = ((2 * dst[0] - 1) * (2 * dst[1] - 1) + extra, 3)
    want = torch_resize_table(torch.from_numpy(table), dst, shape)
    got = relpos.resize_rel_pos_bias_table(table, dst, shape)
    assert_close(got, want, f"resize_rel_pos_bias_table[{config}]")


def test_checkpoint_filter_matches_torch():
    """timm's filter resizes a bias-table checkpoint from a 4x4 to a 3x5 grid: so does ours."""
    kw = dict(depth=1, embed_dim=24, num_heads=2, rel_pos_type="bias", class_token=True)
    src = randomize_(timm.create_model("vit_relpos_base_patch16_cls_224", img_size=64, **kw))
    dst = timm.create_model("vit_relpos_base_patch16_cls_224", img_size=(48, 80), **kw)
    want = tr.checkpoint_filter_fn(src.state_dict(), dst)
    sd = {**torch_state(src), "blocks.0.attn.rel_pos.relative_position_index": np.zeros(3)}
    got = relpos.checkpoint_filter_fn(sd, relpos.config_from_timm(dst), resample_pos_embed=True)
    assert set(got) == set(want) == set(dst.state_dict())
    for k in want:
        assert_close(got[k], want[k], f"checkpoint_filter_fn[{k}]")
    dst.load_state_dict({k: torch.from_numpy(v) for k, v in got.items()}, strict=True)
