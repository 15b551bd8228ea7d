"""Data parallelism: the device Mesh with a 'data' axis, batch sharding, jitted steps, hosts."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from vitjax.training.steps import Batch, eval_step, train_step

DATA_AXIS = "data"


def maybe_initialize_distributed() -> bool:
    """jax.distributed.initialize() when multi-host env vars are set; True if it ran."""
    env = os.environ
    multi = (
        "JAX_COORDINATOR_ADDRESS" in env
        or int(env.get("OMPI_COMM_WORLD_SIZE", "1")) > 1
        or ("SLURM_JOB_ID" in env and int(env.get("SLURM_NTASKS", "1")) > 1)
    )
    if not multi or jax.distributed.is_initialized():
        return False
    kw = {}
    if "JAX_NUM_PROCESSES" in env and "JAX_PROCESS_ID" in env:
        kw = {
            "num_processes": int(env["JAX_NUM_PROCESSES"]),
            "process_id": int(env["JAX_PROCESS_ID"]),
        }
    jax.distributed.initialize(**kw)
    return True


def make_mesh(devices: Sequence[Any] | None = None) -> Mesh:
    """A 1-D Mesh over all (or the given) devices with one 'data' axis."""
    return Mesh(np.asarray(devices if devices is not None else jax.devices()), (DATA_AXIS,))


def check_batch_size(batch_size: int, mesh: Mesh) -> None:
    """Raise a clear error unless the global batch splits evenly over the mesh's devices."""
    n = mesh.devices.size
    if batch_size % n:
        raise ValueError(
            f"batch size {batch_size} does not divide over {n} devices; use a multiple of {n} "
            f"(e.g. {math.ceil(batch_size / n) * n})"
        )


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Every leaf replicated on every device of the mesh."""
    return jax.device_put(tree, NamedSharding(mesh, PartitionSpec()))


def shard_batch(batch: Batch, mesh: Mesh) -> Batch:
    """A global host batch as arrays split on their leading axis over the 'data' axis."""
    sharding = NamedSharding(mesh, PartitionSpec(DATA_AXIS))
    n, i = jax.process_count(), jax.process_index()

    def put(x: np.ndarray) -> jax.Array:
        x = np.asarray(x)
        local = x.shape[0] // n
        return jax.make_array_from_process_local_data(
            sharding, x[i * local : (i + 1) * local], x.shape
        )

    return {k: put(v) for k, v in batch.items()}


def jit_steps(mesh: Mesh) -> tuple[Callable, Callable]:
    """train_step (state donated) and eval_step jitted for data parallelism over the mesh."""
    repl = NamedSharding(mesh, PartitionSpec())
    data = NamedSharding(mesh, PartitionSpec(DATA_AXIS))
    train = jax.jit(
        train_step, in_shardings=(repl, data, repl), out_shardings=(repl, repl), donate_argnums=0
    )
    evaluate = jax.jit(eval_step, in_shardings=(repl, data), out_shardings=repl)
    return train, evaluate


def pad_batch(batch: Batch, size: int) -> Batch:
    """The batch padded with zeros to ``size`` examples, with a 0/1 'mask' marking real ones."""
    n = len(batch["label"])
    if n > size:
        raise ValueError(f"batch of {n} examples is larger than the batch size {size}")
    mask = np.asarray(batch.get("mask", np.ones(n, np.float32)), np.float32)
    out = {**batch, "mask": mask}
    if n == size:
        return out
    return {
        k: np.concatenate([v, np.zeros((size - n, *np.shape(v)[1:]), np.asarray(v).dtype)])
        for k, v in out.items()
    }


