"""Parity-test setup: pinned precision on both sides, seeds, the gpu marker, shared fixtures."""

from __future__ import annotations

import gc
import os
import sys
from pathlib import Path

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
from parity_tests import child_env  # noqa: E402

child_env.forget_inherited()  # the children's variables are not this worker's (before jax)
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))  # devtools

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")
torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False
torch.set_float32_matmul_precision("highest")

# jax's backend starts here, before the children's variables: XLA reads XLA_FLAGS when the
# backend starts (jax its own settings when it is imported)
HAS_GPU = any(d.platform == "gpu" for d in jax.devices()) and torch.cuda.is_available()
child_env.set_for_children()


def pytest_addoption(parser):
    parser.addoption(
        "--parity-report", metavar="FILE", help="write every parity figure to FILE (Markdown)"
    )


def pytest_sessionfinish(session, exitstatus):
    from parity_tests import parity

    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:  # a pytest-xdist worker: the controller writes the report
        workeroutput["parity_records"] = parity.RECORDS
        return
    path = session.config.getoption("--parity-report")
    if path:
        with open(path, "w") as f:
            f.write(parity.records_markdown())


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
    """pytest-xdist's controller: collect a finished worker's parity figures for the report."""
    from parity_tests import parity

    records = getattr(node, "workeroutput", {}).get("parity_records", ())
    parity.RECORDS.extend(tuple(r) for r in records)


def pytest_collection_modifyitems(config, items):
    skip = pytest.mark.skip(reason="needs a GPU (jax and torch both see one)")
    for item in items:
        if "gpu" in item.keywords and not HAS_GPU:
            item.add_marker(skip)
    # the slow tests first, so that with several workers (make test: pytest-xdist) none of them
    # starts last and leaves the other workers idle
    items.sort(key=lambda item: "slow" not in item.keywords)


def pytest_collection_finish(session):
    """Fewer garbage collections: tracing and lowering make millions of short-lived objects,
    and each full collection walks jax's, torch's and the collected tests' long-lived ones
    (frozen here). On test_eva.py, one worker: 58.5 -> 53.5 s; whole suite with -n 2 on this
    2-core Xeon: 1434 -> 1258 s wall, peak RSS 6.7 GB."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(100_000, 50, 100)


@pytest.fixture(autouse=True)
def _seed():
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture
def rng():
    return np.random.default_rng(0)
