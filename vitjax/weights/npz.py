"""JAX ``.npz`` checkpoints in the vit_jax and big_vision layouts <-> timm-key state_dicts.

Reads what timm's ``_load_weights`` reads: ``Transformer/encoderblock_N`` (vit_jax) or the
stacked-scan ``Transformer/encoderblock`` (big_vision), the ``MAPHead_0`` attention-pool head and
the ``opt/target/``, ``params/`` and ``params/img/`` prefixes. Pure numpy.
"""

from __future__ import annotations

import math
import os
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from numpy.lib import format as npformat

from vitjax.weights import validate
from vitjax.weights.errors import CheckpointError

_PREFIXES = ("", "opt/target/", "params/", "params/img/")
_IGNORED = re.compile(r"^pre_logits/")  # representation layer, dropped by timm


_AXES = {4: (3, 2, 0, 1), 3: (2, 0, 1), 2: (1, 0)}
_HEADER_READERS = {(1, 0): npformat.read_array_header_1_0, (2, 0): npformat.read_array_header_2_0}


def _n2p(w: np.ndarray, t: bool = True) -> np.ndarray:
    """timm's _n2p: squeeze (1, 1, 1, C) leaves, then move JAX axes to torch order."""
    if w.ndim == 4 and w.shape[:3] == (1, 1, 1):
        w = w.flatten()
    if t and w.ndim in _AXES:
        w = w.transpose(_AXES[w.ndim])
    return np.ascontiguousarray(w)


class _Archive:
    """An .npz's entries, each read only when asked for; every header and size checked first."""

    def __init__(self, path: Any, budget: int | None = None) -> None:
        self.path = path
        try:
            self.zip = zipfile.ZipFile(path)
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
            raise CheckpointError(f"{path}: not a readable .npz archive ({e})") from e
        try:
            self.members = {
                info.filename.removesuffix(".npy"): self._header(info)
                for info in self.zip.infolist()
                if not info.is_dir()
            }
            self._check_size(validate.memory_budget() if budget is None else budget)
        except CheckpointError:
            self.zip.close()
            raise
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
            self.zip.close()
            raise CheckpointError(f"{path}: not a readable .npz archive ({e})") from e

    def _header(self, info: zipfile.ZipInfo) -> tuple[zipfile.ZipInfo, tuple[int, ...], Any]:
        """(info, shape, dtype) from a member's .npy header; its declared size must match."""
        with self.zip.open(info) as f:
            version = npformat.read_magic(f)
            read = _HEADER_READERS.get(version)
            if read is None:
                raise ValueError(f"entry {info.filename}: unsupported .npy version {version}")
            shape, _, dtype = read(f)
            header = f.tell()
        if dtype.kind not in "fiu":
            raise CheckpointError(
                f"{self.path}: entry {info.filename} has non-numeric dtype {dtype} (raw bfloat16?)"
            )
        data = math.prod(shape) * dtype.itemsize
        if info.file_size != header + data:  # a forged header, or a truncated member
            raise CheckpointError(
                f"{self.path}: entry {info.filename} declares shape {shape} {dtype} "
                f"({data:,} bytes) but the archive says it holds {info.file_size - header:,}"
            )
        return info, tuple(shape), dtype

    def _check_size(self, budget: int) -> None:
        """Refuse entries whose declared (uncompressed) size is more than memory can hold."""
        sizes = {k: m[0].file_size for k, m in self.members.items()}
        total = sum(sizes.values())
        if total > budget:
            big = max(sizes, key=sizes.__getitem__)
            shape, dtype = self.members[big][1:]
            raise CheckpointError(
                f"{self.path}: its entries would take {validate.gib(total)} uncompressed, more "
                f"than the {validate.gib(budget)} of memory available (the largest, {big}, "
                f"declares {shape} {dtype}; a zip bomb?)"
            )

    def keys(self) -> list[str]:
        return list(self.members)

    def shape(self, key: str) -> tuple[int, ...]:
        return self.members[key][1]

    def read(self, key: str) -> np.ndarray:
        """One entry's array (allow_pickle=False)."""
        try:
            with self.zip.open(self.members[key][0]) as f:
                return npformat.read_array(f, allow_pickle=False)
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
            raise CheckpointError(f"{self.path}: entry {key} is unreadable ({e})") from e

    def close(self) -> None:
        self.zip.close()


class _Reader:
    """Reads npz entries under one prefix on demand, remembering which were used."""

    def __init__(self, archive: _Archive, prefix: str, path: Any) -> None:
        self.archive = archive
        self.names = {k[len(prefix) :]: k for k in archive.keys() if k.startswith(prefix)}
        self.cache: dict[str, np.ndarray] = {}  # a stacked entry serves every block
        self.used: set[str] = set()
        self.path = path

    def has(self, key: str) -> bool:
        return key in self.names

    def shape(self, key: str) -> tuple[int, ...]:
        return self.archive.shape(self.names[key])

    def get(self, key: str, idx: int | None = None, t: bool = True) -> np.ndarray:
        if key not in self.names:
            raise CheckpointError(f"{self.path}: npz has no entry {key!r}")
        self.used.add(key)
        if key not in self.cache:
            self.cache[key] = self.archive.read(self.names[key])
        w = self.cache[key]
        return _n2p(w[idx] if idx is not None else w, t)

    def unused(self) -> list[str]:
        return sorted(k for k in self.names if k not in self.used and not _IGNORED.match(k))


def _attention(
    r: _Reader, p: str, idx: int | None, names: tuple[str, ...]
) -> dict[str, np.ndarray]:
    """Fused (out, in) weight and bias of the MHA projections ``names`` (query/key/value)."""
    kernels = [r.get(f"{p}{n}/kernel", idx, t=False) for n in names]
    out = {"weight": np.concatenate([k.reshape(k.shape[0], -1).T for k in kernels])}
    if all(r.has(f"{p}{n}/bias") for n in names):
        out["bias"] = np.concatenate(
            [r.get(f"{p}{n}/bias", idx, t=False).reshape(-1) for n in names]
        )
    return out


def _norm_mlp(r: _Reader, sd: dict, dst: str, src: str, idx: int | None) -> None:
    for leaf, jax_leaf in (("weight", "scale"), ("bias", "bias")):
        sd[f"{dst}.{leaf}"] = r.get(f"{src}/{jax_leaf}", idx)


def _read_block(r: _Reader, sd: dict, i: int, stacked: bool, big_vision: bool) -> None:
    mha, mlp, ln2 = (0, 0, 1) if big_vision else (1, 3, 2)
    bp = "Transformer/encoderblock/" if stacked else f"Transformer/encoderblock_{i}/"
    idx = i if stacked else None
    dst = f"blocks.{i}."
    _norm_mlp(r, sd, dst + "norm1", f"{bp}LayerNorm_0", idx)
    ap = f"{bp}MultiHeadDotProductAttention_{mha}/"
    for leaf, arr in _attention(r, ap, idx, ("query", "key", "value")).items():
        sd[f"{dst}attn.qkv.{leaf}"] = arr
    out = r.get(f"{ap}out/kernel", idx)
    sd[f"{dst}attn.proj.weight"] = out.reshape(out.shape[0], -1)
    if r.has(f"{ap}out/bias"):
        sd[f"{dst}attn.proj.bias"] = r.get(f"{ap}out/bias", idx)
    _norm_mlp(r, sd, dst + "norm2", f"{bp}LayerNorm_{ln2}", idx)
    for j in range(2):
        sd[f"{dst}mlp.fc{j + 1}.weight"] = r.get(f"{bp}MlpBlock_{mlp}/Dense_{j}/kernel", idx)
        if r.has(f"{bp}MlpBlock_{mlp}/Dense_{j}/bias"):
            sd[f"{dst}mlp.fc{j + 1}.bias"] = r.get(f"{bp}MlpBlock_{mlp}/Dense_{j}/bias", idx)


def _read_map_head(r: _Reader, sd: dict) -> None:
    bp = "MAPHead_0/"
    ap = bp + "MultiHeadDotProductAttention_0/"
    sd["attn_pool.latent"] = r.get(f"{bp}probe", t=False)
    for name, parts in (("kv", ("key", "value")), ("q", ("query",))):
        for leaf, arr in _attention(r, ap, None, parts).items():
            sd[f"attn_pool.{name}.{leaf}"] = arr
    out = r.get(f"{ap}out/kernel")
    sd["attn_pool.proj.weight"] = out.reshape(out.shape[0], -1)
    sd["attn_pool.proj.bias"] = r.get(f"{ap}out/bias")
    _norm_mlp(r, sd, "attn_pool.norm", f"{bp}LayerNorm_0", None)
    for j in range(2):
        sd[f"attn_pool.mlp.fc{j + 1}.weight"] = r.get(f"{bp}MlpBlock_0/Dense_{j}/kernel")
        sd[f"attn_pool.mlp.fc{j + 1}.bias"] = r.get(f"{bp}MlpBlock_0/Dense_{j}/bias")


def load_npz(path: str | os.PathLike, max_bytes: int | None = None) -> dict[str, np.ndarray]:
    """timm-key state_dict (numpy) from a vit_jax or big_vision .npz checkpoint.

    Entries are read one at a time, and only those the layout maps: a member whose declared size
    exceeds max_bytes (default: the memory this process has left) is refused before any is read.
    """
    archive = _Archive(path, max_bytes)
    try:
        return _read_layout(archive, path)
    finally:
        archive.close()


def _read_layout(archive: _Archive, path: Any) -> dict[str, np.ndarray]:
    names = set(archive.keys())
    prefix = next((p for p in _PREFIXES if f"{p}embedding/kernel" in names), None)
    if prefix is None:
        raise CheckpointError(
            f"{path}: no embedding/kernel under any of the prefixes {list(_PREFIXES)}: not a "
            f"vit_jax / big_vision ViT checkpoint (first keys: {sorted(names)[:5]})"
        )
    r = _Reader(archive, prefix, path)
    unused = _unknown(r)
    if unused:  # before reading anything: an unknown entry is never decompressed
        raise CheckpointError(f"{path}: npz entries vitjax does not know how to map: {unused[:20]}")
    stacked = r.has("Transformer/encoderblock/LayerNorm_0/scale")
    big_vision = prefix.startswith("params/") or r.has("pos_embedding") or stacked
    sd: dict[str, np.ndarray] = {}
    if len(r.shape("embedding/kernel")) not in (2, 4):  # conv, or NaFlex's linear patch embed
        shape = r.shape("embedding/kernel")
        raise CheckpointError(f"{path}: embedding/kernel of shape {shape} is not a patch embed")
    sd["patch_embed.proj.weight"] = r.get("embedding/kernel")
    if r.has("embedding/bias"):
        sd["patch_embed.proj.bias"] = r.get("embedding/bias")
    if r.has("cls"):
        sd["cls_token"] = r.get("cls", t=False)
    pos = "pos_embedding" if big_vision else "Transformer/posembed_input/pos_embedding"
    if r.has(pos):
        sd["pos_embed"] = r.get(pos, t=False)
    if r.has("Transformer/encoder_norm/scale"):
        _norm_mlp(r, sd, "norm", "Transformer/encoder_norm", None)
    if r.has("head/kernel"):
        sd["head.weight"], sd["head.bias"] = r.get("head/kernel"), r.get("head/bias")
    if r.has("MAPHead_0/probe"):
        _read_map_head(r, sd)
    if stacked:
        depth = r.shape("Transformer/encoderblock/LayerNorm_0/scale")[0]
    else:
        block = re.compile(r"Transformer/encoderblock_\d+/LayerNorm_0/scale")
        depth = sum(1 for k in r.names if block.fullmatch(k))
    for i in range(depth):
        _read_block(r, sd, i, stacked, big_vision)
    unused = r.unused()
    if unused:
        raise CheckpointError(f"{path}: npz entries vitjax does not know how to map: {unused[:20]}")
    return sd


_KNOWN = re.compile(
    r"^(embedding/(kernel|bias)|cls|pos_embedding|Transformer/posembed_input/pos_embedding"
    r"|Transformer/encoder_norm/(scale|bias)|head/(kernel|bias)|pre_logits/.*|MAPHead_0/.*"
    r"|Transformer/encoderblock(_\d+)?/.*)$"
)


def _unknown(r: _Reader) -> list[str]:
    """Entries no part of the layout reads (checked by name, before any data is read)."""
    return sorted(k for k in r.names if not _KNOWN.match(k))


# --- writing ----------------------------------------------------------------------------------


def _heads(w: np.ndarray, num_heads: int) -> np.ndarray:
    """(H*Dh, C) torch weight -> (C, H, Dh) JAX DenseGeneral kernel."""
    return w.T.reshape(w.shape[1], num_heads, -1)


def _write_attention(
    out: dict, p: str, sd: Mapping, src: str, names: tuple[str, ...], H: int
) -> None:
    w = np.asarray(sd[f"{src}.weight"])
    for n, part in zip(names, np.split(w, len(names)), strict=True):
        out[f"{p}{n}/kernel"] = _heads(part, H)
    if f"{src}.bias" in sd:
        for n, part in zip(names, np.split(np.asarray(sd[f"{src}.bias"]), len(names)), strict=True):
            out[f"{p}{n}/bias"] = part.reshape(H, -1)


def _write_out_proj(out: dict, p: str, sd: Mapping, src: str, H: int) -> None:
    w = np.asarray(sd[f"{src}.weight"])  # (C, H*Dh)
    out[f"{p}out/kernel"] = w.reshape(w.shape[0], H, -1).transpose(1, 2, 0)  # (H, Dh, C)
    if f"{src}.bias" in sd:
        out[f"{p}out/bias"] = np.asarray(sd[f"{src}.bias"])


def _write_norm(out: dict, dst: str, sd: Mapping, src: str) -> None:
    out[f"{dst}/scale"], out[f"{dst}/bias"] = sd[f"{src}.weight"], sd[f"{src}.bias"]


def _write_mlp(out: dict, dst: str, sd: Mapping, src: str) -> None:
    for j in range(2):
        out[f"{dst}/Dense_{j}/kernel"] = np.asarray(sd[f"{src}.fc{j + 1}.weight"]).T
        if f"{src}.fc{j + 1}.bias" in sd:
            out[f"{dst}/Dense_{j}/bias"] = sd[f"{src}.fc{j + 1}.bias"]


def _write_block(sd: Mapping, i: int, H: int, big_vision: bool) -> dict[str, np.ndarray]:
    mha, mlp, ln2 = (0, 0, 1) if big_vision else (1, 3, 2)
    out: dict[str, np.ndarray] = {}
    src = f"blocks.{i}."
    _write_norm(out, "LayerNorm_0", sd, src + "norm1")
    ap = f"MultiHeadDotProductAttention_{mha}/"
    _write_attention(out, ap, sd, src + "attn.qkv", ("query", "key", "value"), H)
    _write_out_proj(out, ap, sd, src + "attn.proj", H)
    _write_norm(out, f"LayerNorm_{ln2}", sd, src + "norm2")
    _write_mlp(out, f"MlpBlock_{mlp}", sd, src + "mlp")
    return out


def _write_map_head(out: dict, sd: Mapping, H: int) -> None:
    ap = "MAPHead_0/MultiHeadDotProductAttention_0/"
    out["MAPHead_0/probe"] = sd["attn_pool.latent"]
    _write_attention(out, ap, sd, "attn_pool.q", ("query",), H)
    _write_attention(out, ap, sd, "attn_pool.kv", ("key", "value"), H)
    _write_out_proj(out, ap, sd, "attn_pool.proj", H)
    _write_norm(out, "MAPHead_0/LayerNorm_0", sd, "attn_pool.norm")
    _write_mlp(out, "MAPHead_0/MlpBlock_0", sd, "attn_pool.mlp")


_WRITABLE = re.compile(
    r"^(patch_embed\.proj\.(weight|bias)|cls_token|pos_embed|norm\.(weight|bias)|head\.(weight|bias)"
    r"|attn_pool\.(latent|q|kv|proj|norm|mlp\.fc[12])(\.(weight|bias))?"
    r"|blocks\.\d+\.(norm[12]|attn\.qkv|attn\.proj|mlp\.fc[12])\.(weight|bias))$"
)


def to_npz_arrays(
    state_dict: Mapping[str, Any],
    num_heads: int,
    layout: str = "vit_jax",
    stacked: bool = False,
) -> dict[str, np.ndarray]:
    """timm-key state_dict -> npz entries in the vit_jax or big_vision layout (no prefix)."""
    if layout not in ("vit_jax", "big_vision"):
        raise ValueError(f"layout={layout!r}: expected 'vit_jax' or 'big_vision'")
    sd = {k: np.asarray(v) for k, v in state_dict.items()}
    extra = sorted(k for k in sd if not _WRITABLE.match(k))
    if extra:
        raise ValueError(f"the npz layouts have no place for {extra[:10]} (timm cannot read them)")
    big_vision = layout == "big_vision" or stacked
    out = {"embedding/kernel": sd["patch_embed.proj.weight"].transpose(2, 3, 1, 0)}
    if "patch_embed.proj.bias" in sd:
        out["embedding/bias"] = sd["patch_embed.proj.bias"]
    if "cls_token" in sd:
        out["cls"] = sd["cls_token"]
    if "pos_embed" in sd:
        pos = "pos_embedding" if big_vision else "Transformer/posembed_input/pos_embedding"
        out[pos] = sd["pos_embed"]
    if "norm.weight" in sd:
        _write_norm(out, "Transformer/encoder_norm", sd, "norm")
    if "head.weight" in sd:
        out["head/kernel"], out["head/bias"] = sd["head.weight"].T, sd["head.bias"]
    if "attn_pool.latent" in sd:
        _write_map_head(out, sd, num_heads)
    depth = len({m[1] for k in sd if (m := re.match(r"blocks\.(\d+)\.", k))})
    blocks = [_write_block(sd, i, num_heads, big_vision) for i in range(depth)]
    if stacked:
        for k in blocks[0]:
            out[f"Transformer/encoderblock/{k}"] = np.stack([b[k] for b in blocks])
    else:
        for i, b in enumerate(blocks):
            out.update({f"Transformer/encoderblock_{i}/{k}": v for k, v in b.items()})
    return out


def save_npz(
    path: str | os.PathLike,
    state_dict: Mapping[str, Any],
    num_heads: int,
    layout: str = "vit_jax",
    stacked: bool = False,
    prefix: str = "",
) -> Path:
    """Write a timm-key state_dict as a .npz that timm's _load_weights (and load_npz) reads."""
    arrays = to_npz_arrays(state_dict, num_heads, layout, stacked)
    path = Path(path)
    np.savez(path, **{prefix + k: np.ascontiguousarray(v) for k, v in arrays.items()})
    return path
