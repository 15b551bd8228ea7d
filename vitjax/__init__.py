"""vitjax: timm's Vision Transformers in JAX/Flax, proven identical to PyTorch.

Attributes load lazily, so ``import vitjax.configs`` (used by vittorch) needs no jax, and
``import vitjax`` never imports torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ViTConfig": "vitjax.configs",
    "VARIANTS": "vitjax.configs",
    "get_config": "vitjax.configs",
    "list_models": "vitjax.configs",
    "VisionTransformer": "vitjax.vit",
    "create_model": "vitjax.models",
    "from_timm": "vitjax.models",
    "to_timm_state_dict": "vitjax.models",
    "save_pretrained": "vitjax.models",
    "load_pretrained": "vitjax.models",
    "load_checkpoint": "vitjax.models",
    "init_variables": "vitjax.models",
    "count_params": "vitjax.models",
}

_SUBMODULES = ("configs", "convert", "data", "io", "models", "runtime", "schedules", "train", "vit")
__all__ = sorted(_EXPORTS)
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f"vitjax.{name}")
    raise AttributeError(f"module 'vitjax' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
