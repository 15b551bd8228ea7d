"""Pretrained weights without a network: timm's pretrained config + the Hugging Face hub cache.

``pretrained_checkpoint(name)`` finds the file timm would load for ``name`` (``arch`` or
``arch.tag``) in the local Hugging Face cache (``HF_HUB_CACHE``, ``HF_HOME/hub`` or
``~/.cache/huggingface/hub``) or torch's hub cache, and never downloads. timm is optional: without
it a small built-in table covers the most used names and ``arch.tag`` maps to ``timm/arch.tag``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from vitjax.registry import split_tag

_INCEPTION = dict(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
_IMAGENET = dict(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
_BASE_CFG = dict(
    input_size=(3, 224, 224),
    interpolation="bicubic",
    crop_pct=0.9,
    crop_mode="center",
    num_classes=1000,
    **_INCEPTION,
)

# Default tags of common models, used only when timm is not installed (from timm 1.0).
_FALLBACK: dict[str, dict[str, Any]] = {
    "vit_tiny_patch16_224": dict(tag="augreg_in21k_ft_in1k"),
    "vit_small_patch16_224": dict(tag="augreg_in21k_ft_in1k"),
    "vit_base_patch32_224": dict(tag="augreg_in21k_ft_in1k"),
    "vit_base_patch16_224": dict(tag="augreg2_in21k_ft_in1k"),
    "vit_base_patch16_384": dict(
        tag="augreg_in21k_ft_in1k", input_size=(3, 384, 384), crop_pct=1.0
    ),
    "vit_large_patch16_224": dict(tag="augreg_in21k_ft_in1k"),
    "deit_tiny_patch16_224": dict(tag="fb_in1k", **_IMAGENET),
    "deit_small_patch16_224": dict(tag="fb_in1k", **_IMAGENET),
    "deit_base_patch16_224": dict(tag="fb_in1k", **_IMAGENET),
    "deit_base_distilled_patch16_224": dict(tag="fb_in1k", **_IMAGENET),
    "deit3_base_patch16_224": dict(tag="fb_in1k", **_IMAGENET),
    "vit_small_patch14_dinov2": dict(
        tag="lvd142m", input_size=(3, 518, 518), crop_pct=1.0, num_classes=0, **_IMAGENET
    ),
    "vit_base_patch14_dinov2": dict(
        tag="lvd142m", input_size=(3, 518, 518), crop_pct=1.0, num_classes=0, **_IMAGENET
    ),
}
_EXPORTED = (
    "architecture",
    "tag",
    "hf_hub_id",
    "input_size",
    "interpolation",
    "crop_pct",
    "crop_mode",
    "mean",
    "std",
    "num_classes",
    "license",
    "label_names",
    "label_descriptions",
)


class PretrainedNotFoundError(FileNotFoundError):
    """Pretrained weights that are not in the local caches; says how to get them."""


def resolve_pretrained_cfg(name: str) -> dict[str, Any]:
    """timm's pretrained config for 'arch' or 'arch.tag' (timm if installed, else a small table)."""
    arch, tag = split_tag(name)
    try:
        from timm.models import get_pretrained_cfg
    except ImportError:
        get_pretrained_cfg = None
    if get_pretrained_cfg is not None:
        try:
            cfg = get_pretrained_cfg(name)
        except RuntimeError as e:  # unknown tag
            raise ValueError(f"{name}: {e}") from e
        if cfg is None:
            raise ValueError(f"timm has no pretrained config for {name!r}")
        return cfg.to_dict()
    known = _FALLBACK.get(arch)
    if known is not None and tag in ("", known["tag"]):
        cfg = {**_BASE_CFG, **known, "architecture": arch}
    elif tag:  # timm's hub convention; the tag's classes and input size are unknown here
        cfg = {"architecture": arch, "tag": tag}
    else:
        raise ValueError(
            f"{name}: without timm installed, give a tag (e.g. '{arch}.augreg_in1k'), pass "
            "checkpoint_path=..., or pip install timm"
        )
    cfg["hf_hub_id"] = f"timm/{arch}.{cfg['tag']}"
    return cfg


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache directory, read from the environment at call time."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or os.path.join(
        os.path.expanduser("~"), ".cache", "huggingface"
    )
    return Path(home) / "hub"


def _weight_filenames(cfg: dict[str, Any]) -> list[str]:
    """Files timm would read for this config, safetensors alternatives first (timm's order)."""
    name = cfg.get("hf_hub_filename") or "pytorch_model.bin"
    if name == "pytorch_model.bin":
        return ["model.safetensors", name]
    if name == "open_clip_pytorch_model.bin":
        return ["open_clip_model.safetensors", name]
    if name.endswith(".bin"):
        return [name[:-4] + ".safetensors", name]
    return [name]


def _snapshot(repo_dir: Path, revision: str) -> Path | None:
    if re.fullmatch(r"[0-9a-f]{40}", revision):
        return repo_dir / "snapshots" / revision
    ref = repo_dir / "refs" / revision
    return repo_dir / "snapshots" / ref.read_text().strip() if ref.is_file() else None


def cached_hf_file(
    repo_id: str,
    filename: str,
    cache_dir: str | os.PathLike | None = None,
    revision: str | None = None,
) -> Path | None:
    """Path of repo_id/filename in the hub cache (models--org--name/snapshots/<rev>/), or None."""
    cache = Path(cache_dir) if cache_dir is not None else hf_cache_dir()
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        try_to_load_from_cache = None
    if try_to_load_from_cache is not None:
        found = try_to_load_from_cache(repo_id, filename, cache_dir=str(cache), revision=revision)
        return Path(found) if isinstance(found, str) else None
    snap = _snapshot(cache / f"models--{repo_id.replace('/', '--')}", revision or "main")
    return snap / filename if snap is not None and (snap / filename).is_file() else None


def _torch_hub_file(url: str) -> Path | None:
    if not url:
        return None
    home = os.environ.get("TORCH_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "torch")
    path = Path(home) / "hub" / "checkpoints" / os.path.basename(url.split("?")[0])
    return path if path.is_file() else None


def pretrained_checkpoint(name: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Local file holding timm's pretrained weights for name; never downloads."""
    cfg = resolve_pretrained_cfg(name)
    if cfg.get("file") and Path(cfg["file"]).is_file():
        return Path(cfg["file"])
    hub_id = cfg.get("hf_hub_id")
    tried = []
    if hub_id:
        repo_id, _, revision = hub_id.partition("@")
        for filename in _weight_filenames(cfg):
            found = cached_hf_file(repo_id, filename, cache_dir, revision or None)
            if found is not None:
                return found
            tried.append(f"{repo_id}/{filename}")
    found = _torch_hub_file(cfg.get("url") or "")
    if found is not None:
        return found
    if not hub_id and not cfg.get("url"):
        raise PretrainedNotFoundError(f"{name}: timm lists no pretrained weights for it")
    where = cache_dir or hf_cache_dir()
    hint = (
        f"huggingface-cli download {hub_id.partition('@')[0]} {_weight_filenames(cfg)[0]}"
        if hub_id
        else f"download {cfg.get('url')} into $TORCH_HOME/hub/checkpoints"
    )
    raise PretrainedNotFoundError(
        f"{name}: pretrained weights are not cached locally (looked for {', '.join(tried) or '-'} "
        f"in {where}). vitjax never downloads; fetch them once with `{hint}` (or "
        f"timm.create_model({cfg.get('architecture', name)!r}, pretrained=True)), or pass "
        "checkpoint_path=..."
    )


def _labels(cfg: dict[str, Any]) -> dict[str, list[str]]:
    """ImageNet label names/descriptions for cfg's class count, when timm knows the subset."""
    try:
        from timm.data import ImageNetInfo, infer_imagenet_subset
    except ImportError:
        return {}
    subset = infer_imagenet_subset(cfg)
    if not subset:
        return {}
    info = ImageNetInfo(subset)
    names = info.label_names()
    if len(names) != cfg.get("num_classes"):
        return {}
    return {"label_names": list(names), "label_descriptions": list(info.label_descriptions())}


def fit_pretrained_cfg(pretrained_cfg: dict[str, Any], cfg: Any) -> dict[str, Any]:
    """pretrained_cfg updated to a model config: input_size, num_classes; stale labels dropped."""
    out = dict(pretrained_cfg)
    h, w = (cfg.img_size, cfg.img_size) if isinstance(cfg.img_size, int) else cfg.img_size
    out["input_size"] = [cfg.in_chans, h, w]
    if out.get("num_classes", cfg.num_classes) != cfg.num_classes:
        out.pop("label_names", None)
        out.pop("label_descriptions", None)
    out["num_classes"] = cfg.num_classes
    return out


def export_pretrained_cfg(name_or_cfg: str | dict[str, Any]) -> dict[str, Any]:
    """JSON-ready pretrained config (mean, std, interpolation, crop_pct, input_size, labels)."""
    cfg = resolve_pretrained_cfg(name_or_cfg) if isinstance(name_or_cfg, str) else name_or_cfg
    out = {k: cfg[k] for k in _EXPORTED if cfg.get(k) is not None}
    if "label_names" not in out:
        out.update(_labels(cfg))
    return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}


def save_timm_dir(
    directory: str | os.PathLike,
    name: str,
    model_args: dict[str, Any],
    cfg: Any,
    state_dict: dict[str, Any],
    pretrained_cfg: dict[str, Any] | None = None,
) -> Path:
    """Write timm's hub layout (config.json + model.safetensors), for timm's 'local-dir:DIR'."""
    from vitjax.weights.files import write_pretrained_dir

    pretrained = {k: v for k, v in (pretrained_cfg or {}).items() if k != "hf_hub_id"}
    pretrained = fit_pretrained_cfg(pretrained, cfg)
    pretrained["architecture"] = split_tag(name)[0]
    config = {
        "architecture": split_tag(name)[0],
        "num_classes": cfg.num_classes,
        "num_features": cfg.embed_dim,
        "global_pool": cfg.global_pool,
        "pretrained_cfg": pretrained,
        "model_args": {
            k: list(v) if isinstance(v, tuple) else v
            for k, v in {**model_args, "img_size": cfg.img_size}.items()
        },
    }
    return write_pretrained_dir(directory, config, state_dict)
