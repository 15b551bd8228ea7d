"""Rotary position embeddings: vitjax.layers.rotary against timm's pos_embed_sincos, piece by piece.

Grids: square, rectangular, and resized (a grid other than the reference / cached one).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from timm.layers import pos_embed_sincos as T

from parity_tests.parity import assert_close
from vitjax.layers import rotary as R

SHAPES = {"square": (4, 4), "rect": (3, 5), "resized": (7, 2)}


def _np(x):
    return x.detach().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


# --- bands, grids, tables -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "num_bands,temperature,step", [(4, 10000.0, 1), (8, 100.0, 1), (16, 10000.0, 2), (6, 10.0, 2)]
)
def test_freq_bands_matches_torch(num_bands, temperature, step):
    got = R.freq_bands(num_bands, temperature, step)
    assert_close(got, T.freq_bands(num_bands, temperature, step), "freq_bands")


@pytest.mark.parametrize(
    "num_bands,max_freq,linear", [(4, 224.0, True), (8, 64.0, False), (33, 200.0, True)]
)
def test_pixel_freq_bands_matches_torch(num_bands, max_freq, linear):
    got = R.pixel_freq_bands(num_bands, max_freq, linear)
    assert_close(got, T.pixel_freq_bands(num_bands, max_freq, linear), "pixel_freq_bands")


GRIDS = {
    "index": dict(grid_type="index"),
    "index_offset_xy": dict(grid_type="index", grid_offset=1.0, grid_indexing="xy"),
    "index_ref": dict(grid_type="index", ref_feat_shape=(4, 4)),
    "index_ref_xy": dict(grid_type="index", ref_feat_shape=(6, 2), grid_indexing="xy"),
    "pixel": dict(grid_type="pixel"),
    "centered": dict(grid_type="centered"),
    "centered_max_xy": dict(grid_type="centered", normalize_coords="max", grid_indexing="xy"),
    "centered_min_offset": dict(grid_type="centered", normalize_coords="min", grid_offset=0.25),
}


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("grid", list(GRIDS))
def test_build_grid_matches_torch(grid, shape):
    kw, hw = GRIDS[grid], SHAPES[shape]
    got = R._build_grid(hw, **kw)
    want = T._build_grid(list(hw), **kw)
    assert_close(got, want, f"build_grid[{grid},{shape}]", dtype="exact")


def test_make_coords_dinov3_matches_torch():
    for kw in (dict(), dict(normalize_coords="max", grid_indexing="xy"), dict(grid_offset=0.5)):
        got = R.make_coords_dinov3(3, 5, **kw)
        assert_close(got, T.make_coords_dinov3(3, 5, **kw), f"make_coords_dinov3[{kw}]")


TABLES = {
    "eva02": dict(dim=16, in_pixels=False, ref_feat_shape=(4, 4)),
    "pe": dict(dim=16, in_pixels=False, ref_feat_shape=(6, 6), grid_offset=1.0, grid_indexing="xy"),
    "rope_axial": dict(dim=32, in_pixels=False, grid_indexing="xy", temperature=100.0),
    "pixel_half": dict(dim=16, in_pixels=True, max_res=64, rotate_half=True),
    "centered": dict(dim=16, in_pixels=False, grid_type="centered", normalize_coords="max"),
}


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("config", list(TABLES))
def test_build_rotary_pos_embed_matches_torch(config, shape):
    kw, hw = TABLES[config], SHAPES[shape]
    got = R.build_rotary_pos_embed(hw, **kw)
    want = T.build_rotary_pos_embed(list(hw), **kw)
    for g, w, part in zip(got, want, ("sin", "cos"), strict=True):
        assert_close(g, w, f"build_rotary_pos_embed[{config},{shape}].{part}")


def test_build_fourier_pos_embed_matches_torch():
    kw = dict(num_bands=8, max_res=32, include_grid=True, linear_bands=True)
    got = R.build_fourier_pos_embed((3, 5), **kw)
    want = T.build_fourier_pos_embed([3, 5], **kw)
    for g, w, part in zip(got, want, ("grid", "sin", "cos"), strict=True):
        assert_close(g, w, f"build_fourier_pos_embed.{part}")


# --- rotation ------------------------------------------------------------------------------------


@pytest.mark.parametrize("half", [False, True])
def test_apply_rot_embed_matches_torch(half, rng):
    x = rng.standard_normal((2, 3, 15, 16)).astype(np.float32)
    sin, cos = T.build_rotary_pos_embed([3, 5], dim=16, in_pixels=False, rotate_half=half)
    emb = torch.cat([sin, cos], -1)
    xt = torch.from_numpy(x)
    assert_close(R.rot(x), T.rot(xt), "rot")
    assert_close(R.rope_rotate_half(x), T.rope_rotate_half(xt), "rope_rotate_half")
    assert_close(
        R.apply_rot_embed(jnp.asarray(x), _np(sin), _np(cos), half),
        T.apply_rot_embed(xt, sin, cos, half),
        f"apply_rot_embed[half={half}]",
    )
    assert_close(
        R.apply_rot_embed_cat(jnp.asarray(x), _np(emb), half),
        T.apply_rot_embed_cat(xt, emb, half),
        f"apply_rot_embed_cat[half={half}]",
    )
    got = R.apply_rot_embed_list([jnp.asarray(x), jnp.asarray(-x)], _np(sin), _np(cos), half)
    want = T.apply_rot_embed_list([xt, -xt], sin, cos, half)
    for g, w in zip(got, want, strict=True):
        assert_close(g, w, f"apply_rot_embed_list[half={half}]")


def test_apply_rot_embed_keeps_low_precision_dtype(rng):
    x = jnp.asarray(rng.standard_normal((2, 4, 16)), jnp.bfloat16)
    sin, cos = R.build_rotary_pos_embed((2, 2), dim=16, in_pixels=False)
    out = R.apply_rot_embed(x, sin, cos)
    want = T.apply_rot_embed(
        torch.from_numpy(np.asarray(x, np.float32)).bfloat16(),
        torch.from_numpy(sin),
        torch.from_numpy(cos),
    )
    assert out.dtype == jnp.bfloat16 and want.dtype == torch.bfloat16
    assert_close(out.astype(jnp.float32), want.float(), "apply_rot_embed[bf16]", dtype="bfloat16")


@pytest.mark.parametrize("layout", ["2d", "heads", "depth_heads"])
def test_apply_keep_indices_nlc_matches_torch(layout, rng):
    lead = {"2d": (), "heads": (3,), "depth_heads": (2, 3)}[layout]
    pos = rng.standard_normal((*lead, 10, 8)).astype(np.float32)
    x = np.zeros((2, 6, 8), np.float32)
    keep = np.stack([rng.permutation(10)[:6] for _ in range(2)])
    got = R.apply_keep_indices_nlc(jnp.asarray(x), jnp.asarray(pos), jnp.asarray(keep))
    want = T.apply_keep_indices_nlc(
        torch.from_numpy(x), torch.from_numpy(pos), torch.from_numpy(keep)
    )
    assert_close(got, want, f"apply_keep_indices_nlc[{layout}]", dtype="exact")


def test_coord_aug_transform_matches_torch():
    coords = R.make_coords_dinov3(3, 5)
    shift, jitter, rescale = 0.3, 1.5, 2.0
    torch.manual_seed(7)
    want = T._apply_coord_augs(torch.from_numpy(coords), shift, jitter, rescale)
    torch.manual_seed(7)  # the same draws, in timm's order
    shift_hw = torch.empty(2).uniform_(-shift, shift)
    jitter_hw = torch.empty(2).uniform_(-np.log(jitter), np.log(jitter)).exp()
    scale = torch.empty(1).uniform_(-np.log(rescale), np.log(rescale)).exp()
    draws = (_np(t) for t in (shift_hw, jitter_hw, scale))
    got = R.coord_aug_transform(jnp.asarray(coords), *draws)
    assert_close(got, want, "coord_aug_transform")


def test_apply_coord_augs_in_range_and_seeded():
    coords = R.make_coords_dinov3(4, 4)
    key = jax.random.PRNGKey(3)
    a = R._apply_coord_augs(coords, key, rescale_coords=2.0)
    b = R._apply_coord_augs(coords, key, rescale_coords=2.0)
    ratio = np.asarray(a) / coords
    assert np.allclose(a, b) and np.allclose(ratio, ratio.flat[0], rtol=1e-6)
    assert 0.5 <= ratio.flat[0] <= 2.0 and not np.isclose(ratio.flat[0], 1.0)
    with pytest.raises(ValueError, match="jitter_coords"):
        R.coord_aug_config(None, 0.5, None)
    # modules augment only while training, from the 'dropout' stream
    mod = R.RotaryEmbeddingDinoV3(dim=16, rescale_coords=2.0)
    train = mod.apply({}, (3, 3), train=True, method="get_embed", rngs={"dropout": key})
    again = mod.apply({}, (3, 3), train=True, method="get_embed", rngs={"dropout": key})
    assert np.array_equal(train, again) and not np.allclose(train, mod.get_embed((3, 3)))


# --- modules ------------------------------------------------------------------------------------

CAT = {
    "eva02": dict(in_pixels=False, ref_feat_shape=(4, 4)),
    "pe": dict(in_pixels=False, ref_feat_shape=(6, 6), grid_offset=1.0, grid_indexing="xy"),
    "rope_axial": dict(in_pixels=False, grid_indexing="xy", temperature=100.0),
    "pixel_half": dict(in_pixels=True, rotate_half=True),
}


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("config", list(CAT))
def test_rotary_embedding_cat_matches_torch(config, shape):
    kw, hw = CAT[config], SHAPES[shape]
    # built for a new grid (dynamic_img_size), and cached at a fixed feat_shape
    got = R.RotaryEmbeddingCat(dim=16, **kw).get_embed(hw)
    want = T.RotaryEmbeddingCat(dim=16, **kw).get_embed(list(hw))
    assert_close(got, want, f"RotaryEmbeddingCat.get_embed[{config},{shape}]")
    cached = R.RotaryEmbeddingCat(dim=16, feat_shape=hw, **kw)
    cached_t = T.RotaryEmbeddingCat(dim=16, feat_shape=list(hw), **kw)
    assert_close(cached.get_embed(), cached_t.get_embed(), f"RotaryEmbeddingCat.cached[{config}]")
    # a cached module serves its own grid whatever shape it is asked for, as timm's
    assert_close(cached.get_embed((2, 2)), cached_t.get_embed([2, 2]), "RotaryEmbeddingCat.fixed")


@pytest.mark.parametrize("config", ["eva02", "pixel_half"])
def test_rotary_embedding_forward_matches_torch(config, rng):
    kw = CAT[config]
    x = rng.standard_normal((2, 3, 5, 16)).astype(np.float32)  # (B, H, W, C)
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
    got = R.RotaryEmbeddingCat(dim=16, **kw)(jnp.asarray(x))
    want = T.RotaryEmbeddingCat(dim=16, **kw)(xt).permute(0, 2, 3, 1)
    assert_close(got, want, f"RotaryEmbeddingCat.forward[{config}]")
    sin, cos = R.RotaryEmbedding(dim=16, **kw).get_embed((3, 5))
    sin_t, cos_t = T.RotaryEmbedding(dim=16, **kw).get_embed([3, 5])
    assert_close(sin, sin_t, f"RotaryEmbedding.sin[{config}]")
    assert_close(cos, cos_t, f"RotaryEmbedding.cos[{config}]")
    got = R.RotaryEmbedding(dim=16, **kw)(jnp.asarray(x))
    want = T.RotaryEmbedding(dim=16, **kw)(xt).permute(0, 2, 3, 1)
    assert_close(got, want, f"RotaryEmbedding.forward[{config}]")


DINOV3 = {
    "default": dict(temperature=100.0),
    "periods": dict(temperature=None, min_period=0.5, max_period=40.0),
    "max_xy": dict(normalize_coords="max", grid_indexing="xy"),
    "min_offset_interleaved": dict(normalize_coords="min", grid_offset=0.5, rotate_half=False),
}


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("config", list(DINOV3))
def test_rotary_embedding_dinov3_matches_torch(config, shape, rng):
    kw, hw = DINOV3[config], SHAPES[shape]
    mod, ref = R.RotaryEmbeddingDinoV3(dim=32, **kw), T.RotaryEmbeddingDinoV3(dim=32, **kw)
    assert_close(mod.periods, ref.periods, f"RotaryEmbeddingDinoV3.periods[{config}]")
    assert_close(mod.get_embed(hw), ref.get_embed(list(hw)), f"DinoV3.get_embed[{config},{shape}]")
    cached = R.RotaryEmbeddingDinoV3(dim=32, feat_shape=(4, 4), **kw)
    cached_t = T.RotaryEmbeddingDinoV3(dim=32, feat_shape=[4, 4], **kw)
    assert_close(cached.get_embed(), cached_t.get_embed(), f"DinoV3.cached[{config}]")
    # unlike Cat, a shape given to a cached DinoV3 module builds that grid
    assert_close(cached.get_embed(hw), cached_t.get_embed(list(hw)), f"DinoV3.new_grid[{config}]")
    x = rng.standard_normal((2, *hw, 32)).astype(np.float32)
    want = ref(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).permute(0, 2, 3, 1)
    assert_close(mod(jnp.asarray(x)), want, f"RotaryEmbeddingDinoV3.forward[{config},{shape}]")


def _mixed_pair(feat_shape=None):
    ref = T.RotaryEmbeddingMixed(dim=48, depth=2, num_heads=3, feat_shape=feat_shape)
    mod = R.RotaryEmbeddingMixed(
        dim=48, depth=2, num_heads=3, feat_shape=None if feat_shape is None else tuple(feat_shape)
    )
    params = {"params": {"freqs": jnp.asarray(_np(ref.freqs))}}
    return mod, params, ref


@pytest.mark.parametrize("shape", list(SHAPES))
def test_rotary_embedding_mixed_matches_torch(shape, rng):
    hw = SHAPES[shape]
    mod, params, ref = _mixed_pair()
    got = mod.apply(params, hw, method="get_embed")
    assert_close(got, ref.get_embed(list(hw)), f"RotaryEmbeddingMixed.get_embed[{shape}]")
    mod, params, ref = _mixed_pair(list(hw))
    got = mod.apply(params, method="get_embed")
    assert_close(got, ref.get_embed(), f"RotaryEmbeddingMixed.cached[{shape}]")
    x = rng.standard_normal((2, *hw, 48)).astype(np.float32)
    want = ref(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()), block_index=1)
    got = mod.apply(params, jnp.asarray(x), 1)
    assert_close(got, want.permute(0, 2, 3, 1), f"RotaryEmbeddingMixed.forward[{shape}]")


def test_mixed_freqs_param_and_init_matches_torch():
    mod = R.RotaryEmbeddingMixed(dim=48, depth=2, num_heads=3)
    variables = mod.init(jax.random.PRNGKey(0), (2, 2), method="get_embed")
    freqs = variables["params"]["freqs"]
    assert freqs.shape == tuple(T.RotaryEmbeddingMixed(dim=48, depth=2, num_heads=3).freqs.shape)
    # no rotation is deterministic: equal to timm's
    got = R.init_random_2d_freqs(jax.random.PRNGKey(0), 16, 2, 3, 10.0, rotate=False)
    assert_close(got, T.init_random_2d_freqs(16, 2, 3, 10.0, rotate=False), "init_freqs[rotate=0]")
    # rotated: each (fx, fy) pair has timm's magnitude
    fx, fy = _np(T.init_random_2d_freqs(16, 2, 3, 10.0, rotate=False))
    want_mag = np.hypot(fx, fy)
    assert_close(np.hypot(freqs[0], freqs[1]), want_mag, "init_freqs[rotate=1].magnitude")
    t_x, t_y = T.get_mixed_grid([3, 5], grid_indexing="xy")
    got_x, got_y = R.get_mixed_grid((3, 5), grid_indexing="xy")
    assert_close(got_x, t_x, "get_mixed_grid.x", dtype="exact")
    assert_close(got_y, t_y, "get_mixed_grid.y", dtype="exact")
    want = T.get_mixed_freqs(torch.from_numpy(np.array(freqs)), t_x, t_y)
    assert_close(R.get_mixed_freqs(freqs, got_x, got_y), want, "get_mixed_freqs")


@pytest.mark.parametrize("section", [(8, 12, 12), (4, 4, 4)])
@pytest.mark.parametrize("shape", ["square", "rect"])
def test_rotary_embedding_mrope_matches_torch(section, shape):
    hw = SHAPES[shape]
    got = R.RotaryEmbeddingMRope(dim=24, mrope_section=section).get_embed(hw)
    want = T.RotaryEmbeddingMRope(dim=24, mrope_section=section).get_embed(list(hw))
    assert_close(got, want, f"RotaryEmbeddingMRope[{section},{shape}]")


def test_get_batch_embeds_matches_torch():
    shapes = [(2, 3), (4, 2), (3, 3)]
    for kw in (dict(in_pixels=False), dict(in_pixels=False, ref_feat_shape=(4, 4))):
        got = R.RotaryEmbeddingCat(dim=16, **kw).get_batch_embeds(shapes, seq_len=12)
        want = T.RotaryEmbeddingCat(dim=16, **kw).get_batch_embeds(shapes, seq_len=12)
        assert_close(got, want, f"RotaryEmbeddingCat.get_batch_embeds[{kw}]")
    got = R.RotaryEmbeddingDinoV3(dim=16).get_batch_embeds(shapes)
    want = T.RotaryEmbeddingDinoV3(dim=16).get_batch_embeds(shapes)
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        assert_close(g, w, f"RotaryEmbeddingDinoV3.get_batch_embeds[{i}]")
    mod, params, ref = _mixed_pair()
    got = mod.apply(params, shapes, 10, method="get_batch_embeds")
    assert_close(got, ref.get_batch_embeds(shapes, seq_len=10), "Mixed.get_batch_embeds")


def test_create_rope_embed_matches_torch():
    common = dict(dim=64, num_heads=4, temperature=100.0, grid_indexing="xy")
    for rope_type in ("base", "cat", "dinov3", "mrope", "mixed"):
        kw = dict(common, in_pixels=False, ref_feat_shape=(4, 4)) if rope_type != "base" else common
        if rope_type in ("mrope",):
            kw = dict(dim=64, num_heads=4, in_pixels=False)
        if rope_type == "mixed":
            kw["depth"] = 2
        mod = R.create_rope_embed(rope_type, **dict(kw))
        ref = T.create_rope_embed(rope_type, **dict(kw))
        assert type(mod).__name__ == type(ref).__name__
        assert mod.dim == ref.dim
    with pytest.raises(ValueError, match="rotate_half=False"):
        R.create_rope_embed("mixed", dim=64, num_heads=4, depth=2, rotate_half=True)
