#!/usr/bin/env python
"""Check the core install (no `train`/`torch` extras): build, save, load and run a model.

Run in a venv holding only `pip install .`: builds vit_tutorial_patch16_32 (cut down), writes its
weights to a .safetensors file with timm's keys, loads them back through create_model, runs it,
and fails if torch, timm, grain, orbax, optax, tqdm, matplotlib or sklearn got imported.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

import vitjax

HEAVY = ("torch", "timm", "grain", "orbax", "optax", "tqdm", "matplotlib", "sklearn")


def main() -> int:
    model, variables = vitjax.create_model("vit_tutorial_patch16_32", depth=2, seed=1)
    x = np.random.default_rng(0).standard_normal((2, 32, 32, 3)).astype(np.float32)
    ref = np.asarray(model.apply(variables, x))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.safetensors"
        save_file(vitjax.to_timm_state_dict(model, variables), str(path))
        loaded, loaded_vars = vitjax.create_model(
            "vit_tutorial_patch16_32", depth=2, checkpoint_path=path
        )
        out = np.asarray(loaded.apply(loaded_vars, x))
    if not np.array_equal(out, ref):
        print(f"core check: reloaded logits differ by {np.abs(out - ref).max():.3e}")
        return 1
    heavy = sorted(m for m in HEAVY if m in sys.modules)
    if heavy:
        print(f"core check: the core path imported {heavy}")
        return 1
    print(f"core check: ok (logits {out.shape}, reloaded bit-identical, none of {HEAVY} imported)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
