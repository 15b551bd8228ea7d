"""The relpos family: timm's VisionTransformerRelPos (vit_relpos_*, vit_srelpos_*) in Flax linen.

timm's ``models/vision_transformer_relpos.py`` and ``layers/pos_embed_rel.py``: a ViT with no
absolute position embedding; each attention adds a relative-position bias, either looked up in a
learned table (RelPosBias, Swin-v1 / BEiT) or computed by a small MLP from log-spaced relative
coordinates (RelPosMlp, Swin-v2 'swin' or timm's 'cr'), per block or shared by all blocks.
The index tables and log coordinates are timm's non-persistent buffers: recomputed here (numpy
constants), never variables, so exports hold exactly timm's state_dict keys.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from itertools import product
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from vitjax.layers import (
    ACT_LAYERS,
    NORM_LAYERS,
    Dense,
    DropPath,
    Dtype,
    LayerScale,
    Mlp,
    PatchEmbed,
    dense_init,
    dot_product_attention,
    make_act,
    make_norm,
)
from vitjax.layers.features import (
    check_output_fmt,
    collect_intermediates,
    dynamic_feat_size,
    feature_take_indices,
    format_intermediates,
)
from vitjax.models.common import (
    UnsupportedModelError,
    act_name,
    check_linear,
    cls_name,
    is_identity,
    norm_kind,
    require,
)
from vitjax.models.vit_config import mlp_ratio_for
from vitjax.util import ATTN_IMPLS, DENSE_IMPLS, config_from_dict, config_to_dict, to_2tuple

__all__ = [
    "CONFIG",
    "MODEL",
    "TIMM_CLASSES",
    "VARIANTS",
    "RelPosAttention",
    "RelPosBias",
    "RelPosBlock",
    "RelPosConfig",
    "RelPosMlp",
    "ResPostRelPosBlock",
    "VisionTransformerRelPos",
    "checkpoint_filter_fn",
    "config_from_timm",
]

GLOBAL_POOLS = ("", "avg", "token")
REL_POS_TYPES = ("mlp", "mlp_swin", "bias")  # RelPosMlp mode 'cr', RelPosMlp mode 'swin', table
BLOCK_FNS = ("RelPosBlock", "ResPostRelPosBlock")
BUFFERS = ("relative_position_index", "rel_coords_log")  # non-persistent in timm


# --- config ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RelPosConfig:
    """Every option of a VisionTransformerRelPos, with timm's names and defaults.

    ``final_norm=False`` (not a timm argument) drops both norm and fc_norm: what timm's
    prune_intermediate_layers leaves after pruning the norm or the head.
    """

    img_size: int | tuple[int, int] = 224
    patch_size: int | tuple[int, int] = 16
    in_chans: int = 3
    num_classes: int = 1000
    global_pool: str = "avg"
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    qk_norm: bool = False
    init_values: float | None = 1e-6
    class_token: bool = False
    fc_norm: bool = False
    final_norm: bool = True
    rel_pos_type: str = "mlp"
    rel_pos_dim: int | None = None
    shared_rel_pos: bool = False
    drop_rate: float = 0.0
    proj_drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    norm_layer: str = "layernorm"
    norm_eps: float = 1e-6
    act_layer: str = "gelu"
    block_fn: str = "RelPosBlock"
    attn_impl: str = "auto"
    dense_impl: str = "auto"

    def __post_init__(self) -> None:
        choices = dict(
            global_pool=GLOBAL_POOLS, rel_pos_type=REL_POS_TYPES, block_fn=BLOCK_FNS,
            norm_layer=NORM_LAYERS, act_layer=ACT_LAYERS, attn_impl=ATTN_IMPLS,
            dense_impl=DENSE_IMPLS,
        )  # fmt: skip
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}={getattr(self, name)!r}: expected one of {allowed}")
        if self.global_pool == "token" and not self.class_token:
            raise ValueError("global_pool='token' needs class_token=True")
        if self.embed_dim % self.num_heads:
            raise ValueError(
                f"embed_dim={self.embed_dim} is not divisible by num_heads={self.num_heads}"
            )
        for name in ("img_size", "patch_size", "in_chans", "embed_dim", "depth", "num_heads"):
            if min(to_2tuple(getattr(self, name))) <= 0:
                raise ValueError(f"{name}={getattr(self, name)!r} must be positive")

    @property
    def grid_size(self) -> tuple[int, int]:
        (h, w), (ph, pw) = to_2tuple(self.img_size), to_2tuple(self.patch_size)
        return h // ph, w // pw

    @property
    def num_prefix_tokens(self) -> int:
        return int(self.class_token)

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def mlp_hidden(self) -> int:
        return int(self.embed_dim * self.mlp_ratio)

    def rel_pos_cls(self) -> Callable[..., nn.Module]:
        """The relative-position module constructor, as timm's rel_pos_cls partial."""
        args = dict(window_size=self.grid_size, prefix_tokens=self.num_prefix_tokens)
        if self.rel_pos_type.startswith("mlp"):
            if self.rel_pos_dim:
                args["hidden_dim"] = self.rel_pos_dim
            if "swin" in self.rel_pos_type:
                args["mode"] = "swin"
            return partial(RelPosMlp, dense_impl=self.dense_impl, **args)
        return partial(RelPosBias, **args)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of every field."""
        return config_to_dict(self, ("img_size", "patch_size"))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RelPosConfig:
        """Inverse of to_dict; unknown keys are an error naming them."""
        return config_from_dict(cls, d, ("img_size", "patch_size"))


# --- relative-position tables (numpy, as timm's buffers) --------------------------------------


def gen_relative_position_index(q_size: tuple[int, int], class_token: bool = False) -> np.ndarray:
    """(Wh*Ww [+1], Wh*Ww [+1]) index into the bias table, as timm's (BEiT's cls rows)."""
    coords = np.stack(np.meshgrid(np.arange(q_size[0]), np.arange(q_size[1]), indexing="ij"))
    coords = coords.reshape(2, -1)  # (2, Wh*Ww)
    rel = (coords[:, :, None] - coords[:, None, :]).transpose(1, 2, 0)  # (Wh*Ww, Wh*Ww, 2)
    rel[:, :, 0] += q_size[0] - 1  # shift to start from 0
    rel[:, :, 1] += q_size[1] - 1
    rel[:, :, 0] *= 2 * q_size[1] - 1
    index = rel.sum(-1)
    if class_token:
        num_relative_distance = (2 * q_size[0] - 1) * (2 * q_size[1] - 1)
        index = np.pad(index, ((1, 0), (1, 0)))
        index[0, 0:] = num_relative_distance  # cls -> token
        index[0:, 0] = num_relative_distance + 1  # token -> cls
        index[0, 0] = num_relative_distance + 2  # cls -> cls
    return index.astype(np.int64)


def gen_relative_log_coords(
    win_size: tuple[int, int],
    pretrained_win_size: tuple[int, int] = (0, 0),
    mode: str = "swin",
) -> np.ndarray:
    """(2Wh-1, 2Ww-1, 2) float32 log-spaced relative coordinates, as timm's ('swin' / 'cr')."""
    if mode not in ("swin", "cr"):
        raise ValueError(f"mode={mode!r}: expected 'swin' or 'cr'")
    h = np.arange(-(win_size[0] - 1), win_size[0]).astype(np.float32)
    w = np.arange(-(win_size[1] - 1), win_size[1]).astype(np.float32)
    table = np.stack(np.meshgrid(h, w, indexing="ij")).transpose(1, 2, 0).copy()
    if mode == "swin":
        norm = pretrained_win_size if pretrained_win_size[0] > 0 else win_size
        table[:, :, 0] /= np.float32(norm[0] - 1)
        table[:, :, 1] /= np.float32(norm[1] - 1)
        table *= np.float32(8)  # normalise to -8, 8
        table = np.sign(table) * np.log2(np.float32(1) + np.abs(table)) / np.float32(3)
    else:
        table = np.sign(table) * np.log(np.float32(1) + np.abs(table))
    return table.astype(np.float32)


def _interp_linear(points: list[np.ndarray], values: np.ndarray, at: list[np.ndarray]):
    """timm's RegularGridInterpolator (linear, uneven grid spacing) in float32 numpy."""
    idxs, dists, overalls = [], [], []
    for p, x in zip(points, at, strict=True):
        right = np.minimum(np.searchsorted(p, x, side="left"), p.shape[0] - 1)
        left = np.clip(right - 1, 0, p.shape[0] - 1)
        dist_left = np.maximum(x - p[left], 0).astype(np.float32)
        dist_right = np.maximum(p[right] - x, 0).astype(np.float32)
        both_zero = (dist_left == 0) & (dist_right == 0)
        dist_left[both_zero] = dist_right[both_zero] = 1.0
        idxs.append((left, right))
        dists.append((dist_left, dist_right))
        overalls.append(dist_left + dist_right)
    numerator = np.float32(0)
    for corner in product([0, 1], repeat=len(points)):
        index = tuple(idx[c] for c, idx in zip(corner, idxs, strict=True))
        weight = np.prod(np.stack([d[1 - c] for c, d in zip(corner, dists, strict=True)]), 0)
        numerator = numerator + values[index] * weight
    return numerator / np.prod(np.stack(overalls), 0)


def _geometric_positions(src: int, dst: int) -> np.ndarray:
    """BEiT's source sample positions: geometrically spaced so src points span dst."""
    left, right = 1.01, 1.5
    while right - left > 1e-6:
        q = (left + right) / 2.0
        gp = (1.0 - q ** (src // 2)) / (1.0 - q)
        if gp > dst // 2:
            right = q
        else:
            left = q
    dis, cur = [], 1
    for i in range(src // 2):
        dis.append(cur)
        cur += q ** (i + 1)
    return np.array([-d for d in reversed(dis)] + [0] + dis, np.float32)


def resize_rel_pos_bias_table(
    rel_pos_bias: np.ndarray,
    new_window_size: tuple[int, int],
    new_bias_shape: tuple[int, ...],
    old_window_size: tuple[int, int] | None = None,
) -> np.ndarray:
    """A (num_pos, num_heads) bias table resampled to a new window, as timm's (no scipy)."""
    dst_size = (new_window_size[0] * 2 - 1, new_window_size[1] * 2 - 1)
    dst_num_pos = new_bias_shape[0]
    src_num_pos, num_heads = rel_pos_bias.shape
    num_extra = dst_num_pos - dst_size[0] * dst_size[1]
    if old_window_size is not None:
        src_size = (old_window_size[0] * 2 - 1, old_window_size[1] * 2 - 1)
    else:  # a checkpoint's window: square unless its size rules that out
        n = src_num_pos - num_extra
        side = int(n**0.5)
        if side * side == n:
            src_size = (side, side)
        elif n == dst_size[0] * dst_size[1]:
            src_size = dst_size
        else:
            raise ValueError(
                f"cannot infer a non-square source window for a relative position table of "
                f"size {src_num_pos}; pass old_window_size"
            )
    if src_size == dst_size:
        return rel_pos_bias
    orig_dtype = rel_pos_bias.dtype
    extra = rel_pos_bias[src_num_pos - num_extra :] if num_extra else None
    table = rel_pos_bias[: src_num_pos - num_extra].astype(np.float32)
    points = [_geometric_positions(src_size[0], dst_size[0]),
              _geometric_positions(src_size[1], dst_size[1])]  # fmt: skip
    ty, tx = dst_size[0] // 2.0, dst_size[1] // 2.0
    dy = np.arange(-ty, ty + 0.1, 1.0).astype(np.float32)
    dx = np.arange(-tx, tx + 0.1, 1.0).astype(np.float32)
    at = list(np.meshgrid(dy, dx, indexing="ij"))
    heads = [
        _interp_linear(points, table[:, i].reshape(src_size), at).reshape(-1, 1)
        for i in range(num_heads)
    ]
    out = np.concatenate(heads, axis=-1)
    if extra is not None:
        out = np.concatenate([out, extra.astype(np.float32)], axis=0)
    return out.astype(orig_dtype)


# --- relative-position modules ----------------------------------------------------------------


class RelPosBias(nn.Module):
    """Learned relative-position bias table, indexed per query/key pair (Swin-v1 / BEiT)."""

    window_size: tuple[int, int]
    num_heads: int
    prefix_tokens: int = 0
    dtype: Dtype = jnp.float32

    def setup(self) -> None:
        if self.prefix_tokens > 1:
            raise ValueError(f"RelPosBias takes at most 1 prefix token, got {self.prefix_tokens}")
        wh, ww = self.window_size
        num_relative_distance = (2 * wh - 1) * (2 * ww - 1) + 3 * self.prefix_tokens
        self.relative_position_bias_table = self.param(
            "relative_position_bias_table", dense_init, (num_relative_distance, self.num_heads)
        )
        self.relative_position_index = gen_relative_position_index(
            self.window_size, class_token=self.prefix_tokens > 0
        ).reshape(-1)

    def get_bias(self, train: bool = False) -> jax.Array:
        """(1, H, N, N) additive attention bias."""
        n = self.window_size[0] * self.window_size[1] + self.prefix_tokens
        bias = self.relative_position_bias_table[self.relative_position_index]  # (N*N, H)
        bias = bias.reshape(n, n, self.num_heads).transpose(2, 0, 1)  # (H, N, N)
        return bias[None].astype(self.dtype)

    def __call__(self, attn: jax.Array, train: bool = False) -> jax.Array:
        return attn + self.get_bias(train)


class _CoordMlp(nn.Module):
    """RelPosMlp's mlp: timm's Mlp(2, hidden, heads, ReLU, bias=(True, b), drop=(0.125, 0))."""

    # The shared Mlp takes one bias and one drop for both layers; timm's RelPosMlp needs a pair.
    hidden_features: int
    out_features: int
    fc2_bias: bool = True
    drop: float = 0.125
    dtype: Dtype = jnp.float32
    dense_impl: str = "auto"

    def setup(self) -> None:
        dt, impl = self.dtype, self.dense_impl
        self.fc1 = Dense(self.hidden_features, dtype=dt, impl=impl)
        self.act = make_act("relu")
        self.drop1 = nn.Dropout(self.drop)
        self.fc2 = Dense(self.out_features, use_bias=self.fc2_bias, dtype=dt, impl=impl)

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        return self.fc2(self.drop1(self.act(self.fc1(x)), deterministic=not train))


class RelPosMlp(nn.Module):
    """Relative-position bias from an MLP over log-spaced relative coordinates (Swin-v2)."""

    window_size: tuple[int, int]
    num_heads: int = 8
    hidden_dim: int = 128
    prefix_tokens: int = 0
    mode: str = "cr"
    pretrained_window_size: tuple[int, int] = (0, 0)
    dtype: Dtype = jnp.float32
    dense_impl: str = "auto"

    def setup(self) -> None:
        swin = self.mode == "swin"
        self.bias_gain = 16.0 if swin else None  # swin: 16 * sigmoid(mlp(coords))
        self.mlp = _CoordMlp(
            self.hidden_dim, self.num_heads, fc2_bias=not swin, dtype=self.dtype,
            dense_impl=self.dense_impl,
        )  # fmt: skip
        self.relative_position_index = gen_relative_position_index(self.window_size).reshape(-1)
        self.rel_coords_log = gen_relative_log_coords(
            self.window_size, self.pretrained_window_size, mode=self.mode
        )

    def get_bias(self, train: bool = False) -> jax.Array:
        """(1, H, P + N, P + N) additive attention bias, zero on the P prefix rows / columns."""
        n, H = self.window_size[0] * self.window_size[1], self.num_heads
        bias = self.mlp(jnp.asarray(self.rel_coords_log, self.dtype), train)  # (2Wh-1, 2Ww-1, H)
        bias = bias.reshape(-1, H)[self.relative_position_index]  # (N*N, H)
        bias = bias.reshape(n, n, H).transpose(2, 0, 1)  # (H, N, N)
        if self.bias_gain is not None:
            bias = self.bias_gain * nn.sigmoid(bias)
        p = self.prefix_tokens
        if p:
            bias = jnp.pad(bias, ((0, 0), (p, 0), (p, 0)))  # (H, P + N, P + N)
        return bias[None]

    def __call__(self, attn: jax.Array, train: bool = False) -> jax.Array:
        return attn + self.get_bias(train)


# --- attention and blocks ---------------------------------------------------------------------


class RelPosAttention(nn.Module):
    """Multi-head self-attention plus a relative-position bias (its own or a shared one)."""

    dim: int
    num_heads: int = 8
    qkv_bias: bool = False
    qk_norm: bool = False
    rel_pos_cls: Callable[..., nn.Module] | None = None
    attn_drop: float = 0.0
    proj_drop: float = 0.0
    norm_layer: str = "layernorm"
    norm_eps: float = 1e-6
    dtype: Dtype = jnp.float32
    attn_impl: str = "auto"
    dense_impl: str = "auto"

    def setup(self) -> None:
        dim, dt, impl = self.dim, self.dtype, self.dense_impl
        if dim % self.num_heads:
            raise ValueError(f"dim={dim} is not divisible by num_heads={self.num_heads}")
        self.qkv = Dense(dim * 3, use_bias=self.qkv_bias, dtype=dt, impl=impl)
        norm = lambda: make_norm(self.norm_layer, self.norm_eps, dt)  # noqa: E731
        self.q_norm = norm() if self.qk_norm else None
        self.k_norm = norm() if self.qk_norm else None
        rel_pos_cls = self.rel_pos_cls
        self.rel_pos = rel_pos_cls(num_heads=self.num_heads, dtype=dt) if rel_pos_cls else None
        self.attn_dropout = nn.Dropout(self.attn_drop)
        self.proj = Dense(dim, dtype=dt, impl=impl)
        self.proj_dropout = nn.Dropout(self.proj_drop)

    def __call__(
        self, x: jax.Array, shared_rel_pos: jax.Array | None = None, train: bool = False
    ) -> jax.Array:
        B, N, C = x.shape
        H = self.num_heads
        Dh = C // H
        qkv = self.qkv(x).reshape(B, N, 3, H, Dh)  # (B, N, 3, H, Dh)
        q, k, v = qkv.transpose(2, 0, 3, 1, 4)  # 3 x (B, H, N, Dh)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        bias = self.rel_pos.get_bias(train) if self.rel_pos is not None else shared_rel_pos
        drop = None
        if train and self.attn_drop > 0:
            drop = lambda p: self.attn_dropout(p, deterministic=False)  # noqa: E731
        x = dot_product_attention(q, k, v, Dh**-0.5, bias=bias, impl=self.attn_impl, dropout=drop)
        x = self.proj(x.transpose(0, 2, 1, 3).reshape(B, N, C))  # (B, N, C)
        return self.proj_dropout(x, deterministic=not train)


class RelPosBlock(nn.Module):
    """Pre-norm block with relative-position attention: x + ls1(attn(norm1(x))), then the MLP."""

    dim: int
    num_heads: int
    mlp_ratio: float = 4.0
    qkv_bias: bool = False
    qk_norm: bool = False
    rel_pos_cls: Callable[..., nn.Module] | None = None
    init_values: float | None = None
    proj_drop: float = 0.0
    attn_drop: float = 0.0
    drop_path: float = 0.0
    act_layer: str = "gelu"
    norm_layer: str = "layernorm"
    norm_eps: float = 1e-6
    dtype: Dtype = jnp.float32
    attn_impl: str = "auto"
    dense_impl: str = "auto"

    def _attn(self) -> RelPosAttention:
        return RelPosAttention(
            self.dim, self.num_heads, qkv_bias=self.qkv_bias, qk_norm=self.qk_norm,
            rel_pos_cls=self.rel_pos_cls, attn_drop=self.attn_drop, proj_drop=self.proj_drop,
            norm_layer=self.norm_layer, norm_eps=self.norm_eps, dtype=self.dtype,
            attn_impl=self.attn_impl, dense_impl=self.dense_impl,
        )  # fmt: skip

    def _mlp(self) -> Mlp:
        return Mlp(
            int(self.dim * self.mlp_ratio), self.dim, act_layer=self.act_layer,
            drop=self.proj_drop, dtype=self.dtype, dense_impl=self.dense_impl,
        )  # fmt: skip

    def _norm(self) -> nn.Module:
        return make_norm(self.norm_layer, self.norm_eps, self.dtype)

    def setup(self) -> None:
        self.norm1 = self._norm()
        self.attn = self._attn()
        self.ls1 = LayerScale(self.dim, self.init_values) if self.init_values else None
        self.drop_path1 = DropPath(self.drop_path)
        self.norm2 = self._norm()
        self.mlp = self._mlp()
        self.ls2 = LayerScale(self.dim, self.init_values) if self.init_values else None
        self.drop_path2 = DropPath(self.drop_path)

    def __call__(
        self, x: jax.Array, shared_rel_pos: jax.Array | None = None, train: bool = False
    ) -> jax.Array:
        y = self.attn(self.norm1(x), shared_rel_pos, train)
        x = x + self.drop_path1(self.ls1(y) if self.ls1 is not None else y, train)
        y = self.mlp(self.norm2(x), train)
        return x + self.drop_path2(self.ls2(y) if self.ls2 is not None else y, train)


class ResPostRelPosBlock(RelPosBlock):
    """Residual post-norm block: x + norm1(attn(x)), then x + norm2(mlp(x))."""

    def setup(self) -> None:
        # timm initialises norm1 / norm2 weights to init_values (the residual gain).
        self.attn = self._attn()
        self.norm1 = self._norm()
        self.drop_path1 = DropPath(self.drop_path)
        self.mlp = self._mlp()
        self.norm2 = self._norm()
        self.drop_path2 = DropPath(self.drop_path)

    def __call__(
        self, x: jax.Array, shared_rel_pos: jax.Array | None = None, train: bool = False
    ) -> jax.Array:
        x = x + self.drop_path1(self.norm1(self.attn(x, shared_rel_pos, train)), train)
        return x + self.drop_path2(self.norm2(self.mlp(x, train)), train)


# --- the model --------------------------------------------------------------------------------


class VisionTransformerRelPos(nn.Module):
    """ViT with relative-position attention bias: patch embed, [cls], blocks, norm, pool, head."""

    cfg: RelPosConfig
    dtype: Dtype = jnp.float32

    def setup(self) -> None:
        cfg, dim, dt = self.cfg, self.cfg.embed_dim, self.dtype
        self.patch_embed = PatchEmbed(
            cfg.img_size, cfg.patch_size, cfg.in_chans, dim, dtype=dt, dense_impl=cfg.dense_impl
        )
        rel_pos_cls = cfg.rel_pos_cls()
        self.shared_rel_pos = None
        if cfg.shared_rel_pos:
            self.shared_rel_pos = rel_pos_cls(num_heads=cfg.num_heads, dtype=dt)
            rel_pos_cls = None  # shared and per-block are exclusive, as in timm
        if cfg.class_token:
            self.cls_token = self.param("cls_token", nn.initializers.normal(1e-6), (1, 1, dim))
        block_fn = ResPostRelPosBlock if cfg.block_fn == "ResPostRelPosBlock" else RelPosBlock
        rates = [cfg.drop_path_rate * i / max(cfg.depth - 1, 1) for i in range(cfg.depth)]
        self.blocks = [
            block_fn(
                dim,
                cfg.num_heads,
                mlp_ratio=cfg.mlp_ratio,
                qkv_bias=cfg.qkv_bias,
                qk_norm=cfg.qk_norm,
                rel_pos_cls=rel_pos_cls,
                init_values=cfg.init_values,
                proj_drop=cfg.proj_drop_rate,
                attn_drop=cfg.attn_drop_rate,
                drop_path=rate,
                act_layer=cfg.act_layer,
                norm_layer=cfg.norm_layer,
                norm_eps=cfg.norm_eps,
                dtype=dt,
                attn_impl=cfg.attn_impl,
                dense_impl=cfg.dense_impl,
            )  # fmt: skip
            for rate in rates
        ]
        norm = lambda: make_norm(cfg.norm_layer, cfg.norm_eps, dt)  # noqa: E731
        self.norm = norm() if cfg.final_norm and not cfg.fc_norm else None
        self.fc_norm = norm() if cfg.final_norm and cfg.fc_norm else None
        self.head_drop = nn.Dropout(cfg.drop_rate)
        self.head = (
            Dense(cfg.num_classes, dtype=dt, impl=cfg.dense_impl) if cfg.num_classes > 0 else None
        )

    def _tokens(self, x: jax.Array) -> jax.Array:
        x = self.patch_embed(x.astype(self.dtype))  # (B, N, C)
        if self.cfg.class_token:
            B, _, C = x.shape
            cls = jnp.broadcast_to(self.cls_token.astype(x.dtype), (B, 1, C))
            x = jnp.concatenate([cls, x], axis=1)  # (B, 1 + N, C)
        return x

    def _shared_bias(self, train: bool) -> jax.Array | None:
        return self.shared_rel_pos.get_bias(train) if self.shared_rel_pos is not None else None

    def forward_features(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = self._tokens(x)
        shared_rel_pos = self._shared_bias(train)
        for blk in self.blocks:
            x = blk(x, shared_rel_pos, train)
        return self.norm(x) if self.norm is not None else x

    def forward_head(
        self, x: jax.Array, pre_logits: bool = False, train: bool = False
    ) -> jax.Array:
        cfg = self.cfg
        if cfg.global_pool == "avg":
            x = x[:, cfg.num_prefix_tokens :].mean(axis=1)
        elif cfg.global_pool == "token":
            x = x[:, 0]
        if self.fc_norm is not None:
            x = self.fc_norm(x)
        x = self.head_drop(x, deterministic=not train)
        return x if pre_logits or self.head is None else self.head(x)

    def __call__(self, x: jax.Array, train: bool = False, pre_logits: bool = False) -> jax.Array:
        return self.forward_head(self.forward_features(x, train), pre_logits, train)

    def forward_intermediates(
        self,
        x: jax.Array,
        indices: int | Sequence[int] | None = None,
        return_prefix_tokens: bool = False,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NHWC",
        intermediates_only: bool = False,
        train: bool = False,
    ) -> list[Any] | tuple[jax.Array, list[Any]]:
        """timm's forward_intermediates: (final features, per-block features), or the list.

        indices: the last n blocks if an int, all if None, else those indices (negative from the
        end). Each intermediate is (B, H, W, C) for output_fmt "NHWC" (timm's "NCHW" transposed
        by (0, 2, 3, 1)) or (B, H * W, C) for "NLC", normalised by the final norm if norm; with
        return_prefix_tokens and a class token, a (patches, (B, 1, C) class token) tuple. The
        final features are forward_features' output (of block max(indices) with stop_early).
        """
        cfg = self.cfg
        check_output_fmt(output_fmt)
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        _, height, width, _ = x.shape
        x = self._tokens(x)
        shared_rel_pos = self._shared_bias(train)
        x, intermediates = collect_intermediates(
            x, lambda i, x: self.blocks[i](x, shared_rel_pos, train), len(self.blocks),
            take_indices, max_index, stop_early, self.norm if norm else None,
        )  # fmt: skip
        grid = dynamic_feat_size((height, width), cfg.patch_size)
        intermediates = format_intermediates(
            intermediates, cfg.num_prefix_tokens, grid, output_fmt, return_prefix_tokens
        )
        if intermediates_only:
            return intermediates
        return (self.norm(x) if self.norm is not None else x), intermediates

    @nn.nowrap
    def prune_intermediate_layers(
        self,
        indices: int | Sequence[int] = 1,
        prune_norm: bool = False,
        prune_head: bool = True,
    ) -> tuple[VisionTransformerRelPos, list[int]]:
        """timm's prune_intermediate_layers as a new model: (pruned model, indices it keeps).

        The pruned model has only the blocks up to max(indices) (each keeping its drop-path
        rate), no final norm if prune_norm, and no head (fc_norm, classifier; global_pool "")
        if prune_head. Its variables are
        ``vitjax.layers.features.prune_variables(variables, pruned_model)``.
        """
        cfg = self.cfg
        take_indices, max_index = feature_take_indices(cfg.depth, indices)
        # the norm that exists (norm, or fc_norm instead) is the one that pruning drops
        dropped = prune_head if cfg.fc_norm else prune_norm
        changes: dict[str, Any] = dict(
            depth=max_index + 1,
            drop_path_rate=cfg.drop_path_rate * max_index / max(cfg.depth - 1, 1),
            final_norm=cfg.final_norm and not dropped,
        )
        if prune_head:
            changes.update(num_classes=0, global_pool="")
        return self.clone(parent=None, cfg=dataclasses.replace(cfg, **changes)), take_indices


# --- reading a live timm model ----------------------------------------------------------------

TIMM_CLASSES = ("VisionTransformerRelPos",)
_BLOCK_CLASSES = {"RelPosBlock": "RelPosBlock", "ResPostRelPosBlock": "ResPostRelPosBlock"}


def _drop(m: Any) -> float:
    return float(getattr(m, "p", getattr(m, "drop_prob", 0.0)) or 0.0)


def _rel_pos_kind(rp: Any, where: str, grid: tuple[int, int], prefix: int) -> tuple[str, int]:
    """(rel_pos_type, MLP hidden width) of a timm RelPosMlp / RelPosBias; refuses others."""
    name = cls_name(rp)
    require(name in ("RelPosMlp", "RelPosBias"), f"{where} of type {name}")
    require(tuple(rp.window_size) == grid, f"{where} with window {rp.window_size} != grid {grid}")
    require(rp.prefix_tokens == prefix, f"{where} with {rp.prefix_tokens} prefix tokens")
    if name == "RelPosBias":
        return "bias", 0
    require(rp.mode in ("swin", "cr"), f"{where} with mode {rp.mode!r}")
    require(tuple(rp.pretrained_window_size) == (0, 0), f"{where} with pretrained_window_size")
    swin = rp.mode == "swin"
    mlp = rp.mlp
    require(cls_name(mlp) == "Mlp" and cls_name(mlp.act) == "ReLU", f"{where}.mlp of that form")
    check_linear(mlp.fc1, f"{where}.mlp.fc1", 2, mlp.fc1.out_features, True)
    check_linear(mlp.fc2, f"{where}.mlp.fc2", mlp.fc1.out_features, rp.num_heads, not swin)
    require(is_identity(mlp.norm), f"{where}.mlp.norm")
    return ("mlp_swin" if swin else "mlp"), mlp.fc1.out_features


def _check_block(blk: Any, i: int, ref: dict[str, Any]) -> None:
    """Refuse a block vitjax cannot mirror or one that differs from block 0 (ref)."""
    w = f"blocks.{i}"
    require(cls_name(blk) == ref["block_fn"], f"{w} of type {cls_name(blk)} (block 0 differs)")
    attn, mlp, dim = blk.attn, blk.mlp, ref["dim"]
    require(cls_name(attn) == "RelPosAttention", f"{w}.attn of type {cls_name(attn)}")
    require(attn.num_heads == ref["num_heads"], f"{w}.attn with another head count")
    check_linear(attn.qkv, f"{w}.attn.qkv", dim, 3 * dim, ref["qkv_bias"])
    check_linear(attn.proj, f"{w}.attn.proj", dim, dim, True)
    for qk in ("q_norm", "k_norm"):
        has = not is_identity(getattr(attn, qk))
        require(has == ref["qk_norm"], f"{w}.attn.{qk} differing from block 0")
        if has:
            require(norm_kind(getattr(attn, qk), f"{w}.attn.{qk}") == ref["norm"],
                    f"{w}.attn.{qk} with another norm kind or eps")  # fmt: skip
    if ref["shared"]:
        require(attn.rel_pos is None, f"{w}.attn.rel_pos together with shared_rel_pos")
    else:
        require(attn.rel_pos is not None, f"{w}.attn without a relative position bias")
        kind = _rel_pos_kind(attn.rel_pos, f"{w}.attn.rel_pos", ref["grid"], ref["prefix"])
        require(kind == ref["rel_pos"], f"{w}.attn.rel_pos differing from block 0")
    require(cls_name(mlp) == "Mlp", f"{w}.mlp of type {cls_name(mlp)}")
    check_linear(mlp.fc1, f"{w}.mlp.fc1", dim, ref["hidden"], True)
    check_linear(mlp.fc2, f"{w}.mlp.fc2", ref["hidden"], dim, True)
    require(is_identity(mlp.norm), f"{w}.mlp.norm")
    require(act_name(mlp.act, f"{w}.mlp.act") == ref["act"], f"{w}.mlp.act differing")
    for n in ("norm1", "norm2"):
        require(norm_kind(getattr(blk, n), f"{w}.{n}") == ref["norm"], f"{w}.{n} with another eps")
    if ref["block_fn"] == "RelPosBlock":
        for ls in ("ls1", "ls2"):
            mod = getattr(blk, ls)
            require(is_identity(mod) == (ref["init_values"] is None), f"{w}.{ls} differing")
            if not is_identity(mod):
                require(cls_name(mod) == "LayerScale", f"{w}.{ls} of type {cls_name(mod)}")


def _init_values(blk: Any) -> float | None:
    if cls_name(blk) == "ResPostRelPosBlock":
        return None if blk.init_values is None else float(blk.init_values)
    return None if is_identity(blk.ls1) else float(blk.ls1.init_values)


def _check_patch_embed(pe: Any) -> None:
    require(cls_name(pe) == "PatchEmbed", f"patch_embed of type {cls_name(pe)}")
    proj = pe.proj
    require(cls_name(proj) == "Conv2d", f"patch_embed.proj of type {cls_name(proj)}")
    require(
        tuple(proj.kernel_size) == tuple(proj.stride) == tuple(pe.patch_size)
        and tuple(proj.padding) == (0, 0) and proj.groups == 1 and proj.bias is not None,
        "patch_embed.proj that is not a plain patchify convolution with bias",
    )  # fmt: skip
    require(is_identity(pe.norm), "patch_embed.norm")
    require(pe.flatten and pe.strict_img_size and not pe.dynamic_img_pad,
            "patch_embed with dynamic image size or padding")  # fmt: skip


def _square(x: tuple[int, int]) -> int | tuple[int, int]:
    return int(x[0]) if x[0] == x[1] else (int(x[0]), int(x[1]))


def config_from_timm(model: Any) -> RelPosConfig:
    """RelPosConfig equal to a timm VisionTransformerRelPos instance."""
    require(cls_name(model) in TIMM_CLASSES, f"model class {cls_name(model)}")
    require(len(model.blocks) > 0, "a model with no blocks")
    pe, blk, dim = model.patch_embed, model.blocks[0], model.embed_dim
    _check_patch_embed(pe)
    require(cls_name(blk) in _BLOCK_CLASSES, f"blocks.0 of type {cls_name(blk)}")
    grid, prefix = tuple(pe.grid_size), int(model.num_prefix_tokens)
    shared = model.shared_rel_pos is not None
    rel_pos = model.shared_rel_pos if shared else blk.attn.rel_pos
    require(rel_pos is not None, "blocks.0.attn without a relative position bias")
    where = "shared_rel_pos" if shared else "blocks.0.attn.rel_pos"
    rel_pos_kind = _rel_pos_kind(rel_pos, where, grid, prefix)
    ref = dict(
        block_fn=cls_name(blk), dim=dim, num_heads=blk.attn.num_heads,
        qkv_bias=blk.attn.qkv.bias is not None, qk_norm=not is_identity(blk.attn.q_norm),
        hidden=blk.mlp.fc1.out_features, act=act_name(blk.mlp.act, "blocks.0.mlp.act"),
        norm=norm_kind(blk.norm1, "blocks.0.norm1"), init_values=_init_values(blk),
        shared=shared, rel_pos=rel_pos_kind, grid=grid, prefix=prefix,
    )  # fmt: skip
    for i, b in enumerate(model.blocks):
        _check_block(b, i, ref)
        require(_init_values(b) == ref["init_values"], f"blocks.{i} with another init_values")
    fc_norm = not is_identity(model.fc_norm)
    final = model.fc_norm if fc_norm else model.norm
    require(is_identity(model.norm) == fc_norm, "both or neither of norm and fc_norm")
    require(norm_kind(final, "fc_norm" if fc_norm else "norm") == ref["norm"],
            "a final norm of another kind or eps")  # fmt: skip
    if model.num_classes > 0:
        check_linear(model.head, "head", dim, model.num_classes, True)
    rel_type, hidden = rel_pos_kind
    return RelPosConfig(
        img_size=_square(tuple(pe.img_size)),
        patch_size=_square(tuple(pe.patch_size)),
        in_chans=pe.proj.in_channels,
        num_classes=model.num_classes,
        global_pool=model.global_pool,
        embed_dim=dim,
        depth=len(model.blocks),
        num_heads=ref["num_heads"],
        mlp_ratio=mlp_ratio_for(dim, ref["hidden"]),
        qkv_bias=ref["qkv_bias"],
        qk_norm=ref["qk_norm"],
        init_values=ref["init_values"],
        class_token=model.cls_token is not None,
        fc_norm=fc_norm,
        rel_pos_type=rel_type,
        rel_pos_dim=hidden if rel_type != "bias" and hidden != 128 else None,  # 128: timm's default
        shared_rel_pos=shared,
        drop_rate=_drop(model.head_drop),
        proj_drop_rate=_drop(blk.attn.proj_drop),
        attn_drop_rate=_drop(blk.attn.attn_drop),
        drop_path_rate=_drop(model.blocks[-1].drop_path1),
        norm_layer=ref["norm"][0],
        norm_eps=ref["norm"][1],
        act_layer=ref["act"],
        block_fn=ref["block_fn"],
    )


# --- checkpoints ------------------------------------------------------------------------------


def checkpoint_filter_fn(
    state_dict: Mapping[str, Any], cfg: RelPosConfig, **kw: Any
) -> dict[str, np.ndarray]:
    """timm's filter: bias tables resized to cfg's window when their shape (or window) differs.

    Recomputed buffers (index tables, log coordinates) are dropped if a checkpoint holds them;
    ``kw`` (the factory's pos-embed resampling options) has nothing to act on: there is no
    absolute position embedding.
    """
    gh, gw = cfg.grid_size
    shape = ((2 * gh - 1) * (2 * gw - 1) + 3 * cfg.num_prefix_tokens, cfg.num_heads)
    out: dict[str, np.ndarray] = {}
    for k, v in state_dict.items():
        if k.rsplit(".", 1)[-1] in BUFFERS:
            continue
        v = np.asarray(v)
        if k.endswith("relative_position_bias_table") and (v.shape != shape or gh != gw):
            try:
                v = resize_rel_pos_bias_table(v, (gh, gw), shape)
            except ValueError as e:
                raise UnsupportedModelError(f"{k}: {e}") from e
        out[k] = v
    return out


# --- variants ---------------------------------------------------------------------------------

_NO_QKV_BIAS = dict(qkv_bias=False)
_RPN = dict(block_fn="ResPostRelPosBlock")


def _v(dim: int, heads: int, patch: int = 16, img: int = 224, **kw: Any) -> dict[str, Any]:
    return dict(img_size=img, patch_size=patch, embed_dim=dim, depth=12, num_heads=heads, **kw)


# timm model name -> RelPosConfig kwargs (all published weights have 1000 classes). Each row
# equals config_from_timm(timm.create_model(name)) (parity_tests/test_relpos.py).
VARIANTS: dict[str, dict[str, Any]] = {
    "vit_relpos_base_patch32_plus_rpn_256": _v(896, 14, patch=32, img=256, **_RPN),
    "vit_relpos_base_patch16_plus_240": _v(896, 14, img=240),
    "vit_relpos_small_patch16_224": _v(384, 6, fc_norm=True, **_NO_QKV_BIAS),
    "vit_relpos_medium_patch16_224": _v(512, 8, fc_norm=True, **_NO_QKV_BIAS),
    "vit_relpos_base_patch16_224": _v(768, 12, fc_norm=True, **_NO_QKV_BIAS),
    "vit_srelpos_small_patch16_224": _v(
        384, 6, rel_pos_dim=384, shared_rel_pos=True, **_NO_QKV_BIAS
    ),
    "vit_srelpos_medium_patch16_224": _v(
        512, 8, rel_pos_dim=512, shared_rel_pos=True, **_NO_QKV_BIAS
    ),
    "vit_relpos_medium_patch16_cls_224": _v(
        512, 8, rel_pos_dim=256, class_token=True, global_pool="token", **_NO_QKV_BIAS
    ),
    "vit_relpos_base_patch16_cls_224": _v(
        768, 12, class_token=True, global_pool="token", **_NO_QKV_BIAS
    ),
    "vit_relpos_base_patch16_clsgap_224": _v(
        768, 12, fc_norm=True, class_token=True, **_NO_QKV_BIAS
    ),
    "vit_relpos_small_patch16_rpn_224": _v(384, 6, **_RPN, **_NO_QKV_BIAS),
    "vit_relpos_medium_patch16_rpn_224": _v(512, 8, **_RPN, **_NO_QKV_BIAS),
    "vit_relpos_base_patch16_rpn_224": _v(768, 12, **_RPN, **_NO_QKV_BIAS),
    "test_vit_relpos": dict(
        img_size=160,
        patch_size=16,
        embed_dim=96,
        depth=9,
        num_heads=3,
        mlp_ratio=2.0,
        fc_norm=True,
        **_NO_QKV_BIAS,
    ),  # fmt: skip
}

CONFIG = RelPosConfig
MODEL = VisionTransformerRelPos
