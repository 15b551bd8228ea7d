"""Print the top-k labels of images for a trained model (thin CLI over vitjax.checkpoint)."""

from __future__ import annotations

import argparse

from vitjax.training.checkpoints import load_trained, predict_files


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
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument(
        "model_path",
        metavar="DIR_OR_CKPT",
        help="save_pretrained dir, scripts/train.py run dir, or weight file",
    )
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--topk", type=positive_int, default=5)
    p.add_argument("--model", default=None, help="model name (for a weight file)")
    p.add_argument("--num-classes", type=positive_int, default=None, help="(for a weight file)")
    return p


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    overrides = {"num_classes": args.num_classes} if args.num_classes else {}
    try:
        model, variables, pretrained_cfg = load_trained(args.model_path, args.model, **overrides)
        topk = min(args.topk, model.cfg.num_classes)
        tops = predict_files(model, variables, pretrained_cfg, args.images, topk)
    except (OSError, ValueError) as e:  # unreadable image or checkpoint: the message names it
        raise SystemExit(f"predict.py: error: {e}") from e
    for path, top in zip(args.images, tops, strict=True):
        print(f"{path}: " + ", ".join(f"{label} {p:.3f}" for label, p in top))


if __name__ == "__main__":
    main()
