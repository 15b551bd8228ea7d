"""Pure-numpy weight conversion: timm/torch state_dict keys <-> Flax parameter trees.

One path rule (``blocks.{i}.`` <-> ``blocks_{i}/``) and four leaf rules:
Linear weight (out, in) <-> Dense kernel (in, out); Conv weight (O, I, kh, kw) <-> kernel
(kh, kw, I, O); norm weight <-> scale; everything else is copied. Every key and shape is checked
against the model, both ways, and all offenders are named in one error.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from vitjax.configs import ViTConfig

Params = dict[str, Any]


class WeightMismatchError(ValueError):
    """Raised when a state_dict does not fit a model: lists every offending key and shape."""


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
        if p.isdigit() and out and out[-1] == "blocks":
            out[-1] = f"blocks_{p}"
        else:
            out.append(p)
    return out


def torch_leaf_to_flax(key: str, value: np.ndarray) -> tuple[tuple[str, ...], np.ndarray]:
    """One timm state_dict entry -> (Flax path, array)."""
    *mods, leaf = key.split(".")
    path = _torch_path_to_flax(mods)
    if leaf == "weight" and value.ndim == 2:
        return (*path, "kernel"), value.T
    if leaf == "weight" and value.ndim == 4:
        return (*path, "kernel"), value.transpose(2, 3, 1, 0)
    if leaf == "weight" and value.ndim == 1:
        return (*path, "scale"), value
    return (*path, leaf), value


def flax_leaf_to_torch(path: tuple[str, ...], value: np.ndarray) -> tuple[str, np.ndarray]:
    """One Flax (path, array) -> timm state_dict (key, array)."""
    *mods, leaf = path
    mods = [m.replace("blocks_", "blocks.") if re.fullmatch(r"blocks_\d+", m) else m for m in mods]
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


def torch_to_flax(
    state_dict: Mapping[str, Any],
    expected: Mapping[str, Any] | None = None,
    what: str = "state_dict",
) -> Params:
    """timm-key state_dict (numpy-convertible values) -> Flax params, checked against expected.

    Every leaf is a fresh copy, never a view of the input: ``jnp.asarray`` on the CPU returns
    before it has read its numpy source, so a view of a torch tensor that is then trained in place
    (``from_timm`` and fine-tune the torch model) would reach JAX already updated.
    """
    flat = {}
    for key, value in state_dict.items():
        path, arr = torch_leaf_to_flax(key, np.asarray(value))
        flat[path] = np.array(arr, order="C")  # owned: see the docstring
    if expected is not None:
        want = {"/".join(p): tuple(np.shape(v)) for p, v in flatten(expected).items()}
        _check({"/".join(p): v.shape for p, v in flat.items()}, want, what)
    return unflatten(flat)


def flax_to_torch(params: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Flax params -> timm-key state_dict of numpy arrays."""
    out = {}
    for path, value in flatten(params).items():
        key, arr = flax_leaf_to_torch(path, np.asarray(value))
        out[key] = np.ascontiguousarray(arr)
    return out


# --- The tutorial notebook's own layout -------------------------------------------------------

_NOTEBOOK_RULES = [
    (r"input_layer\.patch_emb_layer\.", "patch_embed.proj."),
    (r"input_layer\.cls_token$", "cls_token"),
    (r"input_layer\.pos_emb$", "pos_embed"),
    (r"encoder\.(\d+)\.ln1\.", r"blocks.\1.norm1."),
    (r"encoder\.(\d+)\.ln2\.", r"blocks.\1.norm2."),
    (r"encoder\.(\d+)\.msa\.w_o\.0\.", r"blocks.\1.attn.proj."),
    (r"encoder\.(\d+)\.mlp\.0\.", r"blocks.\1.mlp.fc1."),
    (r"encoder\.(\d+)\.mlp\.3\.", r"blocks.\1.mlp.fc2."),
    (r"mlp_head\.0\.", "norm."),
    (r"mlp_head\.1\.", "head."),
]
_NOTEBOOK_QKV = re.compile(r"encoder\.(\d+)\.msa\.w_([qkv])\.(weight|bias)$")


def is_notebook_layout(state_dict: Mapping[str, Any]) -> bool:
    """True for a state_dict saved from the tutorial notebook's ViT class."""
    return "input_layer.cls_token" in state_dict and any(
        k.startswith("encoder.") for k in state_dict
    )


def notebook_to_timm(state_dict: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Rename the notebook's keys to timm's and fuse its w_q/w_k/w_v into one qkv."""
    out: dict[str, np.ndarray] = {}
    qkv: dict[tuple[str, str], dict[str, np.ndarray]] = {}
    for key, value in state_dict.items():
        arr = np.asarray(value)
        m = _NOTEBOOK_QKV.match(key)
        if m:
            qkv.setdefault((m[1], m[3]), {})[m[2]] = arr
            continue
        for pattern, repl in _NOTEBOOK_RULES:
            new, n = re.subn("^" + pattern, repl, key)
            if n:
                out[new] = arr
                break
        else:
            raise WeightMismatchError(f"unexpected key {key!r} in a notebook-layout state_dict")
    for (i, leaf), parts in sorted(qkv.items()):
        if set(parts) != {"q", "k", "v"}:
            raise WeightMismatchError(f"block {i}: w_q/w_k/w_v.{leaf} incomplete: {sorted(parts)}")
        out[f"blocks.{i}.attn.qkv.{leaf}"] = np.concatenate([parts[c] for c in "qkv"], axis=0)
    return out


def notebook_overrides(state_dict: Mapping[str, Any], cfg: ViTConfig) -> dict[str, Any]:
    """Config overrides the notebook's layout implies: its sqrt(num_heads) scale, qkv bias."""
    has_bias = any(k.endswith("msa.w_q.bias") for k in state_dict)
    return dict(attn_scale=cfg.num_heads**-0.5, qkv_bias=has_bias)
