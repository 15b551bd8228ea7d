"""Read and write weight files without running code: safetensors, safe .pth/.bin, npz, dirs.

Everything returns timm-key state_dicts of numpy arrays; torch is imported only to read .pth/.bin.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
# timm's load_checkpoint order (EMA weights first); "encoder" holds I-JEPA's ViT.
_CONTAINER_KEYS = ("state_dict_ema", "model_ema", "state_dict", "model", "module", "encoder")
_WRAPPER_PREFIXES = ("_orig_mod.", "module.", "_orig_mod.")  # torch.compile / DDP, as timm strips


class CheckpointError(ValueError):
    """A weight file that cannot be read: names the file and why."""


def load_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """All tensors of a .safetensors file as numpy arrays (numpy only)."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from e


def load_torch_file(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """A .pth/.bin checkpoint through torch.load(weights_only=True), containers unwrapped."""
    try:
        import torch
    except ImportError as e:
        raise CheckpointError(
            f"{path}: reading .pth/.bin needs PyTorch (pip install 'vitjax[torch]'), "
            "or convert the file to .safetensors"
        ) from e
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises UnpicklingError, RuntimeError, EOFError, ...
        if "weights_only" in str(e) or "Unsupported global" in str(e):
            raise CheckpointError(
                f"{path}: refused: unpickling it would run code or build objects other than "
                "tensors (torch.load weights_only=True). Load it only if you trust it, and prefer "
                ".safetensors files"
            ) from e
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({e})") from e
    return _unwrap(obj, path)


def _unwrap(obj: Any, path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The state_dict inside {'state_dict': ...} / {'model': ...} containers, as numpy."""
    while isinstance(obj, Mapping):
        inner = next((obj[k] for k in _CONTAINER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(f"{path}: holds no state_dict (found {type(obj).__name__})")
    out = {}
    for k, v in obj.items():
        if not hasattr(v, "shape"):
            continue  # counters and other metadata
        if hasattr(v, "detach"):
            v = v.detach().cpu().float().numpy() if str(v.dtype) == "torch.bfloat16" else v.numpy()
        out[str(k)] = np.asarray(v)
    return out


def clean_state_dict(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Strip DDP / torch.compile wrapper prefixes from keys, as timm's clean_state_dict."""
    out = {}
    for k, v in state_dict.items():
        for prefix in _WRAPPER_PREFIXES:
            k = k[len(prefix) :] if k.startswith(prefix) else k
        out[k] = v
    return out


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """timm-key state_dict from a .safetensors, .pth/.bin or .npz file, or a save_pretrained dir."""
    path = Path(path)
    if path.is_dir():
        if not (path / WEIGHTS_NAME).is_file():
            raise CheckpointError(f"{path}: directory has no {WEIGHTS_NAME}")
        return load_safetensors(path / WEIGHTS_NAME)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        return clean_state_dict(load_safetensors(path))
    if suffix in (".pth", ".pt", ".bin", ".ckpt"):
        return clean_state_dict(load_torch_file(path))
    if suffix == ".npz":
        from vitjax.npz import load_npz

        return load_npz(path)
    raise CheckpointError(
        f"{path}: unknown weight file type {suffix!r} (expected .safetensors, .pth, .bin, .npz)"
    )


def read_config(directory: str | os.PathLike) -> dict[str, Any]:
    """config.json of a save_pretrained directory, with a clear error naming the file."""
    path = Path(directory) / CONFIG_NAME
    try:
        with open(path) as f:
            cfg = json.load(f)
    except FileNotFoundError as e:
        raise CheckpointError(f"{path}: missing (not a save_pretrained directory?)") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(cfg, dict) or "model_config" not in cfg:
        raise CheckpointError(f"{path}: has no 'model_config' entry")
    return cfg


def write_pretrained_dir(
    directory: str | os.PathLike, config: dict[str, Any], state_dict: Mapping[str, np.ndarray]
) -> Path:
    """Write config.json + model.safetensors atomically: a crash leaves the old directory intact."""
    from safetensors.numpy import save_file

    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        tensors = {k: np.ascontiguousarray(v) for k, v in state_dict.items()}
        save_file(tensors, str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
        with open(tmp / CONFIG_NAME, "w") as f:
            json.dump(config, f, indent=2, sort_keys=True)
        old = None
        if directory.exists():
            old = directory.with_name(f".{directory.name}.old.{os.getpid()}")
            os.replace(directory, old)
        os.replace(tmp, directory)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory
