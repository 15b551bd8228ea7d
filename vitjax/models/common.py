"""Reading live timm models: shared checks and the error for a part vitjax does not mirror.

Imports nothing from torch or timm: the module handed in brings them.
"""

from __future__ import annotations

from typing import Any

_LAYER_NORMS = ("LayerNorm",)
_RMS_NORMS = ("RmsNorm",)


class UnsupportedModelError(ValueError):
    """A timm model (or part of one) that vitjax does not mirror; says which part."""


def cls_name(m: Any) -> str:
    return type(m).__name__


def is_identity(m: Any) -> bool:
    return m is None or cls_name(m) == "Identity"


def require(ok: bool, what: str) -> None:
    if not ok:
        raise UnsupportedModelError(f"{what} is not supported by vitjax")


def act_name(act: Any, where: str) -> str:
    name = cls_name(act)
    if name == "GELU":
        return "gelu_tanh" if getattr(act, "approximate", "none") == "tanh" else "gelu"
    table = {"GELUTanh": "gelu_tanh", "QuickGELU": "quick_gelu"}
    require(name in table, f"{where}: activation {name} (supported: GELU, GELUTanh, QuickGELU)")
    return table[name]


def norm_kind(norm: Any, where: str) -> tuple[str, float]:
    """('layernorm' | 'rmsnorm', eps) of an affine timm/torch norm layer; refuses anything else."""
    name = cls_name(norm)
    affine = getattr(norm, "elementwise_affine", True) and getattr(norm, "weight", None) is not None
    if name in _LAYER_NORMS and affine and getattr(norm, "bias", None) is not None:
        return "layernorm", float(norm.eps)
    if name in _RMS_NORMS and affine:
        return "rmsnorm", float(norm.eps)
    raise UnsupportedModelError(
        f"{where}: norm layer {name} is not supported by vitjax (affine LayerNorm or RmsNorm)"
    )


def check_linear(m: Any, where: str, n_in: int, n_out: int, bias: bool | None = None) -> None:
    require(cls_name(m) == "Linear", f"{where} of type {cls_name(m)}")
    require(
        (m.in_features, m.out_features) == (n_in, n_out),
        f"{where} of shape {m.in_features}->{m.out_features} (expected {n_in}->{n_out})",
    )
    if bias is not None:
        require((m.bias is not None) == bias, f"{where} with bias={m.bias is not None}")


