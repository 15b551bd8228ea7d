"""Compile time and training memory against depth: scan_blocks and remat_policy on and off.

    python scripts/devtools/depth_bench.py --out docs/benchmarks/depth.md

Every configuration runs in a fresh subprocess (no compilation cache shared). It jit-compiles
vitjax.training's train_step (value_and_grad, optax Adam update, donated state) and the forward
on abstract shapes (``jax.eval_shape``: nothing is allocated, so full widths compile anywhere),
and reads XLA's memory analysis of the compiled step: ``temp`` is its peak scratch (the
activations kept for the backward pass, gradients, optimizer temporaries), ``args`` the params,
Adam state and batch. Three tables: compile-time scaling against depth at a cut width (also
run: median step time, peak RSS), run time at a common width (``--speed-widths``), and memory
at timm's large / giant widths (compiled only). Compile time is wall time of
``lower().compile()``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from typing import Any

# timm's widths: (embed_dim, depth, num_heads, mlp hidden)
WIDTHS = {"small": (384, 12, 6, 1536), "base": (768, 12, 12, 3072),
          "large": (1024, 24, 16, 4096), "huge": (1280, 32, 16, 5120),
          "giant": (1408, 40, 16, 6144)}  # fmt: skip


def _worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Compile (and with spec['run'], run) one configuration; figures as a dict."""
    import resource

    import jax
    import jax.numpy as jnp
    import numpy as np

    from vitjax import training
    from vitjax.models.vit import VisionTransformer
    from vitjax.models.vit_config import ViTConfig, mlp_ratio_for

    dim, depth, heads, hidden = spec["dim"], spec["depth"], spec["heads"], spec["hidden"]
    cfg = ViTConfig(
        img_size=spec["img"], patch_size=spec["patch"], embed_dim=dim, depth=depth,
        num_heads=heads, mlp_ratio=mlp_ratio_for(dim, hidden), num_classes=1000,
        scan_blocks=spec["scan"], remat_policy=spec["remat"],
    )  # fmt: skip
    model = VisionTransformer(cfg)
    B = spec["batch"]
    images = jax.ShapeDtypeStruct((B, cfg.img_size, cfg.img_size, 3), jnp.float32)
    labels = jax.ShapeDtypeStruct((B,), jnp.int32)
    tx = training.make_optimizer("adam", 1e-4)
    key = jax.random.PRNGKey(0)

    def new_state(k: jax.Array) -> training.TrainState:
        variables = model.init(k, jnp.zeros(images.shape, images.dtype))
        return training.create_train_state(model, variables, tx)

    abstract = jax.eval_shape(new_state, key)
    step = jax.jit(training.train_step, donate_argnums=0)
    t = time.perf_counter()
    compiled = step.lower(abstract, {"image": images, "label": labels}, key).compile()
    out: dict[str, Any] = {"train_compile_s": time.perf_counter() - t}
    mem = compiled.memory_analysis()
    out["temp_bytes"] = int(mem.temp_size_in_bytes)
    out["arg_bytes"] = int(mem.argument_size_in_bytes)
    fwd = jax.jit(lambda p, x: model.apply({"params": p}, x))
    t = time.perf_counter()
    fwd_compiled = fwd.lower(abstract.params, images).compile()
    out["infer_compile_s"] = time.perf_counter() - t
    out["compile_peak_rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if spec["run"]:
        state = jax.jit(new_state)(key)
        rng = np.random.default_rng(0)
        batch = {"image": rng.standard_normal(images.shape, np.float32),
                 "label": rng.integers(0, 1000, B).astype(np.int32)}  # fmt: skip
        times = []
        for _ in range(spec["steps"] + 1):  # the first is a warm-up
            t = time.perf_counter()
            state, metrics = compiled(state, batch, key)
            jax.block_until_ready(metrics)
            times.append(time.perf_counter() - t)
        out["step_s"] = statistics.median(times[1:])
        t = time.perf_counter()
        for _ in range(spec["steps"]):
            jax.block_until_ready(fwd_compiled(state.params, batch["image"]))
        out["infer_s"] = (time.perf_counter() - t) / spec["steps"]
        out["peak_rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return out


def run_one(spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    """spec's figures from a fresh `python depth_bench.py --worker SPEC` process."""
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", json.dumps(spec)]
    t = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {**spec, "error": f"timed out after {timeout:.0f} s"}
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if p.returncode or not lines:
        return {**spec, "error": (p.stderr.strip().splitlines() or ["no output"])[-1]}
    return {**spec, **json.loads(lines[-1]), "process_s": time.perf_counter() - t}


def _gib(n: float | None) -> str:
    return "" if n is None else f"{n / 2**30:.2f}"


def _cell(r: dict[str, Any], key: str, fmt: str) -> str:
    return format(r[key], fmt) if key in r else ""


def to_markdown(results: list[dict[str, Any]], command: str, info: dict[str, Any]) -> str:
    """The results as Markdown tables: per width, a row per (depth, scan, remat)."""
    lines = [
        "# Compile time and training memory against depth",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {info['cpu']} ({info['cores']} cores, load average {info['load']} at the "
        f"start, shared with other jobs), jax {info['jax']}, flax {info['flax']}; fp32, CPU, "
        "one fresh process per row. Compile: wall time of `jit(...).lower(...).compile()` of "
        "`vitjax.training.train_step` (value_and_grad + Adam, donated state) and of the forward. "
        "temp / args: XLA's memory analysis of the compiled train step (peak scratch: the "
        "activations kept for the backward pass, gradients, optimizer temporaries; params + Adam "
        "state + batch). step / forward: median seconds per training step (after one warm-up) / "
        "mean per forward; peak RSS: the process's maximum resident set (compile + run). Rows "
        "run one after another on a shared machine: compare step times within a table.",
        "",
    ]
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in results:
        groups.setdefault((r["width"], r["dim"], r["heads"], r["img"], r["patch"], r["batch"]),
                          []).append(r)  # fmt: skip
    for (width, dim, heads, img, patch, batch), rows in groups.items():
        tokens = (img // patch) ** 2 + 1
        lines += [
            f"## {width}: embed_dim {dim}, {heads} heads, MLP {rows[0]['hidden']}, "
            f"{img} px / patch {patch} ({tokens} tokens), batch {batch}",
            "",
            "| depth | scan_blocks | remat_policy | train compile s | forward compile s | "
            "temp GiB | args GiB | step s | forward s | peak RSS GiB |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            if "error" in r:
                lines.append(f"| {r['depth']} | {r['scan']} | {r['remat']} | {r['error']} "
                             "| | | | | | |")  # fmt: skip
                continue
            lines.append(
                f"| {r['depth']} | {r['scan']} | {r['remat']} | {r['train_compile_s']:.1f} | "
                f"{r['infer_compile_s']:.1f} | {_gib(r['temp_bytes'])} | {_gib(r['arg_bytes'])} "
                f"| {_cell(r, 'step_s', '.3f')} | {_cell(r, 'infer_s', '.3f')} | "
                f"{_gib(r.get('peak_rss'))} |"
            )
        lines.append("")
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    from importlib.metadata import version

    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return {"cpu": cpu, "cores": os.cpu_count(), "load": load, "jax": version("jax"),
            "flax": version("flax")}  # fmt: skip


def _ints(s: str) -> list[int]:
    return [int(x) for x in s.split(",") if x]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--depths", default="12,24,40", help="scaling table: comma list of depths")
    p.add_argument("--dim", type=int, default=256, help="scaling table: embed_dim (cut width)")
    p.add_argument("--heads", type=int, default=4, help="scaling table: num_heads")
    p.add_argument("--img-size", type=int, default=64, help="scaling table: image size")
    p.add_argument("--widths", default="large,giant",
                   help="memory table: timm widths at their own depth, 224 px patch 14 "
                   "(compiled only); '' for none")  # fmt: skip
    p.add_argument("--wide-img-size", type=int, default=224, help="memory table: image size")
    p.add_argument("--speed-widths", default="small",
                   help="run-time table: timm widths at their own depth, 224 px patch 16, "
                   "compiled and run for --speed-steps steps; '' for none")  # fmt: skip
    p.add_argument("--speed-steps", type=int, default=8, help="run-time table: timed steps")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--scan", default="off,on", help="comma list of off, on")
    p.add_argument("--remat", default="none,full", help="comma list of remat policies")
    p.add_argument("--steps", type=int, default=3, help="scaling table: timed steps")
    p.add_argument("--timeout", type=float, default=600, help="seconds per configuration")
    p.add_argument("--out", default=None, help="Markdown file to write (and .json beside it)")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker is not None:
        print(json.dumps(_worker(json.loads(a.worker))), flush=True)
        return 0

    scans = [s == "on" for s in a.scan.split(",") if s]
    remats = [r for r in a.remat.split(",") if r]
    specs = []
    dim, heads = a.dim, a.heads
    for depth, scan, remat in itertools.product(_ints(a.depths), scans, remats):
        specs.append(dict(width=f"cut (vit_large-style, {dim} wide)", dim=dim, depth=depth,
                          heads=heads, hidden=4 * dim, img=a.img_size, patch=16,
                          batch=a.batch_size, scan=scan, remat=remat, run=True,
                          steps=a.steps))  # fmt: skip
    for width in [w for w in a.speed_widths.split(",") if w]:
        wdim, wdepth, wheads, hidden = WIDTHS[width]
        for scan, remat in itertools.product(scans, remats):
            specs.append(dict(width=f"vit_{width} (run time)", dim=wdim, depth=wdepth,
                              heads=wheads, hidden=hidden, img=224, patch=16,
                              batch=a.batch_size, scan=scan, remat=remat, run=True,
                              steps=a.speed_steps))  # fmt: skip
    for width in [w for w in a.widths.split(",") if w]:
        wdim, wdepth, wheads, hidden = WIDTHS[width]
        for scan, remat in itertools.product(scans, remats):
            specs.append(dict(width=f"vit_{width} (compiled only)", dim=wdim, depth=wdepth,
                              heads=wheads, hidden=hidden, img=a.wide_img_size, patch=14,
                              batch=a.batch_size, scan=scan, remat=remat, run=False,
                              steps=0))  # fmt: skip
    info = machine()
    results = []
    for spec in specs:
        r = run_one(spec, a.timeout)
        results.append(r)
        print(json.dumps({k: v for k, v in r.items() if k not in ("run", "steps")}), flush=True)
    argv_used = sys.argv[1:] if argv is None else argv
    command = "python scripts/devtools/depth_bench.py " + " ".join(map(shlex.quote, argv_used))
    md = to_markdown(results, command.strip(), info)
    if a.out:
        with open(a.out, "w") as f:
            f.write(md)
        with open(os.path.splitext(a.out)[0] + ".json", "w") as f:
            json.dump({"machine": info, "results": results}, f, indent=1)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
