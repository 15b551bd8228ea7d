"""timm's CNN backbones as its hybrid ViTs use them, NHWC, with timm's attribute names.

- ResNetV2 (timm resnetv2.py, built by vision_transformer_hybrid._resnetv2): non-pre-activation
  bottlenecks, GroupNorm + ReLU, StdConv2d(Same) with eps 1e-8; with no stages it is the stem alone.
- ResNet-D (timm resnet.py, resnet26d / resnet50d with features_only): deep 3x3 stem, BatchNorm,
  avg-pool downsampling, truncated after the last feature index.
- ConvStem (vision_transformer_hybrid.ConvStem, MobileCLIP's vit_base_mci_224): ConvNormAct stack.

BatchNorm follows torch: batch statistics in training (biased variance to normalise, unbiased for
the running update, running = (1 - m) * running + m * batch), running statistics in eval; they
live in the ``batch_stats`` collection as ``mean`` / ``var``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn

from vitjax.layers.activations import make_act
from vitjax.layers.helpers import Dtype
from vitjax.layers.std_conv import Conv2d, StdConv2d, StdConv2dSame, axis_pads

HYBRID_STD_CONV_EPS = 1e-8  # vision_transformer_hybrid._resnetv2: partial(StdConv2d*, eps=1e-8)


def make_divisible(v: float, divisor: int = 8, min_value: int | None = None) -> int:
    """timm's make_divisible (round_limit 0.9): channel counts of ResNetV2 bottlenecks."""
    min_value = min_value or divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


def max_pool(x: jax.Array, kernel_size: int, stride: int, padding: int | str) -> jax.Array:
    """torch's MaxPool2d (int padding) or timm's MaxPool2dSame ('same'); pads are -inf."""
    B, H, W, C = x.shape
    pads = [axis_pads(padding, n, kernel_size, stride) for n in (H, W)]
    window, strides = (1, kernel_size, kernel_size, 1), (1, stride, stride, 1)
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, window, strides, ((0, 0), *pads, (0, 0)))


def avg_pool_ceil(x: jax.Array, stride: int = 2) -> jax.Array:
    """nn.AvgPool2d(stride, stride, ceil_mode=True, count_include_pad=False), NHWC."""
    B, H, W, C = x.shape
    pads = ((0, 0), (0, -H % stride), (0, -W % stride), (0, 0))  # ceil mode: a partial last window
    window = (1, stride, stride, 1)
    total = jax.lax.reduce_window(x, 0.0, jax.lax.add, window, window, pads)
    ones = jnp.ones((1, H, W, 1), x.dtype)
    count = jax.lax.reduce_window(ones, 0.0, jax.lax.add, window, window, pads)
    return total / count  # the mean of the elements inside the image only


class BatchNorm2d(nn.Module):
    """torch's BatchNorm2d (timm's BatchNormAct2d when act_layer is set) over NHWC channels."""

    eps: float = 1e-5
    momentum: float = 0.1
    act_layer: str | None = None
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        C = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (C,))
        bias = self.param("bias", nn.initializers.zeros, (C,))
        ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((C,), jnp.float32))
        ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((C,), jnp.float32))
        xf = x.astype(jnp.float32)
        if train:
            mean = xf.mean(axis=(0, 1, 2))
            var = jnp.square(xf - mean).mean(axis=(0, 1, 2))  # biased: normalises the batch
            if not self.is_initializing():
                n, m = x.size // C, self.momentum
                ra_mean.value = (1 - m) * ra_mean.value + m * mean
                ra_var.value = (1 - m) * ra_var.value + m * var * (n / (n - 1))  # unbiased
        else:
            mean, var = ra_mean.value, ra_var.value
        y = (xf - mean) * jax.lax.rsqrt(var + self.eps) * scale + bias
        y = y.astype(self.dtype)
        return make_act(self.act_layer)(y) if self.act_layer else y


class GroupNormAct(nn.Module):
    """timm's GroupNormAct: F.group_norm (biased variance) then the activation, NHWC."""

    num_groups: int = 32
    eps: float = 1e-5
    act_layer: str | None = "relu"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        B, H, W, C = x.shape
        G = self.num_groups
        scale = self.param("scale", nn.initializers.ones, (C,))
        bias = self.param("bias", nn.initializers.zeros, (C,))
        xg = x.astype(jnp.float32).reshape(B, H, W, G, C // G)  # (B, H, W, G, C/G)
        mean = xg.mean(axis=(1, 2, 4), keepdims=True)
        var = jnp.square(xg - mean).mean(axis=(1, 2, 4), keepdims=True)
        y = ((xg - mean) * jax.lax.rsqrt(var + self.eps)).reshape(B, H, W, C)  # (B, H, W, C)
        y = (y * scale + bias).astype(self.dtype)
        return make_act(self.act_layer)(y) if self.act_layer else y


# --- ResNetV2 as the hybrids build it (timm resnetv2.py, preact=False) ---------------------------


def _std_conv(
    padding_same: bool, out_chs: int, kernel_size: int, stride: int, dtype: Dtype
) -> nn.Module:
    cls = StdConv2dSame if padding_same else StdConv2d
    return cls(out_chs, kernel_size, stride, eps=HYBRID_STD_CONV_EPS, dtype=dtype)


class ResNetV2Stem(nn.Module):
    """create_resnetv2_stem(stem_type='same' or '', preact=False): conv, norm, max pool."""

    out_chs: int = 64
    padding_same: bool = True
    dtype: Dtype = jnp.float32

    def setup(self) -> None:
        self.conv = _std_conv(self.padding_same, self.out_chs, 7, 2, self.dtype)
        self.norm = GroupNormAct(32, dtype=self.dtype)

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = self.norm(self.conv(x))
        return max_pool(x, 3, 2, "same" if self.padding_same else 1)


class DownsampleConv(nn.Module):
    """ResNetV2's 1x1 projection shortcut (preact=False: conv, then norm without act)."""

    out_chs: int
    stride: int = 1
    padding_same: bool = True
    dtype: Dtype = jnp.float32

    def setup(self) -> None:
        self.conv = _std_conv(self.padding_same, self.out_chs, 1, self.stride, self.dtype)
        self.norm = GroupNormAct(32, act_layer=None, dtype=self.dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.norm(self.conv(x))


class ResNetV2Bottleneck(nn.Module):
    """resnetv2.Bottleneck: conv-norm-act x3 (stride on the 3x3), act after the residual sum."""

    out_chs: int
    stride: int = 1
    project_shortcut: bool = False  # timm passes proj_layer to the first block of a stage
    padding_same: bool = True
    dtype: Dtype = jnp.float32

    def setup(self) -> None:
        same, dt = self.padding_same, self.dtype
        mid_chs = make_divisible(self.out_chs * 0.25)
        self.downsample = None
        if self.project_shortcut:
            self.downsample = DownsampleConv(self.out_chs, self.stride, same, dtype=dt)
        self.conv1 = _std_conv(same, mid_chs, 1, 1, dt)
        self.norm1 = GroupNormAct(32, dtype=dt)
        self.conv2 = _std_conv(same, mid_chs, 3, self.stride, dt)
        self.norm2 = GroupNormAct(32, dtype=dt)
        self.conv3 = _std_conv(same, self.out_chs, 1, 1, dt)
        self.norm3 = GroupNormAct(32, act_layer=None, dtype=dt)

    def __call__(self, x: jax.Array) -> jax.Array:
        shortcut = x if self.downsample is None else self.downsample(x)
        x = self.norm1(self.conv1(x))
        x = self.norm2(self.conv2(x))
        x = self.norm3(self.conv3(x))
        return nn.relu(x + shortcut)


class ResNetStage(nn.Module):
    """resnetv2.ResNetStage: its blocks; the first one strides and projects the shortcut."""

    out_chs: int
    stride: int
    depth: int
    padding_same: bool = True
    dtype: Dtype = jnp.float32

    def setup(self) -> None:
        self.blocks = [
            ResNetV2Bottleneck(
                self.out_chs,
                self.stride if i == 0 else 1,
                project_shortcut=i == 0,
                padding_same=self.padding_same,
                dtype=self.dtype,
            )
            for i in range(self.depth)
        ]

    def __call__(self, x: jax.Array) -> jax.Array:
        for block in self.blocks:
            x = block(x)
        return x


class ResNetV2(nn.Module):
    """timm's ResNetV2(preact=False, num_classes=0, global_pool=''): stem and stages (no norm)."""

    layers: tuple[int, ...] = (3, 4, 9)
    channels: tuple[int, ...] = (256, 512, 1024, 2048)
    stem_chs: int = 64
    padding_same: bool = True
    dtype: Dtype = jnp.float32

    def setup(self) -> None:
        stem_chs = make_divisible(self.stem_chs)
        self.stem = ResNetV2Stem(stem_chs, self.padding_same, dtype=self.dtype)
        self.stages = [
            ResNetStage(
                make_divisible(c), 1 if i == 0 else 2, d, self.padding_same, dtype=self.dtype
            )
            for i, (d, c) in enumerate(zip(self.layers, self.channels, strict=False))
        ]

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return x  # norm and head are Identity with preact=False, num_classes=0, global_pool=''


# --- ResNet-D (timm resnet.py: Bottleneck, stem_type='deep', avg_down=True), features_only -------


def _conv(out_chs: int, kernel_size: int, stride: int, dtype: Dtype) -> nn.Module:
    """nn.Conv2d(bias=False) with resnet.py's padding (kernel_size // 2 for these convs)."""
    return Conv2d(out_chs, kernel_size, stride, padding=kernel_size // 2, dtype=dtype)


class ResNetBottleneck(nn.Module):
    """resnet.Bottleneck (cardinality 1, base_width 64): 1x1, 3x3 (stride), 1x1, expansion 4."""

    planes: int
    stride: int = 1
    project_shortcut: bool = False  # make_blocks gives block 0 a downsample where shapes change
    dtype: Dtype = jnp.float32

    def setup(self) -> None:
        width, out_chs, dt = self.planes, self.planes * 4, self.dtype
        self.conv1 = _conv(width, 1, 1, dt)
        self.bn1 = BatchNorm2d(dtype=dt)
        self.conv2 = _conv(width, 3, self.stride, dt)
        self.bn2 = BatchNorm2d(dtype=dt)
        self.conv3 = _conv(out_chs, 1, 1, dt)
        self.bn3 = BatchNorm2d(dtype=dt)
        self.downsample = None
        if self.project_shortcut:  # downsample_avg: Sequential(pool (no params), conv 1x1, bn)
            self.downsample = [None, _conv(out_chs, 1, 1, dt), BatchNorm2d(dtype=dt)]

    def _shortcut(self, x: jax.Array, train: bool) -> jax.Array:
        if self.downsample is None:
            return x
        _, conv, bn = self.downsample
        if self.stride != 1:
            x = avg_pool_ceil(x, self.stride)
        return bn(conv(x), train)

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        shortcut = self._shortcut(x, train)
        x = nn.relu(self.bn1(self.conv1(x), train))
        x = nn.relu(self.bn2(self.conv2(x), train))
        x = self.bn3(self.conv3(x), train)
        return nn.relu(x + shortcut)


class ResNet(nn.Module):
    """timm's ResNet-D features_only backbone: the feature at max(out_indices) (layer1..4)."""

    layers: tuple[int, ...] = (2, 2, 2, 2)
    channels: tuple[int, ...] = (64, 128, 256, 512)
    stem_width: int = 32
    out_indices: tuple[int, ...] = (4,)
    dtype: Dtype = jnp.float32

    def setup(self) -> None:
        w, dt = self.stem_width, self.dtype
        inplanes = w * 2
        # conv1 is torch's Sequential(conv, bn, act, conv, bn, act, conv): the acts hold no params
        self.conv1 = [
            _conv(w, 3, 2, dt),
            BatchNorm2d(dtype=dt),
            None,
            _conv(w, 3, 1, dt),
            BatchNorm2d(dtype=dt),
            None,
            _conv(inplanes, 3, 1, dt),
        ]
        self.bn1 = BatchNorm2d(dtype=dt)
        for i in range(self.num_stages):
            planes = self.channels[i]
            stride = 1 if i == 0 else 2
            blocks = [
                ResNetBottleneck(
                    planes,
                    stride if j == 0 else 1,
                    project_shortcut=j == 0 and (stride != 1 or inplanes != planes * 4),
                    dtype=dt,
                )
                for j in range(self.layers[i])
            ]
            setattr(self, f"layer{i + 1}", blocks)
            inplanes = planes * 4

    @property
    def num_stages(self) -> int:
        """How many of layer1..layer4 FeatureListNet keeps: up to the last feature taken."""
        return max(self.out_indices)

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        conv_a, bn_a, _, conv_b, bn_b, _, conv_c = self.conv1
        x = nn.relu(bn_a(conv_a(x), train))
        x = nn.relu(bn_b(conv_b(x), train))
        x = max_pool(nn.relu(self.bn1(conv_c(x), train)), 3, 2, 1)
        for i in range(self.num_stages):
            for block in getattr(self, f"layer{i + 1}"):
                x = block(x, train)
        return x


# --- MobileCLIP's ConvStem (vision_transformer_hybrid.ConvStem) ---------------------------------


class ConvNormAct(nn.Module):
    """timm's ConvNormAct: conv, then BatchNormAct2d (``bn``) unless apply_norm is False."""

    out_channels: int
    kernel_size: int = 1
    stride: int = 1
    padding: int | str | None = None
    use_bias: bool = False
    apply_norm: bool = True
    act_layer: str | None = "relu"
    dtype: Dtype = jnp.float32

    def setup(self) -> None:
        self.conv = Conv2d(
            self.out_channels,
            self.kernel_size,
            self.stride,
            self.padding,
            use_bias=self.use_bias,
            dtype=self.dtype,
        )
        self.bn = None  # timm holds an empty Sequential here
        if self.apply_norm:
            self.bn = BatchNorm2d(act_layer=self.act_layer, dtype=self.dtype)

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = self.conv(x)
        return x if self.bn is None else self.bn(x, train)


def conv_stem_layers(
    channels: tuple[int, ...],
    kernel_size: tuple[int, ...],
    stride: tuple[int, ...],
    padding: tuple[int | str | None, ...],
    act_layer: str,
    dtype: Dtype,
) -> list[ConvNormAct]:
    """ConvStem's children, for the caller to hold as a list (torch's Sequential: ``0``, ``1``)."""
    n = len(channels)
    return [
        ConvNormAct(
            channels[i],
            kernel_size[i],
            stride[i],
            padding[i],
            use_bias=i == n - 1,
            apply_norm=i < n - 1,
            act_layer=act_layer,
            dtype=dtype,
        )
        for i in range(n)
    ]
