"""Process settings that make XLA:CPU faster; the CLIs apply them, library users opt in.

``keep_freed_memory()``: XLA:CPU mallocs each call's temporaries in one block (4.6 GB for a
vit_small_patch16_224 training step at batch 32, 0.76 GB for the tutorial model) and frees it
when the call returns. glibc serves blocks that large with a fresh ``mmap`` and gives them back
with ``munmap``, so every step page-faults its whole working set in again: 2 CPU-s of kernel time
per vit_small step on the 2-core benchmark machine, 15% of the step (docs/benchmarks/README.md).
With one malloc arena, no ``mmap`` and no trimming, the freed block stays mapped and the next call
reuses it: no page faults once the heap has settled. The cost: the process keeps its peak heap
(resident memory does not shrink after a big call), and in the first few calls fragmentation can
grow the heap by up to one more copy of the temporaries before it settles (measured: vit_small
training at batch 32 settled at 5.6 GB one run and 10.1 GB another, against 5.7 GB without).

It must run before JAX starts its CPU backend (XLA's threads keep the malloc arena they first
used), so call it first thing: ``import vitjax.runtime; vitjax.runtime.keep_freed_memory()``.
``VITJAX_KEEP_FREED_MEMORY=0`` in the environment turns it off for the CLIs.
"""

from __future__ import annotations

import ctypes
import os
import sys

ENV = "VITJAX_KEEP_FREED_MEMORY"

# glibc's mallopt() parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8

_applied = False


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
