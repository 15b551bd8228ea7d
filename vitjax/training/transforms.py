"""Image transforms with torchvision's numbers: eval (resize, center crop, normalise), train.

PIL in, float32 HWC numpy out; equal to torchvision's PIL pipeline for the same file. DataConfig
holds a model's preprocessing under timm's pretrained-config names.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from vitjax.util import DEFAULT_CROP_PCT, IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

INTERPOLATIONS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
    "lanczos": Image.Resampling.LANCZOS,
}



def _pil_interpolation(name: str) -> Image.Resampling:
    """Return PIL's resampling filter for a torchvision/timm interpolation name."""
    try:
        return INTERPOLATIONS[name]
    except KeyError:
        choices = sorted(INTERPOLATIONS)
        raise ValueError(f"unknown interpolation {name!r}; choose from {choices}") from None


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    """Return ``size`` as ``(H, W)``."""
    if isinstance(size, int):
        return size, size
    h, w = size
    return int(h), int(w)


def resize_shorter(img: Image.Image, size: int, interpolation: str = "bilinear") -> Image.Image:
    """Resize the shorter side to ``size`` keeping aspect, as torchvision's ``Resize(int)``."""
    w, h = img.size
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = size, int(size * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    if (new_w, new_h) == (w, h):
        return img
    return img.resize((new_w, new_h), _pil_interpolation(interpolation))


def resize(img: Image.Image, size: int | Sequence[int], interpolation: str) -> Image.Image:
    """Resize to exactly ``(H, W)``, as torchvision's ``Resize((h, w))``."""
    h, w = _pair(size)
    if img.size == (w, h):
        return img
    return img.resize((w, h), _pil_interpolation(interpolation))


def center_crop(img: Image.Image, size: int | Sequence[int]) -> Image.Image:
    """Crop the centre ``(H, W)``, zero-padding first if needed, as torchvision's ``CenterCrop``."""
    th, tw = _pair(size)
    w, h = img.size
    if tw > w or th > h:
        left, top = max(tw - w, 0) // 2, max(th - h, 0) // 2
        padded = Image.new(img.mode, (max(w, tw), max(h, th)), 0)
        padded.paste(img, (left, top))
        img, (w, h) = padded, padded.size
    top = int(round((h - th) / 2.0))
    left = int(round((w - tw) / 2.0))
    return img.crop((left, top, left + tw, top + th))


def to_array(
    img: Image.Image,
    mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
    std: Sequence[float] = IMAGENET_DEFAULT_STD,
) -> np.ndarray:
    """Return the float32 (H, W, 3) array of ``ToTensor`` + ``Normalize``, in HWC."""
    img = img if img.mode == "RGB" else img.convert("RGB")
    x = np.asarray(img, dtype=np.uint8).astype(np.float32) / np.float32(255)
    return (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)


def eval_transform(
    img: Image.Image,
    img_size: int | Sequence[int],
    *,
    crop_pct: float = DEFAULT_CROP_PCT,
    resize_size: int | None = None,
    interpolation: str = "bicubic",
    mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
    std: Sequence[float] = IMAGENET_DEFAULT_STD,
    crop_mode: str = "center",
) -> np.ndarray:
    """Return timm's eval transform: Resize(floor(size / crop_pct)) + CenterCrop + normalise.

    ``resize_size`` overrides the crop_pct rule (the notebook: ``resize_size=256``,
    ``img_size=224``). ``crop_mode="squash"`` resizes to a square instead of the shorter side.
    """
    th, tw = _pair(img_size)
    if resize_size is None:
        resize_size = math.floor(th / crop_pct)
        if math.floor(tw / crop_pct) != resize_size:
            raise ValueError(f"non-square img_size {img_size} with crop_pct is not supported")
    img = img if img.mode == "RGB" else img.convert("RGB")
    if crop_mode == "center":
        img = resize_shorter(img, resize_size, interpolation)
    elif crop_mode == "squash":
        img = resize(img, resize_size, interpolation)
    else:
        raise ValueError(f"unsupported crop_mode {crop_mode!r} (use 'center' or 'squash')")
    return to_array(center_crop(img, (th, tw)), mean, std)


def random_resized_crop_params(
    rng: np.random.Generator,
    height: int,
    width: int,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> tuple[int, int, int, int]:
    """Return ``(top, left, h, w)`` by torchvision's ``RandomResizedCrop.get_params`` algorithm."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect_ratio = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
        w = int(round(math.sqrt(target_area * aspect_ratio)))
        h = int(round(math.sqrt(target_area / aspect_ratio)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    in_ratio = float(width) / float(height)  # fallback: central crop
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        w, h = int(round(height * max(ratio))), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def resized_crop(
    img: Image.Image,
    box: tuple[int, int, int, int],
    size: int | Sequence[int],
    interpolation: str,
) -> Image.Image:
    """Crop ``box=(top, left, h, w)`` and resize to ``size``, as torchvision's ``resized_crop``."""
    top, left, h, w = box
    return resize(img.crop((left, top, left + w, top + h)), size, interpolation)


def train_transform(
    img: Image.Image,
    rng: np.random.Generator,
    img_size: int | Sequence[int],
    *,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    hflip: float = 0.5,
    interpolation: str = "bicubic",
    mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
    std: Sequence[float] = IMAGENET_DEFAULT_STD,
) -> np.ndarray:
    """Return RandomResizedCrop + RandomHorizontalFlip + normalise, drawing from ``rng``."""
    img = img if img.mode == "RGB" else img.convert("RGB")
    box = random_resized_crop_params(rng, img.height, img.width, scale, ratio)
    img = resized_crop(img, box, img_size, interpolation)
    if rng.random() < hflip:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return to_array(img, mean, std)




@dataclass(frozen=True)
class DataConfig:
    """Preprocessing of a model, with timm's pretrained-config names and ViT defaults."""

    input_size: tuple[int, int, int] = (3, 224, 224)
    interpolation: str = "bicubic"
    mean: tuple[float, ...] = IMAGENET_DEFAULT_MEAN
    std: tuple[float, ...] = IMAGENET_DEFAULT_STD
    crop_pct: float = DEFAULT_CROP_PCT
    crop_mode: str = "center"

    @property
    def img_size(self) -> tuple[int, int]:
        """Return ``(H, W)``."""
        return int(self.input_size[1]), int(self.input_size[2])


def data_config_from_pretrained_cfg(
    cfg: Mapping[str, Any] | None = None, **overrides: Any
) -> DataConfig:
    """Return the ``DataConfig`` of a timm-style pretrained config dict (missing keys: defaults)."""
    cfg = {**(cfg or {}), **overrides}
    defaults = DataConfig()
    return DataConfig(
        input_size=tuple(int(v) for v in cfg.get("input_size") or defaults.input_size),
        interpolation=cfg.get("interpolation") or defaults.interpolation,
        mean=tuple(float(v) for v in cfg.get("mean") or defaults.mean),
        std=tuple(float(v) for v in cfg.get("std") or defaults.std),
        crop_pct=float(cfg.get("crop_pct") or defaults.crop_pct),
        crop_mode=cfg.get("crop_mode") or defaults.crop_mode,
    )


@dataclass(frozen=True)
class EvalTransform:
    """Picklable ``(img, rng) -> array`` eval transform of a ``DataConfig`` (rng unused)."""

    config: DataConfig = DataConfig()
    resize_size: int | None = None

    def __call__(self, img: Image.Image, rng: np.random.Generator | None = None) -> np.ndarray:
        c = self.config
        return eval_transform(
            img,
            c.img_size,
            crop_pct=c.crop_pct,
            resize_size=self.resize_size,
            interpolation=c.interpolation,
            mean=c.mean,
            std=c.std,
            crop_mode=c.crop_mode,
        )


@dataclass(frozen=True)
class TrainTransform:
    """Picklable ``(img, rng) -> array`` train transform of a ``DataConfig``."""

    config: DataConfig = DataConfig()
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: float = 0.5

    def __call__(self, img: Image.Image, rng: np.random.Generator) -> np.ndarray:
        c = self.config
        return train_transform(
            img,
            rng,
            c.img_size,
            scale=self.scale,
            ratio=self.ratio,
            hflip=self.hflip,
            interpolation=c.interpolation,
            mean=c.mean,
            std=c.std,
        )
