"""The naflex family in Flax linen: timm's ``models/naflexvit.py`` (``NaFlexVit``), name for name.

NaFlexVit is a ViT whose embedding module (``embeds``: patch projection, prefix tokens, position
table) takes either NHWC images or NaFlex batches: pre-patchified variable-length sequences
``(B, N, ph * pw * C)`` with ``patch_coord`` (B, N, 2) and ``patch_valid`` (B, N), padded to one
N, where each sample's position table is resized to its own grid and padding is masked out of
attention and pooling. timm's 14 ``naflexvit_*`` models (its own NaFlex ViTs, SigLIP 2 NaFlex,
NVIDIA C-RADIO v3 / v4) use the standard ViT block; the EVA-style blocks and rotary options of
NaFlexVitCfg are refused by name. The parameter tree is timm's module tree (``embeds.proj`` is
``embeds/proj``, ``blocks.3.attn.qkv`` is ``blocks_3/attn/qkv``). This file also holds the
family's timm rules: ``config_from_timm``, ``checkpoint_filter_fn`` (classic ViT, RADIO and
big_vision NaFlex layouts) and VARIANTS.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from vitjax.layers import (
    Attention,
    AttentionPoolLatent,
    DropPath,
    Dtype,
    LayerScale,
    Mlp,
    check_images,
    dense_init,
    dot_product_attention,
    make_norm,
    resample_abs_pos_embed,
)
from vitjax.layers.features import (
    check_output_fmt,
    collect_intermediates,
    feature_take_indices,
    format_intermediates,
    shape_intermediates,
)
from vitjax.layers.naflex_embed import INTERP_MODES, POS_EMBED_TYPES, PROJ_TYPES, NaFlexEmbeds
from vitjax.models.common import (
    act_name,
    check_linear,
    cls_name,
    is_identity,
    norm_kind,
    require,
)
from vitjax.models.eva import mlp_ratio_for
from vitjax.util import ATTN_IMPLS, DENSE_IMPLS, config_from_dict, config_to_dict, to_2tuple
from vitjax.weights.errors import WeightMismatchError

__all__ = [
    "CONFIG",
    "MODEL",
    "TIMM_CLASSES",
    "VARIANTS",
    "Block",
    "NaFlexVit",
    "NaFlexVitConfig",
    "checkpoint_filter_fn",
    "config_from_timm",
    "create_attention_mask",
    "global_pool_naflex",
]

GLOBAL_POOLS = ("", "avg", "avgmax", "max", "token", "map")
NORM_LAYERS = ("layernorm", "rmsnorm")
ACT_LAYERS = ("gelu", "gelu_tanh", "quick_gelu", "silu", "relu")
_TUPLE_FIELDS = ("img_size", "patch_size", "pos_embed_grid_size")


@dataclass(frozen=True)
class NaFlexVitConfig:
    """timm's NaFlexVitCfg fields (and NaFlexVit's in_chans, num_classes) that vitjax mirrors.

    ``img_size`` is the input size the model is built for (timm's pretrained input_size): the
    position grid comes from it only when ``pos_embed_grid_size`` is None, as in timm.
    ``norm_layer`` / ``norm_eps`` and ``act_layer`` stand for timm's layer constructors; the
    embedding norm (``embed_norm_layer``) has timm's default eps, 1e-6. ``attn_impl`` /
    ``dense_impl`` choose kernels and do not change the numbers.
    """

    img_size: int | tuple[int, int] = 384
    patch_size: int | tuple[int, int] = 16
    in_chans: int = 3
    num_classes: int = 1000
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    scale_mlp_norm: bool = False
    qkv_bias: bool = True
    qk_norm: bool = False
    proj_bias: bool = True
    attn_drop_rate: float = 0.0
    use_key_only_attn_mask: bool = False
    init_values: float | None = None
    drop_rate: float = 0.0
    pos_drop_rate: float = 0.0
    patch_drop_rate: float = 0.0
    proj_drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    class_token: bool = False
    reg_tokens: int = 0
    pos_embed: str = "learned"
    pos_embed_grid_size: tuple[int, int] | None = (16, 16)
    pos_embed_interp_mode: str = "bicubic"
    pos_embed_ar_preserving: bool = False
    pos_embed_antialias: bool = True
    pos_embed_align_corners: bool = False
    dynamic_img_pad: bool = False
    patchify_channels_last: bool = True
    pre_norm: bool = False
    final_norm: bool = True
    fc_norm: bool | None = None
    global_pool: str = "map"
    pool_include_prefix: bool = False
    attn_pool_num_heads: int | None = None
    attn_pool_mlp_ratio: float | None = None
    embed_proj_type: str = "linear"
    embed_norm_layer: str | None = None
    norm_layer: str = "layernorm"
    norm_eps: float = 1e-6
    act_layer: str = "gelu"
    attn_impl: str = "auto"
    dense_impl: str = "auto"

    def __post_init__(self) -> None:
        choices = dict(
            global_pool=GLOBAL_POOLS,
            pos_embed=POS_EMBED_TYPES,
            pos_embed_interp_mode=INTERP_MODES,
            embed_proj_type=PROJ_TYPES,
            embed_norm_layer=(None, *NORM_LAYERS),
            norm_layer=NORM_LAYERS,
            act_layer=ACT_LAYERS,
            attn_impl=ATTN_IMPLS,
            dense_impl=DENSE_IMPLS,
        )
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}={getattr(self, name)!r}: expected one of {allowed}")
        if self.global_pool == "token" and not self.class_token:
            raise ValueError("Token pooling needs the class token (class_token=True).")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim={self.embed_dim} not divisible by num_heads")
        if not 0.0 <= self.patch_drop_rate < 1.0:
            raise ValueError(f"patch_drop_rate={self.patch_drop_rate} must be in [0, 1)")
        for name in ("img_size", "patch_size", "in_chans", "embed_dim", "depth", "num_heads"):
            if min(to_2tuple(getattr(self, name))) <= 0:
                raise ValueError(f"{name}={getattr(self, name)!r} must be positive")
        if self.pos_embed_grid_size is not None and min(self.pos_embed_grid_size) <= 0:
            raise ValueError(f"pos_embed_grid_size={self.pos_embed_grid_size} must be positive")

    @property
    def grid_size(self) -> tuple[int, int]:
        """The position table's grid: pos_embed_grid_size, else img_size // patch_size."""
        if self.pos_embed_grid_size is not None:
            return to_2tuple(self.pos_embed_grid_size)
        (h, w), (ph, pw) = to_2tuple(self.img_size), to_2tuple(self.patch_size)
        return h // ph, w // pw

    @property
    def num_prefix_tokens(self) -> int:
        return int(self.class_token) + self.reg_tokens

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def mlp_hidden(self) -> int:
        return int(self.embed_dim * self.mlp_ratio)

    @property
    def _fc_norm(self) -> bool:
        """timm's resolution of fc_norm: explicit, else on for 'avg' pooling."""
        return self.global_pool == "avg" if self.fc_norm is None else self.fc_norm

    @property
    def fc_norm_active(self) -> bool:
        """Whether the final norm comes after pooling (fc_norm) rather than before (norm)."""
        return self.final_norm and self._fc_norm

    @property
    def norm_active(self) -> bool:
        """Whether the final norm is applied to the tokens before pooling."""
        return self.final_norm and not self._fc_norm

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of every field."""
        return config_to_dict(self, _TUPLE_FIELDS)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> NaFlexVitConfig:
        """Inverse of to_dict; unknown keys are an error naming them."""
        return config_from_dict(cls, d, _TUPLE_FIELDS)


# --- masks and pooling --------------------------------------------------------------------------


def create_attention_mask(
    patch_valid: jax.Array | None,
    num_prefix_tokens: int = 0,
    symmetric: bool = True,
    q_len: int | None = None,
    dtype: Dtype = jnp.float32,
) -> jax.Array | None:
    """Additive mask from (B, N) patch validity, prefix tokens always valid (timm's).

    symmetric: (B, 1, L, L), a pair allowed only if both tokens are valid; else (B, 1, q_len, L)
    from the keys' validity alone. Masked entries hold finfo(dtype).min, not -inf, so a padding
    query (every key masked) gets uniform, finite weights, as in timm.
    """
    if patch_valid is None:
        return None
    valid = patch_valid.astype(bool)
    B, N = valid.shape
    if num_prefix_tokens:
        valid = jnp.concatenate([jnp.ones((B, num_prefix_tokens), bool), valid], axis=1)
    L = valid.shape[1]
    if symmetric:
        keep = valid[:, None, :, None] & valid[:, None, None, :]  # (B, 1, L, L)
    else:
        keep = jnp.broadcast_to(valid[:, None, None, :], (B, 1, q_len or L, L))
    return jnp.where(keep, 0.0, jnp.finfo(dtype).min).astype(dtype)


def global_pool_nlc(
    x: jax.Array, pool_type: str = "token", num_prefix_tokens: int = 1,
    reduce_include_prefix: bool = False,
) -> jax.Array:  # fmt: skip
    """timm's global_pool_nlc: class token, or avg / max / avgmax over (patch) tokens."""
    if not pool_type:
        return x
    if pool_type == "token":
        return x[:, 0]
    x = x if reduce_include_prefix else x[:, num_prefix_tokens:]
    if pool_type == "avg":
        return x.mean(axis=1)
    if pool_type == "avgmax":
        return 0.5 * (x.max(axis=1) + x.mean(axis=1))
    if pool_type == "max":
        return x.max(axis=1)
    raise ValueError(f"Unknown pool type {pool_type}")


def global_pool_naflex(
    x: jax.Array,
    patch_valid: jax.Array | None = None,
    pool_type: str = "token",
    num_prefix_tokens: int = 1,
    reduce_include_prefix: bool = False,
) -> jax.Array:
    """Pooling that leaves padding tokens out of avg / max / avgmax (timm's global_pool_naflex)."""
    if patch_valid is None or pool_type not in ("avg", "avgmax", "max"):
        return global_pool_nlc(x, pool_type, num_prefix_tokens, reduce_include_prefix)
    valid = patch_valid.astype(bool)
    if num_prefix_tokens:
        if reduce_include_prefix:
            prefix = jnp.ones((x.shape[0], num_prefix_tokens), bool)
            valid = jnp.concatenate([prefix, valid], axis=1)
        else:
            x = x[:, num_prefix_tokens:]
    v = valid.astype(x.dtype)[..., None]  # (B, N, 1)
    avg = (x * v).sum(axis=1) / jnp.maximum(v.sum(axis=1), 1)
    if pool_type == "avg":
        return avg
    top = jnp.where(valid[..., None], x, jnp.finfo(x.dtype).min).max(axis=1)
    return top if pool_type == "max" else 0.5 * (avg + top)


# --- modules ------------------------------------------------------------------------------------


class MaskedAttention(Attention):
    """timm's Attention (vitjax.layers.Attention's parameters) taking an additive attn_mask."""

    def __call__(
        self, x: jax.Array, attn_mask: jax.Array | None = None, train: bool = False
    ) -> jax.Array:
        B, N, C = x.shape
        H = self.num_heads
        Dh = C // H
        qkv = self.qkv(x).reshape(B, N, 3, H, Dh)  # (B, N, 3, H, Dh)
        q, k, v = qkv.transpose(2, 0, 3, 1, 4)  # 3 x (B, H, N, Dh)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        drop = None
        if train and self.attn_drop > 0:
            drop = lambda p: self.attn_dropout(p, deterministic=False)  # noqa: E731
        scale = Dh**-0.5 if self.scale is None else self.scale
        x = dot_product_attention(q, k, v, scale, attn_mask, impl=self.attn_impl, dropout=drop)
        x = self.proj(x.transpose(0, 2, 1, 3).reshape(B, N, C))  # (B, N, C)
        return self.proj_dropout(x, deterministic=not train)


class MaskedAttentionPoolLatent(AttentionPoolLatent):
    """timm's AttentionPoolLatent ('map' head) taking an additive (B, 1, 1, N) attn_mask."""

    def __call__(
        self, x: jax.Array, attn_mask: jax.Array | None = None, train: bool = False
    ) -> jax.Array:
        B, N, C = x.shape
        H = self.num_heads
        Dh = C // H
        latent = jnp.broadcast_to(self.latent.astype(x.dtype), (B, 1, C))
        q = self.q(latent).reshape(B, 1, H, Dh).transpose(0, 2, 1, 3)  # (B, H, 1, Dh)
        kv = self.kv(x).reshape(B, N, 2, H, Dh).transpose(2, 0, 3, 1, 4)  # (2, B, H, N, Dh)
        y = dot_product_attention(q, kv[0], kv[1], Dh**-0.5, attn_mask, impl=self.attn_impl)
        y = self.proj(y.transpose(0, 2, 1, 3).reshape(B, 1, C))  # (B, 1, C)
        y = y + self.mlp(self.norm(y), train)
        return y[:, 0]


class Block(nn.Module):
    """timm's pre-norm ViT Block with an attention mask: x + ls1(attn(norm1(x))), then the MLP."""

    cfg: NaFlexVitConfig
    drop_path: float = 0.0
    dtype: Dtype = jnp.float32

    def setup(self) -> None:
        cfg, dim, dt = self.cfg, self.cfg.embed_dim, self.dtype
        norm = lambda: make_norm(cfg.norm_layer, cfg.norm_eps, dt)  # noqa: E731
        self.norm1 = norm()
        self.attn = MaskedAttention(
            dim, cfg.num_heads, qkv_bias=cfg.qkv_bias, qk_norm=cfg.qk_norm,
            proj_bias=cfg.proj_bias, attn_drop=cfg.attn_drop_rate, proj_drop=cfg.proj_drop_rate,
            norm_layer=cfg.norm_layer, norm_eps=cfg.norm_eps, dtype=dt, attn_impl=cfg.attn_impl,
            dense_impl=cfg.dense_impl,
        )  # fmt: skip
        self.ls1 = LayerScale(dim, cfg.init_values) if cfg.init_values else None
        self.drop_path1 = DropPath(self.drop_path)
        self.norm2 = norm()
        self.mlp = Mlp(
            cfg.mlp_hidden, dim, act_layer=cfg.act_layer, bias=cfg.proj_bias,
            drop=cfg.proj_drop_rate, norm_layer=cfg.norm_layer if cfg.scale_mlp_norm else None,
            norm_eps=cfg.norm_eps, dtype=dt, dense_impl=cfg.dense_impl,
        )  # fmt: skip
        self.ls2 = LayerScale(dim, cfg.init_values) if cfg.init_values else None
        self.drop_path2 = DropPath(self.drop_path)

    def __call__(
        self, x: jax.Array, attn_mask: jax.Array | None = None, train: bool = False
    ) -> jax.Array:
        y = self.attn(self.norm1(x), attn_mask, train)
        x = x + self.drop_path1(self.ls1(y) if self.ls1 else y, train)
        y = self.mlp(self.norm2(x), train)
        return x + self.drop_path2(self.ls2(y) if self.ls2 else y, train)


def _naflex_inputs(x: Any, patch_coord: Any, patch_valid: Any, attn_mask: Any) -> tuple:
    """(patches, patch_coord, patch_valid, attn_mask) from a NaFlex dict / tuple or an array."""
    if isinstance(x, Mapping):  # timm's NaFlex collator output; its entries take priority
        return (
            x["patches"],
            x.get("patch_coord", patch_coord),
            x.get("patch_valid", patch_valid),
            x.get("attn_mask", attn_mask),
        )
    if isinstance(x, (tuple, list)):  # (patches, patch_coord, patch_valid[, attn_mask])
        patches, patch_coord, patch_valid, *rest = x
        return patches, patch_coord, patch_valid, rest[0] if rest else attn_mask
    return x, patch_coord, patch_valid, attn_mask


class NaFlexVit(nn.Module):
    """NaFlexVit: NaFlex embeddings, masked blocks, norm, (masked) pooling, head."""

    cfg: NaFlexVitConfig
    dtype: Dtype = jnp.float32

    def setup(self) -> None:
        cfg, dim, dt = self.cfg, self.cfg.embed_dim, self.dtype
        self.embeds = NaFlexEmbeds(
            patch_size=cfg.patch_size, in_chans=cfg.in_chans, embed_dim=dim,
            proj_type=cfg.embed_proj_type, proj_bias=not cfg.pre_norm,
            class_token=cfg.class_token, reg_tokens=cfg.reg_tokens,
            dynamic_img_pad=cfg.dynamic_img_pad, default_img_size=cfg.img_size,
            pos_embed_type=cfg.pos_embed, pos_embed_grid_size=cfg.pos_embed_grid_size,
            pos_embed_interp_mode=cfg.pos_embed_interp_mode,
            pos_embed_ar_preserving=cfg.pos_embed_ar_preserving,
            pos_embed_antialias=cfg.pos_embed_antialias,
            pos_embed_align_corners=cfg.pos_embed_align_corners,
            proj_norm_layer=cfg.embed_norm_layer, pos_drop_rate=cfg.pos_drop_rate,
            channels_last=cfg.patchify_channels_last, dtype=dt, dense_impl=cfg.dense_impl,
        )  # fmt: skip
        norm = lambda: make_norm(cfg.norm_layer, cfg.norm_eps, dt)  # noqa: E731
        self.norm_pre = norm() if cfg.pre_norm else None
        # timm's calculate_drop_path_rates: torch.linspace in float32
        rates = np.linspace(0.0, cfg.drop_path_rate, cfg.depth, dtype=np.float32)
        self.blocks = [Block(cfg, float(rates[i]), dtype=dt) for i in range(cfg.depth)]
        self.norm = norm() if cfg.norm_active else None
        self.attn_pool = (
            MaskedAttentionPoolLatent(
                dim,
                cfg.attn_pool_num_heads or cfg.num_heads,
                int(dim * (cfg.attn_pool_mlp_ratio or cfg.mlp_ratio)),
                act_layer=cfg.act_layer,
                norm_layer=cfg.norm_layer,
                norm_eps=cfg.norm_eps,
                dtype=dt,
                attn_impl=cfg.attn_impl,
            )
            if cfg.global_pool == "map"
            else None
        )
        self.fc_norm = norm() if cfg.fc_norm_active else None
        self.head_drop = nn.Dropout(cfg.drop_rate)
        self.head = (
            nn.Dense(cfg.num_classes, kernel_init=dense_init, dtype=dt)
            if cfg.num_classes > 0
            else None
        )

    def _patch_drop(self, x: jax.Array, patch_valid: jax.Array | None) -> tuple:
        """timm's PatchDropoutWithIndices (training): a random subset of the patch tokens."""
        npt = self.cfg.num_prefix_tokens
        prefix, patches = x[:, :npt], x[:, npt:]
        B, L, C = patches.shape
        num_keep = max(1, int(L * (1.0 - self.cfg.patch_drop_rate)))
        noise = jax.random.normal(self.make_rng("dropout"), (B, L))
        keep = jnp.argsort(noise, axis=-1)[:, :num_keep]  # (B, K)
        patches = jnp.take_along_axis(patches, keep[..., None], axis=1)  # (B, K, C)
        if patch_valid is not None:
            patch_valid = jnp.take_along_axis(patch_valid, keep, axis=1)
        return jnp.concatenate([prefix, patches], axis=1), patch_valid

    def forward_features(
        self,
        x: Any,
        train: bool = False,
        patch_coord: jax.Array | None = None,
        patch_valid: jax.Array | None = None,
        attn_mask: jax.Array | None = None,
    ) -> jax.Array | dict[str, jax.Array]:
        """Tokens after the blocks and norm; in NaFlex mode {'patches', 'patch_valid'}, as timm."""
        cfg = self.cfg
        x, patch_coord, patch_valid, attn_mask = _naflex_inputs(
            x, patch_coord, patch_valid, attn_mask
        )
        naflex = patch_coord is not None
        if not naflex:
            check_images(x, cfg.in_chans)
        x, _ = self.embeds(x, patch_coord, train)
        if train and cfg.patch_drop_rate > 0:
            x, patch_valid = self._patch_drop(x, patch_valid)
        if attn_mask is None:
            key_only = cfg.use_key_only_attn_mask
            attn_mask = create_attention_mask(
                patch_valid, cfg.num_prefix_tokens, symmetric=not key_only,
                q_len=1 if key_only else None, dtype=x.dtype,
            )  # fmt: skip
        if self.norm_pre is not None:
            x = self.norm_pre(x)
        for blk in self.blocks:
            x = blk(x, attn_mask, train)
        if self.norm is not None:
            x = self.norm(x)
        return {"patches": x, "patch_valid": patch_valid} if naflex else x

    def pool(self, x: jax.Array, patch_valid: jax.Array | None = None, train: bool = False):
        """timm's _pool: the masked 'map' head, or masked avg / max, or the class token."""
        cfg = self.cfg
        npt, with_prefix = cfg.num_prefix_tokens, cfg.pool_include_prefix
        if self.attn_pool is not None:
            mask = create_attention_mask(
                patch_valid, npt if with_prefix else 0, symmetric=False, q_len=1, dtype=x.dtype
            )
            return self.attn_pool(x if with_prefix else x[:, npt:], mask, train)
        return global_pool_naflex(x, patch_valid, cfg.global_pool, npt, with_prefix)

    def forward_head(
        self,
        x: Any,
        pre_logits: bool = False,
        train: bool = False,
        patch_valid: jax.Array | None = None,
    ) -> jax.Array:
        """Pool, fc_norm, dropout, head; x may be forward_features' NaFlex dict."""
        if isinstance(x, Mapping):
            x, patch_valid = x["patches"], x.get("patch_valid", patch_valid)
        x = self.pool(x, patch_valid, train)
        if self.fc_norm is not None:
            x = self.fc_norm(x)
        x = self.head_drop(x, deterministic=not train)
        return x if pre_logits or self.head is None else self.head(x)

    def __call__(
        self,
        x: Any,
        train: bool = False,
        pre_logits: bool = False,
        patch_coord: jax.Array | None = None,
        patch_valid: jax.Array | None = None,
        attn_mask: jax.Array | None = None,
    ) -> jax.Array:
        """Logits of NHWC images, or of a NaFlex batch (dict, tuple, or patches + patch_coord)."""
        naflex = patch_coord is not None or isinstance(x, (Mapping, tuple, list))
        if not naflex:
            return self.forward_head(self.forward_features(x, train), pre_logits, train)
        x, patch_coord, patch_valid, attn_mask = _naflex_inputs(
            x, patch_coord, patch_valid, attn_mask
        )
        if patch_coord is None or patch_valid is None:
            raise ValueError("patch_coord and patch_valid are required in naflex mode")
        feats = self.forward_features(x, train, patch_coord, patch_valid, attn_mask)
        return self.forward_head(feats["patches"], pre_logits, train, feats["patch_valid"])

    def forward_intermediates(
        self,
        x: Any,
        indices: int | Sequence[int] | None = None,
        return_prefix_tokens: bool = False,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NHWC",
        intermediates_only: bool = False,
        output_dict: bool = False,
        train: bool = False,
        patch_coord: jax.Array | None = None,
        patch_valid: jax.Array | None = None,
        attn_mask: jax.Array | None = None,
    ) -> list[Any] | tuple[jax.Array, list[Any]] | dict[str, Any]:
        """timm's forward_intermediates: (final features, per-block features), the list, or a dict.

        indices: the last n blocks if an int, all if None, else those indices (negative from the
        end). Each intermediate is (B, H, W, C) for output_fmt "NHWC" (timm's "NCHW" transposed
        by (0, 2, 3, 1)) or (B, H * W, C) for "NLC", normalised by the final norm if norm; with
        return_prefix_tokens, a (patches, (B, num_prefix_tokens, C) prefix tokens) tuple.
        output_dict: timm's {"image_intermediates", "image_intermediates_prefix",
        "image_features", "patch_valid"} instead. NaFlex batches (per-sample grids) give "NLC"
        only, as in timm.
        """
        cfg = self.cfg
        reshape = check_output_fmt(output_fmt)
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        x, patch_coord, patch_valid, attn_mask = _naflex_inputs(
            x, patch_coord, patch_valid, attn_mask
        )
        naflex = patch_coord is not None
        if naflex and reshape:
            raise ValueError(
                'output_fmt="NHWC" is not supported for NaFlex inputs (per-sample grids vary): '
                'use "NLC" and place tokens by patch_coord'
            )
        drop = train and cfg.patch_drop_rate > 0
        if naflex and drop and not output_dict:
            raise ValueError(
                "NaFlex forward_intermediates with active patch dropout requires "
                "output_dict=True to return the gathered patch_valid"
            )
        if not naflex:
            check_images(x, cfg.in_chans)
        x, grid = self.embeds(x, patch_coord, train)
        if drop:
            x, patch_valid = self._patch_drop(x, patch_valid)
        if attn_mask is None:
            key_only = cfg.use_key_only_attn_mask
            attn_mask = create_attention_mask(
                patch_valid, cfg.num_prefix_tokens, symmetric=not key_only,
                q_len=1 if key_only else None, dtype=x.dtype,
            )  # fmt: skip
        if self.norm_pre is not None:
            x = self.norm_pre(x)
        x, intermediates = collect_intermediates(
            x, lambda i, x: self.blocks[i](x, attn_mask, train), len(self.blocks),
            take_indices, max_index, stop_early, self.norm if norm else None,
        )  # fmt: skip
        final = self.norm(x) if self.norm is not None else x
        npt = cfg.num_prefix_tokens
        if output_dict:
            spatial, prefix = shape_intermediates(intermediates, npt, grid, output_fmt)
            out: dict[str, Any] = {"image_intermediates": spatial}
            if prefix is not None and return_prefix_tokens:
                out["image_intermediates_prefix"] = prefix
            if patch_valid is not None:
                out["patch_valid"] = patch_valid
            if not intermediates_only:
                out["image_features"] = final
            return out
        intermediates = format_intermediates(
            intermediates, npt, grid, output_fmt, return_prefix_tokens
        )
        return intermediates if intermediates_only else (final, intermediates)

    @nn.nowrap
    def prune_intermediate_layers(
        self,
        indices: int | Sequence[int] = 1,
        prune_norm: bool = False,
        prune_head: bool = True,
    ) -> tuple[NaFlexVit, list[int]]:
        """timm's prune_intermediate_layers as a new model: (pruned model, indices it keeps).

        The pruned model has only the blocks up to max(indices) (each keeping its drop-path
        rate), no final norm if prune_norm, and no head (fc_norm, attention pool, classifier;
        global_pool "") if prune_head. Its variables are
        ``vitjax.layers.features.prune_variables(variables, pruned_model)``.
        """
        cfg = self.cfg
        take_indices, max_index = feature_take_indices(cfg.depth, indices)
        rates = np.linspace(0.0, cfg.drop_path_rate, cfg.depth, dtype=np.float32)
        # the norm that exists (norm, or fc_norm instead) is the one that pruning drops
        dropped = prune_head if cfg._fc_norm else prune_norm
        changes: dict[str, Any] = dict(
            depth=max_index + 1,
            drop_path_rate=float(rates[max_index]),
            fc_norm=cfg._fc_norm,  # explicit: global_pool no longer implies it
            final_norm=cfg.final_norm and not dropped,
        )
        if prune_head:
            changes.update(num_classes=0, global_pool="")
        return self.clone(parent=None, cfg=dataclasses.replace(cfg, **changes)), take_indices


CONFIG = NaFlexVitConfig
MODEL = NaFlexVit
TIMM_CLASSES = ("NaFlexVit",)


# --- reading a live timm NaFlexVit --------------------------------------------------------------


def _square(x: Any) -> int | tuple[int, int]:
    a, b = to_2tuple(x)
    return a if a == b else (a, b)


def _rate(m: Any) -> float:
    """A dropout / drop-path module's rate (0 for Identity), as the float32 timm holds printed."""
    p = float(getattr(m, "p", getattr(m, "drop_prob", 0.0)) or 0.0)
    return float(str(np.float32(p)))


def _embed_args(model: Any) -> dict[str, Any]:
    """The embedding fields of a live NaFlexVit's embeds module; refuses what vitjax lacks."""
    e = model.embeds
    require(cls_name(e) == "NaFlexEmbeds", f"embeds of type {cls_name(e)}")
    require(e.patch_interpolator is None, "embeds.patch_interpolator (enable_patch_interpolator)")
    require(e.norm_input is None, "embeds.norm_input (input_norm_layer)")
    require(
        e.pos_embed_type == "none" or not e.pos_embed_use_grid_sample,
        "pos_embed_use_grid_sample=True (grid_sample position lookup)",
    )
    require(
        e.pos_embed_interp_mode in INTERP_MODES, f"pos_embed_interp_mode={e.pos_embed_interp_mode}"
    )
    norm = None
    if not is_identity(e.norm):
        kind, eps = norm_kind(e.norm, "embeds.norm")
        require(eps == 1e-6, f"embeds.norm with eps {eps} (embed_norm_layer has eps 1e-6)")
        norm = kind
    proj = e.proj
    if e.is_linear:
        check_linear(proj, "embeds.proj", math.prod(e.patch_size) * e.in_chans, e.embed_dim)
    else:
        require(
            cls_name(proj) == "Conv2d"
            and tuple(proj.kernel_size) == tuple(proj.stride) == tuple(e.patch_size)
            and tuple(proj.padding) == (0, 0) and proj.groups == 1,
            "embeds.proj that is not a plain patchify convolution",
        )  # fmt: skip
    from_img = e.default_img_size is not None
    grid = e.pos_embed_grid_size
    return dict(
        patch_size=_square(e.patch_size),
        in_chans=int(e.in_chans),
        class_token=e.cls_token is not None,
        reg_tokens=int(e.num_reg_tokens),
        pos_embed=e.pos_embed_type,
        pos_embed_grid_size=None if from_img or grid is None else tuple(int(g) for g in grid),
        pos_embed_interp_mode=e.pos_embed_interp_mode,
        pos_embed_ar_preserving=bool(e.pos_embed_ar_preserving),
        pos_embed_antialias=bool(e.pos_embed_antialias),
        pos_embed_align_corners=bool(e.pos_embed_align_corners),
        dynamic_img_pad=bool(e.dynamic_img_pad),
        patchify_channels_last=bool(e.channels_last),
        embed_proj_type="linear" if e.is_linear else "conv",
        embed_norm_layer=norm,
        pos_drop_rate=_rate(e.pos_drop),
    )


def _block_signature(blk: Any, i: int, dim: int) -> dict[str, Any]:
    """Everything config_from_timm reads from one block; every block must agree."""
    w = f"blocks.{i}"
    kind = cls_name(blk)
    require(
        kind == "Block",
        f"{w} of type {kind} (NaFlexVit's EVA-style blocks: rope, SwiGLU, gated or GQA "
        "attention, or block_fn)",
    )
    attn, mlp = blk.attn, blk.mlp
    require(cls_name(attn) == "Attention", f"{w}.attn of type {cls_name(attn)} (attn_layer)")
    require(attn.head_dim * attn.num_heads == dim, f"{w}.attn with attn_head_dim != dim / heads")
    require(getattr(attn, "gate", None) is None, f"{w}.attn.gate (gated attention)")
    require(is_identity(attn.norm), f"{w}.attn.norm (scale_attn_inner_norm)")
    check_linear(attn.qkv, f"{w}.attn.qkv", dim, 3 * dim)
    check_linear(attn.proj, f"{w}.attn.proj", dim, dim)
    require(cls_name(mlp) == "Mlp", f"{w}.mlp of type {cls_name(mlp)} (mlp_layer)")
    norms = {n: norm_kind(getattr(blk, n), f"{w}.{n}") for n in ("norm1", "norm2")}
    for n in ("q_norm", "k_norm"):
        if not is_identity(getattr(attn, n)):
            norms[n] = norm_kind(getattr(attn, n), f"{w}.attn.{n}")
    if not is_identity(mlp.norm):
        norms["mlp.norm"] = norm_kind(mlp.norm, f"{w}.mlp.norm")
    require(len(set(norms.values())) == 1, f"{w} with norm layers of different kinds or eps")
    bias = attn.proj.bias is not None
    require((mlp.fc1.bias is not None) == bias, f"{w}.mlp.fc1 bias differing from attn.proj's")
    ls = None if is_identity(blk.ls1) else float(blk.ls1.init_values)
    return dict(
        num_heads=int(attn.num_heads),
        qkv_bias=attn.qkv.bias is not None,
        qk_norm=not is_identity(attn.q_norm),
        proj_bias=bias,
        scale_mlp_norm=not is_identity(mlp.norm),
        hidden=int(mlp.fc1.out_features),
        act_layer=act_name(mlp.act, f"{w}.mlp.act"),
        norm=norms["norm1"],
        init_values=ls,
        attn_drop_rate=_rate(attn.attn_drop),
        proj_drop_rate=_rate(attn.proj_drop),
    )


def _pool_args(model: Any, sig: dict[str, Any], dim: int) -> dict[str, Any]:
    """attn_pool_num_heads / attn_pool_mlp_ratio of a 'map' head (None where they default)."""
    pool = model.attn_pool
    if pool is None:
        return {}
    require(cls_name(pool) == "AttentionPoolLatent", f"attn_pool of type {cls_name(pool)}")
    require(
        pool.latent_len == 1 and pool.pos_embed is None and pool.pool == "token",
        "attn_pool with latent_len > 1, a position embedding or non-token pooling",
    )
    require(is_identity(pool.q_norm) and pool.mlp is not None, "attn_pool with qk_norm or no MLP")
    for n, out in (("q", dim), ("kv", 2 * dim), ("proj", dim)):
        check_linear(getattr(pool, n), f"attn_pool.{n}", dim, out, True)
    require(norm_kind(pool.norm, "attn_pool.norm") == sig["norm"], "attn_pool.norm of another kind")
    require(act_name(pool.mlp.act, "attn_pool.mlp.act") == sig["act_layer"], "attn_pool.mlp.act")
    hidden = int(pool.mlp.fc1.out_features)
    heads = int(pool.num_heads)
    return dict(
        attn_pool_num_heads=None if heads == sig["num_heads"] else heads,
        attn_pool_mlp_ratio=None if hidden == sig["hidden"] else mlp_ratio_for(dim, hidden),
    )


def _img_size(model: Any) -> int | tuple[int, int]:
    """The size timm built the grid from, else its pretrained input size (384 by default)."""
    if model.embeds.default_img_size is not None:
        return _square(model.embeds.default_img_size)
    size = (getattr(model, "pretrained_cfg", None) or {}).get("input_size")
    return _square(tuple(size[-2:])) if size else NaFlexVitConfig.img_size


def config_from_timm(model: Any) -> NaFlexVitConfig:
    """NaFlexVitConfig equal to a timm NaFlexVit; refuses, by name, any part vitjax lacks."""
    require(
        cls_name(model) == "NaFlexVit", f"model class {cls_name(model)} (naflex reads NaFlexVit)"
    )
    require(len(model.blocks) > 0, "a model with no blocks")
    require(model.rope is None, f"rope of type {cls_name(model.rope)} (rope_type)")
    dim = int(model.embed_dim)
    sigs = [_block_signature(b, i, dim) for i, b in enumerate(model.blocks)]
    sig = sigs[0]
    for i, s in enumerate(sigs[1:], 1):
        diff = sorted(k for k in s if s[k] != sig[k])
        require(not diff, f"blocks.{i} differing from block 0 in {diff}")
    embed = _embed_args(model)
    pre_norm = not is_identity(model.norm_pre)
    require((model.embeds.proj.bias is None) == pre_norm, "embeds.proj bias together with norm_pre")
    for n in ("norm_pre", "norm", "fc_norm"):
        if not is_identity(getattr(model, n)):
            require(norm_kind(getattr(model, n), n) == sig["norm"], f"{n} of another norm kind")
    gp = model.global_pool
    require((gp == "map") == (model.attn_pool is not None), f"global_pool={gp!r} with attn_pool")
    post, fc = not is_identity(model.norm), not is_identity(model.fc_norm)
    head = model.head
    if not is_identity(head):
        check_linear(head, "head", dim, model.num_classes, True)
    patch_drop = model.patch_drop
    return NaFlexVitConfig(
        img_size=_img_size(model),
        num_classes=int(model.num_classes) if not is_identity(head) else 0,
        embed_dim=dim,
        depth=len(model.blocks),
        num_heads=sig["num_heads"],
        mlp_ratio=mlp_ratio_for(dim, sig["hidden"]),
        scale_mlp_norm=sig["scale_mlp_norm"],
        qkv_bias=sig["qkv_bias"],
        qk_norm=sig["qk_norm"],
        proj_bias=sig["proj_bias"],
        attn_drop_rate=sig["attn_drop_rate"],
        use_key_only_attn_mask=bool(model.use_key_only_attn_mask),
        init_values=sig["init_values"],
        drop_rate=_rate(model.head_drop),
        patch_drop_rate=float(patch_drop.prob) if patch_drop is not None else 0.0,
        proj_drop_rate=sig["proj_drop_rate"],
        drop_path_rate=_rate(model.blocks[-1].drop_path1),
        pre_norm=pre_norm,
        final_norm=post or fc,
        fc_norm=None if not (post or fc) or fc == (gp == "avg") else fc,
        global_pool=gp,
        pool_include_prefix=bool(model.pool_include_prefix),
        norm_layer=sig["norm"][0],
        norm_eps=sig["norm"][1],
        act_layer=sig["act_layer"],
        **embed,
        **_pool_args(model, sig, dim),
    )


# --- timm's checkpoint filter (numpy) -----------------------------------------------------------

_RADIO = "radio_model.model."


def _convert_radio(sd: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """NVIDIA RADIO (C-RADIOv3 / v4) keys -> classic timm ViT keys (timm's _convert_radio)."""
    # The input conditioner, summary indices and teacher adaptor heads are dropped, as in timm.
    out: dict[str, np.ndarray] = {}
    for k, v in sd.items():
        if not k.startswith(_RADIO):
            continue
        k = k[len(_RADIO) :]
        if k == "patch_generator.embedder.weight":  # bias-free Linear over (C, ph, pw) patches
            p = math.isqrt(v.shape[1] // 3)
            out["patch_embed.proj.weight"] = v.reshape(v.shape[0], 3, p, p)
            out["patch_embed.proj.bias"] = np.zeros(v.shape[0], v.dtype)
        elif k == "patch_generator.pos_embed":
            out["pos_embed"] = v
        elif k == "patch_generator.cls_token.token":  # one CLS per teacher: the rest registers
            out["cls_token"], out["reg_token"] = v[None, :1], v[None, 1:]
        elif k.startswith("blocks."):
            out[k.replace(".grandma", ".gamma")] = v
    return out


def _patch_weight(w: np.ndarray, cfg: NaFlexVitConfig) -> np.ndarray:
    """A patch projection weight in cfg's layout (Linear over its patch layout, or Conv2d)."""
    # 4-D: a Conv2d (D, C, ph, pw). 2-D: a Linear over (ph, pw, C) patches, big_vision NaFlex's.
    D, C, (ph, pw) = w.shape[0], cfg.in_chans, to_2tuple(cfg.patch_size)
    if w.ndim == 2:
        if w.shape[1] != ph * pw * C:
            raise WeightMismatchError(
                f"patch_embed.proj.weight of shape {w.shape}: the model's patches are {ph}x{pw}x{C}"
            )
        w = w.reshape(D, ph, pw, C).transpose(0, 3, 1, 2)  # (D, C, ph, pw)
    if tuple(w.shape[-2:]) != (ph, pw):
        raise WeightMismatchError(
            f"patch_embed.proj.weight has patch size {tuple(w.shape[-2:])}, the model "
            f"{(ph, pw)}: resampling patch kernels (timm's resample_patch_embed) is not "
            "supported by vitjax"
        )
    if cfg.embed_proj_type == "conv":
        return w
    if cfg.patchify_channels_last:
        return w.transpose(0, 2, 3, 1).reshape(D, -1)  # (D, ph * pw * C)
    return w.reshape(D, -1)  # (D, C * ph * pw)


def _pos_grid(
    v: np.ndarray, sd: Mapping[str, np.ndarray], cfg: NaFlexVitConfig, prefix: dict
) -> np.ndarray:
    """A pos_embed as (1, H, W, C); a flat table's prefix-token rows go to `prefix`."""
    if v.ndim == 4:
        return v
    if v.ndim == 3 and v.shape[0] != 1:  # big_vision NaFlex: the grid as (H, W, C)
        return v[None]
    if v.ndim != 3:
        raise WeightMismatchError(f"pos_embed of shape {v.shape} is not a position table")
    n_cls = sd["cls_token"].shape[1] if "cls_token" in sd else 0
    n_reg = sd["reg_token"].shape[1] if "reg_token" in sd else 0
    n, n_patch = v.shape[1], v.shape[1] - n_cls - n_reg
    side, side_patch = math.isqrt(n), math.isqrt(max(n_patch, 0))
    if side * side != n and n_patch > 0 and side_patch * side_patch == n_patch:
        # the classic table included the prefix tokens: fold their rows into the tokens
        prefix["cls_token"], prefix["reg_token"] = v[:, :n_cls], v[:, n_cls : n_cls + n_reg]
        v, n, side = v[:, n_cls + n_reg :], n_patch, side_patch
    if side * side == n:
        return v.reshape(1, side, side, v.shape[-1])
    h, w = cfg.grid_size
    if h * w == n:
        return v.reshape(1, h, w, v.shape[-1])
    raise WeightMismatchError(
        f"cannot infer the position grid of pos_embed {v.shape} (the model's is {(h, w)})"
    )


def filter_state_dict(state_dict: Mapping[str, Any], cfg: NaFlexVitConfig) -> dict[str, np.ndarray]:
    """Classic ViT / RADIO / big_vision NaFlex keys -> NaFlexVit's (timm's filter, numpy)."""
    sd = {k: np.asarray(v) for k, v in state_dict.items()}
    if _RADIO + "patch_generator.embedder.weight" in sd:
        sd = _convert_radio(sd)
    out: dict[str, np.ndarray] = {}
    prefix: dict[str, np.ndarray] = {}
    for k, v in sd.items():
        if k == "pos_embed":
            out["embeds.pos_embed"] = _pos_grid(v, sd, cfg, prefix)
        elif k in ("cls_token", "reg_token"):
            out[f"embeds.{k}"] = v
        elif k.startswith("patch_embed."):
            suffix = k[len("patch_embed.") :]
            out[f"embeds.{suffix}"] = _patch_weight(v, cfg) if suffix == "proj.weight" else v
        else:
            out[k] = v
    for name, rows in prefix.items():
        if rows.size and f"embeds.{name}" in out:
            out[f"embeds.{name}"] = out[f"embeds.{name}"] + rows
    return out


def checkpoint_filter_fn(
    state_dict: Mapping[str, Any],
    cfg: NaFlexVitConfig,
    resample_pos_embed: bool = False,
    source_grid: tuple[int, int] | None = None,
    interpolation: str = "bicubic",
    antialias: bool = True,
) -> dict[str, np.ndarray]:
    """Any layout naflex weights come in -> NaFlexVit's timm keys, as timm's checkpoint filter.

    NaFlexVit's own (``embeds.*``) keys pass through; a classic ViT's ``patch_embed.*``,
    ``cls_token``, ``reg_token`` and (1, N, C) ``pos_embed`` (its prefix rows folded into the
    tokens) become ``embeds.*`` with the patch Conv2d flattened to the model's Linear layout;
    NVIDIA RADIO checkpoints (``radio_model.model.*``) are remapped first; the big_vision
    SigLIP 2 NaFlex layout (a Linear patch weight, an (H, W, C) grid) as vitjax's npz reader
    gives it. With resample_pos_embed, a learned table on another grid is resized to cfg's
    (source_grid is implied by the table itself).
    """
    del source_grid  # the (1, H, W, C) table carries its grid
    out = filter_state_dict(state_dict, cfg)
    pe = out.get("embeds.pos_embed")
    if resample_pos_embed and pe is not None and cfg.pos_embed == "learned":
        old, new = tuple(pe.shape[1:3]), cfg.grid_size
        if old != new:
            flat = jnp.asarray(pe.reshape(1, old[0] * old[1], -1), jnp.float32)
            grid = resample_abs_pos_embed(
                flat, new, old, 0, method=interpolation, antialias=antialias
            )
            out["embeds.pos_embed"] = np.asarray(grid).reshape(1, *new, -1).astype(pe.dtype)
    return out


# --- VARIANTS -----------------------------------------------------------------------------------


def _v(dim: int, depth: int, heads: int, hidden: int, *families: dict, **kw: Any) -> dict:
    """One VARIANTS row: width, depth, heads, MLP hidden width, option families, extras."""
    row = dict(embed_dim=dim, depth=depth, num_heads=heads, mlp_ratio=mlp_ratio_for(dim, hidden))
    for family in families:
        row.update(family)
    return {**row, **kw}


# fmt: off
_GAP = dict(init_values=1e-5, global_pool="avg")  # timm's NaFlex ViTs (fc_norm: avg's default)
_SIGLIP = dict(act_layer="gelu_tanh", global_pool="map", pos_embed_interp_mode="bilinear",
               num_classes=0)  # SigLIP 2 NaFlex encoders
_RADIO_CFG = dict(class_token=True, global_pool="token", final_norm=False,
                  pos_embed_grid_size=(128, 128), pos_embed_interp_mode="bilinear",
                  pos_embed_ar_preserving=True, pos_embed_antialias=False, img_size=512,
                  num_classes=0)  # NVIDIA C-RADIO: a 128x128 table, square resize then crop

# timm model name -> NaFlexVitConfig kwargs; num_classes is that of timm's default pretrained
# weights and img_size its input_size. Each row equals config_from_timm(timm.create_model(name))
# (parity_tests/test_naflex.py).
VARIANTS: dict[str, dict[str, Any]] = {
    "naflexvit_base_patch16_gap": _v(768, 12, 12, 3072, _GAP, reg_tokens=4),
    "naflexvit_base_patch16_par_gap": _v(768, 12, 12, 3072, _GAP, reg_tokens=4,
                                         pos_embed_ar_preserving=True),
    "naflexvit_base_patch16_parfac_gap": _v(768, 12, 12, 3072, _GAP, reg_tokens=4,
                                            pos_embed_ar_preserving=True, pos_embed="factorized"),
    "naflexvit_base_patch16_map": _v(768, 12, 12, 3072, init_values=1e-5, reg_tokens=1),
    "naflexvit_so150m2_patch16_reg1_gap": _v(832, 21, 13, 2176, _GAP, qkv_bias=False,
                                             reg_tokens=1),
    "naflexvit_so150m2_patch16_reg1_map": _v(832, 21, 13, 2176, init_values=1e-5,
                                             qkv_bias=False, reg_tokens=1),
    "naflexvit_base_patch16_siglip": _v(768, 12, 12, 3072, _SIGLIP),
    "naflexvit_so400m_patch16_siglip": _v(1152, 27, 16, 4304, _SIGLIP),
    "naflexvit_base_patch16_radio_v3": _v(768, 12, 12, 3072, _RADIO_CFG, init_values=1e-5,
                                          reg_tokens=7, pos_embed_align_corners=True),
    "naflexvit_large_patch16_radio_v3": _v(1024, 24, 16, 4096, _RADIO_CFG, init_values=1e-5,
                                           reg_tokens=7),
    "naflexvit_huge_patch16_radio_v3": _v(1280, 32, 16, 5120, _RADIO_CFG, reg_tokens=7,
                                          pos_embed_align_corners=True),
    "naflexvit_giant_patch16_radio_v3": _v(1536, 40, 24, 6144, _RADIO_CFG, reg_tokens=7),
    "naflexvit_so400m_patch16_radio_v4": _v(1152, 27, 16, 4304, _RADIO_CFG, reg_tokens=9),
    "naflexvit_huge_patch16_radio_v4": _v(1280, 32, 16, 5120, _RADIO_CFG, reg_tokens=9),
}
# fmt: on
