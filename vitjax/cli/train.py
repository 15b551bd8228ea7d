"""Train a ViT in JAX on an image folder (or the embedded digits): vitjax-train.

No --data: the embedded digits (`make demo` adds its small model and recipe). Uses every visible
device (data parallel; --batch-size must divide by their number; --param-sharding fsdp splits
params and optimizer state over them too). On several hosts, start it once per host with
JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID set (or under srun / mpirun).
Writes OUT/metrics.jsonl, OUT/curves.png, OUT/checkpoints/ (orbax, every epoch) and OUT/model/
(save_pretrained: config.json + model.safetensors, timm keys). --resume continues OUT's run
with its saved settings; only the flags typed on the command line change them (epochs, workers,
keep, progress).
It refuses when the data's listing differs from the run's (OUT/data_fingerprint.json) unless
--allow-data-change. One run at a time per OUT (OUT/run.lock names the holder).

Ctrl-C finishes the epoch and saves its checkpoint (exit 130); SIGTERM abandons the epoch at its
next batch, keeping the last checkpoint (exit 143, 128 + SIGTERM, as a shell reports a process
SIGTERM ended); a second signal stops at once. Either way one line says what was kept.
"""

from __future__ import annotations

import argparse
import ast
import math
import sys
from collections.abc import Callable, Sequence

from vitjax.training.run import OPTIMIZERS, RunConfig, TrainingTerminated, train_and_evaluate
from vitjax.training.schedules import SCHEDULES
from vitjax.training.sharding import PARAM_SHARDINGS

SCHEDULE_ARGS = ("t_max", "eta_min", "step_size", "gamma", "warmup_epochs")
PROG = "vitjax-train"


def key_value(text: str) -> tuple[str, object]:
    """KEY=VALUE with VALUE a Python literal (int, float, bool, tuple) or a bare string."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value


def ranged(kind: type, low: float | None = None, high: float | None = None,
           low_open: bool = False) -> Callable[[str], float]:  # fmt: skip
    """An argparse type: a finite kind (int or float) within [low, high] (or (low, high])."""

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be finite, got {text!r}")
        if low is not None and (value <= low if low_open else value < low):
            raise argparse.ArgumentTypeError(
                f"must be {'>' if low_open else '>='} {low}, got {value}"
            )
        if high is not None and value > high:
            raise argparse.ArgumentTypeError(f"must be <= {high}, got {value}")
        return value

    parse.__name__ = kind.__name__
    return parse


def _default(value: object) -> str:
    if isinstance(value, (tuple, list)):
        return " ".join(str(v) for v in value)
    return str(value)


def parser() -> argparse.ArgumentParser:
    """The CLI's flags; each help shows the real default once."""
    d = RunConfig()
    p = argparse.ArgumentParser(
        prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )  # fmt: skip

    def a(*flags: str, help: str, show: bool = True, **kw) -> None:
        default = kw.get("default")
        if show and default is not None and kw.get("action") not in ("store_true", "store_false"):
            help = f"{help} (default: {_default(default)})"
        p.add_argument(*flags, help=help, **kw)

    pos_int, nonneg = ranged(int, 1), ranged(float, 0.0)
    a("--data", help="image folder ROOT/<class>/*.jpg (default: the embedded digits)")
    a("--model", default=d.model, help="model name (vitjax.list_models())")
    a("--model-args", action="extend", nargs="+", type=key_value, default=[], show=False,
      metavar="KEY=VALUE", help="config overrides, e.g. depth=4 proj_drop_rate=0.1")  # fmt: skip
    a("--init", help="save_pretrained dir or checkpoint file to start from (default: random init)")
    a("--freeze-backbone", action="store_true", help="train only the head (and head_dist); a "
      "hybrid's BatchNorm running statistics still update in training mode, as torch's "
      "requires_grad=False leaves them (the notebook's way)")  # fmt: skip
    a("--freeze-batch-stats", action="store_true", help="a hybrid CNN stem's BatchNorm in eval "
      "mode while training: normalise with, and keep, its running statistics (torch's "
      "model.patch_embed.backbone.eval()); refused for models without BatchNorm")  # fmt: skip
    a("--num-classes", type=pos_int, help="check that the data has this many classes")
    a("--img-size", type=pos_int, help="input size (default: the model's)")
    a("--epochs", type=pos_int, default=d.epochs, help="epochs to train")
    a("--batch-size", type=pos_int, default=d.batch_size, help="global batch (divides by #devices)")
    a("--lr", type=nonneg, default=d.lr, help="base learning rate")
    a("--optimizer", choices=OPTIMIZERS, default=d.optimizer, help="torch.optim semantics")
    a("--weight-decay", type=nonneg, help="weight decay (default: 0.01 for adamw, else 0)")
    a("--momentum", type=ranged(float, 0.0, 1.0), default=d.momentum, help="sgd momentum")
    a("--nesterov", action="store_true", help="sgd with Nesterov momentum")
    a("--schedule", choices=SCHEDULES, default=d.schedule, help="lr schedule (torch's schedulers)")
    a("--t-max", type=pos_int, help="cosine period (default: epochs)")
    a("--eta-min", type=nonneg, help="cosine minimum lr (default: 0)")
    a("--step-size", type=pos_int, help="step schedule period (default: 30)")
    a("--gamma", type=ranged(float, 0.0, 1.0, low_open=True),
      help="step/exponential decay factor (default: 0.1 step, 0.95 exponential)")  # fmt: skip
    a("--warmup-epochs", type=nonneg, help="warmup_cosine warmup (default: 0)")
    a("--per-step-schedule", action="store_true",
      help="count t-max/step-size in optimizer steps instead of epochs")  # fmt: skip
    a("--clip-grad", type=ranged(float, 0.0, low_open=True),
      help="clip the global gradient norm to this value (default: no clipping)")  # fmt: skip
    a("--label-smoothing", type=ranged(float, 0.0, 1.0), default=d.label_smoothing,
      help="cross-entropy label smoothing")  # fmt: skip
    a("--no-augment", dest="augment", action="store_false",
      help="train on the eval transform, no random crop / flip (default: augment)")  # fmt: skip
    a("--hflip", type=ranged(float, 0.0, 1.0),
      help="horizontal flip probability (default: 0.5; 0 for the digits)")  # fmt: skip
    a("--crop-scale", type=ranged(float, 0.0, 1.0, low_open=True), nargs=2, default=d.crop_scale,
      metavar=("MIN", "MAX"), help="random resized crop area range")  # fmt: skip
    a("--val-fraction", type=ranged(float, 0.0, 1.0, low_open=True), default=d.val_fraction,
      help="share of the data held out for validation")  # fmt: skip
    a("--skip-bad", action="store_true",
      help="skip (and count) unreadable images instead of failing on the first")  # fmt: skip
    a("--seed", type=ranged(int, 0), default=d.seed, help="seed of split, init, shuffling")
    a("--workers", type=ranged(int, 0), default=d.workers,
      help="grain worker processes (0: in-process)")  # fmt: skip
    a("--precision", choices=("fp32", "bf16"), default=d.precision,
      help="bf16: bfloat16 compute, float32 params and optimizer state")  # fmt: skip
    a("--cpu-devices", type=pos_int, metavar="N",
      help="opt-in, CPU only: show the cores to JAX as N devices and train data parallel over "
      "them (measured on 2 cores: vit_small_patch16_224 batch 32 training 5.5 -> 5.8 images/s, "
      "peak heap 4.3 -> 6.2 GB; small models get slower: make demo 27 -> 37 s) (default: JAX's "
      "one CPU device)")  # fmt: skip
    a("--param-sharding", choices=PARAM_SHARDINGS, default=d.param_sharding,
      help="where params and optimizer state live: 'replicated', whole on every device, or "
      "'fsdp' (for models bigger than one device): each array of 2**14 elements or more split "
      "along its largest dimension that divides by the device count, the rest replicated; on "
      "4 devices each holds 25.1%% of vit_base_patch16_224's params and Adam state instead of "
      "100%%; cost: each weight is gathered for its use in every step (not timed here); same "
      "numbers either way (tested to 1e-5)")  # fmt: skip
    a("--keep", type=pos_int, default=d.keep, help="checkpoints to keep")
    a("--out", default=d.out, help="run directory")
    a("--resume", action="store_true", help="continue the run in --out where it stopped")
    a("--overwrite", action="store_true", help="replace a run already in --out")
    a("--allow-data-change", action="store_true",
      help="--resume even though the data folder's listing changed since the run started "
      "(its train/val split changes; default: refuse, saying what changed)")  # fmt: skip
    a("--no-progress", dest="progress", action="store_false",
      help="no progress bars (default: progress bars)")  # fmt: skip
    return p


def typed_flags(p: argparse.ArgumentParser, argv: Sequence[str]) -> set[str]:
    """The dests of the flags that argv names (not the ones left at their defaults)."""
    given = set()
    for action in p._actions:
        for opt in action.option_strings:
            if any(arg == opt or arg.startswith(opt + "=") for arg in argv):
                given.add(action.dest)
    return given


def apply_cpu_devices(n: int | None) -> None:
    """--cpu-devices: split the CPU into n JAX devices (before JAX's backend starts)."""
    if n is None:
        return
    import jax

    jax.config.update("jax_num_cpu_devices", n)


def apply_cpu_collectives() -> None:
    """Several processes on CPUs (jax.distributed) need a cross-process collectives library:
    gloo, jax's CPU default in recent releases; set here where an older jax leaves it off
    (JAX_CPU_COLLECTIVES_IMPLEMENTATION, when set, wins)."""
    import os

    import jax

    if "JAX_CPU_COLLECTIVES_IMPLEMENTATION" in os.environ:
        return
    try:
        if jax.config.jax_cpu_collectives_implementation in (None, "none"):
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
    except AttributeError:  # a jax without the option: nothing to set
        pass


def run_config(args: argparse.Namespace) -> RunConfig:
    """RunConfig from the parsed flags."""
    args = dict(vars(args))
    args.pop("cpu_devices", None)
    args["model_args"] = dict(args["model_args"])
    args["crop_scale"] = tuple(args["crop_scale"])
    args["schedule_args"] = {k: args.pop(k) for k in SCHEDULE_ARGS if args[k] is not None}
    for k in SCHEDULE_ARGS:
        args.pop(k, None)
    return RunConfig(**args)


def run(args: argparse.Namespace, given: set[str] | None = None) -> None:
    """Train with parsed flags; given: the flags typed (what --resume may change)."""
    apply_cpu_devices(args.cpu_devices)
    apply_cpu_collectives()
    try:
        cfg = run_config(args)
        if given is not None:  # --cpu-devices is the CLI's, not a RunConfig field
            given = (given - {"cpu_devices"}) | {"resume", "out"}
        train_and_evaluate(cfg, given=given)
    except (OSError, ValueError, FloatingPointError) as e:  # bad input: the message names it
        raise SystemExit(f"{PROG}: error: {e}") from e
    except KeyboardInterrupt as e:  # Ctrl-C / SIGTERM: the last epoch's checkpoint is saved
        print(f"{PROG}: {e or 'interrupted'}", file=sys.stderr)
        raise SystemExit(143 if isinstance(e, TrainingTerminated) else 130) from e


def main(argv: list[str] | None = None) -> None:
    """Entry point of vitjax-train."""
    argv = sys.argv[1:] if argv is None else list(argv)
    p = parser()
    run(p.parse_args(argv), typed_flags(p, argv))


if __name__ == "__main__":
    main()
