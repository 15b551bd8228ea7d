"""Data parallelism: the device Mesh with a 'data' axis, batch sharding, jitted steps, hosts.

Params and optimizer state are either replicated on every device or, for models bigger than a
device, sharded FSDP-style over the same 'data' axis (``fsdp_shardings``: each array split
along its largest dimension that divides by the axis size; small ones replicated). Sharding
never changes the numbers, only where they live. On several processes (hosts) every process
runs the same program; ``shard_batch(..., process_local=True)`` takes each process's own rows
of the global batch, and ``to_host`` brings arrays spread over processes back to numpy.
"""

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
PARAM_SHARDINGS = ("replicated", "fsdp")
# Arrays with fewer elements stay replicated under fsdp (biases, norms, tokens): sharding them
# saves little memory and costs a gather each. 2**14 float32 = 64 KiB (big_vision's fsdp rule
# uses a size threshold too); pass min_size=0 to shard everything that divides.
FSDP_MIN_SIZE = 2**14


def _env_int(env: Any, name: str) -> int:
    try:
        return int(env[name])
    except ValueError:
        raise ValueError(f"{name}={env[name]!r}: expected an integer") from None


def maybe_initialize_distributed() -> bool:
    """jax.distributed.initialize() when this process is one of several; True if it ran.

    Several processes means: JAX_COORDINATOR_ADDRESS is set (with JAX_NUM_PROCESSES and
    JAX_PROCESS_ID, or Open MPI's OMPI_COMM_WORLD_SIZE / _RANK, unless SLURM supplies them), or
    a SLURM step (srun) of more than one task, or an Open MPI 4 launch (mpirun) of more than one
    rank: the variables jax's own cluster detection reads. A SLURM allocation alone (salloc /
    sbatch without srun) is one process and is left alone. Must run before anything else
    touches JAX (jax.devices(), ...).
    """
    env = os.environ
    if jax.distributed.is_initialized():
        return False
    slurm_step = all(  # what jax's SLURM detection needs: set by srun, not by salloc / sbatch
        k in env
        for k in ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID",
                  "SLURM_LOCALID")
    )  # fmt: skip
    slurm = slurm_step and _env_int(env, "SLURM_NTASKS") > 1
    ompi = "OMPI_MCA_orte_hnp_uri" in env and int(env.get("OMPI_COMM_WORLD_SIZE", "1")) > 1
    coordinator = env.get("JAX_COORDINATOR_ADDRESS")
    if not (coordinator or slurm or ompi):
        return False
    kw: dict[str, Any] = {}
    pairs = (("JAX_NUM_PROCESSES", "JAX_PROCESS_ID"),  # Open MPI 5 sets no ORTE uri: its ranks
             ("OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK"))  # fmt: skip
    for count, rank in pairs:
        if count in env and rank in env:
            kw = {"num_processes": _env_int(env, count), "process_id": _env_int(env, rank)}
            break
    if not kw and not (slurm or ompi):
        raise ValueError(
            f"JAX_COORDINATOR_ADDRESS={coordinator!r} is set: also set JAX_NUM_PROCESSES and "
            "JAX_PROCESS_ID (or launch with srun / mpirun, which supply them)"
        )
    jax.distributed.initialize(**kw)  # reads JAX_COORDINATOR_ADDRESS, JAX_LOCAL_DEVICE_IDS
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


def fsdp_spec(shape: Sequence[int], n: int, min_size: int = FSDP_MIN_SIZE) -> PartitionSpec:
    """The fsdp PartitionSpec of an array of shape over an axis of n devices: its largest
    dimension that n divides (ties: the last) on the 'data' axis; replicated when it has fewer
    than min_size elements, no such dimension, or n is 1."""
    shape = tuple(int(d) for d in shape)
    if n <= 1 or math.prod(shape) < min_size:
        return PartitionSpec()
    for i in sorted(range(len(shape)), key=lambda i: (shape[i], i), reverse=True):
        if shape[i] >= n and shape[i] % n == 0:
            return PartitionSpec(*(DATA_AXIS if j == i else None for j in range(len(shape))))
    return PartitionSpec()


def fsdp_shardings(tree: Any, mesh: Mesh, min_size: int = FSDP_MIN_SIZE) -> Any:
    """A NamedSharding per array (or ShapeDtypeStruct) of tree, FSDP-style over the mesh's
    'data' axis (fsdp_spec). The rule reads only shapes, so a TrainState gets its optimizer
    state's moments sharded as their parameters are."""
    n = mesh.shape[DATA_AXIS]
    return jax.tree_util.tree_map(
        lambda x: NamedSharding(mesh, fsdp_spec(np.shape(x), n, min_size)), tree
    )


def state_shardings(
    tree: Any, mesh: Mesh, mode: str = "replicated", min_size: int = FSDP_MIN_SIZE
) -> Any:
    """Shardings of every array of tree (a TrainState, variables, shapes): 'replicated' on every
    device, or 'fsdp' (fsdp_shardings)."""
    if mode == "fsdp":
        return fsdp_shardings(tree, mesh, min_size)
    if mode != "replicated":
        raise ValueError(f"unknown param sharding {mode!r}; choose from {PARAM_SHARDINGS}")
    repl = NamedSharding(mesh, PartitionSpec())
    return jax.tree_util.tree_map(lambda _: repl, tree)


def place(tree: Any, shardings: Any) -> Any:
    """tree's arrays put into shardings (a Sharding, or a tree of them matching tree).

    Arrays already there stay as they are (no copy); an array on this process's devices goes
    to a sharding over several processes through host memory, each process contributing its
    own (equal) copy, as jax.device_put does for numpy input.
    """
    if isinstance(shardings, jax.sharding.Sharding):
        shardings = jax.tree_util.tree_map(lambda _: shardings, tree)

    def put(x: Any, s: Any) -> Any:
        if isinstance(x, jax.Array):
            if x.sharding == s:
                return x
            if x.is_fully_addressable and not s.is_fully_addressable:
                x = np.asarray(x)
        return jax.device_put(x, s)

    return jax.tree_util.tree_map(put, tree, shardings)


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Every leaf replicated on every device of the mesh."""
    return place(tree, NamedSharding(mesh, PartitionSpec()))


def host_array(x: Any) -> np.ndarray:
    """A numpy copy of an array, whole, also of one spread over several processes.

    An array some of whose shards live on other processes is gathered (the devices hold it
    whole for the moment): a collective, so every process must call host_array on it.
    """
    if not isinstance(x, jax.Array) or x.is_fully_addressable:
        return np.asarray(jax.device_get(x))
    if x.is_fully_replicated:
        return np.asarray(x.addressable_data(0))
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def to_host(tree: Any) -> Any:
    """numpy copies of a pytree's arrays (host_array, one array at a time: the devices never
    hold more than one array extra); every process must call it on the same tree."""
    return jax.tree_util.tree_map(host_array, tree)


def sync_processes(name: str) -> None:
    """A barrier of all processes (a no-op with one)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def any_process(*flags: bool) -> tuple[bool, ...]:
    """Each flag or-ed over all processes (a collective: every process must call it at the same
    point); the flags themselves with one process."""
    if jax.process_count() == 1:
        return tuple(bool(f) for f in flags)
    from jax.experimental import multihost_utils

    every = np.asarray(multihost_utils.process_allgather(np.array(flags, np.int32)))
    return tuple(bool(v) for v in every.reshape(-1, len(flags)).any(axis=0))


def shard_batch(batch: Batch, mesh: Mesh, *, process_local: bool = False) -> Batch:
    """A batch as arrays split on their leading axis over the 'data' axis.

    Default: batch is the whole global batch (every process holds it; each keeps its own rows).
    process_local: batch holds this process's rows only (process i: rows i*L..(i+1)*L-1 of a
    global batch of L * process_count rows), as ``run.process_local_loaders`` give them.
    """
    sharding = NamedSharding(mesh, PartitionSpec(DATA_AXIS))
    n, i = jax.process_count(), jax.process_index()

    def put(x: np.ndarray) -> jax.Array:
        x = np.asarray(x)
        if process_local:
            shape = (x.shape[0] * n, *x.shape[1:])
            return jax.make_array_from_process_local_data(sharding, x, shape)
        local = x.shape[0] // n
        return jax.make_array_from_process_local_data(
            sharding, x[i * local : (i + 1) * local], x.shape
        )

    return {k: put(v) for k, v in batch.items()}


def jit_steps(mesh: Mesh, state_sharding: Any = None) -> tuple[Callable, Callable]:
    """train_step (state donated) and eval_step jitted for data parallelism over the mesh.

    state_sharding: the TrainState's shardings (a tree like the state, e.g. state_shardings(
    state, mesh, "fsdp")); default: replicated. The state comes out as it went in; metrics
    are replicated.
    """
    repl = NamedSharding(mesh, PartitionSpec())
    data = NamedSharding(mesh, PartitionSpec(DATA_AXIS))
    state = repl if state_sharding is None else state_sharding
    train = jax.jit(
        train_step, in_shardings=(state, data, repl), out_shardings=(state, repl), donate_argnums=0
    )
    evaluate = jax.jit(eval_step, in_shardings=(state, data), out_shardings=repl)
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


def padded_size(n: int, batch_size: int, devices: int) -> int:
    """The examples a batch of n runs as: batch_size, or for a short last batch the next
    multiple of the device count (one more compile instead of padding every epoch)."""
    return min(batch_size, -(-n // devices) * devices)


def device_share(tree: Any) -> dict[Any, float]:
    """Each device's share of tree's bytes (1.0: the whole tree; 1/n: an even split)."""
    total, per = 0, {}
    for x in jax.tree_util.tree_leaves(tree):
        total += x.nbytes
        for s in x.addressable_shards:
            per[s.device] = per.get(s.device, 0) + s.data.nbytes
    return {d: b / total for d, b in per.items()} if total else {}
