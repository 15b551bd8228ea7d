"""The hybrid ViTs' CNN backbone configs: frozen dataclasses, and their feature-map arithmetic.

Pure Python (no jax, no torch), so ``ViTConfig`` can hold one and vittorch can import the vit
config without jax. ``feature_info(img_size)`` is integer arithmetic (timm runs a forward pass for
it); ``build`` imports the Flax backbone only when a model is built.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, ClassVar

from vitjax.util import to_2tuple

Size = tuple[int, int]


def make_divisible(v: float, divisor: int = 8, min_value: int | None = None) -> int:
    """timm's make_divisible (round_limit 0.9): channel counts of ResNetV2 bottlenecks."""
    min_value = min_value or divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


def _axis_out(n: int, k: int, s: int, padding: int | str | None) -> int:
    """Output length of one axis of a k-wide, stride-s conv or pool with timm's padding argument.

    An int is torch's symmetric padding; 'same' is TF SAME (ceil(n / s)); 'valid' none; None or
    another string timm's get_padding, ((s - 1) + (k - 1)) // 2.
    """
    if isinstance(padding, str) and padding.lower() == "same":
        return math.ceil(n / s)
    if isinstance(padding, int):
        p = padding
    elif isinstance(padding, str) and padding.lower() == "valid":
        p = 0
    else:
        p = ((s - 1) + (k - 1)) // 2
    return (n + 2 * p - k) // s + 1


def _conv_size(hw: Size, k: int, s: int, padding: int | str | None) -> Size:
    """(H, W) after a k x k, stride s convolution or pooling with timm's padding argument."""
    h, w = hw
    return _axis_out(h, k, s, padding), _axis_out(w, k, s, padding)


@dataclass(frozen=True)
class ResNetV2Config:
    """vision_transformer_hybrid._resnetv2(layers, padding_same): layers=() is the stem alone."""

    kind: ClassVar[str] = "resnetv2"
    layers: tuple[int, ...] = (3, 4, 9)
    channels: tuple[int, ...] = (256, 512, 1024, 2048)
    stem_chs: int = 64
    padding_same: bool = True

    def feature_info(self, img_size: int | Size) -> tuple[Size, int]:
        """((H, W), channels) of the feature map for an image size."""
        pad = "same" if self.padding_same else None
        hw = _conv_size(to_2tuple(img_size), 7, 2, pad)  # stem conv
        hw = _conv_size(hw, 3, 2, "same" if self.padding_same else 1)  # stem max pool
        for _ in self.layers[1:]:
            hw = _conv_size(hw, 3, 2, pad)  # the strided 3x3 of each later stage
        chs = make_divisible(self.channels[len(self.layers) - 1]) if self.layers else self.stem_chs
        return hw, chs

    def build(self, dtype: Any) -> Any:
        """The Flax backbone (for the caller to assign as ``self.backbone`` in setup)."""
        from vitjax.layers.cnn_stems import ResNetV2, ResNetV2Stem

        if not self.layers:
            return ResNetV2Stem(self.stem_chs, self.padding_same, dtype=dtype)
        return ResNetV2(self.layers, self.channels, self.stem_chs, self.padding_same, dtype=dtype)


@dataclass(frozen=True)
class ResNetConfig:
    """timm resnet26d / resnet50d (Bottleneck, deep stem, avg_down) with features_only."""

    kind: ClassVar[str] = "resnet"
    layers: tuple[int, ...] = (2, 2, 2, 2)
    channels: tuple[int, ...] = (64, 128, 256, 512)
    stem_width: int = 32
    out_indices: tuple[int, ...] = (4,)

    def feature_info(self, img_size: int | Size) -> tuple[Size, int]:
        """((H, W), channels) of the feature at max(out_indices) for an image size."""
        n = max(self.out_indices)
        hw = _conv_size(to_2tuple(img_size), 3, 2, 1)  # conv1's strided 3x3
        hw = _conv_size(hw, 3, 2, 1)  # maxpool
        for _ in range(1, n):
            hw = _conv_size(hw, 3, 2, 1)  # the strided 3x3 of layer2..
        return hw, self.channels[n - 1] * 4

    def build(self, dtype: Any) -> Any:
        """The Flax backbone (for the caller to assign as ``self.backbone`` in setup)."""
        from vitjax.layers.cnn_stems import ResNet

        return ResNet(self.layers, self.channels, self.stem_width, self.out_indices, dtype=dtype)


@dataclass(frozen=True)
class ConvStemConfig:
    """vision_transformer_hybrid.ConvStem (BatchNorm), per-layer arguments resolved to tuples."""

    kind: ClassVar[str] = "conv_stem"
    channels: tuple[int, ...] = (16, 32, 64)
    kernel_size: tuple[int, ...] = (3, 3, 3)
    stride: tuple[int, ...] = (2, 2, 2)
    padding: tuple[int | str | None, ...] = (1, 1, 1)  # timm's '' resolved by get_padding
    act_layer: str = "relu"

    def feature_info(self, img_size: int | Size) -> tuple[Size, int]:
        """((H, W), channels) of the last conv's output for an image size."""
        hw = to_2tuple(img_size)
        for k, s, p in zip(self.kernel_size, self.stride, self.padding, strict=True):
            hw = _conv_size(hw, k, s, p)
        return hw, self.channels[-1]

    def build(self, dtype: Any) -> list[Any]:
        """The ConvNormAct layers, a list: torch's Sequential children ``0``, ``1``, ..."""
        from vitjax.layers.cnn_stems import conv_stem_layers

        return conv_stem_layers(
            self.channels, self.kernel_size, self.stride, self.padding, self.act_layer, dtype
        )


BackboneConfig = ResNetV2Config | ResNetConfig | ConvStemConfig
BACKBONES: dict[str, type] = {c.kind: c for c in (ResNetV2Config, ResNetConfig, ConvStemConfig)}


def backbone_to_dict(cfg: BackboneConfig) -> dict[str, Any]:
    """JSON-ready dict: ``kind`` and every field (tuples as lists)."""
    d = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(cfg).items()}
    return {"kind": cfg.kind, **d}


def backbone_from_dict(d: dict[str, Any]) -> BackboneConfig:
    """Inverse of backbone_to_dict; an unknown kind or field is an error naming it."""
    d = dict(d)
    kind = d.pop("kind", None)
    if kind not in BACKBONES:
        raise ValueError(f"backbone kind {kind!r}: expected one of {sorted(BACKBONES)}")
    cls = BACKBONES[kind]
    unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields: {unknown}")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})
