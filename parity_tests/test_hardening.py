"""Hostile and unlucky weight files and folders (issue 14, items 1, 6, 7, 8, 11, 12, 13).

Writing into a folder keeps every file vitjax did not write; half-precision weights load as
float32 unless asked; non-float and non-finite weights are refused by key; an .npz zip bomb is
refused from its declared sizes before any entry is read; config.json is read only from a
bounded regular file and checked (types, ranges, size against memory) before anything is built;
a corrupt .pth/.bin says what the file really is. CLI cases run the real CLI in a subprocess
with bounded time and memory.
"""

from __future__ import annotations

import io as bytes_io
import json
import os
import resource
import struct
import subprocess
import sys
import tracemalloc
import zlib
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import save_file

from vitjax import factory as models
from vitjax.models.vit import VisionTransformer
from vitjax.registry import get_config
from vitjax.weights import files as io
from vitjax.weights import validate
from vitjax.weights.errors import CheckpointError
from vitjax.weights.npz import load_npz

ROOT = Path(__file__).resolve().parents[1]
NAME = "vit_tutorial_patch16_32"
TINY = {"patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2, "img_size": 16}
CLI_MODEL = "test_vit"  # timm's smallest registered ViT: the CLI takes no size overrides
CLI_MEMORY = 6 << 30  # RLIMIT_AS of a CLI subprocess: importing torch maps ~3.9 GiB
pytestmark = [
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore:os.fork"),  # preexec_fn only calls setrlimit
]


def run_cli(
    *args: str, timeout: float = 60, memory: int = CLI_MEMORY
) -> subprocess.CompletedProcess:
    """`python -m vitjax.cli.convert ARGS` with bounded time and address space."""

    def limit_memory() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "JAX_PLATFORMS": "cpu"}
    return subprocess.run(
        [sys.executable, "-m", "vitjax.cli.convert", *args],
        cwd=ROOT, env=env, preexec_fn=limit_memory, capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip


def snapshot(directory: Path) -> dict[str, bytes]:
    """Every file under directory (relative path -> bytes)."""
    return {
        str(p.relative_to(directory)): p.read_bytes()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def leaf_dtypes(variables) -> set[str]:
    return {str(x.dtype) for x in jax.tree_util.tree_leaves(variables)}


def random_model(name: str, **overrides):
    """(model, variables) with random weights, without compiling an init (faster)."""
    model = VisionTransformer(get_config(name, **overrides))
    rng = np.random.default_rng(0)
    shapes = models.variable_shapes(model)
    return model, jax.tree_util.tree_map(
        lambda s: rng.normal(0, 0.02, s.shape).astype(s.dtype), shapes
    )


@pytest.fixture(scope="module")
def tiny():
    """(model, variables, timm state_dict) of a tiny 3-class tutorial ViT."""
    model, variables = random_model(NAME, num_classes=3, **TINY)
    return model, variables, models.to_timm_state_dict(model, variables)


@pytest.fixture(scope="module")
def cli_files(tmp_path_factory):
    """A timm-key src.safetensors of test_vit and a vitjax directory of it."""
    d = tmp_path_factory.mktemp("cli")
    model, variables = random_model(CLI_MODEL)
    save_file(models.to_timm_state_dict(model, variables), str(d / "src.safetensors"))
    models.save_pretrained(d / "vitjax", model, variables)
    return d


# ------------------------------------------------------------- 1: writes keep foreign files


def test_save_pretrained_into_a_folder_keeps_what_vitjax_did_not_write(tiny, tmp_path):
    model, variables, sd = tiny
    d = tmp_path / "out"
    (d / "sub").mkdir(parents=True)
    (d / "notes.txt").write_text("mine")
    (d / "sub" / "data.bin").write_bytes(b"\0\1")
    save_file(sd, str(d / "source.safetensors"))
    theirs = snapshot(d)
    for _ in range(2):  # a first write, then a rewrite of vitjax's own files
        models.save_pretrained(d, model, variables)
        after = snapshot(d)
        assert {k: after[k] for k in theirs} == theirs
        assert set(after) == set(theirs) | {io.CONFIG_NAME, io.WEIGHTS_NAME}
    _, back = models.load_pretrained(d)
    np.testing.assert_array_equal(back["params"]["cls_token"], variables["params"]["cls_token"])


def test_save_pretrained_refuses_files_vitjax_did_not_write(tiny, tmp_path):
    model, variables, _ = tiny
    d = tmp_path / "out"
    d.mkdir()
    (d / io.CONFIG_NAME).write_text('{"architecture": "resnet50", "num_classes": 10}')
    (d / "notes.txt").write_text("mine")
    before = snapshot(d)
    with pytest.raises(CheckpointError, match=r"already holds config\.json.*overwrite=True"):
        models.save_pretrained(d, model, variables)
    assert snapshot(d) == before
    models.save_pretrained(d, model, variables, overwrite=True)
    assert (d / "notes.txt").read_text() == "mine"
    assert "model_config" in json.loads((d / io.CONFIG_NAME).read_text())


def test_failed_write_into_a_folder_leaves_it_as_it_was(tiny, tmp_path, monkeypatch):
    """A disk that fills halfway through model.safetensors: old files and others as they were."""
    from safetensors import numpy as stnp

    model, variables, _ = tiny
    d = tmp_path / "out"
    d.mkdir()
    (d / "notes.txt").write_text("mine")
    models.save_pretrained(d, model, variables)
    before = snapshot(d)

    def disk_full(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(stnp, "save_file", disk_full)
    with pytest.raises(OSError, match="No space left"):
        models.save_pretrained(d, model, variables)
    assert snapshot(d) == before  # no temporary left behind either


def test_convert_cli_into_the_source_folder_keeps_the_source(cli_files, tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    (d / "src.safetensors").write_bytes((cli_files / "src.safetensors").read_bytes())
    (d / "notes.txt").write_text("mine")
    theirs = snapshot(d)
    out = run_cli(CLI_MODEL, "--checkpoint", str(d / "src.safetensors"), "--out", str(d))
    assert out.returncode == 0, out.stderr
    after = snapshot(d)
    assert {k: after[k] for k in theirs} == theirs, "a file vitjax did not write changed"
    models.load_pretrained(d)
    # --to-timm from that folder into itself would replace the checkpoint it reads
    out = run_cli(CLI_MODEL, "--checkpoint", str(d), "--out", str(d), "--to-timm")
    assert out.returncode == 2 and "which this conversion reads" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr and snapshot(d) == after


def test_convert_cli_overwrite_replaces_only_the_files_it_names(cli_files, tmp_path):
    e = tmp_path / "e"
    e.mkdir()
    (e / io.CONFIG_NAME).write_text('{"mine": true}')
    (e / "notes.txt").write_text("mine")
    before = snapshot(e)
    args = (CLI_MODEL, "--checkpoint", str(cli_files / "vitjax"), "--out", str(e), "--to-timm")
    out = run_cli(*args)
    assert out.returncode == 2 and "config.json" in out.stderr and "--overwrite" in out.stderr
    assert snapshot(e) == before
    out = run_cli(*args, "--overwrite")
    assert out.returncode == 0, out.stderr
    assert (e / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in e.iterdir()) == ["config.json", "model.safetensors", "notes.txt"]
    assert json.loads((e / io.CONFIG_NAME).read_text())["architecture"] == CLI_MODEL


# ------------------------------------------------------------- 6: half precision -> float32


@pytest.mark.parametrize("kind", ["safetensors", "pth"])
def test_half_precision_weights_load_as_float32_unless_asked(tiny, tmp_path, kind):
    torch = pytest.importorskip("torch")
    sd = tiny[2]
    for half, torch_half in ((np.float16, torch.float16), (ml_dtypes.bfloat16, torch.bfloat16)):
        path = tmp_path / f"{np.dtype(half).name}.{kind}"
        if kind == "safetensors":
            save_file({k: v.astype(half) for k, v in sd.items()}, str(path))
        else:
            torch.save({k: torch.from_numpy(v).to(torch_half) for k, v in sd.items()}, path)
        _, v = models.create_model(NAME, checkpoint_path=path, num_classes=3, **TINY)
        assert leaf_dtypes(v) == {"float32"}, (path.name, leaf_dtypes(v))
        _, v = models.create_model(
            NAME, checkpoint_path=path, num_classes=3, dtype=jnp.dtype(half), **TINY
        )
        assert leaf_dtypes(v) == {np.dtype(half).name}, (path.name, leaf_dtypes(v))
        want = sd["cls_token"].astype(half)  # kept bit for bit
        np.testing.assert_array_equal(np.asarray(v["params"]["cls_token"]), want)


# ------------------------------------------------------------- 7: non-float where float belongs


@pytest.mark.parametrize("dtype", ["int32", "int64", "bool", "complex64"])
def test_non_float_weights_are_refused_naming_key_and_dtype(tiny, tmp_path, dtype):
    model, _, sd = tiny
    bad = {**sd, "blocks.0.attn.qkv.weight": sd["blocks.0.attn.qkv.weight"].astype(dtype)}
    save_file(bad, str(tmp_path / "bad.safetensors"))
    with pytest.raises(CheckpointError, match=rf"blocks\.0\.attn\.qkv\.weight \({dtype}\)"):
        models.create_model(
            NAME, checkpoint_path=tmp_path / "bad.safetensors", num_classes=3, **TINY
        )
    # BatchNorm's step counter is an int and is fine (dropped on import)
    counted = {**sd, "patch_embed.norm.num_batches_tracked": np.array(7, np.int64)}
    models.load_checkpoint(model, counted)


# ------------------------------------------------------------- 8: NaN / Inf


def test_non_finite_weights_are_refused_unless_allowed(tiny, tmp_path):
    model, _, sd = tiny
    head, pos = sd["head.weight"].copy(), sd["pos_embed"].copy()
    head[0, :3], pos[0, 1, 0] = np.nan, np.inf
    save_file({**sd, "head.weight": head, "pos_embed": pos}, str(tmp_path / "nan.safetensors"))
    path = tmp_path / "nan.safetensors"
    with pytest.raises(CheckpointError, match=r"head\.weight \(3 of 96 values\)") as info:
        models.create_model(NAME, checkpoint_path=path, num_classes=3, **TINY)
    assert "pos_embed (1 of" in str(info.value) and "allow_nonfinite" in str(info.value)
    _, v = models.create_model(
        NAME, checkpoint_path=path, num_classes=3, allow_nonfinite=True, **TINY
    )
    assert int(np.isnan(np.asarray(v["params"]["head"]["kernel"])).sum()) == 3
    models.save_pretrained(
        tmp_path / "dir", model, models.load_checkpoint(model, path, allow_nonfinite=True)
    )
    with pytest.raises(CheckpointError, match="non-finite"):
        models.load_pretrained(tmp_path / "dir")
    models.load_pretrained(tmp_path / "dir", allow_nonfinite=True)


# ------------------------------------------------------------- 11: npz zip bomb


def write_zip(path: Path, members: list[tuple[str, bytes, int, int]]) -> Path:
    """A zip of pre-deflated members (name, raw deflate data, crc32, uncompressed size)."""
    central = []
    with open(path, "wb") as f:
        for name, data, crc, size in members:
            offset, n = f.tell(), name.encode()
            common = (8, 0, 0x21, crc, len(data), size, len(n), 0)  # deflate, time, date, ...
            f.write(struct.pack("<4s5H3L2H", b"PK\3\4", 20, 0, *common) + n + data)
            entry = struct.pack("<4s6H3L5H2L", b"PK\1\2", 20, 20, 0, *common, 0, 0, 0, 0, offset)
            central.append(entry + n)
        start, blob = f.tell(), b"".join(central)
        count = len(members)
        f.write(blob + struct.pack("<4s4H2LH", b"PK\5\6", 0, 0, count, count, len(blob), start, 0))
    return path


def zeros_npy_member(name: str, nbytes: int, chunk: int = 1 << 24) -> tuple[str, bytes, int, int]:
    """A deflated .npy of nbytes of float32 zeros, built from one compressed chunk repeated."""
    header = bytes_io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f4", "fortran_order": False, "shape": (nbytes // 4,)}
    )
    header = header.getvalue()
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    head = c.compress(header) + c.flush(zlib.Z_FULL_FLUSH)
    block = c.compress(bytes(chunk)) + c.flush(zlib.Z_FULL_FLUSH)  # no back-references out
    data = head + block * (nbytes // chunk) + c.flush()
    crc, zero = zlib.crc32(header), bytes(chunk)
    for _ in range(nbytes // chunk):
        crc = zlib.crc32(zero, crc)
    return f"{name}.npy", data, crc, len(header) + nbytes


def test_npz_zip_bomb_is_refused_before_reading_cli(tmp_path):
    """A 3 MB .npz declaring 3 GiB: one line, exit 2, under a 2 GiB address-space limit."""
    bomb = write_zip(tmp_path / "bomb.npz", [zeros_npy_member("embedding/kernel", 3 << 30)])
    assert bomb.stat().st_size < 8 << 20
    # 2 GiB: the refusal comes before torch is imported; reading the entry would not fit
    args = (CLI_MODEL, "--checkpoint", str(bomb), "--out", str(tmp_path / "o"))
    out = run_cli(*args, memory=2 << 30)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "zip bomb" in out.stderr and "embedding/kernel" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr and not (tmp_path / "o").exists()


def test_npz_entries_are_checked_before_any_is_read(tmp_path):
    """An unknown 512 MiB entry is never decompressed; max_bytes bounds the declared total."""
    bomb = write_zip(tmp_path / "junk.npz", [zeros_npy_member("junk", 512 << 20)])
    tracemalloc.start()
    try:
        with pytest.raises(CheckpointError, match="no embedding/kernel"):
            load_npz(bomb)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 << 20, f"reading the archive took {peak / 2**20:.0f} MiB"
    with pytest.raises(CheckpointError, match=r"0\.5 GiB uncompressed.*junk"):
        load_npz(bomb, max_bytes=256 << 20)


# ------------------------------------------------------------- 12: config.json


def _pretrained_dir(cli_files: Path, tmp_path: Path) -> Path:
    d = tmp_path / "dir"
    d.mkdir()
    (d / io.WEIGHTS_NAME).write_bytes((cli_files / "vitjax" / io.WEIGHTS_NAME).read_bytes())
    return d


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_config_json_fifo_or_device_does_not_hang_cli(cli_files, tmp_path, kind):
    """A FIFO (open waits for a writer) or /dev/zero (endless) as config.json: refused at once."""
    d = _pretrained_dir(cli_files, tmp_path)
    if kind == "fifo":
        os.mkfifo(d / io.CONFIG_NAME)
    else:
        (d / io.CONFIG_NAME).symlink_to("/dev/zero")
    args = (CLI_MODEL, "--checkpoint", str(d), "--out", str(tmp_path / "o"), "--to-timm")
    out = run_cli(*args, timeout=30, memory=2 << 30)  # refused before torch is imported
    assert out.returncode == 2, out.stderr[-2000:]
    assert {"fifo": "FIFO", "device": "character device"}[kind] in out.stderr, out.stderr
    assert "Traceback" not in out.stderr and not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "change, message",
    [
        ({"depth": 1_000_000}, "depth=1000000 must be <= 512"),
        ({"depth": "1"}, r"depth='1' \(str\) is not int"),
        ({"num_heads": 0}, "num_heads=0 must be >= 1"),
        ({"mlp_ratio": float("nan")}, "mlp_ratio=nan must be finite"),
        ({"drop_path_rate": 5.0}, r"drop_path_rate=5\.0 must be in \[0, 1\]"),
        ({"embed_dim": 65536}, r"needs at least \d+\.\d GiB .* more than the"),
    ],
)
def test_config_json_is_checked_before_building(cli_files, tmp_path, change, message):
    d = _pretrained_dir(cli_files, tmp_path)
    config = json.loads((cli_files / "vitjax" / io.CONFIG_NAME).read_text())
    config["model_config"].update(change)
    (d / io.CONFIG_NAME).write_text(json.dumps(config))
    for load in (io.read_config, models.load_pretrained):  # read_config: train.py --init
        with pytest.raises(CheckpointError, match=message) as info:
            load(d)
        assert str(d / io.CONFIG_NAME) in str(info.value)


def test_every_registered_config_passes_the_checks(monkeypatch):
    """No false refusals: every variant of every family, as save_pretrained writes it."""
    from vitjax import registry

    monkeypatch.setattr(validate, "memory_budget", lambda: 64 << 30)  # any machine's free memory

    for family in registry.FAMILIES:
        mod = registry.config_module(family)
        for name, kwargs in mod.VARIANTS.items():
            validate.model_config(family, mod.CONFIG(**kwargs).to_dict(), name)


def test_config_size_is_estimated_against_available_memory(cli_files, tmp_path, monkeypatch):
    models.load_pretrained(cli_files / "vitjax")
    monkeypatch.setattr(validate, "memory_budget", lambda: 1 << 12)
    with pytest.raises(CheckpointError, match=r"more than the 0\.0 GiB of memory available"):
        models.load_pretrained(cli_files / "vitjax")


# ------------------------------------------------------------- 13: what a corrupt .pth really is


def _corrupt_files(tiny, d: Path) -> dict[Path, str]:
    torch = pytest.importorskip("torch")
    sd = tiny[2]
    save_file(sd, str(d / "st.pth"))
    torch.save({k: torch.from_numpy(v) for k, v in sd.items()}, d / "full.pth")
    raw = (d / "full.pth").read_bytes()
    (d / "cut.pth").write_bytes(raw[: len(raw) // 2])
    np.savez(d / "arrays.npz", a=np.ones(2))
    (d / "arrays.npz").rename(d / "npz.bin")
    (d / "page.bin").write_text("<!DOCTYPE html><html><body>Sign in</body></html>")
    (d / "lfs.pth").write_text("version https://git-lfs.github.com/spec/v1\noid sha256:ab\n")
    (d / "empty.pth").write_bytes(b"")
    (d / "noise.pth").write_bytes(np.random.default_rng(0).bytes(4096).replace(b"\x80", b"\0"))
    return {
        d / "st.pth": "safetensors file under another name",
        d / "cut.pth": "truncated or corrupt zip archive",
        d / "npz.bin": "NumPy .npz archive",
        d / "page.bin": "HTML",
        d / "lfs.pth": "Git LFS pointer",
        d / "empty.pth": "empty file",
        d / "noise.pth": "unknown format",
    }


def test_corrupt_torch_files_say_what_they_are(tiny, tmp_path):
    for path, what in _corrupt_files(tiny, tmp_path).items():
        with pytest.raises(CheckpointError) as info:
            models.create_model(NAME, checkpoint_path=path, num_classes=3, **TINY)
        msg = str(info.value)
        assert what in msg and str(path) in msg and "refused" not in msg, msg
    out = run_cli(CLI_MODEL, "--checkpoint", str(tmp_path / "st.pth"), "--out", str(tmp_path / "o"))
    assert out.returncode == 2 and "rename it to .safetensors" in out.stderr, out.stderr
    assert "refused" not in out.stderr and "Traceback" not in out.stderr


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
