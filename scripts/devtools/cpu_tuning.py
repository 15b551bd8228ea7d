"""Process settings that make XLA:CPU faster for big models: opt-in, never applied by the library.

``keep_freed_memory()``: XLA:CPU mallocs each call's temporaries in one block (4.1 GB for a
vit_small_patch16_224 training step at batch 32, 0.72 GB for the tutorial model) and frees it
when the call returns. glibc serves blocks that large with a fresh ``mmap`` and gives them back
with ``munmap``, so every step page-faults its whole working set in again: 2 CPU-s of kernel time
per vit_small step on the 2-core benchmark machine, 15% of the step (docs/benchmarks/README.md).
With one malloc arena, no ``mmap`` and no trimming, the freed block stays mapped and the next call
reuses it: most calls fault nothing. The cost is memory: the process keeps its peak heap
(resident memory does not shrink after a big call), and fragmentation makes that peak larger. Now
and then a short-lived small allocation sits in the freed block when the next call asks for it,
so the heap grows by another copy of the temporaries; more often under CPU contention. Measured
on the 2-core machine: vit_small training at batch 32 kept 13.0 GB (3.7x ``step_activation_bytes``)
with both cores also busy, 5.6-10.1 GB on a quiet machine, against 5.7 GB with glibc's defaults.

The other cost: with one arena every thread takes the same malloc lock. A tiny model with a busy
data loader spends more on that contention than it saves (``make demo``: 28 s -> 40 s), so it
pays only when a step's activations (``step_activation_bytes``) exceed ``LARGE_BLOCK``, the
largest block glibc can serve from a thread's own heap (bigger blocks are mapped and faulted in on
every call), and fit ``KEPT_HEAP_FACTOR`` times over in the available memory
(``keep_freed_memory_for``). ``scripts/train.py --keep-freed-memory`` and the benchmark's
``--malloc keep`` apply it.

It must run before JAX starts its CPU backend (XLA's threads keep the malloc arena they first
used), so call it first thing: ``from devtools import cpu_tuning; cpu_tuning.keep_freed_memory()``.
``VITJAX_KEEP_FREED_MEMORY=0`` in the environment turns it off everywhere.

``split_cpu_into_devices(n)``: XLA:CPU shows the whole CPU as one device and splits each op over
the cores (intra-op threads). For big steps it is faster to show one device per core and train
data-parallel over them (the same ``Mesh`` code as on many GPUs): each core then runs its half
of the batch through whole ops, without a thread barrier inside every small matmul, softmax and
LayerNorm. Measured on the 2-core benchmark machine at batch 32 (docs/benchmarks/README.md):
vit_small_patch16_224 training +5%, inference +6-10%; the tutorial model (65 tokens) training
+1-2%. For small steps it is slower (``make demo``: 27 s -> 37 s; the tutorial model at batch 4:
-13%), so ``cpu_devices_for`` (the benchmark's default) splits only when every device gets at
least ``MIN_ROWS_PER_DEVICE`` token rows per matmul; ``vitjax-train --cpu-devices N`` is the
training CLI's opt-in. Also before JAX starts its backend;
``VITJAX_CPU_DEVICES=N`` in the environment fixes the count (1: never split), and so does
``XLA_FLAGS=--xla_force_host_platform_device_count=N`` or ``JAX_NUM_CPU_DEVICES``.
"""

from __future__ import annotations

import ctypes
import os
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vitjax.models.vit_config import ViTConfig

ENV = "VITJAX_KEEP_FREED_MEMORY"
CPU_DEVICES_ENV = "VITJAX_CPU_DEVICES"

# glibc's mallopt() parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8

# glibc's per-thread heaps are at most 64 MB: larger blocks are mmapped (and faulted) per call.
LARGE_BLOCK = 64 * 2**20

# A kept heap settled at up to 3.7x step_activation_bytes (vit_small, batch 32, CPU contention).
KEPT_HEAP_FACTOR = 4

# Token rows (examples x tokens) per device below which one device on all cores is faster: the
# tutorial model (65 tokens) gains at 16 examples per device (1040 rows), loses at 2 (130 rows).
MIN_ROWS_PER_DEVICE = 1024

_applied = False
_split = 0


def step_activation_bytes(cfg: ViTConfig, batch_size: int, itemsize: int = 4) -> int:
    """Rough size of one training step's saved activations, for deciding on keep_freed_memory.

    Per block and token: ~12 embed-width tensors (norms, qkv, q/k/v, attention output, residuals),
    3 MLP-width ones (fc1 output, GELU output, its gradient) and 2 attention rows per head. It
    comes to 83-86% of XLA's temp size for the tutorial model and vit_small (0.72 GB, 4.05 GB).
    """
    tokens = cfg.num_patches + cfg.num_prefix_tokens
    per_token = 12 * cfg.embed_dim + 3 * cfg.mlp_hidden + 2 * cfg.num_heads * tokens
    return batch_size * tokens * cfg.depth * per_token * itemsize


def available_memory_bytes() -> int | None:
    """The memory this process may still take: MemAvailable, capped by a cgroup v2 limit."""
    try:
        with open("/proc/meminfo") as f:
            avail = next(
                int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:")
            )
    except (OSError, StopIteration, ValueError, IndexError):
        return None
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            limit = f.read().strip()
        with open("/sys/fs/cgroup/memory.current") as f:
            used = int(f.read())
        if limit != "max":
            avail = min(avail, int(limit) - used)
    except (OSError, ValueError):
        pass
    return avail


def keep_freed_memory_for(step_bytes: int) -> str:
    """``keep_freed_memory()`` where it pays for a step with ``step_bytes`` of activations.

    Returns what was done, for the run's log: "kept" (applied), "small" (blocks glibc keeps
    anyway), "memory" (the kept heap could outgrow the available memory), "unavailable"
    (``keep_freed_memory`` declined: too late, turned off, or not glibc).
    """
    if step_bytes <= LARGE_BLOCK:
        return "small"
    avail = available_memory_bytes()
    if avail is not None and KEPT_HEAP_FACTOR * step_bytes > avail:
        return "memory"
    return "kept" if keep_freed_memory() else "unavailable"


def _jax_backend_started() -> bool:
    if "jax" not in sys.modules:
        return False
    try:
        from jax._src import xla_bridge

        return bool(xla_bridge.backends_are_initialized())
    except (ImportError, AttributeError):  # a jax without this helper: assume started
        return True


def keep_freed_memory() -> bool:
    """Make glibc keep and reuse freed memory (one arena, no mmap, no trim). True if applied.

    Does nothing (False) where it cannot help or is too late: not Linux with glibc, JAX's backend
    already started, or ``VITJAX_KEEP_FREED_MEMORY=0``. Idempotent.
    """
    global _applied
    if _applied:
        return True
    if os.environ.get(ENV, "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    if not sys.platform.startswith("linux") or _jax_backend_started():
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl or another libc: nothing to tune
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    # -1 as the trim threshold is SIZE_MAX to glibc: never give the heap's top back.
    ok = all(
        mallopt(param, value) == 1
        for param, value in ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, -1))
    )
    _applied = ok
    return ok


def cpu_count() -> int:
    """The cores this process may run on (its affinity mask), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def cpu_devices_for(cfg: ViTConfig, batch_size: int, cores: int | None = None) -> int:
    """How many CPU devices to train ``batch_size`` examples of ``cfg`` on: see the module doc.

    ``VITJAX_CPU_DEVICES`` if set; else the most devices, at most one per core, that divide the
    batch and leave each at least ``MIN_ROWS_PER_DEVICE`` token rows; else 1.
    """
    env = os.environ.get(CPU_DEVICES_ENV, "").strip()
    if env:
        if not env.isdigit() or int(env) < 1:
            raise ValueError(f"{CPU_DEVICES_ENV}={env!r}: expected a whole number >= 1")
        return int(env)
    tokens = cfg.num_patches + cfg.num_prefix_tokens
    n = cores or cpu_count()
    while n > 1 and (batch_size % n or batch_size // n * tokens < MIN_ROWS_PER_DEVICE):
        n -= 1
    return n


def _cpu_device_count_chosen() -> bool:
    """True if the user already set how many CPU devices JAX shows (XLA_FLAGS or jax config)."""
    if "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", ""):
        return True
    if "JAX_NUM_CPU_DEVICES" in os.environ:
        return True
    if "jax" in sys.modules:
        import jax

        return getattr(jax.config, "jax_num_cpu_devices", -1) not in (-1, None)
    return False


def split_cpu_into_devices(n: int) -> bool:
    """Make JAX show the CPU as ``n`` devices (``jax_num_cpu_devices``). True if applied.

    Does nothing (False) for ``n <= 1``, once JAX's backend has started, or where the user
    already chose the count (``XLA_FLAGS=--xla_force_host_platform_device_count``,
    ``JAX_NUM_CPU_DEVICES``, ``jax.config``). Other platforms (GPU, TPU) are unaffected.
    """
    global _split
    if n == _split:
        return True
    if n <= 1 or _cpu_device_count_chosen() or _jax_backend_started():
        return False
    import jax

    jax.config.update("jax_num_cpu_devices", n)
    _split = n
    return True
