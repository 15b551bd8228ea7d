"""The parity protocol's one comparison helper and its one tolerance table."""

from __future__ import annotations

from typing import Any

import numpy as np

# (atol, rtol) by dtype of the computation being compared.
TOLERANCES: dict[str, tuple[float, float]] = {
    "float32": (1e-5, 1e-5),  # module outputs, single blocks, optimizer steps
    "float32_model": (1e-4, 1e-5),  # whole models (12+ blocks of float32 round-off)
    # CNN backbones of several convolution + GroupNorm stages (ResNetV2 stem + 3 bottlenecks, 12
    # convs of up to 576 products each): torch's own float32 output is 1.1e-5..1.3e-5 from its
    # float64 one there (Intel Xeon, XLA:CPU and torch both), so two float32 sums of it differ by
    # up to twice that; one element in 15k was 1.3e-5 from torch on that machine.
    "float32_cnn": (2e-5, 1e-5),
    # Parameters after many Adam steps: Adam divides each gradient by its running RMS, so the
    # round-off of a near-zero gradient becomes an lr-sized step (one weight in 16k moves ~1e-5).
    # Where torch's own float32 run is measured farther than this from its float64 run (2.3e-5 on
    # an AMD EPYC), the test adds that measured error per element (assert_close's slack).
    "float32_adam": (2e-5, 1e-5),
    "bfloat16": (5e-2, 5e-2),  # bf16 compute against torch autocast
    "exact": (0.0, 0.0),  # conversions that only move and transpose bytes
}


# Every comparison made in this session: (name, shape, max |diff|, mean |diff|, scale, atol, rtol).
RECORDS: list[tuple[str, tuple[int, ...], float, float, float, float, float]] = []


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
    slack: Any = None,
) -> dict[str, Any]:
    """Assert |jax - torch| <= atol + rtol * |torch| (+ slack) everywhere; the message names it.

    ``slack`` (an array of torch's shape, or None) widens each element by a measured amount: the
    reference's own float32 error against its float64 run, where round-off is amplified (Adam).
    """
    default_atol, default_rtol = TOLERANCES[dtype]
    atol = default_atol if atol is None else atol
    rtol = default_rtol if rtol is None else rtol
    a, b = to_numpy(jax_out), to_numpy(torch_out)
    if a.shape != b.shape:
        raise AssertionError(f"{name}: shape {a.shape} (jax) != {b.shape} (torch)")
    rep = diff_report(a, b)
    allowed = atol + rtol * np.abs(b.astype(np.float64))
    if slack is not None:
        allowed = allowed + np.abs(to_numpy(slack).astype(np.float64))
    bad = np.abs(a.astype(np.float64) - b) > allowed
    RECORDS.append((name, a.shape, rep["max"], rep["mean"], rep["scale"], atol, rtol))
    if bad.any() or not np.isfinite(a).all():
        raise AssertionError(
            f"{name} {a.shape}: max |diff| {rep['max']:.3e} at {rep['where']} "
            f"(jax {a[rep['where']]!r}, torch {b[rep['where']]!r}), mean {rep['mean']:.3e}, "
            f"{int(bad.sum())} of {bad.size} elements beyond atol={atol:g} rtol={rtol:g}"
            + ("" if slack is None else " + per-element slack")
        )
    return rep


def _unit(name: str) -> str:
    return name.split("[")[0].split(" ")[0]


def summary_markdown() -> str:
    """Per unit (the name before '['): comparisons, worst max |diff|, average mean |diff|."""
    units: dict[str, list[tuple[float, float]]] = {}
    for name, _, mx, mean, *_ in RECORDS:
        units.setdefault(_unit(name), []).append((mx, mean))
    rows = [
        "| unit | comparisons | worst max abs diff | average mean abs diff |",
        "|---|---|---|---|",
    ]
    for unit, vals in sorted(units.items()):
        worst, avg = max(v[0] for v in vals), sum(v[1] for v in vals) / len(vals)
        rows.append(f"| {unit} | {len(vals)} | {worst:.2e} | {avg:.2e} |")
    return "\n".join(rows) + "\n"


def records_markdown() -> str:
    """The session's comparisons as Markdown: a per-unit summary, then every comparison."""
    rows = [
        summary_markdown(),
        "| tensor | shape | max abs diff | mean abs diff | max abs value | atol | rtol |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, shape, mx, mean, scale, atol, rtol in sorted(RECORDS):  # whatever ran where
        rows.append(
            f"| {name} | {shape} | {mx:.2e} | {mean:.2e} | {scale:.3g} | {atol:g} | {rtol:g} |"
        )
    return "\n".join(rows) + "\n"
