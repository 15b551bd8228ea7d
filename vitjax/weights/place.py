"""Put converted weights on devices one leaf at a time: dtype, layout and finiteness.

A leaf arrives as numpy in Flax's layout, often a transposed view of the buffer read from the
file. That buffer goes to the device as it is (on the CPU JAX adopts an aligned buffer without a
copy) and the transpose, the cast to the parameter dtype and the NaN / Inf check run there in one
jitted pass: no host transpose, and the peak memory of a load is the model plus one leaf.

That program compiles once per kind of leaf (shape, dtype, transpose; ~0.1 s each on a CPU),
which a deep model's repeated blocks amortise. A model of at most HOST_MODEL_BYTES goes through
numpy instead (one copy per leaf, as the program makes; ~1.5 ms/MB against the program's
~0.6 ms/MB): no compiles (12-20 kinds per model, 1-2 s saved per load of a small model in a new
process). Big models keep the program: numpy's copies left vit_huge's peak memory 0.25 GB higher
(its long-lived small buffers among the freed big ones).

A big model's stacked (nn.scan) leaf is built on the device: each block's item is transposed,
cast and checked there and written into the stack in place (donated), so numpy never transposes
nor copies the whole stack (vit_huge with scan_blocks, 3-4 fresh runs each: load 9.4-12.8 ->
6.0-10.9 s, median 6.7; peak RSS 3.6-4.4 -> 2.84-2.93 GiB). A leaf that needs only the NaN / Inf
check is placed as it is; the check is a reduction that copies nothing.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vitjax.one_off import compile_once
from vitjax.weights import convert, validate
from vitjax.weights.errors import CheckpointError
from vitjax.weights.lazy import address, aligned_empty, owned

Path = tuple[str, ...]
HOST_MODEL_BYTES = 256 << 20  # models up to this size are placed through numpy


def _on_host(arr: np.ndarray, dtype: np.dtype, check: bool) -> tuple[np.ndarray, bool]:
    """(arr as a C-contiguous aligned dtype buffer, whether it is finite): one numpy pass."""
    finite = bool(np.isfinite(arr).all()) if check and validate.is_float(arr.dtype) else True
    if arr.dtype == dtype:
        return _adoptable(arr), finite
    out = aligned_empty(arr.shape, dtype)
    np.copyto(out, arr, casting="unsafe")  # transpose and cast together
    return out, finite


def _all_finite(x: jax.Array) -> jax.Array:
    """Whether a leaf holds no NaN / Inf (always, for a non-float leaf): traced, one bool."""
    return jnp.isfinite(x).all() if validate.is_float(x.dtype) else jnp.bool_(True)


@functools.lru_cache(maxsize=256)
def _transform(perm: tuple[int, ...], dtype: Any, shape: tuple[int, ...], src: Any) -> Callable:
    """The compiled program for one kind of leaf (a program run once per kind: vitjax.one_off)."""

    def fn(x: jax.Array) -> tuple[jax.Array, jax.Array]:
        return jnp.transpose(x, perm).astype(dtype), _all_finite(x)

    return compile_once(jax.jit(fn), jax.ShapeDtypeStruct(shape, src))


@functools.lru_cache(maxsize=256)
def _finite(shape: tuple[int, ...], dtype: Any) -> Callable:
    """The compiled NaN / Inf check for a leaf that needs nothing else: it reads the leaf and
    writes one bool, so the leaf placed is the buffer itself, not a copy (a stacked nn.scan leaf
    of a big model is the size of all its blocks)."""
    return compile_once(jax.jit(_all_finite), jax.ShapeDtypeStruct(shape, dtype))


@functools.lru_cache(maxsize=256)
def _filler(
    perm: tuple[int, ...], dtype: Any, n: int, shape: tuple[int, ...], src: Any
) -> tuple[Callable, Callable]:
    """(make the (n, ...) stack, write item i into it in place): compiled programs for one
    kind of stacked leaf; the write transposes, casts and checks one item (the stack donated)."""
    out = tuple(shape[p] for p in perm)
    empty = compile_once(jax.jit(lambda: jnp.zeros((n, *out), dtype)))

    def fill(stack: jax.Array, x: jax.Array, i: jax.Array) -> tuple[jax.Array, jax.Array]:
        return stack.at[i].set(jnp.transpose(x, perm).astype(dtype)), _all_finite(x)

    fill_jit = jax.jit(fill, donate_argnums=0)
    args = (jax.ShapeDtypeStruct((n, *out), dtype), jax.ShapeDtypeStruct(shape, src),
            jax.ShapeDtypeStruct((), jnp.int32))  # fmt: skip
    return empty, compile_once(fill_jit, *args)


class _DeviceStack:
    """A stacked (nn.scan) leaf of a big model assembled on the device: each item is
    transposed, cast and checked there, written into the stack in place (XLA's transpose,
    not numpy's strided copy; the peak is the stack plus one item)."""

    def __init__(self, placer: Placer, spath: Path, n: int, arr: np.ndarray) -> None:
        self.placer, self.spath, self.n = placer, spath, n
        self.dtype = np.dtype(target_dtype(arr.dtype, placer.keep, placer.param_dtype))
        self.value: jax.Array | None = None

    def fill(self, i: int, arr: np.ndarray) -> None:
        src, perm = _layout(arr)
        empty, fill = _filler(perm, self.dtype, self.n, src.shape, src.dtype)
        if self.value is None:
            self.value = empty()
        x = jax.device_put(_adoptable(src))
        self.value, finite = fill(self.value, x, np.int32(i))
        if self.placer.check_finite:
            self.placer._finite.append((self.spath, finite))

    def done(self) -> jax.Array:
        return self.value


def _layout(arr: np.ndarray) -> tuple[np.ndarray, tuple[int, ...]]:
    """(C-contiguous view of arr's buffer, perm) with arr == view.transpose(perm); arr itself
    and the identity when arr's strides are not a permuted C layout."""
    order = tuple(int(i) for i in np.argsort([-s for s in arr.strides], kind="stable"))
    src = arr.transpose(order)
    if not src.flags.c_contiguous:
        src, order = arr, tuple(range(arr.ndim))
    return src, tuple(int(i) for i in np.argsort(order))


def _adoptable(src: np.ndarray) -> np.ndarray:
    """src, or an aligned copy when JAX could not adopt it (a view of a torch tensor never is)."""
    if owned(src) and src.flags.c_contiguous and address(src) % 64 == 0:
        return src
    copy = aligned_empty(src.shape, src.dtype)
    np.copyto(copy, src)
    return copy


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
    """put(path, numpy leaf) -> device array, for convert.torch_to_flax_variables; model_bytes
    (the whole model's, when known) chooses numpy or the jitted program (module docstring)."""

    def __init__(
        self,
        keep: Any = np.float32,
        param_dtype: Any = None,
        shardings: Mapping[Path, Any] | None = None,
        check_finite: bool = True,
        model_bytes: int | None = None,
    ) -> None:
        self.keep, self.param_dtype = keep, param_dtype
        self.shardings, self.check_finite = dict(shardings or {}), check_finite
        self.on_host = model_bytes is not None and model_bytes <= HOST_MODEL_BYTES
        self._finite: list[tuple[Path, Any]] = []
        self._stacked: dict[Path, int] = {}  # stacked (nn.scan) leaves: their item counts

    def __call__(self, path: Path, arr: np.ndarray) -> jax.Array:
        dtype = np.dtype(target_dtype(arr.dtype, self.keep, self.param_dtype))
        src, perm = _layout(arr)
        as_is = perm == tuple(range(src.ndim)) and dtype == src.dtype  # no transpose, no cast
        host = None
        if not as_is or self.check_finite:
            if self.on_host:
                host, finite = _on_host(arr, dtype, self.check_finite)
            elif as_is:  # only the check: the buffer itself is placed
                x = jax.device_put(_adoptable(src))
                finite = _finite(src.shape, src.dtype)(x) if validate.is_float(src.dtype) else True
            else:
                program = _transform(perm, dtype, src.shape, src.dtype)
                x, finite = program(jax.device_put(_adoptable(src)))
            self._finite.append((path, finite))
        else:
            host = _adoptable(src)
        sharding = self.shardings.get(path)
        if sharding is None:
            return jax.device_put(host) if host is not None else x
        if host is None:
            host = np.asarray(x)  # each device gets its slice; none holds more than its share
        return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])

    def stack(self, spath: Path, n: int, arr: np.ndarray) -> Any:
        """A stacked leaf's assembler, for convert.torch_to_flax_variables: on the device for a
        big model without a sharding for it, else in one host buffer put whole."""
        self._stacked[spath] = n
        if self.on_host or spath in self.shardings:
            return convert.HostStack(self, spath, n, arr)
        return _DeviceStack(self, spath, n, arr)

    def finish(self, variables: Mapping[str, Any], what: str) -> None:
        """Raise naming every leaf with NaN / Inf (when checking), after the last leaf."""
        if not self.check_finite:
            return
        bad = list(dict.fromkeys(path for path, ok in self._finite if not bool(ok)))
        if not bad:
            return
        flat, names = convert.flatten(variables), []
        for path in bad:
            value = np.asarray(flat[path])
            items = [(path, value)]
            if path in self._stacked:  # name the items (timm's blocks.{i}.*), not the stack
                split = convert.unstacked_paths(path, value.shape, {path[1]: self._stacked[path]})
                items = [(p, value[i]) for i, (p, _) in enumerate(split)]
            for p, v in items:
                n_bad = v.size - int(np.isfinite(v).sum())
                if n_bad:
                    key = convert.torch_entry(p, v)[0]
                    names.append(f"{key} ({n_bad} of {v.size} values)")
        raise CheckpointError(validate.nonfinite_message(what, names))
