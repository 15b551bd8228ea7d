"""The eva family in Flax linen: timm's ``models/eva.py`` (``Eva``), class for class, name for name.

One timm class covers EVA-01 / EVA-02 (and their CLIP towers), timm's SBB RoPE ViTs, Meta's
Perception Encoder (PE core / lang / spatial), Naver's RoPE-ViT (axial and mixed), DINOv3 (and
EUPE), LingBot-Vision and Sapiens2. Images are NHWC; ``setup()`` mirrors torch's ``__init__`` and
``__call__`` its ``forward``, so the parameter tree is timm's module tree (``blocks.3.attn.q_bias``
is ``blocks_3/attn/q_bias``, ``rope.freqs`` is ``rope/freqs``). Rotary tables come from
``vitjax.layers.rotary``. This file also holds the family's timm rules: ``config_from_timm``,
``checkpoint_filter_fn`` (the EVA, DINOv3, Sapiens2 and Perception Encoder layouts) and VARIANTS.
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
    AttentionPoolLatent,
    Dense,
    DropPath,
    Dtype,
    GluMlp,
    Mlp,
    PatchEmbed,
    SwiGLU,
    dense_init,
    dot_product_attention,
    make_norm,
    resample_abs_pos_embed,
)
from vitjax.layers.features import (
    check_output_fmt,
    collect_intermediates,
    dynamic_feat_size,
    feature_take_indices,
    format_intermediates,
)
from vitjax.layers.rotary import apply_keep_indices_nlc, apply_rot_embed_cat, create_rope_embed
from vitjax.models.common import (
    check_linear,
    cls_name,
    is_identity,
    norm_kind,
    require,
)
from vitjax.util import ATTN_IMPLS, DENSE_IMPLS, config_from_dict, config_to_dict, to_2tuple
from vitjax.weights.errors import WeightMismatchError

__all__ = [
    "CONFIG",
    "MODEL",
    "TIMM_CLASSES",
    "VARIANTS",
    "AttentionRope",
    "Eva",
    "EvaAttention",
    "EvaBlock",
    "EvaBlockPostNorm",
    "EvaConfig",
    "checkpoint_filter_fn",
    "config_from_timm",
]

GLOBAL_POOLS = ("", "avg", "avgmax", "max", "token", "map")
ATTN_TYPES = ("eva", "rope")
ROPE_TYPES = ("cat", "mixed", "dinov3", "mrope")
NORM_LAYERS = ("layernorm", "rmsnorm")
_TUPLE_FIELDS = ("img_size", "patch_size", "num_kv_heads", "ref_feat_shape", "rope_mrope_section")


def mlp_ratio_for(dim: int, hidden: int) -> float:
    """The float ratio r closest to hidden / dim with int(dim * r) == hidden (timm's width rule)."""
    r = hidden / dim
    while int(dim * r) < hidden:
        r = math.nextafter(r, math.inf)
    return r


@dataclass(frozen=True)
class EvaConfig:
    """Every option of timm's Eva, with timm's argument names and defaults.

    ``norm_layer`` / ``norm_eps`` stand for timm's norm-layer constructor (timm's LayerNorm has
    eps 1e-6); ``attn_impl`` / ``dense_impl`` choose kernels and do not change the numbers.
    """

    img_size: int | tuple[int, int] = 224
    patch_size: int | tuple[int, int] = 16
    in_chans: int = 3
    num_classes: int = 1000
    global_pool: str = "avg"
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    num_kv_heads: int | tuple[int, ...] | None = None
    qkv_bias: bool = True
    qkv_fused: bool = True
    qk_norm: bool = False
    mlp_ratio: float = 4.0
    swiglu_mlp: bool = False
    swiglu_align_to: int = 0
    scale_mlp: bool = False
    scale_attn_inner: bool = False
    attn_type: str = "eva"
    drop_rate: float = 0.0
    pos_drop_rate: float = 0.0
    patch_drop_rate: float = 0.0
    proj_drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    norm_layer: str = "layernorm"
    norm_eps: float = 1e-6
    init_values: float | None = None
    attn_only_layer_scale: bool = False
    class_token: bool = True
    num_reg_tokens: int = 0
    no_embed_class: bool = False
    use_abs_pos_emb: bool = True
    use_rot_pos_emb: bool = False
    rope_type: str = "cat"
    rope_grid_offset: float = 0.0
    rope_grid_indexing: str = "ij"
    rope_temperature: float = 10000.0
    rope_rotate_half: bool = False
    rope_shift_coords: float | None = None
    rope_jitter_coords: float | None = None
    rope_rescale_coords: float | None = None
    rope_mrope_section: tuple[int, int, int] | None = None
    use_post_norm: bool = False
    use_pre_transformer_norm: bool = False
    use_post_transformer_norm: bool | None = None
    use_fc_norm: bool | None = None
    attn_pool_num_heads: int | None = None
    attn_pool_mlp_ratio: float | None = None
    dynamic_img_size: bool = False
    dynamic_img_pad: bool = False
    ref_feat_shape: int | tuple[int, int] | None = None
    head_init_scale: float = 0.001
    attn_impl: str = "auto"
    dense_impl: str = "auto"

    def __post_init__(self) -> None:
        choices = dict(
            global_pool=GLOBAL_POOLS,
            attn_type=ATTN_TYPES,
            rope_type=ROPE_TYPES,
            norm_layer=NORM_LAYERS,
            rope_grid_indexing=("ij", "xy"),
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
        kv = self.kv_heads
        if len(kv) != self.depth:
            raise ValueError("num_kv_heads sequence must have one entry per block")
        if any(h not in (None, self.num_heads) for h in kv):
            if self.attn_type != "rope" or self.qkv_fused:
                raise ValueError(
                    "grouped-query attention (num_kv_heads) needs attn_type='rope' and "
                    "qkv_fused=False"
                )
            if any(h is not None and self.num_heads % h for h in kv):
                raise ValueError("num_heads must be divisible by num_kv_heads")
        if self.use_post_norm and (
            self.qk_norm or self.attn_only_layer_scale or self.num_kv_heads is not None
        ):
            raise ValueError(
                "qk_norm, num_kv_heads and attn_only_layer_scale are not supported with "
                "use_post_norm"
            )
        if self.use_rot_pos_emb and self.rope_type == "mixed" and self.rope_rotate_half:
            raise ValueError("rope_type='mixed' requires rope_rotate_half=False")
        for name in ("img_size", "patch_size", "in_chans", "embed_dim", "depth", "num_heads"):
            if min(to_2tuple(getattr(self, name))) <= 0:
                raise ValueError(f"{name}={getattr(self, name)!r} must be positive")

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def mlp_hidden(self) -> int:
        return int(self.embed_dim * self.mlp_ratio)

    @property
    def kv_heads(self) -> tuple[int | None, ...]:
        """Key/value heads per block (None: as many as query heads)."""
        kv = self.num_kv_heads
        if kv is None or isinstance(kv, int):
            return (kv,) * self.depth
        return tuple(kv)

    @property
    def grid_size(self) -> tuple[int, int]:
        (h, w), (ph, pw) = to_2tuple(self.img_size), to_2tuple(self.patch_size)
        return h // ph, w // pw

    @property
    def num_patches(self) -> int:
        gh, gw = self.grid_size
        return gh * gw

    @property
    def num_prefix_tokens(self) -> int:
        return int(self.class_token) + self.num_reg_tokens

    @property
    def embed_len(self) -> int:
        return self.num_patches + (0 if self.no_embed_class else self.num_prefix_tokens)

    @property
    def fc_norm_active(self) -> bool:
        """timm's resolution: explicit use_fc_norm, else on for 'avg' pooling."""
        return self.global_pool == "avg" if self.use_fc_norm is None else self.use_fc_norm

    @property
    def post_norm_active(self) -> bool:
        """timm's resolution: explicit use_post_transformer_norm, else on without fc_norm."""
        if self.use_post_transformer_norm is None:
            return not self.fc_norm_active
        return self.use_post_transformer_norm

    @property
    def rotate_half(self) -> bool:
        return self.rope_rotate_half or self.rope_type == "mrope"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of every field."""
        return config_to_dict(self, _TUPLE_FIELDS)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> EvaConfig:
        """Inverse of to_dict; unknown keys are an error naming them."""
        return config_from_dict(cls, d, _TUPLE_FIELDS)


# --- modules ------------------------------------------------------------------------------------


def _attn_bias(
    attn_mask: jax.Array | None, N: int, is_causal: bool, dtype: Dtype
) -> jax.Array | None:
    """Additive attention bias as timm's resolve_self_attn_mask: causal, bool keep-mask or float."""
    if is_causal:
        return jnp.where(jnp.triu(jnp.ones((N, N), bool), 1), -jnp.inf, 0.0).astype(dtype)
    if attn_mask is None:
        return None
    if attn_mask.dtype == jnp.bool_:
        return jnp.where(attn_mask, 0.0, -jnp.inf).astype(dtype)
    return attn_mask


def _rope_tokens(t: jax.Array, rope: jax.Array | None, npt: int, half: bool) -> jax.Array:
    """Rotate the non-prefix tokens of (B, H, N, Dh) t; the npt prefix tokens pass unrotated."""
    if rope is None:
        return t
    rotated = apply_rot_embed_cat(t[:, :, npt:, :], rope, half=half)
    return jnp.concatenate([t[:, :, :npt, :], rotated], axis=2)


class _AttentionBase(nn.Module):
    """Shared attention math of EvaAttention and AttentionRope after q, k, v are formed."""

    def _attend(
        self,
        x: jax.Array,
        q: jax.Array,
        k: jax.Array,
        v: jax.Array,
        rope: jax.Array | None,
        attn_mask: jax.Array | None,
        is_causal: bool,
        train: bool,
        groups: int = 1,
    ) -> jax.Array:
        B, N, _ = x.shape
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q = _rope_tokens(q, rope, self.num_prefix_tokens, self.rotate_half).astype(v.dtype)
        k = _rope_tokens(k, rope, self.num_prefix_tokens, self.rotate_half).astype(v.dtype)
        if groups > 1:  # grouped-query attention: head h uses kv head h // groups
            k, v = jnp.repeat(k, groups, axis=1), jnp.repeat(v, groups, axis=1)
        drop = None
        if train and self.attn_drop > 0:
            drop = lambda p: self.attn_dropout(p, deterministic=False)  # noqa: E731
        bias = _attn_bias(attn_mask, N, is_causal, q.dtype)
        Dh = q.shape[-1]
        y = dot_product_attention(q, k, v, Dh**-0.5, bias, impl=self.attn_impl, dropout=drop)
        y = y.transpose(0, 2, 1, 3).reshape(B, N, -1)  # (B, N, H * Dh)
        if self.norm is not None:
            y = self.norm(y)
        if self.gate is not None:
            y = y * nn.sigmoid(self.gate(x))
        return self.proj_dropout(self.proj(y), deterministic=not train)

    def _common_setup(self, attn_dim: int, head_dim: int) -> None:
        dt = self.dtype
        if (self.qk_norm or self.scale_norm) and not self.norm_layer:
            raise ValueError("norm_layer must be provided if qk_norm or scale_norm is True")
        qk = self.qk_norm
        self.q_norm = make_norm(self.norm_layer, self.norm_eps, dt) if qk else None
        self.k_norm = make_norm(self.norm_layer, self.norm_eps, dt) if qk else None
        self.attn_dropout = nn.Dropout(self.attn_drop)
        self.norm = make_norm(self.norm_layer, self.norm_eps, dt) if self.scale_norm else None
        self.gate = (
            Dense(attn_dim, use_bias=self.qkv_bias, dtype=dt, impl=self.dense_impl)
            if self.gated
            else None
        )
        self.proj = Dense(self.dim, use_bias=True, dtype=dt, impl=self.dense_impl)
        self.proj_dropout = nn.Dropout(self.proj_drop)


class EvaAttention(_AttentionBase):
    """EVA attention: q/v biases (k bias fixed at zero), fused or separate q, k, v projections."""

    dim: int
    num_heads: int = 8
    qkv_bias: bool = True
    qkv_fused: bool = True
    qkv_bias_separate: bool = False
    num_prefix_tokens: int = 1
    attn_drop: float = 0.0
    proj_drop: float = 0.0
    attn_head_dim: int | None = None
    norm_layer: str | None = None
    norm_eps: float = 1e-6
    qk_norm: bool = False
    scale_norm: bool = True
    rotate_half: bool = False
    gated: bool = False
    dtype: Dtype = jnp.float32
    attn_impl: str = "auto"
    dense_impl: str = "auto"

    @property
    def head_dim(self) -> int:
        return self.attn_head_dim or self.dim // self.num_heads

    def setup(self) -> None:
        attn_dim, dt, impl = self.head_dim * self.num_heads, self.dtype, self.dense_impl
        if self.qkv_fused:
            self.qkv = Dense(attn_dim * 3, use_bias=False, dtype=dt, impl=impl)
            if self.qkv_bias:
                self.q_bias = self.param("q_bias", nn.initializers.zeros, (attn_dim,))
                self.v_bias = self.param("v_bias", nn.initializers.zeros, (attn_dim,))
        else:
            self.q_proj = Dense(attn_dim, use_bias=self.qkv_bias, dtype=dt, impl=impl)
            self.k_proj = Dense(attn_dim, use_bias=False, dtype=dt, impl=impl)
            self.v_proj = Dense(attn_dim, use_bias=self.qkv_bias, dtype=dt, impl=impl)
        self._common_setup(attn_dim, self.head_dim)

    def __call__(
        self,
        x: jax.Array,
        rope: jax.Array | None = None,
        attn_mask: jax.Array | None = None,
        is_causal: bool = False,
        train: bool = False,
    ) -> jax.Array:
        B, N, C = x.shape
        H = self.num_heads
        if self.qkv_fused:
            qkv = self.qkv(x)
            if self.qkv_bias:
                k_bias = jnp.zeros_like(self.q_bias)
                qkv = qkv + jnp.concatenate([self.q_bias, k_bias, self.v_bias]).astype(qkv.dtype)
            q, k, v = qkv.reshape(B, N, 3, H, -1).transpose(2, 0, 3, 1, 4)  # 3 x (B, H, N, Dh)
        else:
            q = self.q_proj(x).reshape(B, N, H, -1).transpose(0, 2, 1, 3)  # (B, H, N, Dh)
            k = self.k_proj(x).reshape(B, N, H, -1).transpose(0, 2, 1, 3)
            v = self.v_proj(x).reshape(B, N, H, -1).transpose(0, 2, 1, 3)
        return self._attend(x, q, k, v, rope, attn_mask, is_causal, train)


class AttentionRope(_AttentionBase):
    """timm's AttentionRope: plain q/k/v biases, grouped-query attention (num_kv_heads)."""

    dim: int
    num_heads: int = 8
    qkv_bias: bool = True
    qkv_fused: bool = True
    num_prefix_tokens: int = 1
    attn_drop: float = 0.0
    proj_drop: float = 0.0
    attn_head_dim: int | None = None
    norm_layer: str | None = None
    norm_eps: float = 1e-6
    qk_norm: bool = False
    scale_norm: bool = False
    rotate_half: bool = False
    gated: bool = False
    num_kv_heads: int | None = None
    dtype: Dtype = jnp.float32
    attn_impl: str = "auto"
    dense_impl: str = "auto"

    @property
    def head_dim(self) -> int:
        return self.attn_head_dim or self.dim // self.num_heads

    @property
    def kv_heads(self) -> int:
        return self.num_kv_heads or self.num_heads

    def setup(self) -> None:
        if self.num_heads % self.kv_heads:
            raise ValueError("num_heads must be divisible by num_kv_heads")
        Dh, dt, impl, bias = self.head_dim, self.dtype, self.dense_impl, self.qkv_bias
        attn_dim, kv_dim = Dh * self.num_heads, Dh * self.kv_heads
        if self.qkv_fused:
            if self.kv_heads != self.num_heads:
                raise ValueError("fused qkv projection does not support grouped-query attention")
            self.qkv = Dense(attn_dim * 3, use_bias=bias, dtype=dt, impl=impl)
        else:
            self.q_proj = Dense(attn_dim, use_bias=bias, dtype=dt, impl=impl)
            self.k_proj = Dense(kv_dim, use_bias=bias, dtype=dt, impl=impl)
            self.v_proj = Dense(kv_dim, use_bias=bias, dtype=dt, impl=impl)
        self._common_setup(attn_dim, Dh)

    def __call__(
        self,
        x: jax.Array,
        rope: jax.Array | None = None,
        attn_mask: jax.Array | None = None,
        is_causal: bool = False,
        train: bool = False,
    ) -> jax.Array:
        B, N, C = x.shape
        H, KV, Dh = self.num_heads, self.kv_heads, self.head_dim
        if self.qkv_fused:
            qkv = self.qkv(x).reshape(B, N, 3, H, Dh)  # (B, N, 3, H, Dh)
            q, k, v = qkv.transpose(2, 0, 3, 1, 4)  # 3 x (B, H, N, Dh)
        else:
            q = self.q_proj(x).reshape(B, N, H, Dh).transpose(0, 2, 1, 3)  # (B, H, N, Dh)
            k = self.k_proj(x).reshape(B, N, KV, Dh).transpose(0, 2, 1, 3)  # (B, KV, N, Dh)
            v = self.v_proj(x).reshape(B, N, KV, Dh).transpose(0, 2, 1, 3)
        return self._attend(x, q, k, v, rope, attn_mask, is_causal, train, groups=H // KV)


def _make_attn(blk: nn.Module, qk_norm: bool, num_kv_heads: int | None) -> nn.Module:
    """The block's attention module (EvaAttention or AttentionRope) from its fields."""
    common = dict(
        num_heads=blk.num_heads,
        qkv_bias=blk.qkv_bias,
        qkv_fused=blk.qkv_fused,
        num_prefix_tokens=blk.num_prefix_tokens,
        attn_drop=blk.attn_drop,
        proj_drop=blk.proj_drop,
        norm_layer=blk.norm_layer,
        norm_eps=blk.norm_eps,
        qk_norm=qk_norm,
        scale_norm=blk.scale_attn_inner,
        rotate_half=blk.rotate_half,
        dtype=blk.dtype,
        attn_impl=blk.attn_impl,
        dense_impl=blk.dense_impl,
    )
    if blk.attn_type == "rope":
        return AttentionRope(blk.dim, num_kv_heads=num_kv_heads, **common)
    if num_kv_heads not in (None, blk.num_heads):
        raise ValueError("grouped-query attention (num_kv_heads) needs attn_type='rope'")
    return EvaAttention(blk.dim, **common)


def _make_mlp(blk: nn.Module, swiglu_split: bool) -> nn.Module:
    """The block's MLP as timm picks it: SwiGLU (separate fc1_g/fc1_x), packed GluMlp, or Mlp."""
    dim, hidden, dt, impl = blk.dim, int(blk.dim * blk.mlp_ratio), blk.dtype, blk.dense_impl
    norm = blk.norm_layer if blk.scale_mlp else None
    common = dict(drop=blk.proj_drop, norm_eps=blk.norm_eps, dtype=dt, dense_impl=impl)
    if blk.swiglu_mlp and swiglu_split:
        a = blk.swiglu_align_to
        hidden = hidden + (-hidden % a) if a else hidden
        return SwiGLU(hidden, dim, act_layer="silu", norm_layer=norm, **common)
    if blk.swiglu_mlp:
        return GluMlp(hidden * 2, dim, act_layer="silu", gate_last=False, norm_layer=None, **common)
    return Mlp(hidden, dim, act_layer="gelu", norm_layer=norm, **common)


class EvaBlock(nn.Module):
    """Pre-norm EVA block: x + gamma_1 * attn(norm1(x)), then x + gamma_2 * mlp(norm2(x))."""

    dim: int
    num_heads: int
    qkv_bias: bool = True
    qkv_fused: bool = True
    mlp_ratio: float = 4.0
    swiglu_mlp: bool = False
    swiglu_align_to: int = 0
    scale_mlp: bool = False
    scale_attn_inner: bool = False
    num_prefix_tokens: int = 1
    attn_type: str = "eva"
    rotate_half: bool = False
    qk_norm: bool = False
    num_kv_heads: int | None = None
    proj_drop: float = 0.0
    attn_drop: float = 0.0
    drop_path: float = 0.0
    init_values: float | None = None
    attn_only_layer_scale: bool = False
    norm_layer: str = "layernorm"
    norm_eps: float = 1e-6
    dtype: Dtype = jnp.float32
    attn_impl: str = "auto"
    dense_impl: str = "auto"

    def setup(self) -> None:
        dim, dt = self.dim, self.dtype
        self.norm1 = make_norm(self.norm_layer, self.norm_eps, dt)
        self.attn = _make_attn(self, self.qk_norm, self.num_kv_heads)
        ls = self.init_values is not None
        const = nn.initializers.constant(self.init_values or 0.0)
        self.gamma_1 = self.param("gamma_1", const, (dim,)) if ls else None
        self.drop_path1 = DropPath(self.drop_path)
        self.norm2 = make_norm(self.norm_layer, self.norm_eps, dt)
        self.mlp = _make_mlp(self, swiglu_split=self.scale_mlp or bool(self.swiglu_align_to))
        use_mlp_ls = ls and not self.attn_only_layer_scale
        self.gamma_2 = self.param("gamma_2", const, (dim,)) if use_mlp_ls else None
        self.drop_path2 = DropPath(self.drop_path)

    def __call__(
        self,
        x: jax.Array,
        rope: jax.Array | None = None,
        attn_mask: jax.Array | None = None,
        is_causal: bool = False,
        train: bool = False,
    ) -> jax.Array:
        y = self.attn(self.norm1(x), rope, attn_mask, is_causal, train)
        if self.gamma_1 is not None:
            y = self.gamma_1.astype(y.dtype) * y
        x = x + self.drop_path1(y, train)
        y = self.mlp(self.norm2(x), train)
        if self.gamma_2 is not None:
            y = self.gamma_2.astype(y.dtype) * y
        return x + self.drop_path2(y, train)


class EvaBlockPostNorm(nn.Module):
    """Post-norm EVA block (EVA-02 enormous): x + norm1(attn(x)), then x + norm2(mlp(x))."""

    dim: int
    num_heads: int
    qkv_bias: bool = True
    qkv_fused: bool = True
    mlp_ratio: float = 4.0
    attn_type: str = "eva"
    rotate_half: bool = False
    swiglu_mlp: bool = False
    swiglu_align_to: int = 0
    scale_mlp: bool = False
    scale_attn_inner: bool = False
    num_prefix_tokens: int = 1
    proj_drop: float = 0.0
    attn_drop: float = 0.0
    drop_path: float = 0.0
    init_values: float | None = None  # ignored, as timm's post-norm block does
    norm_layer: str = "layernorm"
    norm_eps: float = 1e-6
    dtype: Dtype = jnp.float32
    attn_impl: str = "auto"
    dense_impl: str = "auto"

    def setup(self) -> None:
        dt = self.dtype
        self.attn = _make_attn(self, qk_norm=False, num_kv_heads=None)
        self.norm1 = make_norm(self.norm_layer, self.norm_eps, dt)
        self.drop_path1 = DropPath(self.drop_path)
        # unlike EvaBlock, only scale_mlp (not swiglu_align_to) selects the separate SwiGLU
        self.mlp = _make_mlp(self, swiglu_split=self.scale_mlp)
        self.norm2 = make_norm(self.norm_layer, self.norm_eps, dt)
        self.drop_path2 = DropPath(self.drop_path)

    def __call__(
        self,
        x: jax.Array,
        rope: jax.Array | None = None,
        attn_mask: jax.Array | None = None,
        is_causal: bool = False,
        train: bool = False,
    ) -> jax.Array:
        x = x + self.drop_path1(self.norm1(self.attn(x, rope, attn_mask, is_causal, train)), train)
        return x + self.drop_path2(self.norm2(self.mlp(x, train)), train)


def global_pool_nlc(
    x: jax.Array, pool_type: str = "token", num_prefix_tokens: int = 1
) -> jax.Array:
    """timm's global_pool_nlc on (B, N, C): class token, or avg / max / avgmax of the patches."""
    if not pool_type:
        return x
    if pool_type == "token":
        return x[:, 0]
    x = x[:, num_prefix_tokens:]
    if pool_type == "avg":
        return x.mean(axis=1)
    if pool_type == "avgmax":
        return 0.5 * (x.max(axis=1) + x.mean(axis=1))
    if pool_type == "max":
        return x.max(axis=1)
    raise ValueError(f"Unknown pool type {pool_type}")


def _drop_path_rates(rate: float, depth: int) -> list[float]:
    """timm's calculate_drop_path_rates: float32 linspace(0, rate, depth)."""
    return [float(r) for r in np.linspace(0.0, rate, depth, dtype=np.float32)]


class Eva(nn.Module):
    """Eva ViT: patch embed, prefix tokens + pos embed, rotary tables, blocks, pool, head."""

    cfg: EvaConfig
    dtype: Dtype = jnp.float32

    def setup(self) -> None:
        cfg, dim, dt = self.cfg, self.cfg.embed_dim, self.dtype
        self.patch_embed = PatchEmbed(
            cfg.img_size, cfg.patch_size, cfg.in_chans, dim,
            bias=not cfg.use_pre_transformer_norm, dynamic_img_size=cfg.dynamic_img_size,
            dynamic_img_pad=cfg.dynamic_img_pad, dtype=dt, dense_impl=cfg.dense_impl,
        )  # fmt: skip
        tok = nn.initializers.truncated_normal(0.02)
        self.cls_token = self.param("cls_token", tok, (1, 1, dim)) if cfg.class_token else None
        self.reg_token = (
            self.param("reg_token", tok, (1, cfg.num_reg_tokens, dim))
            if cfg.num_reg_tokens
            else None
        )
        self.pos_embed = (
            self.param("pos_embed", tok, (1, cfg.embed_len, dim)) if cfg.use_abs_pos_emb else None
        )
        self.pos_drop = nn.Dropout(cfg.pos_drop_rate)
        self.rope = self._make_rope() if cfg.use_rot_pos_emb else None
        self.rope_mixed = cfg.use_rot_pos_emb and cfg.rope_type == "mixed"
        norm = lambda: make_norm(cfg.norm_layer, cfg.norm_eps, dt)  # noqa: E731
        self.norm_pre = norm() if cfg.use_pre_transformer_norm else None
        rates = _drop_path_rates(cfg.drop_path_rate, cfg.depth)
        self.blocks = [self._make_block(i, rates[i]) for i in range(cfg.depth)]
        self.norm = norm() if cfg.post_norm_active else None
        self.attn_pool = (
            AttentionPoolLatent(
                dim,
                cfg.attn_pool_num_heads or cfg.num_heads,
                int(dim * (cfg.attn_pool_mlp_ratio or cfg.mlp_ratio)),
                act_layer="gelu",
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
        head_init = (
            nn.initializers.truncated_normal(0.02 * cfg.head_init_scale)
            if cfg.head_init_scale
            else dense_init
        )
        self.head = (
            nn.Dense(cfg.num_classes, kernel_init=head_init, dtype=dt)
            if cfg.num_classes > 0
            else None
        )

    def _make_rope(self) -> nn.Module:
        cfg = self.cfg
        kw: dict[str, Any] = dict(
            dim=cfg.embed_dim,
            num_heads=cfg.num_heads,
            feat_shape=None if cfg.dynamic_img_size else cfg.grid_size,
            temperature=cfg.rope_temperature,
            grid_indexing=cfg.rope_grid_indexing,
            rotate_half=cfg.rotate_half,
            shift_coords=cfg.rope_shift_coords,
            jitter_coords=cfg.rope_jitter_coords,
            rescale_coords=cfg.rope_rescale_coords,
        )
        if cfg.rope_type == "mixed":
            kw["depth"] = cfg.depth
        elif cfg.rope_type == "cat":
            ref = None if cfg.ref_feat_shape is None else to_2tuple(cfg.ref_feat_shape)
            kw.update(in_pixels=False, grid_offset=cfg.rope_grid_offset, ref_feat_shape=ref)
        elif cfg.rope_type == "dinov3":
            kw["grid_offset"] = cfg.rope_grid_offset
        elif cfg.rope_type == "mrope" and cfg.rope_mrope_section is not None:
            kw["mrope_section"] = tuple(cfg.rope_mrope_section)
        return create_rope_embed(cfg.rope_type, **kw)

    def _make_block(self, i: int, drop_path: float) -> nn.Module:
        cfg = self.cfg
        kw = dict(
            dim=cfg.embed_dim, num_heads=cfg.num_heads, qkv_bias=cfg.qkv_bias,
            qkv_fused=cfg.qkv_fused, mlp_ratio=cfg.mlp_ratio, swiglu_mlp=cfg.swiglu_mlp,
            swiglu_align_to=cfg.swiglu_align_to, scale_mlp=cfg.scale_mlp,
            scale_attn_inner=cfg.scale_attn_inner, attn_type=cfg.attn_type,
            rotate_half=cfg.rotate_half, num_prefix_tokens=cfg.num_prefix_tokens,
            proj_drop=cfg.proj_drop_rate, attn_drop=cfg.attn_drop_rate, drop_path=drop_path,
            norm_layer=cfg.norm_layer, norm_eps=cfg.norm_eps, init_values=cfg.init_values,
            dtype=self.dtype, attn_impl=cfg.attn_impl, dense_impl=cfg.dense_impl,
        )  # fmt: skip
        if cfg.use_post_norm:
            return EvaBlockPostNorm(**kw)
        return EvaBlock(
            **kw, qk_norm=cfg.qk_norm, attn_only_layer_scale=cfg.attn_only_layer_scale,
            num_kv_heads=cfg.kv_heads[i],
        )  # fmt: skip

    def _rope_embed(self, grid: tuple[int, int], train: bool) -> jax.Array | None:
        """The rotary table for this grid: rebuilt for it (dynamic size) or the fixed one."""
        cfg = self.cfg
        if self.rope is None:
            return None
        if cfg.dynamic_img_size or cfg.rope_type == "mrope":  # MRoPE has no feat_shape
            return self.rope.get_embed(grid, train=train)
        return self.rope.get_embed(train=train)

    def _pos_embed(self, x: jax.Array, train: bool) -> tuple[jax.Array, jax.Array | None]:
        cfg = self.cfg
        pos_embed = None if self.pos_embed is None else self.pos_embed.astype(x.dtype)
        if cfg.dynamic_img_size:
            B, H, W, C = x.shape
            if pos_embed is not None:
                n_prefix = 0 if cfg.no_embed_class else cfg.num_prefix_tokens
                pos_embed = resample_abs_pos_embed(pos_embed, (H, W), cfg.grid_size, n_prefix)
            x = x.reshape(B, H * W, C)  # (B, N, C)
            rope = self._rope_embed((H, W), train)
        else:
            B, _, C = x.shape
            rope = self._rope_embed(cfg.grid_size, train)
        prefix = [
            jnp.broadcast_to(t.astype(x.dtype), (B, t.shape[1], C))
            for t in (self.cls_token, self.reg_token)
            if t is not None
        ]
        if cfg.no_embed_class:
            x = x + pos_embed if pos_embed is not None else x
            x = jnp.concatenate(prefix + [x], axis=1) if prefix else x
        else:
            x = jnp.concatenate(prefix + [x], axis=1) if prefix else x
            x = x + pos_embed if pos_embed is not None else x
        x = self.pos_drop(x, deterministic=not train)
        if train and cfg.patch_drop_rate > 0:
            x, rope = self._patch_drop(x, rope)
        return x, rope

    def _patch_drop(self, x: jax.Array, rope: jax.Array | None) -> tuple[jax.Array, Any]:
        """timm's PatchDropoutWithIndices (training): keep a random subset of the patch tokens."""
        npt = self.cfg.num_prefix_tokens
        prefix, patches = x[:, :npt], x[:, npt:]
        B, L, C = patches.shape
        num_keep = max(1, int(L * (1.0 - self.cfg.patch_drop_rate)))
        noise = jax.random.normal(self.make_rng("dropout"), (B, L))
        keep = jnp.argsort(noise, axis=-1)[:, :num_keep]  # (B, K)
        patches = jnp.take_along_axis(patches, keep[..., None], axis=1)  # (B, K, C)
        x = jnp.concatenate([prefix, patches], axis=1)
        if rope is not None:
            rope = apply_keep_indices_nlc(x, rope, keep)
            # mixed: (B, depth, H, K, D) -> (depth, B, H, K, D); axial: (B, K, D) -> (B, 1, K, D)
            rope = rope.swapaxes(0, 1) if self.rope_mixed else rope[:, None]
        return x, rope

    def forward_features(
        self,
        x: jax.Array,
        train: bool = False,
        attn_mask: jax.Array | None = None,
        is_causal: bool = False,
    ) -> jax.Array:
        x = self.patch_embed(x.astype(self.dtype))
        x, rope = self._pos_embed(x, train)
        if self.norm_pre is not None:
            x = self.norm_pre(x)
        for i, blk in enumerate(self.blocks):
            r = rope[i] if self.rope_mixed and rope is not None else rope
            x = blk(x, r, attn_mask, is_causal, train)
        return self.norm(x) if self.norm is not None else x

    def pool(self, x: jax.Array, pool_type: str | None = None, train: bool = False) -> jax.Array:
        if self.attn_pool is not None:
            return self.attn_pool(x, train)
        pool_type = self.cfg.global_pool if pool_type is None else pool_type
        return global_pool_nlc(x, pool_type, self.cfg.num_prefix_tokens)

    def forward_head(
        self, x: jax.Array, pre_logits: bool = False, train: bool = False
    ) -> jax.Array:
        x = self.pool(x, train=train)
        if self.fc_norm is not None:
            x = self.fc_norm(x)
        x = self.head_drop(x, deterministic=not train)
        return x if pre_logits or self.head is None else self.head(x)

    def __call__(
        self,
        x: jax.Array,
        train: bool = False,
        pre_logits: bool = False,
        attn_mask: jax.Array | None = None,
        is_causal: bool = False,
    ) -> jax.Array:
        x = self.forward_features(x, train, attn_mask, is_causal)
        return self.forward_head(x, pre_logits, train)

    def forward_intermediates(
        self,
        x: jax.Array,
        indices: int | Sequence[int] | None = None,
        return_prefix_tokens: bool = False,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NHWC",
        intermediates_only: bool = False,
        attn_mask: jax.Array | None = None,
        is_causal: bool = False,
        train: bool = False,
    ) -> list[Any] | tuple[jax.Array, list[Any]]:
        """timm's Eva.forward_intermediates: (final features, per-block features), or the list.

        indices: the last n blocks if an int, all if None, else those indices (negative from the
        end). Each intermediate is (B, H, W, C) for output_fmt "NHWC" (timm's "NCHW" transposed
        by (0, 2, 3, 1)) or (B, H * W, C) for "NLC", normalised by the final norm if norm; with
        return_prefix_tokens, a (patches, (B, num_prefix_tokens, C) prefix tokens) tuple. The
        final features are forward_features' output (of block max(indices) with stop_early).
        """
        cfg = self.cfg
        check_output_fmt(output_fmt)
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        _, height, width, _ = x.shape
        x = self.patch_embed(x.astype(self.dtype))
        x, rope = self._pos_embed(x, train)
        if self.norm_pre is not None:
            x = self.norm_pre(x)

        def step(i: int, x: jax.Array) -> jax.Array:
            r = rope[i] if self.rope_mixed and rope is not None else rope
            return self.blocks[i](x, r, attn_mask, is_causal, train)

        x, intermediates = collect_intermediates(
            x, step, len(self.blocks), take_indices, max_index, stop_early,
            self.norm if norm else None,
        )  # fmt: skip
        grid = dynamic_feat_size((height, width), cfg.patch_size, cfg.dynamic_img_pad)
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
    ) -> tuple[Eva, list[int]]:
        """timm's prune_intermediate_layers as a new model: (pruned model, indices it keeps).

        The pruned model has only the blocks up to max(indices) (each keeping its drop-path
        rate and kv heads), no final norm if prune_norm, and no head (fc_norm, attention pool,
        classifier; global_pool "") if prune_head. Its variables are
        ``vitjax.layers.features.prune_variables(variables, pruned_model)``.
        """
        cfg = self.cfg
        take_indices, max_index = feature_take_indices(cfg.depth, indices)
        depth = max_index + 1
        changes: dict[str, Any] = dict(
            depth=depth,
            drop_path_rate=_drop_path_rates(cfg.drop_path_rate, cfg.depth)[max_index],
            use_post_transformer_norm=cfg.post_norm_active and not prune_norm,
        )
        if isinstance(cfg.num_kv_heads, tuple):
            changes["num_kv_heads"] = cfg.num_kv_heads[:depth]
        if prune_head:
            changes.update(num_classes=0, global_pool="", use_fc_norm=False)
        return self.clone(parent=None, cfg=dataclasses.replace(cfg, **changes)), take_indices


CONFIG = EvaConfig
MODEL = Eva
TIMM_CLASSES = ("Eva",)


# --- reading a live timm Eva --------------------------------------------------------------------

_ROPE_TYPES = {
    "RotaryEmbeddingCat": "cat",
    "RotaryEmbeddingMixed": "mixed",
    "RotaryEmbeddingDinoV3": "dinov3",
    "RotaryEmbeddingMRope": "mrope",
}


def _square(x: Sequence[int]) -> int | tuple[int, int]:
    return int(x[0]) if x[0] == x[1] else (int(x[0]), int(x[1]))


def _p(m: Any) -> float:
    """A dropout / drop-path module's rate (0 for Identity), as the float32 timm holds printed."""
    p = float(getattr(m, "p", getattr(m, "drop_prob", 0.0)) or 0.0)
    return float(str(np.float32(p)))


def _mlp_signature(mlp: Any, w: str) -> dict[str, Any]:
    """(kind, hidden width, sub-LN norm) of a block's MLP; refuses other MLPs and activations."""
    kind = cls_name(mlp)
    norm = None if is_identity(getattr(mlp, "norm", None)) else norm_kind(mlp.norm, f"{w}.norm")
    if kind == "SwiGLU":
        require(cls_name(mlp.act) == "SiLU", f"{w}.act of type {cls_name(mlp.act)}")
        return dict(kind=kind, hidden=mlp.fc1_g.out_features, norm=norm)
    if kind == "GluMlp":
        require(cls_name(mlp.act) == "SiLU", f"{w}.act of type {cls_name(mlp.act)}")
        require(not mlp.gate_last and mlp.chunk_dim == -1, f"{w} gating other than EVA's")
        return dict(kind=kind, hidden=mlp.fc1.out_features // 2, norm=norm)
    require(kind == "Mlp", f"{w} of type {kind}")
    act = mlp.act
    exact = cls_name(act) == "GELU" and getattr(act, "approximate", "none") == "none"
    require(exact, f"{w}.act of type {cls_name(act)} (Eva uses exact GELU)")
    return dict(kind=kind, hidden=mlp.fc1.out_features, norm=norm)


def _block_signature(blk: Any, i: int) -> dict[str, Any]:
    """Everything config_from_timm reads from one block; blocks must agree except kv heads."""
    w = f"blocks.{i}"
    kind = cls_name(blk)
    require(kind in ("EvaBlock", "EvaBlockPostNorm"), f"{w} of type {kind}")
    attn = blk.attn
    attn_type = {"EvaAttention": "eva", "AttentionRope": "rope"}.get(cls_name(attn))
    require(attn_type is not None, f"{w}.attn of type {cls_name(attn)}")
    dim = blk.norm1.normalized_shape[0]
    require(attn.head_dim * attn.num_heads == dim, f"{w}.attn with attn_head_dim != dim / heads")
    require(getattr(attn, "gate", None) is None, f"{w}.attn.gate (gated attention)")
    require(abs(attn.scale - attn.head_dim**-0.5) < 1e-12, f"{w}.attn with a custom scale")
    fused = attn.qkv is not None
    if attn_type == "eva":
        bias = (attn.q_bias is not None) if fused else (attn.q_proj.bias is not None)
    else:
        bias = (attn.qkv if fused else attn.q_proj).bias is not None
    check_linear(attn.proj, f"{w}.attn.proj", dim, dim, True)
    norms = {n: norm_kind(getattr(blk, n), f"{w}.{n}") for n in ("norm1", "norm2")}
    for n in ("q_norm", "k_norm", "norm"):
        if not is_identity(getattr(attn, n)):
            norms[f"attn.{n}"] = norm_kind(getattr(attn, n), f"{w}.attn.{n}")
    require(len(set(norms.values())) == 1, f"{w} with norm layers of different kinds or eps")
    gamma_1, gamma_2 = getattr(blk, "gamma_1", None), getattr(blk, "gamma_2", None)
    return dict(
        post_norm=kind == "EvaBlockPostNorm",
        attn_type=attn_type,
        dim=dim,
        num_heads=attn.num_heads,
        qkv_fused=fused,
        qkv_bias=bias,
        qk_norm=not is_identity(attn.q_norm),
        scale_attn_inner=not is_identity(attn.norm),
        rotate_half=bool(getattr(attn, "rotate_half", False)),
        num_prefix_tokens=attn.num_prefix_tokens,
        norm=norms["norm1"],
        mlp=_mlp_signature(blk.mlp, f"{w}.mlp"),
        init_values=None if gamma_1 is None else float(blk.init_values),
        attn_only_layer_scale=gamma_1 is not None and gamma_2 is None,
        proj_drop=_p(attn.proj_drop),
        attn_drop=_p(attn.attn_drop),
    )


def _kv_heads(model: Any, num_heads: int) -> int | tuple[int, ...] | None:
    kv = tuple(int(getattr(b.attn, "num_kv_heads", num_heads)) for b in model.blocks)
    if all(h == num_heads for h in kv):
        return None
    return kv


def _rope_args(model: Any, rotate_half: bool) -> dict[str, Any]:
    """The rope_* config fields of a live Eva's rotary module."""
    rope = model.rope
    if rope is None:
        return dict(use_rot_pos_emb=False)
    kind = _ROPE_TYPES.get(cls_name(rope))
    require(kind is not None, f"rope of type {cls_name(rope)}")
    args: dict[str, Any] = dict(
        use_rot_pos_emb=True,
        rope_type=kind,
        rope_temperature=float(rope.temperature),
        rope_grid_indexing=rope.grid_indexing,
        rope_rotate_half=rotate_half and kind != "mrope",
        rope_shift_coords=rope.shift_coords,
        rope_jitter_coords=rope.jitter_coords,
        rope_rescale_coords=rope.rescale_coords,
    )
    if kind == "cat":
        require(
            not rope.in_pixels and rope.grid_type == "index" and not rope.linear_bands,
            "rope with pixel-mode bands (in_pixels=True)",
        )
        ref = rope.ref_feat_shape
        args.update(
            rope_grid_offset=float(rope.grid_offset),
            ref_feat_shape=None if ref is None else tuple(int(s) for s in ref),
        )
    elif kind == "dinov3":
        require(
            rope.min_period is None and rope.max_period is None,
            "rope with min/max periods (Eva passes a temperature)",
        )
        require(rope.normalize_coords == "separate", "rope with normalize_coords != 'separate'")
        args["rope_grid_offset"] = float(rope.grid_offset)
    elif kind == "mrope":
        section = tuple(int(s) for s in rope.mrope_section)
        args["rope_mrope_section"] = None if section == (8, 12, 12) else section
    return args


def _check_pool(pool: Any, dim: int, norm: tuple[str, float]) -> dict[str, Any]:
    require(cls_name(pool) == "AttentionPoolLatent", f"attn_pool of type {cls_name(pool)}")
    require(
        pool.latent_len == 1 and pool.pos_embed is None and pool.pool == "token",
        "attn_pool with latent_len > 1, a position embedding or non-token pooling",
    )
    require(is_identity(pool.q_norm) and pool.mlp is not None, "attn_pool with qk_norm or no MLP")
    check_linear(pool.q, "attn_pool.q", dim, dim, True)
    check_linear(pool.kv, "attn_pool.kv", dim, 2 * dim, True)
    check_linear(pool.proj, "attn_pool.proj", dim, dim, True)
    require(norm_kind(pool.norm, "attn_pool.norm") == norm, "attn_pool.norm with another eps")
    sig = _mlp_signature(pool.mlp, "attn_pool.mlp")
    require(sig["kind"] == "Mlp" and sig["norm"] is None, "attn_pool.mlp other than a GELU Mlp")
    return dict(
        attn_pool_num_heads=int(pool.num_heads),
        attn_pool_mlp_ratio=mlp_ratio_for(dim, sig["hidden"]),
    )


def _swiglu_align_to(model: Any, sig: dict[str, Any]) -> int:
    """swiglu_align_to: timm keeps no record, so the arch's own value when it fits, else a no-op.

    Only a split SwiGLU without sub-LN in a pre-norm block implies a non-zero value; any divisor
    of the width rebuilds the same layer.
    """
    mlp = sig["mlp"]
    if mlp["kind"] != "SwiGLU":
        return 0
    arch = getattr(model, "pretrained_cfg", {}).get("architecture", "")
    a = int(VARIANTS.get(arch, {}).get("swiglu_align_to", 0))
    if a and mlp["hidden"] % a == 0:
        return a
    needed = mlp["norm"] is None and not sig["post_norm"]
    return mlp["hidden"] if needed else 0


def config_from_timm(model: Any) -> EvaConfig:
    """EvaConfig equal to a timm Eva instance; refuses, by name, any part vitjax does not mirror."""
    require(cls_name(model) == "Eva", f"model class {cls_name(model)} (the eva family reads Eva)")
    require(len(model.blocks) > 0, "a model with no blocks")
    pe = model.patch_embed
    require(cls_name(pe) == "PatchEmbed", f"patch_embed of type {cls_name(pe)}")
    proj = pe.proj
    require(
        cls_name(proj) == "Conv2d"
        and tuple(proj.kernel_size) == tuple(proj.stride) == tuple(pe.patch_size)
        and tuple(proj.padding) == (0, 0)
        and proj.groups == 1
        and is_identity(pe.norm),
        "patch_embed that is not a plain patchify convolution",
    )
    sigs = [_block_signature(b, i) for i, b in enumerate(model.blocks)]
    sig, dim = sigs[0], model.embed_dim
    for i, s in enumerate(sigs[1:], 1):
        diff = sorted(k for k in s if s[k] != sig[k])
        require(not diff, f"blocks.{i} differing from block 0 in {diff}")
    require(sig["num_prefix_tokens"] == model.num_prefix_tokens, "attention prefix-token count")
    pre_norm = not is_identity(model.norm_pre)
    require((proj.bias is None) == pre_norm, "patch_embed.proj bias together with norm_pre")
    for n in ("norm_pre", "norm", "fc_norm"):
        if not is_identity(getattr(model, n)):
            require(norm_kind(getattr(model, n), n) == sig["norm"], f"{n} with another norm")
    gp = model.global_pool
    pool = {}
    if model.attn_pool is not None:
        pool = _check_pool(model.attn_pool, dim, sig["norm"])
    require((gp == "map") == bool(pool), f"global_pool={gp!r} with attn_pool={bool(pool)}")
    fc, post = not is_identity(model.fc_norm), not is_identity(model.norm)
    head = model.head
    if not is_identity(head):
        check_linear(head, "head", dim, model.num_classes, True)
    rope = _rope_args(model, sig["rotate_half"])
    if model.rope is not None and hasattr(model.rope, "feat_shape"):
        want = None if model.dynamic_img_size else tuple(pe.grid_size)
        got = None if model.rope.feat_shape is None else tuple(model.rope.feat_shape)
        require(got == want, f"rope with feat_shape {got} (the model's grid is {want})")
    patch_drop = getattr(model, "patch_drop", None)
    mlp = sig["mlp"]
    return EvaConfig(
        img_size=_square(tuple(pe.img_size)),
        patch_size=_square(tuple(pe.patch_size)),
        in_chans=proj.in_channels,
        num_classes=int(model.num_classes) if not is_identity(head) else 0,
        global_pool=gp,
        embed_dim=dim,
        depth=len(model.blocks),
        num_heads=sig["num_heads"],
        num_kv_heads=_kv_heads(model, sig["num_heads"]),
        qkv_bias=sig["qkv_bias"],
        qkv_fused=sig["qkv_fused"],
        qk_norm=sig["qk_norm"],
        mlp_ratio=mlp_ratio_for(dim, mlp["hidden"]),
        swiglu_mlp=mlp["kind"] in ("SwiGLU", "GluMlp"),
        swiglu_align_to=_swiglu_align_to(model, sig),
        scale_mlp=mlp["norm"] is not None,
        scale_attn_inner=sig["scale_attn_inner"],
        attn_type=sig["attn_type"],
        drop_rate=_p(model.head_drop),
        pos_drop_rate=_p(model.pos_drop),
        patch_drop_rate=float(patch_drop.prob) if patch_drop is not None else 0.0,
        proj_drop_rate=sig["proj_drop"],
        attn_drop_rate=sig["attn_drop"],
        drop_path_rate=_p(model.blocks[-1].drop_path1),
        norm_layer=sig["norm"][0],
        norm_eps=sig["norm"][1],
        init_values=sig["init_values"],
        attn_only_layer_scale=sig["attn_only_layer_scale"],
        class_token=model.cls_token is not None,
        num_reg_tokens=0 if model.reg_token is None else int(model.reg_token.shape[1]),
        no_embed_class=bool(model.no_embed_class),
        use_abs_pos_emb=model.pos_embed is not None,
        use_post_norm=sig["post_norm"],
        use_pre_transformer_norm=pre_norm,
        use_post_transformer_norm=None if post == (not fc) else post,
        use_fc_norm=None if fc == (gp == "avg") else fc,
        dynamic_img_size=bool(model.dynamic_img_size),
        dynamic_img_pad=bool(pe.dynamic_img_pad),
        **rope,
        **pool,
    )


# --- timm's checkpoint filter (numpy) -----------------------------------------------------------

_PE_SWAPS = (
    ("conv1", "patch_embed.proj"),
    ("positional_embedding", "pos_embed"),
    ("transformer.resblocks.", "blocks."),
    ("ln_pre", "norm_pre"),
    ("ln_post", "norm"),
    ("ln_", "norm"),
    ("ls_1.gamma", "gamma_1"),
    ("ls_2.gamma", "gamma_2"),
    ("in_proj_", "qkv."),
    ("out_proj", "proj"),
    ("mlp.c_fc", "mlp.fc1"),
    ("mlp.c_proj", "mlp.fc2"),
)
_SAPIENS2_SWAPS = (
    ("storage_tokens", "reg_token"),
    ("patch_embed.projection.", "patch_embed.proj."),
    ("attn.wq.", "attn.q_proj."),
    ("attn.wk.", "attn.k_proj."),
    ("attn.wv.", "attn.v_proj."),
    ("attn.gamma.weight", "gamma_1"),  # attention-only LayerScale, inside attn in the original
    (".ffn.", ".mlp."),
    (".ln1.", ".norm1."),
    (".ln2.", ".norm2."),
)
_EVA_SWAPS = (
    ("mlp.ffn_ln", "mlp.norm"),
    ("attn.inner_attn_ln", "attn.norm"),
    ("mlp.w12", "mlp.fc1"),
    ("mlp.w1", "mlp.fc1_g"),
    ("mlp.w2", "mlp.fc1_x"),
    ("mlp.w3", "mlp.fc2"),
)


def _convert_pe(sd: Mapping[str, np.ndarray], prefix: str = "visual.") -> dict[str, np.ndarray]:
    """Meta Perception Encoder keys -> timm keys (timm's _convert_pe)."""
    sd = sd.get("model", sd)
    sd = {k.replace("module.", ""): v for k, v in sd.items()}
    out: dict[str, np.ndarray] = {}
    for k, v in sd.items():
        if prefix:
            if not k.startswith(prefix):
                continue
            k = k[len(prefix) :]
        for a, b in _PE_SWAPS:
            k = k.replace(a, b)
        if k.startswith("attn_pool"):
            k = k.replace("attn_pool.attn", "attn_pool")
            k = k.replace("attn_pool.layernorm", "attn_pool.norm")
            k = k.replace("attn_pool.probe", "attn_pool.latent")
            if k.startswith("attn_pool.qkv"):
                dim, leaf = v.shape[0] // 3, k.rsplit(".", 1)[1]
                out[f"attn_pool.q.{leaf}"], out[f"attn_pool.kv.{leaf}"] = v[:dim], v[dim:]
                continue
        elif k == "proj":
            k, v = "head.weight", v.T
            out["head.bias"] = np.zeros(v.shape[0], v.dtype)
        elif k == "class_embedding":
            k, v = "cls_token", v[None, None]
        elif k == "pos_embed":
            v = v[None]
        out[k] = v
    return out


def _unwrap(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """The weights inside a training checkpoint ('model_ema', 'model', 'module', 'state_dict')."""
    sd: Any = state_dict
    for key in ("model_ema", "model", "module", "state_dict"):
        inner = sd.get(key) if isinstance(sd, Mapping) else None
        if isinstance(inner, Mapping):
            sd = inner
    return dict(sd)


def _has_q_bias(cfg: EvaConfig) -> bool:
    """Whether cfg's attention holds q_bias / v_bias parameters (fused EvaAttention with bias)."""
    return cfg.attn_type == "eva" and cfg.qkv_fused and cfg.qkv_bias


def _rename(k: str, v: np.ndarray, layout: str, cfg: EvaConfig, out: dict) -> str | None:
    """One key of an EVA / DINOv3 / Sapiens2 / MIM checkpoint -> timm's (None: drop it)."""
    if "rope" in k and k != "rope.freqs":
        return None  # fixed tables, rebuilt by the model
    if layout == "sapiens2":
        if k == "mask_token":
            return None
        for a, b in _SAPIENS2_SWAPS:
            k = k.replace(a, b)
        if k.startswith("ln1."):
            k = "norm." + k[len("ln1.") :]
    elif layout == "dinov3":
        if k.endswith((".periods", ".bias_mask", "mask_token")):
            return None
        if k.startswith(("projectors.", "local_cls_norm")):
            return None  # EUPE distillation heads, DINOv3-7B local-crop norm (pretraining only)
        if k.endswith("qkv.bias"):
            if _has_q_bias(cfg):  # q and v parts; k's bias is fixed at zero
                q, _, vv = np.split(v, 3, axis=-1)
                out[k.replace("qkv.bias", "q_bias")] = q
                out[k.replace("qkv.bias", "v_bias")] = vv
            return None
        k = k.replace("ls1.gamma", "gamma_1").replace("ls2.gamma", "gamma_2")
        k = k.replace("storage_tokens", "reg_token")
    elif layout == "mim" and k in ("mask_token", "lm_head.weight", "lm_head.bias"):
        return None
    elif layout == "mim" and k in ("norm.weight", "norm.bias"):
        k = k.replace("norm", "fc_norm")  # pretrain norm -> fine-tune fc_norm, as timm does
    for a, b in _EVA_SWAPS:
        k = k.replace(a, b)
    if layout == "no_qkv":
        k = k.replace("q_bias", "q_proj.bias").replace("v_bias", "v_proj.bias")
    return k


def filter_state_dict(state_dict: Mapping[str, Any], cfg: EvaConfig) -> dict[str, np.ndarray]:
    """Foreign layouts -> timm keys, as timm's eva checkpoint_filter_fn (no resampling here)."""
    sd = {k: np.asarray(v) for k, v in _unwrap(state_dict).items()}
    if "visual.conv1.weight" in sd:
        return _convert_pe(sd)
    if "conv1.weight" in sd:
        return _convert_pe(sd, prefix="")
    if "visual.trunk.pos_embed" in sd:
        prefix = "visual.trunk."
    elif "visual.pos_embed" in sd:
        prefix = "visual."
    else:
        prefix = ""
    sapiens2 = "blocks.0.attn.wq.weight" in sd and "blocks.0.ffn.w12.weight" in sd
    dinov3 = "storage_tokens" in sd and not sapiens2
    mim = not dinov3 and prefix + "mask_token" in sd
    no_qkv = prefix + "blocks.0.attn.q_proj.weight" in sd
    layout = "sapiens2" if sapiens2 else "dinov3" if dinov3 else "mim" if mim else ""
    out: dict[str, np.ndarray] = {}
    for k, v in sd.items():
        if prefix:
            if not k.startswith(prefix):
                continue
            k = k[len(prefix) :]
        k = _rename(k, v, layout, cfg, out)
        if k is None:
            continue
        if no_qkv:
            k = _rename(k, v, "no_qkv", cfg, out)
        out[k] = v
    return out


def _source_grid(n_tokens: int, cfg: EvaConfig, given: tuple[int, int] | None) -> tuple[int, int]:
    """The grid a checkpoint's pos_embed was trained on: given, cfg's if it fits, else square."""
    for grid in (given, cfg.grid_size):
        if grid is not None and grid[0] * grid[1] == n_tokens:
            return tuple(grid)
    side = math.isqrt(n_tokens)
    if side * side != n_tokens:
        raise WeightMismatchError(
            f"cannot infer the position-embedding grid from {n_tokens} patch tokens"
        )
    return side, side


def checkpoint_filter_fn(
    state_dict: Mapping[str, Any],
    cfg: EvaConfig,
    resample_pos_embed: bool = False,
    source_grid: tuple[int, int] | None = None,
    interpolation: str = "bicubic",
    antialias: bool = True,
) -> dict[str, np.ndarray]:
    """Any layout eva weights are published in -> timm keys, as timm's checkpoint_filter_fn.

    EVA / EVA-02 (BAAI: q_bias, mlp.w1/w2/w3, ffn_ln, inner_attn_ln; MIM and OpenCLIP
    'visual.' / 'visual.trunk.' prefixes), DINOv3 (storage_tokens, ls1.gamma, qkv.bias), Sapiens2
    (wq/wk/wv, ffn.w12) and Perception Encoder (OpenCLIP-style resblocks, attn_pool). With
    resample_pos_embed, pos_embed is resized to cfg's grid from source_grid (or the grid its
    length implies).
    """
    out = filter_state_dict(state_dict, cfg)
    w = out.get("patch_embed.proj.weight")
    if w is not None and tuple(w.shape[-2:]) != to_2tuple(cfg.patch_size):
        raise WeightMismatchError(
            f"patch_embed.proj.weight has patch size {tuple(w.shape[-2:])}, the model "
            f"{to_2tuple(cfg.patch_size)}: resampling patch kernels (timm's "
            "resample_patch_embed) is not supported by vitjax"
        )
    pe = out.get("pos_embed")
    if resample_pos_embed and pe is not None and cfg.use_abs_pos_emb:
        n_prefix = 0 if cfg.no_embed_class else cfg.num_prefix_tokens
        grid = _source_grid(pe.shape[1] - n_prefix, cfg, source_grid)
        if pe.shape[1] != cfg.embed_len or grid != cfg.grid_size:
            new = resample_abs_pos_embed(
                jnp.asarray(pe, jnp.float32), cfg.grid_size, grid, n_prefix,
                method=interpolation, antialias=antialias,
            )  # fmt: skip
            out["pos_embed"] = np.asarray(new).astype(pe.dtype)
    return out


# --- VARIANTS -----------------------------------------------------------------------------------


def _v(dim: int, depth: int, heads: int, hidden: int, *families: dict, **kw: Any) -> dict:
    """One VARIANTS row: width, depth, heads, MLP hidden width, option families, extras."""
    row = dict(embed_dim=dim, depth=depth, num_heads=heads, mlp_ratio=mlp_ratio_for(dim, hidden))
    for family in families:
        row.update(family)
    return {**row, **kw}


def _sapiens2_kv(depth: int, heads: int, kv: int, full: int = 8) -> tuple[int, ...] | None:
    """Sapiens2's per-block kv heads: full attention in the first and last `full` blocks."""
    heads_per_block = tuple(heads if i < full or i >= depth - full else kv for i in range(depth))
    return None if all(h == heads for h in heads_per_block) else heads_per_block


# fmt: off
# Option families, named after the timm models that share them.
_EVA02 = dict(patch_size=14, swiglu_mlp=True, use_rot_pos_emb=True, ref_feat_shape=(16, 16))
_EVA02_BL = dict(_EVA02, qkv_fused=False, scale_mlp=True)  # base / large: separate q, k, v; sub-LN
_CLIP = dict(global_pool="token", scale_attn_inner=True)  # EVA-CLIP image towers
_SBB = dict(img_size=256, init_values=1e-5, class_token=False, use_abs_pos_emb=False,
            use_rot_pos_emb=True, ref_feat_shape=(16, 16))  # timm's SBB RoPE ViTs
_PE = dict(attn_type="rope", norm_eps=1e-5, use_rot_pos_emb=True, rope_grid_offset=1.0,
           rope_grid_indexing="xy", use_pre_transformer_norm=True)  # Perception Encoder
_PE_CORE = dict(_PE, global_pool="map", attn_pool_num_heads=8, attn_pool_mlp_ratio=4.0)
_PE_DENSE = dict(_PE, num_classes=0, use_post_transformer_norm=False, use_fc_norm=False)
_PE_G = dict(class_token=False, rope_grid_offset=0.0, ref_feat_shape=(32, 32))
_ROPE_VIT = dict(global_pool="token", attn_type="rope", init_values=1e-5, use_abs_pos_emb=False,
                 use_rot_pos_emb=True, rope_grid_indexing="xy", rope_temperature=100.0)  # Naver
_MIXED = dict(rope_type="mixed", rope_temperature=10.0)
_APE = dict(use_abs_pos_emb=True, no_embed_class=True)
_DINOV3 = dict(img_size=256, num_classes=0, norm_eps=1e-5, init_values=1e-5, num_reg_tokens=4,
               use_abs_pos_emb=False, use_rot_pos_emb=True, rope_type="dinov3",
               rope_temperature=100.0, rope_rotate_half=True, use_fc_norm=False,
               dynamic_img_size=True)
_NO_QKVB = dict(qkv_bias=False)
_LINGBOT = dict(_DINOV3, img_size=512, global_pool="token", use_fc_norm=None)
_SAPIENS2 = dict(img_size=(1024, 768), num_classes=0, global_pool="token", qkv_fused=False,
                 qk_norm=True, swiglu_mlp=True, attn_type="rope", norm_layer="rmsnorm",
                 init_values=1.0, attn_only_layer_scale=True, num_reg_tokens=8,
                 use_abs_pos_emb=False, use_rot_pos_emb=True, rope_type="dinov3",
                 rope_temperature=100.0, rope_rotate_half=True, rope_rescale_coords=2.0,
                 dynamic_img_size=True)

# timm model name -> EvaConfig kwargs; num_classes is that of timm's default pretrained weights and
# img_size that of its input_size (timm passes it for fixed-size weights). Each row equals
# config_from_timm(timm.create_model(name)) (parity_tests/test_eva.py).
VARIANTS: dict[str, dict[str, Any]] = {
    # EVA-01 (BAAI): giant, MIM / CLIP fine-tuned; its CLIP image tower pools the class token.
    "eva_giant_patch14_224": _v(1408, 40, 16, 6144, patch_size=14),
    "eva_giant_patch14_336": _v(1408, 40, 16, 6144, patch_size=14, img_size=336),
    "eva_giant_patch14_560": _v(1408, 40, 16, 6144, patch_size=14, img_size=560),
    "eva_giant_patch14_clip_224": _v(1408, 40, 16, 6144, patch_size=14, global_pool="token",
                                     num_classes=1024),
    # EVA-02: rope (ref grid 16x16), SwiGLU; base / large with separate q, k, v and sub-LN MLPs.
    "eva02_tiny_patch14_224": _v(192, 12, 3, 512, _EVA02, num_classes=0),
    "eva02_small_patch14_224": _v(384, 12, 6, 1024, _EVA02, num_classes=0),
    "eva02_base_patch14_224": _v(768, 12, 12, 2048, _EVA02_BL, num_classes=0),
    "eva02_large_patch14_224": _v(1024, 24, 16, 2730, _EVA02_BL, num_classes=0),
    "eva02_tiny_patch14_336": _v(192, 12, 3, 512, _EVA02, img_size=336),
    "eva02_small_patch14_336": _v(384, 12, 6, 1024, _EVA02, img_size=336),
    "eva02_base_patch14_448": _v(768, 12, 12, 2048, _EVA02_BL, img_size=448),
    "eva02_large_patch14_448": _v(1024, 24, 16, 2730, _EVA02_BL, img_size=448),
    "eva02_base_patch16_clip_224": _v(768, 12, 12, 2048, _EVA02_BL, _CLIP, patch_size=16,
                                      num_classes=512),
    "eva02_large_patch14_clip_224": _v(1024, 24, 16, 2730, _EVA02_BL, _CLIP, num_classes=768),
    "eva02_large_patch14_clip_336": _v(1024, 24, 16, 2730, _EVA02_BL, _CLIP, img_size=336,
                                       num_classes=768),
    "eva02_enormous_patch14_clip_224": _v(1792, 64, 16, 15360, patch_size=14, global_pool="token",
                                          use_post_norm=True, num_classes=1024),
    # timm SBB ViTs with rope, register tokens, average pooling.
    "vit_medium_patch16_rope_reg1_gap_256": _v(512, 12, 8, 2048, _SBB, num_reg_tokens=1),
    "vit_mediumd_patch16_rope_reg1_gap_256": _v(512, 20, 8, 2048, _SBB, num_reg_tokens=1,
                                                qkv_bias=False),
    "vit_betwixt_patch16_rope_reg4_gap_256": _v(640, 12, 10, 2560, _SBB, num_reg_tokens=4),
    "vit_base_patch16_rope_reg1_gap_256": _v(768, 12, 12, 3072, _SBB, num_reg_tokens=1),
    # Perception Encoder (Meta): core (attention-pool head), lang and spatial (dense features).
    "vit_pe_core_tiny_patch16_384": _v(192, 12, 3, 768, _PE_CORE, img_size=384,
                                       ref_feat_shape=(24, 24), num_classes=512),
    "vit_pe_core_small_patch16_384": _v(384, 12, 6, 1536, _PE_CORE, img_size=384,
                                        ref_feat_shape=(24, 24), num_classes=512),
    "vit_pe_core_base_patch16_224": _v(768, 12, 12, 3072, _PE_CORE, ref_feat_shape=(14, 14),
                                       num_classes=1024),
    "vit_pe_core_large_patch14_336": _v(1024, 24, 16, 4096, _PE_CORE, patch_size=14,
                                        img_size=336, ref_feat_shape=(24, 24), num_classes=1024),
    "vit_pe_core_gigantic_patch14_448": _v(1536, 50, 16, 8960, _PE_CORE, _PE_G, patch_size=14,
                                           img_size=448, num_classes=1280),
    "vit_pe_lang_large_patch14_448": _v(1024, 23, 16, 4096, _PE_DENSE, patch_size=14,
                                        img_size=448, ref_feat_shape=(32, 32), init_values=0.1),
    "vit_pe_lang_gigantic_patch14_448": _v(1536, 47, 16, 8960, _PE_DENSE, _PE_G, patch_size=14,
                                           img_size=448, init_values=0.1),
    "vit_pe_spatial_tiny_patch16_512": _v(192, 12, 3, 768, _PE_DENSE, img_size=512,
                                          ref_feat_shape=(32, 32)),
    "vit_pe_spatial_small_patch16_512": _v(384, 12, 6, 1536, _PE_DENSE, img_size=512,
                                           ref_feat_shape=(32, 32)),
    "vit_pe_spatial_base_patch16_512": _v(768, 12, 12, 3072, _PE_DENSE, img_size=512,
                                          ref_feat_shape=(32, 32)),
    "vit_pe_spatial_large_patch14_448": _v(1024, 24, 16, 4096, _PE_DENSE, patch_size=14,
                                           img_size=448, ref_feat_shape=(32, 32)),
    "vit_pe_spatial_gigantic_patch14_448": _v(1536, 50, 16, 8960, _PE_DENSE, _PE_G,
                                              patch_size=14, img_size=448, init_values=0.1),
    # RoPE-ViT (Naver): axial or mixed (learnable) rope, with or without abs pos embed (APE).
    "vit_small_patch16_rope_224": _v(384, 12, 6, 1536, _ROPE_VIT),
    "vit_base_patch16_rope_224": _v(768, 12, 12, 3072, _ROPE_VIT),
    "vit_large_patch16_rope_224": _v(1024, 24, 16, 4096, _ROPE_VIT),
    "vit_small_patch16_rope_mixed_224": _v(384, 12, 6, 1536, _ROPE_VIT, _MIXED),
    "vit_base_patch16_rope_mixed_224": _v(768, 12, 12, 3072, _ROPE_VIT, _MIXED),
    "vit_large_patch16_rope_mixed_224": _v(1024, 24, 16, 4096, _ROPE_VIT, _MIXED),
    "vit_small_patch16_rope_ape_224": _v(384, 12, 6, 1536, _ROPE_VIT, _APE),
    "vit_base_patch16_rope_ape_224": _v(768, 12, 12, 3072, _ROPE_VIT, _APE),
    "vit_large_patch16_rope_ape_224": _v(1024, 24, 16, 4096, _ROPE_VIT, _APE),
    "vit_small_patch16_rope_mixed_ape_224": _v(384, 12, 6, 1536, _ROPE_VIT, _MIXED, _APE),
    "vit_base_patch16_rope_mixed_ape_224": _v(768, 12, 12, 3072, _ROPE_VIT, _MIXED, _APE),
    "vit_large_patch16_rope_mixed_ape_224": _v(1024, 24, 16, 4096, _ROPE_VIT, _MIXED, _APE),
    # DINOv3 (Meta; the _qkvb twins keep the zero qkv bias; tiny is EUPE), LingBot-Vision.
    "vit_tiny_patch16_dinov3_qkvb": _v(192, 12, 3, 768, _DINOV3),
    "vit_small_patch16_dinov3": _v(384, 12, 6, 1536, _DINOV3, _NO_QKVB),
    "vit_small_patch16_dinov3_qkvb": _v(384, 12, 6, 1536, _DINOV3),
    "vit_small_plus_patch16_dinov3": _v(384, 12, 6, 1536, _DINOV3, _NO_QKVB, swiglu_mlp=True,
                                        swiglu_align_to=8),
    "vit_small_plus_patch16_dinov3_qkvb": _v(384, 12, 6, 1536, _DINOV3, swiglu_mlp=True,
                                             swiglu_align_to=8),
    "vit_base_patch16_dinov3": _v(768, 12, 12, 3072, _DINOV3, _NO_QKVB),
    "vit_base_patch16_dinov3_qkvb": _v(768, 12, 12, 3072, _DINOV3),
    "vit_large_patch16_dinov3": _v(1024, 24, 16, 4096, _DINOV3, _NO_QKVB),
    "vit_large_patch16_dinov3_qkvb": _v(1024, 24, 16, 4096, _DINOV3),
    "vit_huge_plus_patch16_dinov3": _v(1280, 32, 20, 5120, _DINOV3, _NO_QKVB, swiglu_mlp=True,
                                       swiglu_align_to=8),
    "vit_huge_plus_patch16_dinov3_qkvb": _v(1280, 32, 20, 5120, _DINOV3, swiglu_mlp=True,
                                            swiglu_align_to=8),
    "vit_7b_patch16_dinov3": _v(4096, 40, 32, 8192, _DINOV3, _NO_QKVB, swiglu_mlp=True,
                                swiglu_align_to=64),
    "vit_small_patch16_lingbot": _v(384, 12, 6, 1536, _LINGBOT),
    "vit_base_patch16_lingbot": _v(768, 12, 12, 3072, _LINGBOT),
    "vit_large_patch16_lingbot": _v(1024, 24, 16, 4096, _LINGBOT),
    "vit_giant_patch16_lingbot": _v(1536, 40, 24, 4096, _LINGBOT, _NO_QKVB, swiglu_mlp=True,
                                    swiglu_align_to=8),
    # Sapiens2 (Meta): grouped-query attention in the middle blocks, RMSNorm, qk-norm.
    "vit_base_patch16_sapiens2": _v(768, 12, 12, 3072, _SAPIENS2,
                                    num_kv_heads=_sapiens2_kv(12, 12, 6)),
    "vit_large_patch16_sapiens2": _v(1024, 24, 16, 4096, _SAPIENS2,
                                     num_kv_heads=_sapiens2_kv(24, 16, 8)),
    "vit_huge_patch16_sapiens2": _v(1280, 32, 16, 5120, _SAPIENS2,
                                    num_kv_heads=_sapiens2_kv(32, 16, 8)),
    "vit_giant_patch16_sapiens2": _v(1536, 40, 24, 6144, _SAPIENS2,
                                     num_kv_heads=_sapiens2_kv(40, 24, 12)),
    "vit_5b_patch16_sapiens2": _v(2432, 56, 32, 9728, _SAPIENS2,
                                  num_kv_heads=_sapiens2_kv(56, 32, 16)),
}
# fmt: on
