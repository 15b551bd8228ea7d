"""--verify for vitjax-convert: timm (PyTorch) and vitjax (JAX) on one batch, max |diff|.

Needs torch and timm at call time (imported lazily).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from vitjax.models.vit_timm import filter_state_dict, timm_model_args
from vitjax.registry import split_tag
from vitjax.util import to_2tuple
from vitjax.weights.files import load_state_dict


def images(module: Any, batch: int = 2, seed: int = 0, size: Any = None) -> np.ndarray:
    """A seeded NHWC float32 batch at the timm model's input size (or size)."""
    h, w = to_2tuple(size if size is not None else module.patch_embed.img_size)
    pe = module.patch_embed  # a hybrid without a projection (MobileCLIP) keeps in_chans itself
    c = getattr(pe, "in_chans", None) or pe.proj.in_channels
    return np.random.default_rng(seed).standard_normal((batch, h, w, c)).astype(np.float32)


def timm_forward(module: Any, x_nhwc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(logits, pre_logits) of a timm model on an NHWC batch."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2)))
    with torch.no_grad():
        feats = module.forward_features(x)
        return (
            module.forward_head(feats).numpy(),
            module.forward_head(feats, pre_logits=True).numpy(),
        )


def flax_forward(model: Any, variables: Any, x_nhwc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(logits, pre_logits) of a vitjax model on an NHWC batch, fp32, highest matmul precision."""
    import jax

    with jax.default_matmul_precision("highest"):
        fwd = jax.jit(lambda v, x: (model.apply(v, x), model.apply(v, x, pre_logits=True)))
        logits, pre = fwd(variables, x_nhwc)
    return np.asarray(logits), np.asarray(pre)


def max_diff(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """max |a - b|, the scale max |b| and their ratio."""
    d = float(np.abs(a.astype(np.float64) - b).max()) if a.size else 0.0
    scale = float(np.abs(b).max()) if b.size else 0.0
    return {"max_abs": d, "scale": scale, "rel": d / scale if scale else d}


def _timm_reads(name: str, cfg: Any, checkpoint: str | os.PathLike) -> tuple[Any, int]:
    """timm's own model for cfg reading checkpoint with timm's loader; its head size."""
    import timm

    path = Path(checkpoint)
    if path.is_dir():
        path = path / "model.safetensors"
    head = filter_state_dict(load_state_dict(path)).get("head.weight")
    overlay = {"file": str(path), "num_classes": 0 if head is None else int(head.shape[0])}
    if path.suffix == ".npz":
        overlay["custom_load"] = True
    module = timm.create_model(
        split_tag(name)[0],
        pretrained=True,
        pretrained_cfg_overlay=overlay,
        **timm_model_args(name, cfg),
    ).eval()
    return module, overlay["num_classes"]


def verify_conversion(
    name: str,
    model: Any,
    variables: Any,
    checkpoint: str | os.PathLike | None = None,
    batch: int = 2,
    seed: int = 0,
) -> dict[str, Any]:
    """max |diff| vs timm: exported weights (strict load) and timm reading the checkpoint itself."""
    import timm
    import torch

    from vitjax.factory import to_timm_state_dict

    cfg = model.cfg
    torch.manual_seed(seed)
    twin = timm.create_model(
        split_tag(name)[0], pretrained=False, **timm_model_args(name, cfg)
    )
    sd = {k: torch.from_numpy(np.array(v)) for k, v in to_timm_state_dict(model, variables).items()}
    twin.load_state_dict(sd, strict=True)
    twin.eval()
    x = images(twin, batch, seed)
    j_logits, j_pre = flax_forward(model, variables, x)
    t_logits, t_pre = timm_forward(twin, x)
    out: dict[str, Any] = {
        "exported": {"logits": max_diff(j_logits, t_logits), "pre_logits": max_diff(j_pre, t_pre)}
    }
    if checkpoint is not None:
        try:
            own, ckpt_classes = _timm_reads(name, cfg, checkpoint)
        except Exception as e:  # timm may not read every file vitjax reads (notebook layout, ...)
            out["checkpoint"] = {"error": f"timm could not read {checkpoint}: {e}"}
        else:
            o_logits, o_pre = timm_forward(own, x)
            out["checkpoint"] = {"pre_logits": max_diff(j_pre, o_pre)}
            if ckpt_classes == cfg.num_classes:  # same head (not a fresh one)
                out["checkpoint"]["logits"] = max_diff(j_logits, o_logits)
    return out


