"""Pure-Python helpers shared across vitjax (no jax, no torch): sizes, constants, atomic writes."""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

# timm's data constants (timm/data/constants.py).
IMAGENET_DEFAULT_MEAN = (0.485, 0.456, 0.406)
IMAGENET_DEFAULT_STD = (0.229, 0.224, 0.225)
IMAGENET_INCEPTION_MEAN = (0.5, 0.5, 0.5)
IMAGENET_INCEPTION_STD = (0.5, 0.5, 0.5)
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
DEFAULT_CROP_PCT = 0.875

# Kernel switches (vitjax.layers.attention / linear); "auto" chooses per platform.
ATTN_IMPLS = ("auto", "xla", "cpu", "cudnn")
DENSE_IMPLS = ("auto", "xla", "cpu")


def to_2tuple(x: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    """Return (x, x) for an int, the pair itself otherwise."""
    if isinstance(x, (tuple, list)):
        a, b = x
        return int(a), int(b)
    return int(x), int(x)


@functools.lru_cache(maxsize=64, typed=True)  # typed: 1 and 1.0 are other calls
def _kept(fn: Any, *args: Any, **kw: Any) -> Any:
    return fn(*args, **kw)


def kept_call(fn: Any, *args: Any, **kw: Any) -> Any:
    """fn(*args, **kw), the same object again for equal arguments (of equal types).

    For pure builders of functions (optax transformations, lr schedules): jax compares a
    TrainState's static fields by ==, so two runs with equal settings then share their compiled
    train and eval steps instead of compiling them again. Unhashable arguments build afresh.
    """
    try:
        hash((args, tuple(kw.items())))
    except TypeError:
        return fn(*args, **kw)
    return _kept(fn, *args, **kw)


def write_atomic(path: str | os.PathLike, data: str | bytes) -> Path:
    """Write data to path through a temporary file in its folder and os.replace."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    try:
        with open(tmp, "wb" if isinstance(data, bytes) else "w") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def config_to_dict(cfg: Any, tuple_fields: tuple[str, ...]) -> dict[str, Any]:
    """JSON-ready dict of every field of a config dataclass (tuple fields as lists)."""
    d = dataclasses.asdict(cfg)
    for k in tuple_fields:
        if isinstance(d.get(k), tuple):
            d[k] = list(d[k])
    return d


def config_from_dict(cls: type, d: Mapping[str, Any], tuple_fields: tuple[str, ...]) -> Any:
    """Inverse of config_to_dict; unknown keys are an error naming them."""
    unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields: {unknown}")
    d = {k: tuple(v) if k in tuple_fields and isinstance(v, list) else v for k, v in d.items()}
    return cls(**d)
