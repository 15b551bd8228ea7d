"""Several hosts for real (issue 18, item 4): 2 processes on 127.0.0.1, 2 CPU devices each.

Each process runs ``train_and_evaluate`` (the train CLI's call) on the embedded digits, joined by
``jax.distributed.initialize`` through the plain environment variables the README documents
(JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID; coordinator on loopback), with
params and Adam state sharded fsdp over all 4 devices, each process loading only its own rows of
every batch. One step per epoch (the train split is one batch, its last row padding), 5 epochs:
the per-step losses, validation and final params equal one process with 4 devices (within
1e-5), and the 2-process run's checkpoint resumes in one process (on 2 devices: another layout)
to the same epoch 6 as the uninterrupted single-process run. A Ctrl-C that reaches one of the
two processes only (during epoch 3) stops both after that epoch; they resume to epoch 5.

Every subprocess has a deadline; on any failure or timeout all of them are killed, so the test
cannot hang CI.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from parity_tests.parity import assert_close
from parity_tests.test_train_cli import write_digit_folder
from vitjax.training import checkpoints as ck
from vitjax.weights import convert

ROOT = Path(__file__).resolve().parents[1]
DEADLINE_S = 150  # for each phase (all of its processes together)
# a tiny ViT whose fc1 / fc2 kernels (32 x 512) reach fsdp's default size, so they are split
# over both processes (the rest stays replicated); dropout and drop-path on
MODEL_ARGS = {"img_size": 16, "patch_size": 4, "embed_dim": 32, "depth": 2, "num_heads": 2,
              "mlp_ratio": 16.0, "proj_drop_rate": 0.1, "drop_path_rate": 0.1}  # fmt: skip

WORKER = r"""
import collections, json, os, shutil, signal, sys, time
from pathlib import Path
import jax
jax.config.update("jax_default_matmul_precision", "highest")
from vitjax.training import data, transforms
from vitjax.training.run import RunConfig, TrainingInterrupted, train_and_evaluate

job = json.loads(sys.argv[1])
loaded = collections.Counter()  # images this process read and transformed: train / val
load = data._LoadExample.__call__
ctrl_c = job.get("ctrl_c")  # [process, n]: that process alone gets SIGINT at its n-th image
def counting(self, index):
    loaded["train" if isinstance(self.transform, transforms.TrainTransform) else "val"] += 1
    if ctrl_c and jax.process_index() == ctrl_c[0] and loaded["train"] == ctrl_c[1]:
        os.kill(os.getpid(), signal.SIGINT)  # mid-epoch, as a Ctrl-C in its terminal
    return load(self, index)
data._LoadExample.__call__ = counting

def run(out, epochs, resume=False):
    cfg = RunConfig(
        data=job["folder"], out=out, epochs=epochs, resume=resume, progress=False, keep=3,
        model="vit_tutorial_patch16_32", init=job["init"], model_args=job["model_args"],
        batch_size=44, val_fraction=0.3,  # 42 train images: 1 step per epoch, 2 rows padding
        optimizer="adamw", lr=2e-3, schedule="constant", param_sharding="fsdp",
    )
    return [r["epoch"] for r in train_and_evaluate(cfg)]

interrupted = None
try:
    epochs = run(job["out"], job["epochs"])  # jax.distributed starts here: no jax call before
except TrainingInterrupted as e:  # every process stops after the same epoch: then resume
    interrupted, epochs = str(e), run(job["out"], job["epochs"], resume=True)
result = {"process": jax.process_index(), "processes": jax.process_count(),
          "devices": jax.device_count(), "local_devices": jax.local_device_count(),
          "epochs": epochs, "loaded": dict(loaded), "interrupted": interrupted}
if jax.process_count() > 1 and jax.process_index() == 0:
    (Path(job["out"]) / "done").write_text("")  # every process has returned: run complete
if job.get("resume_from"):  # then resume that (2-process) run's checkpoint here
    source, deadline = Path(job["resume_from"]), time.monotonic() + 120
    while not (source / "done").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    shutil.copytree(source, job["resumed"])
    result["resumed_epochs"] = run(job["resumed"], job["epochs"], resume=True)
print(json.dumps(result))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(devices: int, **extra: str) -> dict[str, str]:
    """A clean environment: no cluster variables from the machine running the test."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SLURM_", "OMPI_", "PMI_", "JAX_COORDINATOR", "JAX_NUM_PROC"))
        and k not in ("JAX_PROCESS_ID", "JAX_LOCAL_DEVICE_IDS")
    }
    env.update(
        JAX_PLATFORMS="cpu",
        # LLVM's quick path: compiles 3x faster here; every run of the test compiles alike
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices} "
        "--xla_backend_optimization_level=0",
        JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo",  # the entry point's choice (the CLI's too)
        **extra,
    )
    return env


def _run_all(jobs: list[tuple[dict, dict[str, str]]], logs: Path) -> list[dict]:
    """Start every job at once; wait for all within DEADLINE_S; kill all on a failure."""
    logs.mkdir(parents=True, exist_ok=True)
    procs = []
    try:
        for n, (job, env) in enumerate(jobs):
            out = open(logs / f"{n}.out", "w")  # noqa: SIM115 (closed with the process)
            err = open(logs / f"{n}.err", "w")  # noqa: SIM115
            p = subprocess.Popen(
                [sys.executable, "-c", WORKER, json.dumps(job)],
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=err,
            )
            procs.append((p, out, err))
        deadline = time.monotonic() + DEADLINE_S
        while any(p.poll() is None for p, _, _ in procs):
            failed = [p for p, _, _ in procs if p.poll() not in (None, 0)]
            if failed or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    finally:
        for p, out, err in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
            out.close()
            err.close()
    results = []
    for n, (p, _, _) in enumerate(procs):
        if p.returncode != 0:
            tails = "\n".join(
                f"--- job {k} (exit {q.returncode}):\n{(logs / f'{k}.err').read_text()[-2500:]}"
                for k, (q, _, _) in enumerate(procs)
            )
            pytest.fail(f"job {n} failed or timed out (exit {p.returncode}):\n{tails}")
        results.append(json.loads((logs / f"{n}.out").read_text().strip().splitlines()[-1]))
    return results


def _checkpoint_params(run: Path, epoch: int) -> dict:
    """The params of run's checkpoint of epoch, as numpy (orbax, read onto this one device)."""
    import jax
    import orbax.checkpoint as ocp

    path = run / ck.CHECKPOINT_DIR / str(epoch) / "state"
    cpu = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    with ocp.StandardCheckpointer() as reader:
        meta = reader.metadata(path).item_metadata
        target = jax.tree_util.tree_map(
            lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=cpu),
            getattr(meta, "tree", meta),
        )
        tree = reader.restore(path, target)
    return jax.tree_util.tree_map(np.asarray, tree["params"])


def _model_params(run: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(run / ck.MODEL_DIR / "model.safetensors"))


def _compare_records(got: list[dict], want: list[dict], what: str) -> float:
    worst = 0.0
    for a, b in zip(got, want, strict=True):
        assert a["epoch"] == b["epoch"]
        for key in ("train_loss", "train_acc", "val_loss", "val_acc"):
            rep = assert_close(
                np.array(a[key]), np.array(b[key]), f"{what} epoch {a['epoch']} {key}"
            )
            worst = max(worst, rep["max"])
    return worst


def _compare_trees(got: dict, want: dict, what: str) -> float:
    import jax

    flat_got = dict(jax.tree_util.tree_flatten_with_path(got)[0])
    flat_want = dict(jax.tree_util.tree_flatten_with_path(want)[0])
    assert flat_got.keys() == flat_want.keys()
    return max(
        assert_close(np.asarray(flat_got[k]), np.asarray(flat_want[k]), f"{what} {k}")["max"]
        for k in flat_want
    )


def _init_checkpoint(path: Path) -> str:
    """A timm-key .safetensors of random weights for the run's model (the --init file each
    process reads straight into its fsdp shards; no init to compile)."""
    import jax
    from safetensors.numpy import save_file

    from vitjax.factory import to_timm_state_dict, variable_shapes
    from vitjax.models.vit import VisionTransformer
    from vitjax.registry import get_config

    model = VisionTransformer(get_config("vit_tutorial_patch16_32", **MODEL_ARGS, num_classes=3))
    rng = np.random.default_rng(0)

    def weight(path: tuple, s: jax.ShapeDtypeStruct) -> np.ndarray:
        name = str(getattr(path[-1], "key", path[-1]))
        if name in ("scale", "bias"):  # norms start at 1, biases at 0, as timm's init
            return np.full(s.shape, 1.0 if name == "scale" else 0.0, s.dtype)
        return (rng.normal(size=s.shape) * 0.05).astype(s.dtype)

    variables = jax.tree_util.tree_map_with_path(weight, variable_shapes(model))
    save_file(to_timm_state_dict(model, variables), str(path))
    return str(path)


@pytest.mark.parametrize("workers", [0, 1])
def test_process_loaders_rows_concatenate_to_the_padded_global_batches(workers):
    """make_process_loader: process i's rows of every batch, side by side, are the batches of
    data.make_loader padded as the training loop pads them (same shuffle, same augmentation)."""
    from vitjax.training import data, transforms
    from vitjax.training.run import make_process_loader
    from vitjax.training.sharding import pad_batch, padded_size

    ds = data.load_digits_dataset().subset(np.arange(30))
    tf = transforms.TrainTransform(
        transforms.DataConfig(input_size=(3, 8, 8), crop_pct=1.0), scale=(0.5, 1.0), hflip=0.5
    )
    kw = {"shuffle": True, "seed": 3, "epoch": 2}
    whole = list(data.make_loader(ds, tf, 8, **kw))
    parts = [
        list(make_process_loader(ds, tf, 8, devices=4, image_shape=(8, 8, 3), process_index=i,
                                 process_count=2, worker_count=workers if i else 0, **kw))
        for i in range(2)
    ]  # fmt: skip
    assert len(parts[0]) == len(parts[1]) == len(whole) == 4  # the last: 6 examples, padded to 8
    for batch, rows0, rows1 in zip(whole, *parts, strict=True):
        want = pad_batch(batch, padded_size(len(batch["label"]), 8, 4))
        for key in ("image", "label", "mask"):
            np.testing.assert_array_equal(np.concatenate([rows0[key], rows1[key]]), want[key])


@pytest.mark.parametrize(
    "env, expected",
    [
        ({}, None),  # one process: nothing to start
        ({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "4"}, None),  # salloc / sbatch without srun
        ({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "1", "SLURM_STEP_NODELIST": "n1",
          "SLURM_PROCID": "0", "SLURM_LOCALID": "0"}, None),  # an srun step of one task
        ({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "2", "SLURM_STEP_NODELIST": "n[1-2]",
          "SLURM_PROCID": "1", "SLURM_LOCALID": "0"}, {}),  # srun: jax reads SLURM's variables
        ({"JAX_COORDINATOR_ADDRESS": "h0:1234", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "1"},
         {"num_processes": 2, "process_id": 1}),
        ({"JAX_COORDINATOR_ADDRESS": "h0:1234", "OMPI_COMM_WORLD_SIZE": "4",
          "OMPI_COMM_WORLD_RANK": "3"}, {"num_processes": 4, "process_id": 3}),  # Open MPI 5
        ({"OMPI_MCA_orte_hnp_uri": "1;tcp://h0:5", "OMPI_COMM_WORLD_SIZE": "2",
          "OMPI_COMM_WORLD_RANK": "0"}, {"num_processes": 2, "process_id": 0}),  # Open MPI 4
        ({"JAX_COORDINATOR_ADDRESS": "h0:1234"}, ValueError),  # who am I?
        ({"JAX_COORDINATOR_ADDRESS": "h0:1", "JAX_NUM_PROCESSES": "two", "JAX_PROCESS_ID": "0"},
         ValueError),
    ],
)  # fmt: skip
def test_maybe_initialize_distributed_reads_the_launchers_variables(env, expected, monkeypatch):
    import jax

    from vitjax.training.sharding import maybe_initialize_distributed

    for k in list(os.environ):
        if k.startswith(("SLURM_", "OMPI_", "JAX_COORDINATOR", "JAX_NUM_PROC", "JAX_PROCESS_ID")):
            monkeypatch.delenv(k)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    calls = []
    monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: calls.append(kw))
    if expected is ValueError:
        with pytest.raises(ValueError, match="JAX_"):
            maybe_initialize_distributed()
        assert not calls
        return
    assert maybe_initialize_distributed() is (expected is not None)
    assert calls == ([] if expected is None else [expected])


@pytest.mark.slow
def test_two_processes_on_loopback_equal_one_process_and_resume_in_one(tmp_path):
    job = {
        "folder": str(write_digit_folder(tmp_path / "digits", per_class=20)),
        "init": _init_checkpoint(tmp_path / "init.safetensors"),
        "model_args": MODEL_ARGS,
    }
    two, one, resumed = tmp_path / "two_processes", tmp_path / "one_process", tmp_path / "resumed"
    coordinator = {"JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{_free_port()}", "JAX_NUM_PROCESSES": "2"}
    # process 1 alone gets Ctrl-C during epoch 3 (at its 2 * 20 + 5th training image): both
    # stop after epoch 3, then resume in the same 2 processes to epoch 5
    two_job = {**job, "out": str(two), "epochs": 5, "ctrl_c": [1, 2 * 20 + 5]}
    group = [(two_job, _env(2, **coordinator, JAX_PROCESS_ID=str(i))) for i in range(2)]
    # alongside: one process on 4 devices trains 6 epochs, then resumes the 2-process run's
    # checkpoint of epoch 5 (in a copy) to epoch 6
    reference = {
        **job,
        "out": str(one),
        "epochs": 6,
        "resume_from": str(two),
        "resumed": str(resumed),
    }
    t0 = time.perf_counter()
    cache = {"JAX_COMPILATION_CACHE_DIR": str(tmp_path / "xla_cache"),  # the resume's compiles
             "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}  # fmt: skip
    p0, p1, ref = _run_all([*group, (reference, _env(4, **cache))], tmp_path / "logs")
    seconds = time.perf_counter() - t0

    assert (p0["processes"], p0["devices"], p0["local_devices"]) == (2, 4, 2)
    assert (p1["process"], ref["processes"], ref["devices"]) == (1, 1, 4)
    assert p0["epochs"] == p1["epochs"] == [1, 2, 3, 4, 5]
    for p in (p0, p1):  # process 0 was never signalled, yet stopped with process 1
        assert p["interrupted"] and "interrupted after epoch 3;" in p["interrupted"], p
        assert "last good checkpoint: epoch 3" in p["interrupted"]
    assert ref["interrupted"] is None
    said = [(tmp_path / "logs" / f"{i}.out").read_text() for i in (0, 1)]
    assert "Ctrl-C: every process stops after this epoch" in said[1]  # where it was pressed
    assert "Ctrl-C" not in said[0]
    # each process read only its own rows of every batch: of the 42 training images (the batch
    # of 44 padded by 2 rows), 22 and 20; of the 18 validation images (padded to 20), 10 and 8
    assert (p0["loaded"], p1["loaded"]) == ({"train": 5 * 22, "val": 5 * 10},
                                            {"train": 5 * 20, "val": 5 * 8})  # fmt: skip
    assert ref["loaded"] == {"train": 6 * 42, "val": 6 * 18}
    two_records = ck.read_metrics(two / ck.METRICS_NAME)
    one_records = ck.read_metrics(one / ck.METRICS_NAME)
    loss_diff = _compare_records(two_records, one_records[:5], "2 processes vs 1")
    two_params = _checkpoint_params(two, 5)
    params_diff = _compare_trees(two_params, _checkpoint_params(one, 5), "params after 5 steps")
    # model/ (gathered from both processes, written by process 0) holds the same params
    exported = {k: np.asarray(v) for k, v in convert.flax_to_torch(two_params).items()}
    _compare_trees(_model_params(two), exported, "model/")

    # the 2-process checkpoint (written shard by shard from both processes, checksummed whole)
    # resumed in one process and trained epoch 6 as the uninterrupted run did
    assert ref["resumed_epochs"] == [1, 2, 3, 4, 5, 6]
    resumed_records = ck.read_metrics(resumed / ck.METRICS_NAME)
    resume_diff = _compare_records(resumed_records, one_records, "resumed vs uninterrupted")
    final_diff = _compare_trees(_model_params(resumed), _model_params(one), "final params")
    print(
        f"\n2 processes x 2 devices vs 1 x 4 (5 steps): metrics max|diff| {loss_diff:.2e}, "
        f"params {params_diff:.2e}; resumed in 1 process: metrics {resume_diff:.2e}, "
        f"final params {final_diff:.2e}; {seconds:.1f} s"
    )
