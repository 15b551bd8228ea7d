"""Put converted weights on devices one leaf at a time: dtype, layout and finiteness on device.

A leaf arrives as numpy in Flax's layout, often a transposed view of the buffer read from the
file. That buffer goes to the device as it is (on the CPU JAX adopts an aligned buffer without a
copy) and the transpose, the cast to the parameter dtype and the NaN / Inf check run there in one
jitted pass: no host transpose, and the peak memory of a load is the model plus one leaf.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vitjax.weights import convert, validate
from vitjax.weights.errors import CheckpointError
from vitjax.weights.lazy import address, aligned_empty, owned

Path = tuple[str, ...]


@functools.cache
def _transform(perm: tuple[int, ...], dtype: Any) -> Callable:
    def fn(x: jax.Array) -> tuple[jax.Array, jax.Array]:
        finite = jnp.isfinite(x).all() if validate.is_float(x.dtype) else jnp.bool_(True)
        return jnp.transpose(x, perm).astype(dtype), finite

    return jax.jit(fn)


def _source(arr: np.ndarray) -> tuple[np.ndarray, tuple[int, ...]]:
    """(C-contiguous aligned buffer nobody else holds, perm) with arr == buffer.transpose(perm)."""
    order = tuple(int(i) for i in np.argsort([-s for s in arr.strides], kind="stable"))
    src = arr.transpose(order)
    if not src.flags.c_contiguous:
        src, order = arr, tuple(range(arr.ndim))
    if not (owned(src) and src.flags.c_contiguous and address(src) % 64 == 0):
        copy = aligned_empty(src.shape, src.dtype)  # a view of a torch tensor is never adopted
        np.copyto(copy, src)
        src = copy
    return src, tuple(int(i) for i in np.argsort(order))


def target_dtype(dtype: np.dtype, keep: Any, param_dtype: Any = None) -> np.dtype:
    """A leaf's parameter dtype: param_dtype if given, else float32 unless already keep."""
    if not validate.is_float(dtype):
        return dtype
    if param_dtype is not None:
        return np.dtype(param_dtype)
    return dtype if dtype in (np.dtype(keep), np.dtype(np.float32)) else np.dtype(np.float32)


def resolve_shardings(shardings: Any, shapes: Mapping[str, Any]) -> Any:
    """A shardings argument as a tree like shapes (a callable is called on shapes)."""
    return shardings(shapes) if callable(shardings) else shardings


def flat_shardings(shardings: Any, shapes: Mapping[str, Any]) -> dict[Path, Any]:
    """{variables path: Sharding} from a tree like variable_shapes(model), or a callable on it."""
    return {} if shardings is None else convert.flatten(resolve_shardings(shardings, shapes))


class Placer:
    """put(path, numpy leaf) -> device array, for convert.torch_to_flax_variables."""

    def __init__(
        self,
        keep: Any = np.float32,
        param_dtype: Any = None,
        shardings: Mapping[Path, Any] | None = None,
        check_finite: bool = True,
    ) -> None:
        self.keep, self.param_dtype = keep, param_dtype
        self.shardings, self.check_finite = dict(shardings or {}), check_finite
        self._finite: list[tuple[Path, jax.Array]] = []

    def __call__(self, path: Path, arr: np.ndarray) -> jax.Array:
        dtype = target_dtype(arr.dtype, self.keep, self.param_dtype)
        src, perm = _source(arr)
        x = jax.device_put(src)
        if perm != tuple(range(src.ndim)) or dtype != src.dtype or self.check_finite:
            x, finite = _transform(perm, dtype)(x)
            self._finite.append((path, finite))
        sharding = self.shardings.get(path)
        if sharding is None:
            return x
        host = np.asarray(x)  # each device gets its slice; none holds more than its share
        return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])

    def finish(self, variables: Mapping[str, Any], what: str) -> None:
        """Raise naming every leaf with NaN / Inf (when checking), after the last leaf."""
        if not self.check_finite:
            return
        bad = [path for path, ok in self._finite if not bool(ok)]
        if not bad:
            return
        flat, names = convert.flatten(variables), []
        for path in bad:
            value = np.asarray(flat[path])
            key = convert.torch_entry(path, value)[0]
            n_bad = value.size - int(np.isfinite(value).sum())
            names.append(f"{key} ({n_bad} of {value.size} values)")
        raise CheckpointError(validate.nonfinite_message(what, names))
