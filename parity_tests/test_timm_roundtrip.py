"""Back to PyTorch: vitjax weights load into timm.create_model(name) strictly, same logits; the CLI.

scripts/convert_timm.py is exercised in-process (its main(argv)) and once as a subprocess, offline
against a Hugging Face cache laid out under tmp_path.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
import timm
import torch
from devtools.timm_verify import (
    flax_forward,
    images,
    make_timm,
    save_timm_checkpoint,
    timm_forward,
)

from parity_tests.parity import assert_close
from parity_tests.test_timm_hub import lay_out_cache
from vitjax.factory import create_model, load_pretrained, to_timm_state_dict

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "convert_timm.py"
EXPORT_CASES = [
    ("vit_base_patch16_224", dict(depth=2, num_classes=7)),
    ("deit_tiny_distilled_patch16_224", dict(depth=2)),
    ("vit_base_patch16_siglip_224", dict(depth=2, embed_dim=96, num_classes=4)),
    ("vit_small_patch14_reg4_dinov2", dict(depth=2, img_size=70)),
    ("test_vit4", dict(depth=2)),
]


def _cli():
    spec = importlib.util.spec_from_file_location("convert_timm", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _diffs(text: str) -> dict[str, float]:
    return {m[1]: float(m[2]) for m in re.finditer(r"verify (\w+ \w+): max \|diff\| (\S+)", text)}


@pytest.mark.parametrize("name,kwargs", EXPORT_CASES, ids=[n for n, _ in EXPORT_CASES])
def test_to_timm_state_dict_matches_torch(name, kwargs):
    model, variables = create_model(name, seed=3, **kwargs)
    rng = np.random.default_rng(3)  # move every weight off its init (zero biases, unit norms...)
    variables = jax.tree_util.tree_map(
        lambda p: p + 0.05 * rng.standard_normal(p.shape).astype(np.float32), variables
    )
    sd = {k: torch.from_numpy(np.array(v)) for k, v in to_timm_state_dict(model, variables).items()}
    twin = timm.create_model(name, pretrained=False, **kwargs)
    twin.load_state_dict(sd, strict=True)
    x = images(twin.eval())
    got, got_pre = flax_forward(model, variables, x)
    want, want_pre = timm_forward(twin, x)
    assert_close(got, want, f"{name} exported logits")
    assert_close(got_pre, want_pre, f"{name} exported pre_logits")


def test_convert_timm_cli_both_directions_matches_torch(tmp_path, capsys):
    cli = _cli()
    module = make_timm("test_vit3")
    ckpt = save_timm_checkpoint(module, tmp_path / "t3", "pth")
    assert (
        cli.main(
            ["test_vit3", "--checkpoint", str(ckpt), "--out", str(tmp_path / "jax"), "--verify"]
        )
        == 0
    )
    diffs = _diffs(capsys.readouterr().out)
    assert set(diffs) == {
        "exported logits",
        "exported pre_logits",
        "checkpoint logits",
        "checkpoint pre_logits",
    }
    assert max(diffs.values()) < 1e-4
    model, variables = load_pretrained(tmp_path / "jax")
    x = images(module)
    assert_close(flax_forward(model, variables, x)[0], timm_forward(module, x)[0], "CLI output")

    assert (
        cli.main(
            [
                "test_vit3",
                "--checkpoint",
                str(tmp_path / "jax"),
                "--out",
                str(tmp_path / "back"),
                "--to-timm",
                "--verify",
            ]
        )
        == 0
    )
    assert max(_diffs(capsys.readouterr().out).values()) < 1e-4
    back = timm.create_model(f"local-dir:{tmp_path / 'back'}", pretrained=True).eval()
    assert_close(timm_forward(back, x)[0], timm_forward(module, x)[0], "timm local-dir logits")

    out = tmp_path / "back.safetensors"
    assert (
        cli.main(
            ["test_vit3", "--checkpoint", str(tmp_path / "jax"), "--out", str(out), "--to-timm"]
        )
        == 0
    )
    twin = timm.create_model(
        "test_vit3", pretrained=True, pretrained_cfg_overlay=dict(file=str(out))
    ).eval()
    assert_close(timm_forward(twin, x)[0], timm_forward(module, x)[0], "timm .safetensors logits")


def test_convert_timm_cli_new_head_and_img_size(tmp_path, capsys):
    cli = _cli()
    ckpt = save_timm_checkpoint(make_timm("test_vit"), tmp_path / "t", "safetensors")
    assert (
        cli.main(
            [
                "test_vit",
                "--checkpoint",
                str(ckpt),
                "--out",
                str(tmp_path / "o"),
                "--num-classes",
                "3",
                "--img-size",
                "96",
                "128",
                "--verify",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "img_size=(96, 128), num_classes=3" in out
    diffs = _diffs(out)
    assert "checkpoint logits" not in diffs  # fresh head: only pre-logits compare to the file
    assert max(diffs.values()) < 1e-4
    assert (
        cli.main(
            [
                "test_vit",
                "--checkpoint",
                str(tmp_path / "missing.pth"),
                "--out",
                str(tmp_path / "x"),
            ]
        )
        == 2
    )
    assert "missing.pth: no such file" in capsys.readouterr().err


@pytest.mark.slow
def test_convert_timm_cli_subprocess_pretrained_offline(tmp_path):
    module = make_timm("deit_tiny_patch16_224", depth=12)
    cache = tmp_path / "hub"
    lay_out_cache(cache, "timm/deit_tiny_patch16_224.fb_in1k", {"model.safetensors": module})
    env = dict(os.environ, HF_HUB_CACHE=str(cache), HF_HUB_OFFLINE="1", JAX_PLATFORMS="cpu")
    run = subprocess.run(
        [sys.executable, str(SCRIPT), "deit_tiny_patch16_224", "--out", str(tmp_path / "o"),
         "--verify"],
        capture_output=True, text=True, env=env, timeout=600, cwd=ROOT,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    diffs = _diffs(run.stdout)
    assert len(diffs) == 4 and max(diffs.values()) < 1e-4, run.stdout
    help_run = subprocess.run(
        [sys.executable, str(SCRIPT), "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert "--to-timm" in help_run.stdout and "--verify" in help_run.stdout
