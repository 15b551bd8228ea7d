"""Inference on image files: load a trained model or checkpoint, top-k labels per image.

What vitjax-predict calls. Needs only the core install (numpy, PIL, jax, flax).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vitjax.factory import create_model, load_pretrained
from vitjax.training.checkpoints import MODEL_DIR
from vitjax.training.data import IMG_EXTENSIONS, read_image
from vitjax.training.transforms import EvalTransform, data_config_from_pretrained_cfg
from vitjax.util import to_2tuple
from vitjax.weights import files as io
from vitjax.weights import hub


def list_images(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Image files of paths: files as given, folders searched recursively (image files only).

    Links are followed once each (by real path), so a link loop cannot repeat or hang the walk.
    """
    out: list[Path] = []
    seen: set[str] = set()
    for p in map(Path, paths):
        if not p.exists():
            raise FileNotFoundError(f"{p}: no such file or directory")
        if not p.is_dir():
            out.append(p)
            continue
        found = []
        for root, dirs, files in os.walk(p, followlinks=True):
            real = os.path.realpath(root)
            if real in seen:
                dirs[:] = []
                continue
            seen.add(real)
            dirs.sort()
            found += [Path(root) / f for f in sorted(files) if f.lower().endswith(IMG_EXTENSIONS)]
        if not found:
            raise FileNotFoundError(f"{p}: no image files ({', '.join(IMG_EXTENSIONS)}) in it")
        out += found
    return out


def label_names(pretrained_cfg: dict[str, Any], num_classes: int) -> list[str]:
    """Class names: the pretrained config's label_names when they fit, else class indices."""
    names = pretrained_cfg.get("label_names") or []
    return (
        [str(n) for n in names]
        if len(names) == num_classes
        else [str(i) for i in range(num_classes)]
    )


def _pretrained_cfg_of(name: str, model: Any) -> dict[str, Any]:
    """timm's pretrained config of a model name (preprocessing, ImageNet labels), if known."""
    try:
        return hub.fit_pretrained_cfg(hub.export_pretrained_cfg(name), model.cfg)
    except (ValueError, ImportError, KeyError):
        return {}


def load_trained(
    path: str | os.PathLike, model_name: str | None = None, **overrides: Any
) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """Model, variables and pretrained_cfg from a save_pretrained dir, a run dir or a weight file.

    A weight file (.safetensors, .pth, .npz) needs model_name (and overrides such as num_classes).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or directory")
    if path.is_dir() and not (path / io.CONFIG_NAME).is_file() and (path / MODEL_DIR).is_dir():
        path = path / MODEL_DIR  # a vitjax-train run directory
    if path.is_dir():
        model, variables = load_pretrained(path)
        return model, variables, dict(io.read_config(path).get("pretrained_cfg") or {})
    if model_name is None:
        raise ValueError(f"{path}: a weight file needs the model name (--model)")
    model, variables = create_model(model_name, checkpoint_path=path, **overrides)
    return model, variables, _pretrained_cfg_of(model_name, model)


def probabilities_fn(model: Any) -> Any:
    """Jitted (variables, images) -> class probabilities (float32). The weights are an argument,
    not constants of the program: baked in, a vit_base's 350 MB went through XLA's compiler (and
    into a compilation cache) on every call site."""
    return jax.jit(lambda v, x: jax.nn.softmax(model.apply(v, x).astype(jnp.float32)))


def predict_files(
    model: Any,
    variables: dict[str, Any],
    pretrained_cfg: dict[str, Any],
    paths: Sequence[str | os.PathLike],
    topk: int = 5,
    batch_size: int = 32,
) -> list[list[tuple[str, float]]]:
    """Top-k (label, probability) per image file, with the model's eval preprocessing."""
    cfg = model.cfg
    input_size = (cfg.in_chans, *to_2tuple(cfg.img_size))
    transform = EvalTransform(
        data_config_from_pretrained_cfg(pretrained_cfg, input_size=input_size)
    )
    names = label_names(pretrained_cfg, cfg.num_classes)
    probabilities = probabilities_fn(model)
    results = []
    for i in range(0, len(paths), batch_size):
        chunk = paths[i : i + batch_size]
        x = np.stack([transform(read_image(p)) for p in chunk])
        probs = np.asarray(probabilities(variables, x))
        for row in probs:
            top = np.argsort(-row)[:topk]
            results.append([(str(names[j]), float(row[j])) for j in top])
    return results
