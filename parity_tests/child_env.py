"""The environment of the processes the tests start (CLIs, benchmarks, multi-process runs).

They share one XLA compilation cache (they compile the same tiny models again and again) and
compile at XLA's backend optimisation level 0 (their time goes to compiling, not running). The
test workers keep XLA's defaults: conftest sets these after the workers' backend started and
takes them back from an environment inherited from the pytest-xdist controller. The parity
tests measure the numbers users get; level 0 sums reductions in another order (a ResNetV2
module test then misses float32's tolerance by 10 %). Measured: the cache in every process made
the suite slower (16 -> 21 min: the workers' many one-off compiles cost more to store than to
redo). A test-suite setting, never vitjax's; a JAX_COMPILATION_CACHE_DIR or XLA_FLAGS of your
own is kept. The size bound turns on jax's file lock, so concurrent writers never leave half an
entry. No jax import here: conftest uses this before jax starts.
"""

from __future__ import annotations

import os
from pathlib import Path

CHILD_VARS = {
    "JAX_COMPILATION_CACHE_DIR": str(Path(__file__).resolve().parents[1] / ".pytest_cache/jax"),
    "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
    "JAX_COMPILATION_CACHE_MAX_SIZE": str(2 << 30),
    "XLA_FLAGS": "--xla_backend_optimization_level=0",
}
MARK = "VITJAX_TESTS_SET_CHILD_VARS"  # which of CHILD_VARS conftest set, comma-separated


def _ours() -> list[str]:
    return [k for k in os.environ.get(MARK, "").split(",") if k]


def forget_inherited() -> None:
    """Drop the variables a parent's conftest set (not the user's): before jax starts."""
    for k in _ours():
        os.environ.pop(k, None)
    os.environ.pop(MARK, None)


def set_for_children() -> None:
    """Set every CHILD_VARS entry the user has not set, and remember which (in MARK)."""
    ours = [k for k in CHILD_VARS if k not in os.environ]
    os.environ.update({k: CHILD_VARS[k] for k in ours})
    if ours:
        os.environ[MARK] = ",".join(ours)


def same_xla_env() -> dict[str, str]:
    """os.environ for a child process that compiles as this one does: one whose numbers are
    compared bit for bit with this one's, or a long run whose code level 0 slows more than it
    speeds its compiles (the README's notebook commands: 9 s faster at XLA's default level).
    Without the XLA_FLAGS set for children (its own XLA_FLAGS, if the user set one, stay)."""
    env = dict(os.environ)
    if "XLA_FLAGS" in _ours():
        env.pop("XLA_FLAGS")
    return env
