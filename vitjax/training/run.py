"""A whole training run, as the train CLI runs it: RunConfig and train_and_evaluate.

Run folder (metrics.jsonl, curves.png, orbax checkpoints, model/, the data's fingerprint, a lock
while a run writes it), resume, Ctrl-C and SIGTERM, data, model and optimizer from the config.
"""

from __future__ import annotations

import dataclasses
import numbers
import shutil
import signal
import threading
import types
import typing
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from vitjax.models.vit import VisionTransformer
from vitjax.models.vit_config import ViTConfig
from vitjax.training.loop import fit, format_record
from vitjax.training.sharding import (
    PARAM_SHARDINGS,
    any_process,
    check_batch_size,
    make_mesh,
    maybe_initialize_distributed,
    padded_size,
    state_shardings,
    sync_processes,
    to_host,
)
from vitjax.training.steps import (
    OPTIMIZERS,
    Schedule,
    TrainState,
    create_train_state,
    make_optimizer,
    variables_of,
)
from vitjax.util import to_2tuple

RESUME_OVERRIDES = ("epochs", "workers", "progress", "keep")  # what --resume may change
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
    freeze_batch_stats: bool = False
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
    param_sharding: str = "replicated"
    keep: int = 3
    progress: bool = True
    resume: bool = False
    overwrite: bool = False
    allow_data_change: bool = False

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            check_type(f.name, getattr(self, f.name), hints[f.name])
        for name in ("epochs", "batch_size", "keep", "img_size", "num_classes"):
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
        if self.param_sharding not in PARAM_SHARDINGS:
            raise ValueError(
                f"param_sharding={self.param_sharding!r}: expected one of {PARAM_SHARDINGS}"
            )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of every field."""
        d = dataclasses.asdict(self)
        d["crop_scale"] = list(self.crop_scale)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        """Inverse of to_dict; unknown keys, wrong types and values are errors naming the field."""
        d = {k: v for k, v in d.items() if k != "cpu_devices"}  # a CLI setting in older runs
        unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"unknown RunConfig fields: {unknown}")
        d = dict(d)
        if "crop_scale" in d:
            d["crop_scale"] = tuple(d["crop_scale"])
        return cls(**d)


def _fits(value: Any, hint: Any) -> bool:
    """Whether a JSON-like value fits a field's type hint (bool is not an int; a list fits a
    tuple); hints other than these builtins, unions, dict and tuple are not checked."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if origin in (types.UnionType, typing.Union):
        return any(_fits(value, a) for a in args)
    if hint is type(None):
        return value is None
    if hint in (bool, str):
        return isinstance(value, hint)
    if hint in (int, float):
        kind = numbers.Integral if hint is int else numbers.Real
        return isinstance(value, kind) and not isinstance(value, bool)
    if origin is dict:
        return isinstance(value, dict) and all(isinstance(k, str) for k in value)
    if origin is tuple:
        return (
            isinstance(value, (tuple, list))
            and len(value) == len(args)
            and all(_fits(v, a) for v, a in zip(value, args, strict=True))
        )
    return True


def check_type(name: str, value: Any, hint: Any) -> None:
    """Raise a TypeError naming the field when value does not fit its type hint."""
    if not _fits(value, hint):
        expected = hint.__name__ if isinstance(hint, type) else str(hint).replace("typing.", "")
        raise TypeError(f"field {name!r}: expected {expected}, got {value!r}")


def _log(msg: str, cfg: RunConfig, every_process: bool = False) -> None:
    """Print a line without breaking the progress bars (on several processes: process 0's,
    unless every_process: a line about this process alone, e.g. the signal it received)."""
    if not every_process and jax.distributed.is_initialized() and jax.process_index() != 0:
        return
    if cfg.progress:
        from tqdm.auto import tqdm

        tqdm.write(msg)
    else:
        print(msg, flush=True)


def _given(cfg: RunConfig, given: Iterable[str] | None) -> set[str]:
    """The fields the caller set: given, or (for library callers) those off their defaults."""
    if given is not None:
        return set(given)
    default = RunConfig()
    return {f.name for f in dataclasses.fields(RunConfig) if getattr(cfg, f.name) != getattr(
        default, f.name)}  # fmt: skip


def resumed_config(cfg: RunConfig, given: Iterable[str] | None = None) -> RunConfig:
    """For --resume: the config saved in OUT, changed only where the caller set a resumable field.

    given names the fields the caller set (the CLI: the flags typed); None: those that differ
    from RunConfig's defaults. Not resuming: cfg itself.
    """
    from vitjax.training import checkpoints as ck

    saved_path = Path(cfg.out) / ck.RUN_CONFIG_NAME
    if not cfg.resume or not saved_path.is_file():
        return cfg
    try:
        saved = RunConfig.from_dict(ck.read_json(saved_path))
    except (TypeError, ValueError) as e:  # a field of the file (read_json's name it already)
        raise ValueError(e if str(saved_path) in str(e) else f"{saved_path}: {e}") from None
    changed = _given(cfg, given) & set(RESUME_OVERRIDES)
    keep = {k: getattr(cfg, k) for k in changed}
    return dataclasses.replace(
        saved, **keep, out=cfg.out, resume=True, overwrite=False,
        allow_data_change=cfg.allow_data_change,  # this invocation's, never the saved one
    )  # fmt: skip


def prepare_run_dir(cfg: RunConfig, given: Iterable[str] | None = None) -> RunConfig:
    """The run's config, checked against OUT: read back for --resume, else a new run's.

    Writes and deletes nothing (``commit_run_dir`` does, once everything else has been checked):
    a mistyped flag never costs an old run.
    """
    from vitjax.training import checkpoints as ck

    out = Path(cfg.out)
    saved_path = out / ck.RUN_CONFIG_NAME
    if cfg.resume:
        if not saved_path.is_file():
            raise FileNotFoundError(f"--resume: {saved_path} missing; nothing to resume in {out}")
        resumed = resumed_config(cfg, given)
        check_model_args(resumed, str(saved_path))
        per_call = {"resume", "out", "allow_data_change"}
        for name in sorted(_given(cfg, given) - set(RESUME_OVERRIDES) - per_call):
            if getattr(cfg, name) != getattr(resumed, name):
                warnings.warn(
                    f"--resume keeps the run's {name}={getattr(resumed, name)!r} "
                    f"(ignoring {getattr(cfg, name)!r})",
                    stacklevel=2,
                )
        return resumed
    ckpts = out / ck.CHECKPOINT_DIR
    trained = (ckpts.is_dir() and any(ckpts.iterdir())) or (out / ck.MODEL_DIR).exists()
    if trained and not cfg.overwrite:  # a run that failed before its first epoch is no loss
        raise FileExistsError(
            f"{out} already holds a run: pass --resume to continue it, "
            "--overwrite to replace it, or another --out"
        )
    check_model_args(cfg, "--model-args")
    return dataclasses.replace(cfg, schedule_epochs=cfg.schedule_epochs or cfg.epochs)


def check_model_args(cfg: RunConfig, source: str) -> None:
    """Raise a one-line ValueError naming source and the field when cfg.model_args (and
    --img-size) do not make a valid config of the model: unknown field, wrong type or value."""
    from vitjax.registry import get_config
    from vitjax.weights import files as io

    from_dir = cfg.init is not None and (Path(cfg.init) / io.CONFIG_NAME).is_file()
    kind = ViTConfig if from_dir else type(get_config(cfg.model))  # unknown names: their error
    hints = typing.get_type_hints(kind)
    for key, value in cfg.model_args.items():
        if key not in hints:
            raise ValueError(f"{source}: model_args: {key!r} is not a field of {kind.__name__}")
        try:
            check_type(f"model_args.{key}", value, hints[key])
        except TypeError as e:
            raise ValueError(f"{source}: {e}") from None
    if from_dir:
        return  # the --init folder's config.json decides the rest; it is checked when read
    try:
        get_config_for_run(cfg)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{source}: model_args: {e}") from None
    except ArithmeticError as e:  # e.g. embed_dim % num_heads with num_heads=0
        zeros = [f"model_args.{k}=0" for k, v in cfg.model_args.items() if _fits(v, int) and not v]
        raise ValueError(f"{source}: {', '.join(zeros) or 'model_args'}: invalid ({e})") from None


def commit_run_dir(cfg: RunConfig, fingerprint: dict[str, Any] | None = None) -> None:
    """Start writing OUT: a new run clears what an old one left there; run_config.json (and the
    data's fingerprint, when given) saved."""
    from vitjax.training import checkpoints as ck

    out = Path(cfg.out)
    if not cfg.resume:
        for name in (ck.CHECKPOINT_DIR, ck.MODEL_DIR, ck.CORRUPT_DIR):
            shutil.rmtree(out / name, ignore_errors=True)
        for name in (ck.METRICS_NAME, ck.CURVES_NAME, ck.DATA_NAME):
            (out / name).unlink(missing_ok=True)
    ck.write_json(out / ck.RUN_CONFIG_NAME, cfg.to_dict())
    if fingerprint is not None:
        ck.write_json(out / ck.DATA_NAME, {"data": cfg.data, **fingerprint})


def load_dataset(cfg: RunConfig) -> Any:
    """The whole image folder (unreadable images left out with --skip-bad), or the digits."""
    from vitjax.training import data

    if not cfg.data:
        return data.load_digits_dataset()
    full = data.ImageDataset.from_folder(cfg.data, skip_bad=cfg.skip_bad)
    if full.num_skipped:
        _log(f"skipped {full.num_skipped} unreadable images (--skip-bad)", cfg)
    return full


def split_dataset(cfg: RunConfig, full: Any) -> tuple[Any, Any, tuple[str, ...]]:
    """Seeded (train, val) split of a dataset, and its class names."""
    from vitjax.training import data

    train_idx, val_idx = data.split_indices(len(full), cfg.val_fraction, cfg.seed)
    return full.subset(train_idx), full.subset(val_idx), full.class_names


def load_datasets(cfg: RunConfig) -> tuple[Any, Any, tuple[str, ...]]:
    """Seeded (train, val) split of the image folder, or of the embedded digits."""
    return split_dataset(cfg, load_dataset(cfg))


def check_data(cfg: RunConfig, fingerprint: dict[str, Any]) -> str:
    """--resume: the data's listing against the run's fingerprint; a change is an error saying
    what changed, unless cfg.allow_data_change. Returns a line for the log ('' for none)."""
    from vitjax.training import checkpoints as ck
    from vitjax.training import data

    path = Path(cfg.out) / ck.DATA_NAME
    if not cfg.resume:
        return ""
    if not path.is_file():
        return f"note: no {path} (a run from an older vitjax): recording the data's listing now"
    change = data.describe_change(ck.read_json(path), fingerprint)
    if not change:
        return ""
    where = f"data folder {cfg.data}" if cfg.data else "the embedded digits"
    if not cfg.allow_data_change:
        raise ValueError(
            f"--resume: {where} changed since the run started ({change}); its train/val split "
            "and labels would change: restore the data, or pass --allow-data-change"
        )
    return (
        f"warning: {where} changed since the run started ({change}); resuming on the new "
        "listing (--allow-data-change): the train/val split differs from the earlier epochs'"
    )


def model_overrides(cfg: RunConfig) -> dict[str, Any]:
    """The run's config overrides of the named model: --model-args, then --img-size."""
    return {**cfg.model_args, **({"img_size": cfg.img_size} if cfg.img_size else {})}


def build_model(
    cfg: RunConfig, num_classes: int, *, weights: bool = True, shardings: Any = None
) -> tuple[VisionTransformer, dict[str, Any] | None, dict[str, Any]]:
    """Model, variables and the init checkpoint's pretrained_cfg ({} when there is none).

    weights=False (a resumed run, whose checkpoint has the weights) skips initialising or loading
    them where the model does not depend on them, and returns variables=None. shardings: where
    the variables go (a tree like ``variable_shapes(model)`` of jax.sharding.Sharding, or a
    callable taking that tree of shapes and returning one): each array is read or initialised
    straight into its sharding (factory's ``shardings=``); default: the default device.
    """
    from vitjax.factory import create_model, load_checkpoint
    from vitjax.registry import get_config
    from vitjax.weights import files as io

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
        variables = None
        if weights:
            variables = load_checkpoint(
                model, init, new_head=new_head, seed=cfg.seed, shardings=shardings
            )
        return model, variables, dict(saved.get("pretrained_cfg") or {})
    if init is None and not weights:
        return VisionTransformer(get_config(cfg.model, **overrides), dtype=dtype), None, {}
    model, variables = create_model(
        cfg.model, checkpoint_path=init, seed=cfg.seed, dtype=dtype, shardings=shardings,
        **overrides,
    )  # fmt: skip
    return model, variables, {}


def data_config_for(cfg: RunConfig, model: VisionTransformer, pretrained_cfg: dict[str, Any]):
    """Preprocessing: the init checkpoint's pretrained_cfg, the digits' or timm's ViT defaults."""
    from vitjax.training import transforms

    input_size = (model.cfg.in_chans, *to_2tuple(model.cfg.img_size))
    if pretrained_cfg:
        return transforms.data_config_from_pretrained_cfg(pretrained_cfg, input_size=input_size)
    if cfg.data is None:  # 8x8 digits: upscale the whole image, no crop
        return transforms.DataConfig(
            input_size=input_size,
            interpolation="bilinear",
            mean=DIGITS_MEAN,
            std=DIGITS_STD,
            crop_pct=1.0,
        )
    return transforms.DataConfig(input_size=input_size)


def make_loaders(
    cfg: RunConfig,
    train_ds: Any,
    val_ds: Any,
    data_config: Any,
    *,
    process_local: bool = False,
    devices: int = 1,
):
    """Epoch -> batches functions for training (seeded augmentation) and validation.

    process_local (several processes): each process loads and transforms only its own rows of
    each global batch, padded as one process would pad it over ``devices`` devices
    (make_process_loader); default: every batch whole.
    """
    from vitjax.training import data, transforms

    if cfg.augment:
        hflip = cfg.hflip if cfg.hflip is not None else (0.5 if cfg.data else 0.0)
        train_tf = transforms.TrainTransform(data_config, scale=tuple(cfg.crop_scale), hflip=hflip)
    else:
        train_tf = transforms.EvalTransform(data_config)
    eval_tf = transforms.EvalTransform(data_config)
    if process_local:
        c, h, w = data_config.input_size
        kw = {"devices": devices, "image_shape": (h, w, c), "worker_count": cfg.workers}

        def train_local(epoch: int) -> Any:
            return make_process_loader(
                train_ds, train_tf, cfg.batch_size, shuffle=True, seed=cfg.seed, epoch=epoch, **kw
            )

        def val_local(epoch: int) -> Any:
            return make_process_loader(val_ds, eval_tf, cfg.batch_size, shuffle=False, **kw)

        return train_local, val_local

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


@dataclasses.dataclass(frozen=True)
class _ProcessRows:
    """Picklable grain map: a global batch's source indices -> this process's rows of it,
    padded (zeros, mask 0) exactly as the whole batch would be."""

    load: Any  # data._LoadExample: source index -> {"image", "label"}
    batch_size: int
    devices: int
    image_shape: tuple[int, int, int]
    process_index: int
    process_count: int

    def __call__(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        size = padded_size(len(indices), self.batch_size, self.devices)
        rows = size // self.process_count
        start = self.process_index * rows
        mine = [self.load(int(i)) for i in indices[start : start + rows]]
        out = {
            "image": np.zeros((rows, *self.image_shape), np.float32),
            "label": np.zeros(rows, np.int32),
            "mask": np.zeros(rows, np.float32),
        }
        for k, example in enumerate(mine):
            out["image"][k], out["label"][k], out["mask"][k] = example["image"], example["label"], 1
        return out


def make_process_loader(
    source: Any,
    transform: Any,
    batch_size: int,
    *,
    devices: int,
    image_shape: tuple[int, int, int],
    shuffle: bool,
    seed: int = 0,
    epoch: int = 0,
    worker_count: int = 0,
    process_index: int | None = None,
    process_count: int | None = None,
) -> Any:
    """This process's share of ``data.make_loader``'s epoch: the same global batches (grain's
    seeded shuffle, per-example augmentation from ``example_rng``), each padded to
    ``padded_size`` over ``devices`` devices with a 0/1 mask, of which process i loads and
    transforms only rows i*L..(i+1)*L-1 (L = padded size / process count): what
    ``shard_batch(..., process_local=True)`` takes. The processes' rows, concatenated, are the
    padded global batch. Default process index and count: jax's.
    """
    import functools
    import os

    import grain

    from vitjax.training import data

    i = jax.process_index() if process_index is None else process_index
    n = jax.process_count() if process_count is None else process_count
    if batch_size % devices or devices % n:
        raise ValueError(f"batch size {batch_size} over {devices} devices on {n} processes")
    ds = grain.MapDataset.range(len(source))
    if shuffle:
        ds = ds.shuffle(seed=data.shuffle_seed(seed, epoch))
    load = data._LoadExample(source, transform, seed, epoch)
    ds = ds.batch(batch_size).map(_ProcessRows(load, batch_size, devices, image_shape, i, n))
    it_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=2))
    if worker_count > 0:
        data._mark_absl_flags_parsed()
        options = grain.MultiprocessingOptions(num_workers=worker_count)
        init = functools.partial(data._quiet_worker, parent=os.getpid())
        it_ds = it_ds.mp_prefetch(options, worker_init_fn=init)
    return data.Loader(it_ds, -(-len(source) // batch_size), worker_count)


def make_tx(cfg: RunConfig, steps_per_epoch: int) -> tuple[optax.GradientTransformation, Schedule]:
    """The run's optimizer and its learning-rate schedule (over optimizer steps)."""
    from vitjax.training.schedules import make_schedule

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


def describe_schedule(cfg: RunConfig) -> str:
    """The lr schedule in words for the run's log, e.g. 'cosine (t_max=5, eta_min=0.0001)'."""
    args = ", ".join(f"{k}={v}" for k, v in sorted(cfg.schedule_args.items()))
    unit = "steps" if cfg.per_step_schedule else "epochs"
    return f"{cfg.schedule} ({args or 'defaults'}; counted in {unit})"


def get_config_for_run(cfg: RunConfig) -> ViTConfig:
    """The named model's config with the run's --model-args and --img-size (no --init file)."""
    from vitjax.registry import get_config

    return get_config(cfg.model, **model_overrides(cfg))


def train_and_evaluate(cfg: RunConfig, given: Iterable[str] | None = None) -> list[dict[str, Any]]:
    """A whole run: data, model, fit with per-epoch checkpoints and metrics, final model in OUT.

    With cfg.resume, OUT's saved settings are kept except the resumable fields (epochs, workers,
    progress, keep) the caller set: given names them (the CLI passes the flags typed); None means
    those that differ from RunConfig's defaults. OUT is locked while the run writes it: a second
    run into it fails naming the holder (pid, host, start time).
    """
    from vitjax.training import checkpoints as ck

    maybe_initialize_distributed()
    mesh = make_mesh()
    check_batch_size(cfg.batch_size, mesh)
    lock = ck.RunLock(cfg.out, enabled=jax.process_index() == 0)
    with lock:
        if lock.previous:
            _log(f"note: taking over {lock.path}, left by {lock.describe(lock.previous)}", cfg)
        return _run(cfg, given, mesh)


def _run(cfg: RunConfig, given: Iterable[str] | None, mesh: Any) -> list[dict[str, Any]]:
    """train_and_evaluate once OUT is locked."""
    from vitjax.factory import count_params, save_pretrained, tree_bytes, variable_shapes
    from vitjax.training import checkpoints as ck
    from vitjax.training import data

    main, local = jax.process_index() == 0, jax.process_count() > 1  # local: per-process data
    cfg = prepare_run_dir(cfg, given)
    out = Path(cfg.out)
    if cfg.epochs > (cfg.schedule_epochs or cfg.epochs):
        _log(
            f"note: the lr schedule keeps the run's original horizon of {cfg.schedule_epochs} "
            "epochs (set it with --t-max/--step-size when starting a run)",
            cfg,
        )
    start, history = 0, []
    if cfg.resume:
        start = _latest_epoch(out / ck.CHECKPOINT_DIR, cfg.keep)
        if not start:
            raise FileNotFoundError(
                f"--resume: no checkpoint in {out / ck.CHECKPOINT_DIR} (the run stopped before "
                "its first epoch ended, or the folder was removed); start it again with --overwrite"
            )
        history = ck.read_metrics(out / ck.METRICS_NAME)  # a bad line fails before any write
    full = load_dataset(cfg)
    fingerprint = data.fingerprint(full, cfg.data)
    data_note = check_data(cfg, fingerprint)
    train_ds, val_ds, class_names = split_dataset(cfg, full)

    def shardings(tree: Any) -> Any:  # variables and state: replicated, or fsdp over the mesh
        return state_shardings(tree, mesh, cfg.param_sharding)

    model, variables, pretrained_cfg = build_model(
        cfg, len(class_names), weights=not start, shardings=shardings
    )
    data_config = data_config_for(cfg, model, pretrained_cfg)
    train_data, val_data = make_loaders(
        cfg, train_ds, val_ds, data_config, process_local=local, devices=mesh.devices.size
    )
    tx, schedule = make_tx(cfg, steps_per_epoch=-(-len(train_ds) // cfg.batch_size))
    frozen = cfg.freeze_batch_stats
    if variables is None:  # resumed: only the shapes, the checkpoint has the values
        variables = variable_shapes(model)
        state = jax.eval_shape(
            lambda v: create_train_state(model, v, tx, cfg.label_smoothing, frozen), variables
        )
    else:
        state = create_train_state(
            model, variables, tx, cfg.label_smoothing, frozen, shardings=shardings
        )
    state_sharding = shardings(state)
    ck.check_free_space(out, tree_bytes((state.params, state.opt_state)) * (cfg.keep + 2))
    sync_processes("vitjax: run folder checked")  # by every process, before process 0 writes it
    if main:
        commit_run_dir(cfg, fingerprint)  # everything checked: only now is OUT written
    sync_processes("vitjax: run folder committed")
    if data_note:
        _log(data_note, cfg)
    _log(
        f"{cfg.data or 'digits'}: {len(train_ds)} train / {len(val_ds)} val, "
        f"{len(class_names)} classes; model {count_params(variables):,} params; "
        f"{mesh.devices.size} device(s) {jax.devices()[0].platform}; "
        f"{cfg.optimizer} lr {cfg.lr:g}, schedule {describe_schedule(cfg)}",
        cfg,
    )
    ckpt = ck.Checkpointer(out / ck.CHECKPOINT_DIR, cfg.keep)
    stop = _StopRequest(cfg)
    try:
        if start:
            state, start = _restore(ckpt, state, start, state_sharding, cfg)
            history = [r for r in history if r["epoch"] <= start]
            _log(f"resumed from {out / ck.CHECKPOINT_DIR} after epoch {start}", cfg)

        def on_epoch_end(state: TrainState, record: dict[str, Any]) -> None:
            history.append(record)
            ckpt.save(record["epoch"], state, {"epoch": record["epoch"]})  # every process
            if main:
                ck.write_metrics(out / ck.METRICS_NAME, history)
            _log(format_record(record), cfg)
            if record["epoch"] < cfg.epochs:
                stop.after_epoch(record["epoch"])

        with stop:
            state, _ = fit(
                state,
                stop.guard(train_data),
                stop.guard(val_data),
                cfg.epochs,
                batch_size=cfg.batch_size,
                rng=jax.random.PRNGKey(cfg.seed),
                start_epoch=start,
                lr_schedule=schedule,
                mesh=mesh,
                on_epoch_end=on_epoch_end,
                progress=cfg.progress and main,
                state_sharding=state_sharding,
                process_local=local,
            )
    except (KeyboardInterrupt, FloatingPointError) as e:
        ckpt.wait()  # the pending save completes: the last good epoch stays loadable
        if history and main:
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
    variables = to_host(variables_of(state))  # every process: a gather of what others hold
    if main:  # params and a hybrid's BatchNorm statistics
        save_pretrained(out / ck.MODEL_DIR, model, variables, pretrained_cfg)
        if history:
            ck.plot_curves(history, out / ck.CURVES_NAME)
    sync_processes("vitjax: run written")
    return history


def _latest_epoch(directory: Path, keep: int) -> int | None:
    """The newest complete checkpoint's epoch in directory (None: none, or no directory)."""
    from vitjax.training import checkpoints as ck

    if not directory.is_dir():
        return None
    ckpt = ck.Checkpointer(directory, keep)
    try:
        return ckpt.latest_epoch()
    finally:
        ckpt.close()


def _restore(ckpt: Any, state: Any, start: int, sharding: Any, cfg: RunConfig) -> tuple[Any, int]:
    """(state, epoch) of the newest good checkpoint, in sharding (a tree like the state); newer
    damaged ones are named in the log and moved to OUT/corrupt_checkpoints (out of the way of the
    epochs trained again)."""
    from vitjax.training import checkpoints as ck

    try:
        state, _, epoch, problems = ckpt.restore_newest_good(state, sharding=sharding)
    except ck.CheckpointCorruptError as e:
        msg = f"--resume: {e}; start the run again with --overwrite"
        raise ck.CheckpointCorruptError(msg) from None
    for problem in problems:
        _log(f"warning: {problem}", cfg)
    if epoch != start:
        aside = Path(cfg.out) / ck.CORRUPT_DIR
        for damaged in [e for e in ckpt.epochs() if e > epoch]:
            ckpt.set_aside(damaged, aside)
        _log(
            f"resuming from epoch {epoch}, the newest good checkpoint, instead of epoch {start} "
            f"(the damaged checkpoints are kept in {aside})",
            cfg,
        )
    return state, epoch


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) stopped a run; the message says what was kept and how to resume."""


class TrainingTerminated(TrainingInterrupted):
    """SIGTERM stopped a run (the epoch it interrupted is abandoned); the CLI exits with 143."""


class _StopRequest:
    """While active (main thread only: signals go there): a first Ctrl-C asks the run to stop
    after the epoch, its checkpoint saved; SIGTERM abandons the epoch at its next batch (the last
    checkpoint kept: whoever sends SIGTERM, a scheduler or a shutdown, kills soon after); a
    second signal interrupts at once.

    With several processes, a signal may reach one of them only (Ctrl-C in one terminal, kill
    PID): the processes agree at every epoch's end, all stopping after the same epoch (the one
    signalled alone would leave the others waiting in their next step's collectives for ever).
    SIGTERM then stops after the epoch too: abandoning it at a batch would need an agreement at
    every step, a host round trip that stalls the devices' queue."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, cfg: RunConfig) -> None:
        self.cfg, self.requested, self.terminated = cfg, False, False
        self.processes = jax.process_count()  # read here: the handler calls no jax
        self._old: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested or self.terminated:
            raise TrainingTerminated() if signum == signal.SIGTERM else KeyboardInterrupt()
        every = self.processes > 1  # the terminal signalled may be any process's
        if signum == signal.SIGTERM:
            self.terminated = True  # acted on at the next batch, not inside a save
            if every:
                _log("SIGTERM: every process stops after this epoch", self.cfg, every_process=True)
            return
        self.requested = True
        where = "every process stops" if every else "stopping"
        msg = f"Ctrl-C: {where} after this epoch's checkpoint (Ctrl-C again: stop now)"
        _log(msg, self.cfg, every_process=True)

    def check(self, epoch: int) -> None:
        """Raise TrainingTerminated when SIGTERM came during epoch (1-based); one process only."""
        if self.terminated and self.processes == 1:
            raise TrainingTerminated(f"terminated (SIGTERM) during epoch {epoch}")

    def after_epoch(self, epoch: int) -> None:
        """Raise the stop asked for during epoch (in any process), whose checkpoint is saved."""
        self.requested, self.terminated = any_process(self.requested, self.terminated)
        if self.terminated:
            raise TrainingTerminated(f"terminated (SIGTERM) after epoch {epoch}")
        if self.requested:
            raise TrainingInterrupted(f"interrupted after epoch {epoch}")

    def guard(self, data_fn: Callable[[int], Iterable[Any]]) -> Callable[[int], Iterable[Any]]:
        """data_fn whose batches stop at the first one after SIGTERM, the loader closed."""

        def guarded(epoch: int) -> Iterable[Any]:
            batches = data_fn(epoch)
            gen = self._batches(batches, epoch + 1)
            return _Sized(gen, len(batches)) if hasattr(batches, "__len__") else gen

        return guarded

    def _batches(self, batches: Iterable[Any], epoch: int) -> Iterator[Any]:
        it = iter(batches)
        try:
            while True:
                self.check(epoch)
                try:
                    batch = next(it)
                except StopIteration:
                    return
                except Exception:
                    if self.terminated:  # a worker stopped by the same signal: not the cause
                        msg = f"terminated (SIGTERM) during epoch {epoch}"
                        raise TrainingTerminated(msg) from None
                    raise
                yield batch
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                close()  # worker processes end now, not at exit

    def __enter__(self) -> _StopRequest:
        if threading.current_thread() is threading.main_thread():
            self._old = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old = {}


class _Sized:
    """An iterable with a length (for the progress bar)."""

    def __init__(self, it: Iterable[Any], n: int) -> None:
        self._it, self._n = it, n

    def __len__(self) -> int:
        return self._n

    def __iter__(self) -> Iterator[Any]:
        return iter(self._it)


def _stopped(err: BaseException, last: int | None, out: Path) -> BaseException:
    """err, its message extended with the checkpoint kept (epoch last) and how to continue."""
    kept = (
        f"last good checkpoint: epoch {last} in {out / 'checkpoints'} (continue with --resume)"
        if last
        else "no checkpoint was written yet"
    )
    if isinstance(err, FloatingPointError):
        return FloatingPointError(f"{err}; {kept}")
    if isinstance(err, TrainingTerminated):
        return TrainingTerminated(f"{err or 'terminated (SIGTERM)'}; {kept}")
    return TrainingInterrupted(f"{err or 'interrupted (Ctrl-C)'}; {kept}")


def _pretrained_cfg(data_config: Any) -> dict[str, Any]:
    """timm pretrained_cfg entries of a DataConfig."""
    d = dataclasses.asdict(data_config)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}
