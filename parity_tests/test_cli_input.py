"""Every script refuses bad arguments with a non-zero exit and a one-line reason, no traceback.

Scripts run in this process through their main(argv) (fast); one subprocess per kind of exit
checks that nothing but the reason reaches the terminal.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from parity_tests.test_safety import NAME, TINY, load_script
from parity_tests.test_train_cli import TINY_FLAGS, write_digit_folder
from vitjax import factory as models

ROOT = Path(__file__).resolve().parents[1]


def fails(script: str, argv: list[str], capsys) -> str:
    """Run scripts/<script> main(argv): it must exit non-zero; its one-line reason."""
    main = load_script(script).main
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        raise SystemExit(main(argv))  # convert_timm.py returns its exit code
    code, err = info.value.code, capsys.readouterr().err
    assert code not in (0, None), f"{script} {argv} exited 0"
    assert "Traceback" not in err, err
    msg = code if isinstance(code, str) else (err.strip().splitlines() or [""])[-1]
    assert msg and "\n" not in msg, f"{script} {argv}: {msg!r}"
    return msg


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny save_pretrained dir and an image."""
    from PIL import Image

    d = tmp_path_factory.mktemp("saved")
    model, variables = models.create_model(NAME, num_classes=3, **TINY)
    models.save_pretrained(d / "model", model, variables)
    from safetensors.numpy import save_file

    save_file(models.to_timm_state_dict(model, variables), str(d / "w.safetensors"))
    Image.new("RGB", (16, 16)).save(d / "x.png")
    return d


# ----------------------------------------------------------------------------- train.py


def test_train_rejects_bad_arguments(tmp_path, capsys):
    out = ["--out", str(tmp_path / "run")]
    cases = {
        ("--model", "vit_tiny_patch16_2244"): "did you mean vit_tiny_patch16_224",
        ("--epochs", "0"): "argument --epochs: must be >= 1, got 0",
        ("--batch-size", "-4"): "argument --batch-size: must be >= 1, got -4",
        ("--img-size", "0"): "argument --img-size: must be >= 1",
        ("--lr", "-1"): "argument --lr: must be >= 0.0, got -1.0",
        ("--keep", "0"): "argument --keep: must be >= 1",
        # every numeric flag has a checked range, named in the error
        ("--clip-grad", "-1"): "argument --clip-grad: must be > 0.0",
        ("--label-smoothing", "5"): "argument --label-smoothing: must be <= 1.0",
        ("--momentum", "-5"): "argument --momentum: must be >= 0.0",
        ("--hflip", "5"): "argument --hflip: must be <= 1.0",
        ("--crop-scale", "2", "3"): "argument --crop-scale: must be <= 1.0",
        ("--gamma", "0"): "argument --gamma: must be > 0.0",
        ("--lr", "nan"): "argument --lr: must be finite",
        ("--workers", "-1"): "argument --workers: must be >= 0",
        ("--cpu-devices", "0"): "argument --cpu-devices: must be >= 1",
        ("--data", str(tmp_path / "nope")): "nope does not exist",
        ("--init", str(tmp_path / "nope.pth")): "nope.pth: no such file",
        ("--val-fraction", "1.5"): "argument --val-fraction: must be <= 1.0",
        ("--epochs", "two"): "argument --epochs: expected a number, got 'two'",
        ("--model-args", "depth"): "expected KEY=VALUE",
        ("--optimizer", "lion"): "invalid choice: 'lion'",
    }
    for argv, reason in cases.items():
        msg = fails("train.py", [*out, *argv, "--no-progress"], capsys)
        assert reason in msg, (argv, msg)


def test_train_refuses_bad_folders(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "single" / "cat").mkdir(parents=True)
    cases = {"empty": "has no class subfolders", "single": "single class folder 'cat'"}
    for folder, reason in cases.items():
        argv = ["--data", str(tmp_path / folder), "--out", str(tmp_path / "r"), "--no-progress"]
        assert reason in fails("train.py", argv, capsys)


@pytest.fixture()
def bad_folder(tmp_path):
    """A 2-class digit folder with one truncated PNG; (root, bad path, train flags)."""
    root = write_digit_folder(tmp_path / "data", classes=("0", "1"), per_class=6)
    bad = root / "1" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    return root, bad, ["--data", str(root), "--epochs", "1", *TINY_FLAGS, "--batch-size", "4"]


def test_train_bad_image_fails_naming_it(bad_folder, tmp_path, capsys):
    root, bad, argv = bad_folder
    msg = fails("train.py", [*argv, "--out", str(tmp_path / "a")], capsys)
    assert f"cannot read image {bad}" in msg


def test_train_skip_bad_skips_and_counts(bad_folder, capsys):
    """--skip-bad: the run's data leaves the unreadable image out and says how many it skipped."""
    from vitjax.training.run import RunConfig, load_datasets

    root, bad, argv = bad_folder
    train = load_script("train.py")
    args = train.parser().parse_args([*argv, "--skip-bad"])
    assert args.skip_bad
    cfg = RunConfig(data=str(root), skip_bad=True, progress=False, val_fraction=0.5)
    train_ds, val_ds, classes = load_datasets(cfg)
    assert "skipped 1 unreadable images" in capsys.readouterr().out
    assert len(train_ds) + len(val_ds) == 12 and str(bad) not in (*train_ds.images, *val_ds.images)


# ----------------------------------------------------------------------------- predict.py


def test_predict_rejects_bad_arguments(saved, tmp_path, capsys):
    model, img = str(saved / "model"), str(saved / "x.png")
    cases = {
        (str(tmp_path / "nope"), img): "nope: no such file or directory",
        (model, str(tmp_path / "missing.png")): "missing.png",
        (model, img, "--topk", "0"): "argument --topk: must be >= 1, got 0",
        (model, img, "--num-classes", "-2"): "must be >= 1, got -2",
        (str(tmp_path), img): "config.json: missing",
        (str(saved / "w.safetensors"), img, "--model", "vit_smal_patch16_224"): "did you mean",
    }
    for argv, reason in cases.items():
        msg = fails("predict.py", list(argv), capsys)
        assert reason in msg, (argv, msg)
    assert "IMAGE" in fails("predict.py", [model], capsys)  # no images: argparse's reason


# ----------------------------------------------------------------------------- plot_schedules.py


def test_plot_schedules_rejects_bad_arguments(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    cases = {
        ("--epochs", "0"): "--epochs out of range, got 0",
        ("--base-lr", "-1"): "--base-lr out of range, got -1.0",
        ("--out", str(blocker / "lr.png")): f"cannot write {blocker / 'lr.png'}",
    }
    for argv, reason in cases.items():
        full = ["--out", str(tmp_path / "lr.png"), *argv] if "--out" not in argv else list(argv)
        msg = fails("plot_schedules.py", full, capsys)
        assert reason in msg, (argv, msg)
    assert "--out" in fails("plot_schedules.py", [], capsys)


# ----------------------------------------------------------------------------- convert_timm.py


def test_convert_timm_rejects_bad_arguments(saved, tmp_path, capsys):
    out = ["--out", str(tmp_path / "o")]
    cases = {
        ("vit_bas_patch16_224", "--checkpoint", str(saved / "model")): "did you mean",
        (NAME, "--checkpoint", str(tmp_path / "nope.safetensors")): "no such file",
        (NAME, "--img-size", "abc"): "invalid int value",
        (NAME, "--checkpoint", str(saved / "w.safetensors"), "--img-size", "-3"): "img_size=-3",
    }
    for argv, reason in cases.items():
        msg = fails("convert_timm.py", [*argv, *out], capsys)
        assert reason in msg, (argv, msg)


def test_convert_timm_unwritable_out(saved, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    out = str(blocker / "w.safetensors")
    argv = [NAME, "--checkpoint", str(saved / "model"), "--to-timm", "--out", out]
    assert str(blocker) in fails("convert_timm.py", argv, capsys)


def test_convert_timm_negative_num_classes(saved, tmp_path, capsys):
    argv = [NAME, "--checkpoint", str(saved / "w.safetensors"), "--out", str(tmp_path / "o")]
    assert "-3" in fails("convert_timm.py", [*argv, "--num-classes", "-3"], capsys)


# ----------------------------------------------------------------------------- benchmark.py


NO_BENCHMARK = not (ROOT / "scripts" / "benchmark.py").is_file()


@pytest.mark.skipif(NO_BENCHMARK, reason="no scripts/benchmark.py")
def test_benchmark_rejects_bad_arguments(capsys):
    assert "invalid int value" in fails("benchmark.py", ["--batch-size", "x"], capsys)


@pytest.mark.skipif(NO_BENCHMARK, reason="no scripts/benchmark.py")
def test_benchmark_unknown_model_one_line(capsys):
    assert "unknown model" in fails(
        "benchmark.py", ["--modes", "jax", "--model", "vit_nope"], capsys
    )


# ----------------------------------------------------------------------------- real processes


def test_scripts_print_one_line_in_a_subprocess(tmp_path):
    """End to end: exit code, and stderr holds the reason and no traceback."""
    runs = [
        (["train.py", "--out", str(tmp_path / "r"), "--model", "vit_nope"], "unknown model"),
        (["predict.py", str(tmp_path / "nope"), "x.png"], "no such file"),
    ]
    for (name, *argv), reason in runs:
        proc = subprocess.run(
            [sys.executable, str(ROOT / "scripts" / name), *argv],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=120,
        )
        assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
        lines = [line for line in proc.stderr.splitlines() if "error" in line]
        assert len(lines) == 1 and reason in lines[0], proc.stderr
