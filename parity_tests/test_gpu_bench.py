"""scripts/devtools/gpu_bench.py on the CPU: every mode and task timed, FLOPs, no MFU, failures.

The GPU figures come from ``bash scripts/gpu_check.sh`` on a lent GPU; here the harness itself is
checked with a tiny model (vit_tiny at 32 px, depth 1, batch 4).
"""

from __future__ import annotations

import json
import os

import pytest
from devtools import bench, gpu_bench

from vitjax.registry import get_config

SMOKE = ["--model", "vit_tiny_patch16_224", "--batch-size", "4", "--img-size", "32",
         "--depth", "1", "--steps", "1", "--rounds", "2", "--warmup", "0"]  # fmt: skip


def _hand_count(D: int, P: int, prefix: int, hidden: int, depth: int, patch: int, classes: int):
    """Matmul FLOPs of a plain ViT forward, written out independently of gpu_bench."""
    N = P + prefix
    per_block = (
        2 * N * D * (3 * D)  # qkv
        + 2 * N * N * D  # q @ k^T, all heads
        + 2 * N * N * D  # attn @ v
        + 2 * N * D * D  # proj
        + 2 * N * D * hidden  # fc1
        + 2 * N * hidden * D  # fc2
    )
    return 2 * P * (patch * patch * 3) * D + depth * per_block + 2 * D * classes


def _read(out) -> dict:
    (path,) = out.glob("*.json")
    return json.loads(path.read_text())


@pytest.mark.slow
def test_cpu_smoke_run_reports_every_mode_and_task(tmp_path, capsys):
    # A bogus XLA flag set: its worker must fail loudly (exit 3: only a variant failed), which
    # also shows the flags reach that worker's XLA_FLAGS and no other. torch.compile through
    # dynamo and AOTAutograd without inductor's C++ code generation (30 s on this CPU with a
    # cold cache, as CI has it; the GPU check runs inductor).
    argv = [*SMOKE, "--xla-flags", "--xla_no_such_flag_for_gpu_bench=1", "--out", str(tmp_path),
            "--compile-backend", "aot_eager"]  # fmt: skip
    status = gpu_bench.main(argv)
    res = _read(tmp_path)
    printed = capsys.readouterr().out
    assert status == 3, res["failures"]
    assert [f["mode"] for f in res["failures"]] == ["jax+flags1"]
    assert res["modes"]["jax+flags1"]["status"] == "failed"
    assert "xla_no_such_flag_for_gpu_bench" in res["modes"]["jax+flags1"]["error"]
    rows = {(r["mode"], r["task"]): r for r in res["results"]}
    assert set(rows) == {(m, t) for m in ("jax", "eager", "compile") for t in ("train", "infer")}
    for r in rows.values():
        assert r["images_per_s"] > 0 and r["samples"] == 2
        assert r["tflops_per_s"] > 0
        assert "mfu" not in r  # no peak on a CPU
    for t in ("train", "infer"):
        assert rows[("jax", t)]["vs_eager"] > 0 and rows[("jax", t)]["vs_compile"] > 0
        assert rows[("jax", t)]["compile_s"] > 0 and rows[("compile", t)]["compile_s"] > 0
    want = _hand_count(D=192, P=4, prefix=1, hidden=768, depth=1, patch=16, classes=1000)
    assert res["flops_per_image"]["infer"] == want == 6_006_528
    assert res["flops_per_image"]["train"] == 3 * want
    assert res["device"]["platform"] == "cpu" and res["device"]["peak_tflops"] is None
    assert "MFU omitted" in res["device"]["mfu_note"]
    assert res["targets"]["evaluated"] is False
    jax_stats = res["modes"]["jax"]["stats"]
    assert jax_stats["param_dtype"] == "float32" and jax_stats["attn_impl_resolved"] == "cpu"
    assert jax_stats["train_xla_flops_per_image"] > 0
    assert res["modes"]["eager"]["stats"]["autocast"] == "bfloat16"
    assert res["modes"]["compile"]["stats"]["compile_backend"] == "aot_eager"
    md = (tmp_path / "vit_tiny_patch16_224_b4_bf16.md").read_text()
    assert "| MFU" not in md and "MFU omitted" in md and md in printed
    assert "jax+flags1: failed" in md


def test_deadline_and_require_gpu_fail_loudly_and_still_write(tmp_path):
    status = gpu_bench.main([*SMOKE, "--deadline-s", "1", "--out", str(tmp_path / "late")])
    res = _read(tmp_path / "late")
    assert status == 1 and res["results"] == []
    assert {m["status"] for m in res["modes"].values()} == {"skipped"}
    assert "deadline" in res["modes"]["jax"]["error"]
    argv = [*SMOKE, "--modes", "jax", "--tasks", "infer", "--require-gpu"]
    status = gpu_bench.main([*argv, "--out", str(tmp_path / "cpu")])
    res = _read(tmp_path / "cpu")
    assert status == 1 and res["results"] == []
    assert "not a GPU" in res["modes"]["jax"]["error"]


def test_a_worker_that_does_not_answer_in_time_is_killed(tmp_path):
    spec = dict(model="vit_tiny_patch16_224", batch_size=4, dtype="bf16", tasks=["infer"],
                seed=0, lr=1e-4, weight_decay=0.0, img_size=32, depth=1, mode="jax")  # fmt: skip
    w = gpu_bench.Worker("jax", spec, dict(os.environ), tmp_path / "worker.log")
    with pytest.raises(gpu_bench.WorkerError) as e:
        w.recv(0.2)
    assert e.value.status == "timeout"
    w.close()
    assert w.proc.returncode is not None


def test_flops_match_an_independent_count_and_devtools_bench():
    cfg = get_config("vit_base_patch16_224")
    want = _hand_count(D=768, P=196, prefix=1, hidden=3072, depth=12, patch=16, classes=1000)
    assert gpu_bench.forward_flops_per_image(cfg) == want == bench.forward_flops(cfg)
    assert abs(want / 2 - 17.56e9) < 0.01e9  # ViT-B/16's published 17.56 GMACs
    assert gpu_bench.flops_per_image("vit_base_patch16_224", {})["train"] == 3 * want
    assert gpu_bench.forward_flops_per_image(get_config("eva02_tiny_patch14_224")) is None


@pytest.mark.parametrize(
    "name,peak",
    [
        ("NVIDIA H100 80GB HBM3", 989.0),
        ("NVIDIA H200", 989.0),
        ("NVIDIA GH200 480GB", 989.0),
        ("NVIDIA H100 PCIe", 756.0),
        ("NVIDIA H100 NVL", 835.0),
        ("NVIDIA A100-SXM4-80GB", 312.0),
        ("NVIDIA A100 80GB PCIe", 312.0),
        ("Tesla T4", None),
        ("cpu", None),
        (None, None),
    ],
)
def test_peak_lookup_by_device_name(name, peak):
    assert gpu_bench.peak_bf16_tflops(name) == peak


def test_xla_flags_value_may_start_with_dashes():
    a = gpu_bench.parse(["--xla-flags", "--xla_a=1 --xla_b=2", "--xla-flags=--xla_c=3"])
    assert a.xla_flags == ["--xla_a=1 --xla_b=2", "--xla_c=3"]
    with pytest.raises(SystemExit):
        gpu_bench.parse(["--batch-size", "0"])
