"""Scaled dot-product attention behind one switch (``impl``, like timm's ``fused_attn``).

- "xla": the plain formulation, softmax(q k^T * scale + bias) v.
- "cpu": the same numbers with the normalisation after the product, (exp(s - max) v) / sum,
  so the division touches (N, Dh) instead of (N, N); faster on XLA:CPU.
- "cudnn": ``jax.nn.dot_product_attention(implementation="cudnn")`` (GPU, bf16/fp16).
- "auto": "cpu" on the CPU; on a GPU "cudnn" where cuDNN takes the call (half precision,
  head_dim a multiple of 8 up to 128, no attention dropout), else "xla".
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import linen as nn

from vitjax.layers.helpers import Dtype, platform
from vitjax.layers.linear import Dense
from vitjax.layers.norms import make_norm
from vitjax.util import ATTN_IMPLS

Dropout = Callable[[jax.Array], jax.Array] | None


def resolve_attn_impl(impl: str, dtype: Dtype, head_dim: int, dropout: bool = False) -> str:
    """The concrete implementation for impl on this platform, dtype and head size."""
    if impl not in ATTN_IMPLS:
        raise ValueError(f"attn_impl={impl!r}: expected one of {ATTN_IMPLS}")
    if impl != "auto":
        return impl
    where = platform()
    if where == "cpu":
        return "cpu"
    half = jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
    if where == "gpu" and half and head_dim % 8 == 0 and head_dim <= 128 and not dropout:
        return "cudnn"
    return "xla"


def dot_product_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    scale: float,
    bias: jax.Array | None = None,
    impl: str = "auto",
    dropout: Dropout = None,
) -> jax.Array:
    """softmax(q k^T * scale + bias) v for (B, H, N, Dh) inputs; dropout acts on the weights."""
    impl = resolve_attn_impl(impl, q.dtype, q.shape[-1], dropout is not None)
    if impl == "cudnn":
        to_bnhd = (0, 2, 1, 3)  # (B, N, H, Dh), the layout jax.nn.dot_product_attention takes
        out = jax.nn.dot_product_attention(
            q.transpose(to_bnhd),
            k.transpose(to_bnhd),
            v.transpose(to_bnhd),
            bias=bias,
            scale=scale,
            implementation="cudnn",
        )
        return out.transpose(to_bnhd)  # (B, H, N, Dh)
    s = jnp.einsum("bhqd,bhkd->bhqk", q * scale, k)  # (B, H, N, M)
    if bias is not None:
        s = s + bias.astype(s.dtype)
    if impl == "xla":
        p = jax.nn.softmax(s.astype(jnp.promote_types(s.dtype, jnp.float32)), axis=-1)
        p = p.astype(v.dtype)
        if dropout is not None:
            p = dropout(p)
        return jnp.einsum("bhqk,bhkd->bhqd", p, v)  # (B, H, N, Dh)
    # "cpu": the max is a constant to autodiff (it cancels exactly);
    # dropout(p / denom) @ v == dropout(p) @ v / denom.
    p = jnp.exp(s - jax.lax.stop_gradient(s.max(axis=-1, keepdims=True)))
    denom = p.sum(axis=-1, keepdims=True)  # (B, H, N, 1)
    if dropout is not None:
        p = dropout(p)
    return jnp.einsum("bhqk,bhkd->bhqd", p, v) * (1.0 / denom)  # (B, H, N, Dh)


class Attention(nn.Module):
    """Multi-head self-attention with one fused qkv projection (timm's Attention)."""

    dim: int
    num_heads: int = 8
    qkv_bias: bool = False
    qk_norm: bool = False
    proj_bias: bool = True
    attn_drop: float = 0.0
    proj_drop: float = 0.0
    scale: float | None = None
    norm_layer: str = "layernorm"
    norm_eps: float = 1e-6
    dtype: Dtype = jnp.float32
    attn_impl: str = "auto"
    dense_impl: str = "auto"

    def setup(self) -> None:
        dt = self.dtype
        self.qkv = Dense(self.dim * 3, use_bias=self.qkv_bias, dtype=dt, impl=self.dense_impl)
        self.q_norm = make_norm(self.norm_layer, self.norm_eps, dt) if self.qk_norm else None
        self.k_norm = make_norm(self.norm_layer, self.norm_eps, dt) if self.qk_norm else None
        self.attn_dropout = nn.Dropout(self.attn_drop)
        self.proj = Dense(self.dim, use_bias=self.proj_bias, dtype=dt, impl=self.dense_impl)
        self.proj_dropout = nn.Dropout(self.proj_drop)

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
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
        x = dot_product_attention(q, k, v, scale, impl=self.attn_impl, dropout=drop)
        x = self.proj(x.transpose(0, 2, 1, 3).reshape(B, N, C))  # (B, N, C)
        return self.proj_dropout(x, deterministic=not train)
