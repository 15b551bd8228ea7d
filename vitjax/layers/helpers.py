"""Small shared helpers: size pairs, the default initialisers, kernel-implementation choice."""

from __future__ import annotations

from typing import Any

import jax
from flax import linen as nn

from vitjax.util import to_2tuple  # noqa: F401  (re-exported)

Dtype = Any
dense_init = nn.initializers.truncated_normal(0.02)  # timm's trunc_normal_(std=.02)


def platform() -> str:
    """The platform jitted code runs on by default: 'cpu', 'gpu' or 'tpu'."""
    return jax.default_backend()
