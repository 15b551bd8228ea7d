"""Loading benchmark: vitjax create_model(checkpoint_path=...) + first logits against timm.

Each sample is a fresh process (imports not counted): vitjax runs create_model on a .safetensors
file, then a jitted batch-1 forward (compile included); timm runs timm.create_model with the same
file as its pretrained file (random init, then load_state_dict) and a batch-1 eager forward.
Peak RSS is the process's maximum resident set (file pages it maps count, as the kernel counts).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

_VITJAX = r"""
import json, resource, sys, time
import numpy as np, jax, jax.numpy as jnp, vitjax
name, path, dtype = sys.argv[1], sys.argv[2], sys.argv[3]
dt = jnp.bfloat16 if dtype == "bf16" else jnp.float32
rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
t0 = time.perf_counter()
model, variables = vitjax.create_model(name, checkpoint_path=path, dtype=dt)
jax.block_until_ready(variables)
t1 = time.perf_counter()
h, w = vitjax.util.to_2tuple(model.cfg.img_size)
x = np.zeros((1, h, w, model.cfg.in_chans), np.float32)
logits = np.asarray(jax.jit(model.apply)(variables, x))
t2 = time.perf_counter()
print(json.dumps({"load_s": t1 - t0, "logits_s": t2 - t1, "total_s": t2 - t0, "rss0": rss0,
                  "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                  "finite": bool(np.isfinite(logits).all())}))
"""

_TIMM = r"""
import json, resource, sys, time
import torch, timm
name, path, dtype = sys.argv[1], sys.argv[2], sys.argv[3]
rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
t0 = time.perf_counter()
model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": path}).eval()
if dtype == "bf16":
    model = model.to(torch.bfloat16)
t1 = time.perf_counter()
h, w = model.pretrained_cfg["input_size"][1:]
with torch.no_grad():
    x = torch.zeros(1, 3, h, w, dtype=next(model.parameters()).dtype)
    logits = model(x)
t2 = time.perf_counter()
print(json.dumps({"load_s": t1 - t0, "logits_s": t2 - t1, "total_s": t2 - t0, "rss0": rss0,
                  "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                  "finite": bool(torch.isfinite(logits).all())}))
"""

_MAKE = r"""
import sys, torch, timm
from safetensors.torch import save_file
name, path, dtype = sys.argv[1], sys.argv[2], sys.argv[3]
model = timm.create_model(name, pretrained=False)
dt = torch.bfloat16 if dtype == "bf16" else torch.float32
save_file({k: v.to(dt).contiguous() for k, v in model.state_dict().items()}, path)
"""


def weights_file(name: str, directory: str | os.PathLike, dtype: str = "fp32") -> Path:
    """A .safetensors file of timm's random weights for name (made once, then reused)."""
    path = Path(directory) / f"{name}_{dtype}.safetensors"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.safetensors")
        subprocess.run([sys.executable, "-c", _MAKE, name, str(tmp), dtype], check=True)
        os.replace(tmp, path)
    return path


def _sample(code: str, name: str, path: Path, dtype: str, timeout: float) -> dict[str, Any]:
    env = {**os.environ, "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "cpu")}
    out = subprocess.run(
        [sys.executable, "-c", code, name, str(path), dtype],
        capture_output=True, text=True, timeout=timeout, env=env, check=False,
    )  # fmt: skip
    if out.returncode:
        raise RuntimeError(f"{name}: worker failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _warm_page_cache(path: Path) -> None:
    with open(path, "rb") as f:
        while f.read(64 * 2**20):
            pass


def run_load_benchmark(
    names: list[str], directory: str | os.PathLike, rounds: int = 3, dtype: str = "fp32",
    timeout: float = 600,
) -> dict[str, Any]:  # fmt: skip
    """Median load / first-logits / total seconds and peak RSS, vitjax and timm, per model."""
    rows = []
    for name in names:
        path = weights_file(name, directory, dtype)
        _warm_page_cache(path)
        samples: dict[str, list[dict[str, Any]]] = {"vitjax": [], "timm": []}
        for _ in range(rounds):  # interleaved, so both see the same machine
            samples["vitjax"].append(_sample(_VITJAX, name, path, dtype, timeout))
            samples["timm"].append(_sample(_TIMM, name, path, dtype, timeout))
        row: dict[str, Any] = {"model": name, "file_bytes": path.stat().st_size, "dtype": dtype}
        for who, got in samples.items():
            for k in ("load_s", "logits_s", "total_s", "peak_rss", "rss0"):
                row[f"{who}_{k}"] = statistics.median(s[k] for s in got)
            row[f"{who}_finite"] = all(s["finite"] for s in got)
        row["total_ratio"] = row["vitjax_total_s"] / row["timm_total_s"]
        row["vitjax_rss_per_file"] = row["vitjax_peak_rss"] / row["file_bytes"]
        rows.append(row)
    return {"task": "load", "rounds": rounds, "rows": rows, "when": time.strftime("%Y-%m-%d")}


def load_to_markdown(res: dict[str, Any], command: str = "") -> str:
    """The load benchmark as a Markdown table."""
    gb = 2**30
    lines = [
        "# Loading: create_model from .safetensors + first logits, vitjax vs timm",
        "",
        f"Medians of {res['rounds']} fresh processes each (imports not counted), "
        f"{res['when']}. `{command}`"
        if command
        else "",
        "",
        "| model (file) | vitjax load / first logits / total | timm load / first logits / "
        "total | vitjax / timm total | peak RSS vitjax / timm | vitjax peak RSS / file |",
        "|---|---|---|---|---|---|",
    ]
    for r in res["rows"]:
        lines.append(
            f"| {r['model']} ({r['file_bytes'] / gb:.2f} GiB, {r['dtype']}) | "
            f"{r['vitjax_load_s']:.2f} / {r['vitjax_logits_s']:.2f} / {r['vitjax_total_s']:.2f} s"
            f" | {r['timm_load_s']:.2f} / {r['timm_logits_s']:.2f} / {r['timm_total_s']:.2f} s | "
            f"{r['total_ratio']:.2f}x | {r['vitjax_peak_rss'] / gb:.2f} / "
            f"{r['timm_peak_rss'] / gb:.2f} GiB | {r['vitjax_rss_per_file']:.2f}x |"
        )
    return "\n".join(lines) + "\n"
