"""Model names: timm name -> (family, config kwargs); deprecated names; list_models; get_config.

A family is two modules: one holding ``CONFIG`` (its dataclass) and ``VARIANTS`` (timm name ->
kwargs), and one holding ``MODEL`` (the Flax module) and the timm rules (``TIMM_CLASSES``,
``config_from_timm``, ``checkpoint_filter_fn``). For the vit family the first is pure Python
(vittorch builds from it); a new family may keep both in one file. Adding a family is one line
here. timm's old names (``vit_base_patch16_224_in21k``) resolve as timm resolves them, to an
``arch.tag`` with that tag's class count and input size, with timm's warning
(``vitjax.models.deprecated`` holds the table).
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import importlib
import warnings
from types import ModuleType
from typing import Any

from vitjax.models.deprecated import DEPRECATED, PRETRAINED, deprecation_message

# family -> (module with CONFIG and VARIANTS, module with MODEL and the timm rules)
FAMILIES: dict[str, tuple[str, str]] = {
    "vit": ("vitjax.models.vit_config", "vitjax.models.vit"),
    "relpos": ("vitjax.models.relpos", "vitjax.models.relpos"),
    "eva": ("vitjax.models.eva", "vitjax.models.eva"),
    "naflex": ("vitjax.models.naflex", "vitjax.models.naflex"),
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


def list_models(
    pattern: str = "*", family: str | None = None, include_deprecated: bool = False
) -> list[str]:
    """Sorted model names matching a shell-style pattern (of one family, or all).

    With include_deprecated, timm's old names whose current model vitjax builds are listed too
    (timm itself never lists them).
    """
    families = [family] if family else list(FAMILIES)
    names = {n for f in families for n in config_module(f).VARIANTS}
    if include_deprecated:
        names |= {old for old, new in DEPRECATED.items() if _buildable(new, families)}
    return sorted(n for n in names if fnmatch.fnmatch(n, pattern))


def _buildable(current: str | None, families: list[str]) -> bool:
    """Whether a deprecated name's target is a tag timm has, of an arch these families build."""
    if current is None or current not in PRETRAINED:
        return False
    arch = split_tag(current)[0]
    return any(arch in config_module(f).VARIANTS for f in families)


def unknown_name_error(name: str, family: str | None = None) -> ValueError:
    """A ValueError for an unknown name, with the closest known names."""
    known = list_models(family=family, include_deprecated=True)
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return ValueError(f"unknown model name {name!r}{hint} (see vitjax.list_models())")


def current_name(name: str) -> str:
    """timm's current 'arch.tag' for a deprecated name, with timm's UserWarning; else name."""
    old, tag = split_tag(name)
    if old not in DEPRECATED:
        return name
    current = DEPRECATED[old]
    if current is None:  # timm's own assertion text
        raise ValueError(f"Model {old} has been removed with no replacement.")
    warnings.warn(deprecation_message(old, current), UserWarning, stacklevel=2)
    arch, current_tag = split_tag(current)
    if not tag and current not in PRETRAINED:  # timm raises this when it builds the model
        raise ValueError(
            f"Invalid pretrained tag ({current_tag}) for {arch}. (timm maps the deprecated name "
            f"{old} to {current}, a tag it no longer has, and refuses the name too)"
        )
    return f"{arch}.{tag or current_tag}"


def resolve(name: str) -> tuple[str, str, str]:
    """(family, arch, tag) for 'arch[.tag]' or a deprecated name; unknown names raise."""
    arch, tag = split_tag(current_name(name))
    family = find_family(arch)
    if family is None:
        if split_tag(name)[0] in DEPRECATED:
            raise ValueError(
                f"{name!r} is timm's old name for {arch}.{tag}, a model vitjax does not build"
            )
        raise unknown_name_error(arch)
    return family, arch, tag


def deprecated_defaults(name: str, config_cls: type) -> dict[str, Any]:
    """Config fields a deprecated name's tag sets, as timm builds it: num_classes, img_size."""
    # timm's _update_default_model_kwargs: num_classes (if >= 0), in_chans, and img_size only
    # for a fixed_input_size config.
    old, tag = split_tag(name)
    current = DEPRECATED.get(old)
    arch, current_tag = split_tag(current or "")
    cfg = PRETRAINED.get(f"{arch}.{tag or current_tag}")
    if cfg is None:
        return {}
    out: dict[str, Any] = {}
    if cfg["num_classes"] >= 0:
        out["num_classes"] = cfg["num_classes"]
    c, h, w = cfg["input_size"]
    out["in_chans"] = c
    if cfg["fixed_input_size"]:
        out["img_size"] = h if h == w else (h, w)
    fields = {f.name for f in dataclasses.fields(config_cls)}
    return {k: v for k, v in out.items() if k in fields}


def get_config(name: str, **overrides: Any) -> Any:
    """The config for a model name with keyword overrides (a timm '.tag' is ignored; an old
    name's tag sets num_classes and img_size as timm's does)."""
    family, arch, _ = resolve(name)
    mod = config_module(family)
    defaults = deprecated_defaults(name, mod.CONFIG)
    return mod.CONFIG(**{**mod.VARIANTS[arch], **defaults, **overrides})


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
