"""Pooling heads: timm's AttentionPoolLatent (SigLIP's 'map' head)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn

from vitjax.layers.attention import dot_product_attention
from vitjax.layers.helpers import Dtype, dense_init
from vitjax.layers.mlp import Mlp
from vitjax.layers.norms import make_norm


class AttentionPoolLatent(nn.Module):
    """Multi-head attention pooling with one learned latent query, then a residual MLP."""

    dim: int
    num_heads: int = 8
    mlp_hidden: int = 3072
    qkv_bias: bool = True
    act_layer: str = "gelu"
    norm_layer: str = "layernorm"
    norm_eps: float = 1e-6
    dtype: Dtype = jnp.float32
    attn_impl: str = "auto"

    def setup(self) -> None:
        dim, dt = self.dim, self.dtype
        self.latent = self.param("latent", nn.initializers.truncated_normal(dim**-0.5), (1, 1, dim))
        self.q = nn.Dense(dim, use_bias=self.qkv_bias, kernel_init=dense_init, dtype=dt)
        self.kv = nn.Dense(dim * 2, use_bias=self.qkv_bias, kernel_init=dense_init, dtype=dt)
        self.proj = nn.Dense(dim, kernel_init=dense_init, dtype=dt)
        self.norm = make_norm(self.norm_layer, self.norm_eps, dt)
        self.mlp = Mlp(self.mlp_hidden, dim, act_layer=self.act_layer, dtype=dt)

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        B, N, C = x.shape
        H = self.num_heads
        Dh = C // H
        latent = jnp.broadcast_to(self.latent.astype(x.dtype), (B, 1, C))
        q = self.q(latent).reshape(B, 1, H, Dh).transpose(0, 2, 1, 3)  # (B, H, 1, Dh)
        kv = self.kv(x).reshape(B, N, 2, H, Dh).transpose(2, 0, 3, 1, 4)  # (2, B, H, N, Dh)
        x = dot_product_attention(q, kv[0], kv[1], Dh**-0.5, impl=self.attn_impl)  # (B, H, 1, Dh)
        x = self.proj(x.transpose(0, 2, 1, 3).reshape(B, 1, C))  # (B, 1, C)
        x = x + self.mlp(self.norm(x), train)
        return x[:, 0]
