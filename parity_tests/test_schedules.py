"""vitjax.schedules against torch's own LR schedulers (stepped for real) and timm's warmup-cosine.

Tolerances: host (Python/numpy int) counts are evaluated in float64 like torch's Python floats;
torch's chainable schedulers accumulate a recursive product, so they agree with the closed forms
to ~1e-13 relative (RTOL_F64). Jax counts (inside jit) are evaluated in float32, whose unit
roundoff is 2**-24 ~ 6e-8; the rounded exponent ``k * log(gamma)`` and cosine argument give at
most a few 1e-7 relative error for the ranges tested, hence RTOL_F32 = 1e-6. ATOL is a tiny
absolute floor (relative to the base lr) for values that are exactly 0.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from timm.scheduler import CosineLRScheduler

from parity_tests.parity import assert_close
from vitjax.training import schedules

RTOL_F64 = 1e-10
RTOL_F32 = 1e-6
ATOL_REL = 1e-12
NUM_STEPS = 150
ROOT = Path(__file__).resolve().parents[1]


def torch_lrs(make_scheduler, num_steps: int, base_lr: float, per_epoch_steps: int = 1):
    """Return the lr torch uses at each optimizer step, stepping the scheduler every epoch."""
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=base_lr)
    scheduler = make_scheduler(opt)
    lrs = []
    for step in range(num_steps):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        if (step + 1) % per_epoch_steps == 0:
            scheduler.step()
    return np.array(lrs)


def timm_warmup_cosine_lrs(base_lr, warmup, total, init, end, num_steps):
    """Return timm CosineLRScheduler(warmup_prefix=True) lrs for t = 0..num_steps-1."""
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=base_lr)
    scheduler = CosineLRScheduler(
        opt,
        t_initial=total - warmup,
        warmup_t=warmup,
        warmup_lr_init=init,
        lr_min=end,
        warmup_prefix=True,
        cycle_limit=1,
    )
    lrs = []
    for t in range(num_steps):
        scheduler.step(t)
        lrs.append(opt.param_groups[0]["lr"])
    return np.array(lrs)


def assert_schedule_matches(schedule, ref: np.ndarray, base_lr: float, name: str) -> None:
    """Check the host (float64) path and the jitted jax (float32) path against ``ref``."""
    steps = np.arange(len(ref))
    atol = ATOL_REL * base_lr
    host = np.array([schedule(int(t)) for t in steps], dtype=np.float64)
    assert_close(host, ref, f"{name} (float64)", atol=atol, rtol=RTOL_F64)
    assert_close(schedule(steps), host, f"{name} (numpy array)", atol=0.0, rtol=1e-15)
    jitted = np.asarray(jax.jit(schedule)(jnp.arange(len(ref))), dtype=np.float64)
    assert_close(jitted, ref, f"{name} (jax)", atol=atol, rtol=RTOL_F32)


STEP_CONFIGS = [(0.1, 10, 0.5), (1e-2, 3, 0.1), (1.0, 1, 0.9), (1e-3, 30, 0.1)]


@pytest.mark.parametrize(
    "base_lr,step_size,gamma", STEP_CONFIGS, ids=[f"lr{c[0]}-s{c[1]}-g{c[2]}" for c in STEP_CONFIGS]
)
def test_step_lr_matches_torch(base_lr, step_size, gamma):
    ref = torch_lrs(
        lambda o: torch.optim.lr_scheduler.StepLR(o, step_size, gamma), NUM_STEPS, base_lr
    )
    assert_schedule_matches(schedules.step_lr(base_lr, step_size, gamma), ref, base_lr, "step")


COSINE_CONFIGS = [
    (1e-2, 5, 1e-4),  # the notebook: periodic over 150 steps
    (0.1, 100, 0.0),
    (1e-3, 7, 1e-5),
    (0.1, 1, 0.0),
    (1e-2, 10, 1e-4),
    (1e-2, 200, 1e-4),  # T_max longer than the run
]


@pytest.mark.parametrize(
    "base_lr,t_max,eta_min",
    COSINE_CONFIGS,
    ids=[f"lr{c[0]}-T{c[1]}-eta{c[2]}" for c in COSINE_CONFIGS],
)
def test_cosine_annealing_lr_matches_torch(base_lr, t_max, eta_min):
    ref = torch_lrs(
        lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, t_max, eta_min), NUM_STEPS, base_lr
    )
    schedule = schedules.cosine_annealing_lr(base_lr, t_max, eta_min)
    assert_schedule_matches(schedule, ref, base_lr, "cosine")


def test_cosine_annealing_lr_is_periodic_beyond_t_max():
    schedule = schedules.cosine_annealing_lr(1e-2, 5, 1e-4)
    assert schedule(5) == pytest.approx(1e-4, rel=1e-12)
    assert schedule(10) == pytest.approx(1e-2, rel=1e-12)
    assert schedule(7) == pytest.approx(schedule(3), rel=1e-12)


EXP_CONFIGS = [(0.1, 0.95), (1e-2, 0.9), (1.0, 0.99)]


@pytest.mark.parametrize(
    "base_lr,gamma", EXP_CONFIGS, ids=[f"lr{c[0]}-g{c[1]}" for c in EXP_CONFIGS]
)
def test_exponential_lr_matches_torch(base_lr, gamma):
    ref = torch_lrs(lambda o: torch.optim.lr_scheduler.ExponentialLR(o, gamma), NUM_STEPS, base_lr)
    assert_schedule_matches(schedules.exponential_lr(base_lr, gamma), ref, base_lr, "exponential")


WARMUP_CONFIGS = [
    (1e-3, 10, 100, 0.0, 0.0),
    (1e-2, 5, 50, 1e-5, 1e-4),
    (1e-2, 0, 40, 0.0, 1e-5),
    (5e-4, 1, 120, 1e-6, 0.0),
]


@pytest.mark.parametrize(
    "base_lr,warmup,total,init,end",
    WARMUP_CONFIGS,
    ids=[f"lr{c[0]}-w{c[1]}-T{c[2]}-init{c[3]}-end{c[4]}" for c in WARMUP_CONFIGS],
)
def test_warmup_cosine_matches_torch(base_lr, warmup, total, init, end):
    ref = timm_warmup_cosine_lrs(base_lr, warmup, total, init, end, NUM_STEPS)
    schedule = schedules.warmup_cosine(base_lr, warmup, total, init, end)
    assert_schedule_matches(schedule, ref, base_lr, "warmup_cosine")


PER_STEP_CONFIGS = [("cosine", 7), ("step", 3), ("exponential", 1), ("cosine", 11)]


def _torch_epoch_scheduler(name: str):
    return {
        "cosine": lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, 5, 1e-4),
        "step": lambda o: torch.optim.lr_scheduler.StepLR(o, 4, 0.5),
        "exponential": lambda o: torch.optim.lr_scheduler.ExponentialLR(o, 0.9),
    }[name]


def _epoch_schedule(name: str):
    return {
        "cosine": schedules.cosine_annealing_lr(1e-2, 5, 1e-4),
        "step": schedules.step_lr(1e-2, 4, 0.5),
        "exponential": schedules.exponential_lr(1e-2, 0.9),
    }[name]


@pytest.mark.parametrize(
    "name,steps_per_epoch", PER_STEP_CONFIGS, ids=[f"{c[0]}-spe{c[1]}" for c in PER_STEP_CONFIGS]
)
def test_per_step_matches_torch(name, steps_per_epoch):
    num_steps = 20 * steps_per_epoch
    ref = torch_lrs(_torch_epoch_scheduler(name), num_steps, 1e-2, steps_per_epoch)
    schedule = schedules.per_step(_epoch_schedule(name), steps_per_epoch)
    assert_schedule_matches(schedule, ref, 1e-2, f"per_step({name})")


def test_make_schedule_matches_torch():
    """The notebook: Adam lr 1e-2, CosineAnnealingLR(T_max=5, eta_min=1e-4) per epoch, 20 epochs."""
    spe = 7
    ref = torch_lrs(_torch_epoch_scheduler("cosine"), 20 * spe, 1e-2, spe)
    schedule = schedules.make_schedule(
        "cosine", 1e-2, epochs=20, steps_per_epoch=spe, t_max=5, eta_min=1e-4
    )
    assert_schedule_matches(schedule, ref, 1e-2, "make_schedule(cosine)")


@pytest.mark.parametrize("name", sorted(schedules.SCHEDULES))
def test_make_schedule_defaults(name):
    schedule = schedules.make_schedule(name, 1e-2, epochs=10, steps_per_epoch=4)
    values = np.asarray(jax.jit(schedule)(jnp.arange(40)))
    assert values.shape == (40,) and np.all(np.isfinite(values))
    assert np.all(values <= 1e-2 * (1 + 1e-6)) and np.all(values >= 0)


def test_make_schedule_rejects_unknown_name():
    with pytest.raises(ValueError, match="unknown schedule 'linear'"):
        schedules.make_schedule("linear", 1e-2, epochs=1, steps_per_epoch=1)


def test_schedule_drives_optax():
    """Optax's step count drives the schedule inside jit: update t equals -lr(t) * grad."""
    schedule = schedules.per_step(schedules.cosine_annealing_lr(1e-2, 5, 1e-4), 3)
    tx = optax.sgd(schedule)
    params = {"w": jnp.zeros(())}
    state = tx.init(params)
    update = jax.jit(tx.update)
    for t in range(40):
        updates, state = update({"w": jnp.ones(())}, state, params)
        np.testing.assert_allclose(float(updates["w"]), -schedule(t), rtol=RTOL_F32)


@pytest.mark.parametrize(
    "kw",
    [{}, dict(base_lr=0.3, t_max=7, eta_min=0.01, step_size=4, step_gamma=0.5, exp_gamma=0.9)],
    ids=["notebook", "flags"],
)
def test_notebook_schedules_match_torch(kw):
    """plot_schedules' curves are torch's schedulers stepped per epoch (the notebook's three)."""
    got = schedules.notebook_schedules(**kw)
    lr = kw.get("base_lr", 1.0)
    make = [
        lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(
            o, T_max=kw.get("t_max", 10), eta_min=kw.get("eta_min", 0.0)
        ),
        lambda o: torch.optim.lr_scheduler.StepLR(
            o, step_size=kw.get("step_size", 30), gamma=kw.get("step_gamma", 0.2)
        ),
        lambda o: torch.optim.lr_scheduler.ExponentialLR(o, gamma=kw.get("exp_gamma", 0.95)),
    ]
    assert [n.split("(")[0] for n in got] == ["CosineAnnealingLR", "StepLR", "ExponentialLR"]
    for (name, sched), mk in zip(got.items(), make, strict=True):
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
        ref = mk(opt)
        want = []
        for _ in range(100):
            want.append(opt.param_groups[0]["lr"])
            opt.step()
            ref.step()
        np.testing.assert_allclose([sched(e) for e in range(100)], want, rtol=1e-10, err_msg=name)


def test_plot_schedules_writes_png(tmp_path):
    out = schedules.plot_schedules(schedules.notebook_schedules(), 100, tmp_path / "lr.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_schedules_script(tmp_path):
    out = tmp_path / "sched.png"
    cmd = [
        sys.executable,
        str(ROOT / "scripts" / "plot_schedules.py"),
        "--out",
        str(out),
        "--epochs",
        "30",
    ]
    subprocess.run(cmd, check=True, cwd=ROOT, capture_output=True, timeout=120)
    assert out.stat().st_size > 0
