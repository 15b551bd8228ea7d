"""Hybrid ViT ``.npz`` checkpoints (vit_jax's ``R50+ViT-B_16.npz``, AugReg's ``R26_S_32`` /
``R50_L_32`` / ``R_Ti_16``): the ResNetV2 entries timm's ``_load_weights`` reads, beside the ViT
entries ``vitjax.weights.npz`` reads.

``conv_root`` / ``gn_root`` are the stem (``patch_embed.backbone.stem.*``, or
``patch_embed.backbone.*`` for a stem-only backbone: a file without ``block*`` entries);
``block{i+1}/unit{j+1}/conv{r}|gn{r}|conv_proj|gn_proj`` are
``stages.{i}.blocks.{j}.conv{r}|norm{r}|downsample.conv|downsample.norm``. Pure numpy.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from vitjax.weights import npz
from vitjax.weights.errors import CheckpointError

_BACKBONE = "patch_embed.backbone."
# npz entry (no prefix) -> timm key under patch_embed.backbone.{stem.}
_ROOT = {"conv_root/kernel": "conv.weight", "gn_root/scale": "norm.weight",
         "gn_root/bias": "norm.bias"}  # fmt: skip
_UNIT = re.compile(
    r"^block(\d+)/unit(\d+)/(conv[123]|conv_proj|gn[123]|gn_proj)/(kernel|scale|bias)$"
)
_UNIT_PARTS = {"conv_proj": "downsample.conv", "gn_proj": "downsample.norm"}
_LEAVES = {"kernel": "weight", "scale": "weight", "bias": "bias"}
_TIMM_STAGE = re.compile(r"^stages\.(\d+)\.blocks\.(\d+)\.(conv[123]|norm[123]|downsample\.conv|"
                         r"downsample\.norm)\.(weight|bias)$")  # fmt: skip


def is_backbone_entry(name: str) -> bool:
    """Whether an npz entry (prefix removed) belongs to the hybrid's ResNetV2 backbone."""
    return name in _ROOT or _UNIT.match(name) is not None


def _unit_key(m: re.Match) -> str:
    block, unit, part, leaf = m.groups()
    if part.startswith("gn") and part != "gn_proj":
        part = "norm" + part[2:]
    part = _UNIT_PARTS.get(part, part)
    return f"stages.{int(block) - 1}.blocks.{int(unit) - 1}.{part}.{_LEAVES[leaf]}"


def backbone_key(name: str, stem_only: bool) -> str:
    """timm key of a backbone npz entry (prefix removed)."""
    if name in _ROOT:
        return _BACKBONE + ("" if stem_only else "stem.") + _ROOT[name]
    m = _UNIT.match(name)
    if m is None:
        raise KeyError(name)
    return _BACKBONE + _unit_key(m)


class _View:
    """An npz archive with some entries hidden: what vitjax.weights.npz reads as a plain ViT."""

    def __init__(self, archive: Any, hidden: set[str]) -> None:
        self.archive, self.hidden = archive, hidden

    def keys(self) -> list[str]:
        return [k for k in self.archive.keys() if k not in self.hidden]

    def shape(self, key: str) -> tuple[int, ...]:
        return self.archive.shape(key)

    def read(self, key: str) -> np.ndarray:
        return self.archive.read(key)


def _prefix(names: list[str]) -> str | None:
    return next((p for p in npz._PREFIXES if f"{p}embedding/kernel" in names), None)


def load_npz(path: str | os.PathLike, max_bytes: int | None = None) -> dict[str, np.ndarray]:
    """timm-key state_dict from a vit_jax / big_vision .npz, hybrid (ResNetV2) or plain ViT."""
    archive = npz._Archive(path, max_bytes)
    try:
        names = archive.keys()
        prefix = _prefix(names)
        backbone = {
            k for k in names
            if prefix is not None and k.startswith(prefix) and is_backbone_entry(k[len(prefix):])
        }  # fmt: skip
        sd = npz._read_layout(_View(archive, backbone), path)
        if not backbone:
            return sd
        if f"{prefix}conv_root/kernel" not in backbone:
            raise CheckpointError(f"{path}: hybrid npz entries without conv_root/kernel")
        stem_only = not any(_UNIT.match(k[len(prefix) :]) for k in backbone)
        for k in sorted(backbone):
            sd[backbone_key(k[len(prefix) :], stem_only)] = npz._n2p(archive.read(k))
        return sd
    finally:
        archive.close()


def _entry(key: str) -> str:
    """npz entry of a timm backbone key (under patch_embed.backbone.); KeyError if none."""
    k = key[len(_BACKBONE) :].removeprefix("stem.")
    for name, leaf in _ROOT.items():
        if k == leaf:
            return name
    m = _TIMM_STAGE.match(k)
    if m is None:
        raise KeyError(key)
    stage, block, part, leaf = m.groups()
    part = {"downsample.conv": "conv_proj", "downsample.norm": "gn_proj"}.get(part, part)
    part = part.replace("norm", "gn")
    jax_leaf = "kernel" if part.startswith("conv") else {"weight": "scale"}.get(leaf, leaf)
    return f"block{int(stage) + 1}/unit{int(block) + 1}/{part}/{jax_leaf}"


def to_npz_arrays(
    state_dict: Mapping[str, Any], num_heads: int, layout: str = "vit_jax", stacked: bool = False
) -> dict[str, np.ndarray]:
    """timm-key state_dict (plain or ResNetV2 hybrid) -> npz entries timm's _load_weights reads."""
    sd = {k: np.asarray(v) for k, v in state_dict.items()}
    backbone = {k: v for k, v in sd.items() if k.startswith(_BACKBONE)}
    out = npz.to_npz_arrays(
        {k: v for k, v in sd.items() if k not in backbone}, num_heads, layout, stacked
    )
    extra = []
    for k, v in backbone.items():
        try:
            name = _entry(k)
        except KeyError:
            extra.append(k)
            continue
        out[name] = v.transpose(2, 3, 1, 0) if v.ndim == 4 else v  # OIHW -> HWIO
    if extra:
        raise ValueError(
            f"the npz layouts have no place for {sorted(extra)[:10]} (timm's _load_weights reads "
            "only ResNetV2 hybrid backbones)"
        )
    return out


def save_npz(
    path: str | os.PathLike,
    state_dict: Mapping[str, Any],
    num_heads: int,
    layout: str = "vit_jax",
    stacked: bool = False,
    prefix: str = "",
) -> Path:
    """Write a timm-key state_dict (plain or hybrid) as a .npz that timm's _load_weights reads."""
    arrays = to_npz_arrays(state_dict, num_heads, layout, stacked)
    path = Path(path)
    np.savez(path, **{prefix + k: np.ascontiguousarray(v) for k, v in arrays.items()})
    return path
