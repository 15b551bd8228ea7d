"""Hardening of training runs (issue 14, items 4, 5, 10, 14, 15, 16): the run folder's lock,
checkpoint checksums, symlink loops in image folders, SIGTERM, bad run files, data changes.

CLI cases drive the real entry point (python -m vitjax.cli.train) in a subprocess, bounded in
time; the rest call the library.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from parity_tests.test_train_cli import TINY_FLAGS, TINY_RUN, write_digit_folder
from vitjax.training import checkpoints as ck
from vitjax.training import data
from vitjax.training.run import RunConfig, train_and_evaluate

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 240  # seconds for one CLI run on a busy 2-core machine


def start_cli(*args: str) -> subprocess.Popen:
    """python -m vitjax.cli.train ARGS, started in its own process group (pipes to us)."""
    return subprocess.Popen(
        [sys.executable, "-m", "vitjax.cli.train", *map(str, args)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip


def finish(proc: subprocess.Popen) -> subprocess.CompletedProcess:
    """Wait (bounded) for a started run; killed if it overruns."""
    try:
        out, err = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def cli(*args: str) -> subprocess.CompletedProcess:
    """python -m vitjax.cli.train ARGS, to completion."""
    return finish(start_cli(*args))


def wait_for_epoch(proc: subprocess.Popen, epoch: int) -> None:
    """Read a run's stdout until it logs `epoch` (the run is killed if that takes too long)."""
    watchdog = threading.Timer(TIMEOUT, os.killpg, (proc.pid, signal.SIGKILL))
    watchdog.start()
    try:
        for line in proc.stdout:
            if line.startswith(f"epoch {epoch:3d}"):
                return
    finally:
        watchdog.cancel()
    raise AssertionError(f"the run ended before epoch {epoch}: {proc.stderr.read()[-3000:]}")


def one_error_line(result: subprocess.CompletedProcess) -> str:
    """The single 'vitjax-train:' line of a failed run (no traceback); returns it."""
    err = result.stderr
    assert result.returncode not in (0, None) and "Traceback" not in err, err[-3000:]
    ours = [line for line in err.splitlines() if line.startswith("vitjax-train:")]
    assert len(ours) == 1, err[-3000:]
    return ours[0]


def latest_epoch(run: Path) -> int | None:
    """The newest checkpoint's epoch in a run folder (the manager closed again)."""
    ckpt = ck.Checkpointer(run / ck.CHECKPOINT_DIR)
    try:
        return ckpt.latest_epoch()
    finally:
        ckpt.close()


def largest_file(step: Path) -> Path:
    """A checkpoint's biggest file: where its arrays' bytes are."""
    files = [p for p in step.rglob("*") if p.is_file() and p.name != ck.FILES_NAME]
    return max(files, key=lambda p: p.stat().st_size)


def flip_byte(path: Path) -> None:
    """Flip one bit in the middle of a file (a disk or copy error)."""
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x10
    path.write_bytes(bytes(raw))


@pytest.fixture()
def folder(tmp_path) -> Path:
    """A 3-class folder of 4 digit PNGs each."""
    return write_digit_folder(tmp_path / "data", per_class=4)


# ----------------------------------------------------------------------------- 4. run lock


@pytest.mark.slow
def test_second_run_into_a_busy_out_names_the_holder_and_a_stale_lock_never_blocks(
    tmp_path, capsys
):
    out = tmp_path / "run"
    holder = start_cli("--out", out, "--epochs", "500", *TINY_FLAGS)
    try:
        wait_for_epoch(holder, 1)
        saved = (out / ck.RUN_CONFIG_NAME).read_bytes()
        line = one_error_line(cli("--out", out, "--overwrite", "--seed", "7", *TINY_FLAGS))
        assert f"{out} is in use by another run: pid {holder.pid} on host " in line, line
        assert socket.gethostname() in line and re.search(r"since \d{4}-\d\d-\d\d \d\d:", line)
        assert (out / ck.RUN_CONFIG_NAME).read_bytes() == saved  # the holder's config, intact
    finally:
        os.killpg(holder.pid, signal.SIGKILL)  # a killed run: its lock file stays behind
        holder.communicate(timeout=60)
    assert json.loads((out / ck.LOCK_NAME).read_text())["pid"] == holder.pid
    latest = latest_epoch(out)
    capsys.readouterr()
    train_and_evaluate(RunConfig(out=str(out), resume=True, epochs=latest + 1, progress=False))
    log = capsys.readouterr().out
    assert f"taking over {out / ck.LOCK_NAME}, left by pid {holder.pid}" in log, log
    assert f"epoch {latest + 1:3d}" in log
    assert not (out / ck.LOCK_NAME).exists()


# ----------------------------------------------------------------------------- 14. SIGTERM


def test_sigterm_ends_the_run_cleanly_keeping_the_last_checkpoint(tmp_path):
    """SIGTERM to the whole process group (as systemd or slurm send it), grain workers on."""
    out = tmp_path / "run"
    proc = start_cli("--out", out, "--epochs", "500", "--workers", "1", *TINY_FLAGS)
    wait_for_epoch(proc, 1)
    os.killpg(proc.pid, signal.SIGTERM)
    result = finish(proc)  # returns once the workers are gone too (they hold the pipes)
    err = result.stderr
    assert result.returncode == 143, err[-3000:]
    assert "Traceback (most recent call last)" not in err, err[-3000:]
    assert "leaked" not in err, err[-3000:]  # semaphores, shared_memory (resource_tracker)
    line = one_error_line(result)
    kept = re.search(r"last good checkpoint: epoch (\d+) in (\S+) \(continue with --resume\)", line)
    assert "terminated (SIGTERM)" in line and kept, line
    assert latest_epoch(out) == int(kept[1])
    assert [r["epoch"] for r in ck.read_metrics(out / ck.METRICS_NAME)] == list(
        range(1, int(kept[1]) + 1)
    )
    assert not (out / ck.LOCK_NAME).exists()


# ----------------------------------------------------------------------------- 5. checksums


def _tiny_state(w: np.ndarray):
    import jax.numpy as jnp
    import optax
    from flax.training.train_state import TrainState

    state = TrainState.create(apply_fn=None, params={"w": jnp.asarray(w)}, tx=optax.sgd(0.1, 0.9))
    return state.replace(step=jnp.zeros((), jnp.int32))


def test_flipped_checkpoint_bytes_are_caught_and_the_older_one_restores(tmp_path):
    w = np.random.default_rng(0).standard_normal(4096).astype(np.float32)
    ckpt = ck.Checkpointer(tmp_path)
    ckpt.save(1, _tiny_state(w), {"epoch": 1})
    ckpt.save(2, _tiny_state(w + 1), {"epoch": 2})
    ckpt.close()
    damaged = largest_file(tmp_path / "2")
    flip_byte(damaged)  # decodes without error: one weight changes
    ckpt = ck.Checkpointer(tmp_path)
    with pytest.raises(ck.CheckpointCorruptError, match=re.escape(f"{damaged} (bytes changed")):
        ckpt.restore(_tiny_state(w), 2)
    with pytest.warns(UserWarning, match=f"checkpoint {tmp_path / '2'}: damaged"):
        restored, meta = ckpt.restore(_tiny_state(w))
    assert meta == {"epoch": 1}
    np.testing.assert_array_equal(restored.params["w"], w)
    (tmp_path / "2" / ck.FILES_NAME).unlink()  # a save killed before its file list: the arrays
    with pytest.raises(ck.CheckpointCorruptError, match="checksum mismatch in params/w"):
        ckpt.restore(_tiny_state(w), 2)
    ckpt.close()


@pytest.mark.slow
def test_damaged_checkpoints_fall_back_or_fail_naming_the_file(tmp_path, folder, capsys):
    out = tmp_path / "run"
    train_and_evaluate(RunConfig(out=str(out), data=str(folder), epochs=2, **TINY_RUN))
    flip_byte(largest_file(out / ck.CHECKPOINT_DIR / "2"))
    capsys.readouterr()
    train_and_evaluate(RunConfig(out=str(out), epochs=3, resume=True, progress=False))
    log = capsys.readouterr().out
    assert f"warning: checkpoint {out / ck.CHECKPOINT_DIR / '2'}: damaged" in log, log
    assert "resuming from epoch 1, the newest good checkpoint, instead of epoch 2" in log, log
    assert [r["epoch"] for r in ck.read_metrics(out / ck.METRICS_NAME)] == [1, 2, 3]
    assert (out / ck.CORRUPT_DIR / "2").is_dir()  # kept aside, out of the way of the new epoch 2
    files = []
    for epoch in (1, 2, 3):  # every checkpoint damaged: zeroed, or truncated
        f = largest_file(out / ck.CHECKPOINT_DIR / str(epoch))
        raw = f.read_bytes()
        f.write_bytes(bytes(len(raw)) if epoch != 2 else raw[: len(raw) // 3])
        files.append(f)
    line = one_error_line(cli("--out", out, "--resume", "--epochs", "4", "--no-progress"))
    assert "--resume: no good checkpoint left" in line and "--overwrite" in line, line
    assert all(str(f) in line for f in files), line
    assert "zeroed since it was written" in line and "truncated" in line, line


# ----------------------------------------------------------------------------- 10. symlinks

LISTING = """
import json, sys
from vitjax.training.data import list_image_folder
paths, labels, classes = list_image_folder(sys.argv[1])
print(json.dumps([paths, labels]))
"""


def test_symlink_loops_are_followed_once(tmp_path):
    root = write_digit_folder(tmp_path / "data", classes=("1", "7"), per_class=3)
    outside = write_digit_folder(tmp_path / "pool", classes=("3",), per_class=2) / "3"
    os.symlink("..", root / "1" / "loop")  # the a/loop -> ..: the whole folder again
    (root / "7" / "deep").mkdir()
    os.symlink("../..", root / "7" / "deep" / "up")  # two loops: exponential without a check
    shutil.copy(root / "7" / "0.png", root / "7" / "deep" / "3.png")
    os.symlink("../7/deep", root / "1" / "peek")  # into another class: never labelled 1
    os.symlink(".", root / "7" / "self")
    os.symlink(outside, root / "1" / "pool")  # a real folder elsewhere: followed, once
    os.symlink(outside, root / "7" / "pool_again")
    os.symlink(root / "1" / "0.png", root / "1" / "same.png")  # one file, two names
    got = subprocess.run(
        [sys.executable, "-c", LISTING, str(root)],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert got.returncode == 0, got.stderr[-3000:]
    assert "linked folders not followed" in got.stderr
    paths, labels = json.loads(got.stdout)
    rel = [os.path.relpath(p, root) for p in paths]
    assert rel == ["1/0.png", "1/1.png", "1/2.png", "1/pool/0.png", "1/pool/1.png",
                   "7/0.png", "7/1.png", "7/2.png", "7/deep/3.png"], rel  # fmt: skip
    assert labels == [0] * 5 + [1] * 4


# ----------------------------------------------------------------------------- 15. bad files


def test_bad_run_config_or_metrics_fail_in_one_line_naming_file_and_field(tmp_path):
    runs = {}
    for case in ("a", "b", "c"):  # epochs "3"; model_args num_heads 0; a bad metrics line
        out = tmp_path / case
        cfg = RunConfig(out=str(out), epochs=2, **TINY_RUN).to_dict()
        if case == "a":
            cfg["epochs"] = "3"
        if case == "b":
            cfg["model_args"] = {**cfg["model_args"], "num_heads": 0}
        ck.write_json(out / ck.RUN_CONFIG_NAME, cfg)
        if case == "c":  # a run with a checkpoint whose metrics.jsonl was edited
            ckpt = ck.Checkpointer(out / ck.CHECKPOINT_DIR)
            ckpt.save(1, _tiny_state(np.zeros(3, np.float32)), {"epoch": 1})
            ckpt.close()
            good = {"epoch": 1, "lr": 1e-3, "train_loss": 1.0, "train_acc": 0.5}
            bad = {**good, "epoch": 2, "train_loss": "1.0"}
            (out / ck.METRICS_NAME).write_text(f"{json.dumps(good)}\n{json.dumps(bad)}\n")
        runs[case] = start_cli("--out", out, "--resume", "--no-progress")
    results = {case: one_error_line(finish(proc)) for case, proc in runs.items()}
    config = {c: str(tmp_path / c / ck.RUN_CONFIG_NAME) for c in runs}
    assert f"{config['a']}: field 'epochs': expected int, got '3'" in results["a"], results["a"]
    line = results["b"]  # the file, then the field (its wording is the model config's)
    assert line.startswith(f"vitjax-train: error: {config['b']}: model_args"), line
    assert "num_heads" in line, line
    metrics = tmp_path / "c" / ck.METRICS_NAME
    assert f"{metrics}:2: field 'train_loss': expected a number, got '1.0'" in results["c"]


# ----------------------------------------------------------------------------- 16. data change


def test_resume_after_the_data_changed_refuses_unless_allowed(tmp_path, folder):
    out = tmp_path / "run"
    train_and_evaluate(RunConfig(out=str(out), data=str(folder), epochs=1, **TINY_RUN))
    shutil.copy(folder / "1" / "0.png", folder / "1" / "new.png")
    line = one_error_line(cli("--out", out, "--resume", "--epochs", "2", "--no-progress"))
    assert f"--resume: data folder {folder} changed since the run started" in line, line
    assert "12 -> 13 images" in line and "1 4 -> 5" in line and "--allow-data-change" in line
    assert [r["epoch"] for r in ck.read_metrics(out / ck.METRICS_NAME)] == [1]
    saved = json.loads((out / ck.DATA_NAME).read_text())  # the run's listing, kept
    assert saved["num_images"] == 12 and saved["class_counts"] == {"0": 4, "1": 4, "7": 4}
    allowed = cli("--out", out, "--resume", "--epochs", "2", "--allow-data-change", "--no-progress")
    assert allowed.returncode == 0, allowed.stderr[-3000:]
    assert f"warning: data folder {folder} changed since the run started" in allowed.stdout
    assert json.loads((out / ck.DATA_NAME).read_text())["num_images"] == 13
    assert [r["epoch"] for r in ck.read_metrics(out / ck.METRICS_NAME)] == [1, 2]


def test_digits_fingerprint_is_fixed():
    """The embedded digits fingerprint the same in every process (no hash seed, no paths)."""
    code = "import json; from vitjax.training import data; "
    code += "print(json.dumps(data.fingerprint(data.load_digits_dataset())))"
    env = {**os.environ, "PYTHONHASHSEED": "123"}
    other = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120, env=env
    )
    assert other.returncode == 0, other.stderr[-3000:]
    here = data.fingerprint(data.load_digits_dataset())
    assert json.loads(other.stdout) == here
    assert here["num_images"] == 1797 and len(here["class_counts"]) == 10
