"""Norm layers with timm's numbers: LayerNorm (torch's two-pass variance) and RMSNorm."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn

from vitjax.layers.helpers import Dtype

NORM_LAYERS = ("layernorm", "rmsnorm")


class LayerNorm(nn.Module):
    """LayerNorm over the last axis: flax's params (scale, bias), torch's two-pass variance.

    The formula of ``nn.LayerNorm(use_fast_variance=False)``, written out because XLA fuses this
    form's backward better on CPU; statistics in at least float32.
    """

    epsilon: float = 1e-6
    dtype: Dtype = jnp.float32
    use_bias: bool = True
    scale_init: float = 1.0  # initial scale (timm's ResPostBlock starts its norms at init_values)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        C = x.shape[-1]
        scale = self.param("scale", nn.initializers.constant(self.scale_init), (C,))
        x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
        xc = x - x.mean(axis=-1, keepdims=True)
        var = (xc * xc).mean(axis=-1, keepdims=True)
        y = xc * jax.lax.rsqrt(var + self.epsilon) * scale
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros, (C,))
        return y.astype(self.dtype)


class RmsNorm(nn.Module):
    """Root-mean-square norm with a learned scale (timm's RmsNorm), statistics in float32."""

    epsilon: float = 1e-6
    dtype: Dtype = jnp.float32
    scale_init: float = 1.0

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        scale = self.param("scale", nn.initializers.constant(self.scale_init), (x.shape[-1],))
        x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
        y = x * jax.lax.rsqrt((x * x).mean(axis=-1, keepdims=True) + self.epsilon)
        return (y * scale).astype(self.dtype)


def make_norm(
    kind: str,
    eps: float,
    dtype: Dtype = jnp.float32,
    name: str | None = None,
    scale_init: float = 1.0,
):
    """Norm layer by config name ('layernorm' or 'rmsnorm') and eps."""
    if kind == "layernorm":
        return LayerNorm(epsilon=eps, dtype=dtype, name=name, scale_init=scale_init)
    if kind == "rmsnorm":
        return RmsNorm(epsilon=eps, dtype=dtype, name=name, scale_init=scale_init)
    raise ValueError(f"unknown norm_layer {kind!r}: expected one of {NORM_LAYERS}")
