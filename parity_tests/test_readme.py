"""The README's code runs as written: its Python blocks, and the notebook section's commands.

Stand-in files take the place of the user's: a timm `model.safetensors` (random weights), a small
`dogs_cats/train/{cat,dog}` JPEG folder and a timm `vit_base_patch16_224.safetensors`. The
Quick-start and Install blocks are what CI itself runs (`make test`, `make core-check`).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from parity_tests.child_env import same_xla_env
from parity_tests.test_hub_download import hub, timm_repo  # noqa: F401  (the loopback hub)

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def blocks(lang: str, section: str | None = None) -> list[str]:
    """The README's fenced blocks of a language (in one '## ' section, or everywhere)."""
    text = README
    if section is not None:
        text = text.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(rf"```{lang}\n(.*?)```", text, flags=re.S)


def commands(block: str) -> list[list[str]]:
    """The shell commands of a bash block (comments dropped, continuation lines joined)."""
    joined = re.sub(r"\\\n\s*", " ", block)
    return [shlex.split(line) for line in joined.splitlines() if line.strip() and
            not line.lstrip().startswith("#")]  # fmt: skip


def _timm_file(name: str, path: Path) -> None:
    import timm
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(0)
    net = timm.create_model(name, pretrained=False)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))


def _jpeg_folder(root: Path, per_class: int = 4) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in ("cat", "dog"):
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (60 + 7 * i, 80, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / c / f"{c}.{i}.jpg", quality=90)


def test_readme_python_blocks_run_as_written(tmp_path, monkeypatch, hub):  # noqa: F811
    """Every Python block, with the hub on 127.0.0.1 (test_hub_download's) serving its repo."""
    import timm

    found = blocks("python")
    assert len(found) >= 3
    _timm_file("vit_tiny_patch16_224", tmp_path / "model.safetensors")
    net = timm.create_model("vit_tiny_patch16_224", pretrained=False)
    hub.add("timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k", timm_repo(net, tmp_path))
    monkeypatch.chdir(tmp_path)
    for code in found:
        exec(compile(code, "README.md", "exec"), {"__name__": "__readme__"})
    assert (tmp_path / "out" / "model.safetensors").is_file()


@pytest.mark.slow
def test_readme_notebook_commands_run_as_written(tmp_path):
    (block,) = blocks("bash", "The notebook in vitjax")
    cmds = commands(block)
    assert [c[0] for c in cmds][:3] == ["vitjax-train", "vitjax-plot-schedules", "python"]
    _jpeg_folder(tmp_path / "dogs_cats" / "train")
    _timm_file("vit_base_patch16_224", tmp_path / "vit_base_patch16_224.safetensors")
    bindir = str(Path(sys.executable).parent)  # the venv's console scripts and python
    env = same_xla_env()  # 20 epochs at 224 px and a vit_base: long runs, not compile-bound
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    for cmd in cmds:
        proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=900)  # fmt: skip
        assert proc.returncode == 0, f"{shlex.join(cmd)}:\n{proc.stderr[-3000:]}"
    assert (tmp_path / "schedules.png").stat().st_size > 0
    assert (tmp_path / "runs" / "notebook" / "model" / "model.safetensors").is_file()
    log = (tmp_path / "runs" / "finetune" / "metrics.jsonl").read_text().splitlines()
    assert len(log) == 3
