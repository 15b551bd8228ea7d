"""Pure-numpy weight conversion: timm/torch state_dict keys <-> Flax variable trees.

One path rule (a numeric component joins the one before it: ``blocks.3.attn`` <->
``blocks_3/attn``, ``stem.0`` <-> ``stem_0``) and five leaf rules: Linear weight (out, in) <->
Dense kernel (in, out); Conv weight (O, I, kh, kw) <-> kernel (kh, kw, I, O); norm weight <->
scale; BatchNorm running_mean / running_var <-> the ``batch_stats`` collection's mean / var
(num_batches_tracked dropped, and re-made on export); everything else is copied. Every key and
shape is checked against the model, both ways, and all offenders are named in one error. A list
run with nn.scan (``stacked={"blocks": depth}``) keeps timm's per-item keys in files: its items'
leaves are stacked on a leading axis on the way in and split on the way out.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from vitjax.weights.errors import WeightMismatchError
from vitjax.weights.lazy import aligned_empty

Params = dict[str, Any]
_STATS = {"running_mean": "mean", "running_var": "var"}
_TRACKED = "num_batches_tracked"
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


def torch_entry(path: tuple[str, ...], value: Any) -> tuple[str, tuple[int, ...]]:
    """The timm key and shape of a variables-tree leaf (errors name timm's keys and shapes)."""
    collection, *rest = path
    if collection == "batch_stats":
        *mods, leaf = rest
        inv = {v: k for k, v in _STATS.items()}
        return ".".join([*_flax_path_to_torch(tuple(mods)), inv.get(leaf, leaf)]), np.shape(value)
    key, arr = flax_leaf_to_torch(tuple(rest), np.broadcast_to(np.float32(0), np.shape(value)))
    return key, arr.shape


def unstacked_paths(
    path: tuple[str, ...], shape: tuple[int, ...], stacked: Mapping[str, int]
) -> list[tuple[tuple[str, ...], tuple[int, ...]]]:
    """A leaf's per-item (path, shape)s: one per item of a stacked (nn.scan) list, else itself.

    A list attribute scanned over (``blocks`` with ``stacked={"blocks": depth}``) holds item i's
    leaf at index i of a leading axis, where an unrolled model has ``blocks_{i}/...``.
    """
    if len(path) > 1 and path[1] in stacked:
        name, n = path[1], stacked[path[1]]
        if tuple(shape[:1]) != (n,):
            raise WeightMismatchError(f"{'/'.join(path)}: leading axis {shape[:1]}, expected {n}")
        return [((path[0], f"{name}_{i}", *path[2:]), tuple(shape[1:])) for i in range(n)]
    return [(path, tuple(shape))]


def expected_torch_shapes(
    expected: Mapping[str, Any], stacked: Mapping[str, int] | None = None
) -> dict[str, tuple[int, ...]]:
    """{timm key: shape} of a variables tree of arrays or ShapeDtypeStructs."""
    out = {}
    for path, leaf in flatten(expected).items():
        for p, shape in unstacked_paths(path, np.shape(leaf), stacked or {}):
            key, shape = torch_entry(p, np.broadcast_to(np.float32(0), shape))
            out[key] = shape
    return out


class HostStack:
    """A stacked (nn.scan) leaf assembled in one host buffer, item by item, then put whole. A
    put with a ``stack(spath, n, first_item)`` method makes its own (vitjax.weights.place)."""

    def __init__(self, put: Callable, spath: tuple[str, ...], n: int, arr: np.ndarray) -> None:
        self.put, self.spath = put, spath
        self.buf = aligned_empty((n, *arr.shape), arr.dtype)

    def fill(self, i: int, arr: np.ndarray) -> None:
        self.buf[i] = arr

    def done(self) -> Any:
        return self.put(self.spath, self.buf)


def _copy(path: tuple[str, ...], value: np.ndarray) -> np.ndarray:
    return np.array(value, order="C")  # owned: see torch_to_flax_variables


def torch_to_flax_variables(
    state_dict: Mapping[str, Any],
    expected: Mapping[str, Any] | None = None,
    what: str = "state_dict",
    *,
    put: Callable[[tuple[str, ...], np.ndarray], Any] | None = None,
    stacked: Mapping[str, int] | None = None,
    consume: bool = False,
) -> dict[str, Params]:
    """timm-key state_dict -> Flax variables ({"params", "batch_stats"}), checked against expected.

    Leaves are converted one at a time and handed to put(path, array) (default: a fresh numpy
    copy, never a view of the input: ``jnp.asarray`` on the CPU may return before it has read its
    numpy source, so a view of a torch tensor that is then trained in place would reach JAX
    already updated). With consume=True each entry is removed from state_dict (a dict) once
    converted, so its memory can go as the converted tree grows. stacked={"blocks": n}: timm's
    ``blocks.{i}.*`` become one ``blocks/*`` leaf with a leading axis of n (nn.scan's layout).
    """
    put, stacked = put or _copy, dict(stacked or {})
    stack = getattr(put, "stack", None) or (lambda spath, n, arr: HostStack(put, spath, n, arr))
    if expected is not None:
        want = expected_torch_shapes(expected, stacked)
        got = {k: np.shape(v) for k, v in state_dict.items() if not k.endswith(_TRACKED)}
        _check(got, want, what)
    flat: dict[tuple[str, ...], Any] = {}
    pending: dict[tuple[str, ...], list[Any]] = {}
    for key in list(state_dict):
        value = state_dict.pop(key) if consume else state_dict[key]
        if key.endswith(_TRACKED):
            continue
        path, arr = torch_leaf_to_flax(key, np.asarray(value))
        del value
        item = _stack_slot(path, stacked)
        if item is None:
            flat[path] = put(path, arr)
            continue
        spath, i = item
        if spath not in pending:  # one buffer for the whole stack, filled item by item
            pending[spath] = [stack(spath, stacked[spath[1]], arr), set()]
        stacker, seen = pending[spath]
        stacker.fill(i, arr)
        seen.add(i)
        if len(seen) == stacked[spath[1]]:
            flat[spath] = pending.pop(spath)[0].done()
    if pending:  # only without expected (which checks every item is present)
        raise WeightMismatchError(f"{what}: incomplete stacked lists at {sorted(pending)[:4]}")
    return unflatten(flat)


def _stack_slot(
    path: tuple[str, ...], stacked: Mapping[str, int]
) -> tuple[tuple[str, ...], int] | None:
    """(stacked path, item index) of an unrolled leaf path that belongs to a stacked list."""
    if len(path) < 2:
        return None
    m = _INDEXED.match(path[1])
    if m is None or m.group(1) not in stacked:
        return None
    return (path[0], m.group(1), *path[2:]), int(m.group(2))


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
        keys = sorted(torch_entry(("batch_stats", *p), v)[0] for p, v in stats)
        raise WeightMismatchError(f"{what}: unexpected BatchNorm statistics {keys[:4]}")
    return variables.get("params", {})


def flax_to_torch_variables(
    variables: Mapping[str, Any], stacked: Mapping[str, int] | None = None
) -> dict[str, np.ndarray]:
    """Flax variables ({"params"[, "batch_stats"]}) -> timm-key state_dict of numpy arrays."""
    out = flax_to_torch(variables.get("params", {}), stacked)
    stats = unstack(variables.get("batch_stats", {}), stacked)
    for path, value in stats.items():
        *mods, leaf = path
        prefix = ".".join(_flax_path_to_torch(tuple(mods)))
        inv = {v: k for k, v in _STATS.items()}
        out[f"{prefix}.{inv[leaf]}"] = np.ascontiguousarray(np.asarray(value))
        out[f"{prefix}.{_TRACKED}"] = np.zeros((), np.int64)
    return out


def unstack(
    tree: Mapping[str, Any], stacked: Mapping[str, int] | None = None
) -> dict[tuple[str, ...], Any]:
    """Flattened tree with each stacked (nn.scan) list split back into ``name_{i}`` items."""
    out = {}
    for path, value in flatten(tree).items():
        if path and path[0] in (stacked or {}):
            value = np.asarray(value)
            for i in range(value.shape[0]):
                out[(f"{path[0]}_{i}", *path[1:])] = value[i]
        else:
            out[path] = value
    return out


def flax_to_torch(
    params: Mapping[str, Any], stacked: Mapping[str, int] | None = None
) -> dict[str, np.ndarray]:
    """Flax params -> timm-key state_dict of numpy arrays (stacked lists split per item)."""
    out = {}
    for path, value in unstack(params, stacked).items():
        key, arr = flax_leaf_to_torch(path, np.asarray(value))
        out[key] = np.ascontiguousarray(arr)
    return out
