"""Print the top-k labels of images for a trained model or a timm checkpoint: vitjax-predict.

IMAGE may be a file or a folder (searched recursively for image files). Labels are the trained
run's class names, or timm's ImageNet names where the model's pretrained config knows them.
"""

from __future__ import annotations

import argparse

from vitjax.predict import list_images, load_trained, predict_files

PROG = "vitjax-predict"


def positive_int(text: str) -> int:
    """An int >= 1 (argparse type)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def parser() -> argparse.ArgumentParser:
    """The CLI's flags."""
    p = argparse.ArgumentParser(prog=PROG, description=__doc__, allow_abbrev=False)
    p.add_argument(
        "model_path",
        metavar="DIR_OR_CKPT",
        help="save_pretrained dir, vitjax-train run dir, or weight file (with --model)",
    )
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files or folders")
    p.add_argument("--topk", type=positive_int, default=5, help="labels per image (default: 5)")
    p.add_argument("--model", default=None, help="model name (for a weight file)")
    p.add_argument("--num-classes", type=positive_int, default=None, help="(for a weight file)")
    return p


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    overrides = {"num_classes": args.num_classes} if args.num_classes else {}
    try:
        images = list_images(args.images)
        model, variables, pretrained_cfg = load_trained(args.model_path, args.model, **overrides)
        topk = min(args.topk, model.cfg.num_classes)
        tops = predict_files(model, variables, pretrained_cfg, images, topk)
    except (OSError, ValueError) as e:  # unreadable image or checkpoint: the message names it
        raise SystemExit(f"{PROG}: error: {e}") from e
    for path, top in zip(images, tops, strict=True):
        print(f"{path}: " + ", ".join(f"{label} {p:.3f}" for label, p in top))


if __name__ == "__main__":
    main()
