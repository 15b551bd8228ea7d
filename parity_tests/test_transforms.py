"""vitjax.training.transforms against timm: resolve_data_config and the eval create_transform."""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from sklearn.datasets import load_digits, load_sample_images
from timm.models import get_pretrained_cfg
from torchvision.datasets.folder import pil_loader

from parity_tests.parity import assert_close
from vitjax import registry
from vitjax.training import transforms

MAX_DIFFS: dict[str, float] = {}  # case -> max |diff| over its images (all expected to be 0)


def _digit(index: int, size: tuple[int, int] | None) -> np.ndarray:
    """Return sklearn digit ``index`` as uint8 gray, upscaled (bilinear) to ``size=(W, H)``."""
    gray = np.round(load_digits().images[index] * 255 / 16).astype(np.uint8)
    if size is None:
        return gray
    return np.asarray(Image.fromarray(gray).resize(size, Image.Resampling.BILINEAR))


def _sample(index: int, size: tuple[int, int] | None, portrait: bool = False) -> Image.Image:
    """Return sklearn sample photo ``index`` (640x427), transposed and/or resized to (W, H)."""
    img = Image.fromarray(load_sample_images().images[index])
    img = img.transpose(Image.Transpose.TRANSPOSE) if portrait else img
    return img if size is None else img.resize(size, Image.Resampling.LANCZOS)


def _images() -> dict[str, Image.Image]:
    """Real images: photos and digits, landscape and portrait, odd sizes, several modes."""
    g = _digit(7, (61, 29))
    return {
        "china_640x427.jpg": _sample(0, None),
        "flower_427x640.png": _sample(1, None, portrait=True),
        "china_301x199.jpg": _sample(0, (301, 199)),
        "flower_157x263.png": _sample(1, (157, 263), portrait=True),
        "china_97x97_rgba.png": _sample(0, (97, 97)).convert("RGBA"),
        "digit_8x8_l.png": Image.fromarray(_digit(3, None)),
        "digit_37x53_l.jpg": Image.fromarray(_digit(5, (37, 53))),
        "digit_61x29_rgb.png": Image.fromarray(np.stack([g, 255 - g, g // 2], axis=-1)),
        "digit_45x45_p.png": Image.fromarray(_digit(9, (45, 45))).convert("P"),
    }


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """torch's elementwise ops on small images run ~10x slower with threads on a busy CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@dataclass
class ImageFile:
    """An image file, decoded once: as written (ours converts it) and as timm's loader reads it."""

    path: str
    raw: Image.Image
    rgb: Image.Image


@pytest.fixture(scope="module")
def image_files(tmp_path_factory) -> list[ImageFile]:
    """Write the real images as JPEG/PNG files and read each back once."""
    root = tmp_path_factory.mktemp("transform_images")
    files = []
    for name, img in _images().items():
        path = root / name
        if name.endswith(".jpg"):
            img.save(path, quality=90)
        else:
            img.save(path)
        with Image.open(path) as raw:
            raw.load()
        files.append(ImageFile(str(path), raw, pil_loader(str(path))))
    return files


def check(case: str, tf, ref_tf, files: list[ImageFile], mode: str = "RGB") -> None:
    """Assert ours(file) == timm's(file) bit for bit on every file; record the max |diff|."""
    for f in files:
        ours = tf(f.raw)  # ours converts the mode itself, as timm's ImageDataset does first
        ref = ref_tf(f.rgb if mode == "RGB" else f.raw.convert(mode))
        assert isinstance(ref, torch.Tensor)
        ref = ref.permute(1, 2, 0).numpy()
        assert ours.dtype == ref.dtype, (case, f.path, ours.dtype, ref.dtype)
        rep = assert_close(ours, ref, f"transform[{case}] {f.path}", dtype="exact")
        MAX_DIFFS[case] = max(rep["max"], MAX_DIFFS.get(case, 0.0))


# ----------------------------------------------------------------------------- eval transforms

SIZES = [  # (input_size, crop_pct): square, landscape, portrait, odd, crop_pct > 1 (pads)
    ((3, 224, 224), 0.875),
    ((3, 40, 56), 0.9),
    ((3, 61, 33), 1.0),
    ((3, 37, 37), 1.15),
]
INTERPOLATIONS = ["bilinear", "bicubic", "nearest", "lanczos", "box", "hamming"]


@pytest.mark.parametrize("interpolation", INTERPOLATIONS)
@pytest.mark.parametrize("crop_mode", ["center", "squash", "border"])
def test_create_transform_matches_timm(image_files, crop_mode, interpolation):
    for input_size, crop_pct in SIZES:
        args = {
            "input_size": input_size,
            "crop_pct": crop_pct,
            "crop_mode": crop_mode,
            "interpolation": interpolation,
        }
        ref_tf = timm.data.create_transform(**timm.data.resolve_data_config(args))
        tf = transforms.create_transform(transforms.resolve_data_config(args))
        case = f"{crop_mode}-{interpolation}-{input_size[1]}x{input_size[2]}-pct{crop_pct}"
        check(case, tf, ref_tf, image_files)


PRETRAINED = [  # (name, use_test_size): each (interpolation, crop_mode) timm's configs use
    ("vit_base_patch16_224.augreg2_in21k_ft_in1k", False),  # bicubic center, crop 0.9, mean 0.5
    ("vit_base_patch16_clip_224.openai_ft_in1k", False),  # CLIP mean/std
    ("resnet18.tv_in1k", False),  # bilinear center
    ("resnet50.a1_in1k", False),  # crop 0.95
    ("resnet50.a1_in1k", True),  # test_input_size 288, test_crop_pct 1.0
    ("coat_lite_medium_384.in1k", False),  # bicubic squash
    ("vit_base_patch16_sapiens2.fb", False),  # bilinear squash, 1024x768
    ("deepseek_vit_412m.deepseek_v4_flash_vision_exp", False),  # bicubic border, 392
    ("volo_d4_448.sail_in1k", False),  # crop_pct 1.15
]


@pytest.mark.parametrize(
    "name,use_test_size", PRETRAINED, ids=[f"{n}-test{t}" for n, t in PRETRAINED]
)
def test_pretrained_transform_matches_timm(image_files, name, use_test_size):
    pretrained_cfg = get_pretrained_cfg(name).to_dict()
    ref = timm.data.resolve_data_config(pretrained_cfg=pretrained_cfg, use_test_size=use_test_size)
    ours = transforms.resolve_data_config(
        pretrained_cfg=pretrained_cfg, use_test_size=use_test_size
    )
    assert ours == ref
    ref_tf = timm.data.create_transform(**ref)
    check(f"{name}-test{use_test_size}", transforms.create_transform(ours), ref_tf, image_files[:4])
    check(f"{name}-kwargs", transforms.create_transform(**ours), ref_tf, image_files[4:6])


@pytest.mark.parametrize(
    "options",
    [
        {"normalize": False},
        {"use_prefetcher": True},
        {"crop_border_pixels": 5},
        {"crop_border_pixels": 30, "crop_mode": "border", "interpolation": "bilinear"},
    ],
    ids=["uint8", "prefetcher", "trim5", "trim30-border"],
)
def test_create_transform_options_match_timm(image_files, options):
    config = {"input_size": (3, 48, 40), "crop_pct": 0.9, "mean": (0.3, 0.4, 0.5)}
    ref_tf = timm.data.create_transform(**config, **options)
    tf = transforms.create_transform(config, **options)
    # files larger than twice the trimmed border (timm fails on an empty image as well)
    check(f"options-{sorted(options.items())}", tf, ref_tf, image_files[:5])


@pytest.mark.parametrize(
    "call",
    ["int", "pair", "defaults"],
)
def test_create_transform_input_forms_match_timm(image_files, call):
    """timm's own defaults (bilinear, crop 0.875) for an int, an (H, W) or no input size."""
    ref_tf, tf = {
        "int": lambda: (timm.data.create_transform(40), transforms.create_transform(40)),
        "pair": lambda: (
            timm.data.create_transform((33, 45), crop_mode="squash"),
            transforms.create_transform((33, 45), crop_mode="squash"),
        ),
        "defaults": lambda: (timm.data.create_transform(), transforms.create_transform()),
    }[call]()
    check(f"input-{call}", tf, ref_tf, image_files[2:])


def test_create_transform_one_channel_matches_timm(image_files):
    """in_chans=1: images read as "L" (timm's train.py rule), one-value mean/std."""
    config = timm.data.resolve_data_config(
        {"input_size": (1, 30, 30), "mean": (0.4,), "std": (0.2,)}
    )
    ref_tf = timm.data.create_transform(**config)
    tf = transforms.create_transform(transforms.DataConfig.from_dict(config))
    check("one-channel", tf, ref_tf, image_files, mode="L")
    assert tf(image_files[0].raw).shape == (30, 30, 1)


def test_create_transform_is_picklable(image_files):
    tf = transforms.create_transform({"input_size": (3, 24, 32), "crop_mode": "border"})
    again = pickle.loads(pickle.dumps(tf))
    assert again == tf
    img = image_files[1].raw
    np.testing.assert_array_equal(again(img), tf(img))


def test_create_transform_train_uses_config(image_files):
    config = {"input_size": (3, 20, 28), "interpolation": "bilinear", "mean": (0.5,) * 3}
    tf = transforms.create_transform(config, is_training=True, scale=(0.5, 1.0), hflip=1.0)
    assert isinstance(tf, transforms.TrainTransform)
    img = image_files[2].raw
    out = tf(img, np.random.default_rng(3))
    ref = transforms.train_transform(
        img,
        np.random.default_rng(3),
        (20, 28),
        scale=(0.5, 1.0),
        hflip=1.0,
        interpolation="bilinear",
        mean=(0.5,) * 3,
    )
    np.testing.assert_array_equal(out, ref)


def test_create_transform_rejects():
    with pytest.raises(ValueError, match="unknown crop_mode 'sqash'"):
        transforms.create_transform({"input_size": (3, 8, 8), "crop_mode": "sqash"})
    with pytest.raises(ValueError, match="unknown interpolation 'random'"):
        transforms.create_transform(interpolation="random")
    with pytest.raises(TypeError, match=r"unknown data-config keys \[.*'num_classes'"):
        transforms.create_transform(get_pretrained_cfg("resnet18.tv_in1k").to_dict())
    tf = transforms.create_transform({"input_size": (3, 8, 8), "mean": (0.5, 0.5)})
    with pytest.raises(ValueError, match="do not fit a 3-channel RGB image"):
        tf(Image.new("RGB", (9, 9)))


# ----------------------------------------------------------------------------- resolve_data_config

ARGS = [
    {},
    {"img_size": 160},
    {"input_size": [3, 50, 70]},
    {"input_size": (1, 64, 48), "mean": (0.3,), "std": (0.2,)},
    {"in_chans": 2, "mean": [0.5], "std": (0.1, 0.2)},
    {"chans": 4, "img_size": 96, "mean": (0.1,)},
    {"interpolation": "lanczos", "crop_pct": 1.0, "crop_mode": "border"},
    {"crop_pct": 0, "interpolation": "", "crop_mode": None, "mean": None, "input_size": None},
]


def _typed(config: dict) -> dict:
    """The config with each value's type, so a list never passes for a tuple."""
    return {k: (type(v).__name__, v) for k, v in config.items()}


def test_resolve_data_config_matches_timm_for_every_pretrained_cfg():
    names = timm.list_pretrained()
    assert len(names) > 1000
    for name in names:
        pretrained_cfg = get_pretrained_cfg(name).to_dict()
        for use_test_size in (False, True):
            for args in ARGS[:2] if use_test_size else ARGS:
                kw = {
                    "args": args,
                    "pretrained_cfg": pretrained_cfg,
                    "use_test_size": use_test_size,
                }
                ref = timm.data.resolve_data_config(**kw)
                assert _typed(transforms.resolve_data_config(**kw)) == _typed(ref), (name, kw)


@pytest.mark.parametrize("args", ARGS[1:], ids=[str(i) for i in range(1, len(ARGS))])
def test_resolve_data_config_args_match_timm(args):
    assert _typed(transforms.resolve_data_config(args)) == _typed(
        timm.data.resolve_data_config(args)
    )


def test_resolve_data_config_model_matches_timm():
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=1)
    for args in ARGS:
        ref = timm.data.resolve_data_config(args, model=model)
        assert transforms.resolve_data_config(args, model=model) == ref
        assert transforms.resolve_model_data_config(model, args) == ref
    holder = SimpleNamespace(pretrained_cfg=get_pretrained_cfg("resnet50.a1_in1k").to_dict())
    for use_test_size in (False, True):
        ref = timm.data.resolve_data_config(model=holder, use_test_size=use_test_size)
        assert transforms.resolve_data_config(model=holder, use_test_size=use_test_size) == ref


def test_resolve_data_config_vitjax_model():
    """A vitjax model (or its config) stands in for timm's: its own input size, timm's rest."""
    ref_model = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, depth=1, img_size=(48, 64), in_chans=1
    )
    cfg = registry.get_config("vit_tiny_patch16_224", depth=1, img_size=(48, 64), in_chans=1)
    model = registry.model_module("vit").MODEL(cfg)
    size = {"input_size": (ref_model.patch_embed.proj.in_channels, *ref_model.patch_embed.img_size)}
    pretrained_cfg = dict(ref_model.pretrained_cfg)
    for args in ARGS:
        ref = timm.data.resolve_data_config(args, pretrained_cfg=size)
        assert transforms.resolve_data_config(args, model=model) == ref
        assert transforms.resolve_data_config(args, model=cfg) == ref
        ref = timm.data.resolve_data_config(args, pretrained_cfg=pretrained_cfg)
        assert transforms.resolve_data_config(args, pretrained_cfg, model) == ref


@pytest.mark.parametrize(
    "args",
    [None, {"input_size": (224, 224)}, {"img_size": (224, 224)}, {"in_chans": 1, "mean": (1, 2)}],
    ids=["nothing", "input_size-2", "img_size-pair", "mean-len"],
)
def test_resolve_data_config_rejects_what_timm_rejects(args):
    with pytest.raises(AssertionError):
        timm.data.resolve_data_config(args)
    with pytest.raises(ValueError):
        transforms.resolve_data_config(args)


def test_max_diffs_report():
    """Every transform case recorded above is bit-exact; prints them (run with -s to see it)."""
    if MAX_DIFFS:
        print(f"\nmax |diff| over {len(MAX_DIFFS)} transform cases: {max(MAX_DIFFS.values())}")
        for case, d in sorted(MAX_DIFFS.items()):
            print(f"  {case}: {d}")
    assert all(d == 0.0 for d in MAX_DIFFS.values())
