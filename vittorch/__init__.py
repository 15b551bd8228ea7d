"""vittorch: the PyTorch reference Vision Transformer (timm's module names; never imports jax)."""

from __future__ import annotations

from typing import Any

from vitjax.models.vit_config import VARIANTS, ViTConfig
from vitjax.registry import get_config, list_models
from vittorch.vit import (
    Attention,
    AttentionPoolLatent,
    Block,
    LayerScale,
    Mlp,
    PatchEmbed,
    VisionTransformer,
    count_params,
)


def create_model(name: str, **overrides: Any) -> VisionTransformer:
    """Build a randomly initialised VisionTransformer by model name, with config overrides."""
    return VisionTransformer(get_config(name, **overrides))


__all__ = [
    "VARIANTS",
    "Attention",
    "AttentionPoolLatent",
    "Block",
    "LayerScale",
    "Mlp",
    "PatchEmbed",
    "ViTConfig",
    "VisionTransformer",
    "count_params",
    "create_model",
    "get_config",
    "list_models",
]
