"""Smoke tests of the benchmark code at a tiny size; no timing assertions (those are benchmarks)."""

from __future__ import annotations

import json

import pytest
from devtools import bench, matmul_bound

from vitjax.registry import get_config


def test_forward_flops_counts_every_matmul():
    cfg = get_config("vit_tutorial_patch16_32")  # 32 px, patch 16: 4 patches + cls = 5 tokens
    D, N, L, H = 384, 5, 7, 1536
    per_block = 2 * N * D * 3 * D + 2 * 2 * N * N * D + 2 * N * D * D + 2 * 2 * N * D * H
    patch = 2 * 4 * 16 * 16 * 3 * D
    assert bench.forward_flops(cfg) == patch + L * per_block + 2 * D * 10
    assert bench.train_flops(cfg) == 3 * bench.forward_flops(cfg) - patch


@pytest.mark.slow
def test_run_benchmark_smoke(tmp_path):
    res = bench.run_benchmark(
        "vit_tutorial_patch16_32",
        batch_size=2,
        rounds=1,
        warmup=0,
        modes=("jax", "eager"),
        peak={"peak": 100.0},
        cpu_devices=2,
        verbose=False,
        depth=1,
    )
    assert res["jax_cpu_devices"] == 2  # data parallel over two CPU devices, as training splits
    rows = {(r["mode"], r["task"]): r for r in res["results"]}
    assert set(rows) == {(m, t) for m in ("jax", "eager") for t in ("train", "infer")}
    for r in rows.values():
        assert r["images_per_s"] > 0 and r["peak_rss_mb"] > 0
        assert r["vs_eager"] is not None and r["vs_compile"] is None
    # XLA counts one device's share; summed over both it is the analytic count plus elementwise
    xla = rows[("jax", "train")]["xla_flops_per_image"]
    assert res["flops_per_image"]["train"] <= xla < 2 * res["flops_per_image"]["train"]
    path = bench.write_results(res, tmp_path)
    assert json.load(open(path))["model"] == "vit_tutorial_patch16_32"
    md = (tmp_path / "vit_tutorial_patch16_32_b2.md").read_text()
    assert "| vitjax (jit) | train |" in md and "| PyTorch eager | infer |" in md
    assert "vitjax: 2 CPU devices, data parallel" in md
    assert "Matmul-only bound" in md and rows[("jax", "train")]["vs_matmul_bound"] > 0


def test_run_benchmark_rejects_unknown_mode():
    with pytest.raises(ValueError, match="unknown modes"):
        bench.run_benchmark("vit_tutorial_patch16_32", modes=("jax", "tf"), peak={"peak": 1.0})


def test_data_benchmark_smoke(tmp_path):
    root = bench.make_jpeg_folder(tmp_path / "imgs", per_class=2, size=64)
    res = bench.run_data_benchmark(root, batch_size=4, settings=((0, 1),), epochs=1)
    assert len(res["runs"]) == 2 and all(r["images"] == 20 for r in res["runs"])
    assert all(r["images_per_s"] > 0 for r in res["runs"])
    assert "| train | 0 | 1 |" in bench.data_to_markdown(res)


@pytest.mark.parametrize(
    "model", ["vit_tutorial_patch16_32", "vit_small_patch16_224", "deit_tiny_distilled_patch16_224"]
)
def test_matmul_bound_lists_every_counted_flop(model):
    cfg = get_config(model)
    for task, per_image in (("train", bench.train_flops), ("infer", bench.forward_flops)):
        mms = matmul_bound.step_matmuls(cfg, 3, task)
        assert sum(mm.flops for mm in mms) == pytest.approx(3 * per_image(cfg), rel=1e-12)


def test_matmul_bound_times_each_distinct_matmul_once():
    cfg = get_config("vit_tutorial_patch16_32", depth=2)
    res = matmul_bound.matmul_bound(cfg, 2, repeats=1)
    train, infer = res["train"], res["infer"]
    assert train["gflops"] == pytest.approx(2 * bench.train_flops(cfg) / 1e9)
    assert 0 < train["seconds"] and 0 < infer["seconds"] < train["seconds"]
    forms = {r["form"] for r in train["matmuls"]}
    assert forms == {"x@W", "g@W.T", "x.T@g", "q@k.T", "p@v", "p.T@g"}
    assert all(r["best"] == max(r["jax"], r.get("torch", 0.0)) for r in train["matmuls"])
