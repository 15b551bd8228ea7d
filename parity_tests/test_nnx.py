"""vitjax.nnx: every family as a flax.nnx module, equal to its linen model bit for bit and in
training (nnx.Optimizer with vitjax's torch-semantics optimizers against the linen train_step).
"""

from __future__ import annotations

import functools
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import timm
import torch
from flax import linen, nnx

from parity_tests.helpers import nchw, randomize_
from parity_tests.parity import assert_close
from vitjax import factory, registry
from vitjax import nnx as vnnx
from vitjax.layers.cnn_stems import ConvNormAct
from vitjax.training.steps import create_train_state, eval_step, make_optimizer, train_step

# One tiny config per registered family (a new family adds its line here).
FAMILY_CASES = {
    "vit": ("vit_tutorial_patch16_32", dict(depth=1, embed_dim=32, num_heads=2)),
    "relpos": ("test_vit_relpos", dict(depth=1, img_size=32)),
    "eva": ("eva02_tiny_patch14_224", dict(depth=1, img_size=28, num_classes=5)),
    "naflex": ("naflexvit_base_patch16_gap", dict(depth=1, embed_dim=32, num_heads=2, img_size=32)),
}
# The trajectory model: dropout and drop path on, so the dropout keys are checked too.
TRAIN_CASE = ("vit_tutorial_patch16_32", dict(depth=1, embed_dim=32, num_heads=2, num_classes=3,
                                              drop_rate=0.2, drop_path_rate=0.2))  # fmt: skip


def images(cfg, batch: int = 2, seed: int = 0) -> jax.Array:
    """A random NHWC batch the config's model takes."""
    h, w = (cfg.img_size,) * 2 if isinstance(cfg.img_size, int) else cfg.img_size
    return jax.random.normal(jax.random.PRNGKey(seed), (batch, h, w, cfg.in_chans))


@functools.lru_cache
def linen_twin(case: tuple[str, tuple]) -> tuple[linen.Module, dict]:
    """vitjax.create_model(name, **kw) once per session (each random init compiles)."""
    name, kw = case
    return factory.create_model(name, **dict(kw))


def frozen(name: str, kw: dict) -> tuple[str, tuple]:
    return name, tuple(sorted(kw.items()))


def pure(model: nnx.Module, *filters) -> dict:
    """nnx.state(model, *filters) as a pure dict."""
    return nnx.to_pure_dict(nnx.state(model, *filters))


def assert_same_tree(got, want, name: str) -> None:
    """Same tree structure and bit-identical leaves."""
    assert jax.tree.structure(got) == jax.tree.structure(want), f"{name}: tree structure differs"
    for (path, a), b in zip(
        jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(want), strict=True
    ):
        assert_close(a, b, f"{name}{jax.tree_util.keystr(path)}", dtype="exact")


class BnNet(linen.Module):
    """A conv + BatchNorm stem and a head: the smallest model with batch_stats."""

    num_classes: int = 3

    def setup(self) -> None:
        self.stem = ConvNormAct(8, 3, 2)
        self.head = linen.Dense(self.num_classes)

    def __call__(self, x: jax.Array, train: bool = False, pre_logits: bool = False) -> jax.Array:
        x = self.stem(x, train).mean(axis=(1, 2))
        return x if pre_logits else self.head(x)


def bn_net() -> tuple[BnNet, dict]:
    net = BnNet()
    return net, dict(net.init(jax.random.PRNGKey(0), jnp.zeros((1, 12, 12, 3))))


def test_nnx_covers_every_family():
    missing = sorted(set(registry.FAMILIES) - set(FAMILY_CASES))
    assert not missing, f"add a tiny config for families {missing} to FAMILY_CASES"


@pytest.mark.parametrize("family", sorted(FAMILY_CASES))
def test_nnx_model_matches_linen(family, tmp_path):
    name, kw = FAMILY_CASES[family]
    linen_model, variables = linen_twin(frozen(name, kw))
    factory.save_pretrained(tmp_path, linen_model, variables)
    model = vnnx.create_model(name, checkpoint_path=tmp_path, **kw)  # the same file, read alike
    assert isinstance(model, nnx.Module) and model.cfg == linen_model.cfg
    assert_same_tree(pure(model), variables["params"], f"{family} state")
    x = images(model.cfg)
    assert_close(model(x), linen_model.apply(variables, x), f"{family} logits", dtype="exact")
    feats = linen_model.apply(variables, x, method="forward_features")
    assert_close(model.forward_features(x), feats, f"{family} features", dtype="exact")


def test_nnx_create_model_matches_linen():
    name, kw = FAMILY_CASES["vit"]
    linen_model, variables = linen_twin(frozen(name, kw))
    model = vnnx.create_model(name, **kw)  # random init, seed 0 on both sides
    assert_same_tree(pure(model), variables["params"], "random init")
    x = images(model.cfg)
    got = nnx.jit(lambda m, x: m(x, pre_logits=True))(model, x)
    want = jax.jit(lambda v, x: linen_model.apply(v, x, pre_logits=True))(variables, x)
    assert_close(got, want, "jitted pre_logits", dtype="exact")


def test_nnx_exports_match_linen(tmp_path):
    name, kw = FAMILY_CASES["vit"]
    linen_model, variables = linen_twin(frozen(name, kw))
    model = vnnx.from_linen(linen_model, variables)
    assert_same_tree(vnnx.to_linen(model)[1], variables, "to_linen")
    sd, want_sd = vnnx.to_timm_state_dict(model), factory.to_timm_state_dict(*vnnx.to_linen(model))
    assert sorted(sd) == sorted(want_sd)
    for k in sd:
        assert_close(sd[k], want_sd[k], k, dtype="exact")
    vnnx.save_pretrained(tmp_path, model)
    assert_same_tree(factory.load_pretrained(tmp_path)[1], variables, "saved by nnx")
    assert_same_tree(pure(vnnx.load_pretrained(tmp_path)), variables["params"], "loaded by nnx")


def test_nnx_from_timm_matches_torch():
    tm = randomize_(timm.create_model("vit_tiny_patch16_224", depth=1, img_size=32, num_classes=5))
    model = vnnx.from_timm(tm)
    x = np.asarray(images(model.cfg))
    with torch.no_grad():
        want = tm(nchw(x)).numpy()
    assert_close(model(x), want, "from_timm logits", dtype="float32_model")
    back = timm.create_model("vit_tiny_patch16_224", depth=1, img_size=32, num_classes=5).eval()
    back.load_state_dict(vnnx.to_timm_state_dict(model, framework="pt"), strict=True)
    with torch.no_grad():
        assert_close(back(nchw(x)), want, "exported to timm", dtype="exact")


def test_nnx_dropout_keys_match_linen():
    linen_model, variables = linen_twin(frozen(*TRAIN_CASE))
    model = vnnx.from_linen(linen_model, variables)
    x, key = images(model.cfg), jax.random.PRNGKey(7)

    def linen_train(k):
        return linen_model.apply(variables, x, train=True, rngs={"dropout": k})

    assert_close(model(x, train=True, rngs=key), linen_train(key), "train, key", dtype="exact")
    assert not np.array_equal(linen_train(key), linen_model.apply(variables, x))  # dropout acts
    model.train()  # nnx's mode switch: train=None follows it
    assert_close(model(x, rngs=key), linen_train(key), "model.train()", dtype="exact")
    rngs, twin = nnx.Rngs(dropout=5), nnx.Rngs(dropout=5)
    for i in range(2):  # an nnx.Rngs stream advances per call
        assert_close(model(x, rngs=rngs), linen_train(twin.dropout()), f"Rngs {i}", dtype="exact")
    model.eval()
    assert_close(model(x, rngs=key), linen_model.apply(variables, x), "model.eval()", dtype="exact")
    held = vnnx.from_linen(linen_model, variables, rngs=nnx.Rngs(dropout=9))
    held.train()
    assert_same_tree(pure(held, nnx.Param), variables["params"], "with rngs")
    twin = nnx.Rngs(dropout=9).fork()  # ToNNX forks the Rngs it is given
    assert_close(held(x), linen_train(twin.dropout()), "held rngs", dtype="exact")


def test_nnx_batchnorm_matches_linen():
    net, variables = bn_net()
    model = vnnx.from_linen(net, variables)
    assert_same_tree(pure(model, nnx.BatchStat), variables["batch_stats"], "batch_stats")
    assert_same_tree(vnnx.to_linen(model)[1], variables, "variables")
    x = jax.random.normal(jax.random.PRNGKey(1), (3, 12, 12, 3)) * 2 + 1
    want, updates = net.apply(variables, x, train=True, mutable=["batch_stats"])
    assert_close(model(x, train=True), want, "train logits", dtype="exact")
    stats = pure(model, nnx.BatchStat)
    assert_same_tree(stats, updates["batch_stats"], "updated running stats")
    old = variables["batch_stats"]["stem"]["bn"]["mean"]
    assert not np.array_equal(stats["stem"]["bn"]["mean"], old)
    new_vars = {"params": variables["params"], **updates}
    assert_close(model(x), net.apply(new_vars, x), "eval logits", dtype="exact")
    assert_same_tree(pure(model, nnx.BatchStat), stats, "eval keeps the statistics")


def optimizer_for(case: str):
    if case == "vit-frozen-adam":  # the notebook's fine-tuning: Adam lr 1e-2, head only
        return make_optimizer("adam", 1e-2, freeze_backbone=True)
    if case == "vit-adamw-decay":  # timm's decay mask, gradient clipping
        return make_optimizer("adamw", 1e-3, weight_decay=0.05, clip_grad=1.0)
    return make_optimizer("sgd", 0.05, momentum=0.9, weight_decay=1e-3)


@pytest.mark.parametrize("case", ["vit-frozen-adam", "vit-adamw-decay", "batchnorm-sgd"])
def test_nnx_train_step_matches_linen_loop(case):
    if case == "batchnorm-sgd":
        (linen_model, variables), size, num_classes = bn_net(), 12, 3
    else:
        (linen_model, variables), size = linen_twin(frozen(*TRAIN_CASE)), 32
        num_classes = TRAIN_CASE[1]["num_classes"]
    tx = optimizer_for(case)
    state, linen_step = create_train_state(linen_model, variables, tx), jax.jit(train_step)
    model = vnnx.from_linen(linen_model, variables)
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    step = nnx.jit(vnnx.train_step, donate_argnums=(0, 1))
    nnx_step = nnx.cached_partial(step, model, optimizer)  # Flax's guide: traversal staged out
    rng = jax.random.PRNGKey(11)
    for i in range(10):
        k1, k2 = jax.random.split(jax.random.PRNGKey(100 + i))
        batch = {
            "image": jax.random.normal(k1, (2, size, size, 3)),
            "label": jax.random.randint(k2, (2,), 0, num_classes),
        }
        state, want = linen_step(state, batch, rng)
        got = nnx_step(batch, rng)
        assert_close(got["loss"], want["loss"], f"{case} step {i} loss", atol=1e-6, rtol=0)
    assert int(optimizer.step[...]) == int(state.step) == 10
    want_eval = eval_step(state, batch)
    for k, v in vnnx.eval_step(model, batch).items():
        assert_close(v, want_eval[k], f"{case} eval {k}", atol=1e-6, rtol=0)
    want_vars = {"params": state.params}
    if state.batch_stats is not None:
        want_vars["batch_stats"] = state.batch_stats
    got_vars = vnnx.to_linen(model)[1]
    assert jax.tree.structure(got_vars) == jax.tree.structure(want_vars)
    leaves = zip(jax.tree_util.tree_leaves_with_path(got_vars), jax.tree.leaves(want_vars),
                 jax.tree.leaves(variables), strict=True)  # fmt: skip
    for (path, got), want, before in leaves:
        name = f"{case} after 10 steps {jax.tree_util.keystr(path)}"
        assert_close(got, want, name, atol=1e-6, rtol=0)
        is_frozen = case == "vit-frozen-adam" and path[1].key not in ("head", "head_dist")
        if is_frozen:
            assert_close(got, before, f"{name} (frozen)", dtype="exact")
        else:
            assert not np.array_equal(got, before), f"{name} did not train"


def test_import_vitjax_leaves_nnx_unimported():
    code = (
        "import sys, vitjax, vitjax.factory; vitjax.list_models; "
        "assert 'vitjax.nnx' not in sys.modules, 'vitjax imported vitjax.nnx eagerly'"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
