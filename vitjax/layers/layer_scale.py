"""Per-channel learned residual scale (CaiT / DeiT-3 LayerScale)."""

from __future__ import annotations

import jax
from flax import linen as nn


class LayerScale(nn.Module):
    """x * gamma, gamma initialised to init_values (param name ``gamma``, as timm's)."""

    dim: int
    init_values: float = 1e-5

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        gamma = self.param("gamma", nn.initializers.constant(self.init_values), (self.dim,))
        return x * gamma.astype(x.dtype)
