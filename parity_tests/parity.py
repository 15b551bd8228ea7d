"""The parity protocol's one comparison helper and its one tolerance table."""

from __future__ import annotations

from typing import Any

import numpy as np

# (atol, rtol) by dtype of the computation being compared.
TOLERANCES: dict[str, tuple[float, float]] = {
    "float32": (1e-5, 1e-5),  # module outputs, single blocks, optimizer steps
    "float32_model": (1e-4, 1e-5),  # whole models (12+ blocks of float32 round-off)
    "bfloat16": (5e-2, 5e-2),  # bf16 compute against torch autocast
    "exact": (0.0, 0.0),  # conversions that only move and transpose bytes
}


def to_numpy(x: Any) -> np.ndarray:
    """numpy copy of a jax array, torch tensor or array-like."""
    if hasattr(x, "detach"):
        x = x.detach().cpu()
        if str(x.dtype) == "torch.bfloat16":
            x = x.float()
        return x.numpy()
    return np.asarray(x)


def diff_report(a: Any, b: Any) -> dict[str, Any]:
    """max/mean |a - b|, where the max is, and the scale of b."""
    a, b = to_numpy(a).astype(np.float64), to_numpy(b).astype(np.float64)
    d = np.abs(a - b)
    where = tuple(int(i) for i in np.unravel_index(np.argmax(d), d.shape)) if d.size else ()
    return {
        "max": float(d.max()) if d.size else 0.0,
        "mean": float(d.mean()) if d.size else 0.0,
        "where": where,
        "scale": float(np.abs(b).max()) if b.size else 0.0,
    }


def assert_close(
    jax_out: Any,
    torch_out: Any,
    name: str,
    atol: float | None = None,
    rtol: float | None = None,
    dtype: str = "float32",
) -> dict[str, Any]:
    """Assert |jax - torch| <= atol + rtol * |torch| everywhere; the message names the tensor."""
    default_atol, default_rtol = TOLERANCES[dtype]
    atol = default_atol if atol is None else atol
    rtol = default_rtol if rtol is None else rtol
    a, b = to_numpy(jax_out), to_numpy(torch_out)
    if a.shape != b.shape:
        raise AssertionError(f"{name}: shape {a.shape} (jax) != {b.shape} (torch)")
    rep = diff_report(a, b)
    bad = np.abs(a.astype(np.float64) - b) > atol + rtol * np.abs(b.astype(np.float64))
    if bad.any() or not np.isfinite(a).all():
        raise AssertionError(
            f"{name} {a.shape}: max |diff| {rep['max']:.3e} at {rep['where']} "
            f"(jax {a[rep['where']]!r}, torch {b[rep['where']]!r}), mean {rep['mean']:.3e}, "
            f"{int(bad.sum())} of {bad.size} elements beyond atol={atol:g} rtol={rtol:g}"
        )
    return rep
