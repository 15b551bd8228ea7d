"""Stochastic depth (timm's DropPath)."""

from __future__ import annotations

import jax
from flax import linen as nn


class DropPath(nn.Module):
    """Drop whole residual branches per sample while training (rng stream 'dropout')."""

    rate: float = 0.0

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        if not train or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        mask = jax.random.bernoulli(self.make_rng("dropout"), keep, shape)
        return x * mask.astype(x.dtype) / keep
