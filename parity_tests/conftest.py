"""Parity-test setup: pinned precision on both sides, seeds, the gpu marker, shared fixtures."""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
_CHILD_VARS = {  # see below: for the processes the tests start, not for the test workers
    "JAX_COMPILATION_CACHE_DIR": str(Path(__file__).resolve().parents[1] / ".pytest_cache/jax"),
    "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
    "JAX_COMPILATION_CACHE_MAX_SIZE": str(2 << 30),
    "XLA_FLAGS": "--xla_backend_optimization_level=0",
}
_CHILD_MARK = "VITJAX_TESTS_SET_CHILD_VARS"
for _k in filter(None, os.environ.pop(_CHILD_MARK, "").split(",")):
    os.environ.pop(_k, None)  # set by the pytest-xdist controller's conftest, not by the user
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))  # devtools

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")
torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False
torch.set_float32_matmul_precision("highest")

# jax's backend starts here, before the children's variables below: XLA reads XLA_FLAGS when
# the backend starts (jax's own settings when it is imported)
HAS_GPU = any(d.platform == "gpu" for d in jax.devices()) and torch.cuda.is_available()

# The processes the tests start (CLIs, benchmarks, multi-process runs) share one XLA compilation
# cache (they compile the same tiny models again and again) and compile at XLA's backend
# optimisation level 0 (their time goes to compiling, not running). The test workers keep XLA's
# defaults (these are set after the backend started, and taken back above from an inherited
# environment): the parity tests measure the numbers users get; level 0 sums reductions in
# another order (a ResNetV2 module test then misses float32's tolerance by 10 %). Measured: the
# cache in every process made the suite slower (16 -> 21 min: the workers' many one-off compiles
# cost more to store than to redo). A test-suite setting, never vitjax's; a
# JAX_COMPILATION_CACHE_DIR or XLA_FLAGS of your own is kept. The size bound turns on jax's file
# lock, so concurrent writers never leave half an entry.
_ours = [k for k in _CHILD_VARS if k not in os.environ]
os.environ.update({k: _CHILD_VARS[k] for k in _ours})
if _ours:
    os.environ[_CHILD_MARK] = ",".join(_ours)


def pytest_addoption(parser):
    parser.addoption(
        "--parity-report", metavar="FILE", help="write every parity figure to FILE (Markdown)"
    )


def pytest_sessionfinish(session, exitstatus):
    path = session.config.getoption("--parity-report")
    if path:
        from parity_tests.parity import records_markdown

        with open(path, "w") as f:
            f.write(records_markdown())


def pytest_collection_modifyitems(config, items):
    skip = pytest.mark.skip(reason="needs a GPU (jax and torch both see one)")
    for item in items:
        if "gpu" in item.keywords and not HAS_GPU:
            item.add_marker(skip)
    # the slow tests first, so that with several workers (make test: pytest-xdist) none of them
    # starts last and leaves the other workers idle
    items.sort(key=lambda item: "slow" not in item.keywords)


@pytest.fixture(autouse=True)
def _seed():
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture
def rng():
    return np.random.default_rng(0)
