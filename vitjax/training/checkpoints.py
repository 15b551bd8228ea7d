"""Run artefacts: orbax checkpoints of a TrainState, metrics.jsonl, curves.png, run_config.json,
the run folder's lock.

Checkpoints go through orbax's CheckpointManager (atomic: a half-written step is never listed),
one per epoch, keeping the newest few; each holds the sha256 of every array it saved, checked on
restore, and once complete a list of its files' digests, which names a damaged file. Metrics
files are rewritten through a temporary file and ``os.replace``, so a crash leaves either the
old or the new file.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import math
import os
import shutil
import socket
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from vitjax.util import write_atomic

try:  # POSIX; elsewhere runs take no lock
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

METRICS_NAME = "metrics.jsonl"
CURVES_NAME = "curves.png"
RUN_CONFIG_NAME = "run_config.json"
DATA_NAME = "data_fingerprint.json"
LOCK_NAME = "run.lock"
CHECKPOINT_DIR = "checkpoints"
CORRUPT_DIR = "corrupt_checkpoints"
MODEL_DIR = "model"
FILES_NAME = "vitjax_files.json"  # in a finished checkpoint: its files' sizes and sha256
# orbax's bookkeeping, which restore does not need and orbax may rewrite: not in FILES_NAME
UNSEALED_FILES = (FILES_NAME, f".{FILES_NAME}.tmp", "_CHECKPOINT_METADATA", "commit_success.txt")
METRIC_KEYS = ("epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc")
TIMING_KEYS = ("seconds", "images_per_s")  # wall-clock figures: differ between identical runs


class CheckpointCorruptError(ValueError):
    """A checkpoint that cannot be read, or whose arrays differ from the checksums saved."""


class RunLockedError(OSError):
    """Another live process holds the run folder's lock."""


def array_checksums(tree: Any) -> dict[str, str]:
    """sha256 of each array of a pytree (dtype, shape and bytes), keyed by its tree path.

    The whole array's, however it is sharded: an array spread over several processes is
    gathered one at a time (a collective: every process calls this on the same tree), so a
    checkpoint written by N processes checks out when read by one, and the other way round.
    """
    from vitjax.training.sharding import host_array

    sums = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        a = np.ascontiguousarray(host_array(leaf))
        h = hashlib.sha256(f"{a.dtype.str}{a.shape}".encode())
        h.update(memoryview(a.reshape(-1).view(np.uint8)))
        sums[jax.tree_util.keystr(path, simple=True, separator="/")] = h.hexdigest()
    return sums


def _file_digest(path: Path) -> tuple[int, str, bool]:
    """(size, sha256, all bytes zero) of a file."""
    h, size, zero = hashlib.sha256(), 0, True
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
            zero = zero and not chunk.strip(b"\0")
    return size, h.hexdigest(), zero


class Checkpointer:
    """Per-epoch orbax checkpoints of a TrainState's step, params and optimizer state."""

    def __init__(self, directory: str | os.PathLike, max_to_keep: int = 3) -> None:
        import orbax.checkpoint as ocp

        self._ocp = ocp
        self.directory = Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
        self.manager = ocp.CheckpointManager(self.directory, options=options)
        self._unsealed: int | None = None  # a save whose file list is not written yet

    @staticmethod
    def _tree(state: Any) -> dict[str, Any]:
        tree = {"step": state.step, "params": state.params, "opt_state": state.opt_state}
        if getattr(state, "batch_stats", None) is not None:
            tree["batch_stats"] = state.batch_stats
        return tree

    def step_dir(self, epoch: int) -> Path:
        """The folder of epoch's checkpoint."""
        return self.directory / str(epoch)

    def save(self, epoch: int, state: Any, meta: dict[str, Any] | None = None) -> None:
        """Save the state after `epoch` epochs (asynchronously; atomic on completion)."""
        args = self._ocp.args
        tree = self._tree(state)
        self.wait()  # orbax waits for the previous save anyway; its files are final now
        self.manager.save(
            epoch,
            args=args.Composite(
                state=args.StandardSave(tree),
                meta=args.JsonSave(meta or {}),
                checksums=args.JsonSave(array_checksums(tree)),
            ),
        )
        self._unsealed = epoch

    def _seal(self) -> None:
        """Record the files of the last save, complete now (what names a damaged file later).

        Before the next save starts: only that one's completion deletes old checkpoints.
        """
        epoch, self._unsealed = self._unsealed, None
        if epoch is None or jax.process_index() != 0:
            return
        step = self.step_dir(epoch)
        try:
            files = {}
            for p in sorted(step.rglob("*")):
                if p.is_file() and p.name not in UNSEALED_FILES:
                    size, sha, _ = _file_digest(p)
                    files[str(p.relative_to(step))] = {"size": size, "sha256": sha}
            tmp = step / f".{FILES_NAME}.tmp"
            tmp.write_text(json.dumps(files, indent=1, sort_keys=True) + "\n")  # no mkdir
            os.replace(tmp, step / FILES_NAME)
        except OSError:  # gone (deleted meanwhile) or read-only: the array checksums remain
            pass

    def latest_epoch(self) -> int | None:
        """The newest complete checkpoint's epoch, or None."""
        return self.manager.latest_step()

    def epochs(self) -> list[int]:
        """The epochs of all complete checkpoints, oldest first."""
        return sorted(self.manager.all_steps())

    def restore(
        self, state: Any, epoch: int | None = None, sharding: Any = None
    ) -> tuple[Any, dict[str, Any]]:
        """state (arrays or shapes) filled from the checkpoint of epoch, and its meta.

        Default: the newest checkpoint whose arrays match their checksums (a warning names each
        newer one skipped). An explicit epoch that is damaged raises CheckpointCorruptError.
        sharding places the restored arrays: one Sharding (e.g. replicated over a mesh) or a
        tree like state (e.g. fsdp); each process reads only its shards. Default: as in state.
        """
        if epoch is not None:
            return self._restore_checked(state, epoch, sharding)
        state, meta, _, problems = self.restore_newest_good(state, sharding)
        for problem in problems:
            warnings.warn(f"{problem}; using an older checkpoint", stacklevel=2)
        return state, meta

    def restore_newest_good(
        self, state: Any, sharding: Any = None
    ) -> tuple[Any, dict[str, Any], int, list[str]]:
        """(state, meta, epoch) of the newest good checkpoint and why each newer one was skipped.

        Raises CheckpointCorruptError (one line naming every checkpoint and damaged file) when
        none is good, FileNotFoundError when there is none.
        """
        problems = []
        for epoch in reversed(self.epochs()):
            try:
                restored, meta = self._restore_checked(state, epoch, sharding)
            except CheckpointCorruptError as e:
                problems.append(str(e))
                continue
            return restored, meta, epoch, problems
        if not problems:
            raise FileNotFoundError(f"{self.directory}: no checkpoint to restore")
        raise CheckpointCorruptError(f"no good checkpoint left: {'; '.join(problems)}")

    def _restore_checked(self, state: Any, epoch: int, sharding: Any) -> tuple[Any, dict]:
        """state filled from epoch's checkpoint, its arrays checked against their checksums."""
        args = self._ocp.args

        def abstract(x: Any, s: Any = None) -> jax.ShapeDtypeStruct:
            s = s if s is not None else getattr(x, "sharding", None)
            return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s)

        tree = self._tree(state)
        if sharding is None or isinstance(sharding, jax.sharding.Sharding):
            target = jax.tree_util.tree_map(lambda x: abstract(x, sharding), tree)
        else:  # a tree of shardings like state
            target = jax.tree_util.tree_map(abstract, tree, self._tree(sharding))
        step = self.step_dir(epoch)
        damaged = _damaged_files(step)  # before orbax: it prints tracebacks on damaged files
        if damaged:
            raise CheckpointCorruptError(f"checkpoint {step}: damaged: {', '.join(damaged)}")
        items = {"state": args.StandardRestore(target), "meta": args.JsonRestore()}
        checked = (step / "checksums").is_dir()  # older checkpoints have none
        if checked:
            items["checksums"] = args.JsonRestore()
        try:
            with _quiet_unraisable():
                got = self.manager.restore(epoch, args=args.Composite(**items))
        except Exception as e:  # orbax / TensorStore / JSON errors of a damaged checkpoint
            raise CheckpointCorruptError(f"checkpoint {step}: cannot be read ({_brief(e)})") from e
        if checked:
            saved, now = dict(got.checksums or {}), array_checksums(got.state)
            bad = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
            if bad:
                more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
                raise CheckpointCorruptError(
                    f"checkpoint {step}: checksum mismatch in {', '.join(bad[:3])}{more}"
                )
        return state.replace(**got.state), dict(got.meta or {})

    def set_aside(self, epoch: int, folder: str | os.PathLike) -> Path:
        """Move epoch's checkpoint into folder (kept for inspection, out of the listing).

        On several processes every one calls it; process 0 moves the folder."""
        from vitjax.training.sharding import sync_processes

        dest = Path(folder) / str(epoch)
        n = 1
        while dest.exists():
            n += 1
            dest = Path(folder) / f"{epoch}.{n}"
        if jax.process_index() == 0:
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(self.step_dir(epoch)), dest)
        sync_processes(f"vitjax: checkpoint {epoch} set aside")
        self.manager.reload()
        return dest

    def wait(self) -> None:
        """Block until pending (asynchronous) saves are complete (and their files listed)."""
        self.manager.wait_until_finished()
        self._seal()

    def close(self) -> None:
        """Wait for pending saves and release the manager."""
        self.wait()
        self.manager.close()


@contextlib.contextmanager
def _quiet_unraisable() -> Iterator[None]:
    """Drop the 'Exception ignored in <coroutine>' reports of orbax's failed reads."""
    old = sys.unraisablehook
    sys.unraisablehook = lambda unraisable: None
    try:
        yield
    finally:
        gc.collect()  # the failed reads' coroutines are reported as they are collected
        sys.unraisablehook = old


def _brief(err: BaseException) -> str:
    """An error's first line, shortened (TensorStore's run to kilobytes)."""
    text = (str(err).strip().splitlines() or [type(err).__name__])[0]
    text = text.split(". See full TensorStore details", 1)[0]
    return text if len(text) <= 160 else text[:157] + "..."


def _damaged_files(step: Path) -> list[str]:
    """The files of a checkpoint that differ from its file list (none when it has no list)."""
    try:
        files = json.loads((step / FILES_NAME).read_text())
    except (OSError, ValueError):
        return []
    damaged = []
    for rel, want in sorted(files.items() if isinstance(files, dict) else []):
        if not isinstance(want, dict):
            continue
        p = step / rel
        if not p.is_file():
            damaged.append(f"{p} (missing)")
            continue
        size, sha, zero = _file_digest(p)
        if size != want.get("size"):
            damaged.append(f"{p} ({size} bytes, was {want.get('size')}: truncated or overwritten)")
        elif sha != want.get("sha256"):
            damaged.append(f"{p} ({'zeroed' if zero else 'bytes changed'} since it was written)")
    return damaged


# ----------------------------------------------------------------------------- run folder lock


def _pid_alive(pid: Any) -> bool:
    """Whether a process with this pid exists on this host (an unreadable pid counts as alive)."""
    if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


class RunLock:
    """An exclusive lock on a run folder while a run writes it: OUT/run.lock (flock) names the
    holder (pid, host, start time). The kernel drops it when the holder dies, so the file a
    killed run leaves behind never blocks the next run; ``previous`` then says whose it was."""

    def __init__(self, directory: str | os.PathLike, enabled: bool = True) -> None:
        self.directory, self.enabled = Path(directory), enabled and fcntl is not None
        self.path = self.directory / LOCK_NAME
        self.previous: dict[str, Any] | None = None  # a killed run's lock, taken over
        self._fd: int | None = None
        self._made_dir = False

    def describe(self, holder: dict[str, Any]) -> str:
        """'pid P on host H since T' of a lock file's contents."""
        return (
            f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')} "
            f"since {holder.get('started', '?')}"
        )

    def acquire(self) -> RunLock:
        """Take the lock, or raise RunLockedError naming the live holder."""
        if not self.enabled:
            return self
        self._made_dir = not self.directory.exists()
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OSError(f"{self.directory}: cannot create the run folder ({e})") from None
        for _ in range(5):  # retried only when another process replaced the file meanwhile
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            holder = _read_holder(fd)  # a killed run's, if we get the lock
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd)
                os.close(fd)
                if holder.get("host") != socket.gethostname() or _pid_alive(holder.get("pid")):
                    raise RunLockedError(
                        f"{self.directory} is in use by another run: {self.describe(holder)} "
                        f"(lock {self.path}); wait for it to end, or use another --out"
                    ) from None
                self.path.unlink(missing_ok=True)  # held by a dead run's orphaned child
                self.previous = holder
                continue
            if not _same_file(fd, self.path):
                os.close(fd)
                continue
            self.previous = self.previous or (holder or None)
            me = {"pid": os.getpid(), "host": socket.gethostname(),
                  "started": time.strftime("%Y-%m-%d %H:%M:%S %z"), "argv": sys.argv}  # fmt: skip
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(me) + "\n").encode(), 0)
            self._fd = fd
            return self
        raise RunLockedError(f"{self.path}: could not take the lock (replaced repeatedly)")

    def release(self) -> None:
        """Remove the lock file and drop the lock (and OUT itself if the run left it empty)."""
        if self._fd is None:
            return
        if _same_file(self._fd, self.path):
            self.path.unlink(missing_ok=True)
        os.close(self._fd)
        self._fd = None
        if self._made_dir:
            try:
                self.directory.rmdir()  # only when empty: a run that failed before writing
            except OSError:
                pass

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def _read_holder(fd: int) -> dict[str, Any]:
    """The contents of a lock file ({} when empty or unreadable)."""
    try:
        holder = json.loads(os.pread(fd, 65536, 0) or b"{}")
    except ValueError:
        return {}
    return holder if isinstance(holder, dict) else {}


def _same_file(fd: int, path: Path) -> bool:
    """Whether path still names the file open as fd (not removed or replaced)."""
    try:
        a, b = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


# ----------------------------------------------------------------------------- metrics, JSON


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
    """The records of a metrics.jsonl ([] if it does not exist); a bad line is a one-line
    ValueError naming the file, the line and the field."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if line.strip():
            records.append(_metrics_record(line, f"{path}:{n}"))
    return records


def _metrics_record(line: str, where: str) -> dict[str, Any]:
    """One metrics.jsonl line, checked: an object with an integer epoch >= 1, numeric metrics."""
    try:
        record = json.loads(line)
    except ValueError as e:
        raise ValueError(f"{where}: not valid JSON ({e})") from None
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(record).__name__}")
    epoch = record.get("epoch")
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 1:
        raise ValueError(f"{where}: field 'epoch': expected an integer >= 1, got {epoch!r}")
    for key in METRIC_KEYS[1:] + TIMING_KEYS:
        value = record.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise ValueError(f"{where}: field {key!r}: expected a number, got {value!r}")
    return record


def write_json(path: str | os.PathLike, obj: dict[str, Any]) -> Path:
    """obj as indented JSON, atomically."""
    write_atomic(Path(path), json.dumps(obj, indent=2, sort_keys=True) + "\n")
    return Path(path)


def read_json(path: str | os.PathLike) -> dict[str, Any]:
    """A JSON object from a file, with a clear error naming it."""
    try:
        obj = json.loads(Path(path).read_text())
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{path}: missing") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(obj).__name__}")
    return obj


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
