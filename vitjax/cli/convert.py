"""Convert a timm ViT checkpoint to vitjax (save_pretrained directory), or back with --to-timm.

  convert_timm.py MODEL [--checkpoint FILE] --out DIR [--num-classes N] [--img-size S] [--verify]
  convert_timm.py MODEL --checkpoint VITJAX_DIR --out OUT --to-timm [--verify]

MODEL is a timm name ('vit_base_patch16_224' or 'vit_base_patch16_224.augreg_in21k'). Without
--checkpoint the weights come from the local Hugging Face cache (timm's pretrained config; never
downloads). FILE: .safetensors, .pth/.bin, .npz (vit_jax / big_vision) or a vitjax directory.
--to-timm writes OUT as .safetensors / .pth (timm keys) or as a directory in timm's hub layout
(timm.create_model('local-dir:OUT')). --verify runs timm (PyTorch) and vitjax (JAX) on one
random batch and prints max |diff|.

Writing into an existing folder touches only the files it writes (config.json and
model.safetensors); other files stay. It refuses to replace the checkpoint it reads, and files
vitjax did not write unless --overwrite.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

from vitjax import factory as models
from vitjax.models.vit_timm import timm_model_args
from vitjax.weights import files as io
from vitjax.weights import hub
from vitjax.weights.errors import CheckpointError

FILE_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")  # --to-timm writes these as one file


def at_least(low: int, name: str):
    """An argparse type: an int >= low, named in the error."""

    def parse(text: str) -> int:
        value = int(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"{name}={value} must be >= {low}")
        return value

    parse.__name__ = "int"  # argparse names the type in 'invalid int value' errors
    return parse


def parser() -> argparse.ArgumentParser:
    """The CLI's flags."""
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("model", help="timm model name, optionally with a .tag")
    p.add_argument("--checkpoint", help="weights file or directory (default: HF cache)")
    p.add_argument("--out", required=True, help="output directory (or file with --to-timm)")
    p.add_argument(
        "--num-classes", type=at_least(0, "num_classes"), help="new classifier size (fresh head)"
    )
    p.add_argument(
        "--img-size",
        type=at_least(1, "img_size"),
        nargs="+",
        metavar="S",
        help="new input size (H [W]); resamples the position embedding like timm",
    )
    p.add_argument("--to-timm", action="store_true", help="vitjax -> timm instead")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing --out file, or config.json / model.safetensors in --out that "
        "vitjax did not write (other files in --out are never touched)",
    )
    p.add_argument(
        "--allow-nonfinite", action="store_true", help="load weights holding NaN or Inf anyway"
    )
    p.add_argument("--verify", action="store_true", help="compare with timm; print max |diff|")
    p.add_argument("--batch", type=at_least(1, "batch"), default=2, help="batch size for --verify")
    return p


def overrides(args: argparse.Namespace) -> dict:
    """create_model keyword overrides from the flags."""
    out = {}
    if args.num_classes is not None:
        out["num_classes"] = args.num_classes
    if args.img_size:
        out["img_size"] = args.img_size[0] if len(args.img_size) == 1 else tuple(args.img_size)
    return out


def pretrained_cfg(name: str) -> dict:
    """timm's pretrained config for name, or {} when it has none."""
    try:
        return hub.export_pretrained_cfg(name)
    except (ValueError, ImportError):
        return {}


def load(args: argparse.Namespace):
    """(model, variables) for the flags."""
    ckpt, finite = args.checkpoint, {"allow_nonfinite": args.allow_nonfinite}
    if args.to_timm and ckpt and Path(ckpt).is_dir() and not overrides(args):
        return models.load_pretrained(ckpt, **finite)
    return models.create_model(
        args.model, pretrained=ckpt is None, checkpoint_path=ckpt, **finite, **overrides(args)
    )


def sources(args: argparse.Namespace) -> list[Path]:
    """The files the conversion reads: its checkpoint, or a directory's config and weights."""
    ckpt = Path(args.checkpoint) if args.checkpoint else hub.pretrained_checkpoint(args.model)
    return [ckpt / io.CONFIG_NAME, ckpt / io.WEIGHTS_NAME] if ckpt.is_dir() else [ckpt]


def file_output(args: argparse.Namespace) -> bool:
    """Whether --out is one weight file (--to-timm with a file suffix) rather than a folder."""
    return args.to_timm and Path(args.out).suffix in FILE_SUFFIXES


def targets(args: argparse.Namespace) -> list[Path]:
    """The files the conversion writes."""
    out = Path(args.out)
    return [out] if file_output(args) else [out / io.CONFIG_NAME, out / io.WEIGHTS_NAME]


def check_out(args: argparse.Namespace) -> None:
    """Refuse an --out that would replace the source, or files vitjax did not write."""
    reads = [p for p in sources(args) if p.exists()]
    for target in targets(args):
        for src in reads:
            if target.exists() and os.path.samefile(target, src):
                raise CheckpointError(
                    f"--out {args.out} would replace {src}, which this conversion reads; "
                    "choose another --out"
                )
    out = Path(args.out)
    if args.overwrite or not out.exists():
        return
    if file_output(args):
        raise CheckpointError(f"--out {out} exists; pass --overwrite to replace it")
    if not out.is_dir():
        raise CheckpointError(f"--out {out} exists and is not a directory")
    foreign = io.foreign_files(out)
    if foreign:
        raise CheckpointError(
            f"--out {out} holds {', '.join(p.name for p in foreign)}, which vitjax did not "
            "write; pass --overwrite to replace just those files, or choose another --out"
        )


def write_file(out: Path, sd: dict) -> Path:
    """One .safetensors / .pth file, written beside out and moved into place atomically."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        if out.suffix == ".safetensors":
            from safetensors.numpy import save_file

            save_file(sd, str(tmp), metadata={"format": "pt"})
        else:
            import torch

            torch.save({k: torch.from_numpy(v) for k, v in sd.items()}, tmp)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def write(args: argparse.Namespace, model, variables) -> Path:
    """Write the converted weights where --out says."""
    out, cfg = Path(args.out), pretrained_cfg(args.model)
    if not args.to_timm:
        return models.save_pretrained(
            out, model, variables, pretrained_cfg=cfg, overwrite=args.overwrite
        )
    sd = models.to_timm_state_dict(model, variables)
    if file_output(args):
        return write_file(out, sd)
    args_ = timm_model_args(args.model, model.cfg)
    if not (args.overwrite and out.is_dir()):
        return hub.save_timm_dir(out, args.model, args_, model.cfg, sd, cfg)
    # save_timm_dir refuses files vitjax did not write: stage its output, then replace just those.
    staging = Path(tempfile.mkdtemp(prefix=".vitjax-", dir=out))
    try:
        staged = hub.save_timm_dir(staging / "out", args.model, args_, model.cfg, sd, cfg)
        files = {p.name: p for p in staged.iterdir()}
        return io.install_files(files, out, overwrite=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # only the staging folder made above


def verify(args: argparse.Namespace, model, variables, path: Path) -> None:
    """Print max |diff| against timm (--verify)."""
    from vitjax.cli.verify import verify_conversion

    source = path if args.to_timm else args.checkpoint
    if source is None:
        source = hub.pretrained_checkpoint(args.model)
    report = verify_conversion(args.model, model, variables, source, batch=args.batch)
    for what, diffs in report.items():
        for out, d in diffs.items():
            if out == "error":
                print(f"verify {what}: {d}")
            else:
                print(
                    f"verify {what} {out}: max |diff| {d['max_abs']:.3e} "
                    f"(scale {d['scale']:.3e}, relative {d['rel']:.3e})"
                )


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        check_out(args)
        model, variables = load(args)
        path = write(args, model, variables)
        cfg = model.cfg
        print(
            f"wrote {path} ({args.model}: img_size={cfg.img_size}, "
            f"num_classes={cfg.num_classes}, {models.count_params(variables):,} parameters)"
        )
        if args.verify:
            verify(args, model, variables, path)
    except ImportError as e:
        print(f"error: {e} (--verify and .pth files need torch and timm)", file=sys.stderr)
        return 2
    except (OSError, ValueError) as e:  # CheckpointError, WeightMismatchError are ValueErrors
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
