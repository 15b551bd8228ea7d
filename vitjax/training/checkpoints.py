"""Run artefacts: orbax checkpoints of a TrainState, metrics.jsonl, curves.png, run_config.json.

Checkpoints go through orbax's CheckpointManager (atomic: a half-written step is never listed),
one per epoch, keeping the newest few. Metrics files are rewritten through a temporary file and
``os.replace``, so a crash leaves either the old or the new file.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax

from vitjax.util import write_atomic

METRICS_NAME = "metrics.jsonl"
CURVES_NAME = "curves.png"
RUN_CONFIG_NAME = "run_config.json"
CHECKPOINT_DIR = "checkpoints"
MODEL_DIR = "model"
METRIC_KEYS = ("epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc")
TIMING_KEYS = ("seconds", "images_per_s")  # wall-clock figures: differ between identical runs


class Checkpointer:
    """Per-epoch orbax checkpoints of a TrainState's step, params and optimizer state."""

    def __init__(self, directory: str | os.PathLike, max_to_keep: int = 3) -> None:
        import orbax.checkpoint as ocp

        self._ocp = ocp
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
        self.manager = ocp.CheckpointManager(Path(directory).absolute(), options=options)

    @staticmethod
    def _tree(state: Any) -> dict[str, Any]:
        tree = {"step": state.step, "params": state.params, "opt_state": state.opt_state}
        if getattr(state, "batch_stats", None) is not None:
            tree["batch_stats"] = state.batch_stats
        return tree

    def save(self, epoch: int, state: Any, meta: dict[str, Any] | None = None) -> None:
        """Save the state after `epoch` epochs (asynchronously; atomic on completion)."""
        args = self._ocp.args
        self.manager.save(
            epoch,
            args=args.Composite(
                state=args.StandardSave(self._tree(state)), meta=args.JsonSave(meta or {})
            ),
        )

    def latest_epoch(self) -> int | None:
        """The newest complete checkpoint's epoch, or None."""
        return self.manager.latest_step()

    def restore(
        self, state: Any, epoch: int | None = None, sharding: Any = None
    ) -> tuple[Any, dict[str, Any]]:
        """state (arrays or shapes) filled from the checkpoint (default: newest), and its meta.

        sharding (e.g. replicated over a mesh) places the restored arrays; default: as in state.
        """
        epoch = self.latest_epoch() if epoch is None else epoch
        if epoch is None:
            raise FileNotFoundError(f"{self.manager.directory}: no checkpoint to restore")
        args = self._ocp.args

        def abstract(x: Any) -> jax.ShapeDtypeStruct:
            s = sharding if sharding is not None else getattr(x, "sharding", None)
            return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s)

        target = jax.tree_util.tree_map(abstract, self._tree(state))
        got = self.manager.restore(
            epoch, args=args.Composite(state=args.StandardRestore(target), meta=args.JsonRestore())
        )
        return state.replace(**got.state), dict(got.meta or {})

    def wait(self) -> None:
        """Block until pending (asynchronous) saves are complete."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        """Wait for pending saves and release the manager."""
        self.manager.wait_until_finished()
        self.manager.close()


def _json_number(x: Any) -> Any:
    """NaN/inf as None so that the file stays strict JSON."""
    return None if isinstance(x, float) and not math.isfinite(x) else x


def write_metrics(path: str | os.PathLike, records: Sequence[dict[str, Any]]) -> Path:
    """metrics.jsonl: one JSON object per epoch (epoch, lr, train_loss/acc, val_loss/acc)."""
    keys = METRIC_KEYS + TIMING_KEYS
    lines = [json.dumps({k: _json_number(r[k]) for k in keys if k in r}) for r in records]
    write_atomic(Path(path), "".join(line + "\n" for line in lines))
    return Path(path)


def strip_timing(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The records without their wall-clock figures (to compare runs)."""
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in records]


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl ([] if it does not exist)."""
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_json(path: str | os.PathLike, obj: dict[str, Any]) -> Path:
    """obj as indented JSON, atomically."""
    write_atomic(Path(path), json.dumps(obj, indent=2, sort_keys=True) + "\n")
    return Path(path)


def read_json(path: str | os.PathLike) -> dict[str, Any]:
    """A JSON file, with a clear error naming it."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{path}: missing") from e
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e


def plot_curves(records: Sequence[dict[str, Any]], path: str | os.PathLike) -> Path:
    """curves.png: loss and accuracy per epoch, train and val (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in records]

    def series(key: str) -> list[float]:
        return [math.nan if r.get(key) is None else r[key] for r in records]

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, what in zip(axes, ("loss", "acc"), strict=True):
        for split in ("train", "val"):
            ax.plot(epochs, series(f"{split}_{what}"), marker="o", label=split)
        ax.set_xlabel("epoch")
        ax.set_ylabel("accuracy" if what == "acc" else "loss")
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def check_free_space(directory: str | os.PathLike, needed: int) -> None:
    """Raise OSError naming directory when its disk has less than `needed` bytes free."""
    import shutil

    existing = Path(directory).absolute()
    while not existing.exists() and existing != existing.parent:  # OUT is made later
        existing = existing.parent
    free = shutil.disk_usage(existing).free
    if free < needed:
        raise OSError(
            f"{directory}: only {free / 2**20:.1f} MiB free on its disk; the run's checkpoints "
            f"need about {needed / 2**20:.1f} MiB (free space, lower --keep, or another --out)"
        )
