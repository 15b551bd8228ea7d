"""Image transforms with timm's numbers: resolve_data_config, create_transform, eval and train.

PIL in, float32 HWC numpy out. The eval path is timm's ``transforms_imagenet_eval``: resizes,
crops and pads run on PIL exactly as torchvision/timm call PIL; torchvision's two tensor ops,
``ToTensor`` (uint8 -> float32, ``/ 255``) and ``Normalize`` (``(x - mean) / std``), are the same
float32 IEEE operations in numpy, so arrays equal timm's bit for bit. DataConfig holds a model's
preprocessing under timm's pretrained-config names.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from vitjax.util import DEFAULT_CROP_PCT, IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, to_2tuple

_logger = logging.getLogger(__name__)

DEFAULT_CROP_MODE = "center"  # timm.data.constants
CROP_MODES = ("center", "squash", "border")
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


# ----------------------------------------------------------------------------- PIL steps


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


def resize_keep_ratio(
    img: Image.Image, size: Sequence[int], interpolation: str, longest: float = 0.0
) -> Image.Image:
    """Scale both sides by one ratio to fit ``(H, W)``, as timm's ``ResizeKeepRatio`` (no jitter).

    ``longest=0`` matches the shorter fitting edge (crop later), ``longest=1`` the longer (pad).
    """
    target_h, target_w = _pair(size)
    ratio_h, ratio_w = img.height / target_h, img.width / target_w
    ratio = max(ratio_h, ratio_w) * longest + min(ratio_h, ratio_w) * (1.0 - longest)
    return resize(img, (round(img.height / ratio), round(img.width / ratio)), interpolation)


def center_crop_or_pad(
    img: Image.Image, size: int | Sequence[int], fill: int | Sequence[int] = 0
) -> Image.Image:
    """Crop the centre ``(H, W)``, padding with ``fill`` first where the image is smaller.

    timm's ``center_crop_or_pad``; with ``fill=0`` it is torchvision's ``CenterCrop``.
    """
    crop_h, crop_w = _pair(size)
    w, h = img.size
    if crop_w > w or crop_h > h:
        pad_w, pad_h = max(crop_w - w, 0), max(crop_h - h, 0)
        border = (pad_w // 2, pad_h // 2, (pad_w + 1) // 2, (pad_h + 1) // 2)  # l, t, r, b
        img = ImageOps.expand(img, border=border, fill=_pil_fill(fill, img))
        w, h = img.size
        if (crop_w, crop_h) == (w, h):
            return img
    top = int(round((h - crop_h) / 2.0))
    left = int(round((w - crop_w) / 2.0))
    return img.crop((left, top, left + crop_w, top + crop_h))


def _pil_fill(fill: int | Sequence[int], img: Image.Image) -> int | tuple[int, ...]:
    """Return ``fill`` per channel of ``img``, as torchvision's ``_parse_fill``."""
    channels = len(img.getbands())
    if isinstance(fill, (int, float)):
        fill = (fill,) * channels
    fill = tuple(fill) * channels if len(fill) == 1 else tuple(fill)
    if len(fill) != channels:
        raise ValueError(f"fill {fill} has {len(fill)} values for a {channels}-channel image")
    return int(fill[0]) if channels == 1 else tuple(int(v) for v in fill)


def center_crop(img: Image.Image, size: int | Sequence[int]) -> Image.Image:
    """Crop the centre ``(H, W)``, zero-padding first if needed, as torchvision's ``CenterCrop``."""
    return center_crop_or_pad(img, size, fill=0)


def trim_border(img: Image.Image, border_size: int) -> Image.Image:
    """Cut ``border_size`` pixels off every edge, as timm's ``TrimBorder``."""
    w, h = img.size
    top = min(border_size, h)
    left = min(border_size, h)  # timm clamps the left offset by the height too
    height, width = max(0, h - 2 * border_size), max(0, w - 2 * border_size)
    return img.crop((left, top, left + width, top + height))


def to_array(
    img: Image.Image,
    mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
    std: Sequence[float] = IMAGENET_DEFAULT_STD,
) -> np.ndarray:
    """Return the float32 (H, W, C) array of ``ToTensor`` + ``Normalize``, in HWC.

    RGB and L images keep their channels; other modes are converted to RGB.
    """
    img = img if img.mode in ("RGB", "L") else img.convert("RGB")
    x = to_uint8_array(img).astype(np.float32) / np.float32(255)
    mean, std = np.asarray(mean, np.float32), np.asarray(std, np.float32)
    C = x.shape[-1]
    if mean.size not in (1, C) or std.size not in (1, C):
        raise ValueError(
            f"mean {tuple(mean.tolist())} / std {tuple(std.tolist())} do not fit a "
            f"{C}-channel {img.mode} image"
        )
    return (x - mean) / std


def to_uint8_array(img: Image.Image) -> np.ndarray:
    """Return the uint8 (H, W, C) pixels, as timm's ``MaybePILToTensor`` in HWC."""
    x = np.asarray(img, dtype=np.uint8)
    return x[..., None] if x.ndim == 2 else x


# ----------------------------------------------------------------------------- eval


def eval_transform(
    img: Image.Image,
    img_size: int | Sequence[int],
    *,
    crop_pct: float | None = DEFAULT_CROP_PCT,
    resize_size: int | Sequence[int] | None = None,
    interpolation: str = "bicubic",
    mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
    std: Sequence[float] = IMAGENET_DEFAULT_STD,
    crop_mode: str | None = DEFAULT_CROP_MODE,
    crop_border_pixels: int | None = None,
    normalize: bool = True,
    img_mode: str = "RGB",
) -> np.ndarray:
    """Return timm's ``transforms_imagenet_eval`` of ``img`` as an (H, W, C) array.

    Resize to ``floor(img_size / crop_pct)`` by ``crop_mode`` ("center": shorter side, then
    crop; "squash": both sides, then crop; "border": longer side, then pad with the mean colour),
    then ``ToTensor`` + ``Normalize`` (uint8 pixels when ``normalize=False``). ``resize_size``
    overrides the crop_pct rule (the notebook: ``resize_size=256``, ``img_size=224``).
    ``img_mode`` is the mode timm's datasets convert to first ("RGB", or "L" for 1 channel).
    """
    th, tw = _pair(img_size)
    crop_pct = crop_pct or DEFAULT_CROP_PCT
    if resize_size is None:
        scale = (math.floor(th / crop_pct), math.floor(tw / crop_pct))
    else:
        scale = _pair(resize_size)
    img = img if img.mode == img_mode else img.convert(img_mode)
    if crop_border_pixels:
        img = trim_border(img, crop_border_pixels)
    if crop_mode == "squash":  # aspect not kept; nothing lost at crop_pct 1
        img = center_crop(resize(img, scale, interpolation), (th, tw))
    elif crop_mode == "border":  # aspect kept, longer side fits, padded with the mean colour
        img = resize_keep_ratio(img, scale, interpolation, longest=1.0)
        img = center_crop_or_pad(img, (th, tw), fill=[round(255 * v) for v in mean])
    elif crop_mode in (None, "center"):  # aspect kept, shorter side fits, the rest cropped
        if scale[0] == scale[1]:
            img = resize_shorter(img, scale[0], interpolation)
        else:
            img = resize_keep_ratio(img, scale, interpolation)
        img = center_crop(img, (th, tw))
    else:
        raise ValueError(f"unknown crop_mode {crop_mode!r}; choose from {list(CROP_MODES)}")
    return to_array(img, mean, std) if normalize else to_uint8_array(img)


# ----------------------------------------------------------------------------- train


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


# ----------------------------------------------------------------------------- data config


@dataclass(frozen=True)
class DataConfig:
    """Preprocessing of a model, with timm's pretrained-config names and ViT defaults."""

    input_size: tuple[int, int, int] = (3, 224, 224)
    interpolation: str = "bicubic"
    mean: tuple[float, ...] = IMAGENET_DEFAULT_MEAN
    std: tuple[float, ...] = IMAGENET_DEFAULT_STD
    crop_pct: float = DEFAULT_CROP_PCT
    crop_mode: str = DEFAULT_CROP_MODE

    @property
    def img_size(self) -> tuple[int, int]:
        """Return ``(H, W)``."""
        return int(self.input_size[1]), int(self.input_size[2])

    @classmethod
    def from_dict(cls, data_config: Mapping[str, Any]) -> DataConfig:
        """Return the DataConfig of a data-config dict (missing or None values: defaults)."""
        d = {k: v for k, v in data_config.items() if v is not None}
        input_size = d.get("input_size", cls.input_size)
        if isinstance(input_size, int):  # timm's create_transform(input_size=224): 3 channels
            input_size = (3, input_size, input_size)
        elif len(input_size) == 2:
            input_size = (3, *input_size)
        return cls(
            input_size=tuple(int(v) for v in input_size),
            interpolation=str(d.get("interpolation", cls.interpolation)),
            mean=tuple(float(v) for v in d.get("mean", cls.mean)),
            std=tuple(float(v) for v in d.get("std", cls.std)),
            crop_pct=float(d.get("crop_pct") or DEFAULT_CROP_PCT),
            crop_mode=str(d.get("crop_mode") or DEFAULT_CROP_MODE),
        )


def _as_dict(obj: Any) -> dict[str, Any]:
    """Return a dict of a mapping, an argparse Namespace, a timm PretrainedCfg or None."""
    if obj is None:
        return {}
    if isinstance(obj, Mapping):
        return dict(obj)
    if hasattr(obj, "to_dict"):
        return dict(obj.to_dict())
    return dict(vars(obj))


def _model_pretrained_cfg(model: Any) -> dict[str, Any]:
    """Return a model's pretrained_cfg (timm's attribute), else its config's input size."""
    pretrained_cfg = getattr(model, "pretrained_cfg", None)
    if pretrained_cfg is not None:
        return _as_dict(pretrained_cfg)
    cfg = getattr(model, "cfg", model)  # a vitjax model (linen or nnx), or its config
    if hasattr(cfg, "img_size") and hasattr(cfg, "in_chans"):
        return {"input_size": (int(cfg.in_chans), *to_2tuple(cfg.img_size))}
    return {}


def _channel_values(values: Sequence[float], in_chans: int, name: str) -> tuple[float, ...]:
    """Return mean/std given on the command line, one value repeated to every channel."""
    values = tuple(values)
    if len(values) == 1:
        return values * in_chans
    if len(values) != in_chans:
        raise ValueError(f"{name} {values} has {len(values)} values for {in_chans} channels")
    return values


def _resolve_input_size(
    args: dict[str, Any], pretrained_cfg: dict[str, Any], use_test_size: bool
) -> tuple[Any, int]:
    """Return ``(input_size, in_chans)`` by timm's precedence: args, then pretrained_cfg."""
    in_chans = 3
    if args.get("in_chans") is not None:
        in_chans = args["in_chans"]
    elif args.get("chans") is not None:
        in_chans = args["chans"]
    input_size: Any = (in_chans, 224, 224)
    if args.get("input_size") is not None:
        if not isinstance(args["input_size"], (tuple, list)) or len(args["input_size"]) != 3:
            raise ValueError(f"input_size must be (C, H, W), got {args['input_size']!r}")
        input_size = tuple(args["input_size"])
        in_chans = input_size[0]  # input_size overrides in_chans
    elif args.get("img_size") is not None:
        if not isinstance(args["img_size"], int):
            raise ValueError(f"img_size must be an int, got {args['img_size']!r}")
        input_size = (in_chans, args["img_size"], args["img_size"])
    elif use_test_size and pretrained_cfg.get("test_input_size") is not None:
        input_size = pretrained_cfg["test_input_size"]
    elif pretrained_cfg.get("input_size") is not None:
        input_size = pretrained_cfg["input_size"]
    return input_size, in_chans


def _resolve(
    args: dict[str, Any], pretrained_cfg: dict[str, Any], use_test_size: bool
) -> dict[str, Any]:
    """Return timm's data config: each key from args, else pretrained_cfg, else the default."""
    input_size, in_chans = _resolve_input_size(args, pretrained_cfg, use_test_size)
    config: dict[str, Any] = {"input_size": input_size}
    config["interpolation"] = (
        args.get("interpolation") or pretrained_cfg.get("interpolation") or "bicubic"
    )
    for key, default in (("mean", IMAGENET_DEFAULT_MEAN), ("std", IMAGENET_DEFAULT_STD)):
        if args.get(key) is not None:
            config[key] = _channel_values(args[key], in_chans, key)
        else:
            config[key] = pretrained_cfg.get(key) or default
    if args.get("crop_pct"):
        config["crop_pct"] = args["crop_pct"]
    elif use_test_size and pretrained_cfg.get("test_crop_pct"):
        config["crop_pct"] = pretrained_cfg["test_crop_pct"]
    else:
        config["crop_pct"] = pretrained_cfg.get("crop_pct") or DEFAULT_CROP_PCT
    config["crop_mode"] = (
        args.get("crop_mode") or pretrained_cfg.get("crop_mode") or DEFAULT_CROP_MODE
    )
    return config


def resolve_data_config(
    args: Mapping[str, Any] | Any | None = None,
    pretrained_cfg: Mapping[str, Any] | Any | None = None,
    model: Any = None,
    use_test_size: bool = False,
    verbose: bool = False,
) -> dict[str, Any]:
    """Return timm's ``resolve_data_config``: the eval preprocessing of a model or config.

    Keys: input_size, interpolation, mean, std, crop_pct, crop_mode; each from ``args`` (a dict
    or argparse Namespace), else ``pretrained_cfg``, else ``model``'s (timm's ``pretrained_cfg``
    attribute, or a vitjax model's / config's input size), else timm's defaults.
    """
    if model is None and not args and not pretrained_cfg:
        raise ValueError("At least one of model, args, or pretrained_cfg required for data config.")
    args, pretrained_cfg = _as_dict(args), _as_dict(pretrained_cfg)
    if not pretrained_cfg and model is not None:
        pretrained_cfg = _model_pretrained_cfg(model)
    config = _resolve(args, pretrained_cfg, use_test_size)
    if verbose:
        _logger.info("Data processing configuration for current model + dataset:")
        for n, v in config.items():
            _logger.info("\t%s: %s", n, v)
    return config


def resolve_model_data_config(
    model: Any,
    args: Mapping[str, Any] | Any | None = None,
    pretrained_cfg: Mapping[str, Any] | Any | None = None,
    use_test_size: bool = False,
    verbose: bool = False,
) -> dict[str, Any]:
    """Return ``resolve_data_config`` with the model first, as timm's."""
    return resolve_data_config(args, pretrained_cfg, model, use_test_size, verbose)


def data_config_from_pretrained_cfg(
    cfg: Mapping[str, Any] | None = None, **overrides: Any
) -> DataConfig:
    """Return the ``DataConfig`` of a timm-style pretrained config dict (missing keys: defaults)."""
    return DataConfig.from_dict(_resolve({}, {**(cfg or {}), **overrides}, use_test_size=False))


# ----------------------------------------------------------------------------- transforms


@dataclass(frozen=True)
class EvalTransform:
    """Picklable ``(img, rng) -> array`` eval transform of a ``DataConfig`` (rng unused)."""

    config: DataConfig = DataConfig()
    resize_size: int | None = None
    crop_border_pixels: int | None = None
    normalize: bool = True

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
            crop_border_pixels=self.crop_border_pixels,
            normalize=self.normalize,
            img_mode="RGB" if c.input_size[0] == 3 else "L",  # timm's train.py rule
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


# timm's create_transform defaults (its interpolation default is bilinear, unlike resolve's).
_CREATE_DEFAULTS = {"input_size": 224, "interpolation": "bilinear"}
_DATA_KEYS = tuple(f.name for f in dataclasses.fields(DataConfig))


def _data_config_dict(data_config: Any) -> dict[str, Any]:
    """Return the data-config dict of a dict, a DataConfig, an input size or None."""
    if data_config is None:
        return {}
    if isinstance(data_config, DataConfig):
        return dataclasses.asdict(data_config)
    if isinstance(data_config, (int, tuple, list)):
        return {"input_size": data_config}
    config = dict(data_config)
    unknown = sorted(set(config) - set(_DATA_KEYS))
    if unknown:
        raise TypeError(
            f"create_transform: unknown data-config keys {unknown} (a pretrained_cfg goes "
            "through resolve_data_config first)"
        )
    return config


def create_transform(
    data_config: Mapping[str, Any] | DataConfig | int | Sequence[int] | None = None,
    is_training: bool = False,
    *,
    input_size: int | Sequence[int] | None = None,
    interpolation: str | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    crop_pct: float | None = None,
    crop_mode: str | None = None,
    crop_border_pixels: int | None = None,
    normalize: bool = True,
    use_prefetcher: bool = False,
    scale: tuple[float, float] | None = None,
    ratio: tuple[float, float] | None = None,
    hflip: float = 0.5,
) -> EvalTransform | TrainTransform:
    """Return timm's ``create_transform`` of a data config as a picklable numpy transform.

    ``create_transform(resolve_data_config(...))`` or ``create_transform(**data_config)``; the
    keywords override ``data_config``. Eval: arrays equal timm's (transposed to HWC); uint8
    pixels when ``normalize=False`` or ``use_prefetcher=True``. ``is_training=True``: vitjax's
    RandomResizedCrop + horizontal flip (timm also adds colour jitter by default).
    """
    given = {
        "input_size": input_size,
        "interpolation": interpolation,
        "mean": mean,
        "std": std,
        "crop_pct": crop_pct,
        "crop_mode": crop_mode,
    }
    merged = {**_CREATE_DEFAULTS, **_data_config_dict(data_config)}
    merged.update({k: v for k, v in given.items() if v is not None})
    config = DataConfig.from_dict(merged)
    _pil_interpolation(config.interpolation)  # fail here, not on the first image
    if is_training:
        if not normalize or use_prefetcher or crop_border_pixels:
            raise ValueError("the train transform always normalises and has no border trim")
        return TrainTransform(
            config, scale=scale or (0.08, 1.0), ratio=ratio or (3 / 4, 4 / 3), hflip=hflip
        )
    if config.crop_mode not in CROP_MODES:
        raise ValueError(f"unknown crop_mode {config.crop_mode!r}; choose from {list(CROP_MODES)}")
    return EvalTransform(
        config,
        crop_border_pixels=crop_border_pixels,
        normalize=normalize and not use_prefetcher,
    )
