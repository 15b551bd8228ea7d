"""Image data: folders and embedded digits, torchvision-equal transforms, splits, grain batching.

numpy out, no deep-learning framework inside. Images are PIL images until a transform turns them
into float32 HWC arrays equal to torchvision's PIL path (``ToTensor`` + ``Normalize``, transposed
to HWC). ``make_loader`` batches through grain into ``{"image": (B, H, W, 3) float32,
"label": (B,) int32}``; epoch ``e`` of seed ``s`` always gives the same batches, whatever the
worker count, so training resumes exactly at an epoch boundary.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    import grain

# torchvision.datasets.folder.IMG_EXTENSIONS, matched case-insensitively like torchvision.
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
IMAGENET_DEFAULT_MEAN = (0.485, 0.456, 0.406)
IMAGENET_DEFAULT_STD = (0.229, 0.224, 0.225)
DEFAULT_CROP_PCT = 0.875
INTERPOLATIONS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
    "lanczos": Image.Resampling.LANCZOS,
}
_SHUFFLE_STREAM, _AUGMENT_STREAM = 1, 2  # first SeedSequence word: keeps the streams apart

Transform = Callable[[Image.Image, np.random.Generator], np.ndarray]


class ImageReadError(OSError):
    """An image file that cannot be opened or decoded; ``path`` names it."""

    def __init__(self, path: str, reason: BaseException | str) -> None:
        super().__init__(f"cannot read image {path}: {reason}")
        self.path = path


# ----------------------------------------------------------------------------- image folders


def find_classes(root: str | os.PathLike) -> list[str]:
    """Return the sorted class-folder names of ``root`` (torchvision's ``find_classes``)."""
    root = os.fspath(root)
    if not os.path.exists(root):
        raise ValueError(f"data folder {root} does not exist")
    if not os.path.isdir(root):
        raise ValueError(f"data folder {root} is not a directory")
    classes = sorted(entry.name for entry in os.scandir(root) if entry.is_dir())
    if not classes:
        raise ValueError(f"data folder {root} has no class subfolders (ROOT/<class>/*.jpg)")
    if len(classes) < 2:
        raise ValueError(
            f"data folder {root} has a single class folder {classes[0]!r}; "
            "classification needs at least 2 classes"
        )
    return classes


def _class_files(class_dir: str, extensions: tuple[str, ...]) -> list[str]:
    """Return image paths under ``class_dir`` in torchvision's walk order."""
    paths = []
    for dirpath, _, fnames in sorted(os.walk(class_dir, followlinks=True)):
        for fname in sorted(fnames):
            path = os.path.join(dirpath, fname)
            if path.lower().endswith(extensions):
                paths.append(path)
    return paths


def list_image_folder(
    root: str | os.PathLike, extensions: Sequence[str] = IMG_EXTENSIONS
) -> tuple[list[str], list[int], list[str]]:
    """Return ``(paths, labels, class_names)`` of ``ROOT/<class>/**/<image>``, like ImageFolder."""
    root = os.fspath(root)
    extensions = tuple(ext.lower() for ext in extensions)
    classes = find_classes(root)
    paths: list[str] = []
    labels: list[int] = []
    empty = []
    for label, name in enumerate(classes):
        found = _class_files(os.path.join(root, name), extensions)
        if not found:
            empty.append(name)
        paths += found
        labels += [label] * len(found)
    if not paths:
        raise ValueError(f"data folder {root} has no images with extensions {extensions}")
    if empty:
        raise ValueError(
            f"data folder {root}: class folders without images: {', '.join(empty)} "
            f"(extensions {extensions})"
        )
    return paths, labels, classes


def read_image(path: str | os.PathLike) -> Image.Image:
    """Return the fully decoded RGB image at ``path``, or raise ``ImageReadError`` naming it."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            img = Image.open(f)
            # Decodes everything, as torchvision's default loader; like it, PIL clips 16-bit
            # images to 255 here instead of rescaling them.
            return img.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise ImageReadError(path, err) from err


# ----------------------------------------------------------------------------- datasets


@dataclass(frozen=True, eq=False)
class ImageDataset:
    """Random-access ``(PIL RGB image, label)`` source over file paths or uint8 (N, H, W, 3) arrays.

    Compatible with grain's ``RandomAccessDataSource`` (``__len__``, ``__getitem__``).
    ``skipped`` lists unreadable files left out by ``from_folder(..., skip_bad=True)``.
    """

    images: Sequence[str] | np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]
    skipped: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        object.__setattr__(self, "labels", np.asarray(self.labels, dtype=np.int32))
        object.__setattr__(self, "class_names", tuple(self.class_names))
        if len(self.images) != len(self.labels):
            raise ValueError(f"{len(self.images)} images but {len(self.labels)} labels")

    @classmethod
    def from_folder(
        cls,
        root: str | os.PathLike,
        extensions: Sequence[str] = IMG_EXTENSIONS,
        skip_bad: bool = False,
    ) -> ImageDataset:
        """Return an image folder's dataset; ``skip_bad`` decodes all files now, drops bad ones."""
        paths, labels, classes = list_image_folder(root, extensions)
        skipped: list[str] = []
        if skip_bad:
            ok = [_is_readable(p) for p in paths]
            skipped = [p for p, good in zip(paths, ok, strict=True) if not good]
            paths = [p for p, good in zip(paths, ok, strict=True) if good]
            labels = [label for label, good in zip(labels, ok, strict=True) if good]
            if skipped:
                warnings.warn(f"skipped {len(skipped)} unreadable images in {root}", stacklevel=2)
            if not paths:
                raise ValueError(f"data folder {root} has no readable images")
        return cls(tuple(paths), np.asarray(labels), tuple(classes), tuple(skipped))

    @property
    def num_classes(self) -> int:
        """Return the number of classes."""
        return len(self.class_names)

    @property
    def num_skipped(self) -> int:
        """Return how many unreadable images were skipped."""
        return len(self.skipped)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        index = int(index)
        item = self.images[index]
        if isinstance(item, str):
            return read_image(item), int(self.labels[index])
        img = Image.fromarray(np.ascontiguousarray(item))
        return img, int(self.labels[index])

    def subset(self, indices: Sequence[int] | np.ndarray) -> ImageDataset:
        """Return the dataset restricted to ``indices`` (in that order)."""
        indices = np.asarray(indices, dtype=np.int64)
        if isinstance(self.images, np.ndarray):
            images: Sequence[str] | np.ndarray = self.images[indices]
        else:
            images = tuple(self.images[i] for i in indices)
        return ImageDataset(images, self.labels[indices], self.class_names, self.skipped)


def _is_readable(path: str) -> bool:
    """Return whether ``path`` decodes as an image."""
    try:
        read_image(path)
    except ImageReadError:
        return False
    return True


def load_digits_dataset() -> ImageDataset:
    """Return scikit-learn's 1,797 8x8 digits as uint8 RGB images (0..16 scaled to 0..255)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    gray = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)  # (N, 8, 8)
    rgb = np.repeat(gray[..., None], 3, axis=-1)  # (N, 8, 8, 3)
    return ImageDataset(rgb, digits.target, tuple(str(c) for c in range(10)))


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Return disjoint seeded ``(train, val)`` index arrays covering ``range(n)``.

    Sizes follow ``torch.utils.data.random_split(ds, [1 - f, f])``: val gets ``floor(n * f)``.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    n_val = math.floor(n * val_fraction)
    if n_val < 1 or n_val >= n:
        raise ValueError(f"cannot split {n} examples with val_fraction={val_fraction}")
    perm = np.random.default_rng(seed).permutation(n)
    return perm[n_val:], perm[:n_val]


# ----------------------------------------------------------------------------- transforms


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


# ----------------------------------------------------------------------------- configs


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


# ----------------------------------------------------------------------------- batching


def example_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """Return the augmentation generator of example ``index`` in ``epoch`` of ``seed``."""
    return np.random.default_rng([_AUGMENT_STREAM, seed, epoch, index])


def shuffle_seed(seed: int, epoch: int) -> int:
    """Return grain's shuffle seed for ``epoch`` of ``seed``."""
    return int(np.random.SeedSequence([_SHUFFLE_STREAM, seed, epoch]).generate_state(1)[0])


@dataclass(frozen=True)
class _LoadExample:
    """Picklable grain map: source index -> transformed example dict."""

    source: Any
    transform: Transform
    seed: int
    epoch: int

    def __call__(self, index: int) -> dict[str, np.ndarray]:
        img, label = self.source[index]
        image = self.transform(img, example_rng(self.seed, self.epoch, int(index)))
        return {"image": np.asarray(image, np.float32), "label": np.int32(label)}


@dataclass(frozen=True)
class Loader:
    """One epoch of batches: iterate for ``{"image", "label"}`` dicts; ``len`` is the batch count.

    ``iter(loader)`` returns a grain ``DatasetIterator`` (``get_state`` / ``set_state`` resume
    inside the epoch).
    """

    dataset: grain.IterDataset
    num_batches: int

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return iter(self.dataset)


def _mark_absl_flags_parsed() -> None:
    """Let grain's worker processes read their absl flags (defaults) outside ``app.run``.

    grain 0.2.18's ``mp_prefetch`` reads an absl flag directly and fails with
    ``UnparsedFlagAccessError`` unless flags were parsed; marking them parsed keeps defaults.
    """
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def make_loader(
    source: Any,
    transform: Transform,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int = 0,
    epoch: int = 0,
    drop_remainder: bool = False,
    worker_count: int = 0,
    num_threads: int = 1,
    prefetch: int = 2,
) -> Loader:
    """Return epoch ``epoch`` of ``source`` as grain batches, deterministic in (seed, epoch).

    The order is a grain shuffle seeded by (seed, epoch); each example's augmentation draws from
    ``example_rng(seed, epoch, source_index)``; batches are formed before any worker split. So the
    batches depend only on (seed, epoch), never on ``worker_count`` (processes) or ``num_threads``.
    """
    import grain

    if seed < 0 or epoch < 0:
        raise ValueError(f"seed and epoch must be >= 0, got seed={seed}, epoch={epoch}")
    n = len(source)
    num_batches = n // batch_size if drop_remainder else -(-n // batch_size)
    if num_batches == 0:
        raise ValueError(f"{n} examples give no batch of {batch_size} with drop_remainder=True")
    ds = grain.MapDataset.range(n)
    if shuffle:
        ds = ds.shuffle(seed=shuffle_seed(seed, epoch))
    ds = ds.map(_LoadExample(source, transform, seed, epoch))
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    buffer = max(prefetch, num_threads)
    read = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=buffer)
    it_ds = ds.to_iter_dataset(read)
    if worker_count > 0:
        _mark_absl_flags_parsed()
        it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
    return Loader(it_ds, num_batches)
