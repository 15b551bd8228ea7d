"""vitjax.data against torchvision/timm: folder listing, eval/train transforms, loader, errors."""

from __future__ import annotations

import os
from types import SimpleNamespace

import numpy as np
import pytest
import timm
import torch
import torchvision.transforms as T
import torchvision.transforms.functional as TF
from PIL import Image
from sklearn.datasets import load_digits
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import pil_loader

from parity_tests.parity import assert_close
from vitjax.training import data, transforms

ATOL = 1e-6  # float32 eval arrays; the same IEEE ops on both sides, so diffs are expected to be 0
MAX_DIFFS: dict[str, float] = {}


def _digit(index: int, size: tuple[int, int]) -> np.ndarray:
    """Return a sklearn digit upscaled to ``size=(W, H)`` with some noise, as uint8 gray."""
    digits = load_digits().images
    gray = Image.fromarray(np.round(digits[index] * 255 / 16).astype(np.uint8))
    arr = np.asarray(gray.resize(size, Image.Resampling.BILINEAR), dtype=np.int16)
    noise = np.random.default_rng(index).integers(-20, 20, arr.shape)
    return np.clip(arr + noise, 0, 255).astype(np.uint8)


def _write(path, index: int, size: tuple[int, int], mode: str) -> None:
    """Write a digit image at ``path`` in PIL ``mode`` (RGB, L, RGBA, I;16)."""
    gray = _digit(index, size)
    if mode == "L":
        img = Image.fromarray(gray)
    elif mode == "I;16":
        img = Image.fromarray(gray.astype(np.uint16) * 257)
    else:
        rgb = np.stack([gray, 255 - gray, gray // 2], axis=-1)
        if mode == "RGBA":
            rgb = np.concatenate([rgb, np.full_like(gray[..., None], 200)], axis=-1)
        img = Image.fromarray(rgb)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


FILES = [  # (class, name, size (W, H), mode): odd sizes, modes, upper-case and nested
    ("cat", "a.png", (40, 40), "RGB"),
    ("cat", "b.JPG", (53, 37), "RGB"),
    ("cat", "c.png", (30, 61), "L"),
    ("cat", "d.png", (64, 48), "RGBA"),
    ("Zebra", "e.png", (45, 45), "I;16"),
    ("Zebra", "f.jpeg", (23, 71), "L"),
    ("Zebra", "g.Png", (16, 16), "RGB"),
    ("dog", "h.jpg", (300, 240), "RGB"),
    ("dog", "sub/i.png", (57, 33), "RGB"),
    ("dog", "j.bmp", (33, 20), "RGB"),
]


@pytest.fixture(scope="module")
def image_root(tmp_path_factory):
    """Return a 3-class image folder with mixed formats, modes and sizes, plus a non-image."""
    root = tmp_path_factory.mktemp("images")
    for i, (cls, name, size, mode) in enumerate(FILES):
        _write(root / cls / name, i, size, mode)
    (root / "dog" / "notes.txt").write_text("not an image")
    return root


# ----------------------------------------------------------------------------- listing


def test_list_image_folder_matches_torch(image_root):
    paths, labels, classes = data.list_image_folder(image_root)
    ref = ImageFolder(str(image_root))
    assert classes == ref.classes == ["Zebra", "cat", "dog"]
    assert list(zip(paths, labels, strict=True)) == ref.samples
    assert len(paths) == len(FILES)


def test_image_dataset_matches_torch(image_root):
    ds = data.ImageDataset.from_folder(image_root)
    ref = ImageFolder(str(image_root))
    assert len(ds) == len(ref) and ds.class_names == tuple(ref.classes)
    for i in range(len(ds)):
        img, label = ds[i]
        ref_img, ref_label = ref[i]
        assert label == ref_label and img.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(img), np.asarray(ref_img))


# ----------------------------------------------------------------------------- eval transform


def torch_eval(path, resize, crop, interpolation, mean, std, squash=False) -> np.ndarray:
    """Return torchvision's eval pipeline output for ``path`` as float32 HWC."""
    mode = T.InterpolationMode(interpolation)
    tf = T.Compose(
        [
            T.Resize((resize, resize) if squash else resize, interpolation=mode),
            T.CenterCrop(crop),
            T.ToTensor(),
            T.Normalize(mean, std),
        ]
    )
    return tf(pil_loader(path)).permute(1, 2, 0).numpy()


def check(name: str, ours: np.ndarray, ref: np.ndarray) -> None:
    """Assert float32 and max |diff| <= ATOL via the parity helper; record the max diff."""
    assert ours.dtype == np.float32, (name, ours.dtype)
    rep = assert_close(ours, ref, name, atol=ATOL, rtol=0.0)
    MAX_DIFFS[name] = max(rep["max"], MAX_DIFFS.get(name, 0.0))


EVAL_CONFIGS = [  # (img_size, crop_pct, resize_size)
    (32, 0.875, None),
    (48, 0.9, None),
    (224, 0.875, 256),  # the notebook: Resize(256) + CenterCrop(224)
    (50, 1.0, None),
    (40, 0.875, 36),  # resize smaller than the crop: CenterCrop pads
]


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic", "nearest", "lanczos"])
@pytest.mark.parametrize(
    "img_size,crop_pct,resize_size",
    EVAL_CONFIGS,
    ids=[f"s{c[0]}-pct{c[1]}-r{c[2]}" for c in EVAL_CONFIGS],
)
def test_eval_transform_matches_torch(image_root, interpolation, img_size, crop_pct, resize_size):
    paths, _, _ = data.list_image_folder(image_root)
    mean, std = transforms.IMAGENET_DEFAULT_MEAN, transforms.IMAGENET_DEFAULT_STD
    resize = resize_size or int(img_size / crop_pct)
    for path in paths:
        ours = transforms.eval_transform(
            data.read_image(path),
            img_size,
            crop_pct=crop_pct,
            resize_size=resize_size,
            interpolation=interpolation,
        )
        ref = torch_eval(path, resize, img_size, interpolation, mean, std)
        check(f"eval[{interpolation}-{img_size}] {path}", ours, ref)


TIMM_MODELS = [
    "vit_base_patch16_224.augreg2_in21k_ft_in1k",  # bicubic, crop 0.9, mean/std 0.5
    "deit_tiny_patch16_224.fb_in1k",  # bicubic, crop 0.875, ImageNet mean/std
    "vit_base_patch16_clip_224.openai_ft_in1k",  # CLIP mean/std, crop 1.0
    "vit_medium_patch16_gap_384.sw_in12k_ft_in1k",  # crop_mode squash
]


@pytest.mark.parametrize("name", TIMM_MODELS)
def test_eval_transform_matches_timm(image_root, name):
    pretrained_cfg = timm.models.get_pretrained_cfg(name).to_dict()
    tf = timm.data.create_transform(**timm.data.resolve_data_config(pretrained_cfg=pretrained_cfg))
    config = transforms.data_config_from_pretrained_cfg(pretrained_cfg)
    ours_tf = transforms.EvalTransform(config)
    paths, _, _ = data.list_image_folder(image_root)
    for path in paths[:4]:
        ref = tf(pil_loader(path)).permute(1, 2, 0).numpy()
        check(f"timm[{name}] {path}", ours_tf(data.read_image(path)), ref)


def test_data_config_defaults_match_timm_vit():
    config = transforms.data_config_from_pretrained_cfg({})
    assert config == transforms.DataConfig()
    assert config.mean == (0.485, 0.456, 0.406) and config.std == (0.229, 0.224, 0.225)
    assert config.crop_pct == 0.875 and config.interpolation == "bicubic"
    assert config.img_size == (224, 224)
    cfg = timm.models.get_pretrained_cfg("vit_base_patch16_224.augreg2_in21k_ft_in1k").to_dict()
    config = transforms.data_config_from_pretrained_cfg(cfg)
    assert config.crop_pct == 0.9 and config.mean == (0.5, 0.5, 0.5)


# ----------------------------------------------------------------------------- train transform


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_resized_crop_matches_torch(image_root, interpolation):
    """Given the same crop box and flip, the train pipeline equals torchvision's functional ops."""
    paths, _, _ = data.list_image_folder(image_root)
    mean, std = transforms.IMAGENET_DEFAULT_MEAN, transforms.IMAGENET_DEFAULT_STD
    mode = T.InterpolationMode(interpolation)
    rng = np.random.default_rng(0)
    for path in paths:
        img = data.read_image(path)
        box = transforms.random_resized_crop_params(rng, img.height, img.width)
        for flip in (False, True):
            out = transforms.resized_crop(img, box, 24, interpolation)
            out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if flip else out
            ref = TF.resized_crop(pil_loader(path), *box, [24, 24], mode)
            ref = TF.hflip(ref) if flip else ref
            ref = TF.normalize(TF.to_tensor(ref), mean, std).permute(1, 2, 0).numpy()
            check(f"train[{interpolation}] {path}", transforms.to_array(out, mean, std), ref)


FALLBACK_CONFIGS = {  # crops that never fit: torchvision falls back deterministically
    "wide": ((10, 1000), (0.9, 1.0)),
    "tall": ((1000, 10), (0.9, 1.0)),
    "square": ((100, 100), (1.5, 2.0)),
}


@pytest.mark.parametrize(
    "name", list(FALLBACK_CONFIGS), ids=[f"fallback-{k}" for k in FALLBACK_CONFIGS]
)
def test_random_resized_crop_params_matches_torch(name):
    (height, width), scale = FALLBACK_CONFIGS[name]
    img = Image.new("RGB", (width, height))
    ref = T.RandomResizedCrop.get_params(img, list(scale), [3 / 4, 4 / 3])
    ours = transforms.random_resized_crop_params(np.random.default_rng(0), height, width, scale)
    assert ours == tuple(ref)


def test_random_resized_crop_params_distribution_matches_torch():
    """Same algorithm, different RNGs: crop statistics agree and boxes are valid."""
    height, width, n = 60, 80, 3000
    img = Image.new("RGB", (width, height))
    torch.manual_seed(0)
    ref = np.array(
        [T.RandomResizedCrop.get_params(img, [0.08, 1.0], [3 / 4, 4 / 3]) for _ in range(n)]
    )
    rng = np.random.default_rng(0)
    ours = np.array([transforms.random_resized_crop_params(rng, height, width) for _ in range(n)])
    top, left, h, w = ours.T
    assert np.all((top >= 0) & (left >= 0) & (top + h <= height) & (left + w <= width))
    for k, name in enumerate(["top", "left", "h", "w"]):
        assert abs(ours[:, k].mean() - ref[:, k].mean()) < 0.05 * ref[:, k].mean() + 0.5, name


def test_train_transform_is_seeded(image_root):
    img = data.read_image(data.list_image_folder(image_root)[0][0])
    tf = transforms.TrainTransform(transforms.DataConfig(input_size=(3, 20, 28)))
    a = tf(img, np.random.default_rng(1))
    b = tf(img, np.random.default_rng(1))
    c = tf(img, np.random.default_rng(2))
    assert a.shape == (20, 28, 3) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_train_transform_flips():
    """hflip=1 with a full-image crop is exactly a mirrored eval of the same image."""
    arr = np.random.default_rng(0).integers(0, 256, (12, 12, 3), dtype=np.uint8)
    img = Image.fromarray(arr)
    out = transforms.train_transform(
        img, np.random.default_rng(0), 12, scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=1.0
    )
    np.testing.assert_array_equal(out, transforms.to_array(img)[:, ::-1])


# ----------------------------------------------------------------------------- digits, splits


def test_load_digits_dataset_matches_sklearn():
    ds = data.load_digits_dataset()
    ref = load_digits()
    assert len(ds) == 1797 and ds.num_classes == 10
    assert ds.class_names == tuple(str(i) for i in range(10))
    np.testing.assert_array_equal(ds.labels, ref.target)
    img, label = ds[5]
    arr = np.asarray(img)
    assert img.mode == "RGB" and arr.shape == (8, 8, 3) and label == ref.target[5]
    np.testing.assert_array_equal(arr[..., 0], np.round(ref.images[5] * 255 / 16))
    assert ds.images.max() == 255 and ds.images.min() == 0


def test_digits_read_without_sklearn_loader_fall_back_to_it(monkeypatch, tmp_path):
    """The csv is read where scikit-learn keeps it; were it moved, load_digits itself answers."""
    direct = data.load_digits_dataset()
    elsewhere = SimpleNamespace(origin=str(tmp_path / "sklearn" / "__init__.py"))
    monkeypatch.setattr(data.importlib.util, "find_spec", lambda name: elsewhere)
    fallback = data.load_digits_dataset()
    assert data.fingerprint(direct) == data.fingerprint(fallback)
    monkeypatch.setattr(data.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ImportError, match=r"scikit-learn.*vitjax\[train\]"):
        data.load_digits_dataset()


@pytest.mark.parametrize("n,val_fraction", [(300, 0.3), (1797, 0.2), (7, 0.5)])
def test_split_indices_matches_torch(n, val_fraction):
    train, val = data.split_indices(n, val_fraction, seed=0)
    ref_train, ref_val = torch.utils.data.random_split(range(n), [1 - val_fraction, val_fraction])
    assert (len(train), len(val)) == (len(ref_train), len(ref_val))
    assert set(train).isdisjoint(val) and sorted([*train, *val]) == list(range(n))
    again = data.split_indices(n, val_fraction, seed=0)
    np.testing.assert_array_equal(train, again[0])
    np.testing.assert_array_equal(val, again[1])
    assert not np.array_equal(val, data.split_indices(n, val_fraction, seed=1)[1])


@pytest.mark.parametrize("n,val_fraction", [(10, 0.0), (10, 1.0), (1, 0.5), (3, 0.2)])
def test_split_indices_rejects(n, val_fraction):
    with pytest.raises(ValueError, match="val_fraction"):
        data.split_indices(n, val_fraction, seed=0)


# ----------------------------------------------------------------------------- loader


@pytest.fixture(scope="module")
def digits_subset():
    return data.load_digits_dataset().subset(np.arange(70))


def _batches(source, **kw):
    tf = transforms.TrainTransform(transforms.DataConfig(input_size=(3, 12, 12)))
    return list(data.make_loader(source, tf, 16, **kw))


def _same(a, b) -> bool:
    return len(a) == len(b) and all(
        np.array_equal(x["image"], y["image"]) and np.array_equal(x["label"], y["label"])
        for x, y in zip(a, b, strict=True)
    )


def test_make_loader_shapes_and_order(digits_subset):
    tf = transforms.EvalTransform(transforms.DataConfig(input_size=(3, 8, 8), crop_pct=1.0))
    loader = data.make_loader(digits_subset, tf, 16, shuffle=False)
    batches = list(loader)
    assert len(loader) == len(batches) == 5
    assert [b["image"].shape for b in batches] == [(16, 8, 8, 3)] * 4 + [(6, 8, 8, 3)]
    assert batches[0]["image"].dtype == np.float32 and batches[0]["label"].dtype == np.int32
    labels = np.concatenate([b["label"] for b in batches])
    np.testing.assert_array_equal(labels, digits_subset.labels)
    np.testing.assert_array_equal(batches[0]["image"][3], tf(digits_subset[3][0]))
    dropped = data.make_loader(digits_subset, tf, 16, shuffle=False, drop_remainder=True)
    assert len(dropped) == len(list(dropped)) == 4


def test_make_loader_is_deterministic(digits_subset):
    a = _batches(digits_subset, shuffle=True, seed=3, epoch=1)
    assert _same(a, _batches(digits_subset, shuffle=True, seed=3, epoch=1))
    other_epoch = _batches(digits_subset, shuffle=True, seed=3, epoch=2)
    assert not np.array_equal(a[0]["label"], other_epoch[0]["label"])
    other_seed = _batches(digits_subset, shuffle=True, seed=4, epoch=1)
    assert not np.array_equal(a[0]["label"], other_seed[0]["label"])
    labels = np.sort(np.concatenate([b["label"] for b in a]))
    np.testing.assert_array_equal(labels, np.sort(digits_subset.labels))


def test_make_loader_augmentation_independent_of_order(digits_subset):
    """Augmentation depends on (seed, epoch, source index), not on the shuffled position."""
    shuffled = _batches(digits_subset, shuffle=True, seed=0, epoch=0, num_threads=2)
    plain = _batches(digits_subset, shuffle=False, seed=0, epoch=0, num_threads=0)
    by_index = np.concatenate([b["image"] for b in plain])
    tf = transforms.TrainTransform(transforms.DataConfig(input_size=(3, 12, 12)))
    first = shuffled[0]["image"][0]
    matches = [i for i in range(len(digits_subset)) if np.array_equal(by_index[i], first)]
    assert len(matches) == 1
    i = matches[0]
    np.testing.assert_array_equal(first, tf(digits_subset[i][0], data.example_rng(0, 0, i)))


def test_make_loader_resumes_mid_epoch(digits_subset):
    loader = data.make_loader(digits_subset, transforms.EvalTransform(), 16, shuffle=True, seed=1)
    it = iter(loader)
    next(it)
    state = it.get_state()
    rest = list(it)
    it2 = iter(loader)
    it2.set_state(state)
    assert _same(rest, list(it2))


def test_make_loader_workers_give_same_batches(digits_subset):
    small = digits_subset.subset(np.arange(40))
    a = _batches(small, shuffle=True, seed=5, epoch=2)
    assert _same(a, _batches(small, shuffle=True, seed=5, epoch=2, worker_count=2))


def _shm_segments() -> set[str]:
    """POSIX shared-memory segments of Python's SharedMemory (named psm_*)."""
    names = os.listdir("/dev/shm") if os.path.isdir("/dev/shm") else []
    return {n for n in names if n.startswith("psm_")}


def test_worker_batches_leave_no_shared_memory_behind(digits_subset):
    """Batches from worker processes are plain arrays whose shared-memory segments are gone as
    soon as they are handed out: a run stopped by a signal leaves none for the resource
    tracker to report (issue 14, SIGTERM with --workers)."""
    before = _shm_segments()
    small = digits_subset.subset(np.arange(64))
    tf = transforms.EvalTransform(transforms.DataConfig(input_size=(3, 12, 12)))
    it = iter(data.make_loader(small, tf, 16, shuffle=False, worker_count=1))
    held = [next(it), next(it)]  # still referenced: nothing may depend on garbage collection
    it.close()
    assert all(type(b[k]) is np.ndarray for b in held for k in ("image", "label"))
    assert _shm_segments() - before == set()
    assert _same(held, list(data.make_loader(small, tf, 16, shuffle=False))[:2])


def test_make_loader_rejects_empty_epoch(digits_subset):
    with pytest.raises(ValueError, match="no batch"):
        data.make_loader(
            digits_subset, transforms.EvalTransform(), 100, shuffle=False, drop_remainder=True
        )


# ----------------------------------------------------------------------------- errors


def test_folder_errors_name_the_path(tmp_path):
    missing = tmp_path / "missing"
    with pytest.raises(ValueError, match=f"{missing} does not exist"):
        data.list_image_folder(missing)
    (tmp_path / "file.png").write_bytes(b"x")
    with pytest.raises(ValueError, match="is not a directory"):
        data.list_image_folder(tmp_path / "file.png")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match=f"{empty} has no class subfolders"):
        data.list_image_folder(empty)
    _write(empty / "dog" / "a.png", 0, (8, 8), "RGB")
    with pytest.raises(ValueError, match="single class folder 'dog'.*at least 2 classes"):
        data.list_image_folder(empty)
    (empty / "cat").mkdir()
    (empty / "cat" / "readme.txt").write_text("x")
    with pytest.raises(ValueError, match="class folders without images: cat"):
        data.list_image_folder(empty)
    (empty / "dog" / "a.png").unlink()
    with pytest.raises(ValueError, match="has no images"):
        data.list_image_folder(empty)


@pytest.fixture()
def bad_root(tmp_path):
    """Return a folder with 4 good images, one garbage .png and one truncated .jpg."""
    for i, cls in enumerate(["cat", "cat", "dog", "dog"]):
        _write(tmp_path / cls / f"{i}.png", i, (20, 20), "RGB")
    (tmp_path / "cat" / "garbage.png").write_bytes(b"this is not a png")
    _write(tmp_path / "dog" / "big.jpg", 9, (200, 200), "RGB")
    full = (tmp_path / "dog" / "big.jpg").read_bytes()
    (tmp_path / "dog" / "big.jpg").write_bytes(full[: len(full) // 2])
    return tmp_path


def test_bad_image_error_names_path(bad_root):
    ds = data.ImageDataset.from_folder(bad_root)
    garbage = str(bad_root / "cat" / "garbage.png")
    truncated = str(bad_root / "dog" / "big.jpg")
    with pytest.raises(data.ImageReadError, match="garbage.png") as info:
        ds[ds.images.index(garbage)]
    assert info.value.path == garbage
    with pytest.raises(data.ImageReadError, match="big.jpg"):
        ds[ds.images.index(truncated)]
    with pytest.raises(data.ImageReadError, match="garbage.png"):
        list(data.make_loader(ds, transforms.EvalTransform(), 2, shuffle=False, num_threads=0))


def test_skip_bad_counts(bad_root):
    with pytest.warns(UserWarning, match="skipped 2 unreadable images"):
        ds = data.ImageDataset.from_folder(bad_root, skip_bad=True)
    assert len(ds) == 4 and ds.num_skipped == 2
    assert sorted(ds.skipped) == sorted(
        [str(bad_root / "cat" / "garbage.png"), str(bad_root / "dog" / "big.jpg")]
    )
    batches = list(data.make_loader(ds, transforms.EvalTransform(), 3, shuffle=False))
    assert sum(len(b["label"]) for b in batches) == 4


def test_max_diffs_report():
    """Print the max |diff| seen per parity check (run with -s to see it)."""
    if MAX_DIFFS:
        print(
            f"\nmax |diff| over {len(MAX_DIFFS)} transform parity checks: {max(MAX_DIFFS.values())}"
        )
