"""The eva family (timm's Eva: EVA-01/02, DINOv3, PE, RoPE-ViT, Sapiens2) against timm.

Modules one by one, whole models (depth 2, small grids, random weights), every VARIANTS row
against config_from_timm, dynamic image sizes, features, export into timm, and each published
checkpoint layout through the checkpoint filter.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import timm
import torch
from timm.layers import AttentionRope as TorchAttentionRope
from timm.layers import LayerNorm as TorchLayerNorm
from timm.layers import RmsNorm as TorchRmsNorm
from timm.layers import RotaryEmbeddingCat as TorchRopeCat
from timm.layers import resample_abs_pos_embed as torch_resample
from timm.models import eva as te

from parity_tests.helpers import nchw, randomize_, torch_state
from parity_tests.parity import assert_close
from vitjax.models import eva
from vitjax.models.common import UnsupportedModelError
from vitjax.weights import convert
from vitjax.weights.errors import WeightMismatchError

NORMS = {"layernorm": partial(TorchLayerNorm, eps=1e-5), "rmsnorm": partial(TorchRmsNorm, eps=1e-6)}
EPS = {"layernorm": 1e-5, "rmsnorm": 1e-6}


def _twin(flax_module, torch_module, *example, **kw):
    """Flax variables holding torch_module's weights (every key and shape checked)."""
    init = partial(flax_module.init, **kw)
    shapes = jax.eval_shape(init, jax.random.PRNGKey(0), *example)["params"]
    params = convert.torch_to_flax(torch_state(torch_module), shapes)
    return {"params": jax.tree_util.tree_map(jnp.asarray, params)}


def _rope_table(n_side: tuple[int, int], head_dim: int, half: bool) -> torch.Tensor:
    return TorchRopeCat(head_dim, in_pixels=False, rotate_half=half).get_embed(list(n_side))


# --- (1) modules --------------------------------------------------------------------------------

ATTN = {
    "fused_bias": dict(qkv_fused=True, qkv_bias=True, scale_norm=False),
    "fused_nobias": dict(qkv_fused=True, qkv_bias=False, scale_norm=False),
    "separate_bias_scale_norm": dict(qkv_fused=False, qkv_bias=True, scale_norm=True),
    "qk_norm_half": dict(qk_norm=True, scale_norm=False, rotate_half=True),
    "gated_no_prefix": dict(gated=True, scale_norm=False, num_prefix_tokens=0),
    "five_prefix_rms": dict(num_prefix_tokens=5, qk_norm=True, scale_norm=True, norm="rmsnorm"),
}


def _attn_case(case: str, rope: bool, rng):
    kw = dict(ATTN[case])
    norm = kw.pop("norm", "layernorm")
    npt = kw.get("num_prefix_tokens", 1)
    x = rng.standard_normal((2, npt + 12, 32)).astype(np.float32)
    table = _rope_table((3, 4), 8, kw.get("rotate_half", False)) if rope else None
    return kw, norm, x, table


@pytest.mark.parametrize(
    "case,rope", [(c, True) for c in ATTN] + [("fused_bias", False), ("gated_no_prefix", False)]
)
def test_eva_attention_matches_torch(case, rope, rng):
    kw, norm, x, table = _attn_case(case, rope, rng)
    ref = randomize_(te.EvaAttention(32, num_heads=4, norm_layer=NORMS[norm], **kw))
    mod = eva.EvaAttention(32, num_heads=4, norm_layer=norm, norm_eps=EPS[norm], **kw)
    rope_j = None if table is None else table.numpy()
    v = _twin(mod, ref, jnp.asarray(x), rope_j)
    with torch.no_grad():
        want = ref(torch.from_numpy(x), rope=table)
    assert_close(mod.apply(v, jnp.asarray(x), rope_j), want, f"EvaAttention[{case},rope={rope}]")


GQA = {
    "fused": dict(qkv_fused=True),
    "separate_gqa": dict(qkv_fused=False, num_kv_heads=2),
    "mqa_qk_rms_half": dict(
        qkv_fused=False, num_kv_heads=1, qk_norm=True, rotate_half=True, norm="rmsnorm"
    ),
    "scale_norm_gated_nobias": dict(scale_norm=True, gated=True, qkv_bias=False),
}


@pytest.mark.parametrize("case", list(GQA))
def test_attention_rope_matches_torch(case, rng):
    kw = dict(GQA[case])
    norm = kw.pop("norm", "layernorm")
    x = rng.standard_normal((2, 13, 32)).astype(np.float32)
    table = _rope_table((3, 4), 8, kw.get("rotate_half", False))
    ref = randomize_(TorchAttentionRope(32, num_heads=4, norm_layer=NORMS[norm], **kw))
    mod = eva.AttentionRope(32, num_heads=4, norm_layer=norm, norm_eps=EPS[norm], **kw)
    v = _twin(mod, ref, jnp.asarray(x), table.numpy())
    with torch.no_grad():
        want = ref(torch.from_numpy(x), rope=table)
    assert_close(mod.apply(v, jnp.asarray(x), table.numpy()), want, f"AttentionRope[{case}]")


def test_attention_masks_match_torch(rng):
    x = rng.standard_normal((2, 13, 32)).astype(np.float32)
    ref = randomize_(te.EvaAttention(32, num_heads=4, norm_layer=NORMS["layernorm"]))
    mod = eva.EvaAttention(32, num_heads=4, norm_layer="layernorm", norm_eps=1e-5)
    v = _twin(mod, ref, jnp.asarray(x))
    keep = rng.random((2, 1, 13, 13)) > 0.3
    keep[..., 0] = True  # every query sees at least the class token
    with torch.no_grad():
        want_mask = ref(torch.from_numpy(x), attn_mask=torch.from_numpy(keep))
        want_causal = ref(torch.from_numpy(x), is_causal=True)
    got_mask = mod.apply(v, jnp.asarray(x), attn_mask=jnp.asarray(keep))
    got_causal = mod.apply(v, jnp.asarray(x), is_causal=True)
    assert_close(got_mask, want_mask, "EvaAttention[bool_mask]")
    assert_close(got_causal, want_causal, "EvaAttention[causal]")


BLOCKS = {
    "mlp_gelu": dict(),
    "mlp_sub_ln": dict(scale_mlp=True),
    "glu_packed_ls": dict(swiglu_mlp=True, init_values=0.1, mlp_ratio=4 * 2 / 3),
    "swiglu_align": dict(swiglu_mlp=True, swiglu_align_to=8, mlp_ratio=2.3),
    "swiglu_sub_ln_separate": dict(swiglu_mlp=True, scale_mlp=True, qkv_fused=False),
    "rope_gqa_attn_only_ls_rms": dict(
        attn_type="rope",
        qkv_fused=False,
        num_kv_heads=2,
        qk_norm=True,
        init_values=1.0,
        attn_only_layer_scale=True,
        norm="rmsnorm",
        rotate_half=True,
    ),
}


@pytest.mark.parametrize("case", list(BLOCKS))
def test_eva_block_matches_torch(case, rng):
    kw = dict(BLOCKS[case])
    norm = kw.pop("norm", "layernorm")
    x = rng.standard_normal((2, 13, 32)).astype(np.float32)
    table = _rope_table((3, 4), 8, kw.get("rotate_half", False))
    ref = randomize_(te.EvaBlock(32, 4, norm_layer=NORMS[norm], **kw))
    mod = eva.EvaBlock(32, 4, norm_layer=norm, norm_eps=EPS[norm], **kw)
    v = _twin(mod, ref, jnp.asarray(x), table.numpy())
    with torch.no_grad():
        want = ref(torch.from_numpy(x), rope=table)
    assert_close(mod.apply(v, jnp.asarray(x), table.numpy()), want, f"EvaBlock[{case}]")


@pytest.mark.parametrize(
    "case", [dict(), dict(swiglu_mlp=True), dict(swiglu_mlp=True, scale_mlp=True, qkv_bias=False)]
)
def test_eva_block_post_norm_matches_torch(case, rng):
    x = rng.standard_normal((2, 13, 32)).astype(np.float32)
    table = _rope_table((3, 4), 8, False)
    ref = randomize_(te.EvaBlockPostNorm(32, 4, norm_layer=NORMS["layernorm"], **case))
    mod = eva.EvaBlockPostNorm(32, 4, norm_eps=1e-5, **case)
    v = _twin(mod, ref, jnp.asarray(x), table.numpy())
    with torch.no_grad():
        want = ref(torch.from_numpy(x), rope=table)
    got = mod.apply(v, jnp.asarray(x), table.numpy())
    assert_close(got, want, f"EvaBlockPostNorm[{sorted(case)}]")


# --- (2) whole models ---------------------------------------------------------------------------

_NARROW = dict(embed_dim=192, num_heads=3)
# timm name -> create_model overrides: depth 2, a small (rectangular) grid; wide models narrowed.
MODELS = {
    "eva02_tiny_patch14_224": dict(img_size=(56, 42)),
    "eva02_base_patch16_clip_224": dict(img_size=(48, 64), **_NARROW),
    "eva_giant_patch14_224": dict(img_size=(42, 56), embed_dim=256, num_heads=4),
    "eva02_enormous_patch14_clip_224": dict(img_size=(42, 42), embed_dim=256, num_heads=4),
    "vit_medium_patch16_rope_reg1_gap_256": dict(img_size=(48, 64)),
    "vit_pe_core_tiny_patch16_384": dict(img_size=(64, 48)),
    "vit_pe_lang_large_patch14_448": dict(img_size=(56, 42), **_NARROW),
    "vit_small_patch16_dinov3": dict(),
    "vit_small_plus_patch16_dinov3_qkvb": dict(),
    "vit_small_patch16_rope_224": dict(img_size=(64, 48)),
    "vit_small_patch16_rope_ape_224": dict(img_size=(48, 64), dynamic_img_size=True),
    "vit_small_patch16_rope_mixed_224": dict(img_size=(64, 48)),
    "vit_small_patch16_rope_mixed_ape_224": dict(img_size=(48, 48)),
    "vit_base_patch16_sapiens2": dict(embed_dim=192, num_kv_heads=(12, 6)),
    "vit_small_patch16_rope_224+mrope": dict(
        img_size=(48, 64), embed_dim=96, num_heads=2, rope_type="mrope", rope_grid_indexing="ij"
    ),
}
DYNAMIC_SIZE = {"vit_small_patch16_dinov3": (48, 64), "vit_base_patch16_sapiens2": (64, 48)}


def _outputs(model, x):
    feats = model.forward_features(x)
    return model.forward_head(feats), model.forward_head(feats, pre_logits=True), feats


@functools.cache
def _compiled(cfg: eva.EvaConfig):
    model = eva.Eva(cfg)
    return model, jax.jit(lambda v, x: model.apply(v, x, method=_outputs))


@functools.cache
def _pair(name: str):
    """(timm model, its config, Flax variables) for a MODELS entry, with random weights."""
    kw = dict(MODELS[name], depth=2)
    arch = name.split("+")[0]  # 'arch+option': the variant with another timm option
    if eva.VARIANTS[arch].get("num_classes", 1000) == 0:
        kw["num_classes"] = 5  # a head to compare
    # std 0.1 keeps random-weight logits at a trained model's scale (|logit| ~ 10); at 0.2 some
    # models reach ~1e2, where float32 round-off on both sides (measured against float64)
    # exceeds the table's atol
    tm = randomize_(timm.create_model(arch, pretrained=False, **kw), std=0.1)
    cfg = eva.config_from_timm(tm)
    model, _ = _compiled(cfg)
    x = jnp.zeros((1, *to_pair(cfg.img_size), cfg.in_chans))
    return tm, cfg, _twin(model, tm, x)


def to_pair(s: int | tuple[int, int]) -> tuple[int, int]:
    return (s, s) if isinstance(s, int) else tuple(s)


def _images(cfg, size=None, seed=0):
    H, W = size or to_pair(cfg.img_size)
    return np.random.default_rng(seed).standard_normal((2, H, W, cfg.in_chans)).astype(np.float32)


def _check_model(name: str, size=None) -> None:
    tm, cfg, v = _pair(name)
    x = _images(cfg, size)
    _, fn = _compiled(cfg)
    logits, pre, feats = fn(v, jnp.asarray(x))
    with torch.no_grad():
        t_feats = tm.forward_features(nchw(x))
        t_pre = tm.forward_head(t_feats, pre_logits=True)
        t_logits = tm.forward_head(t_feats)
    tag = f"[{name}{'' if size is None else f',{size[0]}x{size[1]}'}]"
    for got, want, what in ((logits, t_logits, "logits"), (pre, t_pre, "pre_logits")):
        rep = assert_close(got, want, f"Eva.{what}{tag}", dtype="float32_model")
        assert rep["max"] <= 1e-5 * rep["scale"], f"{what}{tag}: relative difference {rep}"
    # The unnormalised residual stream of random weights reaches |x| ~ 1e2, so it is compared
    # relative to its largest value. There torch's own float32 error reaches ~2e-5 of that scale
    # (against float64; JAX's is ~6e-6), so the logits' 1e-5 bound does not apply.
    scale = float(t_feats.abs().max())
    assert_close(feats / scale, t_feats / scale, f"Eva.features{tag}", dtype="float32_model")


@pytest.mark.parametrize("name", list(MODELS))
def test_eva_matches_torch(name):
    _check_model(name, DYNAMIC_SIZE.get(name))


@pytest.mark.parametrize(
    "name,size",
    [
        ("vit_small_patch16_dinov3", (32, 80)),
        ("vit_small_patch16_dinov3", (80, 48)),
        ("vit_small_patch16_rope_ape_224", (80, 32)),
        ("vit_small_patch16_rope_ape_224", (64, 64)),
    ],
)
def test_eva_dynamic_img_size_matches_torch(name, size):
    _check_model(name, size)


@pytest.mark.parametrize("name", list(MODELS))
def test_eva_export_loads_into_timm_strict(name):
    tm, _, v = _pair(name)
    sd = convert.flax_to_torch(v["params"])
    fresh = copy.deepcopy(tm)
    with torch.no_grad():
        for p in fresh.parameters():
            p.zero_()
    fresh.load_state_dict({k: torch.from_numpy(np.array(a)) for k, a in sd.items()}, strict=True)
    want = torch_state(tm)
    for k, a in torch_state(fresh).items():
        assert_close(a, want[k], f"export[{name}].{k}", dtype="exact")


def test_eva_trains_with_dropouts(rng):
    cfg = eva.EvaConfig(
        **{
            **eva.VARIANTS["vit_small_patch16_rope_mixed_224"],
            "depth": 2,
            "img_size": 32,
            "embed_dim": 64,
            "num_heads": 2,
            "num_classes": 3,
            "patch_drop_rate": 0.5,
            "drop_path_rate": 0.2,
            "drop_rate": 0.1,
        }
    )
    model = eva.Eva(cfg)
    x = jnp.asarray(_images(cfg))
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)
    v = jax.tree.map(lambda s: jnp.asarray(0.1 * rng.standard_normal(s.shape), s.dtype), shapes)
    step = jax.jit(lambda v, x, r: model.apply(v, x, train=True, rngs={"dropout": r}))
    a, b = step(v, x, jax.random.PRNGKey(1)), step(v, x, jax.random.PRNGKey(2))
    assert a.shape == (2, 3) and np.isfinite(a).all() and not np.allclose(a, b)
    # patch dropout keeps int(4 * 0.5) of the 2x2 patches; the rope tables are gathered alike
    key = jax.random.PRNGKey(3)
    feats = jax.eval_shape(
        lambda v, x: model.apply(v, x, True, method="forward_features", rngs={"dropout": key}),
        v,
        x,
    )
    assert feats.shape == (2, 1 + 2, 64)


# --- (3) every VARIANTS row ---------------------------------------------------------------------


def _depth_overrides(name: str) -> tuple[dict, dict]:
    """(timm kwargs, config kwargs) cutting a variant to depth 1 (Sapiens2: 2, full + grouped)."""
    row = eva.EvaConfig(**eva.VARIANTS[name])
    if "sapiens2" not in name:
        return dict(depth=1), dict(depth=1)
    kv = tuple(h or row.num_heads for h in (row.kv_heads[0], row.kv_heads[row.depth // 2]))
    canonical = None if kv == (row.num_heads,) * 2 else kv
    return dict(depth=2, num_kv_heads=kv), dict(depth=2, num_kv_heads=canonical)


def test_variants_cover_timm_eva_models():
    names = timm.list_models(module="eva")
    assert sorted(names) == sorted(eva.VARIANTS)
    for name in names:
        fn = timm.models.model_entrypoint(name)
        assert fn.__module__ == "timm.models.eva", name


@pytest.mark.parametrize("name", sorted(eva.VARIANTS))
def test_config_from_timm_matches_variants(name):
    timm_kw, cfg_kw = _depth_overrides(name)
    with torch.device("meta"):  # structure only: the 7B model at depth 1 costs nothing here
        tm = timm.create_model(name, pretrained=False, **timm_kw)
    assert type(tm).__name__ == "Eva"
    got, want = eva.config_from_timm(tm), eva.EvaConfig(**{**eva.VARIANTS[name], **cfg_kw})
    diff = {
        f.name: (getattr(got, f.name), getattr(want, f.name))
        for f in dataclasses.fields(got)
        if getattr(got, f.name) != getattr(want, f.name)
    }
    assert not diff, f"{name}: config_from_timm != VARIANTS row: {diff}"


def test_config_roundtrips_json():
    for name in (
        "vit_large_patch16_sapiens2",
        "eva02_large_patch14_448",
        "vit_pe_core_tiny_patch16_384",
    ):
        cfg = eva.EvaConfig(**eva.VARIANTS[name])
        assert eva.EvaConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown EvaConfig fields"):
        eva.EvaConfig.from_dict({"embed_dims": 3})


def test_config_from_timm_refuses_unsupported():
    tm = timm.create_model("eva02_tiny_patch14_224", pretrained=False, depth=2)
    tm.blocks[1].mlp.act = torch.nn.ReLU()
    with pytest.raises(UnsupportedModelError, match=r"blocks\.1\.mlp\.act"):
        eva.config_from_timm(tm)
    tm = timm.create_model("eva02_tiny_patch14_224", pretrained=False, depth=2)
    tm.blocks[1].norm2 = torch.nn.LayerNorm(192, eps=1e-3)
    with pytest.raises(UnsupportedModelError, match="blocks.1"):
        eva.config_from_timm(tm)
    with pytest.raises(UnsupportedModelError, match="VisionTransformer"):
        eva.config_from_timm(timm.create_model("vit_tiny_patch16_224", depth=1))
    with pytest.raises(ValueError, match="grouped-query"):
        eva.EvaConfig(num_kv_heads=4)


# --- (7) checkpoint layouts ---------------------------------------------------------------------


def _rename_all(sd: dict, swaps) -> dict:
    out = {}
    for k, v in sd.items():
        for a, b in swaps:
            k = k.replace(a, b)
        out[k] = v
    return out


def _eva_original(sd: dict, prefix: str = "", mim: bool = True) -> dict:
    """BAAI EVA-02 layout: q_proj.bias -> q_bias, SwiGLU w1/w2/w3 + ffn_ln; MIM pretrain extras."""
    out = _rename_all(
        sd,
        [
            ("attn.q_proj.bias", "attn.q_bias"),
            ("attn.v_proj.bias", "attn.v_bias"),
            ("mlp.fc1_g", "mlp.w1"),
            ("mlp.fc1_x", "mlp.w2"),
            ("mlp.fc2", "mlp.w3"),
            ("mlp.norm", "mlp.ffn_ln"),
            ("attn.norm", "attn.inner_attn_ln"),
            ("fc_norm", "norm"),
        ],
    )
    D = sd["cls_token"].shape[-1]
    out["rope.freqs_cos"] = np.ones((12, 16), np.float32)  # the original's fixed tables
    if mim:
        out.update(
            {
                "mask_token": np.ones((1, 1, D), np.float32),
                "lm_head.bias": np.ones(3),
                "lm_head.weight": np.ones((3, D), np.float32),
            }
        )
    return {prefix + k: v for k, v in out.items()}


def _dinov3_original(sd: dict) -> dict:
    """Meta DINOv3 layout: storage_tokens, ls1/ls2, one qkv.bias (zero k part), w1/w2/w3."""
    out = {}
    for k, v in _rename_all(
        sd,
        [
            ("reg_token", "storage_tokens"),
            ("gamma_1", "ls1.gamma"),
            ("gamma_2", "ls2.gamma"),
            ("mlp.fc1_g", "mlp.w1"),
            ("mlp.fc1_x", "mlp.w2"),
            ("mlp.fc2", "mlp.w3"),
        ],
    ).items():
        if k.endswith("attn.q_bias"):
            vb = sd[k.replace("q_bias", "v_bias")]
            out[k.replace("q_bias", "qkv.bias")] = np.concatenate([v, np.zeros_like(v), vb])
            out[k.replace("q_bias", "qkv.bias_mask")] = np.ones(3 * v.shape[0])
        elif not k.endswith("attn.v_bias"):
            out[k] = v
    D = sd["cls_token"].shape[-1]
    out.update(
        {
            "mask_token": np.ones((1, D), np.float32),
            "rope_embed.periods": np.ones(8),
            "projectors.0.weight": np.ones((2, D)),
            "local_cls_norm.weight": np.ones(D),
        }
    )
    return out


def _sapiens2_original(sd: dict) -> dict:
    """Meta Sapiens2 layout: wq/wk/wv, ffn.w12/w3, ln1/ln2, attn.gamma, storage_tokens."""
    out = {}
    for k, v in sd.items():
        k = "ln1." + k[len("norm.") :] if k.startswith("norm.") else k
        for a, b in [
            ("reg_token", "storage_tokens"),
            ("patch_embed.proj.", "patch_embed.projection."),
            ("attn.q_proj.", "attn.wq."),
            ("attn.k_proj.", "attn.wk."),
            ("attn.v_proj.", "attn.wv."),
            (".mlp.fc1.", ".ffn.w12."),
            (".mlp.fc2.", ".ffn.w3."),
            (".norm1.", ".ln1."),
            (".norm2.", ".ln2."),
        ]:
            k = k.replace(a, b)
        out[k.replace("gamma_1", "attn.gamma.weight")] = v
    out["mask_token"] = np.ones((1, sd["cls_token"].shape[-1]), np.float32)
    return out


def _pe_original(sd: dict) -> dict:
    """Meta Perception Encoder layout (OpenCLIP-style 'visual.' tower, attn_pool probe)."""
    out = {}
    for k, v in sd.items():
        if k == "head.bias":
            continue  # PE's proj has no bias (timm adds zeros)
        if k == "head.weight":
            out["visual.proj"] = v.T
            continue
        if k == "cls_token":
            k, v = "class_embedding", v[0, 0]
        elif k == "pos_embed":
            k, v = "positional_embedding", v[0]
        if k.startswith("attn_pool.q.") or k.startswith("attn_pool.kv."):
            continue
        for a, b in [
            ("patch_embed.proj", "conv1"),
            ("blocks.", "transformer.resblocks."),
            ("norm_pre", "ln_pre"),
            (".norm1", ".ln_1"),
            (".norm2", ".ln_2"),
            ("attn.qkv.", "attn.in_proj_"),
            ("attn.proj", "attn.out_proj"),
            ("gamma_1", "ls_1.gamma"),
            ("gamma_2", "ls_2.gamma"),
            ("mlp.fc1", "mlp.c_fc"),
            ("mlp.fc2", "mlp.c_proj"),
            ("attn_pool.latent", "attn_pool.probe"),
            ("attn_pool.norm", "attn_pool.layernorm"),
            ("attn_pool.proj", "attn_pool.attn.out_proj"),
        ]:
            k = k.replace(a, b)
        k = "ln_post." + k[len("norm.") :] if k.startswith("norm.") else k
        out["visual." + k] = v
    for leaf in ("weight", "bias") if "attn_pool.q.weight" in sd else ():
        out[f"visual.attn_pool.attn.in_proj_{leaf}"] = np.concatenate(
            [sd[f"attn_pool.q.{leaf}"], sd[f"attn_pool.kv.{leaf}"]]
        )
    return out


LAYOUTS = {
    "eva02_mim": ("eva02_base_patch14_224", dict(**_NARROW), _eva_original),
    "eva_clip_visual": (
        "eva02_base_patch16_clip_224",
        dict(**_NARROW),
        partial(_eva_original, prefix="visual.", mim=False),
    ),
    "dinov3_qkvb": ("vit_small_plus_patch16_dinov3_qkvb", {}, _dinov3_original),
    "sapiens2": (
        "vit_base_patch16_sapiens2",
        dict(embed_dim=192, num_kv_heads=(12, 6)),
        _sapiens2_original,
    ),
    "pe_core": ("vit_pe_core_tiny_patch16_384", dict(img_size=64), _pe_original),
    "pe_lang": ("vit_pe_lang_large_patch14_448", dict(img_size=56, **_NARROW), _pe_original),
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_checkpoint_filter_fn_matches_torch(layout):
    name, kw, to_original = LAYOUTS[layout]
    tm = randomize_(timm.create_model(name, pretrained=False, depth=2, **kw))
    want = torch_state(tm)
    if "head.bias" in want and layout.startswith("pe"):
        want["head.bias"] = np.zeros_like(want["head.bias"])  # PE's proj has no bias
    original = to_original(want)
    cfg = eva.config_from_timm(tm)
    got = eva.checkpoint_filter_fn(original, cfg)
    torch_got = te.checkpoint_filter_fn(
        {k: torch.from_numpy(np.asarray(v)) for k, v in original.items()}, tm
    )
    assert sorted(got) == sorted(want), set(got) ^ set(want)
    assert sorted(torch_got) == sorted(want)
    for k in want:
        assert_close(got[k], want[k], f"checkpoint_filter_fn[{layout}].{k}", dtype="exact")
        assert_close(
            got[k], torch_got[k], f"checkpoint_filter_fn[{layout}].{k} (timm)", dtype="exact"
        )


def test_checkpoint_filter_drops_qkv_bias_the_model_lacks():
    tm = randomize_(timm.create_model("vit_small_patch16_dinov3", pretrained=False, depth=1))
    want = torch_state(tm)
    swaps = [("gamma_1", "ls1.gamma"), ("gamma_2", "ls2.gamma")]
    original = _rename_all(want, swaps)
    original["blocks.0.attn.qkv.bias"] = np.zeros(3 * 384, np.float32)
    original["storage_tokens"] = original.pop("reg_token")
    got = eva.checkpoint_filter_fn(original, eva.config_from_timm(tm))
    assert sorted(got) == sorted(want)


def test_checkpoint_filter_resamples_pos_embed_like_timm(rng):
    cfg = eva.EvaConfig(**{**eva.VARIANTS["eva02_tiny_patch14_224"], "img_size": (70, 56)})
    pe = rng.standard_normal((1, 1 + 16 * 16, 192)).astype(np.float32)
    got = eva.checkpoint_filter_fn({"pos_embed": pe}, cfg, resample_pos_embed=True)["pos_embed"]
    want = torch_resample(
        torch.from_numpy(pe), new_size=(5, 4), old_size=(16, 16), num_prefix_tokens=1
    )
    assert_close(got, want, "checkpoint_filter_fn.resample_pos_embed", dtype="float32")
    same = eva.checkpoint_filter_fn({"pos_embed": pe}, cfg)["pos_embed"]
    assert same.shape == pe.shape  # only on request
    with pytest.raises(WeightMismatchError, match="patch size"):
        eva.checkpoint_filter_fn({"patch_embed.proj.weight": np.zeros((192, 3, 16, 16))}, cfg)
