"""Rotary position embeddings: timm's ``layers/pos_embed_sincos.py`` function for function.

The modules hold no buffers: an embedding is a function of the config and the grid shape, so the
build-for-a-new-grid path (``dynamic_img_size``) is ``get_embed(shape=(H, W))``. Only
``RotaryEmbeddingMixed`` has a parameter (``freqs``, learnable, as in timm).

Static tables (bands, grids, angles) are numpy float32, computed in timm's order: they are
compile-time constants, and numpy keeps IEEE division where XLA rewrites ``x / c`` as
``x * (1 / c)`` (one ulp off torch). sin, cos and pow are evaluated in float64 and rounded once.
Anything that meets a traced value (the mixed ``freqs``, augmented coordinates, the rotation
itself) is jax.numpy.

Training-time coordinate augmentation (shift / jitter / rescale, DINOv3's) draws from the
``"dropout"`` rng stream, the stream a train step already provides.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

Shape = Sequence[int]
F32 = np.float32


def _f32(x: float) -> np.float32:
    return np.float32(x)


def _sin(x: np.ndarray | jax.Array) -> np.ndarray | jax.Array:
    """float32 sin: a static table rounded once from float64, a traced one in jax."""
    if isinstance(x, np.ndarray):
        return np.sin(x.astype(np.float64)).astype(F32)
    return jnp.sin(x)


def _cos(x: np.ndarray | jax.Array) -> np.ndarray | jax.Array:
    """float32 cos: a static table rounded once from float64, a traced one in jax."""
    if isinstance(x, np.ndarray):
        return np.cos(x.astype(np.float64)).astype(F32)
    return jnp.cos(x)


def _pow(base: float, exp: np.ndarray) -> np.ndarray:
    """float32 base ** exp, rounded once from float64."""
    return (np.float64(F32(base)) ** exp.astype(np.float64)).astype(F32)


def _linspace(start: float, end: float, steps: int) -> np.ndarray:
    """torch.linspace in float32: start + i*step in the first half, end - (n-1-i)*step after."""
    if steps == 1:
        return np.full((1,), start, F32)
    step = np.float64((_f32(end) - _f32(start)) / _f32(steps - 1))
    i = np.arange(steps, dtype=np.float64)
    # torch's kernel is compiled with FMA contraction: one rounding of start + step * i, which
    # float64 reproduces (the product of two float32 values is exact there)
    lo = np.float64(_f32(start)) + step * i
    hi = np.float64(_f32(end)) - step * (steps - 1 - i)
    return np.where(i < steps // 2, lo, hi).astype(F32)


def pixel_freq_bands(
    num_bands: int, max_freq: float = 224.0, linear_bands: bool = True
) -> np.ndarray:
    """Pixel-mode bands: linear (or log2-spaced) in [1, max_freq / 2], times pi."""
    if linear_bands:
        bands = _linspace(1.0, max_freq / 2, num_bands)
    else:
        bands = _pow(2.0, _linspace(0, math.log(max_freq, 2) - 1, num_bands))
    return bands * _f32(math.pi)


def freq_bands(num_bands: int, temperature: float = 10000.0, step: int = 2) -> np.ndarray:
    """Inverse-frequency bands 1 / temperature ** (arange(0, n, step) / n)."""
    exp = np.arange(0, num_bands, step).astype(F32) / _f32(num_bands)
    return _f32(1.0) / _pow(temperature, exp)


def swap_shape_xy(seq: Shape) -> list[int]:
    """Swap the first two entries of a shape (H, W) -> (W, H)."""
    seq = list(seq)
    if len(seq) < 2:
        return seq
    return [seq[1], seq[0]] + seq[2:]


def _build_bands(
    num_bands: int,
    in_pixels: bool = True,
    max_res: int = 224,
    temperature: float = 10000.0,
    linear_bands: bool = False,
) -> np.ndarray:
    """Frequency bands (num_bands,): pixel bands if in_pixels, else inverse-frequency bands."""
    if in_pixels:
        return pixel_freq_bands(num_bands, float(max_res), linear_bands=linear_bands)
    return freq_bands(num_bands, temperature=temperature, step=1)


def _build_grid(
    feat_shape: Shape,
    grid_type: str = "index",
    ref_feat_shape: Shape | None = None,
    grid_offset: float = 0.0,
    grid_indexing: str = "ij",
    normalize_coords: str = "separate",
    ndim: int | None = None,
) -> np.ndarray:
    """Coordinate grid (*feat_shape, len(feat_shape)) that sin-cos / rotary tables are built on."""
    if ndim is not None and len(feat_shape) != ndim:
        raise ValueError(f"Expected {ndim} spatial dimensions, got {len(feat_shape)}")
    feat_shape = [int(s) for s in feat_shape]
    if grid_indexing == "xy":
        feat_shape = swap_shape_xy(feat_shape)
        if ref_feat_shape is not None:
            ref_feat_shape = swap_shape_xy(ref_feat_shape)

    if grid_type == "pixel":
        t = [_linspace(-1.0, 1.0, s) for s in feat_shape]
    elif grid_type == "centered":
        if normalize_coords == "max":
            denom = [float(max(feat_shape)) for _ in feat_shape]
        elif normalize_coords == "min":
            denom = [float(min(feat_shape)) for _ in feat_shape]
        elif normalize_coords == "separate":
            denom = [float(s) for s in feat_shape]
        else:
            raise ValueError(f"Unknown normalize_coords: {normalize_coords}")
        t = [
            (np.arange(s, dtype=F32) + _f32(0.5) + _f32(grid_offset)) / _f32(d)
            for s, d in zip(feat_shape, denom, strict=True)
        ]
    elif grid_type == "index":
        t = [np.arange(s).astype(F32) + _f32(grid_offset) for s in feat_shape]
    else:
        raise ValueError(f"Unknown grid_type: {grid_type}")

    if ref_feat_shape is not None:
        # EVA's scheme for resizing rope embeddings (ref shape = pretrain grid)
        t = [x / _f32(f) * _f32(r) for x, f, r in zip(t, feat_shape, ref_feat_shape, strict=True)]

    grid = np.stack(np.meshgrid(*t, indexing=grid_indexing), axis=-1).astype(F32)
    if grid_type == "centered":
        grid = _f32(2.0) * grid - _f32(1.0)  # [0, 1] -> [-1, 1]
    return grid


def _xp(*arrays: object):
    """numpy when every input is a static numpy table, else jax.numpy."""
    return np if all(isinstance(a, (np.ndarray, np.generic)) for a in arrays) else jnp


def _rope_layout(x: np.ndarray | jax.Array, rotate_half: bool = False) -> np.ndarray | jax.Array:
    """(..., D/2) per-frequency values -> (..., D): half [f0, f1, .., f0, f1, ..] or interleaved."""
    xp = _xp(x)
    if rotate_half:
        return xp.concatenate([x, x], axis=-1)
    return xp.repeat(x, 2, axis=-1)


def coord_aug_config(
    shift_coords: float | None, jitter_coords: float | None, rescale_coords: float | None
) -> tuple[float | None, float | None, float | None, bool]:
    """Validated (shift, jitter, rescale, any_active), as timm's _coord_aug_config."""
    for name, value in (
        ("shift_coords", shift_coords),
        ("jitter_coords", jitter_coords),
        ("rescale_coords", rescale_coords),
    ):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise TypeError(f"{name} must be a real number, not a boolean or string.")
    shift = float(shift_coords) if shift_coords is not None else None
    jitter = float(jitter_coords) if jitter_coords is not None else None
    rescale = float(rescale_coords) if rescale_coords is not None else None
    if shift is not None and (not math.isfinite(shift) or shift < 0):
        raise ValueError("shift_coords must be finite and >= 0.")
    if jitter is not None and (not math.isfinite(jitter) or jitter < 1):
        raise ValueError("jitter_coords must be finite and >= 1 (multiplicative factor).")
    if rescale is not None and (not math.isfinite(rescale) or rescale < 1):
        raise ValueError("rescale_coords must be finite and >= 1 (multiplicative factor).")
    active = shift is not None or jitter is not None or rescale is not None
    return shift, jitter, rescale, active


def coord_aug_transform(
    coords: jax.Array,
    shift_hw: jax.Array | None = None,
    jitter_hw: jax.Array | None = None,
    rescale: jax.Array | None = None,
) -> jax.Array:
    """Apply drawn (shift (A,), per-axis scale (A,), shared scale (1,)) to coords (..., A)."""
    if shift_hw is not None:
        coords = coords + shift_hw
    if jitter_hw is not None:
        coords = coords * jitter_hw
    if rescale is not None:
        coords = coords * rescale
    return coords


def _apply_coord_augs(
    coords: jax.Array,
    rng: jax.Array,
    shift_coords: float | None = None,
    jitter_coords: float | None = None,
    rescale_coords: float | None = None,
) -> jax.Array:
    """One random shift / jitter / rescale for all positions (DINOv3's order), drawn from rng."""
    shift, jitter, rescale, _ = coord_aug_config(shift_coords, jitter_coords, rescale_coords)
    A = coords.shape[-1]
    k_shift, k_jitter, k_rescale = jax.random.split(rng, 3)
    uniform = jax.random.uniform
    shift_hw = jitter_hw = scale = None
    if shift is not None:
        shift_hw = uniform(k_shift, (A,), coords.dtype, -shift, shift)
    if jitter is not None:
        j = math.log(jitter)
        jitter_hw = jnp.exp(uniform(k_jitter, (A,), coords.dtype, -j, j))
    if rescale is not None:
        r = math.log(rescale)
        scale = jnp.exp(uniform(k_rescale, (1,), coords.dtype, -r, r))
    return coord_aug_transform(coords, shift_hw, jitter_hw, scale)


def _pad_rope_embeds(embeds: Sequence[jax.Array], seq_len: int) -> jax.Array:
    """Zero-pad embeddings (..., N, D) to seq_len positions and stack them on a new axis 0."""
    out = []
    for e in embeds:
        if e.shape[-2] > seq_len:
            raise ValueError("seq_len must be at least the number of positions in each embedding")
        pad = [(0, 0)] * (e.ndim - 2) + [(0, seq_len - e.shape[-2]), (0, 0)]
        out.append(_xp(e).pad(e, pad))
    return _xp(*out).stack(out)


def build_fourier_pos_embed(
    feat_shape: Shape,
    bands: jax.Array | None = None,
    num_bands: int = 64,
    max_res: int = 224,
    temperature: float = 10000.0,
    linear_bands: bool = False,
    include_grid: bool = False,
    in_pixels: bool = True,
    ref_feat_shape: Shape | None = None,
    grid_offset: float = 0.0,
    grid_indexing: str = "ij",
    dtype: np.dtype = F32,
    grid_type: str | None = None,
    normalize_coords: str = "separate",
    shift_coords: float | None = None,
    jitter_coords: float | None = None,
    rescale_coords: float | None = None,
    rng: jax.Array | None = None,
) -> list[jax.Array]:
    """[sin, cos] (or [grid, sin, cos]) of grid * bands, each (*feat_shape, ndim, num_bands)."""
    if bands is None:
        bands = _build_bands(num_bands, in_pixels, max_res, temperature, linear_bands)
    grid_type_ = grid_type if grid_type is not None else ("pixel" if in_pixels else "index")
    grid = _build_grid(
        feat_shape,
        grid_type=grid_type_,
        ref_feat_shape=ref_feat_shape,
        grid_offset=grid_offset,
        grid_indexing=grid_indexing,
        normalize_coords=normalize_coords,
    )
    if shift_coords is not None or jitter_coords is not None or rescale_coords is not None:
        if rng is None:
            raise ValueError("coordinate augmentation needs an rng")
        grid = _apply_coord_augs(grid, rng, shift_coords, jitter_coords, rescale_coords)
    grid = grid[..., None]
    pos = grid * bands
    pos_sin, pos_cos = _sin(pos).astype(dtype), _cos(pos).astype(dtype)
    return [grid, pos_sin, pos_cos] if include_grid else [pos_sin, pos_cos]


def rot(x: jax.Array) -> jax.Array:
    """Interleaved rotation [x0, x1, x2, x3] -> [-x1, x0, -x3, x2]."""
    return jnp.stack([-x[..., 1::2], x[..., ::2]], axis=-1).reshape(x.shape)


def rope_rotate_half(x: jax.Array) -> jax.Array:
    """Half rotation [x0, x1, x2, x3] -> [-x2, -x3, x0, x1]."""
    x1, x2 = jnp.split(x, 2, axis=-1)
    return jnp.concatenate([-x2, x1], axis=-1)


def apply_rot_embed(
    x: jax.Array, sin_emb: jax.Array, cos_emb: jax.Array, half: bool = False
) -> jax.Array:
    """x * cos + rot(x) * sin, computed in the promoted dtype and returned in x's dtype."""
    out = x * cos_emb + (rope_rotate_half(x) if half else rot(x)) * sin_emb
    return out.astype(x.dtype)


def apply_rot_embed_list(
    x: jax.Array | Sequence[jax.Array], sin_emb: jax.Array, cos_emb: jax.Array, half: bool = False
) -> list[jax.Array]:
    """apply_rot_embed to each tensor of a list."""
    if isinstance(x, jax.Array):
        x = [x]
    return [apply_rot_embed(t, sin_emb, cos_emb, half=half) for t in x]


def apply_rot_embed_cat(x: jax.Array, emb: jax.Array, half: bool = False) -> jax.Array:
    """apply_rot_embed with [sin, cos] concatenated on the last axis of emb."""
    sin_emb, cos_emb = jnp.split(emb, 2, axis=-1)
    return apply_rot_embed(x, sin_emb, cos_emb, half=half)


def apply_keep_indices_nlc(
    x: jax.Array, pos_embed: jax.Array, keep_indices: jax.Array, pos_embed_has_batch: bool = False
) -> jax.Array:
    """Gather the kept positions (keep_indices (B, K)) of rope tables (..., N, D) per batch row."""
    if not pos_embed_has_batch:
        pos_embed = jnp.broadcast_to(pos_embed[None], (x.shape[0], *pos_embed.shape))
    idx = keep_indices.reshape(
        keep_indices.shape[0], *(1,) * (pos_embed.ndim - 3), keep_indices.shape[1], 1
    )
    idx = jnp.broadcast_to(idx, (*pos_embed.shape[:-2], keep_indices.shape[1], pos_embed.shape[-1]))
    return jnp.take_along_axis(pos_embed, idx, axis=-2)


def build_rotary_pos_embed(
    feat_shape: Shape,
    bands: jax.Array | None = None,
    dim: int = 64,
    max_res: int = 224,
    temperature: float = 10000.0,
    linear_bands: bool = False,
    in_pixels: bool = True,
    ref_feat_shape: Shape | None = None,
    grid_offset: float = 0.0,
    grid_indexing: str = "ij",
    rotate_half: bool = False,
    dtype: np.dtype = F32,
    grid_type: str | None = None,
    normalize_coords: str = "separate",
    shift_coords: float | None = None,
    jitter_coords: float | None = None,
    rescale_coords: float | None = None,
    rng: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """(sin, cos) rotary tables, each (N, dim) in the half or interleaved layout."""
    sin_emb, cos_emb = build_fourier_pos_embed(
        feat_shape,
        bands=bands,
        num_bands=dim // 4,
        max_res=max_res,
        temperature=temperature,
        linear_bands=linear_bands,
        in_pixels=in_pixels,
        ref_feat_shape=ref_feat_shape,
        grid_offset=grid_offset,
        grid_indexing=grid_indexing,
        dtype=dtype,
        grid_type=grid_type,
        normalize_coords=normalize_coords,
        shift_coords=shift_coords,
        jitter_coords=jitter_coords,
        rescale_coords=rescale_coords,
        rng=rng,
    )
    N = int(np.prod(feat_shape))
    sin_emb = _rope_layout(sin_emb.reshape(N, -1), rotate_half)  # (N, dim)
    cos_emb = _rope_layout(cos_emb.reshape(N, -1), rotate_half)  # (N, dim)
    return sin_emb, cos_emb


class RotaryEmbedding(nn.Module):
    """Axial rotary embeddings with separate sin and cos tables (timm's RotaryEmbedding)."""

    dim: int
    max_res: int = 224
    temperature: float = 10000.0
    in_pixels: bool = True
    linear_bands: bool = False
    feat_shape: tuple[int, ...] | None = None
    ref_feat_shape: tuple[int, ...] | None = None
    grid_offset: float = 0.0
    grid_indexing: str = "ij"
    grid_type: str | None = None
    normalize_coords: str = "separate"
    shift_coords: float | None = None
    jitter_coords: float | None = None
    rescale_coords: float | None = None
    rotate_half: bool = False

    @property
    def aug_active(self) -> bool:
        """Whether training-time coordinate augmentation is configured."""
        return coord_aug_config(self.shift_coords, self.jitter_coords, self.rescale_coords)[3]

    @property
    def bands(self) -> jax.Array:
        """Frequency bands (dim // 4,) in float32."""
        return _build_bands(
            self.dim // 4,
            in_pixels=self.in_pixels,
            max_res=self.max_res,
            temperature=float(self.temperature),
            linear_bands=self.linear_bands,
        )

    def _build_embed(
        self, feat_shape: Shape, dtype: jnp.dtype | None = None, augment: bool = False
    ) -> tuple[jax.Array, jax.Array]:
        """(sin, cos) (N, dim) for a grid, augmented from the 'dropout' rng when asked."""
        return build_rotary_pos_embed(
            feat_shape,
            bands=self.bands,
            in_pixels=self.in_pixels,
            ref_feat_shape=self.ref_feat_shape,
            grid_offset=self.grid_offset,
            grid_indexing=self.grid_indexing,
            rotate_half=self.rotate_half,
            dtype=F32 if dtype is None else dtype,
            grid_type=self.grid_type
            if self.grid_type is not None
            else ("pixel" if self.in_pixels else "index"),
            normalize_coords=self.normalize_coords,
            shift_coords=self.shift_coords if augment else None,
            jitter_coords=self.jitter_coords if augment else None,
            rescale_coords=self.rescale_coords if augment else None,
            rng=self.make_rng("dropout") if augment else None,
        )

    def _target_shape(self, shape: Shape | None) -> Shape:
        # timm: a module built with feat_shape serves its cached grid and ignores `shape`
        if self.feat_shape is None and shape is not None:
            return shape
        if self.feat_shape is not None:
            return self.feat_shape
        raise ValueError("get_embed() needs a shape when the module has no feat_shape")

    def get_embed(
        self, shape: Shape | None = None, dtype: jnp.dtype | None = None, train: bool = False
    ) -> tuple[jax.Array, jax.Array]:
        """(sin, cos) embeddings, each (N, dim)."""
        return self._build_embed(self._target_shape(shape), dtype, train and self.aug_active)

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Rotate a channels-last tensor (B, *spatial, C) with C == dim."""
        B, *spatial, C = x.shape
        sin_emb, cos_emb = self.get_embed(spatial, train=train)
        x_flat = x.reshape(B, -1, C)  # (B, N, C)
        return apply_rot_embed(x_flat, sin_emb, cos_emb, half=self.rotate_half).reshape(x.shape)


class RotaryEmbeddingCat(RotaryEmbedding):
    """Axial rotary embeddings as one [sin, cos] table (N, 2 * dim) (EVA-02, PE, RoPE-ViT axial)."""

    def get_embed(
        self, shape: Shape | None = None, dtype: jnp.dtype | None = None, train: bool = False
    ) -> jax.Array:
        """Concatenated [sin, cos] embedding (N, 2 * dim)."""
        sin_emb, cos_emb = super().get_embed(shape, dtype, train)
        return _xp(sin_emb, cos_emb).concatenate([sin_emb, cos_emb], axis=-1)

    def get_batch_embeds(
        self,
        shapes: Sequence[tuple[int, int]],
        seq_len: int | None = None,
        dtype: jnp.dtype | None = None,
        train: bool = False,
    ) -> jax.Array | list[jax.Array]:
        """One (H*W, 2 * dim) table per grid shape; stacked and zero-padded to seq_len if given."""
        if not shapes:
            return []
        if self.feat_shape is not None:
            raise RuntimeError(
                "Batch embedding generation requires cached bands, not pre-computed embeddings"
            )
        grid_type = self.grid_type or ("pixel" if self.in_pixels else "index")
        augment = train and self.aug_active
        if grid_type == "index" and self.ref_feat_shape is None and not augment:
            # one table for the largest grid, sliced: index coordinates do not depend on the size
            max_h = max(h for h, _ in shapes)
            max_w = max(w for _, w in shapes)
            emb = self.get_embed((max_h, max_w), dtype).reshape(max_h, max_w, -1)
            embeds = [emb[:h, :w].reshape(h * w, -1) for h, w in shapes]
        else:
            embeds = [self.get_embed((h, w), dtype, train) for h, w in shapes]
        return _pad_rope_embeds(embeds, seq_len) if seq_len is not None else embeds

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Rotate a channels-last tensor (B, *spatial, C) with C == dim."""
        B, *spatial, C = x.shape
        emb = self.get_embed(spatial, train=train)
        x_flat = x.reshape(B, -1, C)  # (B, N, C)
        return apply_rot_embed_cat(x_flat, emb, half=self.rotate_half).reshape(x.shape)


def init_random_2d_freqs(
    key: jax.Array,
    head_dim: int,
    depth: int,
    num_heads: int,
    temperature: float = 10.0,
    rotate: bool = True,
    dtype: np.dtype = F32,
) -> jax.Array:
    """RoPE-Mixed's initial frequencies (2, depth, num_heads, head_dim // 2), random per head."""
    mag = _f32(1.0) / _pow(temperature, np.arange(0, head_dim, 4, dtype=F32) / _f32(head_dim))
    mag = mag[None, None, :]  # (1, 1, L)
    if rotate:
        angles = jax.random.uniform(key, (depth, num_heads, 1), F32) * 2 * _f32(math.pi)
    else:
        angles = jnp.zeros((depth, num_heads, 1), F32)
    half_pi = _f32(math.pi / 2)
    fx = jnp.concatenate([mag * jnp.cos(angles), mag * jnp.cos(angles + half_pi)], axis=-1)
    fy = jnp.concatenate([mag * jnp.sin(angles), mag * jnp.sin(angles + half_pi)], axis=-1)
    return jnp.stack([fx, fy], axis=0).astype(dtype)


def get_mixed_grid(shape: Shape, grid_indexing: str = "ij") -> tuple[jax.Array, jax.Array]:
    """The two coordinate vectors (H*W,) of an index grid, channel order set by grid_indexing."""
    grid = _build_grid(shape, grid_indexing=grid_indexing, ndim=2).reshape(-1, 2)
    return grid[:, 0], grid[:, 1]


def get_mixed_freqs(
    freqs: jax.Array, t_x: jax.Array, t_y: jax.Array, dtype: jnp.dtype | None = None
) -> jax.Array:
    """(..., N, 2 * head_dim) [sin, cos] tables from frequencies (2, ..., head_dim // 2)."""
    dtype = freqs.dtype if dtype is None else dtype
    freqs = freqs.astype(F32)
    freqs_x = t_x.astype(F32)[:, None] * freqs[0][..., None, :]  # (..., N, head_dim // 2)
    freqs_y = t_y.astype(F32)[:, None] * freqs[1][..., None, :]
    combined = freqs_x + freqs_y
    sin_emb = _rope_layout(jnp.sin(combined))
    cos_emb = _rope_layout(jnp.cos(combined))
    return jnp.concatenate([sin_emb, cos_emb], axis=-1).astype(dtype)


class RotaryEmbeddingMixed(nn.Module):
    """RoPE-Mixed: learnable per-block, per-head 2-D frequencies (param ``freqs``)."""

    dim: int
    depth: int
    num_heads: int
    temperature: float = 10.0
    feat_shape: tuple[int, int] | None = None
    grid_indexing: str = "xy"
    shift_coords: float | None = None
    jitter_coords: float | None = None
    rescale_coords: float | None = None

    def setup(self) -> None:
        if self.feat_shape is not None and len(self.feat_shape) != 2:
            raise ValueError(f"Expected 2 spatial dimensions, got {len(self.feat_shape)}")
        head_dim = self.dim // self.num_heads
        if head_dim % 4:
            raise ValueError(f"head_dim must be divisible by 4, got {head_dim}")
        self.freqs = self.param(
            "freqs",
            lambda key, shape: init_random_2d_freqs(
                key, head_dim, self.depth, self.num_heads, self.temperature
            ),
            (2, self.depth, self.num_heads, head_dim // 2),
        )

    @property
    def aug_active(self) -> bool:
        """Whether training-time coordinate augmentation is configured."""
        return coord_aug_config(self.shift_coords, self.jitter_coords, self.rescale_coords)[3]

    def get_embed(
        self, shape: Shape | None = None, dtype: jnp.dtype | None = None, train: bool = False
    ) -> jax.Array:
        """(depth, num_heads, H*W, 2 * head_dim) tables for a grid (or feat_shape if None)."""
        if shape is None:
            if self.feat_shape is None:
                raise ValueError("get_embed() needs a shape when the module has no feat_shape")
            shape = self.feat_shape
        t_x, t_y = get_mixed_grid(shape, grid_indexing=self.grid_indexing)
        if train and self.aug_active:
            coords = _apply_coord_augs(
                jnp.stack([t_x, t_y], axis=-1).astype(F32),
                self.make_rng("dropout"),
                self.shift_coords,
                self.jitter_coords,
                self.rescale_coords,
            )
            t_x, t_y = coords[:, 0], coords[:, 1]
            if dtype is None:
                dtype = jnp.promote_types(self.freqs.dtype, F32)
        return get_mixed_freqs(self.freqs, t_x, t_y, dtype=dtype)

    def get_batch_embeds(
        self,
        shapes: Sequence[tuple[int, int]],
        seq_len: int | None = None,
        dtype: jnp.dtype | None = None,
        train: bool = False,
    ) -> jax.Array | list[jax.Array]:
        """One (depth, num_heads, H*W, 2 * head_dim) table per grid; stacked, padded to seq_len."""
        if not shapes:
            return []
        if train and self.aug_active:
            embeds = [self.get_embed((h, w), dtype, train) for h, w in shapes]
        else:
            max_h = max(h for h, _ in shapes)
            max_w = max(w for _, w in shapes)
            t_x, t_y = get_mixed_grid((max_h, max_w), grid_indexing=self.grid_indexing)
            emb = get_mixed_freqs(self.freqs, t_x, t_y, dtype=dtype)
            D, H, _, C = emb.shape
            emb = emb.reshape(D, H, max_h, max_w, C)  # (depth, heads, max_h, max_w, C)
            embeds = [emb[:, :, :h, :w].reshape(D, H, h * w, C) for h, w in shapes]
        return _pad_rope_embeds(embeds, seq_len) if seq_len is not None else embeds

    def __call__(self, x: jax.Array, block_index: int = 0, train: bool = False) -> jax.Array:
        """Rotate a channels-last (B, H, W, dim) tensor with one block's frequencies."""
        B, H, W, C = x.shape
        if C != self.dim:
            raise ValueError("Mixed RoPE expects dim channels")
        if not 0 <= block_index < self.depth:
            raise ValueError("block_index must be in [0, depth)")
        emb = self.get_embed((H, W), train=train)[block_index]  # (heads, N, 2 * head_dim)
        x_heads = x.reshape(B, H * W, self.num_heads, C // self.num_heads)  # (B, N, nh, Dh)
        x_heads = apply_rot_embed_cat(x_heads.transpose(0, 2, 1, 3), emb)  # (B, nh, N, Dh)
        return x_heads.transpose(0, 2, 1, 3).reshape(x.shape)


def make_coords_dinov3(
    height: int,
    width: int,
    normalize_coords: str = "separate",
    grid_indexing: str = "ij",
    grid_offset: float = 0.0,
) -> jax.Array:
    """DINOv3's centered coordinates in [-1, 1], (H*W, 2), row-major."""
    return _build_grid(
        [height, width],
        grid_type="centered",
        grid_offset=grid_offset,
        grid_indexing=grid_indexing,
        normalize_coords=normalize_coords,
    ).reshape(-1, 2)


class RotaryEmbeddingDinoV3(nn.Module):
    """DINOv3's RoPE: centered normalised coordinates, periods from temperature or min/max."""

    dim: int
    temperature: float | None = 100.0
    min_period: float | None = None
    max_period: float | None = None
    feat_shape: tuple[int, int] | None = None
    normalize_coords: str = "separate"
    grid_offset: float = 0.0
    grid_indexing: str = "ij"
    rotate_half: bool = True
    shift_coords: float | None = None
    jitter_coords: float | None = None
    rescale_coords: float | None = None

    @property
    def aug_active(self) -> bool:
        """Whether training-time coordinate augmentation is configured."""
        return coord_aug_config(self.shift_coords, self.jitter_coords, self.rescale_coords)[3]

    @property
    def periods(self) -> np.ndarray:
        """Periods (dim // 4,) from min/max period or the temperature, float32."""
        n = self.dim // 4
        if self.min_period is not None and self.max_period is not None:
            exponents = _linspace(0, 1, n)
            return _f32(self.min_period) * _pow(self.max_period / self.min_period, exponents)
        if self.temperature is None:
            raise ValueError("Provide either min/max periods or `temperature`.")
        exponents = _f32(2.0) * np.arange(n, dtype=F32) / _f32(self.dim // 2)
        return _pow(self.temperature, exponents)

    def _get_pos_embed_from_coords(self, coords: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(sin, cos) (HW, dim) from coords (HW, 2)."""
        angles = 2 * _f32(math.pi) * coords[:, :, None] / self.periods[None, None, :]
        angles = angles.reshape(angles.shape[0], -1)  # (HW, dim // 2)
        sin = _rope_layout(_sin(angles), self.rotate_half)
        cos = _rope_layout(_cos(angles), self.rotate_half)
        return sin, cos

    def _create_embed(self, feat_shape: Shape, augment: bool = False) -> jax.Array:
        """[sin, cos] (HW, 2 * dim) for a grid."""
        coords = _build_grid(
            feat_shape,
            grid_type="centered",
            grid_offset=self.grid_offset,
            grid_indexing=self.grid_indexing,
            normalize_coords=self.normalize_coords,
            ndim=2,
        ).reshape(-1, 2)  # (HW, 2)
        if augment:
            coords = _apply_coord_augs(
                coords,
                self.make_rng("dropout"),
                self.shift_coords,
                self.jitter_coords,
                self.rescale_coords,
            )
        sin, cos = self._get_pos_embed_from_coords(coords)
        return _xp(sin, cos).concatenate([sin, cos], axis=-1)

    def get_embed(
        self, shape: Shape | None = None, dtype: jnp.dtype | None = None, train: bool = False
    ) -> jax.Array:
        """[sin, cos] embedding (H*W, 2 * dim) for a grid (or feat_shape if None)."""
        if shape is None:
            if self.feat_shape is None:
                raise ValueError("feature shape must be set when get_embed() gets no shape")
            shape = self.feat_shape
        emb = self._create_embed(shape, augment=train and self.aug_active)
        return emb if dtype is None else emb.astype(dtype)

    def get_batch_embeds(
        self,
        shapes: Sequence[tuple[int, int]],
        seq_len: int | None = None,
        dtype: jnp.dtype | None = None,
        train: bool = False,
    ) -> jax.Array | list[jax.Array]:
        """One (H*W, 2 * dim) table per grid (each normalised by its own size)."""
        if not shapes:
            return []
        embeds = [self.get_embed((h, w), dtype, train) for h, w in shapes]
        return _pad_rope_embeds(embeds, seq_len) if seq_len is not None else embeds

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Rotate a channels-last tensor (B, H, W, C) with C == dim."""
        B, *spatial, C = x.shape
        emb = self.get_embed(spatial, train=train)
        x_flat = x.reshape(B, -1, C)  # (B, N, C)
        return apply_rot_embed_cat(x_flat, emb, half=self.rotate_half).reshape(x.shape)


class RotaryEmbeddingMRope(nn.Module):
    """Interleaved multimodal RoPE (Qwen2-VL style) over an (H, W) grid; temporal channels inert."""

    dim: int
    mrope_section: tuple[int, int, int] = (8, 12, 12)
    temperature: float = 10000.0
    grid_indexing: str = "ij"
    shift_coords: float | None = None
    jitter_coords: float | None = None
    rescale_coords: float | None = None

    @property
    def aug_active(self) -> bool:
        """Whether training-time coordinate augmentation is configured."""
        return coord_aug_config(self.shift_coords, self.jitter_coords, self.rescale_coords)[3]

    @property
    def axis(self) -> np.ndarray:
        """Axis per frequency channel (dim // 2,): 0 temporal, 1 height, 2 width."""
        _, sec_h, sec_w = self.mrope_section
        axis = np.zeros(self.dim // 2, np.int64)
        axis[1 : sec_h * 3 : 3] = 1
        axis[2 : sec_w * 3 : 3] = 2
        return axis

    def get_embed(
        self, shape: Shape, dtype: jnp.dtype | None = None, train: bool = False
    ) -> jax.Array:
        """[sin, cos] (H*W, 2 * dim) in the half layout."""
        if self.grid_indexing != "ij":
            raise ValueError("RotaryEmbeddingMRope supports grid_indexing='ij' only")
        grid = _build_grid(shape, grid_indexing=self.grid_indexing, ndim=2).reshape(-1, 2)
        if train and self.aug_active:
            grid = _apply_coord_augs(
                grid,
                self.make_rng("dropout"),
                self.shift_coords,
                self.jitter_coords,
                self.rescale_coords,
            )
        xp = _xp(grid)
        pos = xp.concatenate([xp.zeros_like(grid[:, :1]), grid], axis=-1)[:, self.axis]
        angles = pos * freq_bands(self.dim, temperature=float(self.temperature), step=2)
        sin = _rope_layout(_sin(angles), rotate_half=True)
        cos = _rope_layout(_cos(angles), rotate_half=True)
        emb = xp.concatenate([sin, cos], axis=-1)
        return emb if dtype is None else emb.astype(dtype)


def create_rope_embed(
    rope_type: str = "cat", dim: int = 768, num_heads: int = 12, **kwargs
) -> nn.Module:
    """Rotary embedding module by type ('base', 'cat', 'mixed', 'dinov3', 'mrope'), as timm."""
    if rope_type == "base":
        return RotaryEmbedding(dim=dim // num_heads, **kwargs)
    if rope_type == "cat":
        return RotaryEmbeddingCat(dim=dim // num_heads, **kwargs)
    if rope_type == "mixed":
        if kwargs.pop("rotate_half", False):
            raise ValueError("rope_type='mixed' requires rotate_half=False")
        kwargs.pop("in_pixels", None)
        kwargs.pop("ref_feat_shape", None)
        return RotaryEmbeddingMixed(dim=dim, num_heads=num_heads, **kwargs)
    if rope_type == "dinov3":
        kwargs.pop("in_pixels", None)
        kwargs.pop("ref_feat_shape", None)
        return RotaryEmbeddingDinoV3(dim=dim // num_heads, **kwargs)
    if rope_type == "mrope":
        if not kwargs.pop("rotate_half", True):
            raise ValueError("rope_type='mrope' requires rotate_half=True")
        for k in ("in_pixels", "ref_feat_shape", "feat_shape"):
            kwargs.pop(k, None)
        return RotaryEmbeddingMRope(dim=dim // num_heads, **kwargs)
    raise ValueError(f"Unknown RoPE type: {rope_type}")
