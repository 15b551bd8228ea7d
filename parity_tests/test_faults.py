"""Faults during training: kill -9, Ctrl-C, NaN losses, an unwritable or full --out.

A killed or interrupted run keeps its last good checkpoint and --resume ends exactly where an
uninterrupted run does; a NaN loss stops with a clear message and keeps the last good checkpoint;
an unwritable or full output directory fails before training starts.
"""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest

from parity_tests.test_train_cli import TINY_FLAGS, TINY_RUN, script
from vitjax.training import checkpoints as ck
from vitjax.training import run as vtrain
from vitjax.training.run import RunConfig, train_and_evaluate
from vitjax.weights.files import load_state_dict

EPOCHS = 3


def wait_for_epoch(proc: subprocess.Popen, epoch: int) -> None:
    """Read the script's stdout until it logs `epoch`."""
    for line in proc.stdout:
        if line.startswith(f"epoch {epoch:3d}"):
            return
    raise AssertionError(f"the run ended before epoch {epoch}: {proc.stderr.read()[-2000:]}")


def assert_same_run(a: Path, b: Path) -> None:
    """Two run dirs hold the same metrics.jsonl and the same final weights."""
    ma, mb = (ck.strip_timing(ck.read_metrics(d / ck.METRICS_NAME)) for d in (a, b))
    assert [r["epoch"] for r in mb] == list(range(1, EPOCHS + 1))
    assert ma == mb, f"resumed run differs:\n{ma}\n{mb}"
    wa, wb = load_state_dict(a / ck.MODEL_DIR), load_state_dict(b / ck.MODEL_DIR)
    for k in wa:
        np.testing.assert_array_equal(wb[k], wa[k], err_msg=k)


@pytest.mark.slow
def test_kill9_and_ctrl_c_then_resume_match_uninterrupted(tmp_path):
    """kill -9 and SIGINT mid-run (subprocesses), then --resume == a run never interrupted."""
    killed = script("train.py", "--out", str(tmp_path / "killed"), "--epochs", "3", *TINY_FLAGS)
    ctrl_c = script("train.py", "--out", str(tmp_path / "ctrl_c"), "--epochs", "300", *TINY_FLAGS)
    wait_for_epoch(killed, 2)  # epoch 1's checkpoint is complete once epoch 2's save starts
    killed.send_signal(signal.SIGKILL)  # most likely while epoch 2's checkpoint is being written
    wait_for_epoch(ctrl_c, 1)
    ctrl_c.send_signal(signal.SIGINT)
    straight = tmp_path / "straight"
    train_and_evaluate(RunConfig(out=str(straight), epochs=EPOCHS, **TINY_RUN))
    _, err = ctrl_c.communicate(timeout=300)
    killed.wait(timeout=60)
    assert killed.returncode == -signal.SIGKILL, killed.stderr.read()[-3000:]
    assert ctrl_c.returncode == 130, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    ours = [line for line in err.splitlines() if line.startswith("vitjax-train:")]
    assert len(ours) == 1, err[-3000:]
    last = ours[0]
    assert "interrupted after epoch" in last and "--resume" in last, err[-3000:]
    stopped = int(last.split("interrupted after epoch ")[1].split(";")[0])
    assert f"last good checkpoint: epoch {stopped}" in last
    assert ck.Checkpointer(tmp_path / "ctrl_c" / ck.CHECKPOINT_DIR).latest_epoch() == stopped
    kept = ck.strip_timing(ck.read_metrics(tmp_path / "ctrl_c" / ck.METRICS_NAME))
    assert len(kept) == stopped  # it may have run ahead of us: compare the epochs both have
    assert kept[:EPOCHS] == ck.strip_timing(ck.read_metrics(straight / ck.METRICS_NAME))[:stopped]
    train_and_evaluate(
        RunConfig(out=str(tmp_path / "killed"), epochs=EPOCHS, resume=True, progress=False)
    )
    assert_same_run(straight, tmp_path / "killed")


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    """Epoch 2's inputs turn NaN: the run stops naming it; epoch 1's checkpoint restores."""
    make_loaders = vtrain.make_loaders

    def poisoned(*args, **kwargs):
        train_data, val_data = make_loaders(*args, **kwargs)

        def train_nan(epoch: int):
            for batch in train_data(epoch):
                yield {**batch, "image": batch["image"] * np.nan} if epoch >= 1 else batch

        return train_nan, val_data

    monkeypatch.setattr(vtrain, "make_loaders", poisoned)
    out = tmp_path / "run"
    with pytest.raises(FloatingPointError, match="epoch 2: training loss is nan") as info:
        train_and_evaluate(RunConfig(out=str(out), epochs=EPOCHS, **TINY_RUN))
    assert "last good checkpoint: epoch 1" in str(info.value)
    assert [r["epoch"] for r in ck.read_metrics(out / ck.METRICS_NAME)] == [1]
    assert not (out / ck.MODEL_DIR).exists()
    assert ck.Checkpointer(out / ck.CHECKPOINT_DIR).latest_epoch() == 1


def _train_main(argv: list[str]) -> str:
    """scripts/train.py main(argv) in this process; the one-line error it exits with."""
    from parity_tests.test_safety import load_script

    with pytest.raises(SystemExit) as info:
        load_script("train.py").main(argv)
    msg = str(info.value.code)
    assert msg.startswith("vitjax-train: error:") and "\n" not in msg, msg
    return msg


def test_unwritable_or_full_out_fails_before_training(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("a file, not a directory")
    msg = _train_main(["--out", str(blocker / "run"), "--epochs", "1", *TINY_FLAGS])
    assert str(blocker) in msg
    out = tmp_path / "full"
    monkeypatch.setattr("shutil.disk_usage", lambda p: type("U", (), {"free": 4096})())
    msg = _train_main(["--out", str(out), "--epochs", "1", *TINY_FLAGS])
    assert "MiB free" in msg and str(out) in msg
    assert not (out / ck.METRICS_NAME).exists()
    assert not any((out / ck.CHECKPOINT_DIR).glob("*"))


def test_half_written_checkpoint_is_ignored(tmp_path):
    """A save killed midway (orbax's temporary dir) is never listed; the previous one restores."""
    import jax.numpy as jnp
    import optax
    from flax.training.train_state import TrainState

    tx = optax.sgd(0.1, momentum=0.9)
    params = {"w": jnp.arange(4.0)}
    state = TrainState.create(apply_fn=None, params=params, tx=tx)
    state = state.replace(step=jnp.zeros((), jnp.int32))
    ckpt = ck.Checkpointer(tmp_path)
    ckpt.save(1, state.replace(step=state.step + 7), {"epoch": 1})
    ckpt.close()
    partial = tmp_path / "2.orbax-checkpoint-tmp-1700000000"
    (partial / "state").mkdir(parents=True)
    (partial / "state" / "garbage").write_bytes(b"\0" * 10)
    ckpt = ck.Checkpointer(tmp_path)
    assert ckpt.latest_epoch() == 1
    restored, meta = ckpt.restore(state)
    ckpt.close()
    assert meta == {"epoch": 1} and int(restored.step) == 7
    np.testing.assert_array_equal(restored.params["w"], params["w"])


def test_failed_model_write_keeps_the_old_one(tmp_path, monkeypatch):
    """A model dir rewrite that fails midway (disk full) leaves the old dir intact."""
    from safetensors import numpy as stnp

    from vitjax.weights.files import write_pretrained_dir

    config = {"model_config": {"depth": 1}}
    write_pretrained_dir(tmp_path / "model", config, {"w": np.ones(3, np.float32)})
    before = {p.name: p.read_bytes() for p in (tmp_path / "model").iterdir()}

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(stnp, "save_file", disk_full)
    with pytest.raises(OSError, match="No space left"):
        write_pretrained_dir(tmp_path / "model", config, {"w": np.zeros(3, np.float32)})
    assert {p.name: p.read_bytes() for p in (tmp_path / "model").iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no temporary left behind
