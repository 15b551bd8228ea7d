"""A whole training run, as the train CLI runs it: RunConfig and train_and_evaluate.

Run folder (metrics.jsonl, curves.png, orbax checkpoints, model/), resume, Ctrl-C, data, model
and optimizer from the config.
"""

from __future__ import annotations

import dataclasses
import shutil
import signal
import threading
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec

from vitjax.models.vit import VisionTransformer
from vitjax.models.vit_config import ViTConfig
from vitjax.training.loop import fit, format_record
from vitjax.training.sharding import check_batch_size, make_mesh, maybe_initialize_distributed
from vitjax.training.steps import (
    OPTIMIZERS,
    Schedule,
    TrainState,
    create_train_state,
    make_optimizer,
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
    keep: int = 3
    progress: bool = True
    resume: bool = False
    overwrite: bool = False

    def __post_init__(self) -> None:
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

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of every field."""
        d = dataclasses.asdict(self)
        d["crop_scale"] = list(self.crop_scale)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        """Inverse of to_dict; unknown keys are an error naming them."""
        d = {k: v for k, v in d.items() if k != "cpu_devices"}  # a CLI setting in older runs
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
    saved = RunConfig.from_dict(ck.read_json(saved_path))
    changed = _given(cfg, given) & set(RESUME_OVERRIDES)
    keep = {k: getattr(cfg, k) for k in changed}
    return dataclasses.replace(saved, **keep, out=cfg.out, resume=True, overwrite=False)


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
        for name in sorted(_given(cfg, given) - set(RESUME_OVERRIDES) - {"resume", "out"}):
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
    return dataclasses.replace(cfg, schedule_epochs=cfg.schedule_epochs or cfg.epochs)


def commit_run_dir(cfg: RunConfig) -> None:
    """Start writing OUT: a new run clears what an old one left there; run_config.json saved."""
    from vitjax.training import checkpoints as ck

    out = Path(cfg.out)
    if not cfg.resume:
        for name in (ck.CHECKPOINT_DIR, ck.MODEL_DIR):
            shutil.rmtree(out / name, ignore_errors=True)
        for name in (ck.METRICS_NAME, ck.CURVES_NAME):
            (out / name).unlink(missing_ok=True)
    ck.write_json(out / ck.RUN_CONFIG_NAME, cfg.to_dict())


def load_datasets(cfg: RunConfig) -> tuple[Any, Any, tuple[str, ...]]:
    """Seeded (train, val) split of the image folder, or of the embedded digits."""
    from vitjax.training import data

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


def make_loaders(cfg: RunConfig, train_ds: Any, val_ds: Any, data_config: Any):
    """Epoch -> batches functions for training (seeded augmentation) and validation."""
    from vitjax.training import data, transforms

    if cfg.augment:
        hflip = cfg.hflip if cfg.hflip is not None else (0.5 if cfg.data else 0.0)
        train_tf = transforms.TrainTransform(data_config, scale=tuple(cfg.crop_scale), hflip=hflip)
    else:
        train_tf = transforms.EvalTransform(data_config)
    eval_tf = transforms.EvalTransform(data_config)

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
    those that differ from RunConfig's defaults.
    """
    from vitjax.factory import count_params, param_shapes, save_pretrained
    from vitjax.training import checkpoints as ck

    maybe_initialize_distributed()
    mesh = make_mesh()
    check_batch_size(cfg.batch_size, mesh)
    cfg = prepare_run_dir(cfg, given)
    out = Path(cfg.out)
    if cfg.epochs > (cfg.schedule_epochs or cfg.epochs):
        _log(
            f"note: the lr schedule keeps the run's original horizon of {cfg.schedule_epochs} "
            "epochs (set it with --t-max/--step-size when starting a run)",
            cfg,
        )
    start = 0
    if cfg.resume:
        ckpts = out / ck.CHECKPOINT_DIR
        start = ck.Checkpointer(ckpts, cfg.keep).latest_epoch() if ckpts.is_dir() else None
        if not start:
            raise FileNotFoundError(
                f"--resume: no checkpoint in {out / ck.CHECKPOINT_DIR} (the run stopped before "
                "its first epoch ended, or the folder was removed); start it again with --overwrite"
            )
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
    ck.check_free_space(out, _checkpoint_bytes(state) * (cfg.keep + 2))
    commit_run_dir(cfg)  # everything checked: only now is OUT written (and an old run cleared)
    ckpt = ck.Checkpointer(out / ck.CHECKPOINT_DIR, cfg.keep)
    _log(
        f"{cfg.data or 'digits'}: {len(train_ds)} train / {len(val_ds)} val, "
        f"{len(class_names)} classes; model {count_params(variables):,} params; "
        f"{mesh.devices.size} device(s) {jax.devices()[0].platform}; "
        f"{cfg.optimizer} lr {cfg.lr:g}, schedule {describe_schedule(cfg)}",
        cfg,
    )
    history = []
    if start:
        state, _ = ckpt.restore(state, start, sharding=NamedSharding(mesh, PartitionSpec()))
        history = [r for r in ck.read_metrics(out / ck.METRICS_NAME) if r["epoch"] <= start]
        _log(f"resumed from {out / ck.CHECKPOINT_DIR} after epoch {start}", cfg)

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
