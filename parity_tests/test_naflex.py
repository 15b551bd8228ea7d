"""The naflex family (timm's NaFlexVit: NaFlex ViTs, SigLIP 2 NaFlex, C-RADIO) against timm.

F.interpolate's taps (the position-table resize), the embedding module, masks and pooling one
by one; whole models at depth 2 (narrowed) on images and on NaFlex batches of two aspect ratios
padded to one length (equal on the valid tokens); both loading paths; export into timm; every
VARIANTS row against config_from_timm; each checkpoint layout timm's filter and loader handle;
one model at full depth.
"""

from __future__ import annotations

import copy
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.torch
import timm
import torch
import torch.nn.functional as F
from timm.models import naflexvit as tn

import vitjax
from parity_tests.helpers import nchw, randomize_, torch_state
from parity_tests.parity import assert_close
from vitjax.layers import naflex_embed as ne
from vitjax.models import naflex
from vitjax.models.common import UnsupportedModelError
from vitjax.weights import convert
from vitjax.weights import npz as npz_io
from vitjax.weights.errors import WeightMismatchError


def _twin(flax_module, torch_module, *example, **kw):
    """Flax variables holding torch_module's weights (every key and shape checked)."""
    shapes = jax.eval_shape(
        functools.partial(flax_module.init, **kw), jax.random.PRNGKey(0), *example
    )
    params = convert.torch_to_flax(torch_state(torch_module), shapes["params"])
    return {"params": jax.tree_util.tree_map(jnp.asarray, params)}


def _naflex_batch(sizes, patch, in_chans=3, channels_last=True, extra=3, seed=0):
    """Images of `sizes` patchified by timm, padded to one length with garbage patches.

    Returns numpy patches (B, N, P), patch_coord (B, N, 2) (zero on padding) and patch_valid.
    """
    rng = np.random.default_rng(seed)
    imgs = [rng.standard_normal((1, in_chans, h, w)).astype(np.float32) for h, w in sizes]
    rows = []
    for im in imgs:
        p, (gh, gw) = tn.batch_patchify(torch.from_numpy(im), patch, channels_last=channels_last)
        yy, xx = np.meshgrid(np.arange(gh), np.arange(gw), indexing="ij")
        rows.append((p[0].numpy(), np.stack([yy.ravel(), xx.ravel()], -1)))
    N = max(len(p) for p, _ in rows) + extra
    B, P = len(rows), rows[0][0].shape[1]
    patches = rng.standard_normal((B, N, P)).astype(np.float32)  # padding holds garbage
    coord = np.zeros((B, N, 2), np.int64)
    valid = np.zeros((B, N), bool)
    for i, (p, c) in enumerate(rows):
        patches[i, : len(p)], coord[i, : len(p)], valid[i, : len(p)] = p, c, True
    return patches, coord, valid


def _torch_batch(patches, coord, valid):
    return {
        "patches": torch.from_numpy(patches),
        "patch_coord": torch.from_numpy(coord),
        "patch_valid": torch.from_numpy(valid),
    }


def _jax_batch(patches, coord, valid):
    return {
        "patches": jnp.asarray(patches),
        "patch_coord": jnp.asarray(coord, jnp.int32),
        "patch_valid": jnp.asarray(valid),
    }


# --- (1) F.interpolate as taps ------------------------------------------------------------------

OUT_LENS = (1, 2, 3, 5, 16, 24, 33, 40, 100, 200)
RESIZES = [
    (mode, aa, ac)
    for mode in ("bilinear", "bicubic")
    for aa in (False, True)
    for ac in (False, True)
] + [("linear", False, False)]  # fmt: skip


def _torch_matrix(in_len: int, out_len: int, mode: str, aa: bool, ac: bool) -> np.ndarray:
    """(out_len, in_len) matrix of F.interpolate along one axis, from the identity basis."""
    eye = torch.eye(in_len)
    if mode == "linear":
        out = F.interpolate(eye[None], size=out_len, mode="linear", align_corners=ac)
        return out[0].T.numpy()
    # the other axis stays 2 -> 2: torch's antialiased kernel is wrong for an output width of 1
    basis = eye[None, :, :, None].expand(1, in_len, in_len, 2).contiguous()
    out = F.interpolate(basis, size=(out_len, 2), mode=mode, antialias=aa, align_corners=ac)
    return out[0, :, :, 0].T.numpy()


@pytest.mark.parametrize("in_len", [16, 7, 128])
@pytest.mark.parametrize("mode,aa,ac", RESIZES)
def test_interp_taps_match_torch(mode, aa, ac, in_len):
    # every output length in one traced call: out_len is a traced value, as in NaFlex batches
    idx = np.concatenate([np.arange(n) for n in OUT_LENS])
    lens = np.concatenate([np.full(n, n) for n in OUT_LENS])
    taps, w = ne.interp_taps(jnp.asarray(idx), jnp.asarray(lens), in_len, mode, aa, ac)
    got = np.asarray((w[..., None] * jax.nn.one_hot(taps, in_len)).sum(-2))
    want = np.concatenate([_torch_matrix(in_len, n, mode, aa, ac) for n in OUT_LENS])
    assert_close(got, want, f"interp_taps[{mode},aa={aa},ac={ac},{in_len}]", dtype="float32")


# --- (2) NaFlexEmbeds ---------------------------------------------------------------------------

EMBEDS = {
    "learned_bicubic_aa": dict(class_token=True, reg_tokens=2),
    "learned_bilinear_aa_ar": dict(pos_embed_interp_mode="bilinear", pos_embed_ar_preserving=True),
    "learned_bilinear_ac_ar": dict(  # RADIO's
        pos_embed_interp_mode="bilinear", pos_embed_antialias=False, pos_embed_align_corners=True,
        pos_embed_ar_preserving=True, class_token=True, reg_tokens=1,
    ),
    "learned_bilinear_plain_ar": dict(  # RADIO v3-L, v3-g, v4
        pos_embed_interp_mode="bilinear", pos_embed_antialias=False, pos_embed_ar_preserving=True,
    ),
    "learned_bicubic_plain": dict(pos_embed_antialias=False, reg_tokens=1),
    "factorized": dict(pos_embed="factorized", class_token=True),
    "factorized_ar": dict(pos_embed="factorized", pos_embed_ar_preserving=True),
    "none_embed_norm": dict(pos_embed="none", proj_norm_layer="layernorm", reg_tokens=3),
    "channels_first": dict(channels_last=False, class_token=True),
    "conv_padded": dict(proj_type="conv", dynamic_img_pad=True),
}  # fmt: skip


def _embeds_pair(case: str):
    kw = dict(EMBEDS[case])
    common = dict(patch_size=4, in_chans=3, embed_dim=16, pos_embed_grid_size=(5, 4))
    torch_kw = {**kw, "proj_norm_layer": timm.layers.LayerNorm} if "proj_norm_layer" in kw else kw
    torch_kw.setdefault("proj_type", "linear")
    ref = randomize_(tn.NaFlexEmbeds(**common, **torch_kw))
    flax_kw = {("pos_embed_type" if k == "pos_embed" else k): v for k, v in kw.items()}
    mod = ne.NaFlexEmbeds(**common, **flax_kw)
    x = jnp.zeros((1, 20, 16, 3))
    return ref, mod, _twin(mod, ref, x)


@pytest.mark.parametrize("case", list(EMBEDS))
def test_naflex_embeds_matches_torch(case):
    ref, mod, v = _embeds_pair(case)
    sizes = [(20, 16), (12, 28)] if case != "conv_padded" else [(20, 16), (13, 26)]
    imgs = [np.random.default_rng(h).standard_normal((2, h, w, 3)).astype(np.float32)
            for h, w in sizes]  # fmt: skip
    naflex_in = case != "conv_padded"  # the conv projection takes images only, as timm's
    p, c, _ = _naflex_batch([(12, 28), (32, 8)], (4, 4), channels_last=ref.channels_last)

    def run(v, imgs, p, c):  # the table's own grid (no resize), another, a NaFlex batch
        outs = [mod.apply(v, x)[0] for x in imgs]
        return outs + ([mod.apply(v, p, c)[0]] if naflex_in else [])

    got = jax.jit(run)(v, [jnp.asarray(x) for x in imgs], jnp.asarray(p), jnp.asarray(c, jnp.int32))
    with torch.no_grad():
        want = [ref(nchw(x))[0] for x in imgs]
        if naflex_in:
            want.append(ref(torch.from_numpy(p), patch_coord=torch.from_numpy(c))[0])
    for g, w, what in zip(got, want, [*sizes, "naflex"][: len(got)], strict=True):
        assert_close(g, w, f"NaFlexEmbeds[{case},{what}]")


# --- (3) masks and pooling ----------------------------------------------------------------------


def test_attention_masks_and_pooling_match_torch(rng):
    valid = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool)
    for npt, sym, q_len in ((0, True, None), (2, True, None), (2, False, 1), (0, False, 3)):
        got = naflex.create_attention_mask(jnp.asarray(valid), npt, sym, q_len)
        want = tn.create_attention_mask(torch.from_numpy(valid), npt, sym, q_len)
        assert_close(got, want, f"create_attention_mask[{npt},{sym},{q_len}]", dtype="exact")
    assert naflex.create_attention_mask(None) is None
    x = rng.standard_normal((2, 7, 6)).astype(np.float32)
    for pool in ("avg", "max", "avgmax", "token", ""):
        for include in (False, True):
            got = naflex.global_pool_naflex(jnp.asarray(x), jnp.asarray(valid), pool, 2, include)
            want = tn.global_pool_naflex(torch.from_numpy(x), torch.from_numpy(valid), pool, 2,
                                         include)  # fmt: skip
            assert_close(got, want, f"global_pool_naflex[{pool},{include}]")


# --- (4) whole models ---------------------------------------------------------------------------

_NARROW = dict(embed_dim=96, num_heads=3)
# timm name -> create_model overrides at depth 2: every pos_embed type and pool the 14 use
# ('arch+variant': arch with further options). Widths are narrowed except parfac's.
MODELS = {
    "naflexvit_base_patch16_gap": dict(_NARROW),  # learned bicubic+aa, avg + fc_norm, 4 regs
    "naflexvit_base_patch16_parfac_gap": dict(),  # factorized, aspect preserving; 768 wide
    "naflexvit_base_patch16_map": dict(_NARROW),  # MAP head over the masked patches, 1 reg
    "naflexvit_base_patch16_siglip": dict(_NARROW, num_classes=5),  # bilinear+aa, gelu_tanh
    "naflexvit_base_patch16_radio_v3": dict(_NARROW, num_classes=5),  # 128 grid, align, token
    "naflexvit_base_patch16_gap+key_only_prefix": dict(
        _NARROW, use_key_only_attn_mask=True, pool_include_prefix=True, global_pool="avgmax",
        fc_norm=True, qkv_bias=False,
    ),
}  # fmt: skip
IMG = (48, 64)
ASPECTS = [(48, 80), (96, 32)]  # 3x5 and 6x2 patches, padded to 18 tokens


def to_pair(s):
    return (s, s) if isinstance(s, int) else tuple(s)


def _outputs(model, x, batch):
    """(logits, pre_logits, features) of images x and of a NaFlex batch, in one jitted call."""
    out = []
    for inp in (x, batch):
        feats = model.forward_features(inp)
        out.append((model.forward_head(feats), model.forward_head(feats, pre_logits=True), feats))
    return out


@functools.cache
def _compiled(cfg: naflex.NaFlexVitConfig):
    model = naflex.NaFlexVit(cfg)
    return model, jax.jit(lambda v, x, b: model.apply(v, x, b, method=_outputs))


def _random_timm(arch: str, std: float = 0.1, **kw) -> torch.nn.Module:
    """timm's model with random weights; built on the meta device, as every weight is redrawn."""
    with torch.device("meta"):
        tm = timm.create_model(arch, pretrained=False, **kw)
    return randomize_(tm.to_empty(device="cpu"), std=std)  # NaFlexVit holds no buffers


def _timm(name: str) -> torch.nn.Module:
    return _random_timm(name.split("+")[0], **MODELS[name], depth=2)


@functools.cache
def _pair(name: str):
    """(timm model, its config, Flax variables from vitjax.from_timm), random weights."""
    tm = _timm(name)
    model, v = vitjax.from_timm(tm)
    assert model.cfg == naflex.config_from_timm(tm)
    return tm, model.cfg, v


def _inputs(cfg, size=IMG):
    x = np.random.default_rng(1).standard_normal((2, *size, cfg.in_chans)).astype(np.float32)
    batch = _naflex_batch(ASPECTS, to_pair(cfg.patch_size), cfg.in_chans,
                          cfg.patchify_channels_last)  # fmt: skip
    return x, batch


def _check_relative(got, want, name: str) -> None:
    rep = assert_close(got, want, name, dtype="float32_model")
    assert rep["max"] <= 1e-5 * rep["scale"], f"{name}: relative difference {rep}"


def _check_model(tm, cfg, v, what: str) -> None:
    """Images and a padded two-aspect NaFlex batch: logits, pre-logits, valid-token features."""
    x, batch = _inputs(cfg)
    (img_logits, img_pre, img_feats), (nf_logits, nf_pre, nf_feats) = _compiled(cfg)[1](
        v, jnp.asarray(x), _jax_batch(*batch)
    )
    with torch.no_grad():
        t_img = tm.forward_features(nchw(x))
        t_nf = tm.forward_features(**_torch_batch(*batch))
        assert_close(tm(_torch_batch(*batch)), tm.forward_head(**t_nf), "dict", dtype="exact")
        want = [tm.forward_head(t_img), tm.forward_head(t_img, pre_logits=True)]
        want += [tm.forward_head(**t_nf), tm.forward_head(**t_nf, pre_logits=True)]
    got = [img_logits, img_pre, nf_logits, nf_pre]
    parts = ["logits", "pre_logits", "naflex_logits", "naflex_pre_logits"]
    for g, w, part in zip(got, want, parts, strict=True):
        _check_relative(g, w, f"NaFlexVit.{part}[{what}]")
    # the unnormalised residual stream (RADIO has no final norm) is compared relative to its
    # largest value; NaFlex features on the valid (and prefix) tokens only
    scale = float(t_img.abs().max())
    assert_close(img_feats / scale, t_img / scale, f"NaFlexVit.features[{what}]",
                 dtype="float32_model")  # fmt: skip
    keep = np.concatenate([np.ones((2, cfg.num_prefix_tokens), bool), batch[2]], axis=1)
    got, ref = np.asarray(nf_feats["patches"])[keep], t_nf["patches"].numpy()[keep]
    scale = float(np.abs(ref).max())
    assert_close(got / scale, ref / scale, f"NaFlexVit.naflex_features[{what},valid]",
                 dtype="float32_model")  # fmt: skip


@pytest.mark.parametrize("name", list(MODELS))
def test_naflexvit_matches_torch(name):
    _check_model(*_pair(name), name)


@pytest.mark.parametrize("name", list(MODELS))
def test_naflexvit_export_loads_into_timm_strict(name):
    tm, cfg, v = _pair(name)
    sd = vitjax.to_timm_state_dict(naflex.NaFlexVit(cfg), v, framework="pt")
    fresh = copy.deepcopy(tm)
    with torch.no_grad():
        for p in fresh.parameters():
            p.zero_()
    fresh.load_state_dict(sd, strict=True)
    want = torch_state(tm)
    for k, a in torch_state(fresh).items():
        assert_close(a, want[k], f"export[{name}].{k}", dtype="exact")


@pytest.mark.parametrize("name", list(MODELS))
def test_create_model_from_checkpoint_matches_torch(name, tmp_path):
    # vitjax.create_model(name, checkpoint_path=file, depth=2) with the entry's overrides
    tm, cfg, v = _pair(name)
    path = tmp_path / "model.safetensors"
    safetensors.torch.save_file(tm.state_dict(), path)
    arch = name.split("+")[0]
    model, got = vitjax.create_model(arch, checkpoint_path=path, **dict(MODELS[name], depth=2))
    assert model.cfg == cfg
    assert jax.tree.structure(got) == jax.tree.structure(v)
    leaves = zip(jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(v), strict=True)
    for (p, a), b in leaves:
        assert_close(a, b, f"create_model[{name}]{jax.tree_util.keystr(p)}", dtype="exact")
    _check_model(tm, cfg, got, f"{name},create_model")


def test_naflex_input_forms_agree():
    _, cfg, v = _pair("naflexvit_base_patch16_map")
    model = naflex.NaFlexVit(cfg)

    def forms(v, p, c, valid):  # one compile: the three forms trace to the same program
        as_dict = model.apply(v, {"patches": p, "patch_coord": c, "patch_valid": valid})
        return (
            as_dict,
            model.apply(v, (p, c, valid)),
            model.apply(v, p, patch_coord=c, patch_valid=valid),
        )

    as_dict, as_tuple, as_kwargs = jax.jit(forms)(
        v, *_jax_batch(*_naflex_batch(ASPECTS, (16, 16))).values()
    )
    assert_close(as_tuple, as_dict, "tuple input", dtype="exact")
    assert_close(as_kwargs, as_dict, "keyword input", dtype="exact")
    with pytest.raises(ValueError, match="patch_valid"):
        model.apply(v, jnp.zeros((1, 4, 768)), patch_coord=jnp.zeros((1, 4, 2), jnp.int32))
    assert "naflexvit_base_patch16_gap" in vitjax.list_models("naflexvit_*")


@pytest.mark.slow
def test_naflexvit_base_full_depth_matches_torch():
    # naflexvit_base_patch16_gap as published (12 blocks, 768 wide) on one NaFlex batch of two
    # aspect ratios (5:3 and 1:3) padded to one length
    tm = _random_timm("naflexvit_base_patch16_gap", std=0.05)
    model, v = vitjax.from_timm(tm)
    _, batch = _inputs(model.cfg)
    with torch.no_grad():
        t_feats = tm.forward_features(**_torch_batch(*batch))
        want = tm.forward_head(**t_feats)
    fn = jax.jit(lambda v, b: model.apply(v, b, method=_outputs_naflex))
    logits, feats = fn(v, _jax_batch(*batch))
    _check_relative(logits, want, "NaFlexVit.full_depth[naflex]")
    keep = np.concatenate([np.ones((2, model.cfg.num_prefix_tokens), bool), batch[2]], axis=1)
    assert_close(feats["patches"][keep], t_feats["patches"].numpy()[keep],
                 "NaFlexVit.full_depth_features[valid]", dtype="float32_model")  # fmt: skip


def _outputs_naflex(model, batch):
    feats = model.forward_features(batch)
    return model.forward_head(feats), feats


def test_naflexvit_trains_with_dropouts():
    cfg = naflex.NaFlexVitConfig(
        **{**naflex.VARIANTS["naflexvit_base_patch16_map"], "depth": 1, "embed_dim": 32,
           "num_heads": 2, "num_classes": 3, "patch_drop_rate": 0.5, "drop_path_rate": 0.2,
           "drop_rate": 0.1, "attn_drop_rate": 0.1},
    )  # fmt: skip
    model = naflex.NaFlexVit(cfg)
    batch = _jax_batch(*_naflex_batch(ASPECTS, (16, 16)))
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), batch)
    rng = np.random.default_rng(0)
    v = jax.tree.map(lambda s: jnp.asarray(0.1 * rng.standard_normal(s.shape), s.dtype), shapes)
    step = jax.jit(lambda v, x, r: model.apply(v, x, train=True, rngs={"dropout": r}))
    a, b = step(v, batch, jax.random.PRNGKey(1)), step(v, batch, jax.random.PRNGKey(2))
    assert a.shape == (2, 3) and np.isfinite(a).all() and not np.allclose(a, b)
    feats = jax.eval_shape(
        lambda v, x: model.apply(v, x, True, method="forward_features",
                                 rngs={"dropout": jax.random.PRNGKey(3)}), v, batch,
    )  # fmt: skip
    assert feats["patches"].shape == (2, 1 + 18 // 2, 32) and feats["patch_valid"].shape == (2, 9)


# --- (5) every VARIANTS row ---------------------------------------------------------------------


def test_variants_cover_timm_naflex_models():
    names = timm.list_models(module="naflexvit")
    assert len(names) == 14 and sorted(names) == sorted(naflex.VARIANTS)


@pytest.mark.parametrize("name", sorted(naflex.VARIANTS))
def test_config_from_timm_matches_variants(name):
    with torch.device("meta"):  # structure only, at full depth
        tm = timm.create_model(name, pretrained=False)
    got = naflex.config_from_timm(tm)
    want = naflex.NaFlexVitConfig(**naflex.VARIANTS[name])
    diff = {
        f.name: (getattr(got, f.name), getattr(want, f.name))
        for f in dataclasses.fields(got)
        if getattr(got, f.name) != getattr(want, f.name)
    }
    assert not diff, f"{name}: config_from_timm != VARIANTS row: {diff}"
    assert vitjax.get_config(name) == want


def test_config_roundtrips_json():
    for name in ("naflexvit_base_patch16_parfac_gap", "naflexvit_huge_patch16_radio_v4"):
        cfg = naflex.NaFlexVitConfig(**naflex.VARIANTS[name])
        assert naflex.NaFlexVitConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown NaFlexVitConfig fields"):
        naflex.NaFlexVitConfig.from_dict({"rope_type": "axial"})
    with pytest.raises(ValueError, match="Token pooling"):
        naflex.NaFlexVitConfig(global_pool="token")


def test_config_from_timm_refuses_unsupported():
    base = "naflexvit_base_patch16_gap"
    for kw, what in (
        (dict(rope_type="axial"), "rope of type RotaryEmbeddingCat"),
        (dict(swiglu_mlp=True), "EvaBlock"),
        (dict(pos_embed_use_grid_sample=True), "grid_sample"),
        (dict(enable_patch_interpolator=True), "patch_interpolator"),
        (dict(scale_attn_inner_norm=True), "scale_attn_inner_norm"),
    ):
        with torch.device("meta"):
            tm = timm.create_model(base, pretrained=False, depth=1, **kw)
        with pytest.raises(UnsupportedModelError, match=what):
            naflex.config_from_timm(tm)
    with pytest.raises(UnsupportedModelError, match="VisionTransformer"):
        naflex.config_from_timm(timm.create_model("vit_tiny_patch16_224", depth=1))


# --- (6) checkpoint layouts ---------------------------------------------------------------------


def _classic_vit(tm_naflex) -> dict:
    """The timm VisionTransformer layout of a NaFlexVit's weights: conv patch weight, (1, 1 + N, C)
    pos_embed holding the class token's position."""
    sd = torch_state(tm_naflex)
    w = sd.pop("embeds.proj.weight")
    D, P = w.shape
    p = int(np.sqrt(P // 3))
    sd["patch_embed.proj.weight"] = w.reshape(D, p, p, 3).transpose(0, 3, 1, 2)
    sd["patch_embed.proj.bias"] = sd.pop("embeds.proj.bias")
    pe = sd.pop("embeds.pos_embed")
    cls_pos = np.random.default_rng(0).standard_normal((1, 1, D)).astype(np.float32)
    sd["pos_embed"] = np.concatenate([cls_pos, pe.reshape(1, -1, D)], axis=1)
    sd["cls_token"] = sd.pop("embeds.cls_token")
    return sd


def _radio_original(tm_naflex) -> dict:
    """NVIDIA's RADIO layout: one (C, ph, pw) Linear, all CLS/registers in one table, extras."""
    sd = torch_state(tm_naflex)
    w = sd.pop("embeds.proj.weight")
    D, P = w.shape
    p = int(np.sqrt(P // 3))
    sd.pop("embeds.proj.bias")  # RADIO's projection has none: the filter makes a zero bias
    pre = "radio_model.model."
    out = {pre + "patch_generator.embedder.weight": w.reshape(D, p, p, 3).transpose(0, 3, 1, 2)
           .reshape(D, -1)}  # fmt: skip
    out[pre + "patch_generator.pos_embed"] = sd.pop("embeds.pos_embed").reshape(1, -1, D)
    tokens = np.concatenate([sd.pop("embeds.cls_token"), sd.pop("embeds.reg_token")], axis=1)
    out[pre + "patch_generator.cls_token.token"] = tokens[0]
    for k, v in sd.items():
        out[pre + k.replace(".gamma", ".grandma")] = v
    out["radio_model.input_conditioner.norm_mean"] = np.zeros((3, 1, 1), np.float32)
    out["radio_model.summary_idxs"] = np.zeros(3, np.int64)
    out["adaptors.clip.head.weight"] = np.zeros((4, D), np.float32)
    return out


LAYOUTS = {
    "classic_vit": ("naflexvit_base_patch16_radio_v3", dict(reg_tokens=0), _classic_vit),
    "radio": ("naflexvit_large_patch16_radio_v3", {}, _radio_original),
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_checkpoint_filter_fn_matches_torch(layout):
    name, kw, to_original = LAYOUTS[layout]
    tm = randomize_(timm.create_model(name, pretrained=False, depth=1, **_NARROW, **kw))
    original = to_original(tm)
    cfg = naflex.config_from_timm(tm)
    got = naflex.checkpoint_filter_fn(original, cfg)
    want = tn.checkpoint_filter_fn({k: torch.from_numpy(np.array(v)) for k, v in original.items()},
                                   tm)  # fmt: skip
    assert sorted(got) == sorted(want), set(got) ^ set(want)
    for k in want:
        assert_close(got[k], want[k], f"checkpoint_filter_fn[{layout}].{k}", dtype="exact")
    fresh = copy.deepcopy(tm)
    fresh.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in got.items()}, strict=True)


def test_checkpoint_filter_reads_big_vision_naflex_like_timm(tmp_path):
    # SigLIP 2 NaFlex (big_vision): a Linear over (ph, pw, C) patches and an (H, W, C) grid.
    # timm's reference is its .npz loader; the state_dict is what the npz reader's rules (a 2-D
    # kernel transposed, pos_embedding as stored) give for those two entries.
    tm = randomize_(timm.create_model("naflexvit_base_patch16_siglip", pretrained=False, depth=1,
                                      **_NARROW))  # fmt: skip
    sd = torch_state(tm)
    kernel = sd["embeds.proj.weight"].T  # (ph * pw * C, D)
    grid = sd["embeds.pos_embed"][0]  # (H, W, D)
    npz = {
        "params/img/embedding/kernel": kernel,
        "params/img/embedding/bias": sd["embeds.proj.bias"],
        "params/img/pos_embedding": grid,
    }
    fresh = copy.deepcopy(tm)
    with torch.no_grad():
        fresh.embeds.proj.weight.zero_()
        fresh.embeds.pos_embed.zero_()
    # timm's loader reads every other entry too: give it the rest in big_vision names
    classic = {k: v for k, v in sd.items() if not k.startswith("embeds.")}
    classic["patch_embed.proj.weight"] = np.zeros((96, 3, 16, 16), np.float32)
    rest = npz_io.to_npz_arrays(classic, num_heads=3, layout="big_vision", stacked=True)
    rest.pop("embedding/kernel")
    np.savez(tmp_path / "naflex.npz", **npz, **{f"params/img/{k}": v for k, v in rest.items()})
    fresh.load_pretrained(str(tmp_path / "naflex.npz"))
    reader = dict(classic, **{"patch_embed.proj.weight": kernel.T, "patch_embed.proj.bias":
                              sd["embeds.proj.bias"], "pos_embed": grid})  # fmt: skip
    got = naflex.checkpoint_filter_fn(reader, naflex.config_from_timm(tm))
    want = torch_state(fresh)
    assert sorted(got) == sorted(want), set(got) ^ set(want)
    for k in want:
        assert_close(got[k], want[k], f"big_vision_naflex.{k}", dtype="exact")


def test_checkpoint_filter_resamples_pos_embed_like_timm(rng):
    cfg = naflex.NaFlexVitConfig(**naflex.VARIANTS["naflexvit_base_patch16_gap"])
    pe = rng.standard_normal((1, 24, 24, 768)).astype(np.float32)
    got = naflex.checkpoint_filter_fn({"embeds.pos_embed": pe}, cfg, resample_pos_embed=True)
    want = timm.layers.resample_abs_pos_embed_nhwc(torch.from_numpy(pe), (16, 16))
    assert_close(got["embeds.pos_embed"], want, "checkpoint_filter_fn.resample_pos_embed")
    same = naflex.checkpoint_filter_fn({"embeds.pos_embed": pe}, cfg)["embeds.pos_embed"]
    assert same.shape == pe.shape  # only on request
    with pytest.raises(WeightMismatchError, match="patch size"):
        naflex.checkpoint_filter_fn({"patch_embed.proj.weight": np.zeros((768, 3, 14, 14))}, cfg)
