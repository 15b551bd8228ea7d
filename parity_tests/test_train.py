"""Training parity: vitjax.train against vittorch.train from the same weights on the same batches.

Dropout off, float32 on both sides, 20+ optimizer steps each: the loss of every step and every
final parameter must agree at the 'float32' tolerance. The configs are tiny (fast) and odd.
"""

from __future__ import annotations

import copy

import jax
import numpy as np
import optax
import pytest
import torch

import vittorch
from parity_tests.parity import assert_close
from vitjax import training as jtrain
from vitjax.factory import init_variables, variables_from_state_dict
from vitjax.models.vit import VisionTransformer
from vitjax.models.vit_config import ViTConfig
from vitjax.registry import get_config
from vitjax.training import schedules
from vitjax.weights import convert
from vittorch import train as ttrain

CONFIGS = {
    "tutorial_d2": get_config("vit_tutorial_patch16_32", depth=2),
    # the notebook's block (no qkv bias, eps 1e-5) at a width that keeps the tests fast
    "tutorial_narrow": get_config("vit_tutorial_patch16_32", depth=2, embed_dim=64, num_heads=4),
    # non-square, register token, LayerScale, avg pool + fc_norm, odd widths
    "odd_reg_ls": ViTConfig(
        img_size=(24, 40),
        patch_size=8,
        embed_dim=36,
        depth=2,
        num_heads=3,
        mlp_ratio=2.0,
        reg_tokens=1,
        init_values=0.1,
        global_pool="avg",
        num_classes=5,
    ),
    "distilled": ViTConfig(
        img_size=16, patch_size=8, embed_dim=24, depth=2, num_heads=2, distilled=True, num_classes=3
    ),
}


def make_pair(cfg: ViTConfig, seed: int = 0):
    """vittorch model and its Flax twin with the same (torch-initialised) weights."""
    torch.manual_seed(seed)
    net = vittorch.VisionTransformer(cfg)
    model = VisionTransformer(cfg)
    sd = {k: v.detach().numpy() for k, v in net.state_dict().items()}
    return net, model, variables_from_state_dict(model, sd)


def make_batches(cfg: ViTConfig, n: int, batch_size: int, seed: int) -> list[dict[str, np.ndarray]]:
    """n learnable random batches: the class shifts the image mean."""
    rng = np.random.default_rng(seed)
    h, w = (cfg.img_size, cfg.img_size) if isinstance(cfg.img_size, int) else cfg.img_size
    out = []
    for _ in range(n):
        label = rng.integers(0, cfg.num_classes, batch_size).astype(np.int32)
        image = rng.normal(size=(batch_size, h, w, cfg.in_chans)).astype(np.float32)
        image += (label[:, None, None, None] / cfg.num_classes).astype(np.float32)
        out.append({"image": image, "label": label})
    return out


def to_torch(batch: dict[str, np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """(NCHW images, int64 labels) for torch."""
    x = torch.from_numpy(batch["image"].transpose(0, 3, 1, 2).copy())
    return x, torch.from_numpy(batch["label"].astype(np.int64))


def run_jax(model, variables, tx, batches, label_smoothing=0.0):
    """Per-step losses and final state of train_step over the batches."""
    state = jtrain.create_train_state(model, variables, tx, label_smoothing)
    step = jax.jit(jtrain.train_step, donate_argnums=0)
    key, losses = jax.random.PRNGKey(0), []
    for b in batches:
        state, m = step(state, b, key)
        losses.append(float(m["loss"]))
    return np.array(losses), state


def report(name: str, loss_rep: dict, params_max: float) -> None:
    """Print the figures of a trajectory comparison (pytest -s shows them)."""
    print(
        f"\n{name}: loss max|diff| {loss_rep['max']:.2e} (losses up to {loss_rep['scale']:.2f}), "
        f"params max|diff| {params_max:.2e}"
    )


def compare_params(
    state, net, name: str, exact_keys=(), dtype: str = "float32", slack=None
) -> float:
    """assert_close every parameter (timm keys); return the max |diff|.

    ``slack``: timm key -> per-element allowance (see parity.assert_close), or None.
    """
    got = convert.flax_to_torch(jax.device_get(state.params))
    worst = 0.0
    for k, v in net.state_dict().items():
        kind = "exact" if k in exact_keys else dtype
        rep = assert_close(got[k], v, f"{name}: {k}", dtype=kind, slack=(slack or {}).get(k))
        worst = max(worst, rep["max"])
    return worst


def torch_adam_cosine(net, batches, epochs: int, lr: float, dtype=torch.float32) -> list[float]:
    """The notebook's recipe in vittorch: Adam, CosineAnnealingLR(T_max=5, eta_min=1e-4)."""
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=5, eta_min=1e-4)
    loss_fn, losses, per_epoch = torch.nn.CrossEntropyLoss(), [], len(batches) // epochs
    for e in range(epochs):
        epoch = [to_torch(b) for b in batches[e * per_epoch : (e + 1) * per_epoch]]
        epoch = [(x.to(dtype), y) for x, y in epoch]
        losses += ttrain.train_one_epoch(net, epoch, loss_fn, opt)["losses"]
        sched.step()
    return losses


@pytest.mark.parametrize("config", ["tutorial_narrow"])
def test_train_step_adam_cosine_matches_torch(config):
    """The notebook's recipe: Adam, CosineAnnealingLR(T_max=5, eta_min=1e-4) stepped per epoch.

    Adam turns the round-off of a near-zero gradient into an lr-sized step, so one weight in 16k
    can land ~2e-5 from float64's trajectory in torch's own float32 run (AMD EPYC: 2.3e-5, the
    fc1 weight (168, 49)). Each parameter's float32_adam tolerance is widened by exactly that
    measured error of torch's float32 run against the same run in float64, element by element.
    """
    cfg = CONFIGS[config]
    epochs, steps_per_epoch, lr = 6, 4, 1e-3
    batches = make_batches(cfg, epochs * steps_per_epoch, 4, seed=1)
    net, model, variables = make_pair(cfg)
    net64 = copy.deepcopy(net).double()

    t_losses = torch_adam_cosine(net, batches, epochs, lr)
    torch_adam_cosine(net64, batches, epochs, lr, dtype=torch.float64)
    exact = net64.state_dict()
    slack = {k: (v.double() - exact[k]).abs() for k, v in net.state_dict().items()}

    schedule = schedules.per_step(schedules.cosine_annealing_lr(lr, 5, 1e-4), steps_per_epoch)
    tx = jtrain.make_optimizer("adam", schedule)
    j_losses, state = run_jax(model, variables, tx, batches)
    rep = assert_close(j_losses, np.array(t_losses), f"{config}: per-step loss")
    worst = compare_params(state, net, config, dtype="float32_adam", slack=slack)
    report(f"{config} adam+cosine", rep, worst)


@pytest.mark.parametrize("config", ["odd_reg_ls"])
def test_train_step_adamw_matches_torch(config):
    """AdamW on timm's decay groups, with gradient clipping and label smoothing."""
    cfg = CONFIGS[config]
    batches = make_batches(cfg, 24, 3, seed=2)
    net, model, variables = make_pair(cfg)

    groups = ttrain.param_groups_weight_decay(net, 0.05)
    opt = torch.optim.AdamW(groups, lr=2e-3)
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
    t_losses = ttrain.train_one_epoch(
        net, [to_torch(b) for b in batches], loss_fn, opt, clip_grad=0.5
    )["losses"]

    tx = jtrain.make_optimizer("adamw", 2e-3, weight_decay=0.05, clip_grad=0.5)
    j_losses, state = run_jax(model, variables, tx, batches, label_smoothing=0.1)
    rep = assert_close(j_losses, np.array(t_losses), f"{config}: per-step loss")
    worst = compare_params(state, net, config)
    report(f"{config} adamw", rep, worst)


def test_decay_mask_matches_timm():
    """The AdamW mask decays exactly the parameters timm's param_groups_weight_decay decays."""
    from timm.optim import param_groups_weight_decay

    cfg = CONFIGS["odd_reg_ls"]
    net, model, variables = make_pair(cfg)
    groups = param_groups_weight_decay(net, 0.05, no_weight_decay_list=ttrain.NO_WEIGHT_DECAY)
    names = {id(p): k for k, p in net.named_parameters()}
    timm_decay = {names[id(p)] for g in groups if g["weight_decay"] for p in g["params"]}
    params = jax.device_get(variables["params"])
    as_arrays = jax.tree_util.tree_map(np.full_like, params, jtrain.decay_mask(params))
    flat = convert.flax_to_torch(as_arrays)
    flat = {k: bool(v.all()) for k, v in flat.items()}
    assert {k for k, v in flat.items() if v} == timm_decay
    assert {"pos_embed", "cls_token", "reg_token"}.isdisjoint(timm_decay)


@pytest.mark.parametrize("config", ["distilled"])
def test_train_step_sgd_nesterov_matches_torch(config):
    """torch.optim.SGD(momentum=0.9, nesterov=True, weight_decay=1e-4)."""
    cfg = CONFIGS[config]
    batches = make_batches(cfg, 20, 4, seed=3)
    net, model, variables = make_pair(cfg)
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-4)
    t_losses = ttrain.train_one_epoch(
        net, [to_torch(b) for b in batches], torch.nn.CrossEntropyLoss(), opt
    )["losses"]
    tx = jtrain.make_optimizer("sgd", 0.05, momentum=0.9, nesterov=True, weight_decay=1e-4)
    j_losses, state = run_jax(model, variables, tx, batches)
    rep = assert_close(j_losses, np.array(t_losses), f"{config}: per-step loss")
    worst = compare_params(state, net, config)
    report(f"{config} sgd", rep, worst)


@pytest.mark.parametrize("config", ["distilled", "tutorial_d2"])
def test_train_step_frozen_backbone_matches_torch(config):
    """Fine-tuning as the notebook: backbone frozen, Adam (L2 1e-4) on head (and head_dist)."""
    cfg = CONFIGS[config]
    batches = make_batches(cfg, 20, 4, seed=4)
    net, model, variables = make_pair(cfg)
    ttrain.freeze_backbone(net)
    opt = ttrain.make_optimizer(net, "adam", 1e-2, weight_decay=1e-4)
    t_losses = ttrain.train_one_epoch(
        net, [to_torch(b) for b in batches], torch.nn.CrossEntropyLoss(), opt
    )["losses"]

    tx = jtrain.make_optimizer("adam", 1e-2, weight_decay=1e-4, freeze_backbone=True)
    j_losses, state = run_jax(model, variables, tx, batches)
    rep = assert_close(j_losses, np.array(t_losses), f"{config}: per-step loss")
    before = convert.flax_to_torch(jax.device_get(variables["params"]))
    after = convert.flax_to_torch(jax.device_get(state.params))
    head = {k for k in after if k.split(".")[0] in jtrain.HEAD_NAMES}
    assert head and all(not np.array_equal(before[k], after[k]) for k in head)
    for k in set(after) - head:
        assert_close(after[k], before[k], f"frozen {k}", dtype="exact")
    worst = compare_params(state, net, config, exact_keys=set(after) - head)
    report(f"{config} frozen", rep, worst)


@pytest.mark.slow
def test_fit_matches_torch():
    """vitjax.train.fit and vittorch.train.fit: the same epoch records and final weights."""
    cfg = CONFIGS["odd_reg_ls"]
    epochs, lr = 5, 1e-3
    batches = make_batches(cfg, epochs * 4, 5, seed=5)
    val = make_batches(cfg, 2, 5, seed=6)
    val[-1] = {k: v[:3] for k, v in val[-1].items()}  # a short last batch
    net, model, variables = make_pair(cfg)

    class Epochs:  # re-iterated every epoch, like a shuffling DataLoader
        e = -1

        def __iter__(self):
            self.e += 1
            return iter([to_torch(b) for b in batches[self.e * 4 : (self.e + 1) * 4]])

    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=5, eta_min=1e-4)
    t_hist = ttrain.fit(net, Epochs(), [to_torch(b) for b in val], opt, sched, epochs)

    schedule = schedules.per_step(schedules.cosine_annealing_lr(lr, 5, 1e-4), 4)
    state = jtrain.create_train_state(model, variables, jtrain.make_optimizer("adam", schedule))
    state, j_hist = jtrain.fit(
        state,
        lambda e: batches[e * 4 : (e + 1) * 4],
        lambda e: val,
        epochs,
        batch_size=5,
        lr_schedule=schedule,
    )
    reps = {
        key: assert_close(
            np.array([r[key] for r in j_hist]), np.array([r[key] for r in t_hist]), f"fit {key}"
        )
        for key in ("lr", "train_loss", "train_acc", "val_loss", "val_acc")
    }
    report("fit (epoch train_loss)", reps["train_loss"], compare_params(state, net, "fit"))


def test_train_step_dropout_is_seeded():
    """Dropout and drop-path draw from (rng, step): same rng, same result; training mode is on."""
    cfg = ViTConfig(
        img_size=16,
        patch_size=8,
        embed_dim=24,
        depth=2,
        num_heads=2,
        num_classes=3,
        drop_rate=0.3,
        proj_drop_rate=0.2,
        drop_path_rate=0.2,
    )
    model = VisionTransformer(cfg)
    variables = init_variables(model)
    batch = make_batches(cfg, 1, 4, seed=7)[0]
    tx = jtrain.make_optimizer("sgd", 0.1, momentum=0.0)

    step = jax.jit(jtrain.train_step)

    def loss(key):
        state = jtrain.create_train_state(model, variables, tx)
        return float(step(state, batch, key)[1]["loss"])

    a, b, c = loss(jax.random.PRNGKey(1)), loss(jax.random.PRNGKey(1)), loss(jax.random.PRNGKey(2))
    state = jtrain.create_train_state(model, variables, tx)
    clean = float(jax.jit(jtrain.eval_step)(state, batch)["loss"])
    assert a == b and a != c and a != clean


def test_padded_batch_gives_the_same_step():
    """A short batch padded with a mask gives the unpadded batch's loss, gradients and update."""
    cfg = CONFIGS["distilled"]
    _, model, variables = make_pair(cfg)
    batch = make_batches(cfg, 1, 3, seed=8)[0]
    tx = optax.sgd(0.1)
    key = jax.random.PRNGKey(0)
    step = jax.jit(jtrain.train_step)
    s1, m1 = step(jtrain.create_train_state(model, variables, tx), batch, key)
    padded = jtrain.pad_batch(batch, 8)
    s2, m2 = step(jtrain.create_train_state(model, variables, tx), padded, key)
    assert float(m2["count"]) == 3
    assert_close(m2["loss"], m1["loss"], "padded loss")
    jax.tree_util.tree_map(lambda a, b: assert_close(a, b, "padded params"), s2.params, s1.params)


def test_fit_refuses_a_nan_loss():
    """A non-finite training loss stops fit with an error naming the epoch and the lr."""
    cfg = CONFIGS["distilled"]
    _, model, variables = make_pair(cfg)
    bad = make_batches(cfg, 1, 4, seed=10)
    bad[0]["image"][0, 0, 0, 0] = np.nan
    state = jtrain.create_train_state(model, variables, jtrain.make_optimizer("sgd", 0.1))
    with pytest.raises(FloatingPointError, match="epoch 1: training loss is nan"):
        jtrain.fit(state, lambda e: bad, None, 1, batch_size=4, lr_schedule=lambda t: 0.1)


def test_equal_settings_share_the_compiled_steps():
    """Equal model, optimizer and schedule settings (built anew, as a second run builds them):
    equal TrainState types, so a jitted step compiled for the first runs the second as it is;
    other settings are other objects."""
    cfg = CONFIGS["distilled"]

    def build(lr: float, seed: int):
        sched = schedules.make_schedule("cosine", lr, epochs=2, steps_per_epoch=3, t_max=5)
        tx = jtrain.make_optimizer("adamw", sched, weight_decay=0.05, clip_grad=1.0)
        _, model, variables = make_pair(cfg, seed)
        return tx, jtrain.create_train_state(VisionTransformer(cfg), variables, tx)

    tx1, s1 = build(1e-3, 0)
    tx2, s2 = build(1e-3, 1)  # other weights: the same program
    assert tx2 is tx1
    assert jax.tree_util.tree_structure(s1) == jax.tree_util.tree_structure(s2)
    step = jax.jit(jtrain.train_step)
    batch = make_batches(cfg, 1, 4, 0)[0]
    step(s1, batch, jax.random.PRNGKey(0))
    compiled = step._cache_size()  # jax's cache of train_step's programs (other tests' too)
    step(s2, batch, jax.random.PRNGKey(0))
    assert step._cache_size() == compiled
    tx3, s3 = build(2e-3, 0)
    assert tx3 is not tx1
    assert jax.tree_util.tree_structure(s3) != jax.tree_util.tree_structure(s1)
