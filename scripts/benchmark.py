"""vitjax (jit) against vittorch (PyTorch eager, torch.compile): training step and inference.

    python scripts/benchmark.py --model vit_tutorial_patch28_224 --batch-size 32 \
        --out docs/benchmarks
    python scripts/benchmark.py --data --out docs/benchmarks      # data-pipeline images/s
    python scripts/benchmark.py --tasks load --model vit_large_patch16_224,vit_huge_patch14_224 \
        --out docs/benchmarks    # create_model from .safetensors + first logits vs timm

Every mode runs in its own worker process; timed samples are interleaved round by round and
reported as medians with [slowest-fastest]. See scripts/devtools/bench.py for what is counted.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path[:0] = [os.path.dirname(os.path.abspath(__file__))]  # devtools

from devtools import bench  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="vit_tutorial_patch28_224", help="model name (VARIANTS)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--rounds", type=int, default=5, help="interleaved timed rounds")
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds after compilation")
    p.add_argument("--steps", type=int, default=1, help="calls per timed sample")
    p.add_argument("--modes", default="jax,eager,compile", help="comma list of jax, eager, compile")
    p.add_argument(
        "--tasks",
        default="train,infer",
        help="comma list of train, infer; or load: create_model from a .safetensors file + the "
        "first logits against timm, fresh processes (--model may be a comma list)",
    )
    p.add_argument(
        "--weights-dir",
        default=os.path.join(os.path.expanduser("~"), ".cache", "vitjax-bench"),
        help="--tasks load: where timm's random weights are saved once per model",
    )
    p.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32", help="--tasks load")
    p.add_argument("--skip-compile", action="store_true", help="leave torch.compile out")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: cores)")
    p.add_argument(
        "--malloc",
        choices=("keep", "default"),
        default="keep",
        help="every worker (all modes alike): keep: devtools.cpu_tuning.keep_freed_memory() "
        "(faster, but a worker can hold up to ~4x a step's activations); default: glibc's "
        "malloc settings, what the library leaves",
    )
    p.add_argument(
        "--cpu-devices",
        type=int,
        default=None,
        help="CPU devices vitjax splits the cores into (data parallel; 1: one device on all "
        "cores); default: the rule cpu_devices_for gives (devtools.cpu_tuning.cpu_devices_for)",
    )
    p.add_argument("--img-size", type=int, default=None, help="override the model's img_size")
    p.add_argument("--depth", type=int, default=None, help="override the model's depth")
    p.add_argument(
        "--peak",
        type=float,
        default=None,
        help="fp32 matmul GFLOP/s to use instead of measuring it",
    )
    p.add_argument(
        "--no-bound",
        action="store_true",
        help="skip timing the step's matmuls alone (the matmul-only bound, devtools.matmul_bound)",
    )
    p.add_argument(
        "--data",
        action="store_true",
        help="benchmark the data pipeline (224 px JPEG folder) instead",
    )
    p.add_argument("--data-root", default=None, help="image folder for --data (default: generated)")
    p.add_argument(
        "--train-json",
        nargs="*",
        default=[],
        help="--data: benchmark JSONs whose vitjax training images/s to compare with",
    )
    p.add_argument("--out", default=None, help="directory for <name>.json and <name>.md")
    p.add_argument("--name", default=None, help="file name stem (default: model_b<batch>)")
    a = p.parse_args(argv)

    if a.data:
        train = {}
        for path in a.train_json:
            with open(path) as f:
                r = json.load(f)
            rows = [x for x in r["results"] if x["mode"] == "jax" and x["task"] == "train"]
            if rows:
                train[r["model"]] = rows[0]["images_per_s"]
        try:
            res = bench.run_data_benchmark(a.data_root, a.batch_size, train_images_per_s=train)
        except (ValueError, OSError) as e:
            p.error(str(e))
        print(bench.data_to_markdown(res))
        if a.out:
            print("wrote", bench.write_results(res, a.out, a.name or "data_pipeline"))
        return 0

    if a.tasks == "load":
        from devtools import load_bench

        res = load_bench.run_load_benchmark(
            a.model.split(","), a.weights_dir, rounds=a.rounds, dtype=a.dtype
        )
        text = load_bench.load_to_markdown(
            res, "python scripts/benchmark.py " + " ".join(argv or sys.argv[1:])
        )
        print(text)
        if a.out:
            name = a.name or f"load_{a.dtype}"
            os.makedirs(a.out, exist_ok=True)
            with open(os.path.join(a.out, f"{name}.json"), "w") as f:
                json.dump(res, f, indent=2)
            with open(os.path.join(a.out, f"{name}.md"), "w") as f:
                f.write(text)
            print("wrote", os.path.join(a.out, f"{name}.md"))
        return 0

    modes = [m for m in a.modes.split(",") if m and not (a.skip_compile and m == "compile")]
    overrides = {k: v for k, v in (("img_size", a.img_size), ("depth", a.depth)) if v}
    peak = {"peak": a.peak} if a.peak else None
    try:
        res = bench.run_benchmark(
            a.model,
            a.batch_size,
            rounds=a.rounds,
            warmup=a.warmup,
            modes=modes,
            tasks=a.tasks.split(","),
            steps=a.steps,
            threads=a.threads,
            peak=peak,
            keep_freed_memory=a.malloc == "keep",
            cpu_devices=a.cpu_devices,
            bound=not a.no_bound,
            **overrides,
        )
    except (ValueError, OSError) as e:
        p.error(str(e))
    print(bench.to_markdown(res))
    if a.out:
        print("wrote", bench.write_results(res, a.out, a.name))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
