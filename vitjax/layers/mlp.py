"""MLPs with timm's names: Mlp, GluMlp (one fc1, halves gated), SwiGLU (fc1_g, fc1_x)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn

from vitjax.layers.activations import make_act
from vitjax.layers.helpers import Dtype
from vitjax.layers.linear import Dense
from vitjax.layers.norms import make_norm


class Mlp(nn.Module):
    """fc1 -> act -> drop -> norm (sub-LN, optional) -> fc2 -> drop."""

    hidden_features: int
    out_features: int
    act_layer: str = "gelu"
    bias: bool = True
    drop: float = 0.0
    norm_layer: str | None = None
    norm_eps: float = 1e-6
    dtype: Dtype = jnp.float32
    dense_impl: str = "auto"

    def setup(self) -> None:
        dt, impl = self.dtype, self.dense_impl
        self.fc1 = Dense(self.hidden_features, use_bias=self.bias, dtype=dt, impl=impl)
        self.act = make_act(self.act_layer)
        self.drop1 = nn.Dropout(self.drop)
        self.norm = make_norm(self.norm_layer, self.norm_eps, dt) if self.norm_layer else None
        self.fc2 = Dense(self.out_features, use_bias=self.bias, dtype=dt, impl=impl)
        self.drop2 = nn.Dropout(self.drop)

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = self.drop1(self.act(self.fc1(x)), deterministic=not train)
        if self.norm is not None:
            x = self.norm(x)
        return self.drop2(self.fc2(x), deterministic=not train)


class GluMlp(nn.Module):
    """Gated MLP with one fc1 of width hidden_features, split in halves: x * act(gate)."""

    hidden_features: int  # fc1's width (twice the gated width), as timm's
    out_features: int
    act_layer: str = "silu"
    bias: bool = True
    drop: float = 0.0
    norm_layer: str | None = None
    norm_eps: float = 1e-6
    gate_last: bool = True
    dtype: Dtype = jnp.float32
    dense_impl: str = "auto"

    def setup(self) -> None:
        dt, impl = self.dtype, self.dense_impl
        self.fc1 = Dense(self.hidden_features, use_bias=self.bias, dtype=dt, impl=impl)
        self.act = make_act(self.act_layer)
        self.drop1 = nn.Dropout(self.drop)
        self.norm = make_norm(self.norm_layer, self.norm_eps, dt) if self.norm_layer else None
        self.fc2 = Dense(self.out_features, use_bias=self.bias, dtype=dt, impl=impl)
        self.drop2 = nn.Dropout(self.drop)

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x1, x2 = jnp.split(self.fc1(x), 2, axis=-1)  # 2 x (B, N, hidden / 2)
        x = x1 * self.act(x2) if self.gate_last else self.act(x1) * x2
        x = self.drop1(x, deterministic=not train)
        if self.norm is not None:
            x = self.norm(x)
        return self.drop2(self.fc2(x), deterministic=not train)


class SwiGLU(nn.Module):
    """SwiGLU with separate gate and value projections: fc2(act(fc1_g(x)) * fc1_x(x))."""

    hidden_features: int
    out_features: int
    act_layer: str = "silu"
    bias: bool = True
    drop: float = 0.0
    norm_layer: str | None = None
    norm_eps: float = 1e-6
    dtype: Dtype = jnp.float32
    dense_impl: str = "auto"

    def setup(self) -> None:
        dt, impl = self.dtype, self.dense_impl
        self.fc1_g = Dense(self.hidden_features, use_bias=self.bias, dtype=dt, impl=impl)
        self.fc1_x = Dense(self.hidden_features, use_bias=self.bias, dtype=dt, impl=impl)
        self.act = make_act(self.act_layer)
        self.drop1 = nn.Dropout(self.drop)
        self.norm = make_norm(self.norm_layer, self.norm_eps, dt) if self.norm_layer else None
        self.fc2 = Dense(self.out_features, use_bias=self.bias, dtype=dt, impl=impl)
        self.drop2 = nn.Dropout(self.drop)

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = self.act(self.fc1_g(x)) * self.fc1_x(x)
        x = self.drop1(x, deterministic=not train)
        if self.norm is not None:
            x = self.norm(x)
        return self.drop2(self.fc2(x), deterministic=not train)
