"""devtools.cpu_tuning.keep_freed_memory (opt-in: scripts/train.py --keep-freed-memory):
XLA:CPU's freed temporaries are reused, not faulted in again.

Counted, not timed: the page faults (ru_minflt) of the calls of a jitted function with ~130 MB of
temporaries, in a fresh process, with the setting on and off. With glibc's defaults every call
faults its temporaries in again. Kept memory makes most calls fault-free, but not all: now and then
a short-lived small allocation sits in the freed block when the next call asks for it, and the heap
grows by one more block (those calls fault like the default). How often depends on thread timing:
with both cores busy, 3-6 of 30 calls grew the heap (CI once saw 3 of calls 7-12 do so), so the
test counts fault-free calls instead of expecting a settled tail.

cpu_tuning.split_cpu_into_devices / cpu_devices_for: one CPU device per core (the benchmark's
rule, and the setting in a fresh process, where the user's own choice wins).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from devtools import cpu_tuning as runtime

ROOT = Path(__file__).resolve().parents[1]
PYTHONPATH = os.pathsep.join([str(ROOT / "scripts"), str(ROOT)])  # devtools, vitjax

PROBE = r"""
import json, resource, sys
from devtools.cpu_tuning import keep_freed_memory
applied = keep_freed_memory()
import jax, jax.numpy as jnp
x = jnp.ones((65536, 256), jnp.float32)  # 64 MB
w = jnp.full((256, 256), 1e-3, jnp.float32)
f = jax.jit(lambda x, w: (jnp.tanh(x @ w) @ w)[::-1].T @ x)  # 128 MB of temporaries
faults = []
for _ in range(16):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    f(x, w).block_until_ready()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
late = keep_freed_memory()  # idempotent once applied; refused after the backend started
print(json.dumps({"applied": applied, "late": late, "faults": faults}))
"""


def probe(keep: bool) -> dict:
    env = {**os.environ, runtime.ENV: "1" if keep else "0", "PYTHONPATH": PYTHONPATH}
    out = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc tuning")
@pytest.mark.slow
def test_keep_freed_memory_stops_page_faults_per_call():
    kept, default = probe(keep=True), probe(keep=False)
    assert kept["applied"] and kept["late"]
    assert not default["applied"] and not default["late"]
    later = {k: r["faults"][1:] for k, r in (("kept", kept), ("default", default))}
    # ~130 MB of temporaries: ~32k 4 KiB faults per call when freed memory goes back to the OS.
    assert min(later["default"]) > 10_000, default
    # Kept: most calls reuse the freed block and fault (next to) nothing.
    fault_free = sum(n < 1_000 for n in later["kept"])
    assert fault_free >= len(later["kept"]) / 2, (kept, default)


def test_keep_freed_memory_refuses_after_backend_started(monkeypatch):
    import jax.numpy as jnp

    jnp.zeros(1).block_until_ready()  # the backend is running in this process
    monkeypatch.setattr(runtime, "_applied", False)
    assert runtime.keep_freed_memory() is False
    monkeypatch.setenv(runtime.ENV, "0")
    assert runtime.keep_freed_memory() is False


def test_cpu_devices_for_divides_the_batch_and_keeps_rows_per_device(monkeypatch):
    from vitjax.registry import get_config

    small = get_config("vit_small_patch16_224")  # 197 tokens
    monkeypatch.delenv(runtime.CPU_DEVICES_ENV, raising=False)
    assert runtime.cpu_devices_for(small, 32, cores=2) == 2
    assert runtime.cpu_devices_for(small, 32, cores=16) == 4  # 8 x 197 rows; 8 devices: 788
    assert runtime.cpu_devices_for(small, 30, cores=4) == 3  # 4 does not divide 30
    assert runtime.cpu_devices_for(small, 5, cores=2) == 1
    assert runtime.cpu_devices_for(small, 32, cores=1) == 1


def _env_without_a_cpu_device_choice() -> dict[str, str]:
    """os.environ less every variable that sets the CPU device count; JAX on the CPU."""
    chosen = ("XLA_FLAGS", "JAX_NUM_CPU_DEVICES", runtime.CPU_DEVICES_ENV)
    env = {k: v for k, v in os.environ.items() if k not in chosen}
    return {**env, "JAX_PLATFORMS": "cpu", "PYTHONPATH": PYTHONPATH}


SPLIT_PROBE = """
import json, os, sys
from devtools import cpu_tuning as runtime
first = runtime.split_cpu_into_devices(2)
import jax
print(json.dumps([first, runtime.split_cpu_into_devices(2), jax.device_count(),
                  runtime.split_cpu_into_devices(3)]))
"""


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, [True, True, 2, False]),  # applied; idempotent; too late once the backend started
        ({"XLA_FLAGS": "--xla_force_host_platform_device_count=3"}, [False, False, 3, False]),
        ({"JAX_NUM_CPU_DEVICES": "1"}, [False, False, 1, False]),
    ],
)
def test_split_cpu_into_devices_in_a_fresh_process(env, expected):
    out = subprocess.run(
        [sys.executable, "-c", SPLIT_PROBE],
        env={**_env_without_a_cpu_device_choice(), **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert json.loads(out.strip().splitlines()[-1]) == expected


def test_keep_freed_memory_for_gates_on_size_and_memory(monkeypatch):
    monkeypatch.setattr(runtime, "keep_freed_memory", lambda: True)
    monkeypatch.setattr(runtime, "available_memory_bytes", lambda: 8 * 2**30)
    assert runtime.keep_freed_memory_for(runtime.LARGE_BLOCK) == "small"
    assert runtime.keep_freed_memory_for(2 * 2**30) == "kept"
    assert runtime.keep_freed_memory_for(2 * 2**30 + 1) == "memory"  # 4x over 8 GiB
    monkeypatch.setattr(runtime, "available_memory_bytes", lambda: None)  # unknown: no gate
    assert runtime.keep_freed_memory_for(2**40) == "kept"
    monkeypatch.setattr(runtime, "keep_freed_memory", lambda: False)
    assert runtime.keep_freed_memory_for(2**30) == "unavailable"


def test_available_memory_bytes_reads_this_machine():
    avail = runtime.available_memory_bytes()
    if sys.platform.startswith("linux"):
        assert avail is not None and 0 < avail <= os.sysconf("SC_PAGE_SIZE") * os.sysconf(
            "SC_PHYS_PAGES"
        )


@pytest.mark.slow
def test_train_cli_splits_the_cpu_when_asked(tmp_path):
    """vitjax-train --cpu-devices 2: the run trains data parallel on two CPU devices."""
    args = ["--model", "vit_tutorial_patch16_32", "--img-size", "16", "--epochs", "1"]
    args += ["--model-args", "patch_size=8", "embed_dim=16", "depth=1", "num_heads=2"]
    proc = subprocess.run(
        [sys.executable, "-m", "vitjax.cli.train", *args, "--batch-size", "64"]
        + ["--cpu-devices", "2"]
        + ["--out", str(tmp_path / "run"), "--no-progress"],
        env=_env_without_a_cpu_device_choice(),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 device(s) cpu" in proc.stdout
    assert "cpu_devices" not in json.loads((tmp_path / "run" / "run_config.json").read_text())
