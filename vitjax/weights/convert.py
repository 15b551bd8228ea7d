"""Pure-numpy weight conversion: timm/torch state_dict keys <-> Flax variable trees.

One path rule (a numeric component joins the one before it: ``blocks.3.attn`` <->
``blocks_3/attn``, ``stem.0`` <-> ``stem_0``) and five leaf rules: Linear weight (out, in) <->
Dense kernel (in, out); Conv weight (O, I, kh, kw) <-> kernel (kh, kw, I, O); norm weight <->
scale; BatchNorm running_mean / running_var <-> the ``batch_stats`` collection's mean / var
(num_batches_tracked dropped, and re-made on export); everything else is copied. Every key and
shape is checked against the model, both ways, and all offenders are named in one error.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from vitjax.weights.errors import WeightMismatchError

Params = dict[str, Any]
_STATS = {"running_mean": "mean", "running_var": "var"}
_INDEXED = re.compile(r"^([A-Za-z_]\w*?)_(\d+)$")  # flax's name for item i of a list attribute


def flatten(tree: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    """Nested dict -> {path tuple: leaf}."""
    out: dict[tuple[str, ...], Any] = {}
    for k, v in tree.items():
        if isinstance(v, Mapping):
            out.update(flatten(v, prefix + (k,)))
        else:
            out[prefix + (k,)] = v
    return out


def unflatten(flat: Mapping[tuple[str, ...], Any]) -> Params:
    """{path tuple: leaf} -> nested dict."""
    tree: Params = {}
    for path, v in flat.items():
        node = tree
        for k in path[:-1]:
            node = node.setdefault(k, {})
        node[path[-1]] = v
    return tree


def _torch_path_to_flax(parts: list[str]) -> list[str]:
    out: list[str] = []
    for p in parts:
        if p.isdigit() and out:
            out[-1] = f"{out[-1]}_{p}"
        else:
            out.append(p)
    return out


def _flax_path_to_torch(parts: tuple[str, ...]) -> list[str]:
    out: list[str] = []
    for p in parts:
        m = _INDEXED.match(p)
        out.extend(m.groups() if m else (p,))
    return out


def torch_leaf_to_flax(key: str, value: np.ndarray) -> tuple[tuple[str, ...], np.ndarray]:
    """One timm state_dict entry -> (path in the variables tree, array)."""
    *mods, leaf = key.split(".")
    path = _torch_path_to_flax(mods)
    if leaf in _STATS:
        return ("batch_stats", *path, _STATS[leaf]), value
    if leaf == "weight" and value.ndim == 2:
        return ("params", *path, "kernel"), value.T
    if leaf == "weight" and value.ndim == 4:
        return ("params", *path, "kernel"), value.transpose(2, 3, 1, 0)
    if leaf == "weight" and value.ndim == 1:
        return ("params", *path, "scale"), value
    return ("params", *path, leaf), value


def flax_leaf_to_torch(path: tuple[str, ...], value: np.ndarray) -> tuple[str, np.ndarray]:
    """One (path in the params tree, array) -> timm state_dict (key, array)."""
    *mods, leaf = path
    mods = _flax_path_to_torch(tuple(mods))
    if leaf == "kernel" and value.ndim == 2:
        leaf, value = "weight", value.T
    elif leaf == "kernel" and value.ndim == 4:
        leaf, value = "weight", value.transpose(3, 2, 0, 1)
    elif leaf == "scale":
        leaf = "weight"
    return ".".join([*mods, leaf]), value


def _check(
    got: Mapping[str, tuple[int, ...]], want: Mapping[str, tuple[int, ...]], what: str
) -> None:
    missing = sorted(set(want) - set(got))
    unexpected = sorted(set(got) - set(want))
    wrong = sorted(k for k in set(got) & set(want) if tuple(got[k]) != tuple(want[k]))
    if not (missing or unexpected or wrong):
        return
    lines = [f"{what} does not fit the model:"]
    lines += [f"  missing key {k}: expected shape {tuple(want[k])}" for k in missing]
    lines += [f"  unexpected key {k}: shape {tuple(got[k])}" for k in unexpected]
    lines += [
        f"  wrong shape for {k}: expected {tuple(want[k])}, found {tuple(got[k])}" for k in wrong
    ]
    raise WeightMismatchError("\n".join(lines))


def _torch_entry(path: tuple[str, ...], value: Any) -> tuple[str, tuple[int, ...]]:
    """The timm key and shape of a variables-tree leaf (errors name timm's keys and shapes)."""
    collection, *rest = path
    if collection == "batch_stats":
        *mods, leaf = rest
        inv = {v: k for k, v in _STATS.items()}
        return ".".join([*_flax_path_to_torch(tuple(mods)), inv.get(leaf, leaf)]), np.shape(value)
    key, arr = flax_leaf_to_torch(tuple(rest), np.broadcast_to(np.float32(0), np.shape(value)))
    return key, arr.shape


def torch_to_flax_variables(
    state_dict: Mapping[str, Any],
    expected: Mapping[str, Any] | None = None,
    what: str = "state_dict",
) -> dict[str, Params]:
    """timm-key state_dict -> Flax variables ({"params", "batch_stats"}), checked against expected.

    Every leaf is a fresh copy, never a view of the input: ``jnp.asarray`` on the CPU returns
    before it has read its numpy source, so a view of a torch tensor that is then trained in place
    (``from_timm`` and fine-tune the torch model) would reach JAX already updated.
    """
    state_dict = {k: v for k, v in state_dict.items() if not k.endswith("num_batches_tracked")}
    if expected is not None:
        want = dict(_torch_entry(p, v) for p, v in flatten(expected).items())
        _check({k: np.shape(v) for k, v in state_dict.items()}, want, what)
    flat = {}
    for key, value in state_dict.items():
        path, arr = torch_leaf_to_flax(key, np.asarray(value))
        flat[path] = np.array(arr, order="C")  # owned: see the docstring
    return unflatten(flat)


def torch_to_flax(
    state_dict: Mapping[str, Any],
    expected: Mapping[str, Any] | None = None,
    what: str = "state_dict",
) -> Params:
    """timm-key state_dict -> Flax params (no batch statistics), checked against expected."""
    want = None if expected is None else {"params": expected}
    variables = torch_to_flax_variables(state_dict, want, what)
    if "batch_stats" in variables:
        stats = flatten(variables["batch_stats"]).items()
        keys = sorted(_torch_entry(("batch_stats", *p), v)[0] for p, v in stats)
        raise WeightMismatchError(f"{what}: unexpected BatchNorm statistics {keys[:4]}")
    return variables.get("params", {})


def flax_to_torch_variables(variables: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Flax variables ({"params"[, "batch_stats"]}) -> timm-key state_dict of numpy arrays."""
    out = flax_to_torch(variables.get("params", {}))
    for path, value in flatten(variables.get("batch_stats", {})).items():
        *mods, leaf = path
        prefix = ".".join(_flax_path_to_torch(tuple(mods)))
        inv = {v: k for k, v in _STATS.items()}
        out[f"{prefix}.{inv[leaf]}"] = np.ascontiguousarray(np.asarray(value))
        out[f"{prefix}.num_batches_tracked"] = np.zeros((), np.int64)
    return out


def flax_to_torch(params: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Flax params -> timm-key state_dict of numpy arrays."""
    out = {}
    for path, value in flatten(params).items():
        key, arr = flax_leaf_to_torch(path, np.asarray(value))
        out[key] = np.ascontiguousarray(arr)
    return out
