"""Training loops: one epoch, evaluation, and fit (epochs with per-epoch records)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from typing import Any

import jax
from jax.sharding import Mesh

from vitjax.training.sharding import (
    check_batch_size,
    jit_steps,
    make_mesh,
    pad_batch,
    padded_size,
    place,
    shard_batch,
    state_shardings,
)
from vitjax.training.steps import Batch, Metrics, Schedule, TrainState


def _pad(batch: Batch, batch_size: int, mesh: Mesh) -> Batch:
    """A batch padded (and masked) to batch_size; a short last batch only to the device count.

    Like torch's DataLoader, a short last batch runs at (about) its own size: one more compile
    of the step, instead of computing the padding every epoch (a small folder's only batch).
    """
    return pad_batch(batch, padded_size(len(batch["label"]), batch_size, mesh.devices.size))


def _device_batch(batch: Batch, batch_size: int, mesh: Mesh, process_local: bool) -> Batch:
    """A host batch as a global array batch: padded and split (global), or as it is (local:
    this process's rows of an already padded global batch)."""
    if process_local:
        return shard_batch(batch, mesh, process_local=True)
    return shard_batch(_pad(batch, batch_size, mesh), mesh)


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
    return tqdm(batches, desc=desc, total=total, leave=False, dynamic_ncols=True, disable=None)


def train_epoch(
    state: TrainState,
    batches: Iterable[Batch],
    rng: jax.Array,
    step_fn: Callable,
    mesh: Mesh,
    batch_size: int,
    *,
    desc: str = "train",
    progress: bool = False,
    process_local: bool = False,
) -> tuple[TrainState, list[Metrics]]:
    """Run step_fn over one epoch of batches; the per-step metrics (device arrays).

    process_local: each batch is this process's rows of the padded global batch (several
    processes, each loading its own share); default: the whole global batch, unpadded.
    """
    metrics = []
    bar = _bar(batches, desc, progress)
    for batch in bar:
        state, m = step_fn(state, _device_batch(batch, batch_size, mesh, process_local), rng)
        metrics.append(m)
        if progress and len(metrics) % 10 == 1:
            bar.set_postfix(loss=f"{float(m['loss']):.4f}")
    return state, metrics


def evaluate(
    state: TrainState,
    batches: Iterable[Batch],
    eval_fn: Callable,
    mesh: Mesh,
    batch_size: int,
    *,
    progress: bool = False,
    process_local: bool = False,
) -> tuple[float, float]:
    """Example-weighted mean loss and accuracy over batches (process_local: as train_epoch)."""
    metrics = [
        eval_fn(state, _device_batch(b, batch_size, mesh, process_local))
        for b in _bar(batches, "val", progress)
    ]
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
    state_sharding: Any = None,
    process_local: bool = False,
) -> tuple[TrainState, list[dict[str, Any]]]:
    """Train epochs start_epoch..epochs-1 (train_data(e) gives epoch e's batches), evaluating each.

    Returns the final state and one record per epoch: epoch (1-based), lr, train_loss,
    train_acc, val_loss, val_acc, seconds (the epoch's wall time, training and validation) and
    images_per_s (training examples per second of training). Batches are padded to batch_size
    and split over mesh (default: all devices). on_epoch_end(state, record) runs after each
    epoch (checkpoints, logs). state_sharding: where the state lives during training (a tree
    like the state, e.g. ``state_shardings(state, mesh, "fsdp")``); default: replicated.
    process_local: the batches are each process's own rows (train_epoch).
    """
    mesh = mesh if mesh is not None else make_mesh()
    check_batch_size(batch_size, mesh)
    rng = rng if rng is not None else jax.random.PRNGKey(0)
    if state_sharding is None:
        state_sharding = state_shardings(state, mesh)
    step_fn, eval_fn = jit_steps(mesh, state_sharding)
    state = place(state, state_sharding)
    history = []
    for epoch in range(start_epoch, epochs):
        lr = float(lr_schedule(int(state.step))) if lr_schedule is not None else math.nan
        desc = f"epoch {epoch + 1}/{epochs}"
        start = time.perf_counter()
        state, metrics = train_epoch(
            state, train_data(epoch), rng, step_fn, mesh, batch_size, desc=desc,
            progress=progress, process_local=process_local,
        )  # fmt: skip
        train_loss, train_acc = _summarise(metrics)  # waits for the epoch's last step
        train_seconds = time.perf_counter() - start
        images = sum(float(m["count"]) for m in jax.device_get(metrics))
        if not math.isfinite(train_loss):
            raise FloatingPointError(
                f"epoch {epoch + 1}: training loss is {train_loss} (lr {lr:g}); "
                "lower the learning rate or clip gradients"
            )
        val_loss, val_acc = math.nan, math.nan
        if val_data is not None:
            val_loss, val_acc = evaluate(
                state, val_data(epoch), eval_fn, mesh, batch_size, progress=progress,
                process_local=process_local,
            )  # fmt: skip
        record = {
            "epoch": epoch + 1,
            "lr": lr,
            "train_loss": train_loss,
            "train_acc": train_acc,
            "val_loss": val_loss,
            "val_acc": val_acc,
            "seconds": time.perf_counter() - start,
            "images_per_s": images / train_seconds if train_seconds > 0 else math.nan,
        }
        history.append(record)
        if on_epoch_end is not None:
            on_epoch_end(state, record)
    return state, history


def format_record(record: dict[str, Any]) -> str:
    """One human line per epoch: epoch, lr, train loss/acc, val loss/acc, time, images/s."""
    line = (
        f"epoch {record['epoch']:3d}  lr {record['lr']:.3e}  "
        f"train loss {record['train_loss']:.4f} acc {record['train_acc']:.4f}  "
        f"val loss {record['val_loss']:.4f} acc {record['val_acc']:.4f}"
    )
    if "seconds" in record:
        line += f"  {record['seconds']:.1f} s  {record['images_per_s']:.1f} img/s"
    return line
