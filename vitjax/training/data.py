"""Image data: folders and embedded digits, torchvision-equal transforms, splits, grain batching.

numpy out, no deep-learning framework inside. Images are PIL images until a transform turns them
into float32 HWC arrays equal to torchvision's PIL path (``ToTensor`` + ``Normalize``, transposed
to HWC). ``make_loader`` batches through grain into ``{"image": (B, H, W, 3) float32,
"label": (B,) int32}``; epoch ``e`` of seed ``s`` always gives the same batches, whatever the
worker count, so training resumes exactly at an epoch boundary.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import json
import math
import os
import signal
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    import grain

# torchvision.datasets.folder.IMG_EXTENSIONS, matched case-insensitively like torchvision.
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
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


def _class_files(
    class_dir: str, extensions: tuple[str, ...], seen_dirs: set[str], seen_files: set[str],
    root_real: str,
) -> tuple[list[str], list[str]]:  # fmt: skip
    """Image paths under ``class_dir`` in torchvision's walk order, and the links not followed.

    Links are followed like ``os.walk(followlinks=True)``, but each real folder and file counts
    once (``seen_*`` hold real paths, shared between class folders): a link back to an ancestor
    (a loop), to a folder already listed, or into another class's folder is skipped, so the
    walk is linear in the tree and no image gets another class's label.
    """
    found: list[tuple[str, list[tuple[str, str]]]] = []  # (folder, [(name, real path)])
    skipped: list[str] = []
    class_real = os.path.realpath(class_dir)
    stack = [(class_dir, class_real)]
    while stack:
        path, real = stack.pop()
        try:
            with os.scandir(path) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError:  # unreadable folder: os.walk skips it too
            continue
        files, subdirs = [], []
        for entry in entries:
            linked = entry.is_symlink()
            target = os.path.realpath(entry.path) if linked else os.path.join(real, entry.name)
            if not _is_dir(entry):
                files.append((entry.name, target))
            elif (
                target in seen_dirs
                or _is_ancestor(target, real)
                or (_is_ancestor(root_real, target) and not _is_ancestor(class_real, target))
            ):
                skipped.append(entry.path)
            else:
                seen_dirs.add(target)
                subdirs.append((entry.path, target))
        found.append((path, files))
        stack.extend(reversed(subdirs))
    paths = []
    for dirpath, files in sorted(found):
        for name, target in files:
            if name.lower().endswith(extensions) and target not in seen_files:
                seen_files.add(target)
                paths.append(os.path.join(dirpath, name))
    return paths, skipped


def _is_dir(entry: os.DirEntry) -> bool:
    """Whether an entry is a folder or a link to one (os.walk's test)."""
    try:
        return entry.is_dir()
    except OSError:
        return False


def _is_ancestor(path: str, of: str) -> bool:
    """Whether real path ``path`` is ``of`` or a folder above it."""
    return of == path or of.startswith(path.rstrip(os.sep) + os.sep)


def list_image_folder(
    root: str | os.PathLike, extensions: Sequence[str] = IMG_EXTENSIONS
) -> tuple[list[str], list[int], list[str]]:
    """Return ``(paths, labels, class_names)`` of ``ROOT/<class>/**/<image>``, like ImageFolder.

    Symbolic links are followed; each real folder and file is listed once (a warning names the
    links that loop or repeat a folder).
    """
    root = os.fspath(root)
    extensions = tuple(ext.lower() for ext in extensions)
    classes = find_classes(root)
    root_real = os.path.realpath(root)
    seen_dirs = {os.path.realpath(os.path.join(root, name)) for name in ["", *classes]}
    seen_files: set[str] = set()
    paths: list[str] = []
    labels: list[int] = []
    empty, skipped = [], []
    for label, name in enumerate(classes):
        found, links = _class_files(
            os.path.join(root, name), extensions, seen_dirs, seen_files, root_real
        )
        skipped += links
        if not found:
            empty.append(name)
        paths += found
        labels += [label] * len(found)
    if skipped:
        warnings.warn(
            f"data folder {root}: {len(skipped)} linked folders not followed (each loops back, "
            f"repeats a folder already listed or leads into another class), e.g. {skipped[0]}",
            stacklevel=2,
        )
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


def _digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits as (images (N, 8, 8) float 0..16, targets (N,) int).

    Read as sklearn.datasets.load_digits reads its bundled digits.csv.gz (np.loadtxt), from
    where the package lies but without importing it: importing scikit-learn (and the scipy it
    pulls in) takes 1.4 s here, 20 times the read. load_digits itself if the file moved.
    """
    spec = importlib.util.find_spec("sklearn")
    if spec is None:
        raise ImportError("the digits data set needs scikit-learn: pip install 'vitjax[train]'")
    path = Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz"
    if not path.is_file():
        from sklearn.datasets import load_digits

        digits = load_digits()
        return digits.images, digits.target
    table = np.loadtxt(path, delimiter=",")
    return table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(int)


def load_digits_dataset() -> ImageDataset:
    """Return scikit-learn's 1,797 8x8 digits as uint8 RGB images (0..16 scaled to 0..255)."""
    images, target = _digits()
    gray = np.round(images * (255.0 / 16.0)).astype(np.uint8)  # (N, 8, 8)
    rgb = np.repeat(gray[..., None], 3, axis=-1)  # (N, 8, 8, 3)
    return ImageDataset(rgb, target, tuple(str(c) for c in range(10)))


def fingerprint(ds: ImageDataset, root: str | os.PathLike | None = None) -> dict[str, Any]:
    """The identity of a dataset's listing, JSON-ready: sha256 and image counts per class.

    Hashes the class names and, in order, each (label, path relative to ``root``) (array
    datasets: the image bytes); file contents are not read. The split and the labels depend
    on exactly this, so equal fingerprints give the same train/val split.
    """
    h = hashlib.sha256(json.dumps(list(ds.class_names)).encode())
    if isinstance(ds.images, np.ndarray):
        images = np.ascontiguousarray(ds.images)
        h.update(f"{images.dtype.str}{images.shape}".encode())
        h.update(memoryview(images.reshape(-1).view(np.uint8)))
        h.update(np.ascontiguousarray(ds.labels, "<i4").tobytes())
    else:
        for path, label in zip(ds.images, ds.labels, strict=True):
            rel = os.path.relpath(path, root) if root is not None else path
            h.update(b"%d\t%s\n" % (label, os.fsencode(rel)))
    counts = np.bincount(ds.labels, minlength=len(ds.class_names))
    return {
        "sha256": h.hexdigest(),
        "num_images": len(ds),
        "class_counts": {name: int(n) for name, n in zip(ds.class_names, counts, strict=True)},
    }


def describe_change(old: dict[str, Any], new: dict[str, Any]) -> str:
    """What differs between two fingerprints, in words ('' when they are equal)."""
    if old.get("sha256") == new.get("sha256"):
        return ""
    before, after = old.get("class_counts") or {}, new.get("class_counts") or {}
    parts = []
    if gone := [c for c in before if c not in after]:
        parts.append(f"classes removed: {', '.join(gone)}")
    if added := [c for c in after if c not in before]:
        parts.append(f"classes added: {', '.join(added)}")
    changed = [
        f"{c} {before[c]} -> {after[c]}" for c in after if c in before and before[c] != after[c]
    ]
    if changed:
        parts.append(f"images per class: {', '.join(changed)}")
    total = f"{old.get('num_images', '?')} -> {new.get('num_images', '?')} images"
    if not parts:
        parts.append("same classes and counts, but other files or another order")
    return f"{total}; {'; '.join(parts)}"


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


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@dataclass(frozen=True)
class Loader:
    """One epoch of batches: iterate for ``{"image", "label"}`` dicts; ``len`` is the batch count.

    ``iter(loader)`` returns a grain ``DatasetIterator`` (``get_state`` / ``set_state`` resume
    inside the epoch). With worker processes, Ctrl-C and SIGTERM are the main process's alone:
    the workers start with them blocked, then ignore them, and end when the loader is closed.
    """

    dataset: grain.IterDataset
    num_batches: int
    workers: int = 0

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        if not self.workers or threading.current_thread() is not threading.main_thread():
            return iter(self.dataset)
        return _MainProcessSignals(self.dataset)


class _MainProcessSignals:
    """A grain iterator whose start (threads, worker processes) runs with Ctrl-C and SIGTERM
    blocked: the workers inherit the mask, so a signal to the whole process group reaches
    only the main process's handler. Each batch comes out of the workers' shared memory as
    ordinary arrays, its segments unlinked at once (see _out_of_shared_memory). Other
    attributes (get_state, close) are the iterator's."""

    def __init__(self, dataset: grain.IterDataset) -> None:
        with _blocked(STOP_SIGNALS):
            self._it = iter(dataset)
        self._started = False

    def __iter__(self) -> _MainProcessSignals:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        if self._started:
            return _out_of_shared_memory(next(self._it))
        self._started = True
        with _blocked(STOP_SIGNALS):
            return _out_of_shared_memory(next(self._it))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._it, name)


def _out_of_shared_memory(batch: dict[str, Any]) -> dict[str, Any]:
    """The batch's arrays copied out of grain's shared memory, each segment unlinked now.

    grain (0.2.18) unlinks a segment when its array is garbage collected, in a daemon thread
    pool; a run stopped by a signal exits before that pool runs, and Python's resource tracker
    then reports "leaked shared_memory objects". A copy (a few ms for a batch) and an unlink
    here leave nothing behind, whenever the run ends.
    """
    from grain.multiprocessing import SharedMemoryArray

    out = {}
    for key, value in batch.items():
        if isinstance(value, SharedMemoryArray):
            plain = np.array(value)  # an ordinary array (np.array makes a base-class copy)
            value._unlink_on_del = False  # its __del__ now only unmaps (grain's own flag)
            value.shm.unlink()
            value = plain
        out[key] = value
    return out


@contextlib.contextmanager
def _blocked(signals: Sequence[int]) -> Iterator[None]:
    """Signals held back in this thread (and in what it starts) for the duration."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _quiet_worker(index: int, count: int, parent: int) -> None:
    """grain worker set-up: leave Ctrl-C and SIGTERM to the main process (pid parent); end
    with it."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)

    def watch() -> None:  # a main process killed with -9 leaves no one to stop the workers
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, daemon=True, name="vitjax-parent-watch").start()


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
        options = grain.MultiprocessingOptions(num_workers=worker_count)
        init = functools.partial(_quiet_worker, parent=os.getpid())  # not getppid: it may be 1
        it_ds = it_ds.mp_prefetch(options, worker_init_fn=init)
    return Loader(it_ds, num_batches, worker_count)
