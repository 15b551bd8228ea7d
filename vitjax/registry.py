"""Model names: timm name -> (family, config kwargs); list_models; get_config.

A family is two modules: one holding ``CONFIG`` (its dataclass) and ``VARIANTS`` (timm name ->
kwargs), and one holding ``MODEL`` (the Flax module) and the timm rules (``TIMM_CLASSES``,
``config_from_timm``, ``checkpoint_filter_fn``). For the vit family the first is pure Python
(vittorch builds from it); a new family may keep both in one file. Adding a family is one line
here.
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib
from types import ModuleType
from typing import Any

# family -> (module with CONFIG and VARIANTS, module with MODEL and the timm rules)
FAMILIES: dict[str, tuple[str, str]] = {
    "vit": ("vitjax.models.vit_config", "vitjax.models.vit"),
    "relpos": ("vitjax.models.relpos", "vitjax.models.relpos"),
}


def split_tag(name: str) -> tuple[str, str]:
    """'vit_base_patch16_224.augreg_in1k' -> ('vit_base_patch16_224', 'augreg_in1k')."""
    arch, _, tag = name.partition(".")
    return arch, tag


def config_module(family: str) -> ModuleType:
    """The module holding a family's CONFIG and VARIANTS."""
    return importlib.import_module(FAMILIES[family][0])


def model_module(family: str) -> ModuleType:
    """The module holding a family's MODEL and timm rules."""
    return importlib.import_module(FAMILIES[family][1])


def find_family(arch: str) -> str | None:
    """The family whose VARIANTS hold arch (families are searched in FAMILIES order)."""
    for family in FAMILIES:
        if arch in config_module(family).VARIANTS:
            return family
    return None


def list_models(pattern: str = "*", family: str | None = None) -> list[str]:
    """Sorted model names matching a shell-style pattern (of one family, or all)."""
    families = [family] if family else list(FAMILIES)
    names = {n for f in families for n in config_module(f).VARIANTS}
    return sorted(n for n in names if fnmatch.fnmatch(n, pattern))


def unknown_name_error(name: str, family: str | None = None) -> ValueError:
    """A ValueError for an unknown name, with the closest known names."""
    close = difflib.get_close_matches(name, list_models(family=family), n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return ValueError(f"unknown model name {name!r}{hint} (see vitjax.list_models())")


def resolve(name: str) -> tuple[str, str, str]:
    """(family, arch, tag) for 'arch[.tag]'; unknown names raise with the closest matches."""
    arch, tag = split_tag(name)
    family = find_family(arch)
    if family is None:
        raise unknown_name_error(arch)
    return family, arch, tag


def get_config(name: str, **overrides: Any) -> Any:
    """The config for a model name (a timm '.tag' is ignored) with keyword overrides."""
    family, arch, _ = resolve(name)
    mod = config_module(family)
    return mod.CONFIG(**{**mod.VARIANTS[arch], **overrides})


def family_of_model(model: Any) -> str:
    """The family whose MODEL class built this Flax module."""
    module_name = type(model).__module__
    for family, (_, mod) in FAMILIES.items():
        if mod == module_name:
            return family
    raise TypeError(f"{type(model).__name__} is not a vitjax model family's MODEL")


def family_of_timm(module: Any) -> str:
    """The family that reads this timm model instance (by its class name)."""
    cls = type(module).__name__
    for family in FAMILIES:
        if cls in model_module(family).TIMM_CLASSES:
            return family
    from vitjax.models.common import UnsupportedModelError

    raise UnsupportedModelError(f"timm class {cls} is not supported by vitjax")
