"""The notebook's path as a new user walks it: resume, help, layouts, exports, logs (issue 13).

CLI cases drive the real entry points (vitjax.cli.*) in this process or in a subprocess.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
import torch

import vitjax
from parity_tests.test_train_cli import TINY_FLAGS, TINY_RUN, write_digit_folder
from vitjax.cli import train as train_cli
from vitjax.training import checkpoints as ck
from vitjax.training.run import RESUME_OVERRIDES, RunConfig, resumed_config, train_and_evaluate

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def one_epoch_run(tmp_path_factory) -> Path:
    """A finished 1-epoch run on the digits (TINY_RUN), trained once: copy it, never change it."""
    run = tmp_path_factory.mktemp("one_epoch") / "run"
    train_and_evaluate(RunConfig(out=str(run), epochs=1, **TINY_RUN))
    return run


def copy_of(run: Path, tmp_path: Path) -> Path:
    """A copy of a finished run folder (checkpoints, metrics, model/) for a test to change."""
    return Path(shutil.copytree(run, tmp_path / "run"))


def cli(module: str, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """python -m vitjax.cli.<module> ARGS, to completion."""
    return subprocess.run(
        [sys.executable, "-m", f"vitjax.cli.{module}", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


# ----------------------------------------------------------------------------- 1. resume


@pytest.mark.parametrize("flag", RESUME_OVERRIDES)
def test_resume_changes_only_the_flags_typed(flag, tmp_path):
    saved = RunConfig(out=str(tmp_path), epochs=4, workers=1, keep=2, progress=False)
    ck.write_json(tmp_path / ck.RUN_CONFIG_NAME, saved.to_dict())
    typed = {"epochs": "7", "workers": "0", "keep": "5", "progress": None}[flag]
    argv = ["--out", str(tmp_path), "--resume"]
    argv += ["--no-progress"] if flag == "progress" else [f"--{flag}", typed]
    p = train_cli.parser()
    args = p.parse_args(argv)
    given = train_cli.typed_flags(p, argv)
    resumed = resumed_config(train_cli.run_config(args), given)
    untyped = resumed_config(train_cli.run_config(p.parse_args(argv[:3])), set())
    assert untyped == RunConfig(**{**saved.__dict__, "resume": True})  # CLI defaults never win
    want = False if flag == "progress" else type(getattr(saved, flag))(typed)
    assert getattr(resumed, flag) == want
    assert {k: v for k, v in resumed.__dict__.items() if k != flag} == {
        k: v for k, v in untyped.__dict__.items() if k != flag
    }


def test_resume_of_a_finished_run_keeps_its_epochs(tmp_path):
    out = str(tmp_path / "run")
    first = cli("train", "--out", out, "--epochs", "2", *TINY_FLAGS)
    assert first.returncode == 0, first.stderr[-3000:]
    again = cli("train", "--out", out, "--resume", "--no-progress")  # no --epochs: the run's 2
    assert again.returncode == 0, again.stderr[-3000:]
    assert [r["epoch"] for r in ck.read_metrics(Path(out) / ck.METRICS_NAME)] == [1, 2]
    more = cli("train", "--out", out, "--resume", "--epochs", "3", "--no-progress")
    assert more.returncode == 0, more.stderr[-3000:]
    records = ck.read_metrics(Path(out) / ck.METRICS_NAME)
    assert [r["epoch"] for r in records] == [1, 2, 3]
    # 10. wall time and images/s per epoch, in metrics.jsonl and on the epoch line
    assert all(r["seconds"] > 0 and r["images_per_s"] > 0 for r in records)
    assert re.search(r"epoch   3 .* s  [\d.]+ img/s", more.stdout), more.stdout


# ----------------------------------------------------------------------------- 3. NHWC


def test_nchw_input_says_nhwc_and_shows_the_transpose():
    model, variables = vitjax.create_model("vit_tutorial_patch16_32", depth=1)
    with pytest.raises(ValueError, match=r"NHWC.*transpose\(0, 2, 3, 1\)"):
        model.apply(variables, np.zeros((1, 3, 32, 32), np.float32))
    with pytest.raises(ValueError, match=r"3 channels .*\(1, 32, 32, 1\)"):
        model.apply(variables, np.zeros((1, 32, 32, 1), np.float32))
    with pytest.raises(ValueError, match=r"\(B, H, W, C\)"):
        model.apply(variables, np.zeros((32, 32, 3), np.float32))


# ----------------------------------------------------------------------------- 5. --help


def test_train_help_shows_each_real_default_once():
    text = train_cli.parser().format_help().split("options:", 1)[1]
    assert "(default: True)" not in text and "(default: False)" not in text
    for flag, default in [("--epochs", "10"), ("--lr", "0.001"), ("--optimizer", "adamw"),
                          ("--schedule", "cosine"), ("--batch-size", "32")]:  # fmt: skip
        section = text.split(flag, 1)[1].split("\n  --", 1)[0]
        assert section.count("(default:") == 1 and f"(default: {default})" in section, section
    img = text.split("--img-size", 1)[1].split("\n  --", 1)[0]
    assert img.count("default") == 1, img


# ----------------------------------------------------------------------------- 6. exports


def test_to_timm_state_dict_pt_loads_strict_into_timm(recwarn):
    import timm

    model, variables = vitjax.create_model("vit_tiny_patch16_224", depth=1, seed=3)
    net = timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=1)
    sd = vitjax.to_timm_state_dict(model, variables, framework="pt")
    assert all(isinstance(v, torch.Tensor) for v in sd.values())
    net.load_state_dict(sd, strict=True)
    assert not [w for w in recwarn if "not writable" in str(w.message)]
    x = np.random.default_rng(0).standard_normal((1, 224, 224, 3)).astype(np.float32)
    with torch.no_grad():
        ref = net.eval()(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
    np.testing.assert_allclose(np.asarray(model.apply(variables, x)), ref, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="framework='tf'"):
        vitjax.to_timm_state_dict(model, variables, framework="tf")


# ----------------------------------------------------------------------------- 8. predict


def test_predict_accepts_folders_and_prints_label_names(tmp_path):
    data = write_digit_folder(tmp_path / "data", per_class=6)
    (data / "0" / "notes.txt").write_text("not an image")
    run = tmp_path / "run"
    train_and_evaluate(RunConfig(out=str(run), data=str(data), epochs=1, **TINY_RUN))
    out = cli("predict", str(run), str(data), "--topk", "2")
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 18 and not any("notes.txt" in line for line in lines)
    assert all(re.search(r": [017] [\d.]+, [017] [\d.]+$", line) for line in lines), lines[:3]


def test_predict_names_imagenet_classes_of_a_timm_checkpoint(tmp_path):
    import timm
    from PIL import Image
    from safetensors.torch import save_file

    net = timm.create_model("vit_tiny_patch16_224", pretrained=False)
    save_file(net.state_dict(), str(tmp_path / "w.safetensors"))
    Image.new("RGB", (240, 200), (200, 30, 30)).save(tmp_path / "red.png")
    out = cli("predict", str(tmp_path / "w.safetensors"), str(tmp_path / "red.png"),
              "--model", "vit_tiny_patch16_224", "--topk", "3")  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    labels = re.findall(r"([A-Za-z][\w' -]*) [\d.]+", out.stdout.split(": ", 1)[1])
    assert len(labels) == 3 and not any(label.strip().isdigit() for label in labels), out.stdout


def test_predict_passes_the_weights_instead_of_compiling_them_in():
    """The prediction program takes the variables as an argument: no weight is a constant."""
    from vitjax.predict import probabilities_fn

    model, variables = vitjax.create_model("vit_tutorial_patch16_32", depth=1, num_classes=3)
    x = np.zeros((2, 32, 32, 3), np.float32)
    text = probabilities_fn(model).lower(variables, x).as_text()
    constants = re.findall(r'dense<"0x([0-9A-F]*)">', text)
    assert max(map(len, constants), default=0) < 2 * 1024, "a weight is a constant of the program"
    n_bytes = sum(np.asarray(v).nbytes for v in jax.tree.leaves(variables))
    assert len(text) < n_bytes, (len(text), n_bytes)


# ----------------------------------------------------------------------------- 9. schedule log


def test_run_log_names_the_schedule(tmp_path):
    out = cli("train", "--out", str(tmp_path / "r"), "--epochs", "1", "--schedule", "constant",
              *TINY_FLAGS[:10], "--no-progress")  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    assert "schedule constant" in out.stdout, out.stdout


# ----------------------------------------------------------------------------- issue 14: 2, 3


def test_overwrite_with_a_mistyped_flag_keeps_the_old_run(one_epoch_run, tmp_path):
    run = copy_of(one_epoch_run, tmp_path)
    before = {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()}
    for bad in (["--data", str(tmp_path / "no_such_folder")], ["--model", "vit_tiny_patch16_2244"]):
        out = cli("train", "--out", str(run), "--overwrite", "--epochs", "1", *bad)
        assert out.returncode != 0 and "Traceback" not in out.stderr, out.stderr[-2000:]
        after = {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()}
        assert after == before, f"{bad}: the old run changed"


def test_resume_without_checkpoints_is_refused(one_epoch_run, tmp_path):
    run = copy_of(one_epoch_run, tmp_path)
    model_before = (run / ck.MODEL_DIR / "model.safetensors").read_bytes()
    metrics_before = (run / ck.METRICS_NAME).read_text()
    shutil.rmtree(run / ck.CHECKPOINT_DIR)
    out = cli("train", "--out", str(run), "--resume", "--no-progress")
    assert out.returncode != 0
    assert "no checkpoint in" in out.stderr and str(run / ck.CHECKPOINT_DIR) in out.stderr
    assert (run / ck.MODEL_DIR / "model.safetensors").read_bytes() == model_before
    assert (run / ck.METRICS_NAME).read_text() == metrics_before
    json.loads((run / ck.RUN_CONFIG_NAME).read_text())  # still there, still valid


# ----------------------------------------------------------------------------- 7. timm layout


def test_train_model_folder_loads_in_timm_and_vitjax(one_epoch_run):
    """vitjax-train's model/ is timm's hub layout: timm's local-dir: loader, the same logits."""
    import timm

    folder = one_epoch_run / ck.MODEL_DIR
    config = json.loads((folder / "config.json").read_text())
    assert config["family"] == "vit" and "model_args" in config
    net = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    model, variables = vitjax.create_model(f"local-dir:{folder}")
    x = np.random.default_rng(0).standard_normal((2, 16, 16, 3)).astype(np.float32)
    with torch.no_grad():
        ref = net(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
    np.testing.assert_allclose(np.asarray(model.apply(variables, x)), ref, atol=1e-5, rtol=1e-5)
    assert net.pretrained_cfg["label_names"] == [str(i) for i in range(10)]
