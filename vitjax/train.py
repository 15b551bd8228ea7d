"""Training: TrainState, torch-semantics optimizers, train/eval steps, fit, data parallelism.

``train_step(state, batch, rng)`` is pure: the caller jits it with the state donated (``fit``
does). A batch is ``{"image": (B, H, W, C) float32, "label": (B,) int32}`` with an optional
``"mask"`` (B,) of 0/1 weights, so a short last batch can be padded to a fixed shape and still
give the exact mean over its real examples.
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import signal
import threading
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from flax.training import train_state
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from vitjax.configs import ViTConfig, to_2tuple
from vitjax.vit import VisionTransformer

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
    model: Any,
    variables: dict[str, Any],
    tx: optax.GradientTransformation,
    label_smoothing: float = 0.0,
) -> TrainState:
    """A fresh TrainState at step 0 (params copied, so donating it leaves variables intact)."""
    params = jax.tree_util.tree_map(jnp.array, variables["params"])
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        apply_fn=model.apply,
        params=params,
        tx=tx,
        opt_state=jax.jit(tx.init)(params),
        label_smoothing=label_smoothing,
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
    state: TrainState,
    batches: Iterable[Batch],
    eval_fn: Callable,
    mesh: Mesh,
    batch_size: int,
    *,
    progress: bool = False,
) -> tuple[float, float]:
    """Example-weighted mean loss and accuracy over batches."""
    metrics = [
        eval_fn(state, shard_batch(pad_batch(b, batch_size), mesh))
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
        state, metrics = train_epoch(
            state, train_data(epoch), rng, step_fn, mesh, batch_size, desc=desc, progress=progress
        )
        train_loss, train_acc = _summarise(metrics)
        if not math.isfinite(train_loss):
            raise FloatingPointError(
                f"epoch {epoch + 1}: training loss is {train_loss} (lr {lr:g}); "
                "lower the learning rate or clip gradients"
            )
        val_loss, val_acc = math.nan, math.nan
        if val_data is not None:
            val_loss, val_acc = evaluate(
                state, val_data(epoch), eval_fn, mesh, batch_size, progress=progress
            )
        record = {
            "epoch": epoch + 1,
            "lr": lr,
            "train_loss": train_loss,
            "train_acc": train_acc,
            "val_loss": val_loss,
            "val_acc": val_acc,
        }
        history.append(record)
        if on_epoch_end is not None:
            on_epoch_end(state, record)
    return state, history


def format_record(record: dict[str, Any]) -> str:
    """One human line per epoch: epoch, lr, train loss/acc, val loss/acc."""
    return (
        f"epoch {record['epoch']:3d}  lr {record['lr']:.3e}  "
        f"train loss {record['train_loss']:.4f} acc {record['train_acc']:.4f}  "
        f"val loss {record['val_loss']:.4f} acc {record['val_acc']:.4f}"
    )


# ----------------------------------------------------------------------------- runs (the CLI)

RESUME_OVERRIDES = ("epochs", "workers", "progress", "keep", "resume", "overwrite", "out")
DIGITS_MEAN = DIGITS_STD = (0.5, 0.5, 0.5)


@dataclass
class RunConfig:
    """Every option of a training run: scripts/train.py's flags, with its defaults."""

    out: str = "runs/train"
    data: str | None = None
    model: str = "vit_tutorial_patch16_32"
    model_args: dict[str, Any] = field(default_factory=dict)
    init: str | None = None
    freeze_backbone: bool = False
    num_classes: int | None = None
    img_size: int | None = None
    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3
    optimizer: str = "adamw"
    weight_decay: float | None = None
    momentum: float = 0.9
    nesterov: bool = False
    schedule: str = "cosine"
    schedule_args: dict[str, Any] = field(default_factory=dict)
    per_step_schedule: bool = False
    schedule_epochs: int | None = None
    clip_grad: float | None = None
    label_smoothing: float = 0.0
    augment: bool = True
    hflip: float | None = None
    crop_scale: tuple[float, float] = (0.08, 1.0)
    val_fraction: float = 0.3
    skip_bad: bool = False
    seed: int = 0
    workers: int = 0
    precision: str = "fp32"
    cpu_devices: int | None = None
    keep: int = 3
    progress: bool = True
    resume: bool = False
    overwrite: bool = False

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "keep", "img_size", "num_classes", "cpu_devices"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name}={value} must be >= 1")
        for name in ("lr", "workers", "label_smoothing"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 0")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; choose from {OPTIMIZERS}")
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"precision={self.precision!r}: expected 'fp32' or 'bf16'")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of every field."""
        d = dataclasses.asdict(self)
        d["crop_scale"] = list(self.crop_scale)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        """Inverse of to_dict; unknown keys are an error naming them."""
        unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"unknown RunConfig fields: {unknown}")
        d = dict(d)
        if "crop_scale" in d:
            d["crop_scale"] = tuple(d["crop_scale"])
        return cls(**d)


def _log(msg: str, cfg: RunConfig) -> None:
    """Print a line without breaking the progress bars."""
    if cfg.progress:
        from tqdm.auto import tqdm

        tqdm.write(msg)
    else:
        print(msg, flush=True)


def resumed_config(cfg: RunConfig) -> RunConfig:
    """For --resume: the config saved in OUT, with cfg's RESUME_OVERRIDES; else cfg itself."""
    from vitjax import checkpoint as ck

    saved_path = Path(cfg.out) / ck.RUN_CONFIG_NAME
    if not cfg.resume or not saved_path.is_file():
        return cfg
    saved = RunConfig.from_dict(ck.read_json(saved_path))
    return dataclasses.replace(saved, **{k: getattr(cfg, k) for k in RESUME_OVERRIDES})


def prepare_run_dir(cfg: RunConfig) -> RunConfig:
    """The run's config: saved in OUT for a new run, read back from OUT for --resume."""
    from vitjax import checkpoint as ck

    out = Path(cfg.out)
    saved_path = out / ck.RUN_CONFIG_NAME
    if cfg.resume:
        if not saved_path.is_file():
            raise FileNotFoundError(f"--resume: {saved_path} missing; nothing to resume in {out}")
        resumed, default = resumed_config(cfg), RunConfig()
        for f in dataclasses.fields(RunConfig):
            given, kept = getattr(cfg, f.name), getattr(resumed, f.name)
            if given != kept and given != getattr(default, f.name):
                warnings.warn(
                    f"--resume keeps the run's {f.name}={kept!r} (ignoring {given!r})", stacklevel=2
                )
        cfg = resumed
    else:
        ckpts = out / ck.CHECKPOINT_DIR
        trained = (ckpts.is_dir() and any(ckpts.iterdir())) or (out / ck.MODEL_DIR).exists()
        if trained and not cfg.overwrite:  # a run that failed before its first epoch is no loss
            raise FileExistsError(
                f"{out} already holds a run: pass --resume to continue it, "
                "--overwrite to replace it, or another --out"
            )
        for name in (ck.CHECKPOINT_DIR, ck.MODEL_DIR):
            shutil.rmtree(out / name, ignore_errors=True)
        for name in (ck.METRICS_NAME, ck.CURVES_NAME):
            (out / name).unlink(missing_ok=True)
        cfg = dataclasses.replace(cfg, schedule_epochs=cfg.schedule_epochs or cfg.epochs)
    ck.write_json(saved_path, cfg.to_dict())
    return cfg


def load_datasets(cfg: RunConfig) -> tuple[Any, Any, tuple[str, ...]]:
    """Seeded (train, val) split of the image folder, or of the embedded digits."""
    from vitjax import data

    if cfg.data:
        full = data.ImageDataset.from_folder(cfg.data, skip_bad=cfg.skip_bad)
        if full.num_skipped:
            _log(f"skipped {full.num_skipped} unreadable images (--skip-bad)", cfg)
    else:
        full = data.load_digits_dataset()
    train_idx, val_idx = data.split_indices(len(full), cfg.val_fraction, cfg.seed)
    return full.subset(train_idx), full.subset(val_idx), full.class_names


def model_overrides(cfg: RunConfig) -> dict[str, Any]:
    """The run's config overrides of the named model: --model-args, then --img-size."""
    return {**cfg.model_args, **({"img_size": cfg.img_size} if cfg.img_size else {})}


def build_model(
    cfg: RunConfig, num_classes: int, *, weights: bool = True
) -> tuple[VisionTransformer, dict[str, Any] | None, dict[str, Any]]:
    """Model, variables and the init checkpoint's pretrained_cfg ({} when there is none).

    weights=False (a resumed run, whose checkpoint has the weights) skips initialising or loading
    them where the model does not depend on them, and returns variables=None.
    """
    from vitjax import io
    from vitjax.configs import get_config
    from vitjax.models import create_model, load_checkpoint

    if cfg.num_classes is not None and cfg.num_classes != num_classes:
        raise ValueError(f"--num-classes {cfg.num_classes} but the data has {num_classes} classes")
    dtype = {"fp32": jnp.float32, "bf16": jnp.bfloat16}[cfg.precision]
    overrides = {**model_overrides(cfg), "num_classes": num_classes}
    init = Path(cfg.init) if cfg.init else None
    if init is not None and (init / io.CONFIG_NAME).is_file():
        saved = io.read_config(init)
        vcfg = ViTConfig.from_dict({**saved["model_config"], **overrides})
        model = VisionTransformer(vcfg, dtype=dtype)
        old_classes = saved["model_config"].get("num_classes")
        new_head = old_classes != num_classes
        if new_head and weights:
            _log(f"--init {init}: fresh {num_classes}-class head (it had {old_classes})", cfg)
        variables = (
            load_checkpoint(model, init, new_head=new_head, seed=cfg.seed) if weights else None
        )
        return model, variables, dict(saved.get("pretrained_cfg") or {})
    if init is None and not weights:
        return VisionTransformer(get_config(cfg.model, **overrides), dtype=dtype), None, {}
    model, variables = create_model(
        cfg.model, checkpoint_path=init, seed=cfg.seed, dtype=dtype, **overrides
    )
    return model, variables, {}


def data_config_for(cfg: RunConfig, model: VisionTransformer, pretrained_cfg: dict[str, Any]):
    """Preprocessing: the init checkpoint's pretrained_cfg, the digits' or timm's ViT defaults."""
    from vitjax import data

    input_size = (model.cfg.in_chans, *to_2tuple(model.cfg.img_size))
    if pretrained_cfg:
        return data.data_config_from_pretrained_cfg(pretrained_cfg, input_size=input_size)
    if cfg.data is None:  # 8x8 digits: upscale the whole image, no crop
        return data.DataConfig(
            input_size=input_size,
            interpolation="bilinear",
            mean=DIGITS_MEAN,
            std=DIGITS_STD,
            crop_pct=1.0,
        )
    return data.DataConfig(input_size=input_size)


def make_loaders(cfg: RunConfig, train_ds: Any, val_ds: Any, data_config: Any):
    """Epoch -> batches functions for training (seeded augmentation) and validation."""
    from vitjax import data

    if cfg.augment:
        hflip = cfg.hflip if cfg.hflip is not None else (0.5 if cfg.data else 0.0)
        train_tf = data.TrainTransform(data_config, scale=tuple(cfg.crop_scale), hflip=hflip)
    else:
        train_tf = data.EvalTransform(data_config)
    eval_tf = data.EvalTransform(data_config)

    def train_data(epoch: int) -> Any:
        return data.make_loader(
            train_ds,
            train_tf,
            cfg.batch_size,
            shuffle=True,
            seed=cfg.seed,
            epoch=epoch,
            worker_count=cfg.workers,
        )

    def val_data(epoch: int) -> Any:
        return data.make_loader(
            val_ds, eval_tf, cfg.batch_size, shuffle=False, worker_count=cfg.workers
        )

    return train_data, val_data


def make_tx(cfg: RunConfig, steps_per_epoch: int) -> tuple[optax.GradientTransformation, Schedule]:
    """The run's optimizer and its learning-rate schedule (over optimizer steps)."""
    from vitjax.schedules import make_schedule

    schedule = make_schedule(
        cfg.schedule,
        cfg.lr,
        epochs=cfg.schedule_epochs or cfg.epochs,
        steps_per_epoch=steps_per_epoch,
        per_epoch=not cfg.per_step_schedule,
        **cfg.schedule_args,
    )
    wd = cfg.weight_decay
    if wd is None:
        wd = 0.01 if cfg.optimizer == "adamw" else 0.0  # torch.optim's defaults
    tx = make_optimizer(
        cfg.optimizer,
        schedule,
        weight_decay=wd,
        momentum=cfg.momentum,
        nesterov=cfg.nesterov,
        clip_grad=cfg.clip_grad,
        freeze_backbone=cfg.freeze_backbone,
    )
    return tx, schedule


def get_config_for_run(cfg: RunConfig) -> ViTConfig:
    """The named model's config with the run's --model-args and --img-size (no --init file)."""
    from vitjax.configs import get_config

    return get_config(cfg.model, **model_overrides(cfg))


def _tune_cpu_runtime(cfg: RunConfig) -> None:
    """Before JAX starts its backend: vitjax.runtime's settings for big steps on the CPU.

    keep_freed_memory() for steps too big for glibc's heaps (if memory allows), and one CPU device
    per core (data parallel) when each gets enough of the batch; ``cfg.cpu_devices`` fixes that.
    """
    from vitjax import runtime

    try:
        mcfg = get_config_for_run(cfg)
    except (KeyError, ValueError, TypeError):  # not a known name: build_model reports it
        return
    step_bytes = runtime.step_activation_bytes(mcfg, cfg.batch_size)
    if runtime.keep_freed_memory_for(step_bytes) == "memory":
        _log(
            f"note: glibc's defaults kept (a step's ~{step_bytes / 2**30:.1f} GiB of temporaries "
            "would be faulted in each step): keeping freed memory could outgrow the available "
            "memory; see vitjax.runtime",
            cfg,
        )
    n = cfg.cpu_devices or runtime.cpu_devices_for(mcfg, cfg.batch_size)
    if not runtime.split_cpu_into_devices(n) and cfg.cpu_devices and n > 1:
        _log(
            f"note: cpu_devices={n} not applied: JAX's backend had already started, or "
            "XLA_FLAGS / JAX_NUM_CPU_DEVICES set the CPU device count",
            cfg,
        )


def train_and_evaluate(cfg: RunConfig) -> list[dict[str, Any]]:
    """A whole run: data, model, fit with per-epoch checkpoints and metrics, final model in OUT."""
    from vitjax import checkpoint as ck
    from vitjax.models import count_params, param_shapes, save_pretrained

    _tune_cpu_runtime(resumed_config(cfg))  # before JAX starts its backend; the run's own model
    maybe_initialize_distributed()
    mesh = make_mesh()
    check_batch_size(cfg.batch_size, mesh)
    cfg = prepare_run_dir(cfg)
    out = Path(cfg.out)
    if cfg.epochs > (cfg.schedule_epochs or cfg.epochs):
        _log(
            f"note: the lr schedule keeps the run's original horizon of {cfg.schedule_epochs} "
            "epochs (set it with --t-max/--step-size when starting a run)",
            cfg,
        )
    ckpt = ck.Checkpointer(out / ck.CHECKPOINT_DIR, cfg.keep)
    start = (ckpt.latest_epoch() or 0) if cfg.resume else 0
    train_ds, val_ds, class_names = load_datasets(cfg)
    model, variables, pretrained_cfg = build_model(cfg, len(class_names), weights=not start)
    data_config = data_config_for(cfg, model, pretrained_cfg)
    train_data, val_data = make_loaders(cfg, train_ds, val_ds, data_config)
    tx, schedule = make_tx(cfg, steps_per_epoch=-(-len(train_ds) // cfg.batch_size))
    if variables is None:  # resumed: only the shapes, the checkpoint has the values
        variables = {"params": param_shapes(model)}
        state = jax.eval_shape(
            lambda v: create_train_state(model, v, tx, cfg.label_smoothing), variables
        )
    else:
        state = create_train_state(model, variables, tx, cfg.label_smoothing)
    _log(
        f"{cfg.data or 'digits'}: {len(train_ds)} train / {len(val_ds)} val, "
        f"{len(class_names)} classes; model {count_params(variables):,} params; "
        f"{mesh.devices.size} device(s) {jax.devices()[0].platform}",
        cfg,
    )
    history = []
    if start:
        state, _ = ckpt.restore(state, start, sharding=NamedSharding(mesh, PartitionSpec()))
        history = [r for r in ck.read_metrics(out / ck.METRICS_NAME) if r["epoch"] <= start]
        _log(f"resumed from {out / ck.CHECKPOINT_DIR} after epoch {start}", cfg)

    ck.check_free_space(out, _checkpoint_bytes(state) * (cfg.keep + 2))
    stop = _StopRequest(cfg)

    def on_epoch_end(state: TrainState, record: dict[str, Any]) -> None:
        history.append(record)
        ckpt.save(record["epoch"], state, {"epoch": record["epoch"]})
        ck.write_metrics(out / ck.METRICS_NAME, history)
        _log(format_record(record), cfg)
        if stop.requested and record["epoch"] < cfg.epochs:
            raise TrainingInterrupted(f"interrupted after epoch {record['epoch']}")

    try:
        with stop:
            state, _ = fit(
                state,
                train_data,
                val_data,
                cfg.epochs,
                batch_size=cfg.batch_size,
                rng=jax.random.PRNGKey(cfg.seed),
                start_epoch=start,
                lr_schedule=schedule,
                mesh=mesh,
                on_epoch_end=on_epoch_end,
                progress=cfg.progress,
            )
    except (KeyboardInterrupt, FloatingPointError) as e:
        ckpt.wait()  # the pending save completes: the last good epoch stays loadable
        if history:
            ck.plot_curves(history, out / ck.CURVES_NAME)
        raise _stopped(e, ckpt.latest_epoch(), out) from None
    finally:
        ckpt.close()
    pretrained_cfg = {
        **pretrained_cfg,
        **_pretrained_cfg(data_config),
        "num_classes": len(class_names),
        "label_names": list(class_names),
    }
    params = jax.device_get(state.params)
    save_pretrained(out / ck.MODEL_DIR, model, {"params": params}, pretrained_cfg)
    if history:
        ck.plot_curves(history, out / ck.CURVES_NAME)
    return history


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) stopped a run; the message says what was kept and how to resume."""


class _StopRequest:
    """While active, a first SIGINT asks the run to stop after the epoch (its checkpoint saved);
    a second one interrupts at once. Only in the main thread (signals go there)."""

    def __init__(self, cfg: RunConfig) -> None:
        self.cfg, self.requested, self._old = cfg, False, None

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        _log("Ctrl-C: stopping after this epoch's checkpoint (Ctrl-C again: stop now)", self.cfg)

    def __enter__(self) -> _StopRequest:
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)


def _checkpoint_bytes(state: Any) -> int:
    """Bytes of a TrainState's params and optimizer state (what one checkpoint holds)."""
    leaves = jax.tree_util.tree_leaves((state.params, state.opt_state))
    return sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize for x in leaves)


def _stopped(err: BaseException, last: int | None, out: Path) -> BaseException:
    """err, its message extended with the checkpoint kept (epoch last) and how to continue."""
    kept = (
        f"last good checkpoint: epoch {last} in {out / 'checkpoints'} (continue with --resume)"
        if last
        else "no checkpoint was written yet"
    )
    reason = str(err) or "interrupted (Ctrl-C)"
    if isinstance(err, FloatingPointError):
        return FloatingPointError(f"{reason}; {kept}")
    return TrainingInterrupted(f"{reason}; {kept}")


def _pretrained_cfg(data_config: Any) -> dict[str, Any]:
    """timm pretrained_cfg entries of a DataConfig."""
    d = dataclasses.asdict(data_config)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}
