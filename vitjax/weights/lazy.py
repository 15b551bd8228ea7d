"""A .safetensors file as a lazy state_dict: the header at open, each tensor read when asked.

Each tensor is read with plain file reads into its own 64-byte-aligned buffer, which JAX on the
CPU adopts without a copy. A memory map (what the safetensors package reads through) would count
every page touched against the process until closed, doubling peak memory while the tensors are
converted; this way peak memory is the converted model plus one tensor.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from vitjax.weights.errors import CheckpointError

_MAX_HEADER = 100 * 2**20  # the safetensors format's own limit
_ALIGN = 64


def _dtypes() -> dict[str, np.dtype]:
    import ml_dtypes  # bfloat16 / float8 as numpy dtypes (jax ships it)

    names = {
        "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
        "F8_E4M3": ml_dtypes.float8_e4m3fn, "F8_E5M2": ml_dtypes.float8_e5m2,
        "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8,
        "U64": np.uint64, "U32": np.uint32, "U16": np.uint16, "U8": np.uint8, "BOOL": np.bool_,
        "C64": np.complex64,
    }  # fmt: skip
    return {k: np.dtype(v) for k, v in names.items()}


class ReadBuffer(np.ndarray):
    """Marks memory vitjax read from a file and nobody else holds: safe to hand to JAX as is."""


def owned(array: Any) -> bool:
    """Whether array is (a view of) a buffer this module read, so no one else can change it."""
    while isinstance(array, np.ndarray):
        if isinstance(array, ReadBuffer):
            return True
        array = array.base
    return False


def address(array: np.ndarray) -> int:
    """Where array's data starts in memory."""
    return int(array.__array_interface__["data"][0])


def aligned_empty(shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """An uninitialised array whose data starts on a 64-byte boundary (a ReadBuffer view)."""
    dtype = np.dtype(dtype)
    n = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = ReadBuffer((n + _ALIGN,), np.uint8)  # owns its memory: every view's base is raw
    start = -address(raw) % _ALIGN
    return np.asarray(raw[start : start + n]).view(dtype).reshape(shape)


class LazyTensor:
    """One tensor of a safetensors file: shape and dtype now, data on np.asarray()."""

    def __init__(self, path: Path, key: str, dtype: np.dtype, shape: tuple, offset: int) -> None:
        self.path, self.key, self.dtype, self.shape, self.offset = path, key, dtype, shape, offset

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize

    def read(self) -> np.ndarray:
        """The tensor's values in a fresh aligned buffer."""
        out = aligned_empty(self.shape, self.dtype)
        view = memoryview(out.reshape(-1).view(np.uint8))
        with open(self.path, "rb", buffering=0) as f:
            f.seek(self.offset)
            done = 0
            while done < len(view):
                n = f.readinto(view[done:])
                if not n:
                    raise CheckpointError(
                        f"{self.path}: truncated: tensor {self.key} ends at byte "
                        f"{self.offset + len(view)}, the file at {self.offset + done}"
                    )
                done += n
        return out

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self.read()
        return out if dtype is None else out.astype(dtype)

    def __repr__(self) -> str:
        return f"LazyTensor({self.key!r}, {self.dtype}, {self.shape})"


class LazySafetensors(Mapping):
    """{key: LazyTensor} for a .safetensors file; the header is checked whole at open."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.metadata: dict[str, str] = {}
        self._tensors = self._read_header()

    def _fail(self, why: str) -> CheckpointError:
        return CheckpointError(f"{self.path}: not a readable safetensors file ({why})")

    def _read_header(self) -> dict[str, LazyTensor]:
        try:
            size = self.path.stat().st_size
            with open(self.path, "rb") as f:
                head = f.read(8)
                if len(head) < 8:
                    raise self._fail("shorter than its 8-byte header length")
                (n,) = struct.unpack("<Q", head)
                if n > min(_MAX_HEADER, size - 8):
                    raise self._fail(f"header length {n} exceeds the file or the format's limit")
                header = json.loads(f.read(n))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise self._fail(str(e)) from e
        if not isinstance(header, dict):
            raise self._fail("header is not a JSON object")
        meta = header.pop("__metadata__", None) or {}
        self.metadata = {str(k): str(v) for k, v in meta.items()} if isinstance(meta, dict) else {}
        return self._entries(header, size - 8 - n, 8 + n)

    def _entries(self, header: dict, data_size: int, base: int) -> dict[str, LazyTensor]:
        dtypes, out, spans = _dtypes(), {}, []
        for key, info in header.items():
            if isinstance(info, dict) and info.get("dtype") not in dtypes:
                raise self._fail(f"tensor {key}: dtype {info.get('dtype')!r} is not supported")
            try:
                dtype, shape = dtypes[info["dtype"]], tuple(int(d) for d in info["shape"])
                begin, end = (int(x) for x in info["data_offsets"])
            except (KeyError, TypeError, ValueError) as e:
                raise self._fail(f"tensor {key}: bad entry {info!r}") from e
            want = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            if min(shape, default=0) < 0 or not 0 <= begin <= end <= data_size:
                raise self._fail(f"tensor {key}: offsets {begin}..{end} outside the data")
            if end - begin != want:
                raise self._fail(f"tensor {key}: {end - begin} bytes for shape {shape} {dtype}")
            spans.append((begin, end, key))
            out[key] = LazyTensor(self.path, key, dtype, shape, base + begin)
        spans.sort()
        for (_, e0, k0), (b1, _, k1) in zip(spans, spans[1:], strict=False):
            if b1 < e0:
                raise self._fail(f"tensors {k0} and {k1} overlap")
        return out

    def __getitem__(self, key: str) -> LazyTensor:
        return self._tensors[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._tensors)

    def __len__(self) -> int:
        return len(self._tensors)


def load(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every tensor of a .safetensors file, read into aligned numpy arrays."""
    return {k: t.read() for k, t in LazySafetensors(path).items()}
