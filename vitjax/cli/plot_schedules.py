"""Plot the notebook's LR scheduler comparison: CosineAnnealingLR, StepLR, ExponentialLR.

Defaults are the notebook's: CosineAnnealingLR(T_max=10), StepLR(step_size=30, gamma=0.2) and
ExponentialLR(gamma=0.95) over 100 epochs at lr 1 (vitjax-plot-schedules).
"""

from __future__ import annotations

import argparse
import sys

from vitjax.training.schedules import notebook_schedules, plot_schedules

PROG = "vitjax-plot-schedules"


def parser() -> argparse.ArgumentParser:
    """The CLI's flags; each help shows its default."""
    p = argparse.ArgumentParser(prog=PROG, description=__doc__, allow_abbrev=False,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    a = p.add_argument
    a("--out", required=True, help="output PNG path")
    a("--epochs", type=int, default=100, help="epochs to plot (default: 100)")
    a("--base-lr", type=float, default=1.0, help="base learning rate (default: 1)")
    a("--t-max", type=int, default=10, help="CosineAnnealingLR T_max (default: 10)")
    a("--eta-min", type=float, default=0.0, help="CosineAnnealingLR eta_min (default: 0)")
    a("--step-size", type=int, default=30, help="StepLR step_size (default: 30)")
    a("--step-gamma", type=float, default=0.2, help="StepLR gamma (default: 0.2)")
    a("--exp-gamma", type=float, default=0.95, help="ExponentialLR gamma (default: 0.95)")
    return p


def main(argv: list[str] | None = None) -> None:
    """Parse arguments and write the PNG."""
    p = parser()
    args = p.parse_args(argv)
    for flag, ok in (
        ("--epochs", args.epochs >= 1), ("--base-lr", args.base_lr > 0),
        ("--t-max", args.t_max >= 1), ("--eta-min", 0 <= args.eta_min < args.base_lr),
        ("--step-size", args.step_size >= 1), ("--step-gamma", 0 < args.step_gamma <= 1),
        ("--exp-gamma", 0 < args.exp_gamma <= 1),
    ):  # fmt: skip
        if not ok:
            p.error(f"{flag} out of range, got {getattr(args, flag[2:].replace('-', '_'))}")
    schedules = notebook_schedules(
        args.base_lr, t_max=args.t_max, eta_min=args.eta_min, step_size=args.step_size,
        step_gamma=args.step_gamma, exp_gamma=args.exp_gamma,
    )  # fmt: skip
    try:
        out = plot_schedules(schedules, args.epochs, args.out)
    except OSError as e:  # unwritable --out: the message names the path
        print(f"{PROG}: error: cannot write {args.out}: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
