"""timm's deprecated names of the vision_transformer family -> 'arch.tag', without timm installed.

timm (1.0.31) still builds old names such as ``vit_base_patch16_224_in21k`` by mapping them to an
``arch.tag`` (``vit_base_patch16_224.augreg_in21k``) with a UserWarning; ``DEPRECATED`` is that
map for the modules whose models are timm's VisionTransformer, and ``PRETRAINED`` holds, for each
tag, the pretrained-config fields that change the model (num_classes, input_size) and its
preprocessing (mean, std, crop_pct, crop_mode, interpolation). A tag timm maps to but no longer
has (the two ``*_sam`` names) is absent from ``PRETRAINED``: timm refuses those names too.
``from_timm()`` rebuilds both tables from an installed timm (parity_tests/test_old_names.py).
"""

from __future__ import annotations

from typing import Any

from vitjax.util import (
    IMAGENET_DEFAULT_MEAN,
    IMAGENET_DEFAULT_STD,
    IMAGENET_INCEPTION_MEAN,
    IMAGENET_INCEPTION_STD,
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
)

# timm.models modules whose deprecations these tables hold (all build VisionTransformer).
TIMM_MODULES = ("vision_transformer", "deit", "vision_transformer_hybrid")
PRETRAINED_FIELDS = (
    "num_classes", "input_size", "fixed_input_size", "mean", "std", "crop_pct", "crop_mode",
    "interpolation",
)  # fmt: skip

_INCEPTION = dict(mean=IMAGENET_INCEPTION_MEAN, std=IMAGENET_INCEPTION_STD)
_IMAGENET = dict(mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD)
_CLIP = dict(mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD)


def _cfg(
    num_classes: int,
    size: int,
    crop_pct: float,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    interpolation: str = "bicubic",
) -> dict[str, Any]:
    return dict(
        num_classes=num_classes, input_size=(3, size, size), fixed_input_size=True, mean=mean,
        std=std, crop_pct=crop_pct, crop_mode="center", interpolation=interpolation,
    )  # fmt: skip


# fmt: off
DEPRECATED: dict[str, str | None] = {
    # timm.models.vision_transformer
    "vit_tiny_patch16_224_in21k": "vit_tiny_patch16_224.augreg_in21k",
    "vit_small_patch32_224_in21k": "vit_small_patch32_224.augreg_in21k",
    "vit_small_patch16_224_in21k": "vit_small_patch16_224.augreg_in21k",
    "vit_base_patch32_224_in21k": "vit_base_patch32_224.augreg_in21k",
    "vit_base_patch16_224_in21k": "vit_base_patch16_224.augreg_in21k",
    "vit_base_patch8_224_in21k": "vit_base_patch8_224.augreg_in21k",
    "vit_large_patch32_224_in21k": "vit_large_patch32_224.orig_in21k",
    "vit_large_patch16_224_in21k": "vit_large_patch16_224.augreg_in21k",
    "vit_huge_patch14_224_in21k": "vit_huge_patch14_224.orig_in21k",
    "vit_base_patch32_224_sam": "vit_base_patch32_224.sam",
    "vit_base_patch16_224_sam": "vit_base_patch16_224.sam",
    "vit_small_patch16_224_dino": "vit_small_patch16_224.dino",
    "vit_small_patch8_224_dino": "vit_small_patch8_224.dino",
    "vit_base_patch16_224_dino": "vit_base_patch16_224.dino",
    "vit_base_patch8_224_dino": "vit_base_patch8_224.dino",
    "vit_base_patch16_224_miil_in21k": "vit_base_patch16_224_miil.in21k",
    "vit_base_patch32_224_clip_laion2b": "vit_base_patch32_clip_224.laion2b",
    "vit_large_patch14_224_clip_laion2b": "vit_large_patch14_clip_224.laion2b",
    "vit_huge_patch14_224_clip_laion2b": "vit_huge_patch14_clip_224.laion2b",
    "vit_giant_patch14_224_clip_laion2b": "vit_giant_patch14_clip_224.laion2b",
    # timm.models.deit
    "deit3_small_patch16_224_in21ft1k": "deit3_small_patch16_224.fb_in22k_ft_in1k",
    "deit3_small_patch16_384_in21ft1k": "deit3_small_patch16_384.fb_in22k_ft_in1k",
    "deit3_medium_patch16_224_in21ft1k": "deit3_medium_patch16_224.fb_in22k_ft_in1k",
    "deit3_base_patch16_224_in21ft1k": "deit3_base_patch16_224.fb_in22k_ft_in1k",
    "deit3_base_patch16_384_in21ft1k": "deit3_base_patch16_384.fb_in22k_ft_in1k",
    "deit3_large_patch16_224_in21ft1k": "deit3_large_patch16_224.fb_in22k_ft_in1k",
    "deit3_large_patch16_384_in21ft1k": "deit3_large_patch16_384.fb_in22k_ft_in1k",
    "deit3_huge_patch14_224_in21ft1k": "deit3_huge_patch14_224.fb_in22k_ft_in1k",
    # timm.models.vision_transformer_hybrid
    "vit_tiny_r_s16_p8_224_in21k": "vit_tiny_r_s16_p8_224.augreg_in21k",
    "vit_small_r26_s32_224_in21k": "vit_small_r26_s32_224.augreg_in21k",
    "vit_base_r50_s16_224_in21k": "vit_base_r50_s16_224.orig_in21k",
    "vit_base_resnet50_224_in21k": "vit_base_r50_s16_224.orig_in21k",
    "vit_large_r50_s32_224_in21k": "vit_large_r50_s32_224.augreg_in21k",
    "vit_base_resnet50_384": "vit_base_r50_s16_384.orig_in21k_ft_in1k",
}
PRETRAINED: dict[str, dict[str, Any]] = {
    "vit_tiny_patch16_224.augreg_in21k": _cfg(21843, 224, 0.9, **_INCEPTION),
    "vit_small_patch32_224.augreg_in21k": _cfg(21843, 224, 0.9, **_INCEPTION),
    "vit_small_patch16_224.augreg_in21k": _cfg(21843, 224, 0.9, **_INCEPTION),
    "vit_base_patch32_224.augreg_in21k": _cfg(21843, 224, 0.9, **_INCEPTION),
    "vit_base_patch16_224.augreg_in21k": _cfg(21843, 224, 0.9, **_INCEPTION),
    "vit_base_patch8_224.augreg_in21k": _cfg(21843, 224, 0.9, **_INCEPTION),
    "vit_large_patch32_224.orig_in21k": _cfg(0, 224, 0.9, **_INCEPTION),
    "vit_large_patch16_224.augreg_in21k": _cfg(21843, 224, 0.9, **_INCEPTION),
    "vit_huge_patch14_224.orig_in21k": _cfg(0, 224, 0.9, **_INCEPTION),
    "vit_small_patch16_224.dino": _cfg(0, 224, 0.9, **_IMAGENET),
    "vit_small_patch8_224.dino": _cfg(0, 224, 0.9, **_IMAGENET),
    "vit_base_patch16_224.dino": _cfg(0, 224, 0.9, **_IMAGENET),
    "vit_base_patch8_224.dino": _cfg(0, 224, 0.9, **_IMAGENET),
    "vit_base_patch16_224_miil.in21k": _cfg(
        11221, 224, 0.875, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), interpolation="bilinear"
    ),
    "vit_base_patch32_clip_224.laion2b": _cfg(512, 224, 0.9, **_CLIP),
    "vit_large_patch14_clip_224.laion2b": _cfg(768, 224, 1.0, **_INCEPTION),
    "vit_huge_patch14_clip_224.laion2b": _cfg(1024, 224, 1.0, **_CLIP),
    "vit_giant_patch14_clip_224.laion2b": _cfg(1024, 224, 1.0, **_CLIP),
    "deit3_small_patch16_224.fb_in22k_ft_in1k": _cfg(1000, 224, 1.0, **_IMAGENET),
    "deit3_small_patch16_384.fb_in22k_ft_in1k": _cfg(1000, 384, 1.0, **_IMAGENET),
    "deit3_medium_patch16_224.fb_in22k_ft_in1k": _cfg(1000, 224, 1.0, **_IMAGENET),
    "deit3_base_patch16_224.fb_in22k_ft_in1k": _cfg(1000, 224, 1.0, **_IMAGENET),
    "deit3_base_patch16_384.fb_in22k_ft_in1k": _cfg(1000, 384, 1.0, **_IMAGENET),
    "deit3_large_patch16_224.fb_in22k_ft_in1k": _cfg(1000, 224, 1.0, **_IMAGENET),
    "deit3_large_patch16_384.fb_in22k_ft_in1k": _cfg(1000, 384, 1.0, **_IMAGENET),
    "deit3_huge_patch14_224.fb_in22k_ft_in1k": _cfg(1000, 224, 1.0, **_IMAGENET),
    "vit_tiny_r_s16_p8_224.augreg_in21k": _cfg(21843, 224, 0.9, **_INCEPTION),
    "vit_small_r26_s32_224.augreg_in21k": _cfg(21843, 224, 0.9, **_INCEPTION),
    "vit_base_r50_s16_224.orig_in21k": _cfg(0, 224, 0.9, **_INCEPTION),
    "vit_large_r50_s32_224.augreg_in21k": _cfg(21843, 224, 0.9, **_INCEPTION),
    "vit_base_r50_s16_384.orig_in21k_ft_in1k": _cfg(1000, 384, 1.0, **_INCEPTION),
}
# fmt: on


def deprecation_message(old: str, current: str) -> str:
    """timm's warning text for an old name (timm.models._registry._deprecated_model_shim)."""
    return f"Mapping deprecated model name {old} to current {current}."


def pretrained_cfg(name: str) -> dict[str, Any]:
    """The pretrained-config fields of an old name's tag (or of an 'arch.tag' in the table)."""
    tag = DEPRECATED.get(name, name)
    if tag is None or tag not in PRETRAINED:
        raise ValueError(f"no pretrained config for {name!r} in vitjax's deprecated-name table")
    return dict(PRETRAINED[tag])


def from_timm() -> tuple[dict[str, str | None], dict[str, dict[str, Any]]]:
    """(DEPRECATED, PRETRAINED) as the installed timm has them."""
    from timm.models import get_pretrained_cfg
    from timm.models._registry import get_deprecated_models

    deprecated: dict[str, str | None] = {}
    for module in TIMM_MODULES:
        deprecated.update(get_deprecated_models(module))
    pretrained: dict[str, dict[str, Any]] = {}
    for tag in deprecated.values():
        try:
            cfg = get_pretrained_cfg(tag) if tag else None
        except RuntimeError:  # timm maps the name to a tag it no longer has
            continue
        if cfg is not None:
            d = cfg.to_dict()
            pretrained[tag] = {k: d[k] for k in PRETRAINED_FIELDS}
    return deprecated, pretrained
