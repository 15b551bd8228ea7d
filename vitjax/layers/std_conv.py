"""Convolutions with timm's padding rules, and timm's weight-standardised StdConv2d (NHWC, HWIO)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import linen as nn

from vitjax.layers.helpers import Dtype, to_2tuple

Pads = tuple[tuple[int, int], tuple[int, int]]


def get_padding(kernel_size: int, stride: int = 1, dilation: int = 1) -> int:
    """timm's symmetric padding for a convolution (layers/padding.py get_padding)."""
    return ((stride - 1) + dilation * (kernel_size - 1)) // 2


def is_static_pad(kernel_size: int, stride: int = 1, dilation: int = 1) -> bool:
    """True where TF 'SAME' padding is symmetric and needs no input size (timm's is_static_pad)."""
    return stride == 1 and (dilation * (kernel_size - 1)) % 2 == 0


def same_pads(size: int, kernel_size: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """TF 'SAME' (before, after) padding of one spatial axis, as timm's pad_same splits it."""
    pad = max((math.ceil(size / stride) - 1) * stride + (kernel_size - 1) * dilation + 1 - size, 0)
    return pad // 2, pad - pad // 2


def conv_out_size(
    size: int, kernel_size: int, stride: int, pads: tuple[int, int], dilation: int = 1
) -> int:
    """Output length of one axis of a convolution or pooling window (floor mode)."""
    return (size + pads[0] + pads[1] - dilation * (kernel_size - 1) - 1) // stride + 1


def axis_pads(
    padding: int | str | None, size: int, kernel_size: int, stride: int, dilation: int = 1
) -> tuple[int, int]:
    """(before, after) padding of one axis for timm's padding argument.

    An int is torch's symmetric padding; 'same' is TF 'SAME' (from the input size, as timm's
    pad_same); 'valid' is none; None or any other string is timm's get_padding.
    """
    if isinstance(padding, int):
        return padding, padding
    mode = padding.lower() if isinstance(padding, str) else ""
    if mode == "same":
        return same_pads(size, kernel_size, stride, dilation)
    if mode == "valid":
        return 0, 0
    p = get_padding(kernel_size, stride, dilation)
    return p, p


def resolve_pads(
    padding: int | str | None,
    hw: tuple[int, int],
    kernel_size: tuple[int, int],
    stride: tuple[int, int],
    dilation: tuple[int, int] = (1, 1),
) -> Pads:
    """((top, bottom), (left, right)) padding of an (H, W) input: axis_pads per axis."""
    (H, W), (kh, kw), (sh, sw), (dh, dw) = hw, kernel_size, stride, dilation
    return axis_pads(padding, H, kh, sh, dh), axis_pads(padding, W, kw, sw, dw)


def conv2d(
    x: jax.Array,
    kernel: jax.Array,
    bias: jax.Array | None,
    stride: tuple[int, int],
    pads: Pads,
    dilation: tuple[int, int] = (1, 1),
    groups: int = 1,
) -> jax.Array:
    """F.conv2d on NHWC input with an HWIO kernel and explicit (before, after) padding."""
    y = jax.lax.conv_general_dilated(
        x,
        kernel,
        window_strides=stride,
        padding=pads,
        rhs_dilation=dilation,
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=groups,
    )
    return y if bias is None else y + bias


def standardize_weight(kernel: jax.Array, eps: float) -> jax.Array:
    """Per output channel (w - mean) / sqrt(var + eps), biased var (timm's F.batch_norm)."""
    mean = kernel.mean(axis=(0, 1, 2), keepdims=True)  # (1, 1, 1, O)
    var = jnp.square(kernel - mean).mean(axis=(0, 1, 2), keepdims=True)  # two-pass, biased
    return (kernel - mean) * jax.lax.rsqrt(var + eps)


class Conv2d(nn.Module):
    """torch's nn.Conv2d (timm's create_conv2d padding: int, None for get_padding, or 'same')."""

    out_channels: int
    kernel_size: int | tuple[int, int] = 1
    stride: int | tuple[int, int] = 1
    padding: int | str | None = None
    dilation: int | tuple[int, int] = 1
    groups: int = 1
    use_bias: bool = False
    dtype: Dtype = jnp.float32

    def weight(self, in_chans: int) -> jax.Array:
        """The kernel the convolution applies, (kh, kw, I / groups, O)."""
        shape = (*to_2tuple(self.kernel_size), in_chans // self.groups, self.out_channels)
        return self.param("kernel", nn.initializers.lecun_normal(), shape)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        B, H, W, C = x.shape
        k, s, d = to_2tuple(self.kernel_size), to_2tuple(self.stride), to_2tuple(self.dilation)
        pads = resolve_pads(self.padding, (H, W), k, s, d)
        kernel = self.weight(C)
        bias = (
            self.param("bias", nn.initializers.zeros, (self.out_channels,))
            if self.use_bias
            else None
        )
        return conv2d(
            x.astype(self.dtype),
            kernel.astype(self.dtype),
            None if bias is None else bias.astype(self.dtype),
            s,
            pads,
            d,
            self.groups,
        )


class StdConv2d(Conv2d):
    """timm's StdConv2d: the kernel standardised per output channel before the convolution."""

    eps: float = 1e-6

    def weight(self, in_chans: int) -> jax.Array:
        """The standardised kernel, computed from the stored one on every call (as timm does)."""
        return standardize_weight(super().weight(in_chans), self.eps)


class StdConv2dSame(StdConv2d):
    """timm's StdConv2dSame: StdConv2d with TF 'SAME' padding (computed from the input size)."""

    padding: int | str | None = "same"
