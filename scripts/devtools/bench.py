"""Throughput benchmarks: vitjax (jit) against vittorch (eager, torch.compile); data loading.

Each framework mode runs in its own spawned worker process (own threads, own peak memory); the
parent interleaves one timed sample per mode and task, round by round, rotating the order, and
reports medians and ranges. A sample is ``steps`` calls of one training step (forward, backward,
Adam) or one inference forward, on the same fixed batch.

FLOPs are counted analytically from the config (``forward_flops``: 2*M*N*K for every matmul and
the patch convolution; norms, activations, softmax and the optimizer are not counted). A training
step counts forward + backward = 3x forward, less the patch embedding's input gradient (images need
none). XLA's own cost analysis of the compiled step is recorded beside it as a cross-check.

This module imports neither torch nor jax at import time: workers import what they run.
"""

from __future__ import annotations

import atexit
import json
import multiprocessing as mp
import os
import platform
import resource
import shutil
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from vitjax.models.vit_config import ViTConfig
from vitjax.registry import get_config
from vitjax.util import to_2tuple

MODES = ("jax", "eager", "compile")
TASKS = ("train", "infer")
MODE_NAMES = {"jax": "vitjax (jit)", "eager": "PyTorch eager", "compile": "torch.compile"}


# ----------------------------------------------------------------------------- FLOPs


def forward_flops(cfg: ViTConfig) -> float:
    """Matmul FLOPs of one image's forward pass (patch conv, qkv, attention, proj, MLP, head)."""
    D, N = cfg.embed_dim, cfg.num_patches + cfg.num_prefix_tokens
    qkv = 2 * N * D * 3 * D
    attn = 2 * 2 * N * N * D  # q @ k^T and attn @ v, all heads
    proj = 2 * N * D * D
    mlp = 2 * 2 * N * D * cfg.mlp_hidden
    blocks = cfg.depth * (qkv + attn + proj + mlp)
    heads = (1 + int(cfg.distilled)) * 2 * D * max(cfg.num_classes, 0)
    return float(patch_flops(cfg) + blocks + heads)


def patch_flops(cfg: ViTConfig) -> float:
    """Matmul FLOPs of one image's patch embedding."""
    ph, pw = to_2tuple(cfg.patch_size)
    return float(2 * cfg.num_patches * ph * pw * cfg.in_chans * cfg.embed_dim)


def train_flops(cfg: ViTConfig) -> float:
    """Matmul FLOPs of one image's training step: forward + backward (no image gradient)."""
    return 3 * forward_flops(cfg) - patch_flops(cfg)


# ----------------------------------------------------------------------------- machine


def _timeit(fn: Any, repeats: int) -> tuple[float, float]:
    """Best wall seconds and median CPU seconds of fn() over repeats (after one warm-up)."""
    fn()
    walls, cpus = [], []
    for _ in range(repeats):
        c, t = time.process_time(), time.perf_counter()
        fn()
        walls.append(time.perf_counter() - t)
        cpus.append(time.process_time() - c)
    return min(walls), float(np.median(cpus))


def matmul_peak(n: int = 2048, repeats: int = 8, threads: int | None = None) -> dict[str, float]:
    """fp32 GFLOP/s of an n^3 matmul in numpy, torch and jax: best wall time, and CPU-normalised.

    'peak' is the best wall GFLOP/s of the three; 'peak_cpu_normalised' the best of
    flops x threads / median CPU seconds (robust to other load on the machine).
    """
    import jax
    import jax.numpy as jnp

    threads = threads or os.cpu_count() or 1
    flops = 2.0 * n**3
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    fns: dict[str, Any] = {"numpy": lambda: a @ a}
    try:
        import torch

        torch.set_num_threads(threads)
        t = torch.from_numpy(a.copy())
        fns["torch"] = lambda: t @ t
    except ImportError:
        pass
    j = jnp.asarray(a)
    mm = jax.jit(lambda x: x @ x)
    fns["jax"] = lambda: mm(j).block_until_ready()
    out: dict[str, float] = {}
    for name, fn in fns.items():
        wall, cpu = _timeit(fn, repeats)
        out[name] = flops / wall / 1e9
        out[f"{name}_cpu_normalised"] = flops * threads / cpu / 1e9
    out["peak"] = max(out[k] for k in fns)
    out["peak_cpu_normalised"] = max(out[f"{k}_cpu_normalised"] for k in fns)
    return out


def machine_info() -> dict[str, Any]:
    """CPU model, core count, load average and library versions."""
    info: dict[str, Any] = {"platform": platform.platform(), "cores": os.cpu_count()}
    try:
        with open("/proc/cpuinfo") as f:
            names = [ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")]
        info["cpu"] = names[0] if names else platform.processor()
    except OSError:
        info["cpu"] = platform.processor()
    try:
        with open("/proc/meminfo") as f:
            info["mem_gib"] = round(int(f.readline().split()[1]) / 2**20, 1)
    except (OSError, ValueError, IndexError):
        pass
    info["loadavg"] = list(os.getloadavg())
    info["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "")
    from importlib.metadata import PackageNotFoundError, version

    for pkg in ("jax", "jaxlib", "flax", "optax", "torch", "numpy"):
        try:
            info[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return info


def _rss_bytes() -> int:
    """Current resident set size of this process."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


# ----------------------------------------------------------------------------- workers


def _batch(cfg: ViTConfig, batch_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    h, w = to_2tuple(cfg.img_size)
    images = rng.standard_normal((batch_size, h, w, cfg.in_chans), dtype=np.float32)
    labels = rng.integers(0, max(cfg.num_classes, 1), batch_size).astype(np.int32)
    return images, labels


def _jax_runner(spec: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Compiled jax train step and inference as vitjax.training runs them; compile stats.

    The CPU is split into ``spec["cpu_devices"]`` devices first (devtools.cpu_tuning), and the step
    is vitjax.training's data-parallel one over them (state replicated and donated, batch sharded).
    """
    from devtools import cpu_tuning as runtime

    runtime.split_cpu_into_devices(spec.get("cpu_devices", 1))
    import jax
    import optax  # noqa: F401  (imported before timing)
    from jax.sharding import NamedSharding, PartitionSpec

    from vitjax import training as vtrain
    from vitjax.factory import create_model

    mesh = vtrain.make_mesh()
    vtrain.check_batch_size(spec["batch_size"], mesh)
    model, variables = create_model(spec["model"], seed=spec["seed"], **spec["overrides"])
    images, labels = _batch(model.cfg, spec["batch_size"], spec["seed"])
    batch = vtrain.shard_batch({"image": images, "label": labels}, mesh)
    tx = vtrain.make_optimizer("adam", spec["lr"])
    state = [vtrain.replicate(vtrain.create_train_state(model, variables, tx), mesh)]
    rng = jax.random.PRNGKey(spec["seed"])
    stats: dict[str, Any] = {"devices": mesh.devices.size}
    run: dict[str, Any] = {}
    if "train" in spec["tasks"]:
        t = time.perf_counter()
        step = vtrain.jit_steps(mesh)[0].lower(state[0], batch, rng).compile()
        stats["train_compile_s"] = time.perf_counter() - t
        stats["train_xla"] = _xla_stats(step, mesh.devices.size)

        def train() -> None:
            state[0], metrics = step(state[0], batch, rng)
            jax.block_until_ready(metrics)

        run["train"] = train
    if "infer" in spec["tasks"]:
        params = vtrain.replicate(
            jax.tree_util.tree_map(lambda x: x.copy(), variables["params"]), mesh
        )
        t = time.perf_counter()
        fwd = jax.jit(
            lambda p, x: model.apply({"params": p}, x),
            in_shardings=(NamedSharding(mesh, PartitionSpec()), batch["image"].sharding),
        )
        fwd = fwd.lower(params, batch["image"]).compile()
        stats["infer_compile_s"] = time.perf_counter() - t
        stats["infer_xla"] = _xla_stats(fwd, mesh.devices.size)
        run["infer"] = lambda: fwd(params, batch["image"]).block_until_ready()
    return run, stats


def _xla_stats(compiled: Any, devices: int = 1) -> dict[str, Any]:
    """XLA's cost analysis (flops) and memory analysis (buffer bytes) of a compiled function.

    XLA reports one device's share of an SPMD program: the figures are that times ``devices``.
    """
    out: dict[str, Any] = {}
    try:
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        out["flops"] = float(cost.get("flops", float("nan"))) * devices
    except Exception:  # noqa: BLE001 (backends without cost analysis)
        pass
    try:
        mem = compiled.memory_analysis()
        out["temp_bytes"] = int(mem.temp_size_in_bytes) * devices
        out["argument_bytes"] = int(mem.argument_size_in_bytes) * devices
        out["output_bytes"] = int(mem.output_size_in_bytes) * devices
        out["alias_bytes"] = int(mem.alias_size_in_bytes) * devices
        out["total_bytes"] = (
            out["temp_bytes"] + out["argument_bytes"] + out["output_bytes"] - out["alias_bytes"]
        )
    except Exception:  # noqa: BLE001
        pass
    return out


def _torch_runner(spec: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """vittorch train step (Adam) and inference, eager or torch.compile'd; first-call times."""
    if spec["mode"] == "compile" and spec.get("cold_compile", True):
        # A fresh inductor cache: the compile time measured is a first compile's.
        cache = tempfile.mkdtemp(prefix="vitjax-bench-inductor-")
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache
        atexit.register(shutil.rmtree, cache, ignore_errors=True)
    import torch
    import torch.nn.functional as F

    import vittorch

    torch.set_num_threads(spec["threads"])
    torch.manual_seed(spec["seed"])
    net = vittorch.create_model(spec["model"], **spec["overrides"])
    images, labels = _batch(net.cfg, spec["batch_size"], spec["seed"])
    x = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())  # (B, C, H, W)
    y = torch.from_numpy(labels.astype(np.int64))
    opt = torch.optim.Adam(net.parameters(), lr=spec["lr"])
    fn = torch.compile(net) if spec["mode"] == "compile" else net

    def train() -> None:
        net.train()
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(fn(x), y).backward()
        opt.step()

    def infer() -> None:
        net.eval()
        with torch.inference_mode():
            fn(x)

    run = {k: v for k, v in (("train", train), ("infer", infer)) if k in spec["tasks"]}
    stats: dict[str, Any] = {}
    for task, f in run.items():
        t = time.perf_counter()
        f()  # first call: torch.compile compiles here
        stats[f"{task}_compile_s"] = time.perf_counter() - t
    return run, stats


def _worker(conn: Any, spec: dict[str, Any]) -> None:
    """Build one mode's functions, then time one sample per 'run' request until 'stop'."""
    try:
        if spec.get("keep_freed_memory", True):  # before jax/torch start their threads
            from devtools.cpu_tuning import keep_freed_memory

            keep_freed_memory()
        base_rss = _rss_bytes()
        runner = _jax_runner if spec["mode"] == "jax" else _torch_runner
        run, stats = runner(spec)
        stats["base_rss_bytes"] = base_rss
        conn.send(("ready", stats))
        while True:
            msg = conn.recv()
            if msg[0] == "stop":
                break
            if msg[0] == "stats":
                conn.send(("stats", {"peak_rss_bytes": _peak_rss_bytes()}))
                continue
            task, steps = msg[1], msg[2]
            c, t = time.process_time(), time.perf_counter()
            for _ in range(steps):
                run[task]()
            conn.send(("time", time.perf_counter() - t, time.process_time() - c))
    except Exception as e:  # noqa: BLE001 (reported to the parent)
        import traceback

        conn.send(("error", f"{type(e).__name__}: {e}\n{traceback.format_exc()}"))


class _Worker:
    def __init__(self, spec: dict[str, Any]) -> None:
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker, args=(child, spec), daemon=True)
        self.proc.start()
        self.mode = spec["mode"]

    def recv(self) -> tuple[Any, ...]:
        msg = self.conn.recv()
        if msg[0] == "error":
            self.close()
            raise RuntimeError(f"benchmark worker '{self.mode}' failed: {msg[1]}")
        return msg

    def time(self, task: str, steps: int) -> tuple[float, float]:
        self.conn.send(("run", task, steps))
        _, wall, cpu = self.recv()
        return wall, cpu

    def close(self) -> None:
        try:
            self.conn.send(("stop",))
        except (OSError, BrokenPipeError):
            pass
        self.proc.join(timeout=30)
        if self.proc.is_alive():
            self.proc.kill()


# ----------------------------------------------------------------------------- benchmark


def _summary(
    walls: Sequence[float], cpus: Sequence[float], images: int, threads: int
) -> dict[str, Any]:
    w = np.asarray(walls)
    return {
        # Throughput if the process had its cores to itself: robust to other load on the machine.
        "cpu_normalised_images_per_s": images * threads / float(np.median(cpus)),
        "images_per_s": images / float(np.median(w)),
        "images_per_s_min": images / float(w.max()),
        "images_per_s_max": images / float(w.min()),
        "step_s_median": float(np.median(w)),
        "cpu_s_per_sample_median": float(np.median(cpus)),
        "samples": len(w),
    }


def run_benchmark(
    model: str = "vit_tutorial_patch28_224",
    batch_size: int = 32,
    rounds: int = 5,
    warmup: int = 1,
    modes: Sequence[str] = MODES,
    tasks: Sequence[str] = TASKS,
    steps: int = 1,
    threads: int | None = None,
    seed: int = 0,
    lr: float = 1e-3,
    peak: dict[str, float] | None = None,
    keep_freed_memory: bool = True,
    cpu_devices: int | None = None,
    bound: bool = True,
    verbose: bool = True,
    **overrides: Any,
) -> dict[str, Any]:
    """Interleaved medians of images/s for each mode and task, with FLOPs, compile time, memory.

    ``peak`` (from ``matmul_peak``) is measured here when not given. ``threads`` (default: the
    core count) is torch's intra-op thread count; XLA's CPU runtime uses every core by default.
    ``keep_freed_memory``: every worker, of every mode alike, starts with
    ``devtools.cpu_tuning.keep_freed_memory()`` (for training the opt-in
    ``scripts/train.py --keep-freed-memory``); False: glibc's defaults.
    ``cpu_devices``: the CPU devices vitjax's worker splits the cores into
    (``devtools.cpu_tuning.split_cpu_into_devices``; default: the rule ``cpu_devices_for``;
    ``vitjax-train --cpu-devices N`` is the training opt-in). ``bound``: also time every matmul
    of the step in isolation
    (``devtools.matmul_bound``) and report the matmul-only images/s and each mode's share of it.
    """
    bad = [m for m in modes if m not in MODES] + [t for t in tasks if t not in TASKS]
    if bad:
        raise ValueError(f"unknown modes/tasks {bad}: modes {MODES}, tasks {TASKS}")
    threads = threads or os.cpu_count() or 1
    cfg = get_config(model, **overrides)
    if cpu_devices is None:
        from devtools.cpu_tuning import cpu_devices_for

        cpu_devices = cpu_devices_for(cfg, batch_size)
    log = print if verbose else (lambda *a, **k: None)
    info = machine_info()
    if peak is None:
        log("measuring the fp32 matmul peak ...")
        peak = matmul_peak(threads=threads)
    mm_bound = None
    if bound:
        from devtools.matmul_bound import matmul_bound

        log("timing the step's matmuls in isolation (matmul-only bound) ...")
        mm_bound = matmul_bound(cfg, batch_size, tuple(tasks), threads=threads)
    spec = dict(
        model=model,
        batch_size=batch_size,
        tasks=tuple(tasks),
        threads=threads,
        seed=seed,
        lr=lr,
        overrides=overrides,
        keep_freed_memory=keep_freed_memory,
        cpu_devices=cpu_devices,
    )
    workers: dict[str, _Worker] = {}
    compile_stats: dict[str, Any] = {}
    try:
        for mode in modes:  # built one at a time: compile times are not disturbed by each other
            log(f"building {MODE_NAMES[mode]} ...")
            workers[mode] = _Worker({**spec, "mode": mode})
            compile_stats[mode] = workers[mode].recv()[1]
        for _ in range(warmup):
            for mode in modes:
                for task in tasks:
                    workers[mode].time(task, steps)
        walls: dict[tuple[str, str], list[float]] = {(m, t): [] for m in modes for t in tasks}
        cpus: dict[tuple[str, str], list[float]] = {(m, t): [] for m in modes for t in tasks}
        pairs = [(m, t) for t in tasks for m in modes]
        for r in range(rounds):
            for m, t in pairs[r % len(pairs) :] + pairs[: r % len(pairs)]:
                wall, cpu = workers[m].time(t, steps)
                walls[(m, t)].append(wall)
                cpus[(m, t)].append(cpu)
            log(
                f"round {r + 1}/{rounds}: "
                + ", ".join(
                    f"{m}/{t} {batch_size * steps / walls[(m, t)][-1]:.1f}" for m, t in pairs
                )
            )
        for mode, w in workers.items():
            w.conn.send(("stats",))
            compile_stats[mode].update(w.recv()[1])
    finally:
        for w in workers.values():
            w.close()
    info["loadavg_end"] = list(os.getloadavg())
    flops = {"train": train_flops(cfg), "infer": forward_flops(cfg)}
    results = []
    for (m, t), w in walls.items():
        row = {"mode": m, "task": t, **_summary(w, cpus[(m, t)], batch_size * steps, threads)}
        row["step_s_median"] /= steps
        row["gflops_per_s"] = row["images_per_s"] * flops[t] / 1e9
        row["fraction_of_peak"] = row["gflops_per_s"] / peak["peak"]
        row["cpu_normalised_gflops_per_s"] = row["cpu_normalised_images_per_s"] * flops[t] / 1e9
        if "peak_cpu_normalised" in peak:
            row["cpu_normalised_fraction_of_peak"] = (
                row["cpu_normalised_gflops_per_s"] / peak["peak_cpu_normalised"]
            )
        if mm_bound:
            row["vs_matmul_bound"] = row["images_per_s"] / mm_bound[t]["images_per_s"]
        cs = compile_stats[m]
        row["compile_s"] = cs.get(f"{t}_compile_s")
        row["peak_rss_mb"] = cs.get("peak_rss_bytes", 0) / 2**20
        row["base_rss_mb"] = cs.get("base_rss_bytes", 0) / 2**20
        if m == "jax":
            xla = cs.get(f"{t}_xla", {})
            row["xla_flops_per_image"] = xla.get("flops", float("nan")) / batch_size
            row["xla_buffer_mb"] = xla.get("total_bytes", 0) / 2**20
        results.append(row)
    by = {(r["mode"], r["task"]): r for r in results}
    for r in results:
        for ref in ("eager", "compile"):
            other = by.get((ref, r["task"]))
            r[f"vs_{ref}"] = r["images_per_s"] / other["images_per_s"] if other else None
            r[f"vs_{ref}_cpu_normalised"] = (
                r["cpu_normalised_images_per_s"] / other["cpu_normalised_images_per_s"]
                if other
                else None
            )
    return {
        "model": model,
        "overrides": overrides,
        "batch_size": batch_size,
        "rounds": rounds,
        "warmup": warmup,
        "steps_per_sample": steps,
        "threads": threads,
        "malloc": "keep freed memory (devtools.cpu_tuning)"
        if keep_freed_memory
        else "glibc default",
        "jax_cpu_devices": compile_stats.get("jax", {}).get("devices"),
        "flops_per_image": flops,
        "flops_method": "analytic matmul count from the config (devtools.bench.forward_flops)",
        "matmul_peak_gflops": peak,
        "matmul_bound": mm_bound,
        "machine": info,
        "results": results,
    }


def to_markdown(res: dict[str, Any]) -> str:
    """A Markdown table of a run_benchmark result, with the machine and the command's settings."""
    m = res["machine"]
    peak = res["matmul_peak_gflops"]
    lines = [
        f"### {res['model']}, batch {res['batch_size']}, fp32",
        "",
        f"Machine: {m.get('cpu')}, {m.get('cores')} cores, {m.get('mem_gib')} GiB; "
        f"torch threads {res['threads']}; jax {m.get('jax')}, flax {m.get('flax')}, "
        f"torch {m.get('torch')}; load average {m['loadavg'][0]:.2f} at start, "
        f"{m['loadavg_end'][0]:.2f} at end.",
        f"fp32 matmul peak (2048^3, best of numpy/torch/jax): {peak['peak']:.0f} GFLOP/s "
        f"(CPU-normalised {peak.get('peak_cpu_normalised', float('nan')):.0f}). "
        f"{res['rounds']} interleaved rounds after {res['warmup']} warm-up; medians, "
        f"[slowest-fastest]. malloc in every worker: {res.get('malloc', 'glibc default')}. "
        + _devices_line(res.get("jax_cpu_devices") or 1),
        "",
        "| mode | task | images/s | vs eager | vs compile | GFLOP/s | of peak "
        "| CPU-normalised images/s (vs eager, vs compile; of peak) | compile s | peak RSS MB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]

    def ratio(x: float | None) -> str:
        return f"{x:.2f}x" if x is not None else "-"

    for r in sorted(res["results"], key=lambda r: (TASKS.index(r["task"]), MODES.index(r["mode"]))):
        comp = f"{r['compile_s']:.1f}" if r.get("compile_s") is not None else "-"
        frac = r.get("cpu_normalised_fraction_of_peak")
        cpu_frac = f"{100 * frac:.0f}%" if frac is not None else "-"
        lines.append(
            f"| {MODE_NAMES[r['mode']]} | {r['task']} | {r['images_per_s']:.1f} "
            f"[{r['images_per_s_min']:.1f}-{r['images_per_s_max']:.1f}] "
            f"| {ratio(r['vs_eager'])} | {ratio(r['vs_compile'])} | {r['gflops_per_s']:.0f} "
            f"| {100 * r['fraction_of_peak']:.0f}% "
            f"| {r['cpu_normalised_images_per_s']:.1f} ({ratio(r['vs_eager_cpu_normalised'])}, "
            f"{ratio(r['vs_compile_cpu_normalised'])}; {cpu_frac}) | {comp} "
            f"| {r['peak_rss_mb']:.0f} |"
        )
    lines += _bound_lines(res)
    gf_train, gf_infer = (res["flops_per_image"][t] / 1e9 for t in ("train", "infer"))
    lines += [
        "",
        f"FLOPs per image (analytic matmul count): train {gf_train:.2f} G, "
        f"inference {gf_infer:.2f} G. Compile s: jax "
        "lower+compile; torch: first call (torch.compile: cold inductor cache; eager: no "
        "compilation). Peak RSS: the mode's own worker process, compilation included. "
        "CPU-normalised images/s: images x threads / median CPU seconds of the worker, the "
        "throughput the mode would have with its cores to itself (other load inflates wall "
        "time, much less CPU time).",
        "",
    ]
    return "\n".join(lines)


def _devices_line(n: int) -> str:
    """How vitjax's worker used the CPU, for the table's settings line."""
    if n == 1:
        return "vitjax: one CPU device (XLA's intra-op threads on every core)."
    return (
        f"vitjax: {n} CPU devices, data parallel over the cores "
        "(devtools.cpu_tuning.split_cpu_into_devices)."
    )


def _bound_lines(res: dict[str, Any]) -> list[str]:
    """Tables of the matmul-only bound per task and of each matmul's rates (empty if not run)."""
    bound = res.get("matmul_bound")
    if not bound:
        return []
    by = {(r["mode"], r["task"]): r for r in res["results"]}
    fws = [fw for fw in ("jax", "torch") if f"images_per_s_{fw}" in next(iter(bound.values()))]
    modes = [m for m in MODES if any((m, t) in by for t in bound)]
    lines = [
        "",
        "Matmul-only bound: every matmul of the step timed alone at its own shapes and operand "
        "layouts (`devtools.matmul_bound`), all other work taken as free; images/s (x PyTorch "
        "eager's measured images/s), and the share of the bound each mode reaches.",
        "",
        "| task | at the best rates | "
        + " | ".join(f"at {fw}'s rates" for fw in fws)
        + " | "
        + " | ".join(f"{MODE_NAMES[m]} reaches" for m in modes)
        + " |",
        "|---" * (2 + len(fws) + len(modes)) + "|",
    ]
    for task, b in bound.items():
        eager = by.get(("eager", task))

        def cell(ips: float, eager: dict[str, Any] | None = eager) -> str:
            return f"{ips:.1f}" + (f" ({ips / eager['images_per_s']:.2f}x)" if eager else "")

        reached = [
            f"{100 * by[(m, task)]['vs_matmul_bound']:.0f}%" if (m, task) in by else "-"
            for m in modes
        ]
        lines.append(
            f"| {task} | {cell(b['images_per_s'])} | "
            + " | ".join(cell(b[f"images_per_s_{fw}"]) for fw in fws)
            + " | "
            + " | ".join(reached)
            + " |"
        )
    task = "train" if "train" in bound else next(iter(bound))
    lines += [
        "",
        f"GFLOP/s of each matmul alone ({task}; forms as in `devtools.matmul_bound.Matmul`):",
        "",
        "| matmul | form | GFLOP per step | " + " | ".join(fws) + " |",
        "|---|---|---|" + "---|" * len(fws),
    ]
    for r in bound[task]["matmuls"]:
        lines.append(
            f"| {r['name']} | `{r['form']}` | {r['gflops']:.3g} | "
            + " | ".join(f"{r[fw]:.0f}" for fw in fws)
            + " |"
        )
    return lines


def write_results(res: dict[str, Any], out_dir: str | os.PathLike, name: str | None = None) -> str:
    """Write ``<name>.json`` and ``<name>.md`` into out_dir; return the JSON path."""
    os.makedirs(out_dir, exist_ok=True)
    name = name or f"{res['model']}_b{res['batch_size']}"
    path = os.path.join(out_dir, f"{name}.json")
    with open(path, "w") as f:
        json.dump(res, f, indent=2, default=float)
    with open(os.path.join(out_dir, f"{name}.md"), "w") as f:
        f.write(to_markdown(res) if "results" in res else data_to_markdown(res))
    return path


# ----------------------------------------------------------------------------- data pipeline


def make_jpeg_folder(
    root: str | os.PathLike, per_class: int = 32, size: int = 224, quality: int = 90
) -> str:
    """Write ``root/<digit>/<i>.jpg``: scikit-learn's digits, upscaled to size x size RGB."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(0)
    root = os.fspath(root)
    for label in range(10):
        idx = np.flatnonzero(digits.target == label)[:per_class]
        os.makedirs(os.path.join(root, str(label)), exist_ok=True)
        for i, j in enumerate(np.resize(idx, per_class)):
            gray = (digits.images[j] * (255 / 16)).astype(np.uint8)
            img = Image.fromarray(gray).resize((size, size), Image.Resampling.BICUBIC)
            tint = rng.uniform(0.6, 1.0, 3)
            rgb = (np.asarray(img, np.float32)[..., None] * tint).astype(np.uint8)
            noise = rng.integers(0, 24, rgb.shape, dtype=np.uint8)  # texture, as photos have
            Image.fromarray(rgb + noise).save(
                os.path.join(root, str(label), f"{i}.jpg"), quality=quality
            )
    return root


def bench_data(
    root: str | os.PathLike,
    batch_size: int = 32,
    transform: str = "train",
    worker_count: int = 0,
    num_threads: int = 2,
    epochs: int = 2,
) -> dict[str, Any]:
    """Images/s that vitjax.training.data decodes and transforms from an image folder."""
    from vitjax.training import data, transforms

    ds = data.ImageDataset.from_folder(root)
    tf = transforms.TrainTransform() if transform == "train" else transforms.EvalTransform()
    rates = []
    for epoch in range(epochs + 1):  # epoch 0 warms up (imports, worker start, file cache)
        loader = data.make_loader(
            ds,
            tf,
            batch_size,
            shuffle=True,
            epoch=epoch,
            worker_count=worker_count,
            num_threads=num_threads,
        )
        t, n = time.perf_counter(), 0
        for batch in loader:
            n += len(batch["label"])
        if epoch:
            rates.append(n / (time.perf_counter() - t))
    return {
        "images": len(ds),
        "batch_size": batch_size,
        "transform": transform,
        "worker_count": worker_count,
        "num_threads": num_threads,
        "images_per_s": float(np.median(rates)),
        "images_per_s_all": rates,
    }


def run_data_benchmark(
    root: str | os.PathLike | None = None,
    batch_size: int = 32,
    settings: Sequence[tuple[int, int]] = ((0, 1), (0, 2), (2, 1)),
    per_class: int = 32,
    epochs: int = 2,
    train_images_per_s: dict[str, float] | None = None,
) -> dict[str, Any]:
    """bench_data for (worker_count, num_threads) settings and both transforms, on a JPEG folder.

    Without ``root`` a folder of 224 px JPEGs is written to a temporary directory.
    ``train_images_per_s`` (model name -> training images/s) is recorded for comparison.
    """
    with tempfile.TemporaryDirectory() as tmp:
        folder = os.fspath(root) if root else make_jpeg_folder(tmp, per_class=per_class)
        runs = [
            bench_data(folder, batch_size, tf, w, t, epochs)
            for tf in ("train", "eval")
            for w, t in settings
        ]
    return {
        "folder": "generated 224 px JPEGs (scikit-learn digits)" if not root else str(root),
        "machine": machine_info(),
        "runs": runs,
        "train_images_per_s": dict(train_images_per_s or {}),
    }


def data_to_markdown(res: dict[str, Any]) -> str:
    """A Markdown table of a run_data_benchmark result."""
    m = res["machine"]
    lines = [
        f"### Data pipeline: {res['folder']}",
        "",
        f"Machine: {m.get('cpu')}, {m.get('cores')} cores; load average {m['loadavg'][0]:.2f}.",
        "",
        "| transform | grain workers | threads | images/s |",
        "|---|---|---|---|",
    ]
    for r in res["runs"]:
        lines.append(
            f"| {r['transform']} | {r['worker_count']} | {r['num_threads']} "
            f"| {r['images_per_s']:.0f} |"
        )
    if res.get("train_images_per_s"):
        lines += [
            "",
            "Training consumes (vitjax, batch 32): "
            + ", ".join(f"{k} {v:.1f} images/s" for k, v in res["train_images_per_s"].items()),
        ]
    return "\n".join(lines) + "\n"
