"""Dense layers whose weight gradient has a CPU-friendly form, behind one switch (``impl``).

``impl``: "xla" is plain ``x @ kernel`` (forward- and reverse-mode autodiff); "cpu" keeps the
forward but gives the weight gradient as one 2-D contraction (a custom VJP: reverse mode only, so
``jax.jvp`` raises through it); "auto" is "cpu" on the CPU and "xla" elsewhere.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from vitjax.layers.helpers import Dtype, dense_init, platform
from vitjax.util import DENSE_IMPLS


@jax.custom_vjp
def _matmul_cpu(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """x @ kernel over the last axis of x, with the 2-D weight-gradient VJP below."""
    return x @ kernel


def _matmul_fwd(x: jax.Array, kernel: jax.Array):
    return x @ kernel, (x, kernel)


def _matmul_bwd(res, g: jax.Array):
    # Autodiff's weight gradient leads XLA:CPU to materialise a transposed copy of g and to fuse
    # (and so recompute) the residual-gradient chain into each copy; this form does neither.
    x, kernel = res
    x2 = x.reshape(-1, x.shape[-1])  # (B*N, C_in)
    g2 = g.reshape(-1, g.shape[-1])  # (B*N, C_out)
    return g @ kernel.T, jnp.einsum("mk,mn->kn", x2, g2)


_matmul_cpu.defvjp(_matmul_fwd, _matmul_bwd)


def resolve_dense_impl(impl: str) -> str:
    """The concrete implementation for impl on this platform."""
    if impl not in DENSE_IMPLS:
        raise ValueError(f"dense_impl={impl!r}: expected one of {DENSE_IMPLS}")
    if impl == "auto":
        return "cpu" if platform() == "cpu" else "xla"
    return impl


def matmul(x: jax.Array, kernel: jax.Array, impl: str = "auto") -> jax.Array:
    """x @ kernel over x's last axis, by implementation."""
    return _matmul_cpu(x, kernel) if resolve_dense_impl(impl) == "cpu" else x @ kernel


class Dense(nn.Module):
    """nn.Dense's params, init and numbers (kernel (in, out), bias), with a kernel switch."""

    features: int
    use_bias: bool = True
    kernel_init: Any = dense_init
    dtype: Dtype = jnp.float32
    impl: str = "auto"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param("kernel", self.kernel_init, (x.shape[-1], self.features))
        y = matmul(x.astype(self.dtype), kernel.astype(self.dtype), self.impl)
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros, (self.features,)).astype(self.dtype)
        return y


class PatchConv(nn.Module):
    """nn.Conv with kernel == stride and VALID padding, as one matmul over flattened patches.

    Same params (kernel (ph, pw, C, D), bias) and init as nn.Conv; a size the patch does not
    divide is floored, as the convolution does.
    """

    features: int
    patch: tuple[int, int]
    use_bias: bool = True
    dtype: Dtype = jnp.float32
    impl: str = "auto"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        B, H, W, C = x.shape
        ph, pw = self.patch
        gh, gw = H // ph, W // pw
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (ph, pw, C, self.features))
        x = x[:, : gh * ph, : gw * pw].reshape(B, gh, ph, gw, pw, C)  # (B, gh, ph, gw, pw, C)
        x = x.transpose(0, 1, 3, 2, 4, 5).reshape(B, gh, gw, ph * pw * C)  # (B, gh, gw, P)
        kernel = kernel.reshape(ph * pw * C, self.features)  # (P, D)
        y = matmul(x.astype(self.dtype), kernel.astype(self.dtype), self.impl)  # (B, gh, gw, D)
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros, (self.features,)).astype(self.dtype)
        return y
