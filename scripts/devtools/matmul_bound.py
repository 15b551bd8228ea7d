"""The matmul-only bound: how fast a ViT step could run if all but its matmuls were free.

Every matmul of one training step or inference forward is listed with its operand shapes and the
form the backward pass uses (``x@W``, ``g@W.T``, ``x.T@g``, and the batched attention forms).
Each distinct matmul is timed in isolation, in jax and in torch, and given the best rate either
reaches on this machine; the bound is the sum of FLOPs / rate. No implementation whose matmuls
run at those rates can beat it: it tells how much of a speed target is within reach at all.
The FLOPs add up to ``devtools.bench.forward_flops`` / ``train_flops`` (tested).

Imports neither jax nor torch at import time.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from devtools.bench import _timeit
from vitjax.models.vit_config import ViTConfig
from vitjax.util import to_2tuple


class Matmul(NamedTuple):
    """One matmul kind: ``count`` calls per step of a ``form`` with leading batch ``b``.

    Forms (operands as stored): ``x@W`` (m,k)@(k,n); ``g@W.T`` (m,n)@(k,n)^T -> (m,k);
    ``x.T@g`` (m,k)^T@(m,n) -> (k,n); batched ``q@k.T`` (b,m,k)@(b,n,k)^T; ``p@v``
    (b,m,k)@(b,k,n); ``p.T@g`` (b,k,m)^T@(b,k,n) -> (b,m,n).
    """

    name: str
    form: str
    b: int
    m: int
    k: int
    n: int
    count: int

    @property
    def flops(self) -> float:
        return 2.0 * self.b * self.m * self.k * self.n * self.count


def step_matmuls(cfg: ViTConfig, batch_size: int, task: str) -> list[Matmul]:
    """Every matmul of one training step (``task='train'``) or inference forward ('infer')."""
    if task not in ("train", "infer"):
        raise ValueError(f"unknown task {task!r}: 'train' or 'infer'")
    train = task == "train"
    B, D, L = batch_size, cfg.embed_dim, cfg.depth
    N = cfg.num_patches + cfg.num_prefix_tokens
    M, H, Dh = B * N, cfg.num_heads, cfg.head_dim
    ph, pw = to_2tuple(cfg.patch_size)
    out: list[Matmul] = []

    def dense(name: str, m: int, k: int, n: int, count: int, dgrad: bool = True) -> None:
        out.append(Matmul(name, "x@W", 1, m, k, n, count))
        if train and dgrad:
            out.append(Matmul(name + " dgrad", "g@W.T", 1, m, n, k, count))
        if train:
            out.append(Matmul(name + " wgrad", "x.T@g", 1, k, m, n, count))

    dense("patch_embed", B * cfg.num_patches, ph * pw * cfg.in_chans, D, 1, dgrad=False)
    dense("qkv", M, D, 3 * D, L)
    dense("proj", M, D, D, L)
    dense("fc1", M, D, cfg.mlp_hidden, L)
    dense("fc2", M, cfg.mlp_hidden, D, L)
    if cfg.num_classes > 0:
        dense("head", B, D, cfg.num_classes, 1 + int(cfg.distilled))
    out.append(Matmul("attn q@k.T", "q@k.T", B * H, N, Dh, N, L))
    out.append(Matmul("attn p@v", "p@v", B * H, N, N, Dh, L))
    if train:
        out.append(Matmul("attn dp=g@v.T", "q@k.T", B * H, N, Dh, N, L))
        out.append(Matmul("attn dv=p.T@g", "p.T@g", B * H, N, N, Dh, L))
        out.append(Matmul("attn dq=ds@k", "p@v", B * H, N, N, Dh, L))
        out.append(Matmul("attn dk=ds.T@q", "p.T@g", B * H, N, N, Dh, L))
    return out


# Each form as an einsum over the dims b, m, k, n; the operand shapes follow from it.
_EINSUM = {
    "x@W": "mk,kn->mn",
    "g@W.T": "mk,nk->mn",
    "x.T@g": "km,kn->mn",
    "q@k.T": "bmk,bnk->bmn",
    "p@v": "bmk,bkn->bmn",
    "p.T@g": "bkm,bkn->bmn",
}


def _operands(mm: Matmul) -> list[tuple[int, ...]]:
    dims = {"b": mm.b, "m": mm.m, "k": mm.k, "n": mm.n}
    return [tuple(dims[d] for d in spec) for spec in _EINSUM[mm.form].split("->")[0].split(",")]


def _jax_call(mm: Matmul, a: np.ndarray, b: np.ndarray) -> Any:
    import jax
    import jax.numpy as jnp

    f = jax.jit(lambda x, y: jnp.einsum(_EINSUM[mm.form], x, y))
    ja, jb = jnp.asarray(a), jnp.asarray(b)
    return lambda: f(ja, jb).block_until_ready()


def _torch_call(mm: Matmul, a: np.ndarray, b: np.ndarray) -> Any:
    import torch

    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    f = {
        "x@W": lambda: ta @ tb,
        "g@W.T": lambda: ta @ tb.t(),
        "x.T@g": lambda: ta.t() @ tb,
        "q@k.T": lambda: torch.bmm(ta, tb.transpose(1, 2)),
        "p@v": lambda: torch.bmm(ta, tb),
        "p.T@g": lambda: torch.bmm(ta.transpose(1, 2), tb),
    }[mm.form]

    def call() -> None:
        with torch.no_grad():
            f()

    return call


def time_matmul(mm: Matmul, framework: str = "jax", repeats: int = 5) -> float:
    """Best GFLOP/s of one call of ``mm`` (its stored-operand form) in 'jax' or 'torch'."""
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal(s, dtype=np.float32) for s in _operands(mm))
    call = (_jax_call if framework == "jax" else _torch_call)(mm, a, b)
    return mm.flops / mm.count / _timeit(call, repeats)[0] / 1e9


def matmul_bound(
    cfg: ViTConfig,
    batch_size: int,
    tasks: tuple[str, ...] = ("train", "infer"),
    repeats: int = 5,
    threads: int | None = None,
) -> dict[str, Any]:
    """Per task: matmul-only seconds per step and images/s at jax's, torch's and the best rates.

    Each distinct (form, shapes) is timed once per framework: every jax timing first, then
    every torch one (torch's OpenMP threads spin after a call and would slow a jax call next to
    it). torch is skipped when not importable.
    """
    per_task = {t: step_matmuls(cfg, batch_size, t) for t in tasks}
    distinct = {(mm.form, mm.b, mm.m, mm.k, mm.n): mm for mms in per_task.values() for mm in mms}
    frameworks = ["jax"]
    try:
        import torch

        torch.set_num_threads(threads or torch.get_num_threads())
        frameworks.append("torch")
    except ImportError:
        pass
    rates = {
        (fw, key): time_matmul(mm._replace(count=1), fw, repeats)
        for fw in frameworks
        for key, mm in distinct.items()
    }
    out: dict[str, Any] = {}
    for task, mms in per_task.items():
        rows = []
        for mm in mms:
            key = (mm.form, mm.b, mm.m, mm.k, mm.n)
            r = {fw: rates[(fw, key)] for fw in frameworks}
            rows.append({**mm._asdict(), "gflops": mm.flops / 1e9, **r, "best": max(r.values())})
        res: dict[str, Any] = {"gflops": sum(r["gflops"] for r in rows)}
        for fw in [*frameworks, "best"]:
            seconds = sum(r["gflops"] / r[fw] for r in rows)
            res[f"seconds_{fw}"] = seconds
            res[f"images_per_s_{fw}"] = batch_size / seconds
        res["seconds"], res["images_per_s"] = res["seconds_best"], res["images_per_s_best"]
        res["matmuls"] = rows
        out[task] = res
    return out
