"""vitjax.runtime.keep_freed_memory: XLA:CPU's freed temporaries are reused, not faulted in again.

Counted, not timed: the page faults (ru_minflt) of the calls of a jitted function with ~130 MB of
temporaries, in a fresh process, with the setting on and off. Kept memory can fragment for the
first few calls (the heap grows once or twice, then settles), so the steady state is compared:
the median over calls 7-12.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from vitjax import runtime

ROOT = Path(__file__).resolve().parents[1]

PROBE = r"""
import json, resource, sys
from vitjax.runtime import keep_freed_memory
applied = keep_freed_memory()
import jax, jax.numpy as jnp
x = jnp.ones((65536, 256), jnp.float32)  # 64 MB
w = jnp.full((256, 256), 1e-3, jnp.float32)
f = jax.jit(lambda x, w: (jnp.tanh(x @ w) @ w)[::-1].T @ x)  # 128 MB of temporaries
faults = []
for _ in range(12):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    f(x, w).block_until_ready()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
late = keep_freed_memory()  # idempotent once applied; refused after the backend started
print(json.dumps({"applied": applied, "late": late, "faults": faults}))
"""


def probe(keep: bool) -> dict:
    env = {**os.environ, runtime.ENV: "1" if keep else "0", "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc tuning")
def test_keep_freed_memory_stops_page_faults_per_call():
    kept, default = probe(keep=True), probe(keep=False)
    assert kept["applied"] and kept["late"]
    assert not default["applied"] and not default["late"]
    steady = {
        k: statistics.median(r["faults"][6:]) for k, r in (("kept", kept), ("default", default))
    }
    # ~130 MB of temporaries: ~32k 4 KiB faults per call when freed memory goes back to the OS.
    assert steady["default"] > 10_000, default
    assert steady["kept"] < steady["default"] / 10, (kept, default)


def test_keep_freed_memory_refuses_after_backend_started(monkeypatch):
    import jax.numpy as jnp

    jnp.zeros(1).block_until_ready()  # the backend is running in this process
    monkeypatch.setattr(runtime, "_applied", False)
    assert runtime.keep_freed_memory() is False
    monkeypatch.setenv(runtime.ENV, "0")
    assert runtime.keep_freed_memory() is False


def test_train_and_evaluate_keeps_freed_memory_only_for_large_steps(monkeypatch):
    from vitjax import train

    calls = []
    monkeypatch.setattr(runtime, "keep_freed_memory", lambda: calls.append(1) or True)
    # make demo's model: ~5 MB of activations, below glibc's 64 MB thread heaps: left alone
    demo = train.RunConfig(
        model="vit_tutorial_patch16_32",
        model_args={"patch_size": 4, "embed_dim": 64, "depth": 3, "num_heads": 4},
        img_size=16,
        batch_size=16,
    )
    assert runtime.step_activation_bytes(train.get_config_for_run(demo), 16) < runtime.LARGE_BLOCK
    assert train._keep_freed_memory_if_large(demo) is False and not calls
    # the tutorial model at 224 px, batch 32: ~570 MB estimated (XLA's temp is 761 MB)
    big = train.RunConfig(model="vit_tutorial_patch28_224", batch_size=32)
    assert train._keep_freed_memory_if_large(big) is True and calls == [1]
    # an unknown name is build_model's to report
    assert train._keep_freed_memory_if_large(train.RunConfig(model="no_such_vit")) is False
