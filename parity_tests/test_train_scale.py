"""Scale-out and mixed precision: data-parallel training equals one device; bf16 matches autocast.

The multi-device test runs in a subprocess with XLA_FLAGS=--xla_force_host_platform_device_count=4
(the flag must be set before jax starts), training the same steps on a 1-device and a 4-device
mesh and comparing losses and parameters.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from parity_tests.parity import assert_close
from parity_tests.test_train import compare_params, make_batches, make_pair, report, to_torch
from vitjax import training as jtrain
from vitjax.models.vit_config import ViTConfig
from vittorch import train as ttrain

ROOT = Path(__file__).resolve().parents[1]

DATA_PARALLEL = r"""
import json, sys
import jax, numpy as np
jax.config.update("jax_default_matmul_precision", "highest")
from vitjax import training as T
from vitjax.models.vit_config import ViTConfig
from vitjax.factory import init_variables
from vitjax.models.vit import VisionTransformer

assert jax.device_count() == 4, jax.devices()
cfg = ViTConfig(img_size=16, patch_size=8, embed_dim=24, depth=2, num_heads=2, num_classes=3,
                drop_path_rate=0.1, proj_drop_rate=0.1)
model = VisionTransformer(cfg)
variables = init_variables(model, 0)
rng = np.random.default_rng(0)
batches = [{"image": rng.normal(size=(8, 16, 16, 3)).astype(np.float32),
            "label": rng.integers(0, 3, 8).astype(np.int32)} for _ in range(6)]
batches[-1] = {k: v[:5] for k, v in batches[-1].items()}  # short last batch: padded + masked

def run(devices):
    tx = T.make_optimizer("adamw", 1e-3, weight_decay=0.05, clip_grad=1.0)
    state = T.create_train_state(model, variables, tx)
    mesh = T.make_mesh(devices)
    step_fn, _ = T.jit_steps(mesh)
    state, losses = T.replicate(state, mesh), []
    for b in batches:
        state, m = step_fn(state, T.shard_batch(T.pad_batch(b, 8), mesh), jax.random.PRNGKey(1))
        losses.append(float(m["loss"]))
    sharding = str(state.params["head"]["kernel"].sharding)
    params = [np.asarray(x).tolist() for x in jax.tree_util.tree_leaves(state.params)]
    return {"losses": losses, "params": params, "sharding": sharding}

import tempfile
try:  # the CLI's path: refused before any work
    T.train_and_evaluate(T.RunConfig(out=tempfile.mkdtemp(), batch_size=30, progress=False))
    error = None
except ValueError as e:
    error = str(e)
shard = T.shard_batch(T.pad_batch(batches[0], 8), T.make_mesh())["image"]
shards = sorted({s.data.shape[0] for s in shard.addressable_shards})
shards.append(len(shard.sharding.device_set))
one, four = run(jax.devices()[:1]), run(jax.devices())
print(json.dumps({"one": one, "four": four, "error": error, "shards": shards}))
"""


def test_data_parallel_matches_one_device():
    """4 host devices (batch sharded on 'data', params replicated) == 1 device, within 1e-5."""
    env = {
        **os.environ,
        "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
        "JAX_PLATFORMS": "cpu",
    }
    proc = subprocess.run(
        [sys.executable, "-c", DATA_PARALLEL],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    one, four = got["one"], got["four"]
    assert "4 devices" in got["error"] and "multiple of 4" in got["error"]
    assert got["shards"] == [2, 4]  # batch of 8 split 2 per device over 4 devices
    rep = assert_close(np.array(four["losses"]), np.array(one["losses"]), "4-device losses")
    worst = max(
        assert_close(np.array(a), np.array(b), f"4-device param {i}")["max"]
        for i, (a, b) in enumerate(zip(four["params"], one["params"], strict=True))
    )
    report("data parallel (4 vs 1 devices)", rep, worst)


@pytest.mark.parametrize("config", ["tiny_bf16"])
def test_train_step_bf16_matches_torch(config):
    """--precision bf16 (bf16 compute, fp32 params/opt state) against torch autocast bf16."""
    cfg = ViTConfig(img_size=16, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=4)
    batches = make_batches(cfg, 10, 4, seed=9)
    net, _, variables = make_pair(cfg)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    t_losses = ttrain.train_one_epoch(
        net,
        [to_torch(b) for b in batches],
        torch.nn.CrossEntropyLoss(),
        opt,
        autocast_dtype=torch.bfloat16,
    )["losses"]

    from vitjax.models.vit import VisionTransformer

    model = VisionTransformer(cfg, dtype=jnp.bfloat16)
    state = jtrain.create_train_state(model, variables, jtrain.make_optimizer("adam", 1e-3))
    step = jax.jit(jtrain.train_step, donate_argnums=0)
    j_losses = []
    for b in batches:
        state, m = step(state, b, jax.random.PRNGKey(0))
        j_losses.append(float(m["loss"]))
    dtypes = {
        x.dtype
        for x in jax.tree_util.tree_leaves((state.params, state.opt_state))
        if jnp.issubdtype(x.dtype, jnp.floating)
    }
    assert dtypes == {jnp.dtype(jnp.float32)}, dtypes
    rep = assert_close(
        np.array(j_losses), np.array(t_losses), "bf16 per-step loss", dtype="bfloat16"
    )
    worst = compare_params(state, net, config, dtype="bfloat16")
    report("bf16 vs torch autocast", rep, worst)
