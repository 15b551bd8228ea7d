"""Prove conversions against timm: one set of weights, the real file path, same images, max |diff|.

Needs torch and timm at call time (imported lazily); used by scripts/timm_coverage.py
and the parity tests (vitjax-convert --verify is vitjax.cli.verify).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from devtools.cpu_tuning import available_memory_bytes
from vitjax.cli.verify import (  # noqa: F401  (re-exported for the tests)
    flax_forward,
    images,
    max_diff,
    timm_forward,
    verify_conversion,
)

FORMATS = ("safetensors", "pth", "npz_vit_jax", "npz_big_vision")


def randomize_(module: Any, seed: int = 0) -> Any:
    """Give every timm parameter non-trivial values (unit-scale activations); eval mode."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if p.ndim >= 2 and name.endswith("weight"):
                fan_in = int(np.prod(p.shape[1:]))
                p.copy_(noise * fan_in**-0.5)
            elif name.endswith("gamma"):  # LayerScale: make every block count
                p.copy_(0.5 + 0.1 * noise)
            elif name.endswith("weight"):  # norm scales
                p.copy_(1.0 + 0.1 * noise)
            else:  # biases, tokens, position embeddings, latent query
                p.copy_(0.2 * noise)
    return module.eval()


def make_timm(name: str, seed: int = 0, **kwargs: Any) -> Any:
    """timm.create_model(name, pretrained=False, **kwargs) with randomized weights, eval mode."""
    import timm
    import torch

    torch.manual_seed(seed)
    return randomize_(timm.create_model(name, pretrained=False, **kwargs), seed)


def save_timm_checkpoint(module: Any, path: str | os.PathLike, fmt: str) -> Path:
    """Write a timm model's weights as timm users store them: safetensors, .pth or .npz."""
    import torch

    sd = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    path = Path(path)
    if fmt == "safetensors":
        from safetensors.torch import save_file

        save_file(sd, str(path.with_suffix(".safetensors")))
        return path.with_suffix(".safetensors")
    if fmt == "pth":
        torch.save({"state_dict": sd, "epoch": 3}, path.with_suffix(".pth"))
        return path.with_suffix(".pth")
    if fmt.startswith("npz_"):
        from vitjax.weights.npz import save_npz

        heads = module.blocks[0].attn.num_heads
        layout = fmt[len("npz_") :]
        prefix = "params/" if layout == "big_vision" else ""
        return save_npz(
            path.with_suffix(".npz"),
            {k: v.numpy() for k, v in sd.items()},
            heads,
            layout=layout,
            stacked=layout == "big_vision",
            prefix=prefix,
        )
    raise ValueError(f"fmt={fmt!r}: expected one of {FORMATS}")


def check_name(
    name: str,
    fmt: str = "safetensors",
    batch: int = 2,
    seed: int = 0,
    workdir: str | os.PathLike | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """timm model (kwargs, e.g. depth=2) -> file -> vitjax.create_model(name): outputs and diffs."""
    from vitjax.factory import create_model

    module = make_timm(name, seed, **kwargs)
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        path = save_timm_checkpoint(module, Path(tmp) / "ckpt", fmt)
        model, variables = create_model(name, checkpoint_path=path, **kwargs)
    x = images(module, batch, seed)
    t_logits, t_pre = timm_forward(module, x)
    j_logits, j_pre = flax_forward(model, variables, x)
    return {
        "name": name,
        "fmt": fmt,
        "kwargs": kwargs,
        "timm": {"logits": t_logits, "pre_logits": t_pre},
        "jax": {"logits": j_logits, "pre_logits": j_pre},
        "logits": max_diff(j_logits, t_logits),
        "pre_logits": max_diff(j_pre, t_pre),
    }


# --- the coverage table (scripts/timm_coverage.py): every family ------------------------------

COVERAGE_PATTERNS = ("vit_*", "deit*", "test_vit*", "eva*", "naflexvit_*")
CUT_DEPTH = 2  # blocks run by a cut model: depth 2 keeps every feature of each family
NAFLEX_GRIDS = ((12, 20), (24, 8))  # patches of a NaFlex batch's two aspect ratios (5:3, 1:3)
REL_LIMIT = 1e-5


def timm_vit_names() -> list[str]:
    """timm's vit_*, deit* and test_vit* names (the table's first 235)."""
    import timm

    return [n for p in ("vit_*", "deit*", "test_vit*") for n in timm.list_models(p)]


def coverage_names() -> list[str]:
    """Every timm name the coverage table lists: vit_*, deit*, test_vit*, eva*, naflexvit_*."""
    import timm

    names: dict[str, None] = {}
    for p in COVERAGE_PATTERNS:
        names.update(dict.fromkeys(timm.list_models(p)))
    return list(names)


def randomize_stats_(module: Any, seed: int = 0) -> Any:
    """BatchNorm running statistics away from (0, 1), so that eval mode uses them."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
    return module


def _meta_timm(name: str, **kwargs: Any) -> Any:
    """timm.create_model(name, pretrained=False, **kwargs) on the meta device: structure only."""
    import warnings

    import timm
    import torch

    with warnings.catch_warnings(), torch.device("meta"):
        warnings.simplefilter("ignore")
        return timm.create_model(name, pretrained=False, **kwargs)


def _n_params(module: Any) -> int:
    return sum(p.numel() for p in module.parameters())


def cut_kwargs(name: str, meta_full: Any, depth: int) -> tuple[dict, dict, Any]:
    """(timm kwargs, vitjax config overrides, meta model) running `depth` blocks.

    Per-block kv heads (Sapiens2's grouped-query middle blocks) keep the first block's and the
    first differing block's, so a cut model still holds both kinds.
    """
    try:
        return {"depth": depth}, {"depth": depth}, _meta_timm(name, depth=depth)
    except Exception:
        attn = getattr(meta_full.blocks[0], "attn", None)
        if attn is None or not hasattr(attn, "num_kv_heads"):
            raise
    heads = attn.num_heads
    kv = [int(getattr(b.attn, "num_kv_heads", heads)) for b in meta_full.blocks]
    other = next((h for h in kv if h != kv[0]), kv[0])
    kept = (kv[0], other, *[other] * (depth - 2))[:depth]
    timm_kw = {"depth": depth, "num_kv_heads": kept}
    cfg_kw = {"depth": depth, "num_kv_heads": None if set(kept) == {heads} else kept}
    return timm_kw, cfg_kw, _meta_timm(name, **timm_kw)


def _grid(cfg: Any) -> tuple[int, int]:
    from vitjax.util import to_2tuple

    (h, w), (ph, pw) = to_2tuple(cfg.img_size), to_2tuple(cfg.patch_size)
    return h // ph, w // pw


def naflex_batch(cfg: Any, grids: Any = NAFLEX_GRIDS, extra: int = 3, seed: int = 0) -> dict:
    """A NaFlex batch: images of `grids` patches patchified by timm, padded to one length.

    numpy patches (B, N, P), patch_coord (B, N, 2; zero on padding), patch_valid (B, N); the
    padding holds garbage, which the masks must hide.
    """
    import torch
    from timm.models.naflexvit import batch_patchify

    from vitjax.util import to_2tuple

    ph, pw = to_2tuple(cfg.patch_size)
    rng = np.random.default_rng(seed)
    rows = []
    for gh, gw in grids:
        im = rng.standard_normal((1, cfg.in_chans, gh * ph, gw * pw)).astype(np.float32)
        p, (gh, gw) = batch_patchify(
            torch.from_numpy(im), (ph, pw), channels_last=cfg.patchify_channels_last
        )
        yy, xx = np.meshgrid(np.arange(gh), np.arange(gw), indexing="ij")
        rows.append((p[0].numpy(), np.stack([yy.ravel(), xx.ravel()], -1)))
    n = max(len(p) for p, _ in rows) + extra
    patches = rng.standard_normal((len(rows), n, rows[0][0].shape[1])).astype(np.float32)
    coord = np.zeros((len(rows), n, 2), np.int64)
    valid = np.zeros((len(rows), n), bool)
    for i, (p, c) in enumerate(rows):
        patches[i, : len(p)], coord[i, : len(p)], valid[i, : len(p)] = p, c, True
    return {"patches": patches, "patch_coord": coord, "patch_valid": valid}


def family_inputs(family: str, cfg: Any, seed: int = 0) -> dict[str, Any]:
    """The inputs a family's models are compared on: NHWC images at the config's size and
    channels (batch 1 above 1024 tokens); naflex models also a two-aspect NaFlex batch."""
    from vitjax.util import to_2tuple

    gh, gw = _grid(cfg)
    batch = 1 if gh * gw > 1024 else 2
    h, w = to_2tuple(cfg.img_size)
    x = np.random.default_rng(seed).standard_normal((batch, h, w, cfg.in_chans))
    inputs: dict[str, Any] = {"image": x.astype(np.float32)}
    if family == "naflex":
        inputs["naflex"] = naflex_batch(cfg, seed=seed)
    return inputs


def timm_outputs(module: Any, inputs: dict[str, Any]) -> dict[str, np.ndarray]:
    """{input.logits, input.pre_logits} of a timm model (images NHWC -> NCHW; NaFlex dicts)."""
    import torch

    out = {}
    with torch.no_grad():
        for key, x in inputs.items():
            if isinstance(x, dict):
                feats = module.forward_features(**{k: torch.from_numpy(v) for k, v in x.items()})
                head = lambda pre, f=feats: module.forward_head(**f, pre_logits=pre)  # noqa: E731
            else:
                t = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
                feats = module.forward_features(t)
                head = lambda pre, f=feats: module.forward_head(f, pre_logits=pre)  # noqa: E731
            out[f"{key}.logits"] = head(False).numpy()
            out[f"{key}.pre_logits"] = head(True).numpy()
    return out


def _jax_inputs(inputs: dict[str, Any]) -> dict[str, Any]:
    def conv(v: np.ndarray) -> np.ndarray:
        return v.astype(np.int32) if v.dtype == np.int64 else v

    return {k: ({n: conv(a) for n, a in x.items()} if isinstance(x, dict) else x)
            for k, x in inputs.items()}  # fmt: skip


def vitjax_outputs(model: Any, variables: Any, inputs: dict[str, Any]) -> dict[str, np.ndarray]:
    """The same outputs of a vitjax model (fp32, highest matmul precision, one jitted call)."""
    import jax

    def outputs(m: Any, ins: dict[str, Any]) -> dict[str, Any]:
        out = {}
        for key, x in ins.items():
            feats = m.forward_features(x)
            out[f"{key}.logits"] = m.forward_head(feats)
            out[f"{key}.pre_logits"] = m.forward_head(feats, pre_logits=True)
        return out

    with jax.default_matmul_precision("highest"):
        fn = jax.jit(lambda v, ins: model.apply(v, ins, method=outputs))
        res = fn(variables, _jax_inputs(inputs))
    return {k: np.asarray(v) for k, v in res.items()}


def worst_diff(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> dict[str, Any]:
    """max_diff of the output with the largest relative difference, and which one it is."""
    diffs = {k: max_diff(got[k], want[k]) for k in want}
    for d in diffs.values():  # a NaN or inf output is a failure, never a small difference
        if not np.isfinite(d["rel"]) or not np.isfinite(d["max_abs"]):
            d["rel"] = float("inf")
    key = max(diffs, key=lambda k: diffs[k]["rel"])
    return {**diffs[key], "output": key, "all": diffs}


def same_variables(a: Any, b: Any) -> str | None:
    """None when two variable trees are bit-identical, else the first difference."""
    import jax

    fa, fb = (jax.tree_util.tree_flatten_with_path(t)[0] for t in (a, b))
    if [p for p, _ in fa] != [p for p, _ in fb]:
        return f"trees differ: {len(fa)} vs {len(fb)} leaves"
    for (path, x), (_, y) in zip(fa, fb, strict=True):
        x, y = np.asarray(x), np.asarray(y)
        if x.dtype != y.dtype or x.shape != y.shape or not np.array_equal(x, y):
            return f"{jax.tree_util.keystr(path)} differs"
    return None


def export_check(name: str, model: Any, variables: Any, source: Any, timm_kw: dict) -> str:
    """'yes' when to_timm_state_dict loads into a fresh timm.create_model(name, **timm_kw) with
    strict=True (built on the meta device, assign=True) and every tensor equals the source
    model's bit for bit; else what failed."""
    import torch

    from vitjax.factory import to_timm_state_dict

    try:
        sd = to_timm_state_dict(model, variables, framework="pt")
        fresh = _meta_timm(name, **timm_kw)
        fresh.load_state_dict(sd, strict=True, assign=True)
    except Exception as e:
        return f"no: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
    ref = source.state_dict()
    for k, v in ref.items():
        got = sd[k]
        if got.dtype != v.dtype or got.shape != v.shape or not torch.equal(got, v):
            return f"no: {k} differs from the source ({got.dtype}{tuple(got.shape)})"
    return "yes"


def float64_check(
    module: Any, inputs: dict[str, Any], timm32: np.ndarray, jax32: np.ndarray, key: str
) -> str:
    """How far timm's and vitjax's float32 outputs are from timm's own in float64 (the measured
    reason for a difference over the limit: round-off on both sides, or vitjax alone)."""
    import copy

    m64 = copy.deepcopy(module).double()
    ins64 = {
        k: ({n: a.astype(np.float64) if a.dtype == np.float32 else a for n, a in x.items()}
            if isinstance(x, dict) else x.astype(np.float64))
        for k, x in inputs.items()
    }  # fmt: skip
    ref = timm_outputs(m64, {key.split(".")[0]: ins64[key.split(".")[0]]})[key]
    del m64
    scale = float(np.abs(ref).max())
    t, j = (float(np.abs(a.astype(np.float64) - ref).max()) / scale for a in (timm32, jax32))
    verdict = "same order as timm's own: float32 round-off" if j <= 3 * t else "vitjax's own"
    return (
        f"against timm in float64 ({key}): timm's float32 is {t:.1e} off (relative), vitjax's "
        f"{j:.1e} ({verdict})"
    )


def _error(where: str, e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{where}: {type(e).__name__}: {text[:300]}"


def coverage_row(
    name: str, full_depth: bool = False, workdir: Any = None, seed: int = 0
) -> dict[str, Any]:
    """One coverage-table row for a timm name, every family.

    The timm class and the vitjax family that reads it (or the part vitjax refuses); the VARIANTS
    row against config_from_timm; timm's model (random non-trivial weights, BatchNorm statistics
    too) through both paths, vitjax.from_timm(module) and vitjax.create_model(name,
    checkpoint_path=FILE.safetensors, **cut); the worst relative difference of logits and
    pre-logits (images; naflex also a NaFlex batch of two aspect ratios); and the export into a
    fresh timm model with strict=True.
    """
    import gc
    import time
    import warnings

    import vitjax
    from vitjax import registry
    from vitjax.models.common import UnsupportedModelError

    start = time.perf_counter()
    row: dict[str, Any] = {"name": name, "converts": False, "note": "", "family": ""}
    meta_full = _meta_timm(name)
    row["class"] = type(meta_full).__name__
    full_blocks = len(getattr(meta_full, "blocks", ()))
    row["of"] = full_blocks
    try:
        row["family"] = registry.family_of_timm(meta_full)
    except UnsupportedModelError as e:
        return {**row, "note": str(e)}
    notes = []
    depth = full_blocks
    if not full_depth and full_blocks > CUT_DEPTH:
        depth = CUT_DEPTH
    elif full_depth and full_blocks > CUT_DEPTH:
        need = 4 * 4 * _n_params(meta_full) + (2 << 30)  # timm, two vitjax copies, the export
        have = available_memory_bytes()
        if have is not None and need > have:
            depth = CUT_DEPTH
            notes.append(
                f"full depth skipped: needs ~{need / 2**30:.0f} GiB, {have / 2**30:.0f} GiB "
                f"available; run at depth {CUT_DEPTH}"
            )
    try:
        if depth == full_blocks:
            timm_kw, cfg_kw, meta = {}, {}, meta_full
        else:
            timm_kw, cfg_kw, meta = cut_kwargs(name, meta_full, depth)
    except Exception as e:
        timm_kw, cfg_kw, meta, depth = {}, {}, meta_full, full_blocks
        notes.append(_error(f"no depth cut, full depth run (timm depth={CUT_DEPTH})", e))
    del meta_full
    row["depth"] = depth
    mod = registry.model_module(row["family"])
    try:
        cfg = mod.config_from_timm(meta)
    except UnsupportedModelError as e:
        return {**row, "note": str(e).replace(" is not supported by vitjax", "")}
    row["img_size"] = cfg.img_size
    # the VARIANTS row (cut as timm was) against what vitjax reads off timm's model
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mine = registry.get_config(name, **cfg_kw)
        fields = [f for f in cfg.__dataclass_fields__ if getattr(cfg, f) != getattr(mine, f)]
        if fields:
            diff = ", ".join(f"{f}={getattr(mine, f)!r} (timm {getattr(cfg, f)!r})" for f in fields)
            notes.append(f"VARIANTS row differs from timm: {diff}")
    except Exception as e:
        notes.append(_error("create_model", e))
        mine = None
    del meta
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = randomize_stats_(make_timm(name, seed, **timm_kw), seed)
    inputs = family_inputs(row["family"], cfg, seed)
    want = timm_outputs(module, inputs)
    paths: dict[str, Any] = {}
    # path 1: from_timm(module)
    try:
        ft_model, ft_vars = vitjax.from_timm(module)
    except Exception as e:
        notes.append(_error("from_timm", e))
        ft_model = ft_vars = None
    # path 2: a .safetensors file through create_model(name, checkpoint_path=..., **cut)
    fm_model = fm_vars = None
    if mine is not None:
        try:
            with tempfile.TemporaryDirectory(dir=workdir) as tmp, warnings.catch_warnings():
                warnings.simplefilter("ignore")
                path = save_timm_checkpoint(module, Path(tmp) / "ckpt", "safetensors")
                fm_model, fm_vars = vitjax.create_model(name, checkpoint_path=path, **cfg_kw)
        except Exception as e:
            notes.append(_error("create_model", e))
    same_cfg = ft_model is not None and fm_model is not None and ft_model.cfg == fm_model.cfg
    if ft_model is not None and fm_model is not None:
        if not same_cfg:
            notes.append("from_timm and create_model build different configs")
        differ = same_variables(ft_vars, fm_vars)
        if differ is None and ft_model.cfg == fm_model.cfg:
            row["paths"] = "same"
            del ft_vars
            ft_model = ft_vars = None  # identical weights and config: one forward serves both
        else:
            row["paths"] = "differ"
            notes.append(f"the two paths' variables differ ({differ})")
    outs: dict[str, dict[str, np.ndarray]] = {}
    for label, model, variables in (("file", fm_model, fm_vars), ("from_timm", ft_model, ft_vars)):
        if model is None:
            continue
        try:
            outs[label] = vitjax_outputs(model, variables, inputs)
            paths[label] = worst_diff(outs[label], want)
        except Exception as e:
            notes.append(_error(f"forward ({label})", e))
    if paths:
        worst_label = max(paths, key=lambda k: paths[k]["rel"])
        row["logits"] = paths[worst_label]
        row["worst_path"] = worst_label
        row["paths_rel"] = {k: v["rel"] for k, v in paths.items()}
    export_model, export_vars = (fm_model, fm_vars) if fm_model is not None else (ft_model, ft_vars)
    if export_model is not None:
        row["export"] = export_check(name, export_model, export_vars, module, timm_kw)
        if row["export"] != "yes":
            notes.append(f"export: {row['export']}")
    # converts: both paths build the model (with identical weights, or each measured)
    row["converts"] = (
        same_cfg and "file" in paths and (row["paths"] == "same" or "from_timm" in paths)
    )
    if not row["converts"] and "from_timm" in paths:
        notes.append(f"from_timm alone: relative difference {paths['from_timm']['rel']:.1e}")
    if row.get("logits") and row["logits"]["rel"] > REL_LIMIT:
        key = row["logits"]["output"]
        notes.append(
            f"relative difference {row['logits']['rel']:.1e} > {REL_LIMIT:g} "
            f"({row['worst_path']}, {key})"
        )
        try:
            notes.append(
                float64_check(module, inputs, want[key], outs[row["worst_path"]][key], key)
            )
        except Exception as e:
            notes.append(_error("float64 reference", e))
    del module, ft_vars, fm_vars, ft_model, fm_model, export_model, export_vars
    gc.collect()
    row["note"] = "; ".join(notes)
    row["seconds"] = time.perf_counter() - start
    return row
