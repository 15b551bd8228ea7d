"""scripts/train.py end to end: exact resume, frozen-backbone fine-tuning of a timm checkpoint on
an image folder (only the head changes; timm loads the result), predict.py, clear errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from parity_tests.child_env import same_xla_env
from parity_tests.parity import assert_close
from vitjax.training import checkpoints as ck
from vitjax.training.run import RunConfig, prepare_run_dir, train_and_evaluate

ROOT = Path(__file__).resolve().parents[1]
TINY = {"patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2, "img_size": 16}


TINY_RUN = dict(
    model_args=TINY,
    batch_size=64,
    lr=2e-3,
    schedule="cosine",
    schedule_args={"t_max": 5, "eta_min": 1e-4},
    crop_scale=(0.5, 1.0),
    val_fraction=0.5,
    progress=False,
)
TINY_FLAGS = [
    "--model-args",
    *(f"{k}={v}" for k, v in TINY.items()),
    "--batch-size",
    "64",
    "--lr",
    "2e-3",
    "--schedule",
    "cosine",
    "--t-max",
    "5",
    "--eta-min",
    "1e-4",
    "--crop-scale",
    "0.5",
    "1.0",
    "--val-fraction",
    "0.5",
    "--no-progress",
]


def script(name: str, *args: str) -> subprocess.Popen:
    """scripts/<name> started in a subprocess (stdout and stderr piped), with this process's
    XLA settings: tests compare its runs bit for bit with runs in this process."""
    return subprocess.Popen(
        [sys.executable, str(ROOT / "scripts" / name), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=same_xla_env(),
    )


def finish(proc: subprocess.Popen) -> str:
    """Wait for a script; its stdout (fails the test with its stderr)."""
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-4000:]
    return out


def run_script(name: str, *args: str) -> str:
    """Run scripts/<name> to completion; its stdout."""
    return finish(script(name, *args))


@pytest.mark.slow
def test_resume_matches_uninterrupted_run(tmp_path):
    """2 epochs, then --resume to 4 == 4 epochs straight: metrics.jsonl and final weights."""
    straight = script(
        "train.py", "--out", str(tmp_path / "straight"), "--epochs", "4", *TINY_FLAGS
    )  # the CLI, in parallel with the split run below
    train_and_evaluate(RunConfig(out=str(tmp_path / "split"), epochs=2, **TINY_RUN))
    train_and_evaluate(RunConfig(out=str(tmp_path / "split"), epochs=4, resume=True, **TINY_RUN))
    log = finish(straight)
    assert "epoch   4" in log
    a = ck.strip_timing(ck.read_metrics(tmp_path / "straight" / ck.METRICS_NAME))
    b = ck.strip_timing(ck.read_metrics(tmp_path / "split" / ck.METRICS_NAME))
    assert [r["epoch"] for r in b] == [1, 2, 3, 4]
    assert a == b, f"resumed run differs:\n{a}\n{b}"
    from vitjax.weights.files import load_state_dict

    wa = load_state_dict(tmp_path / "straight" / ck.MODEL_DIR)
    wb = load_state_dict(tmp_path / "split" / ck.MODEL_DIR)
    for k in wa:
        assert_close(wb[k], wa[k], f"resumed {k}", dtype="exact")
    assert (tmp_path / "split" / ck.CURVES_NAME).stat().st_size > 0
    assert len(list((tmp_path / "split" / ck.CHECKPOINT_DIR).iterdir())) <= 3


def test_run_dir_guards(tmp_path):
    """--resume needs a run; a new run never silently replaces one."""
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        prepare_run_dir(RunConfig(out=str(tmp_path / "none"), resume=True))
    prepare_run_dir(RunConfig(out=str(tmp_path / "run")))
    prepare_run_dir(RunConfig(out=str(tmp_path / "run")))  # nothing trained yet: start again
    (tmp_path / "run" / ck.CHECKPOINT_DIR / "1").mkdir(parents=True)
    with pytest.raises(FileExistsError, match="--resume"):
        prepare_run_dir(RunConfig(out=str(tmp_path / "run")))
    prepare_run_dir(RunConfig(out=str(tmp_path / "run"), overwrite=True))


def write_digit_folder(root: Path, classes=("0", "1", "7"), per_class: int = 10) -> Path:
    """An image folder of 8x8 digit PNGs: ROOT/<digit>/<i>.png."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    for c in classes:
        (root / c).mkdir(parents=True)
        imgs = digits.images[digits.target == int(c)][:per_class]
        for i, img in enumerate(imgs):
            gray = np.round(img * 255 / 16).astype(np.uint8)
            Image.fromarray(gray).convert("RGB").save(root / c / f"{i}.png")
    return root


def test_finetune_timm_checkpoint_frozen_backbone(tmp_path):
    """train.py --init <converted timm vit> --freeze-backbone on a folder: only the head moves."""
    import timm
    import torch

    import vitjax

    torch.manual_seed(0)
    net = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, depth=2, img_size=32, num_classes=5
    )
    model, variables = vitjax.from_timm(net)
    pretrained_cfg = {
        "input_size": [3, 32, 32],
        "mean": [0.1, 0.2, 0.3],
        "std": [0.5, 0.5, 0.5],
        "interpolation": "bilinear",
        "crop_pct": 1.0,
    }
    init = vitjax.save_pretrained(tmp_path / "init", model, variables, pretrained_cfg)
    data = write_digit_folder(tmp_path / "data")
    out = tmp_path / "run"
    log = run_script(
        "train.py",
        "--data",
        str(data),
        "--init",
        str(init),
        "--freeze-backbone",
        "--num-classes",
        "3",
        "--epochs",
        "2",
        "--batch-size",
        "8",
        "--lr",
        "1e-2",
        "--optimizer",
        "adam",
        "--out",
        str(out),
        "--no-progress",
    )
    assert "epoch   2" in log

    before = {k: v.detach().numpy() for k, v in net.state_dict().items()}
    after = vitjax.to_timm_state_dict(*vitjax.load_pretrained(out / ck.MODEL_DIR))
    assert set(after) == set(before)
    for k in after:
        if k.startswith("head."):
            assert after[k].shape[0] == 3
        else:
            assert_close(after[k], before[k], f"frozen {k}", dtype="exact")
    saved = json.loads((out / ck.MODEL_DIR / "config.json").read_text())["pretrained_cfg"]
    assert saved["mean"] == [0.1, 0.2, 0.3] and saved["label_names"] == ["0", "1", "7"]

    back = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, depth=2, img_size=32, num_classes=3
    )
    back.load_state_dict({k: torch.tensor(v) for k, v in after.items()}, strict=True)

    images = [str(data / "7" / "0.png"), str(data / "1" / "3.png")]
    lines = run_script("predict.py", str(out), *images, "--topk", "2").strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith(images[0])
    assert all(len(line.split(": ")[1].split(", ")) == 2 for line in lines)


def test_finetune_from_safetensors_file(tmp_path):
    """--init FILE.safetensors with --model/--model-arg builds the model and replaces the head."""
    import timm
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(0)
    net = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, depth=1, img_size=32, num_classes=4
    )
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, tmp_path / "w.safetensors")
    data = write_digit_folder(tmp_path / "data", per_class=4)
    hist = train_and_evaluate(
        RunConfig(
            out=str(tmp_path / "run"),
            data=str(data),
            model="vit_tiny_patch16_224",
            model_args={"depth": 1},
            img_size=32,
            init=str(tmp_path / "w.safetensors"),
            freeze_backbone=True,
            epochs=1,
            batch_size=4,
            progress=False,
        )
    )
    assert len(hist) == 1 and np.isfinite(hist[0]["train_loss"])
    from vitjax.weights.files import load_state_dict

    after = load_state_dict(tmp_path / "run" / ck.MODEL_DIR)
    assert after["head.weight"].shape == (3, 192)
    assert_close(
        after["blocks.0.attn.qkv.weight"],
        net.state_dict()["blocks.0.attn.qkv.weight"],
        "frozen qkv",
        dtype="exact",
    )
