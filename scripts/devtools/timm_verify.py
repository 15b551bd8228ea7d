"""Prove conversions against timm: one set of weights, the real file path, same images, max |diff|.

Needs torch and timm at call time (imported lazily); used by scripts/timm_coverage.py
and the parity tests (vitjax-convert --verify is vitjax.cli.verify).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from vitjax.cli.verify import (  # noqa: F401  (re-exported for the tests)
    flax_forward,
    images,
    max_diff,
    timm_forward,
    verify_conversion,
)

FORMATS = ("safetensors", "pth", "npz_vit_jax", "npz_big_vision")


def randomize_(module: Any, seed: int = 0) -> Any:
    """Give every timm parameter non-trivial values (unit-scale activations); eval mode."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if p.ndim >= 2 and name.endswith("weight"):
                fan_in = int(np.prod(p.shape[1:]))
                p.copy_(noise * fan_in**-0.5)
            elif name.endswith("gamma"):  # LayerScale: make every block count
                p.copy_(0.5 + 0.1 * noise)
            elif name.endswith("weight"):  # norm scales
                p.copy_(1.0 + 0.1 * noise)
            else:  # biases, tokens, position embeddings, latent query
                p.copy_(0.2 * noise)
    return module.eval()


def make_timm(name: str, seed: int = 0, **kwargs: Any) -> Any:
    """timm.create_model(name, pretrained=False, **kwargs) with randomized weights, eval mode."""
    import timm
    import torch

    torch.manual_seed(seed)
    return randomize_(timm.create_model(name, pretrained=False, **kwargs), seed)


def save_timm_checkpoint(module: Any, path: str | os.PathLike, fmt: str) -> Path:
    """Write a timm model's weights as timm users store them: safetensors, .pth or .npz."""
    import torch

    sd = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    path = Path(path)
    if fmt == "safetensors":
        from safetensors.torch import save_file

        save_file(sd, str(path.with_suffix(".safetensors")))
        return path.with_suffix(".safetensors")
    if fmt == "pth":
        torch.save({"state_dict": sd, "epoch": 3}, path.with_suffix(".pth"))
        return path.with_suffix(".pth")
    if fmt.startswith("npz_"):
        from vitjax.weights.npz import save_npz

        heads = module.blocks[0].attn.num_heads
        layout = fmt[len("npz_") :]
        prefix = "params/" if layout == "big_vision" else ""
        return save_npz(
            path.with_suffix(".npz"),
            {k: v.numpy() for k, v in sd.items()},
            heads,
            layout=layout,
            stacked=layout == "big_vision",
            prefix=prefix,
        )
    raise ValueError(f"fmt={fmt!r}: expected one of {FORMATS}")


def check_name(
    name: str,
    fmt: str = "safetensors",
    batch: int = 2,
    seed: int = 0,
    workdir: str | os.PathLike | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """timm model (kwargs, e.g. depth=2) -> file -> vitjax.create_model(name): outputs and diffs."""
    from vitjax.factory import create_model

    module = make_timm(name, seed, **kwargs)
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        path = save_timm_checkpoint(module, Path(tmp) / "ckpt", fmt)
        model, variables = create_model(name, checkpoint_path=path, **kwargs)
    x = images(module, batch, seed)
    t_logits, t_pre = timm_forward(module, x)
    j_logits, j_pre = flax_forward(model, variables, x)
    return {
        "name": name,
        "fmt": fmt,
        "kwargs": kwargs,
        "timm": {"logits": t_logits, "pre_logits": t_pre},
        "jax": {"logits": j_logits, "pre_logits": j_pre},
        "logits": max_diff(j_logits, t_logits),
        "pre_logits": max_diff(j_pre, t_pre),
    }


def timm_vit_names() -> list[str]:
    """Every timm name the coverage table lists: vit_*, deit* and test_vit*."""
    import timm

    return [n for p in ("vit_*", "deit*", "test_vit*") for n in timm.list_models(p)]


def coverage_row(name: str, full_depth: bool = False, workdir: Any = None) -> dict[str, Any]:
    """One coverage-table row: timm class, converts or why not, and max |diff| on the logits."""
    import time
    import warnings

    import timm
    import torch

    from vitjax.models.vit_config import VARIANTS
    from vitjax.models.vit_timm import UnsupportedModelError, config_from_timm
    from vitjax.registry import get_config

    with warnings.catch_warnings(), torch.device("meta"):
        warnings.simplefilter("ignore")
        try:
            meta = timm.create_model(name, pretrained=False, depth=1)
        except Exception:  # a class without a (free) depth argument
            meta = timm.create_model(name, pretrained=False)
    row: dict[str, Any] = {"name": name, "class": type(meta).__name__}
    try:
        cfg = config_from_timm(meta)
    except UnsupportedModelError as e:
        return {**row, "converts": False, "note": str(e).replace(" is not supported by vitjax", "")}
    if name not in VARIANTS or get_config(name, depth=1) != cfg:
        return {**row, "converts": False, "note": "VARIANTS row differs from timm"}
    full = get_config(name)
    kwargs = {} if full_depth or full.depth <= 2 else {"depth": 2}
    batch = 1 if full.num_patches > 1024 else 2
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            r = check_name(name, "safetensors", batch=batch, workdir=workdir, **kwargs)
        except Exception as e:  # a failure is a row of the table, not the end of the run
            return {**row, "converts": False, "note": f"error: {type(e).__name__}: {e}"}
    return {
        **row, "converts": True, "depth": kwargs.get("depth", full.depth), "of": full.depth,
        "img_size": full.img_size, "batch": batch, "logits": r["logits"],
        "pre_logits": r["pre_logits"], "seconds": time.perf_counter() - start,
    }  # fmt: skip
