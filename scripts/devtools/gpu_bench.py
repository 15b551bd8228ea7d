"""GPU benchmark: vitjax (jit, bf16 compute, fp32 params) against timm in torch AMP and compile.

    python scripts/devtools/gpu_bench.py --model vit_base_patch16_224 --batch-size 256 \
        --dtype bf16 --out gpu_out/bench
    # CPU smoke run (no GPU needed; MFU is omitted there):
    python scripts/devtools/gpu_bench.py --model vit_tiny_patch16_224 --batch-size 4 \
        --img-size 32 --steps 2 --rounds 2 --out /tmp/gpu_bench

Modes, each in its own worker process (its own GPU context and memory, its own environment):

- jax: ``vitjax.create_model(name, dtype=bfloat16)`` (fp32 params), the library's ``train_step``
  with AdamW (``make_optimizer("adamw")``) jitted with the state donated; inference jitted.
  ``--xla-flags "..."`` (repeatable) adds one more jax worker per flag set, the flags appended to
  XLA_FLAGS in that worker's environment only (the library sets no flag).
- eager: ``timm.create_model(name)`` on cuda, ``torch.autocast("cuda", torch.bfloat16)`` (timm's
  attention is ``F.scaled_dot_product_attention``), AdamW ``fused=True``; inference under
  ``torch.no_grad()``.
- compile: the same with ``torch.compile(model)`` (default mode; the optimizer step stays eager).

A sample is ``--steps`` calls on one fixed synthetic batch (random tensors already on the device),
then a device synchronisation (``jax.block_until_ready`` / ``torch.cuda.synchronize``); after
``--warmup`` untimed samples, the median of ``--rounds`` samples is reported, with the range.
``--schedule sequential`` (default) runs one worker at a time, alone on the GPU (no autotuning or
memory shared with another mode); ``parallel`` builds every worker at once, then interleaves the
rounds (faster, but compilation and autotuning overlap, and every mode holds its memory).

FLOPs per image are counted analytically from the config (2*M*N*K for the patch embedding, each
block's qkv, q k^T, attn v, proj, fc1, fc2, and the head; norms, softmax, activations and the
optimizer are not counted); a training step is 3x the forward. MFU = achieved FLOP/s / the chip's
dense bf16 peak, looked up by device name (``PEAKS``; ``--peak-tflops`` overrides); on an unknown
device or a CPU the MFU column is left out and the report says so. XLA's own cost analysis of the
compiled jax step is recorded beside the analytic count.

``--deadline-s`` bounds the whole run: workers not ready in time are killed and reported, rounds
stop early, and the JSON/Markdown are written in any case (also on SIGTERM). Exit status: 0 when
every mode ran, 1 when a required mode (jax, eager, compile) failed or timed out, 3 when only an
``--xla-flags`` variant did, 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import queue
import signal
import statistics
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]  # the repository (vitjax need not be installed)
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

PREFIX = "@@GPUBENCH "
MODES = ("jax", "eager", "compile")
TASKS = ("train", "infer")
# Dense (no sparsity) bf16 tensor-core peaks, TFLOP/s, matched in order against the device name
# (torch.cuda.get_device_name / jax device_kind): the first entry whose words all appear wins.
PEAKS: tuple[tuple[tuple[str, ...], float], ...] = (
    (("h100", "pcie"), 756.0),
    (("h100", "nvl"), 835.0),
    (("h200",), 989.0),  # H200 SXM (and GH200): the H100 SXM's tensor cores
    (("h100",), 989.0),  # H100 SXM ("NVIDIA H100 80GB HBM3")
    (("a100",), 312.0),
)
# Done means (issue 18): vitjax bf16 training vs torch AMP eager, vs torch.compile, and MFU.
TARGETS = {"train_vs_eager": 1.2, "train_vs_compile": 1.0, "train_mfu": 0.45}


def peak_bf16_tflops(device_name: str | None) -> float | None:
    """Dense bf16 peak TFLOP/s of a GPU by name; None when the name is unknown (or a CPU)."""
    name = (device_name or "").lower()
    for words, peak in PEAKS:
        if all(w in name for w in words):
            return peak
    return None


# ----------------------------------------------------------------------------- FLOPs


def forward_flops_per_image(cfg: Any) -> float | None:
    """Matmul FLOPs of one image's forward pass of a plain ViT config; None for other models.

    Patch embedding 2*P*(ph*pw*C)*D; per block qkv 2*N*D*3D, q k^T and attn v 2*N*N*D each,
    proj 2*N*D*D, fc1 and fc2 2*N*D*hidden each; head 2*D*classes (per head).
    """
    from vitjax.models.vit_config import ViTConfig
    from vitjax.util import to_2tuple

    if not isinstance(cfg, ViTConfig) or not cfg.is_plain:
        return None
    ph, pw = to_2tuple(cfg.patch_size)
    D, P, hidden = cfg.embed_dim, cfg.num_patches, cfg.mlp_hidden
    N = P + cfg.num_prefix_tokens
    patch = 2 * P * ph * pw * cfg.in_chans * D
    block = 2 * N * D * 3 * D + 2 * 2 * N * N * D + 2 * N * D * D + 2 * 2 * N * D * hidden
    head = (1 + int(cfg.distilled)) * 2 * D * max(cfg.num_classes, 0)
    return float(patch + cfg.depth * block + head)


def flops_per_image(model: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """{'train', 'infer', 'method'}: analytic FLOPs per image (None where not countable)."""
    try:
        from vitjax.registry import get_config

        fwd = forward_flops_per_image(get_config(model, **overrides))
    except Exception as e:  # an unknown family: no count, and the report says why
        return {"train": None, "infer": None, "method": f"not counted ({e})"}
    if fwd is None:
        return {"train": None, "infer": None, "method": "not counted (not a plain ViT config)"}
    return {
        "train": 3 * fwd,
        "infer": fwd,
        "method": "analytic matmul count (gpu_bench.forward_flops_per_image); train = 3x forward",
    }


# ----------------------------------------------------------------------------- workers


def _model_kwargs(spec: dict[str, Any], framework: str) -> dict[str, Any]:
    kw = {k: spec[k] for k in ("img_size", "depth") if spec.get(k)}
    if framework == "jax":
        kw.update({k: spec[k] for k in ("attn_impl", "dense_impl") if spec.get(k)})
    return kw


def _jax_worker(spec: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The jitted train step (donated state) and inference of vitjax; stats."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    import vitjax
    from vitjax.layers.attention import resolve_attn_impl
    from vitjax.training.steps import create_train_state, make_optimizer, train_step

    dtype = jnp.bfloat16 if spec["dtype"] == "bf16" else jnp.float32
    dev = jax.devices()[0]
    stats: dict[str, Any] = {
        "platform": dev.platform,
        "device": getattr(dev, "device_kind", str(dev)),
        "device_count": jax.device_count(),
        "jax": jax.__version__,
        "XLA_FLAGS": os.environ.get("XLA_FLAGS", ""),
    }
    model, variables = vitjax.create_model(spec["model"], dtype=dtype, **_model_kwargs(spec, "jax"))
    cfg = model.cfg
    stats["param_dtype"] = str(jax.tree_util.tree_leaves(variables["params"])[0].dtype)
    stats["attn_impl"] = getattr(cfg, "attn_impl", None)
    if hasattr(cfg, "head_dim"):
        stats["attn_impl_resolved"] = resolve_attn_impl(cfg.attn_impl, dtype, cfg.head_dim)
    rng = np.random.default_rng(spec["seed"])
    h, w = (cfg.img_size, cfg.img_size) if isinstance(cfg.img_size, int) else cfg.img_size
    B = spec["batch_size"]
    images = jax.device_put(rng.standard_normal((B, h, w, cfg.in_chans), dtype=np.float32))
    labels = jax.device_put(rng.integers(0, max(cfg.num_classes, 1), B).astype(np.int32))
    batch = {"image": images, "label": labels}
    key = jax.random.PRNGKey(spec["seed"])
    run: dict[str, Any] = {}

    def compile_(name: str, fn: Any, *args: Any) -> Any:
        t = time.perf_counter()
        lowered = fn.lower(*args)
        text = lowered.as_text()
        compiled = lowered.compile()
        stats[f"{name}_compile_s"] = time.perf_counter() - t
        if "__cudnn$fmha" not in text:  # the cuDNN attention kernel, before or after XLA's passes
            try:
                text = compiled.as_text()
            except Exception:
                text = ""
        stats[f"{name}_cudnn_attention"] = "__cudnn$fmha" in text
        try:
            cost = compiled.cost_analysis()
            cost = cost[0] if isinstance(cost, (list, tuple)) else cost
            stats[f"{name}_xla_flops_per_image"] = float(cost["flops"]) / B
        except Exception as e:  # cost analysis is a cross-check only
            stats[f"{name}_xla_flops_per_image"] = None
            stats[f"{name}_xla_cost_error"] = repr(e)
        return compiled

    if "train" in spec["tasks"]:
        tx = make_optimizer("adamw", spec["lr"], weight_decay=spec["weight_decay"])
        holder = [create_train_state(model, variables, tx)]
        step = compile_("train", jax.jit(train_step, donate_argnums=0), holder[0], batch, key)

        def train(n: int) -> None:
            state = holder[0]
            for _ in range(n):
                state, metrics = step(state, batch, key)
            holder[0] = state
            jax.block_until_ready((state, metrics))

        run["train"] = train
    if "infer" in spec["tasks"]:
        params = jax.tree_util.tree_map(jnp.copy, variables["params"])
        fwd = compile_("infer", jax.jit(lambda p, x: model.apply({"params": p}, x)), params, images)

        def infer(n: int) -> None:
            for _ in range(n):
                out = fwd(params, images)
            out.block_until_ready()

        run["infer"] = infer

    def memory() -> dict[str, Any]:
        try:
            ms = dev.memory_stats() or {}
        except Exception:
            ms = {}
        return (
            {"peak_memory_gb": ms["peak_bytes_in_use"] / 1e9} if "peak_bytes_in_use" in ms else {}
        )

    stats["_memory"] = memory
    return run, stats


def _torch_worker(spec: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """timm's model in torch AMP eager or torch.compile: train step (AdamW) and inference."""
    import contextlib

    import timm
    import torch
    import torch.nn.functional as F

    cuda = torch.cuda.is_available()
    dev = "cuda" if cuda else "cpu"
    if cuda:
        torch.backends.cudnn.benchmark = True  # timm's train.py does; one conv (patch embed)
    torch.manual_seed(spec["seed"])
    model = timm.create_model(spec["model"], pretrained=False, **_model_kwargs(spec, "torch"))
    model = model.to(dev)
    bf16 = spec["dtype"] == "bf16"
    stats: dict[str, Any] = {
        "platform": "gpu" if cuda else "cpu",
        "device": torch.cuda.get_device_name(0) if cuda else platform.processor() or "cpu",
        "torch": torch.__version__,
        "timm": timm.__version__,
        "timm_fused_attn (F.scaled_dot_product_attention)": bool(timm.layers.use_fused_attn()),
        "autocast": "bfloat16" if bf16 else "off (float32)",
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
    }
    backend = spec.get("compile_backend", "inductor")
    fmodel = torch.compile(model, backend=backend) if spec["mode"] == "compile" else model
    if spec["mode"] == "compile":
        stats["compile_backend"] = backend
    cfg = model.pretrained_cfg if hasattr(model, "pretrained_cfg") else {}
    B, C = spec["batch_size"], 3
    size = spec.get("img_size") or cfg.get("input_size", (3, 224, 224))[-1]
    g = torch.Generator(device=dev).manual_seed(spec["seed"])
    x = torch.randn(B, C, size, size, device=dev, generator=g)
    y = torch.randint(0, max(model.num_classes, 1), (B,), device=dev, generator=g)
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    def autocast() -> Any:
        return torch.autocast(dev, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()

    run: dict[str, Any] = {}
    if "train" in spec["tasks"]:
        try:
            opt = torch.optim.AdamW(
                model.parameters(), lr=spec["lr"], weight_decay=spec["weight_decay"], fused=True
            )
            stats["adamw"] = "fused"
        except (RuntimeError, TypeError, ValueError) as e:
            opt = torch.optim.AdamW(
                model.parameters(), lr=spec["lr"], weight_decay=spec["weight_decay"]
            )
            stats["adamw"] = f"default (fused unavailable: {e})"

        def train(n: int) -> None:
            model.train()
            for _ in range(n):
                with autocast():
                    loss = F.cross_entropy(fmodel(x), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            sync()

        run["train"] = train
    if "infer" in spec["tasks"]:

        def infer(n: int) -> None:
            model.eval()
            with torch.no_grad(), autocast():
                for _ in range(n):
                    fmodel(x)
            sync()

        run["infer"] = infer
    for task, fn in run.items():  # the first call: torch.compile compiles here
        t = time.perf_counter()
        fn(1)
        stats[f"{task}_compile_s" if spec["mode"] == "compile" else f"{task}_first_call_s"] = (
            time.perf_counter() - t
        )

    def memory() -> dict[str, Any]:
        return {"peak_memory_gb": torch.cuda.max_memory_allocated() / 1e9} if cuda else {}

    stats["_memory"] = memory
    return run, stats


def worker_main(spec: dict[str, Any]) -> int:
    """A worker: build, say 'ready', then answer 'time TASK N', 'stats' and 'quit' on stdin."""
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # anything the libraries print goes to the log, not into the protocol
    parent = os.getppid()

    def watchdog() -> None:  # a killed parent (timeout -k) leaves no worker on the GPU
        while os.getppid() == parent:
            time.sleep(1.0)
        os.killpg(os.getpgrp(), signal.SIGKILL)

    threading.Thread(target=watchdog, daemon=True).start()

    def send(**msg: Any) -> None:
        proto.write(PREFIX + json.dumps(msg, default=str) + "\n")
        proto.flush()

    try:
        build = _jax_worker if spec["mode"] == "jax" else _torch_worker
        run, stats = build(spec)
        memory = stats.pop("_memory")
        for task, fn in run.items():
            if spec["mode"] == "jax":  # the first execution (compilation was timed above)
                t = time.perf_counter()
                fn(1)
                stats[f"{task}_first_call_s"] = time.perf_counter() - t
        send(event="ready", stats={**stats, **memory()})
    except BaseException as e:
        send(event="error", error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc())
        return 1
    for line in sys.stdin:
        cmd = line.split()
        try:
            if not cmd:
                continue
            if cmd[0] == "time":
                task, n = cmd[1], int(cmd[2])
                t = time.perf_counter()
                run[task](n)
                send(event="time", wall=time.perf_counter() - t)
            elif cmd[0] == "stats":
                send(event="stats", stats=memory())
            elif cmd[0] == "quit":
                break
        except BaseException as e:
            send(event="error", error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc())
            return 1
    return 0


class WorkerError(RuntimeError):
    """A worker that died, reported an error or did not answer in time; status says which."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status = status


class Worker:
    """One mode's process: JSON lines prefixed with PREFIX on its stdout, commands on stdin."""

    def __init__(self, key: str, spec: dict[str, Any], env: dict[str, str], log: Path) -> None:
        self.key, self.log_path = key, log
        self.log = open(log, "w", buffering=1)
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--worker", json.dumps(spec)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            env=env,
            text=True,
            bufsize=1,
            start_new_session=True,  # its own process group: inductor's compile workers too
        )
        self.messages: queue.Queue[dict[str, Any]] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith(PREFIX):
                self.messages.put(json.loads(line[len(PREFIX) :]))
            else:
                self.log.write(line)
        self.messages.put({"event": "eof"})

    def tail(self, n: int = 15) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])

    def recv(self, timeout: float) -> dict[str, Any]:
        try:
            wait = None if timeout == float("inf") else max(timeout, 0.0)
            msg = self.messages.get(timeout=wait)
        except queue.Empty:
            raise WorkerError("timeout", f"no answer within {timeout:.0f} s") from None
        if msg["event"] == "eof":
            rc = self.proc.wait()
            raise WorkerError("failed", f"exited with status {rc}; log tail:\n{self.tail()}")
        if msg["event"] == "error":
            raise WorkerError("failed", f"{msg['error']}\n{msg.get('traceback', '')}")
        return msg

    def send(self, line: str) -> None:
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.write(line + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass  # the next recv reports the exit

    def close(self) -> None:
        if self.proc.poll() is None:
            self.send("quit")
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        try:  # the whole group: inductor's compile workers may outlive the worker
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.proc.wait()
        self.log.close()


# ----------------------------------------------------------------------------- the run


class _Terminated(Exception):
    pass


def _on_sigterm(signum: int, frame: Any) -> None:
    raise _Terminated(f"signal {signum}")


def mode_label(key: str, dtype: str) -> str:
    """Row label of a mode key ('jax', 'jax+flags1', 'eager', 'compile')."""
    if key.startswith("jax"):
        return "vitjax (jit)" + (f" + XLA flags #{key[len('jax+flags') :]}" if "+" in key else "")
    if key == "eager":
        return "torch AMP eager (SDPA)" if dtype == "bf16" else "torch eager (SDPA)"
    return "torch.compile" + (" (AMP)" if dtype == "bf16" else "")


def _summary(walls: list[float], images: int) -> dict[str, Any]:
    rates = [images / w for w in walls]
    return {
        "images_per_s": statistics.median(rates),
        "images_per_s_min": min(rates),
        "images_per_s_max": max(rates),
        "samples": len(rates),
        "step_s_median": statistics.median(walls),
    }


def run(a: argparse.Namespace) -> tuple[dict[str, Any], int]:
    """Build every worker, time the rounds, and return (results, exit status)."""
    t0 = time.monotonic()
    deadline = t0 + a.deadline_s if a.deadline_s else float("inf")
    left = lambda: deadline - time.monotonic()  # noqa: E731
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    tasks = [t for t in a.tasks.split(",") if t]
    modes = [m for m in a.modes.split(",") if m]
    bad = [m for m in modes if m not in MODES] + [t for t in tasks if t not in TASKS]
    if bad:
        raise ValueError(f"unknown modes/tasks {bad}: modes {MODES}, tasks {TASKS}")
    flag_sets = {f"jax+flags{i + 1}": f for i, f in enumerate(a.xla_flags or [])}
    if flag_sets and "jax" not in modes:
        raise ValueError("--xla-flags needs the jax mode")
    keys = modes + list(flag_sets)
    overrides = {k: v for k, v in (("img_size", a.img_size), ("depth", a.depth)) if v}
    base = dict(
        model=a.model, batch_size=a.batch_size, dtype=a.dtype, tasks=tasks, seed=a.seed,
        lr=a.lr, weight_decay=a.weight_decay, img_size=a.img_size, depth=a.depth,
        attn_impl=a.attn_impl, dense_impl=a.dense_impl, compile_backend=a.compile_backend,
    )  # fmt: skip
    res: dict[str, Any] = {
        "model": a.model,
        "batch_size": a.batch_size,
        "dtype": a.dtype,
        "overrides": overrides,
        "attn_impl": a.attn_impl,
        "dense_impl": a.dense_impl,
        "compile_backend": a.compile_backend,
        "tasks": tasks,
        "schedule": a.schedule,
        "steps_per_sample": a.steps,
        "rounds": a.rounds,
        "warmup": a.warmup,
        "command": "python scripts/devtools/gpu_bench.py " + " ".join(a.argv),
        "host": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "XLA_FLAGS": os.environ.get("XLA_FLAGS", ""),
        },
        "flops_per_image": flops_per_image(a.model, overrides),
        "modes": {},
        "results": [],
        "failures": [],
    }
    walls: dict[tuple[str, str], list[float]] = {}
    workers: dict[str, Worker] = {}

    def env_for(key: str) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(
            os.pathsep
        )
        if key in flag_sets:
            env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + flag_sets[key]).strip()
        if key.startswith("jax") and a.schedule == "parallel":
            env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # other modes share the GPU
        return env

    def fail(key: str, status: str, message: str) -> None:
        info = res["modes"].setdefault(key, {"label": mode_label(key, a.dtype)})
        info.update(status=status, error=message)
        res["failures"].append({"mode": key, "status": status, "error": message.splitlines()[0]})
        print(f"[gpu_bench] {key}: {status}: {message}", file=sys.stderr, flush=True)
        w = workers.pop(key, None)
        if w is not None:
            w.close()

    def start(key: str) -> None:
        mode = "jax" if key.startswith("jax") else key
        spec = {**base, "mode": mode}
        res["modes"][key] = {
            "label": mode_label(key, a.dtype),
            "status": "building",
            "xla_flags": flag_sets.get(key, ""),
            "log": f"worker_{key}.log",
        }
        print(f"[gpu_bench] starting {key} ({left():.0f} s left)", file=sys.stderr, flush=True)
        workers[key] = Worker(key, spec, env_for(key), out / f"worker_{key}.log")

    def ready(key: str) -> None:
        try:
            msg = workers[key].recv(left() - a.timing_reserve_s)
        except WorkerError as e:
            fail(key, e.status, f"build: {e}")
            return
        res["modes"][key].update(status="ready", stats=msg["stats"])
        st = msg["stats"]
        print(f"[gpu_bench] {key} ready on {st.get('device')} ({st.get('platform')})",
              file=sys.stderr, flush=True)  # fmt: skip
        if a.require_gpu and st.get("platform") != "gpu":
            fail(key, "failed", f"runs on {st.get('platform')} ({st.get('device')}), not a GPU")

    def sample(key: str, task: str) -> float | None:
        w = workers.get(key)
        if w is None:
            return None
        w.send(f"time {task} {a.steps}")
        try:
            return w.recv(max(left() - 2, 1.0))["wall"]
        except WorkerError as e:
            fail(key, e.status, f"{task}: {e}")
            return None

    def time_rounds(keys_now: list[str]) -> None:
        pairs = [(k, t) for t in tasks for k in keys_now]
        for _ in range(a.warmup):
            for k, t in pairs:
                sample(k, t)
        for r in range(a.rounds):
            pairs = [(k, t) for k, t in pairs if k in workers]
            if not pairs:
                return
            t_round = time.monotonic()
            for k, t in pairs[r % len(pairs) :] + pairs[: r % len(pairs)]:
                wall = sample(k, t)
                if wall is not None:
                    walls.setdefault((k, t), []).append(wall)
            took = time.monotonic() - t_round
            print(
                f"[gpu_bench] round {r + 1}/{a.rounds}: "
                + ", ".join(
                    f"{k}/{t} {a.batch_size * a.steps / walls[(k, t)][-1]:.1f}"
                    for k, t in pairs
                    if walls.get((k, t))
                ),
                file=sys.stderr,
                flush=True,
            )
            if r + 1 < a.rounds and left() < took + 10:
                print("[gpu_bench] deadline: stopping rounds", file=sys.stderr, flush=True)
                return

    def finish(key: str) -> None:
        w = workers.get(key)
        if w is None:
            return
        w.send("stats")
        try:
            res["modes"][key]["stats"].update(w.recv(10)["stats"])
        except WorkerError:
            pass
        res["modes"][key]["status"] = "ok"
        workers.pop(key).close()

    old = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        if a.schedule == "parallel":
            for k in keys:
                start(k)
            for k in keys:
                ready(k)
            time_rounds([k for k in keys if k in workers])
            for k in keys:
                finish(k)
        else:
            for k in keys:
                if k in flag_sets and left() < a.variant_min_s:
                    fail(k, "skipped", f"not started: {left():.0f} s left < {a.variant_min_s} s")
                    continue
                if left() < 10:
                    fail(
                        k,
                        "skipped",
                        f"not started: {max(left(), 0):.0f} s left before the deadline",
                    )
                    continue
                start(k)
                ready(k)
                if k in workers:
                    time_rounds([k])
                    finish(k)
    except (_Terminated, KeyboardInterrupt) as e:
        for k in list(workers):
            fail(k, "terminated", f"the benchmark was stopped ({e})")
        res["failures"].append({"mode": "gpu_bench", "status": "terminated", "error": str(e)})
    except Exception as e:  # a bug here still leaves a report of what ran
        tb = traceback.format_exc()
        print(tb, file=sys.stderr, flush=True)
        for k in list(workers):
            fail(k, "failed", f"gpu_bench error: {e!r}")
        res["failures"].append({"mode": "gpu_bench", "status": "failed", "error": repr(e)})
        res["traceback"] = tb
    finally:
        signal.signal(signal.SIGTERM, old)
        for k in list(workers):
            fail(k, "failed", "left running at the end")
    for k in keys:
        info = res["modes"].setdefault(k, {"label": mode_label(k, a.dtype)})
        if info.get("status") is None:
            info["status"] = "not started"
        if info.get("status") == "ok" and not any(walls.get((k, t)) for t in tasks):
            info["status"] = "failed"
            res["failures"].append({"mode": k, "status": "failed", "error": "no timed sample"})
        if info["status"] != "ok" and not any(f["mode"] == k for f in res["failures"]):
            res["failures"].append({"mode": k, "status": info["status"], "error": "not finished"})
    _finish_results(res, walls, a)
    res["wall_s"] = time.monotonic() - t0
    failed = {f["mode"] for f in res["failures"]}
    status = 1 if failed & {*modes, "gpu_bench"} else 3 if failed else 0
    res["exit_status"] = status
    return res, status


def _device(res: dict[str, Any]) -> dict[str, Any]:
    """The device the modes ran on (a GPU one's name first) and its bf16 peak."""
    found = [(m.get("stats") or {}) for m in res["modes"].values()]
    gpu = [s for s in found if s.get("platform") == "gpu"]
    s = (gpu or found or [{}])[0]
    return {"platform": s.get("platform"), "name": s.get("device")}


def _finish_results(res: dict[str, Any], walls: dict[tuple[str, str], list[float]], a: Any) -> None:
    """Rows per mode and task: images/s, ratios, TFLOP/s, MFU (only with a known peak)."""
    dev = _device(res)
    peak = a.peak_tflops if a.peak_tflops else None
    source = "--peak-tflops" if peak else None
    if peak is None and dev["platform"] == "gpu":
        peak = peak_bf16_tflops(dev["name"])
        source = "PEAKS table (dense bf16)" if peak else None
    if a.dtype != "bf16" and not a.peak_tflops:
        peak, source = None, None  # the table holds bf16 peaks only
    dev["peak_tflops"] = peak
    dev["peak_source"] = source
    if peak is None:
        dev["mfu_note"] = (
            f"MFU omitted: no {a.dtype} peak known for {dev['name']!r} "
            f"({dev['platform']}); --peak-tflops gives one"
        )
    res["device"] = dev
    flops = res["flops_per_image"]
    rows = []
    for (key, task), w in walls.items():
        if not w:
            continue
        row = {"mode": key, "label": mode_label(key, a.dtype), "task": task}
        row.update(_summary(w, a.batch_size * a.steps))
        row["step_s_median"] /= a.steps
        stats = res["modes"].get(key, {}).get("stats", {})
        row["compile_s"] = stats.get(f"{task}_compile_s")
        row["peak_memory_gb"] = stats.get("peak_memory_gb")
        if flops.get(task):
            row["tflops_per_s"] = row["images_per_s"] * flops[task] / 1e12
            if peak:
                row["mfu"] = row["tflops_per_s"] / peak
        rows.append(row)
    by = {(r["mode"], r["task"]): r for r in rows}
    for r in rows:
        if r["mode"].startswith("jax"):
            for ref in ("eager", "compile"):
                other = by.get((ref, r["task"]))
                r[f"vs_{ref}"] = r["images_per_s"] / other["images_per_s"] if other else None
    order = {k: i for i, k in enumerate(res["modes"])}
    rows.sort(key=lambda r: (TASKS.index(r["task"]), order.get(r["mode"], 99)))
    res["results"] = rows
    res["targets"] = _targets(res, by)


def _targets(res: dict[str, Any], by: dict[tuple[str, str], dict[str, Any]]) -> dict[str, Any]:
    """Issue 18's done-means on the fastest jax training mode (GPU, bf16 only)."""
    if res["device"]["platform"] != "gpu" or res["dtype"] != "bf16":
        return {"evaluated": False, "why": "only for bf16 on a GPU"}
    jax_rows = [r for (k, t), r in by.items() if t == "train" and k.startswith("jax")]
    if not jax_rows:
        return {"evaluated": False, "why": "no jax training result"}
    best = max(jax_rows, key=lambda r: r["images_per_s"])
    got = {
        "train_vs_eager": best.get("vs_eager"),
        "train_vs_compile": best.get("vs_compile"),
        "train_mfu": best.get("mfu"),
    }
    return {
        "evaluated": True,
        "mode": best["mode"],
        "checks": {
            k: {"want": f">= {v}", "got": got[k], "met": None if got[k] is None else got[k] >= v}
            for k, v in TARGETS.items()
        },
    }


def to_markdown(res: dict[str, Any]) -> str:
    """The report: settings, the table, FLOPs, MFU note, targets, failures."""
    dev = res["device"]
    stats = {k: (m.get("stats") or {}) for k, m in res["modes"].items()}
    j, t = stats.get("jax", {}), stats.get("eager") or stats.get("compile") or {}
    has_mfu = any("mfu" in r for r in res["results"])
    ov = ", ".join(f"{k}={v}" for k, v in res["overrides"].items())
    lines = [
        f"### {res['model']}{f' ({ov})' if ov else ''}, batch {res['batch_size']}, "
        f"{res['dtype']} compute, fp32 params",
        "",
        f"Device: {dev.get('name')} ({dev.get('platform')}); jax {j.get('jax', '-')}, "
        f"torch {t.get('torch', '-')}, timm {t.get('timm', '-')}. "
        f"vitjax attention: {j.get('attn_impl_resolved', '-')} (attn_impl={j.get('attn_impl')}; "
        f"cuDNN kernel in the train step: {j.get('train_cudnn_attention', '-')}); torch: timm "
        f"SDPA {t.get('timm_fused_attn (F.scaled_dot_product_attention)', '-')}, AdamW "
        f"{t.get('adamw', '-')}. {res['steps_per_sample']} steps per sample, median of "
        f"{res['rounds']} rounds after {res['warmup']} warm-up, [slowest-fastest]; "
        f"schedule {res['schedule']}.",
        "",
        "| mode | task | images/s | vs eager | vs compile | TFLOP/s "
        + ("| MFU " if has_mfu else "")
        + "| compile s | peak mem GB |",
        "|---|---|---|---|---|---" + ("|---" if has_mfu else "") + "|---|---|",
    ]

    def f(x: Any, fmt: str) -> str:
        return "-" if x is None else format(x, fmt)

    for r in res["results"]:
        lines.append(
            f"| {r['label']} | {r['task']} | {r['images_per_s']:.1f} "
            f"[{r['images_per_s_min']:.1f}-{r['images_per_s_max']:.1f}] "
            f"| {f(r.get('vs_eager'), '.2f')}{'x' if r.get('vs_eager') else ''} "
            f"| {f(r.get('vs_compile'), '.2f')}{'x' if r.get('vs_compile') else ''} "
            f"| {f(r.get('tflops_per_s'), '.3g')} "
            + (f"| {f(100 * r['mfu'] if 'mfu' in r else None, '.1f')}% " if has_mfu else "")
            + f"| {f(r.get('compile_s'), '.1f')} | {f(r.get('peak_memory_gb'), '.2f')} |"
        )
    fl = res["flops_per_image"]
    if fl.get("infer"):
        xla = j.get("train_xla_flops_per_image")
        lines += [
            "",
            f"FLOPs per image: inference {fl['infer'] / 1e9:.3f} G, "
            f"training {fl['train'] / 1e9:.3f} G ({fl['method']})"
            + (f"; XLA's cost analysis of the jax train step: {xla / 1e9:.3f} G." if xla else "."),
        ]
    else:
        lines += ["", f"FLOPs per image: {fl['method']}."]
    lines.append(
        f"MFU: achieved FLOP/s / {dev['peak_tflops']:g} TFLOP/s ({dev['peak_source']})."
        if dev.get("peak_tflops")
        else dev.get("mfu_note", "MFU omitted.")
    )
    lines.append(
        "Compile s: jax lower + compile; torch.compile: the first call (cold inductor cache)."
    )
    flags = {k: m.get("xla_flags") for k, m in res["modes"].items() if m.get("xla_flags")}
    for k, v in flags.items():
        lines.append(f"XLA flags #{k[len('jax+flags') :]}: `{v}`")
    tg = res["targets"]
    if tg.get("evaluated"):
        lines += [
            "",
            f"Targets (issue 18, on {mode_label(tg['mode'], res['dtype'])} training):",
            "",
        ]
        for k, c in tg["checks"].items():
            met = {True: "met", False: "NOT met", None: "n/a"}[c["met"]]
            lines.append(f"- {k}: {f(c['got'], '.3f')} (want {c['want']}): {met}")
    else:
        lines += ["", f"Targets not evaluated: {tg.get('why')}."]
    if res["failures"]:
        lines += ["", "Failures:", ""]
        for fl_ in res["failures"]:
            lines.append(f"- {fl_['mode']}: {fl_['status']}: {fl_['error']}")
    return "\n".join(lines) + "\n"


def write(res: dict[str, Any], out: str | os.PathLike, name: str) -> Path:
    """<name>.json and <name>.md in out; the JSON path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    path.write_text(json.dumps(res, indent=2, default=str))
    (out / f"{name}.md").write_text(to_markdown(res))
    return path


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="vit_base_patch16_224", help="timm / vitjax model name")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16", help="compute dtype")
    p.add_argument("--img-size", type=int, default=None, help="override img_size (both sides)")
    p.add_argument("--depth", type=int, default=None, help="override depth (both sides)")
    p.add_argument("--steps", type=int, default=10, help="calls per timed sample")
    p.add_argument("--rounds", type=int, default=5, help="timed samples per mode and task")
    p.add_argument("--warmup", type=int, default=1, help="untimed samples after the first call")
    p.add_argument("--modes", default="jax,eager,compile", help="comma list of jax,eager,compile")
    p.add_argument("--tasks", default="train,infer", help="comma list of train,infer")
    p.add_argument(
        "--compile-backend",
        default="inductor",
        help="torch.compile's backend for the compile mode (default inductor, what the targets "
        "are against); aot_eager checks the harness without inductor's code generation",
    )
    p.add_argument(
        "--xla-flags",
        action="append",
        default=[],
        metavar="FLAGS",
        help="one more jax worker with FLAGS appended to XLA_FLAGS in its environment "
        'only (repeatable), e.g. --xla-flags "--xla_gpu_enable_latency_hiding_scheduler=true"',
    )
    p.add_argument(
        "--attn-impl",
        choices=("auto", "xla", "cpu", "cudnn"),
        default=None,
        help="vitjax's attn_impl (config field; default: the model's, 'auto')",
    )
    p.add_argument("--dense-impl", choices=("auto", "xla", "cpu"), default=None)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--peak-tflops", type=float, default=None, help="the device's peak (else PEAKS by name)"
    )
    p.add_argument("--schedule", choices=("sequential", "parallel"), default="sequential")
    p.add_argument(
        "--deadline-s", type=float, default=None, help="wall-clock bound of the whole run"
    )
    p.add_argument(
        "--variant-min-s",
        type=float,
        default=75.0,
        help="sequential: start an --xla-flags worker only with this much time left",
    )
    p.add_argument(
        "--timing-reserve-s",
        type=float,
        default=30.0,
        help="with --deadline-s: a worker not built this long before the deadline is stopped, "
        "so that the others still get timed",
    )
    p.add_argument("--require-gpu", action="store_true", help="a mode not on a GPU is a failure")
    p.add_argument("--out", default="gpu_bench_out", help="directory for <name>.json/.md and logs")
    p.add_argument("--name", default=None, help="file stem (default: <model>_b<batch>_<dtype>)")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    given = list(sys.argv[1:] if argv is None else argv)
    merged: list[str] = []  # "--xla-flags --xla_..." : the value starts with "--", so join it
    for i, arg in enumerate(given):
        if i and given[i - 1] == "--xla-flags" and merged[-1] == "--xla-flags":
            merged[-1] = f"--xla-flags={arg}"
        else:
            merged.append(arg)
    a = p.parse_args(merged)
    a.argv = given
    for name in ("batch_size", "steps", "rounds"):
        if getattr(a, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be positive")
    if a.warmup < 0:
        p.error("--warmup must be >= 0")
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse(argv)
    if a.worker is not None:
        return worker_main(json.loads(a.worker))
    try:
        res, status = run(a)
    except ValueError as e:
        print(f"gpu_bench: {e}", file=sys.stderr)
        return 2
    name = a.name or f"{a.model}_b{a.batch_size}_{a.dtype}"
    path = write(res, a.out, name)
    print(to_markdown(res))
    print(f"wrote {path} and {path.with_suffix('.md')} (exit status {status})")
    return status


if __name__ == "__main__":
    raise SystemExit(main())
