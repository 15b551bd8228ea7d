"""Checks on untrusted weights and configs: dtypes, finiteness, file kinds, sizes against memory.

Pure numpy (and ml_dtypes, which jax ships): every check runs before anything is built, and every
error names the file, key or field.
"""

from __future__ import annotations

import dataclasses
import math
import os
import stat
import struct
import types
import typing
import zipfile
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from vitjax.weights.errors import CheckpointError

MAX_CONFIG_BYTES = 16 * 2**20  # a config.json with 21k label descriptions is about 2 MiB
MAX_DEPTH = 512  # timm's deepest ViTs have 48 blocks; tracing 10^6 blocks never ends
MAX_INT_FIELD = 2**20  # any width, size or count in a model config
_NON_FLOAT_OK = ("num_batches_tracked",)  # BatchNorm's step counter, dropped on import
_POSITIVE = ("img_size", "patch_size", "in_chans", "embed_dim", "depth", "num_heads")
_PICKLE_PROTOCOLS = range(2, 6)


# --- memory ---------------------------------------------------------------------------------


def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _vm_usage() -> dict[str, int]:
    """VmSize / VmData of this process in bytes (Linux; empty elsewhere)."""
    out = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("VmSize", "VmData"):
                    out[key] = int(rest.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return out


def memory_budget() -> int:
    """Bytes this process can still allocate: available RAM, capped by its rlimit headroom."""
    budget = _meminfo_available()
    budget = 2**62 if budget is None else budget
    try:
        import resource
    except ImportError:  # not POSIX
        return budget
    usage = _vm_usage()
    for limit, used in ((resource.RLIMIT_AS, "VmSize"), (resource.RLIMIT_DATA, "VmData")):
        soft, _ = resource.getrlimit(limit)
        if soft != resource.RLIM_INFINITY:
            budget = min(budget, max(0, soft - usage.get(used, 0)))
    return budget


def gib(n: float) -> str:
    """A byte count for messages: '3.0 GiB'."""
    return f"{n / 2**30:.1f} GiB"


# --- files ----------------------------------------------------------------------------------


def file_kind(mode: int) -> str:
    """'a FIFO (named pipe)', 'a directory', ... for an st_mode that is not a regular file."""
    for test, name in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def read_regular_file(path: str | os.PathLike, max_bytes: int = MAX_CONFIG_BYTES) -> bytes:
    """A regular file's bytes, at most max_bytes; a FIFO, device or larger file is refused."""
    # O_NONBLOCK: opening a FIFO with no writer would otherwise wait forever.
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise CheckpointError(f"{path}: is {file_kind(st.st_mode)}, not a regular file")
        if st.st_size > max_bytes:
            raise CheckpointError(f"{path}: {st.st_size:,} bytes, over the {max_bytes:,} allowed")
        with os.fdopen(os.dup(fd), "rb") as f:
            data = f.read(max_bytes + 1)
    finally:
        os.close(fd)
    if len(data) > max_bytes:  # grew while being read
        raise CheckpointError(f"{path}: more than the {max_bytes:,} bytes allowed")
    return data


def _safetensors_header(head: bytes, size: int) -> bool:
    if len(head) < 9:
        return False
    (n,) = struct.unpack("<Q", head[:8])
    return 2 <= n <= size - 8 and head[8:9] == b"{"


def _zip_kind(path: str | os.PathLike, size: int) -> str | None:
    """What a zip archive holds; None for PyTorch's zip format (an archive with data.pkl)."""
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        return (
            f"a truncated or corrupt zip archive ({size:,} bytes; {e}); PyTorch's format is a "
            "zip, so the file was probably cut short while saving or downloading"
        )
    if any(n == "data.pkl" or n.endswith("/data.pkl") for n in names):
        return None
    if names and all(n.endswith(".npy") for n in names):
        return "a NumPy .npz archive (name it .npz)"
    return f"a zip archive without PyTorch's data.pkl (it holds {names[:3]})"


def _text_kind(head: bytes) -> str | None:
    text = head.lstrip()
    if text.startswith(b"version https://git-lfs"):
        return "a Git LFS pointer, not the weights (fetch them with `git lfs pull`)"
    if text[:15].lower().startswith((b"<!doctype html", b"<html", b"<?xml", b"<head")):
        return "an HTML/XML page (a failed or login-walled download?)"
    if text[:1] in (b"{", b"["):
        return "a JSON text file"
    try:
        sample = head[:64].decode("utf-8")
    except UnicodeDecodeError:
        return None
    if all(c.isprintable() or c.isspace() for c in sample):
        return f"a text file starting {sample[:40]!r}"
    return None


def describe_torch_file(path: str | os.PathLike) -> str | None:
    """What a file meant for torch.load really is, or None when it looks like a torch checkpoint."""
    size = os.path.getsize(path)
    if size == 0:
        return "an empty file (0 bytes)"
    with open(path, "rb") as f:
        head = f.read(512)
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return _zip_kind(path, size)
    if _safetensors_header(head, size):
        return "a safetensors file under another name (rename it to .safetensors)"
    if head[:1] == b"\x80" and len(head) > 1 and head[1] in _PICKLE_PROTOCOLS:
        return None  # torch's legacy (pre-1.6) format is a pickle stream
    magics = (
        (b"\x93NUMPY", "a NumPy .npy array"),
        (b"\x89HDF\r\n\x1a\n", "an HDF5 file (Keras / h5py)"),
        (b"\x1f\x8b", "a gzip-compressed file (decompress it first)"),
        (b"GGUF", "a GGUF file (llama.cpp)"),
    )
    for magic, what in magics:
        if head.startswith(magic):
            return what
    return _text_kind(head) or f"of an unknown format (first bytes {head[:8].hex(' ')})"


def _pickle_bytes(path: str | os.PathLike, limit: int = 256 * 2**20) -> bytes:
    """The pickle stream of a file: itself, or the data.pkl inside a PyTorch zip."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            name = next(n for n in z.namelist() if n.endswith("data.pkl"))
            with z.open(name) as f:
                return f.read(limit)
    with open(path, "rb") as f:
        return f.read(limit)


def pickle_imports(path: str | os.PathLike) -> list[str]:
    """'module.name' of every global a pickle would import, read without unpickling it."""
    import io
    import pickletools

    try:
        stream = io.BytesIO(_pickle_bytes(path))
    except (OSError, StopIteration, zipfile.BadZipFile):
        return []
    names: list[str] = []
    strings: list[str] = []
    try:
        for op, arg, _ in pickletools.genops(stream):
            if op.name in ("GLOBAL", "INST"):
                names.append(str(arg).replace(" ", "."))
            elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                names.append(".".join(strings[-2:]))
            if isinstance(arg, str):
                strings.append(arg)
    except (ValueError, EOFError, KeyError, IndexError, struct.error):
        pass  # a corrupt tail: what was parsed still counts
    return names


# --- weights --------------------------------------------------------------------------------


def is_float(dtype: Any) -> bool:
    """Whether dtype is a floating type, ml_dtypes' bfloat16 / float8 included."""
    dtype = np.dtype(dtype)
    return dtype.kind == "f" or (
        dtype.kind == "V" and dtype.name.startswith(("bfloat16", "float8", "float6", "float4"))
    )


def _names(items: Iterable[str], n: int = 10) -> str:
    items = list(items)
    more = f" and {len(items) - n} more" if len(items) > n else ""
    return ", ".join(items[:n]) + more


def _dtype(value: Any) -> np.dtype:
    """A tensor's numpy dtype, without reading a lazy tensor's values."""
    dtype = getattr(value, "dtype", None)
    return dtype if isinstance(dtype, np.dtype) else np.asarray(value).dtype


def check_float_dtypes(
    state_dict: Mapping[str, Any], non_float_keys: Iterable[str] = (), what: str = "state_dict"
) -> None:
    """Refuse integer, bool, complex or object tensors where the model holds float weights."""
    allowed = set(non_float_keys)
    dtypes = {k: _dtype(v) for k, v in state_dict.items()}
    bad = [
        f"{k} ({dtype})"
        for k, dtype in dtypes.items()
        if not is_float(dtype) and k not in allowed and not k.endswith(_NON_FLOAT_OK)
    ]
    if bad:
        raise CheckpointError(
            f"{what}: non-floating tensors where the model has float weights: {_names(bad)} "
            "(a quantised, corrupted or non-weight file?)"
        )


def check_finite(state_dict: Mapping[str, Any], what: str = "state_dict") -> None:
    """Refuse NaN or Inf in floating weights, naming every such key."""
    bad = []
    for k, v in state_dict.items():
        v = np.asarray(v)
        if is_float(v.dtype):
            finite = np.isfinite(v)
            if not finite.all():
                bad.append(f"{k} ({v.size - int(finite.sum())} of {v.size} values)")
    if bad:
        raise CheckpointError(nonfinite_message(what, bad))


def nonfinite_message(what: str, bad: Iterable[str]) -> str:
    """The error for non-finite weights, naming the offending keys."""
    return (
        f"{what}: non-finite weights (NaN or Inf) in {_names(bad)}; pass "
        "allow_nonfinite=True (convert: --allow-nonfinite) to load them anyway"
    )


# --- model configs --------------------------------------------------------------------------


def _matches(value: Any, hint: Any) -> bool:
    """Whether a JSON value fits a config field's type hint (lists stand for tuples)."""
    if hint is Any:
        return True
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if origin is tuple:
        args = typing.get_args(hint)
        if not isinstance(value, (list, tuple)):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_matches(v, args[0]) for v in value)
        if len(value) != len(args):
            return False
        return all(_matches(v, a) for v, a in zip(value, args, strict=True))
    if origin in (list, dict) or hint in (list, dict):
        return isinstance(value, origin or hint)
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True  # a hint this check does not know: the dataclass decides


def _numbers(value: Any) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _range_error(name: str, value: Any) -> str | None:
    """Why a field's value is out of range, or None."""
    for v in _numbers(value):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        if isinstance(v, float) and not math.isfinite(v):
            return "must be finite"
        if isinstance(v, int) and not 0 <= v <= MAX_INT_FIELD:
            return f"must be in [0, {MAX_INT_FIELD}]"
        if name in _POSITIVE and v < 1:
            return "must be >= 1"
        if name.endswith("_rate") and not 0 <= v <= 1:
            return "must be in [0, 1]"
        if "eps" in name and v <= 0:
            return "must be > 0"
        if name == "mlp_ratio" and v <= 0:
            return "must be > 0"
    if name == "depth" and isinstance(value, int) and value > MAX_DEPTH:
        return f"must be <= {MAX_DEPTH}"
    return None


def check_config_fields(cls: type, fields: Mapping[str, Any], where: str) -> None:
    """Types (from the dataclass's hints) and ranges of raw config.json fields, named on error."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for name, value in fields.items():
        if name not in names:
            continue  # from_dict names unknown fields
        if not _matches(value, hints.get(name, Any)):
            want = getattr(hints[name], "__name__", None) or str(hints[name])
            raise CheckpointError(
                f"{where}: field {name}={value!r} ({type(value).__name__}) is not {want}"
            )
        why = _range_error(name, value)
        if why:
            raise CheckpointError(f"{where}: field {name}={value!r} {why}")


def _pair(v: Any) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


def estimate_model_bytes(cfg: Any) -> int | None:
    """Lower bound on the bytes a ViT-like config needs: params + one block's activations, at 2
    bytes each (bf16: a model that cannot fit even so is refused; fp32 needs twice this)."""
    try:
        D, L = int(cfg.embed_dim), int(cfg.depth)
        (h, w), (ph, pw) = _pair(cfg.img_size), _pair(cfg.patch_size)
    except (AttributeError, TypeError, ValueError):
        return None  # not shaped like a ViT: only the field checks apply
    r = float(getattr(cfg, "mlp_ratio", 4.0))
    heads = int(getattr(cfg, "num_heads", 1))
    if getattr(cfg, "backbone", None) is not None:  # a hybrid's grid is its CNN's feature map
        gh, gw = cfg.grid_size
    else:
        gh, gw = h // max(ph, 1), w // max(pw, 1)
    tokens = gh * gw + 1 + int(getattr(cfg, "reg_tokens", 0) or 0)
    params = (
        L * (4 + 2 * r) * D * D  # qkv, proj, fc1, fc2
        + int(getattr(cfg, "in_chans", 3)) * ph * pw * D  # patch embedding
        + tokens * D  # position embedding
        + D * int(getattr(cfg, "num_classes", 0) or 0)  # head
    )
    activations = tokens * D * (4 + r) + heads * tokens * tokens  # one block, batch 1
    return int(2 * (params + activations))


def check_model_size(cfg: Any, where: str) -> None:
    """Refuse a config whose model could not fit in the memory this process has left."""
    need = estimate_model_bytes(cfg)
    budget = memory_budget()
    if need is not None and need > budget:
        raise CheckpointError(
            f"{where}: the model it describes needs at least {gib(need)} "
            f"(embed_dim={cfg.embed_dim}, depth={cfg.depth}, img_size={cfg.img_size}), more "
            f"than the {gib(budget)} of memory available"
        )


def model_config(family: str, fields: Any, where: str) -> Any:
    """The family's config from config.json's model_config, with types, ranges, size checked."""
    from vitjax import registry

    if family not in registry.FAMILIES:
        raise CheckpointError(f"{where}: unknown architecture {family!r}")
    if not isinstance(fields, Mapping):
        raise CheckpointError(f"{where}: model_config is {type(fields).__name__}, not an object")
    cls = registry.config_module(family).CONFIG
    check_config_fields(cls, fields, where)
    try:
        cfg = cls.from_dict(dict(fields))
    except (KeyError, TypeError, ValueError, ArithmeticError) as e:
        raise CheckpointError(f"{where}: bad model_config ({e})") from e
    check_model_size(cfg, where)
    return cfg
