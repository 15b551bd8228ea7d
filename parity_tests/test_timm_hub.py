"""pretrained=True offline: timm's pretrained config + a Hugging Face cache laid out by the test.

The cache (models--org--name/refs/main + snapshots/<commit>/model.safetensors) is written under
tmp_path; HF_HUB_CACHE points at it and the hub is offline. timm itself loads from the same cache
(cache_dir=...), which grounds the layout; vitjax must give timm's logits.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import huggingface_hub
import numpy as np
import pytest
import timm
from devtools.timm_verify import flax_forward, images, make_timm, timm_forward
from safetensors.torch import save_file

from parity_tests.parity import assert_close
from vitjax.factory import create_model, load_pretrained, save_pretrained
from vitjax.weights import hub

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def lay_out_cache(cache, repo_id: str, files: dict) -> None:
    """Write files into the hub cache layout for repo_id at COMMIT, with refs/main."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(COMMIT)
    snap = repo / "snapshots" / COMMIT
    snap.mkdir(parents=True, exist_ok=True)
    for name, module in files.items():
        sd = {k: v.detach().contiguous() for k, v in module.state_dict().items()}
        save_file(sd, str(snap / name))


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return cache


def test_pretrained_from_hf_cache_matches_torch(offline_cache):
    name = "vit_tiny_patch16_224"
    module = make_timm(name, depth=2)
    lay_out_cache(
        offline_cache,
        "timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k",
        {"model.safetensors": module},
    )
    path = hub.pretrained_checkpoint(name)
    assert path.parent.name == COMMIT and path.name == "model.safetensors"
    twin = timm.create_model(name, pretrained=True, depth=2, cache_dir=offline_cache).eval()
    model, variables = create_model(name, pretrained=True, depth=2)
    x = images(module)
    assert_close(
        flax_forward(model, variables, x)[0],
        timm_forward(twin, x)[0],
        "pretrained=True logits (HF cache)",
    )


def test_tagged_pretrained_uses_the_tags_classes(offline_cache):
    name = "vit_tiny_patch16_224.augreg_in21k"
    module = make_timm(name, depth=1)
    assert module.num_classes == 21843
    lay_out_cache(offline_cache, f"timm/{name}", {"model.safetensors": module})
    model, variables = create_model(name, pretrained=True, depth=1)
    assert model.cfg.num_classes == 21843
    x = images(module, batch=1)
    assert_close(flax_forward(model, variables, x)[0], timm_forward(module, x)[0], "in21k logits")


def test_not_cached_is_a_clear_error(offline_cache):
    with pytest.raises(hub.PretrainedNotFoundError) as e:
        create_model("deit_tiny_patch16_224", pretrained=True)
    msg = str(e.value)
    assert "timm/deit_tiny_patch16_224.fb_in1k/model.safetensors" in msg
    assert "`hf download timm/deit_tiny_patch16_224.fb_in1k model.safetensors`" in msg
    assert "HF_HUB_OFFLINE is set" in msg


def test_cache_lookup_without_huggingface_hub_or_timm(offline_cache, monkeypatch):
    module = make_timm("deit_tiny_patch16_224", depth=1)
    lay_out_cache(
        offline_cache, "timm/deit_tiny_patch16_224.fb_in1k", {"model.safetensors": module}
    )
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    monkeypatch.setitem(sys.modules, "timm", None)
    monkeypatch.setitem(sys.modules, "timm.models", None)
    cfg = hub.resolve_pretrained_cfg("deit_tiny_patch16_224")
    assert cfg["hf_hub_id"] == "timm/deit_tiny_patch16_224.fb_in1k"
    assert cfg["mean"] == (0.485, 0.456, 0.406)
    path = hub.pretrained_checkpoint("deit_tiny_patch16_224")
    assert path == (
        offline_cache
        / "models--timm--deit_tiny_patch16_224.fb_in1k"
        / "snapshots"
        / COMMIT
        / "model.safetensors"
    )
    assert hub.resolve_pretrained_cfg("vit_huge_patch14_224.orig_in21k")["hf_hub_id"] == (
        "timm/vit_huge_patch14_224.orig_in21k"
    )
    with pytest.raises(ValueError, match="without timm installed"):
        hub.resolve_pretrained_cfg("vit_huge_patch14_224")


def test_save_pretrained_stores_timms_pretrained_cfg(tmp_path):
    model, variables = create_model("deit_tiny_patch16_224", depth=1)
    save_pretrained(tmp_path / "out", model, variables, pretrained_cfg="deit_tiny_patch16_224")
    cfg = json.loads((tmp_path / "out" / "config.json").read_text())["pretrained_cfg"]
    assert cfg["mean"] == [0.485, 0.456, 0.406] and cfg["std"] == [0.229, 0.224, 0.225]
    assert (cfg["interpolation"], cfg["crop_pct"], cfg["input_size"]) == (
        "bicubic",
        0.9,
        [3, 224, 224],
    )
    assert len(cfg["label_names"]) == 1000 and cfg["label_descriptions"][1].startswith("goldfish")
    model2, _ = load_pretrained(tmp_path / "out")
    assert model2.cfg == model.cfg
    small, small_vars = create_model("deit_tiny_patch16_224", depth=1, num_classes=3, img_size=96)
    save_pretrained(tmp_path / "ft", small, small_vars, pretrained_cfg="deit_tiny_patch16_224")
    cfg = json.loads((tmp_path / "ft" / "config.json").read_text())["pretrained_cfg"]
    assert cfg["num_classes"] == 3 and cfg["input_size"] == [3, 96, 96]
    assert "label_names" not in cfg


NO_TORCH = """
import sys, numpy as np


class _Blocked:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "timm"):
            raise ImportError(f"{name} is blocked in this test")


sys.meta_path.insert(0, _Blocked())
import jax
jax.config.update("jax_default_matmul_precision", "highest")
import vitjax
x = np.load(sys.argv[1])
out = {}
for key, name, path, kw in [
    ("ckpt", "deit3_small_patch16_224", sys.argv[2], dict(depth=2, img_size=160)),
    ("npz", "vit_tiny_patch16_224", sys.argv[3], dict(depth=2)),
    ("hub", "deit_tiny_patch16_224", None, dict(depth=1)),
]:
    model, variables = vitjax.create_model(name, path is None, path, **kw)
    size = vitjax.util.to_2tuple(model.cfg.img_size)
    out[key] = np.asarray(model.apply(variables, x[:, : size[0], : size[1]]))
assert "torch" not in sys.modules and "timm" not in sys.modules
np.savez(sys.argv[4], **out)
"""


def test_vitjax_reads_timm_files_without_torch(offline_cache, tmp_path):
    from devtools.timm_verify import save_timm_checkpoint

    deit3 = make_timm("deit3_small_patch16_224", depth=2)
    d3 = save_timm_checkpoint(deit3, tmp_path / "d3", "safetensors")
    deit3_160 = timm.create_model(
        "deit3_small_patch16_224", pretrained=True, depth=2, img_size=160,
        pretrained_cfg_overlay=dict(file=str(d3)),
    ).eval()  # fmt: skip
    tiny = make_timm("vit_tiny_patch16_224", depth=2)
    save_timm_checkpoint(tiny, tmp_path / "tiny", "npz_vit_jax")
    deit = make_timm("deit_tiny_patch16_224", depth=1)
    lay_out_cache(offline_cache, "timm/deit_tiny_patch16_224.fb_in1k", {"model.safetensors": deit})
    x = images(tiny)
    np.save(tmp_path / "x.npy", x)
    script = tmp_path / "no_torch.py"
    script.write_text(NO_TORCH)
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(Path(__file__).parents[1]))
    args = [sys.executable, str(script), str(tmp_path / "x.npy"), str(tmp_path / "d3.safetensors"),
            str(tmp_path / "tiny.npz"), str(tmp_path / "out.npz")]  # fmt: skip
    run = subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    out = np.load(tmp_path / "out.npz")
    assert_close(
        out["ckpt"], timm_forward(deit3_160, x[:, :160, :160])[0], "no-torch .safetensors @160"
    )
    assert_close(out["npz"], timm_forward(tiny, x)[0], "no-torch .npz")
    assert_close(out["hub"], timm_forward(deit, x)[0], "no-torch pretrained=True")
