"""Training: TrainState, torch-semantics optimizers, train/eval steps, fit, data parallelism.

``train_step(state, batch, rng)`` is pure: the caller jits it with the state donated (``fit``
does). A batch is ``{"image": (B, H, W, C) float32, "label": (B,) int32}`` with an optional
``"mask"`` (B,) of 0/1 weights, so a short last batch can be padded to a fixed shape and still
give the exact mean over its real examples.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from flax.training import train_state
from jax.sharding import Mesh, NamedSharding, PartitionSpec

Batch = dict[str, Any]
Metrics = dict[str, Any]
Schedule = Callable[[Any], Any]

OPTIMIZERS = ("adam", "adamw", "sgd")
NO_WEIGHT_DECAY = frozenset({"pos_embed", "cls_token", "reg_token", "dist_token"})  # timm's set
HEAD_NAMES = ("head", "head_dist")
DATA_AXIS = "data"


class TrainState(train_state.TrainState):
    """flax TrainState (step, params, tx, opt_state) plus the loss's label smoothing."""

    label_smoothing: float = struct.field(pytree_node=False, default=0.0)


# ----------------------------------------------------------------------------- optimizers


def _top_name(path: tuple[Any, ...]) -> str:
    """Name of the top-level module or parameter of a tree path."""
    return str(getattr(path[0], "key", path[0]))


def decay_mask(params: Any) -> Any:
    """True where timm's AdamW decays: not 1-D (biases, norms, scales), not a token or pos_embed."""
    return jax.tree_util.tree_map_with_path(
        lambda path, p: bool(np.ndim(p) > 1 and _top_name(path) not in NO_WEIGHT_DECAY), params
    )


def head_labels(params: Any) -> Any:
    """'train' for the classifier (head, head_dist), 'frozen' for everything else."""
    labels = jax.tree_util.tree_map_with_path(
        lambda path, _: "train" if _top_name(path) in HEAD_NAMES else "frozen", params
    )
    if "train" not in jax.tree_util.tree_leaves(labels):
        raise ValueError("freeze_backbone: the model has no head to train (num_classes=0?)")
    return labels


def make_optimizer(
    name: str,
    learning_rate: float | Schedule,
    *,
    weight_decay: float = 0.0,
    momentum: float = 0.9,
    nesterov: bool = False,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    clip_grad: float | None = None,
    freeze_backbone: bool = False,
) -> optax.GradientTransformation:
    """An optax optimizer with torch.optim semantics (Adam: coupled L2; AdamW: timm's mask)."""
    if name == "adam":  # torch.optim.Adam: weight decay is L2 added to the gradient
        core = [optax.add_decayed_weights(weight_decay)] if weight_decay else []
        core.append(optax.scale_by_adam(*betas, eps=eps))
    elif name == "adamw":  # torch.optim.AdamW on timm's param groups: decoupled, masked
        core = [optax.scale_by_adam(*betas, eps=eps)]
        if weight_decay:
            core.append(optax.add_decayed_weights(weight_decay, mask=decay_mask))
    elif name == "sgd":  # torch.optim.SGD: coupled L2, dampening 0, optional nesterov
        core = [optax.add_decayed_weights(weight_decay)] if weight_decay else []
        if momentum:
            core.append(optax.trace(decay=momentum, nesterov=nesterov))
    else:
        raise ValueError(f"unknown optimizer {name!r}; choose from {OPTIMIZERS}")
    clip = [optax.clip_by_global_norm(clip_grad)] if clip_grad else []
    tx = optax.chain(*clip, *core, optax.scale_by_learning_rate(learning_rate))
    if freeze_backbone:
        tx = optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, head_labels)
    return tx


# ----------------------------------------------------------------------------- steps


def create_train_state(
    model: Any, variables: dict[str, Any], tx: optax.GradientTransformation,
    label_smoothing: float = 0.0,
) -> TrainState:
    """A fresh TrainState at step 0 (params copied, so donating it leaves variables intact)."""
    params = jax.tree_util.tree_map(jnp.array, variables["params"])
    return TrainState.create(
        apply_fn=model.apply, params=params, tx=tx, label_smoothing=label_smoothing
    )


def _mask(batch: Batch) -> jax.Array:
    """Per-example weights: the batch's mask, or ones."""
    if "mask" in batch:
        return batch["mask"].astype(jnp.float32)
    return jnp.ones(batch["label"].shape, jnp.float32)


def loss_and_metrics(
    logits: jax.Array, batch: Batch, label_smoothing: float = 0.0
) -> tuple[jax.Array, Metrics]:
    """Mean cross-entropy (torch's, with label smoothing) and accuracy over unmasked examples."""
    logits = logits.astype(jnp.float32)
    labels, w = batch["label"], _mask(batch)
    targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), label_smoothing)
    count = w.sum()
    denom = jnp.maximum(count, 1.0)
    loss = (optax.softmax_cross_entropy(logits, targets) * w).sum() / denom
    accuracy = ((jnp.argmax(logits, -1) == labels) * w).sum() / denom
    return loss, {"loss": loss, "accuracy": accuracy, "count": count}


def train_step(state: TrainState, batch: Batch, rng: jax.Array) -> tuple[TrainState, Metrics]:
    """One optimizer step; dropout/drop-path draw from fold_in(rng, step)."""
    rng = jax.random.fold_in(rng, state.step)

    def loss_fn(params: Any) -> tuple[jax.Array, Metrics]:
        logits = state.apply_fn(
            {"params": params}, batch["image"], train=True, rngs={"dropout": rng}
        )
        return loss_and_metrics(logits, batch, state.label_smoothing)

    grads, metrics = jax.grad(loss_fn, has_aux=True)(state.params)
    return state.apply_gradients(grads=grads), metrics


def eval_step(state: TrainState, batch: Batch) -> Metrics:
    """Loss and accuracy of the model in eval mode (no dropout)."""
    logits = state.apply_fn({"params": state.params}, batch["image"], train=False)
    return loss_and_metrics(logits, batch, state.label_smoothing)[1]


# ----------------------------------------------------------------------------- data parallelism


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
        kw = {"num_processes": int(env["JAX_NUM_PROCESSES"]),
              "process_id": int(env["JAX_PROCESS_ID"])}
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
        return jax.make_array_from_process_local_data(sharding, x[i * local:(i + 1) * local],
                                                      x.shape)

    return {k: put(v) for k, v in batch.items()}


def jit_steps(mesh: Mesh) -> tuple[Callable, Callable]:
    """train_step (state donated) and eval_step jitted for data parallelism over the mesh."""
    repl = NamedSharding(mesh, PartitionSpec())
    data = NamedSharding(mesh, PartitionSpec(DATA_AXIS))
    train = jax.jit(train_step, in_shardings=(repl, data, repl), out_shardings=(repl, repl),
                    donate_argnums=0)
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
    return {k: np.concatenate([v, np.zeros((size - n, *np.shape(v)[1:]), np.asarray(v).dtype)])
            for k, v in out.items()}


# ----------------------------------------------------------------------------- loops


def _summarise(metrics: list[Metrics]) -> tuple[float, float]:
    """Example-weighted mean loss and accuracy of a list of step metrics."""
    got = jax.device_get(metrics)
    count = sum(float(m["count"]) for m in got)
    if count == 0:
        return math.nan, math.nan
    loss = sum(float(m["loss"]) * float(m["count"]) for m in got) / count
    acc = sum(float(m["accuracy"]) * float(m["count"]) for m in got) / count
    return loss, acc


def _bar(batches: Iterable[Batch], desc: str, progress: bool) -> Iterable[Batch]:
    """batches, wrapped in a tqdm progress bar when progress is on."""
    if not progress:
        return batches
    from tqdm.auto import tqdm

    total = len(batches) if hasattr(batches, "__len__") else None
    return tqdm(batches, desc=desc, total=total, leave=False, dynamic_ncols=True)


def train_epoch(
    state: TrainState, batches: Iterable[Batch], rng: jax.Array, step_fn: Callable,
    mesh: Mesh, batch_size: int, *, desc: str = "train", progress: bool = False,
) -> tuple[TrainState, list[Metrics]]:
    """Run step_fn over one epoch of batches; the per-step metrics (device arrays)."""
    metrics = []
    bar = _bar(batches, desc, progress)
    for batch in bar:
        state, m = step_fn(state, shard_batch(pad_batch(batch, batch_size), mesh), rng)
        metrics.append(m)
        if progress and len(metrics) % 10 == 1:
            bar.set_postfix(loss=f"{float(m['loss']):.4f}")
    return state, metrics


def evaluate(
    state: TrainState, batches: Iterable[Batch], eval_fn: Callable, mesh: Mesh,
    batch_size: int, *, progress: bool = False,
) -> tuple[float, float]:
    """Example-weighted mean loss and accuracy over batches."""
    metrics = [eval_fn(state, shard_batch(pad_batch(b, batch_size), mesh))
               for b in _bar(batches, "val", progress)]
    return _summarise(metrics)


def fit(
    state: TrainState,
    train_data: Callable[[int], Iterable[Batch]],
    val_data: Callable[[int], Iterable[Batch]] | None,
    epochs: int,
    *,
    batch_size: int,
    rng: jax.Array | None = None,
    start_epoch: int = 0,
    lr_schedule: Schedule | None = None,
    mesh: Mesh | None = None,
    on_epoch_end: Callable[[TrainState, dict[str, Any]], None] | None = None,
    progress: bool = False,
) -> tuple[TrainState, list[dict[str, Any]]]:
    """Train epochs start_epoch..epochs-1 (train_data(e) gives epoch e's batches), evaluating each.

    Returns the final state and one record per epoch: epoch (1-based), lr, train_loss,
    train_acc, val_loss, val_acc. Batches are padded to batch_size and split over mesh
    (default: all devices). on_epoch_end(state, record) runs after each epoch (checkpoints, logs).
    """
    mesh = mesh if mesh is not None else make_mesh()
    check_batch_size(batch_size, mesh)
    rng = rng if rng is not None else jax.random.PRNGKey(0)
    step_fn, eval_fn = jit_steps(mesh)
    state = replicate(state, mesh)
    history = []
    for epoch in range(start_epoch, epochs):
        lr = float(lr_schedule(int(state.step))) if lr_schedule is not None else math.nan
        desc = f"epoch {epoch + 1}/{epochs}"
        state, metrics = train_epoch(state, train_data(epoch), rng, step_fn, mesh, batch_size,
                                     desc=desc, progress=progress)
        train_loss, train_acc = _summarise(metrics)
        if not math.isfinite(train_loss):
            raise FloatingPointError(
                f"epoch {epoch + 1}: training loss is {train_loss} (lr {lr:g}); "
                "lower the learning rate or clip gradients"
            )
        val_loss, val_acc = math.nan, math.nan
        if val_data is not None:
            val_loss, val_acc = evaluate(state, val_data(epoch), eval_fn, mesh, batch_size,
                                         progress=progress)
        record = {"epoch": epoch + 1, "lr": lr, "train_loss": train_loss, "train_acc": train_acc,
                  "val_loss": val_loss, "val_acc": val_acc}
        history.append(record)
        if on_epoch_end is not None:
            on_epoch_end(state, record)
    return state, history


def format_record(record: dict[str, Any]) -> str:
    """One human line per epoch: epoch, lr, train loss/acc, val loss/acc."""
    return (f"epoch {record['epoch']:3d}  lr {record['lr']:.3e}  "
            f"train loss {record['train_loss']:.4f} acc {record['train_acc']:.4f}  "
            f"val loss {record['val_loss']:.4f} acc {record['val_acc']:.4f}")
