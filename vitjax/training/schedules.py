"""Optax learning-rate schedules equal to torch's LR schedulers, plus warmup-cosine.

Every constructor returns a schedule ``count -> lr`` (optax style). ``count`` is the number of
times torch's ``scheduler.step()`` has been called, so ``schedule(t)`` equals
``optimizer.param_groups[0]['lr']`` after ``t`` scheduler steps. Each schedule accepts:

- Python / numpy scalars or arrays: evaluated in float64 numpy (equal to torch's float64 Python
  arithmetic to ~1e-13 relative), returning numpy values;
- jax arrays or tracers (inside ``jit``, e.g. optax's step count): evaluated in jax's default float
  dtype (float32 unless x64 is enabled). The formulas are arranged so that float32 stays accurate
  to a few units of roundoff relative to the value, even close to ``eta_min``.

``per_step`` turns a schedule stepped once per epoch (as the notebook does) into one indexed by
optimizer step.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np

from vitjax.util import kept_call

Schedule = Callable[[Any], Any]

_NUMPY_TYPES = (int, float, np.integer, np.floating, np.ndarray)


def _xp(count: Any) -> Any:
    """Return numpy for host numbers, jax.numpy for jax arrays and tracers."""
    return np if isinstance(count, _NUMPY_TYPES) else jnp


def _float(xp: Any, count: Any) -> Any:
    """Return ``count`` as a float array of the module's default float dtype."""
    return xp.asarray(count, dtype=np.float64 if xp is np else None) * 1.0


def constant(base_lr: float) -> Schedule:
    """Return a schedule that always gives ``base_lr``."""

    def schedule(count: Any) -> Any:
        xp = _xp(count)
        return xp.full(xp.shape(count), base_lr, dtype=_float(xp, count).dtype)

    return schedule


def _geometric(base_lr: float, gamma: float, k: Any, xp: Any) -> Any:
    """Return ``base_lr * gamma ** k`` as ``exp(k * log(gamma))`` (accurate in float32)."""
    if gamma <= 0.0:
        raise ValueError(f"gamma must be > 0, got {gamma}")
    return base_lr * xp.exp(_float(xp, k) * math.log(gamma))


def step_lr(base_lr: float, step_size: int, gamma: float = 0.1) -> Schedule:
    """Return torch's ``StepLR``: ``base_lr * gamma ** (t // step_size)``."""
    if step_size < 1:
        raise ValueError(f"step_size must be >= 1, got {step_size}")

    def schedule(count: Any) -> Any:
        xp = _xp(count)
        return _geometric(base_lr, gamma, xp.floor_divide(count, step_size), xp)

    return schedule


def exponential_lr(base_lr: float, gamma: float) -> Schedule:
    """Return torch's ``ExponentialLR``: ``base_lr * gamma ** t``."""

    def schedule(count: Any) -> Any:
        return _geometric(base_lr, gamma, count, _xp(count))

    return schedule


def _half_cosine(xp: Any, t: Any, period: int) -> Any:
    """Return ``(1 + cos(pi * t / period)) / 2`` for ``0 <= t <= 2 * period``, cancellation-free.

    Uses ``(1 + cos(pi u)) / 2 = sin(pi (1 - u) / 2) ** 2`` so that values near 0 keep their
    relative accuracy in float32.
    """
    s = xp.sin(math.pi * (period - _float(xp, t)) / (2 * period))
    return s * s


def cosine_annealing_lr(base_lr: float, t_max: int, eta_min: float = 0.0) -> Schedule:
    """Return torch's ``CosineAnnealingLR`` as produced by repeated ``step()`` calls.

    Stepping torch's scheduler uses its recursive ("chainable") ``get_lr``; in exact arithmetic
    that equals ``eta_min + (base_lr - eta_min) * (1 + cos(pi * t / t_max)) / 2`` for every ``t``,
    including ``t > t_max``, where it is periodic with period ``2 * t_max`` (the lr climbs back to
    ``base_lr`` at ``t = 2 * t_max``). It does not stay at ``eta_min``.
    """
    if t_max < 1:
        raise ValueError(f"t_max must be >= 1, got {t_max}")

    def schedule(count: Any) -> Any:
        xp = _xp(count)
        t = xp.mod(count, 2 * t_max)  # exact period reduction before going to floats
        return eta_min + (base_lr - eta_min) * _half_cosine(xp, t, t_max)

    return schedule


def warmup_cosine(
    base_lr: float,
    warmup_steps: int,
    total_steps: int,
    warmup_init_lr: float = 0.0,
    end_lr: float = 0.0,
) -> Schedule:
    """Return linear warmup then one cosine decay, then ``end_lr`` forever.

    Semantics are exactly timm's ``CosineLRScheduler(t_initial=total_steps - warmup_steps,
    warmup_t=warmup_steps, warmup_lr_init=warmup_init_lr, lr_min=end_lr, warmup_prefix=True,
    cycle_limit=1)`` (and ``optax.warmup_cosine_decay_schedule`` with ``decay_steps=total_steps``):

    - ``t < warmup_steps``: ``warmup_init_lr + t * (base_lr - warmup_init_lr) / warmup_steps``;
    - ``warmup_steps <= t < total_steps``: ``end_lr + (base_lr - end_lr) * (1 + cos(pi * s / T))
      / 2`` with ``s = t - warmup_steps`` and ``T = total_steps - warmup_steps``;
    - ``t >= total_steps``: ``end_lr``.
    """
    if warmup_steps < 0 or total_steps <= warmup_steps:
        raise ValueError(
            f"need 0 <= warmup_steps < total_steps, got warmup_steps={warmup_steps}, "
            f"total_steps={total_steps}"
        )
    decay_steps = total_steps - warmup_steps
    slope = (base_lr - warmup_init_lr) / max(warmup_steps, 1)

    def schedule(count: Any) -> Any:
        xp = _xp(count)
        t = _float(xp, count)
        warm = warmup_init_lr + t * slope
        s = xp.clip(t - warmup_steps, 0, decay_steps)
        cos = end_lr + (base_lr - end_lr) * _half_cosine(xp, s, decay_steps)
        return xp.where(t < warmup_steps, warm, xp.where(t < total_steps, cos, end_lr))

    return schedule


def per_step(epoch_schedule: Schedule, steps_per_epoch: int) -> Schedule:
    """Return a schedule over optimizer steps that holds the epoch's lr for the whole epoch."""
    if steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")

    def schedule(count: Any) -> Any:
        return epoch_schedule(_xp(count).floor_divide(count, steps_per_epoch))

    return schedule


SCHEDULES: dict[str, Callable[..., Schedule]] = {
    "constant": constant,
    "step": step_lr,
    "cosine": cosine_annealing_lr,
    "exponential": exponential_lr,
    "warmup_cosine": warmup_cosine,
}


def make_schedule(
    name: str,
    base_lr: float,
    *,
    epochs: int,
    steps_per_epoch: int,
    per_epoch: bool = True,
    **kw: Any,
) -> Schedule:
    """Return the named schedule indexed by optimizer step, for a training CLI.

    ``per_epoch=True`` (default, like the notebook) builds the torch-style schedule in epochs and
    holds each epoch's value for its ``steps_per_epoch`` steps; ``per_epoch=False`` counts
    ``step_size`` / ``t_max`` in optimizer steps. Defaults: ``step`` uses
    ``step_size=max(1, epochs // 3)``, ``gamma=0.1``; ``cosine`` uses ``t_max=epochs``,
    ``eta_min=0``; ``exponential`` uses ``gamma=0.95``. ``warmup_cosine`` is always per step and
    takes ``warmup_epochs`` (default 1) or ``warmup_steps``, ``warmup_init_lr``, ``end_lr``; it
    decays over ``epochs * steps_per_epoch`` steps.
    """
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; choose from {sorted(SCHEDULES)}")
    if name == "warmup_cosine":
        warmup = kw.pop("warmup_steps", None)
        if warmup is None:
            warmup = int(round(kw.pop("warmup_epochs", 1) * steps_per_epoch))
        return kept_call(warmup_cosine, base_lr, warmup, epochs * steps_per_epoch, **kw)
    units = epochs if per_epoch else epochs * steps_per_epoch
    if name == "step":
        kw.setdefault("step_size", max(1, units // 3))
    elif name == "cosine":
        kw.setdefault("t_max", units)
    elif name == "exponential":
        kw.setdefault("gamma", 0.95)
    schedule = kept_call(SCHEDULES[name], base_lr, **kw)  # equal settings: the same function
    return kept_call(per_step, schedule, steps_per_epoch) if per_epoch else schedule


def notebook_schedules(
    base_lr: float = 1.0,
    *,
    t_max: int = 10,
    eta_min: float = 0.0,
    step_size: int = 30,
    step_gamma: float = 0.2,
    exp_gamma: float = 0.95,
) -> dict[str, Schedule]:
    """The notebook's scheduler comparison (per epoch): CosineAnnealingLR, StepLR, ExponentialLR.

    Defaults are the notebook's: T_max=10, StepLR(step_size=30, gamma=0.2),
    ExponentialLR(gamma=0.95), at lr 1.
    """
    return {
        f"CosineAnnealingLR(T_max={t_max}, eta_min={eta_min:g})": cosine_annealing_lr(
            base_lr, t_max, eta_min
        ),
        f"StepLR(step_size={step_size}, gamma={step_gamma:g})": step_lr(
            base_lr, step_size, step_gamma
        ),
        f"ExponentialLR(gamma={exp_gamma:g})": exponential_lr(base_lr, exp_gamma),
    }


def plot_schedules(schedules: Mapping[str, Schedule], epochs: int, out: str | Path) -> Path:
    """Plot each schedule over ``epochs`` steps into a PNG file and return its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = np.arange(epochs)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for label, schedule in schedules.items():
        ax.plot(steps, schedule(steps), label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel("learning rate")
    ax.set_title("Learning-rate schedules")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
