"""Plot the notebook's LR scheduler comparison (StepLR, CosineAnnealingLR, ExponentialLR)."""

from __future__ import annotations

import argparse
import sys

from vitjax.training.schedules import notebook_schedules, plot_schedules


def main(argv: list[str] | None = None) -> None:
    """Parse arguments and write the PNG."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True, help="output PNG path")
    parser.add_argument("--epochs", type=int, default=100, help="epochs to plot (default 100)")
    parser.add_argument("--base-lr", type=float, default=1e-2, help="base lr (default 1e-2)")
    args = parser.parse_args(argv)
    if args.epochs < 1:
        parser.error(f"--epochs must be >= 1, got {args.epochs}")
    if not args.base_lr > 0:
        parser.error(f"--base-lr must be > 0, got {args.base_lr}")
    try:
        out = plot_schedules(notebook_schedules(args.base_lr), args.epochs, args.out)
    except OSError as e:  # unwritable --out: the message names the path
        print(f"plot_schedules.py: error: cannot write {args.out}: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
