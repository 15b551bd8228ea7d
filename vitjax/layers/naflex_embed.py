"""NaFlex patch embedding (timm's NaFlexEmbeds): patches, prefix tokens, resized position tables.

Two inputs, as timm's: NHWC images (patchified here, or a strided convolution), or pre-patchified
NaFlex batches ``(B, N, ph * pw * C)`` with ``patch_coord`` (B, N, 2) (y, x). In NaFlex mode each
sample's grid is ``patch_coord.max(1) + 1`` and its learned ('learned') or per-axis
('factorized') position table is resized to that grid and added to its first h * w tokens, as
timm does. The resize is ``F.interpolate``'s arithmetic (bilinear / bicubic, antialias,
align_corners) written as per-output source taps, so the output size may be a traced value: the
whole NaFlex path jits for a fixed (B, N), with no per-sample Python loop.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import linen as nn

from vitjax.layers.helpers import Dtype, to_2tuple
from vitjax.layers.linear import Dense, PatchConv
from vitjax.layers.norms import make_norm

INTERP_MODES = ("bilinear", "bicubic")  # F.interpolate modes of the 2-D table ('linear' is 1-D)
POS_EMBED_TYPES = ("none", "learned", "factorized")
PROJ_TYPES = ("linear", "conv")


# --- F.interpolate as source taps ---------------------------------------------------------------


def _cubic1(x: jax.Array, a: float) -> jax.Array:
    """Cubic convolution kernel on |x| <= 1 (torch's cubic_convolution1)."""
    return ((a + 2) * x - (a + 3)) * x * x + 1


def _cubic2(x: jax.Array, a: float) -> jax.Array:
    """Cubic convolution kernel on 1 < |x| < 2 (torch's cubic_convolution2)."""
    return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a


def _scale(out_len: jax.Array, in_len: int, align_corners: bool) -> jax.Array:
    """torch's area_pixel_compute_scale (no scale_factor given), in float32."""
    n = out_len.astype(jnp.float32)
    if align_corners:
        return jnp.where(n > 1, (in_len - 1) / jnp.maximum(n - 1, 1), 0.0)
    return in_len / n


def _taps_plain(i, scale, in_len, cubic, align_corners):
    """Taps of torch's non-antialiased linear (2) and cubic (4, A=-0.75) kernels, border-clamped."""
    src = scale * i if align_corners else scale * (i + 0.5) - 0.5
    if not cubic and not align_corners:
        src = jnp.maximum(src, 0.0)
    i0 = jnp.minimum(jnp.floor(src).astype(jnp.int32), in_len - 1)
    lam = jnp.clip(src - i0, 0.0, 1.0)
    if not cubic:
        i1 = i0 + (i0 < in_len - 1)
        return jnp.stack([i0, i1], -1), jnp.stack([1.0 - lam, lam], -1)
    a = -0.75
    w = [_cubic2(lam + 1, a), _cubic1(lam, a), _cubic1(1 - lam, a), _cubic2(2 - lam, a)]
    idx = [jnp.clip(i0 - 1 + k, 0, in_len - 1) for k in range(4)]
    return jnp.stack(idx, -1), jnp.stack(w, -1)


def _taps_antialias(i, scale, in_len, cubic):
    """Weights over all in_len inputs of torch's antialiased (separable, PIL-style) kernels."""
    interp = 4.0 if cubic else 2.0
    support = jnp.where(scale >= 1.0, interp * 0.5 * scale, interp * 0.5)
    invscale = jnp.where(scale >= 1.0, 1.0 / scale, 1.0)
    center = (scale * (i + 0.5))[..., None]
    lo = jnp.maximum(jnp.trunc(center - support[..., None] + 0.5), 0.0)
    hi = jnp.minimum(jnp.trunc(center + support[..., None] + 0.5), in_len)
    j = jnp.arange(in_len, dtype=jnp.float32)
    x = jnp.abs((j - center + 0.5) * invscale[..., None])
    if cubic:  # Keys' a = -0.5 (PIL's), not the -0.75 of the plain kernel
        w = jnp.where(x < 1.0, _cubic1(x, -0.5), jnp.where(x < 2.0, _cubic2(x, -0.5), 0.0))
    else:
        w = jnp.maximum(1.0 - x, 0.0)
    w = jnp.where((j >= lo) & (j < hi), w, 0.0)
    total = w.sum(-1, keepdims=True)
    w = jnp.where(total != 0, w / jnp.where(total != 0, total, 1.0), w)
    idx = jnp.broadcast_to(jnp.arange(in_len, dtype=jnp.int32), w.shape)
    return idx, w


@functools.partial(jax.jit, static_argnames=("in_len", "mode", "antialias", "align_corners"))
def interp_taps(
    out_idx: jax.Array,
    out_len: jax.Array | int,
    in_len: int,
    mode: str = "bilinear",
    antialias: bool = False,
    align_corners: bool = False,
) -> tuple[jax.Array, jax.Array]:
    """(indices, weights), each (..., K): the inputs F.interpolate mixes into output out_idx.

    One axis of a resize from in_len to out_len (both broadcast with out_idx; out_len may be
    traced). mode 'linear' / 'bilinear' or 'bicubic'; K is 2 / 4 taps without antialias, in_len
    (every input) with it. Jitted so the float32 arithmetic (and its fused multiply-adds, as
    torch's compiled kernels do) is the same called eagerly or inside a jitted model.
    """
    cubic = mode == "bicubic"
    i = jnp.asarray(out_idx).astype(jnp.float32)
    scale = jnp.broadcast_to(_scale(jnp.asarray(out_len), in_len, align_corners), i.shape)
    if antialias:
        return _taps_antialias(i, scale, in_len, cubic)
    return _taps_plain(i, scale, in_len, cubic, align_corners)


def _sample_2d(table: jax.Array, y_taps, x_taps) -> jax.Array:
    """sum_ab wy_a wx_b table[iy_a, ix_b] for (..., K) taps; table (H0, W0, C) -> (..., C)."""
    (iy, wy), (ix, wx) = y_taps, x_taps
    H0, W0, C = table.shape
    if wy.shape[-1] == H0 and wx.shape[-1] == W0:  # dense weights: one matmul over the table
        k = (wy[..., :, None] * wx[..., None, :]).reshape(*wy.shape[:-1], H0 * W0)
        return k @ table.reshape(H0 * W0, C)
    rows = table[iy[..., :, None], ix[..., None, :]]  # (..., Ky, Kx, C)
    return jnp.einsum("...a,...b,...abc->...c", wy, wx, rows)


def _sample_1d(table: jax.Array, taps) -> jax.Array:
    """sum_a w_a table[i_a] for (..., K) taps; table (L0, C) -> (..., C)."""
    idx, w = taps
    return jnp.einsum("...a,...ac->...c", w, table[idx])


# --- patchify and NaFlex grids ------------------------------------------------------------------


def batch_patchify(
    x: jax.Array, patch_size: tuple[int, int], pad: bool = True, channels_last: bool = True
) -> tuple[jax.Array, tuple[int, int]]:
    """(B, H, W, C) images -> ((B, nh * nw, ph * pw * C) patches, (nh, nw)), as timm's."""
    B, H, W, C = x.shape
    ph, pw = patch_size
    if pad and (H % ph or W % pw):
        x = jnp.pad(x, ((0, 0), (0, (ph - H % ph) % ph), (0, (pw - W % pw) % pw), (0, 0)))
        H, W = x.shape[1:3]
    elif H % ph or W % pw:
        raise ValueError(
            f"input size {(H, W)} is not divisible by patch size {(ph, pw)} "
            "(build the model with dynamic_img_pad=True to pad it)"
        )
    nh, nw = H // ph, W // pw
    x = x.reshape(B, nh, ph, nw, pw, C)  # (B, nh, ph, nw, pw, C)
    # per-patch flat layout: (ph, pw, C) channels last (NaFlex), or (C, ph, pw)
    x = x.transpose(0, 1, 3, 2, 4, 5) if channels_last else x.transpose(0, 1, 3, 5, 2, 4)
    return x.reshape(B, nh * nw, ph * pw * C), (nh, nw)  # (B, N, P)


def naflex_grid(patch_coord: jax.Array, seq_len: int):
    """Per sample grid (h, w) = max coord + 1, each (B, 1), and each token's row-major (y, x)."""
    # timm assigns a sample's resized table to its first h * w tokens in row-major order
    # (calculate_naflex_grid_sizes + index_add_), whatever the tokens' own coordinates.
    hw = patch_coord.max(axis=1) + 1  # (B, 2)
    h, w = hw[:, :1], hw[:, 1:]  # (B, 1) each
    n = jnp.arange(seq_len)[None]  # (1, N)
    return h, w, n // w, n % w, n < h * w


# --- the embedding module -----------------------------------------------------------------------


class NaFlexEmbeds(nn.Module):
    """Patch projection, prefix tokens and position embedding of timm's NaFlexVit."""

    patch_size: int | tuple[int, int] = 16
    in_chans: int = 3
    embed_dim: int = 768
    proj_type: str = "linear"
    proj_bias: bool = True
    class_token: bool = True
    reg_tokens: int = 0
    dynamic_img_pad: bool = False
    default_img_size: int | tuple[int, int] | None = None
    pos_embed_type: str = "learned"
    pos_embed_grid_size: tuple[int, int] | None = (14, 14)
    pos_embed_interp_mode: str = "bicubic"
    pos_embed_ar_preserving: bool = False
    pos_embed_antialias: bool = True
    pos_embed_align_corners: bool = False
    proj_norm_layer: str | None = None
    norm_eps: float = 1e-6
    pos_drop_rate: float = 0.0
    channels_last: bool = True
    dtype: Dtype = jnp.float32
    dense_impl: str = "auto"

    @property
    def grid(self) -> tuple[int, int] | None:
        """The position table's grid: pos_embed_grid_size, else default_img_size // patch."""
        if self.pos_embed_grid_size is not None:
            return to_2tuple(self.pos_embed_grid_size)
        if self.default_img_size is None:
            return None
        (h, w), (ph, pw) = to_2tuple(self.default_img_size), to_2tuple(self.patch_size)
        return h // ph, w // pw

    def setup(self) -> None:
        dim, dt, patch = self.embed_dim, self.dtype, to_2tuple(self.patch_size)
        tiny = nn.initializers.normal(1e-6)
        self.cls_token = self.param("cls_token", tiny, (1, 1, dim)) if self.class_token else None
        self.reg_token = (
            self.param("reg_token", tiny, (1, self.reg_tokens, dim)) if self.reg_tokens else None
        )
        if self.proj_type == "linear":
            self.proj = Dense(dim, use_bias=self.proj_bias, dtype=dt, impl=self.dense_impl)
        elif self.proj_type == "conv":
            self.proj = PatchConv(
                dim, patch, use_bias=self.proj_bias, dtype=dt, impl=self.dense_impl
            )
        else:
            raise ValueError(f"proj_type={self.proj_type!r}: expected one of {PROJ_TYPES}")
        norm = self.proj_norm_layer
        self.norm = make_norm(norm, self.norm_eps, dt) if norm else None
        kind, grid = self.pos_embed_type, self.grid
        if kind not in POS_EMBED_TYPES:
            raise ValueError(f"pos_embed={kind!r}: expected one of {POS_EMBED_TYPES}")
        if kind != "none" and grid is None:
            raise ValueError(
                "Cannot initialize position embeddings without grid_size. "
                "Please provide img_size or pos_embed_grid_size."
            )
        std = nn.initializers.normal(0.02)
        self.pos_embed = (
            self.param("pos_embed", std, (1, *grid, dim)) if kind == "learned" else None
        )
        factorized = kind == "factorized"
        self.pos_embed_y = self.param("pos_embed_y", std, (1, grid[0], dim)) if factorized else None
        self.pos_embed_x = self.param("pos_embed_x", std, (1, grid[1], dim)) if factorized else None
        self.pos_drop = nn.Dropout(self.pos_drop_rate)

    @property
    def num_prefix_tokens(self) -> int:
        return int(self.class_token) + self.reg_tokens

    def _project(self, x: jax.Array, naflex: bool) -> tuple[jax.Array, tuple[int, int] | None]:
        """Patch tokens (B, N, D) and, for images, their grid."""
        ph, pw = to_2tuple(self.patch_size)
        if self.proj_type == "conv":
            if naflex or x.ndim != 4:
                raise ValueError("Convolutional input must be 4D (B, H, W, C) images")
            if self.dynamic_img_pad:
                H, W = x.shape[1:3]
                x = jnp.pad(x, ((0, 0), (0, (ph - H % ph) % ph), (0, (pw - W % pw) % pw), (0, 0)))
            x = self.proj(x.astype(self.dtype))  # (B, gh, gw, D)
            B, gh, gw, D = x.shape
            return x.reshape(B, gh * gw, D), (gh, gw)
        grid = None
        if not naflex:
            if x.ndim != 4:
                raise ValueError(f"Expecting 2D image input (B, H, W, C), got shape {x.shape}")
            x, grid = batch_patchify(x, (ph, pw), self.dynamic_img_pad, self.channels_last)
        elif x.ndim not in (3, 5):
            raise ValueError(f"Expecting patchified input with ndim == 3 or 5, got {x.shape}")
        x = x.reshape(*x.shape[:2], -1)  # (B, N, ph * pw * C)
        if x.shape[-1] != ph * pw * self.in_chans:
            raise ValueError(
                f"patches of {x.shape[-1]} values; the model takes {ph}x{pw}x{self.in_chans}"
            )
        return self.proj(x.astype(self.dtype)), grid

    def _interp_2d(self, out_y, len_y, out_x, len_x):
        """Source taps of the learned table for output rows out_y of len_y, columns of len_x."""
        H0, W0 = self.pos_embed.shape[1:3]
        kw = dict(
            mode=self.pos_embed_interp_mode,
            antialias=self.pos_embed_antialias,
            align_corners=self.pos_embed_align_corners,
        )
        return interp_taps(out_y, len_y, H0, **kw), interp_taps(out_x, len_x, W0, **kw)

    def _learned_grid(self, grid: tuple[int, int]) -> jax.Array:
        """The learned table resized to an image grid, (1, h * w, D) float32."""
        h, w = grid
        table = self.pos_embed[0].astype(jnp.float32)  # (H0, W0, D)
        if (h, w) == table.shape[:2]:
            return table.reshape(1, h * w, -1)
        L = max(h, w)
        len_y, len_x = (L, L) if self.pos_embed_ar_preserving else (h, w)
        y, x = jnp.meshgrid(jnp.arange(h), jnp.arange(w), indexing="ij")  # (h, w) each
        pos = _sample_2d(table, *self._interp_2d(y, len_y, x, len_x))  # (h, w, D)
        return pos.reshape(1, h * w, -1)

    def _factorized_tables(self, len_y, len_x, y, x) -> jax.Array:
        """pos_embed_y resized to len_y at rows y plus pos_embed_x resized to len_x at columns x."""
        pe_y = self.pos_embed_y[0].astype(jnp.float32)  # (H0, D)
        pe_x = self.pos_embed_x[0].astype(jnp.float32)  # (W0, D)
        taps_y = interp_taps(y, len_y, pe_y.shape[0], "linear")
        taps_x = interp_taps(x, len_x, pe_x.shape[0], "linear")
        return _sample_1d(pe_y, taps_y) + _sample_1d(pe_x, taps_x)

    def _factorized_grid(self, grid: tuple[int, int]) -> jax.Array:
        h, w = grid
        L = max(h, w)
        len_y, len_x = (L, L) if self.pos_embed_ar_preserving else (h, w)
        y, x = jnp.meshgrid(jnp.arange(h), jnp.arange(w), indexing="ij")
        return self._factorized_tables(len_y, len_x, y, x).reshape(1, h * w, -1)

    def _naflex_pos(self, patch_coord: jax.Array, seq_len: int) -> jax.Array:
        """(B, N, D) float32: each sample's table at its grid, on its first h * w tokens."""
        h, w, y, x, inside = naflex_grid(patch_coord, seq_len)
        L = jnp.maximum(h, w)
        len_y, len_x = (L, L) if self.pos_embed_ar_preserving else (h, w)
        if self.pos_embed_type == "factorized":
            pos = self._factorized_tables(len_y, len_x, y, x)
        else:
            table = self.pos_embed[0].astype(jnp.float32)
            pos = _sample_2d(table, *self._interp_2d(y, len_y, x, len_x))
        return jnp.where(inside[..., None], pos, 0.0)

    def __call__(
        self, x: jax.Array, patch_coord: jax.Array | None = None, train: bool = False
    ) -> tuple[jax.Array, tuple[int, int] | None]:
        """(B, prefix + N, D) tokens and the image grid (None in NaFlex mode)."""
        x, grid = self._project(x, naflex=patch_coord is not None)
        if self.norm is not None:
            x = self.norm(x)
        if self.pos_embed_type != "none":
            if grid is None:
                pos = self._naflex_pos(patch_coord, x.shape[1])
            elif self.pos_embed_type == "learned":
                pos = self._learned_grid(grid)
            else:
                pos = self._factorized_grid(grid)
            x = x + pos.astype(x.dtype)
        B, _, D = x.shape
        prefix = [
            jnp.broadcast_to(t.astype(x.dtype), (B, t.shape[1], D))
            for t in (self.cls_token, self.reg_token)
            if t is not None
        ]
        if prefix:
            x = jnp.concatenate(prefix + [x], axis=1)
        return self.pos_drop(x, deterministic=not train), grid
