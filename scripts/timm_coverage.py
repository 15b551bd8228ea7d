#!/usr/bin/env python
"""Measure which timm ViTs convert and how closely: writes the coverage table (docs/coverage.md).

Every timm vit_*, deit*, test_vit*, eva* and naflexvit_* name, each family vitjax has (vit,
relpos, eva, naflex): the timm class, the vitjax family that reads it, whether vitjax converts it
(or the part it refuses, by name, or the error measured), and for those that convert the relative
difference between timm's and vitjax's outputs (fp32, CPU). timm's model is built with
pretrained=False and random non-trivial weights (BatchNorm statistics too) and reaches vitjax both
ways: vitjax.from_timm(module) and vitjax.create_model(name, checkpoint_path=FILE.safetensors);
the export, vitjax.to_timm_state_dict(model, variables, framework="pt"), must load into a fresh
timm.create_model(name, pretrained=False, depth=...) with strict=True. Models run at depth 2
(every feature of a family kept, and the width) except --full-depth names and models of
depth <= 2.
"""

from __future__ import annotations

import argparse
import fnmatch
import shlex
import sys
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent)]  # devtools

from devtools.timm_verify import (  # noqa: E402
    COVERAGE_PATTERNS,
    CUT_DEPTH,
    REL_LIMIT,
    coverage_names,
    coverage_row,
)

FULL_DEPTH = (
    # plain VisionTransformer / Distilled
    "vit_base_patch16_224", "vit_tiny_patch16_224", "deit_tiny_distilled_patch16_224",
    "deit3_small_patch16_224", "vit_base_patch32_clip_quickgelu_224",
    "vit_base_patch16_siglip_224", "vit_small_patch14_reg4_dinov2", "test_vit", "test_vit2",
    "test_vit3", "test_vit4",
    # one per newer part of the vit family: BatchNorm ResNet-D and GroupNorm BiT stems, parallel
    # scaling, parallel things, res-post, diff attention, SwiGLU (only where it fits memory)
    "vit_small_resnet26d_224", "vit_tiny_r_s16_p8_224", "vit_base_patch16_xp_224",
    "vit_small_patch16_18x2_224", "vit_base_patch16_rpn_224", "vit_dwee_patch16_reg1_gap_256",
    "vit_giant_patch14_dinov2",
    # one per other family
    "vit_relpos_small_patch16_224", "eva02_tiny_patch14_224", "vit_small_patch16_dinov3",
    "vit_pe_core_tiny_patch16_384", "naflexvit_base_patch16_gap",
)  # fmt: skip
FAMILY_ORDER = ("vit", "relpos", "eva", "naflex")


def parser() -> argparse.ArgumentParser:
    """The CLI's flags."""
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out", default="docs/coverage.md", help="Markdown file to write")
    p.add_argument(
        "--names",
        default="*",
        help="shell pattern(s), comma-separated, restricting the names (a subset)",
    )
    p.add_argument(
        "--full-depth",
        nargs="*",
        default=list(FULL_DEPTH),
        metavar="NAME",
        help="names run at full depth (where memory allows)",
    )
    return p  # fmt: skip


def _img(size: object) -> str:
    if isinstance(size, (tuple, list)):
        return f"{size[0]}x{size[1]}" if size[0] != size[1] else str(size[0])
    return str(size)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def fmt_row(r: dict) -> str:
    """One Markdown table line."""
    cells = [f"`{r['name']}`", r["class"], r.get("family") or "-", "yes" if r["converts"] else "no"]
    if "depth" in r:
        cells += [f"{r['depth']}/{r['of']}", _img(r.get("img_size", ""))]
    else:
        cells += ["", ""]
    d = r.get("logits")
    if d:
        cells += [f"{d['max_abs']:.2e}", f"{d['scale']:.2f}", f"{d['rel']:.1e}"]
    else:
        cells += ["", "", ""]
    cells += [r.get("paths", ""), (r.get("export") or "")[:3].rstrip(":")]
    cells += [f"{r['seconds']:.0f}" if "seconds" in r else "", _cell(r["note"])]
    return "| " + " | ".join(cells) + " |"


def _worst(rows: list[dict]) -> dict | None:
    return max(rows, key=lambda r: r["logits"]["rel"]) if rows else None


def _worst_text(rows: list[dict]) -> str:
    w = _worst(rows)
    return f"**{w['logits']['rel']:.1e}** (`{w['name']}`)" if w else "-"


def summary(rows: list[dict], seconds: float, command: str) -> list[str]:
    """The lines above the table: counts per family, worst differences, failures."""
    import collections

    import timm

    ok = [r for r in rows if r["converts"]]
    per_pattern = collections.Counter(
        next(p for p in COVERAGE_PATTERNS if fnmatch.fnmatch(r["name"], p)) for r in rows
    )
    classes = collections.Counter(r["class"] for r in rows)
    pattern_text = ", ".join(f"`{p}` {per_pattern[p]}" for p in COVERAGE_PATTERNS)
    class_text = ", ".join(f"{c} {n}" for c, n in classes.most_common())
    lines = [
        f"- timm names listed: **{len(rows)}** ({pattern_text}; timm {timm.__version__}); by "
        f"timm class: {class_text}.",
        f"- vitjax converts **{len(ok)} of {len(rows)}** (both paths: `from_timm(module)` and "
        "`create_model(name, checkpoint_path=FILE.safetensors)`).",
    ]
    fams = [f for f in FAMILY_ORDER if any(r.get("family") == f for r in rows)]
    for fam in fams:
        mine = [r for r in rows if r.get("family") == fam]
        conv = [r for r in mine if r["converts"]]
        cls = ", ".join(sorted({r["class"] for r in mine}))
        lines.append(
            f"  - {fam} ({cls}): {len(mine)} names, converts **{len(conv)}**; worst relative "
            f"difference {_worst_text(conv)}."
        )
    none = [r for r in rows if not r.get("family")]
    if none:
        lines.append(f"  - no vitjax family: {len(none)} ({', '.join(r['name'] for r in none)}).")
    within = all(r["logits"]["rel"] <= REL_LIMIT for r in ok)
    lines.append(
        f"- worst relative difference max|diff| / max|timm output| over all converted: "
        f"{_worst_text(ok)}; every converted model is <= {REL_LIMIT:g}: **{within}**."
    )
    same = [r for r in ok if r.get("paths") == "same"]
    export = [r for r in ok if r.get("export") == "yes"]
    lines += [
        f"- both paths give bit-identical variables (and configs): {len(same)} of {len(ok)}.",
        f'- export strict (`to_timm_state_dict(..., framework="pt")` into a fresh timm model, '
        f"`strict=True`, every tensor bit-equal to the source): {len(export)} of {len(ok)}.",
    ]
    full = [r for r in ok if r["depth"] == r["of"] and r["of"] > CUT_DEPTH]
    if full:
        wf = _worst(full)
        names = ", ".join(f"`{r['name']}`" for r in full)
        lines.append(
            f"- full-depth runs: {len(full)} ({names}); "
            f"worst relative difference **{wf['logits']['rel']:.1e}** (max |diff| "
            f"{wf['logits']['max_abs']:.1e}, `{wf['name']}`); all <= {REL_LIMIT:g}: "
            f"**{all(r['logits']['rel'] <= REL_LIMIT for r in full)}**."
        )
    skipped = [r for r in rows if "full depth skipped" in r["note"]]
    for r in skipped:
        lines.append(f"  - `{r['name']}`: {r['note'].split(';')[0]}.")
    bad = [r for r in rows if not r["converts"] or r["logits"]["rel"] > REL_LIMIT]
    bad += [r for r in ok if r.get("export") != "yes" and r not in bad]
    if bad:
        lines.append(f"- not converted, over {REL_LIMIT:g} or export failing: {len(bad)}:")
        lines += [f"  - `{r['name']}` ({r['class']}): {_cell(r['note'])}" for r in bad]
    lines.append(f"- generated by `{command}` in {seconds / 60:.1f} min on CPU.")
    return lines


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    patterns = [p.strip() for p in args.names.split(",") if p.strip()]
    names = [n for n in coverage_names() if any(fnmatch.fnmatch(n, p) for p in patterns)]
    full_depth = set(args.full_depth)
    start, rows = time.perf_counter(), []
    for i, name in enumerate(names):
        try:
            r = coverage_row(name, full_depth=name in full_depth)
        except Exception as e:  # a failure is a row of the table, not the end of the run
            r = {"name": name, "class": "?", "converts": False, "note": f"error: {e!r}"[:300]}
        rows.append(r)
        d = r.get("logits")
        tail = f"rel {d['rel']:.1e}" if d else ""
        print(
            f"[{i + 1}/{len(names)}] {name} ({r.get('family') or r['class']}, "
            f"{r.get('depth', '?')}/{r.get('of', '?')}, {r.get('seconds', 0):.0f}s): "
            f"{'yes' if r['converts'] else 'NO'} {tail} export={r.get('export', '-')} "
            f"{r['note'][:160]}",
            flush=True,
        )
    command = "python scripts/timm_coverage.py" + (
        " " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
        if (argv if argv is not None else sys.argv[1:])
        else ""
    )
    lines = [
        "# timm coverage",
        "",
        "Generated by `scripts/timm_coverage.py`; do not edit by hand. Outputs compared in fp32 on "
        "CPU, timm (PyTorch) vs vitjax (JAX), same random weights, both paths: "
        "`vitjax.from_timm(module)` and `vitjax.create_model(name, checkpoint_path=FILE."
        "safetensors)`. *depth* is blocks run / blocks in the model (depth "
        f"{CUT_DEPTH} keeps every feature of a family and the width; Sapiens2 keeps one "
        "full-attention and one grouped-query block). The difference is the worst over logits "
        "and pre-logits (models with num_classes=0 compare their pooled features) of an image "
        "batch at the model's size and channels, and for naflex models also of a NaFlex batch "
        "(two aspect ratios, 12x20 and 24x8 patches, padded to one length); *max abs logit* is "
        "the scale the relative difference divides by, of that output. *paths*: `same` when "
        "both paths give bit-identical variables and configs (one forward serves both), else "
        "each is measured and the worse reported. *export*: `to_timm_state_dict(model, "
        'variables, framework="pt")` loads into a fresh `timm.create_model(name, '
        "pretrained=False, depth=...)` (meta device, `assign=True`) with `strict=True` and every "
        "tensor equals the source model's bit for bit. *s*: seconds for the row.",
        "",
        *summary(rows, time.perf_counter() - start, command),
        "",
        "| model | timm class | family | converts | depth | img | max abs diff | max abs logit "
        "| rel. diff | paths | export strict | s | note |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        *[fmt_row(r) for r in rows],
        "",
    ]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
