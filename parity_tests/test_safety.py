"""Untrusted and corrupt weight files, checkpoint/model mismatches, odd image folders.

A pickle whose unpickling would run code is refused by every loader and the code never runs;
truncated files give an error naming the file; a checkpoint that does not fit the model gives one
error listing every offending key with its expected and found shapes; a new head or input size is
an explicit option. No module of vitjax/ or scripts/ unpickles without weights_only.
"""

from __future__ import annotations

import importlib.util
import pickle
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from vitjax import factory as models
from vitjax import predict
from vitjax.models.vit import VisionTransformer
from vitjax.registry import get_config
from vitjax.training import data
from vitjax.weights import files as io
from vitjax.weights.convert import WeightMismatchError

ROOT = Path(__file__).resolve().parents[1]
NAME = "vit_tutorial_patch16_32"
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
TINY = {"patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2, "img_size": 16}


class _Payload:
    """Unpickling this writes ``marker``: a stand-in for code an attacker would run."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(dir, model, variables, state_dict) of a tiny 3-class model, saved as safetensors."""
    d = tmp_path_factory.mktemp("tiny")
    model, variables = models.create_model(NAME, num_classes=3, **TINY)
    sd = models.to_timm_state_dict(model, variables)
    from safetensors.numpy import save_file

    save_file(sd, str(d / "tiny.safetensors"))
    models.save_pretrained(d / "pretrained", model, variables)
    return d, model, variables, sd


def evil_files(tmp_path: Path) -> tuple[Path, list[Path]]:
    """A marker path and malicious files: torch-zip .pth, raw-pickle .bin, fake .safetensors."""
    torch = pytest.importorskip("torch")
    marker = tmp_path / "PWNED"
    pth = tmp_path / "evil.pth"
    torch.save({"state_dict": {"x": torch.zeros(2)}, "extra": _Payload(marker)}, pth)
    raw = pickle.dumps({"x": _Payload(marker)})
    (tmp_path / "evil.bin").write_bytes(raw)
    (tmp_path / "evil.safetensors").write_bytes(raw)
    fake_dir = tmp_path / "evil_dir"
    fake_dir.mkdir()
    (fake_dir / io.CONFIG_NAME).write_text('{"model_config": {}}')
    (fake_dir / io.WEIGHTS_NAME).write_bytes(raw)
    files = [pth, tmp_path / "evil.bin", tmp_path / "evil.safetensors", fake_dir]
    return marker, files


def load_script(name: str):
    """scripts/<name> imported as a module (its main(argv) runs in this process)."""
    spec = importlib.util.spec_from_file_location(f"_script_{name}", ROOT / "scripts" / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ----------------------------------------------------------------------------- untrusted files


def test_code_in_pickle_never_runs_library(tmp_path):
    """io.load_state_dict, create_model(checkpoint_path), load_pretrained, load_trained refuse."""
    marker, (pth, binf, fake_st, fake_dir) = evil_files(tmp_path)
    for path in (pth, binf):
        for load in (
            io.load_state_dict,
            lambda p: models.create_model(NAME, checkpoint_path=p, **TINY),
            lambda p: predict.load_trained(p, NAME, **TINY),
        ):
            with pytest.raises(io.CheckpointError, match=r"refused.*safetensors") as info:
                load(path)
            assert str(path) in str(info.value)
    with pytest.raises(io.CheckpointError, match="not a readable safetensors file"):
        models.create_model(NAME, checkpoint_path=fake_st, **TINY)
    with pytest.raises(io.CheckpointError):
        models.load_pretrained(fake_dir)
    assert not marker.exists(), "unpickling ran the payload"


def test_code_in_pickle_never_runs_cli(tmp_path, capsys):
    """train.py --init, predict.py and convert_timm.py --checkpoint refuse: one line, exit != 0."""
    marker, (pth, binf, _, _) = evil_files(tmp_path)
    train, predict = load_script("train.py"), load_script("predict.py")
    img = tmp_path / "x.png"
    from PIL import Image

    Image.new("RGB", (16, 16)).save(img)
    calls = [
        (train.main, ["--init", str(pth), "--out", str(tmp_path / "run"), "--epochs", "1"]),
        (predict.main, [str(binf), str(img), "--model", NAME]),
    ]
    for main, argv in calls:
        with pytest.raises(SystemExit) as info:
            main(argv)
        msg = str(info.value.code)
        assert "refused" in msg and "safetensors" in msg and "\n" not in msg, msg
    convert = load_script("convert_timm.py")
    assert convert.main([NAME, "--checkpoint", str(pth), "--out", str(tmp_path / "o")]) != 0
    err = capsys.readouterr().err
    assert "refused" in err and "Traceback" not in err
    assert not marker.exists(), "unpickling ran the payload"


def _call_text(text: str, start: int) -> str:
    """The source of a call from its opening parenthesis (just before start) to its close."""
    depth = 1
    for i in range(start, len(text)):
        depth += {"(": 1, ")": -1}.get(text[i], 0)
        if depth == 0:
            return text[start - 1 : i + 1]
    return text[start - 1 :]


def test_no_unsafe_unpickling_in_sources():
    """No pickle.load(s), np.load(allow_pickle=True), or torch.load without weights_only=True."""
    bad = []
    files = [*(ROOT / "vitjax").rglob("*.py"), *(ROOT / "scripts").rglob("*.py")]
    for path in files:
        text = path.read_text()
        for m in re.finditer(r"pickle\.loads?\(|allow_pickle\s*=\s*True|torch\.load\(", text):
            call = _call_text(text, m.end())
            if m.group().startswith("torch.load") and "weights_only=True" in call:
                continue
            line = text.count("\n", 0, m.start()) + 1
            bad.append(f"{path.relative_to(ROOT)}:{line}: {m.group()}{call[1:]}")
    assert not bad, "unsafe unpickling:\n" + "\n".join(bad)


# ----------------------------------------------------------------------------- corrupt files


def _truncate(src: Path, dst: Path, keep: float = 0.5) -> Path:
    raw = src.read_bytes()
    dst.write_bytes(raw[: int(len(raw) * keep)])
    return dst


def test_truncated_files_name_the_file(tiny, tmp_path):
    d, _, _, sd = tiny
    torch = pytest.importorskip("torch")
    torch.save({k: torch.from_numpy(v) for k, v in sd.items()}, tmp_path / "full.pth")
    np.savez(tmp_path / "full.npz", **{k.replace(".", "/"): v for k, v in sd.items()})
    cases = {
        _truncate(d / "tiny.safetensors", tmp_path / "cut.safetensors"): "safetensors",
        _truncate(tmp_path / "full.pth", tmp_path / "cut.pth"): "PyTorch checkpoint",
        _truncate(tmp_path / "full.npz", tmp_path / "cut.npz"): "npz",
    }
    (tmp_path / "empty.safetensors").write_bytes(b"")
    cases[tmp_path / "empty.safetensors"] = "safetensors"
    for path, what in cases.items():
        with pytest.raises(io.CheckpointError, match=what) as info:
            models.create_model(NAME, checkpoint_path=path, **TINY)
        assert str(path) in str(info.value)


def test_corrupt_pretrained_dir_names_the_file(tiny, tmp_path):
    import shutil

    d = tiny[0]
    bad_cfg = tmp_path / "bad_cfg"
    shutil.copytree(d / "pretrained", bad_cfg)
    _truncate(bad_cfg / io.CONFIG_NAME, bad_cfg / io.CONFIG_NAME)
    with pytest.raises(io.CheckpointError, match=rf"{bad_cfg / io.CONFIG_NAME}: not valid JSON"):
        models.load_pretrained(bad_cfg)
    bad_w = tmp_path / "bad_weights"
    shutil.copytree(d / "pretrained", bad_w)
    _truncate(bad_w / io.WEIGHTS_NAME, bad_w / io.WEIGHTS_NAME)
    with pytest.raises(io.CheckpointError, match=rf"{bad_w / io.WEIGHTS_NAME}: not a readable"):
        models.load_pretrained(bad_w)
    with pytest.raises(io.CheckpointError, match="missing"):
        models.load_pretrained(tmp_path)
    with pytest.raises(io.CheckpointError, match="no such file"):
        models.create_model(NAME, checkpoint_path=tmp_path / "nope.safetensors")


# ----------------------------------------------------------------------------- mismatches


def _mismatch(path: Path, **overrides) -> str:
    model = VisionTransformer(get_config(NAME, **{**TINY, **overrides}))
    with pytest.raises(WeightMismatchError) as info:
        models.load_checkpoint(model, path)
    return str(info.value)


def test_mismatch_lists_every_key_and_shape(tiny):
    path = tiny[0] / "tiny.safetensors"
    msg = _mismatch(path, num_classes=5)
    assert str(path) in msg
    assert "head.weight: expected (5, 32), found (3, 32)" in msg
    assert "head.bias: expected (5,), found (3,)" in msg
    msg = _mismatch(path, num_classes=3, depth=2)
    missing = {line.split()[2].rstrip(":") for line in msg.splitlines() if "missing key" in line}
    assert len(missing) == 11 and all(k.startswith("blocks.1.") for k in missing), msg
    msg = _mismatch(path, num_classes=3, qkv_bias=True)
    assert "missing key blocks.0.attn.qkv.bias: expected shape (96,)" in msg, msg
    model = VisionTransformer(get_config(NAME, **TINY, num_classes=3))
    extra = {**tiny[3], "blocks.0.ls1.gamma": np.ones(32, np.float32)}
    with pytest.raises(WeightMismatchError, match=r"unexpected key blocks\.0\.ls1\.gamma: shape"):
        models.load_checkpoint(model, extra)
    msg = _mismatch(path, num_classes=3, embed_dim=64, num_heads=2)
    wrong = [line for line in msg.splitlines() if "wrong shape" in line]
    assert len(wrong) >= 14 and "pos_embed: expected (1, 5, 64), found (1, 5, 32)" in msg
    assert "the checkpoint holds: embed_dim=32" in msg


def test_wrong_model_name_for_checkpoint(tiny):
    path = tiny[0] / "tiny.safetensors"
    with pytest.raises(WeightMismatchError, match="does not fit") as info:
        models.create_model("vit_small_patch16_224", checkpoint_path=path)
    msg = str(info.value)
    assert "wrong shape for cls_token: expected (1, 1, 384), found (1, 1, 32)" in msg
    assert "missing key blocks.11." in msg


def test_new_head_and_img_size_are_explicit(tiny):
    """num_classes / img_size overrides give a fresh head / resampled pos_embed; others kept."""
    path, sd = tiny[0] / "tiny.safetensors", tiny[3]
    _, v = models.create_model(NAME, checkpoint_path=path, **{**TINY, "num_classes": 7})
    p = v["params"]
    assert p["head"]["kernel"].shape == (32, 7)
    np.testing.assert_array_equal(np.asarray(p["cls_token"]), sd["cls_token"])
    _, v = models.create_model(
        NAME, checkpoint_path=path, **{**TINY, "num_classes": 3, "img_size": 32}
    )
    assert v["params"]["pos_embed"].shape == (1, 17, 32)
    np.testing.assert_array_equal(np.asarray(v["params"]["head"]["kernel"]), sd["head.weight"].T)


# ----------------------------------------------------------------------------- image folders


def test_mixed_modes_and_non_images(tmp_path):
    """L, RGBA, CMYK, 16-bit PNG all read as RGB; non-image files are ignored like ImageFolder."""
    from PIL import Image

    arr = (np.arange(64, dtype=np.uint8).reshape(8, 8) * 4).astype(np.uint8)
    imgs = {
        "a/l.png": Image.fromarray(arr),
        "a/rgba.png": Image.fromarray(np.stack([arr] * 4, -1), "RGBA"),
        "b/cmyk.jpg": Image.fromarray(np.stack([arr] * 4, -1), "CMYK"),
        "b/i16.png": Image.fromarray(arr.astype(np.uint16) * 257),
    }
    for rel, img in imgs.items():
        (tmp_path / rel).parent.mkdir(exist_ok=True)
        img.save(tmp_path / rel)
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    (tmp_path / "b" / ".DS_Store").write_bytes(b"\0\1")
    ds = data.ImageDataset.from_folder(tmp_path)
    assert len(ds) == 4 and ds.class_names == ("a", "b")
    for i in range(len(ds)):
        img, _ = ds[i]
        assert img.mode == "RGB" and img.size == (8, 8)


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
