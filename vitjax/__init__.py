"""vitjax: timm's Vision Transformers in JAX/Flax, proven identical to PyTorch.

Attributes load lazily: ``import vitjax`` imports neither torch nor the training stack (optax,
grain, orbax), and ``vitjax.models.vit_config`` (used by vittorch) needs no jax.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ViTConfig": "vitjax.models.vit_config",
    "VARIANTS": "vitjax.models.vit_config",
    "get_config": "vitjax.registry",
    "list_models": "vitjax.registry",
    "VisionTransformer": "vitjax.models.vit",
    "create_model": "vitjax.factory",
    "build_model": "vitjax.factory",
    "variable_shapes": "vitjax.factory",
    "from_timm": "vitjax.factory",
    "to_timm_state_dict": "vitjax.factory",
    "save_pretrained": "vitjax.factory",
    "load_pretrained": "vitjax.factory",
    "load_checkpoint": "vitjax.factory",
    "init_variables": "vitjax.factory",
    "count_params": "vitjax.factory",
}

_SUBMODULES = (
    "cli",
    "data",
    "factory",
    "layers",
    "models",
    "nnx",
    "registry",
    "training",
    "util",
    "weights",
)
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
    return sorted(set(globals()) | set(_EXPORTS) | set(_SUBMODULES))
