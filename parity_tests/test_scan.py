"""scan_blocks and remat_policy (vit family): the same model, the same numbers, timm's keys.

Scanned params are the unrolled model's ``blocks_{i}`` stacked on a leading axis under
``blocks``; every test builds both from one set of weights. Tiny configs (32 px, width 32-48,
depth 2-4) keep the file fast.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import vitjax
from parity_tests.helpers import nchw, randomize_
from parity_tests.parity import assert_close
from vitjax.models import vit
from vitjax.models.vit import VisionTransformer, drop_path_rates, stacked_lists
from vitjax.models.vit_config import REMAT_POLICIES, ViTConfig
from vitjax.weights import convert

TINY = dict(img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=2, num_classes=5)
CONFIGS = {
    "odd": dict(TINY, img_size=(24, 40), embed_dim=48, num_heads=3, reg_tokens=2,
                init_values=1e-1, global_pool="avg", mlp_layer="swiglu", act_layer="silu",
                qk_norm=True),
    "clip": dict(TINY, pre_norm=True, norm_eps=1e-5, act_layer="quick_gelu", depth=2,
                 distilled=True, drop_path_rate=0.3),
    "respost": dict(TINY, block_fn="ResPostBlock", class_token=False, global_pool="avg"),
}  # fmt: skip


def _images(cfg: ViTConfig, batch: int = 2, seed: int = 0) -> np.ndarray:
    h, w = (cfg.img_size, cfg.img_size) if isinstance(cfg.img_size, int) else cfg.img_size
    return np.random.default_rng(seed).standard_normal((batch, h, w, 3)).astype(np.float32)


def _random_variables(model: VisionTransformer, seed: int = 0) -> dict:
    """Random weights of model's shapes (norm scales near 1), without compiling its init."""
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), _images(model.cfg))
    rng = np.random.default_rng(seed)

    def leaf(path, s):
        noise = 0.1 * rng.standard_normal(s.shape).astype(np.float32)
        return jnp.asarray(noise + (jax.tree_util.keystr(path).endswith("['scale']")))

    return jax.tree_util.tree_map_with_path(leaf, shapes)


def stack_blocks(params: dict, depth: int) -> dict:
    """An unrolled model's params with blocks_0..blocks_{depth-1} stacked under 'blocks'."""
    out = {k: v for k, v in params.items() if not k.startswith("blocks_")}
    blocks = [params[f"blocks_{i}"] for i in range(depth)]
    out["blocks"] = jax.tree_util.tree_map(lambda *a: jnp.stack(a), *blocks)
    return out


@functools.cache
def _twins(name: str):
    """(unrolled model, its variables, scanned model, the same weights stacked)."""
    model = VisionTransformer(ViTConfig(**CONFIGS[name]))
    variables = _random_variables(model)
    if model.cfg.block_fn != "Block":
        return model, variables, None, None
    scanned = VisionTransformer(dataclasses.replace(model.cfg, scan_blocks=True))
    stacked = {"params": stack_blocks(variables["params"], model.cfg.depth)}
    return model, variables, scanned, stacked


def _logits_and_grads(model, params, x, seed=7):
    """Jitted (logits, d sum(logits * probe) / d params) for a fixed random probe."""

    def f(params):
        logits = model.apply({"params": params}, x)
        probe = jax.random.normal(jax.random.PRNGKey(seed), logits.shape)
        return jnp.sum(logits * probe), logits

    (_, logits), grads = jax.jit(jax.value_and_grad(f, has_aux=True))(params)
    return logits, grads


@functools.cache
def _reference(name: str, scan: bool):
    """Logits and gradients of config name, unrolled or scanned, without remat."""
    model, variables, scanned, stacked = _twins(name)
    m, v = (scanned, stacked) if scan else (model, variables)
    return _logits_and_grads(m, v["params"], _images(model.cfg))


def _assert_trees_close(a, b, name, dtype="float32"):
    for (path, leaf), other in zip(
        jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves(b), strict=True
    ):
        assert_close(leaf, other, f"{name}[{jax.tree_util.keystr(path)}]", dtype=dtype)


def test_scanned_params_are_stacked_under_blocks():
    cfg = ViTConfig(**TINY, scan_blocks=True)
    shapes = jax.eval_shape(VisionTransformer(cfg).init, jax.random.PRNGKey(0), _images(cfg))
    params = shapes["params"]
    assert "blocks" in params and not any(k.startswith("blocks_") for k in params)
    assert params["blocks"]["attn"]["qkv"]["kernel"].shape == (cfg.depth, 32, 96)
    assert params["blocks"]["norm1"]["scale"].shape == (cfg.depth, 32)
    assert stacked_lists(cfg) == {"blocks": cfg.depth}
    assert stacked_lists(ViTConfig(**TINY)) == {}


@pytest.mark.parametrize("name", ["odd", "clip"])
def test_scan_matches_unrolled(name):
    model, *_ = _twins(name)
    ref, g_ref = _reference(name, scan=False)
    logits, g_scan = _reference(name, scan=True)
    assert_close(logits, ref, f"scan_logits[{name}]")
    _assert_trees_close(g_scan, stack_blocks(g_ref, model.cfg.depth), f"scan_grads[{name}]")


# "nothing_saveable" is "full" under its jax name; ResPostBlock: remat without scan, any block
@pytest.mark.parametrize(
    "name,policy,scan",
    [("odd", "full", False), ("respost", "dots_saveable", False), ("odd", "full", True),
     ("odd", "dots_saveable", True), ("odd", "dots_with_no_batch_dims_saveable", True)],
)  # fmt: skip
def test_remat_matches_no_remat(name, policy, scan):
    assert policy in REMAT_POLICIES
    model, variables, scanned, stacked = _twins(name)
    base_model, base_vars = (scanned, stacked) if scan else (model, variables)
    remat = VisionTransformer(dataclasses.replace(base_model.cfg, remat_policy=policy))
    ref, g_ref = _reference(name, scan)
    logits, g = _logits_and_grads(remat, base_vars["params"], _images(model.cfg))
    assert_close(logits, ref, f"remat_logits[{name},{policy},scan={scan}]")
    _assert_trees_close(g, g_ref, f"remat_grads[{name},{policy},scan={scan}]")


def test_scan_drop_path_rates_are_timms():
    cfg = ViTConfig(**dict(TINY, depth=5, drop_path_rate=0.3))
    timm_rates = [x.item() for x in torch.linspace(0, 0.3, 5)]
    np.testing.assert_allclose(drop_path_rates(cfg), timm_rates, rtol=1e-6)
    # rates [0, 1]: in training block 0 keeps both branches and block 1 drops both, whatever
    # the rng, so the scanned model in train mode is block 0 alone in eval mode
    model = VisionTransformer(ViTConfig(**dict(TINY, depth=2, drop_path_rate=1.0)))
    variables = _random_variables(model)
    scanned = VisionTransformer(dataclasses.replace(model.cfg, scan_blocks=True))
    stacked = {"params": stack_blocks(variables["params"], 2)}
    x = _images(model.cfg)
    one = VisionTransformer(dataclasses.replace(model.cfg, depth=1))
    one_vars = {"params": {k: v for k, v in variables["params"].items() if k != "blocks_1"}}
    want = jax.jit(lambda v: one.apply(v, x, method=one.forward_features))(one_vars)
    run = jax.jit(lambda k: scanned.apply(stacked, x, train=True, rngs={"dropout": k},
                                          method=scanned.forward_features))  # fmt: skip
    for seed in range(3):
        assert_close(run(jax.random.PRNGKey(seed)), want, f"scan_drop_path[seed={seed}]")
    # rates [0, 0.3]: a training forward draws, per rng, and repeats for the same rng
    _, _, scanned, stacked = _twins("clip")
    x = _images(scanned.cfg, batch=8)
    run = jax.jit(lambda k: scanned.apply(stacked, x, train=True, rngs={"dropout": k}))
    a, b = run(jax.random.PRNGKey(0)), run(jax.random.PRNGKey(1))
    assert np.isfinite(np.asarray(a)).all() and not np.allclose(a, b)
    assert_close(run(jax.random.PRNGKey(0)), a, "scan_drop_path_repeatable", dtype="exact")


@pytest.mark.parametrize(
    "kw",
    [dict(indices=2), dict(indices=[0, 2], norm=True, stop_early=True),
     dict(indices=None, output_fmt="NLC", return_prefix_tokens=True),
     dict(indices=1, output_dict=True, return_prefix_tokens=True)],
    ids=["last2", "stop_early", "nlc_prefix", "dict"],
)  # fmt: skip
def test_scan_forward_intermediates_match_unrolled(kw):
    model, variables, scanned, stacked = _twins("odd")
    x = _images(model.cfg)
    want = model.apply(variables, x, method="forward_intermediates", **kw)
    got = scanned.apply(stacked, x, method="forward_intermediates", **kw)
    assert jax.tree_util.tree_structure(got) == jax.tree_util.tree_structure(want)
    _assert_trees_close(got, want, f"scan_intermediates[{sorted(kw)}]")


def test_scan_prune_intermediate_layers():
    from vitjax.layers.features import prune_variables

    model, variables, scanned, stacked = _twins("odd")
    x = _images(model.cfg)
    pruned, _ = model.prune_intermediate_layers([1])
    pruned_scan, _ = scanned.prune_intermediate_layers([1])
    want = pruned.apply(prune_variables(variables, pruned), x)
    got = pruned_scan.apply(prune_variables(stacked, pruned_scan), x)
    assert_close(got, want, "scan_pruned")


def test_scan_train_step_matches_unrolled():
    from vitjax import training

    model, variables, scanned, stacked = _twins("odd")
    remat = VisionTransformer(dataclasses.replace(scanned.cfg, remat_policy="full"))
    batch = {"image": _images(model.cfg, batch=4), "label": np.array([0, 1, 2, 3], np.int32)}
    # SGD: Adam would turn the round-off in k's bias gradient (exactly 0 in exact arithmetic:
    # softmax ignores a per-query shift) into lr-sized steps of either sign
    tx = training.make_optimizer("sgd", 0.1)
    states = {"unrolled": training.create_train_state(model, variables, tx),
              "scan+remat": training.create_train_state(remat, stacked, tx)}  # fmt: skip
    losses = {}
    for name, state in states.items():
        step = jax.jit(training.train_step)
        for _ in range(2):
            state, metrics = step(state, batch, jax.random.PRNGKey(0))
            losses.setdefault(name, []).append(float(metrics["loss"]))
        states[name] = state
    assert np.isfinite(losses["scan+remat"]).all()
    assert losses["scan+remat"][1] < losses["scan+remat"][0]
    assert_close(np.array(losses["scan+remat"]), np.array(losses["unrolled"]), "scan_train_loss")
    _assert_trees_close(states["scan+remat"].params,
                        stack_blocks(states["unrolled"].params, model.cfg.depth),
                        "scan_train_params")  # fmt: skip


def test_scan_bf16_runs():
    cfg = ViTConfig(**TINY, scan_blocks=True, remat_policy="dots_saveable")
    model = VisionTransformer(cfg, dtype=jnp.bfloat16)
    x = _images(cfg)
    out = jax.jit(model.apply)(_random_variables(model), x)
    assert out.dtype == jnp.bfloat16 and np.isfinite(np.asarray(out, np.float32)).all()


def test_scan_and_remat_options_are_checked_by_name():
    with pytest.raises(ValueError, match="remat_policy='sometimes'"):
        ViTConfig(**TINY, remat_policy="sometimes")
    with pytest.raises(ValueError, match="scan_blocks=1"):
        ViTConfig(**TINY, scan_blocks=1)
    for bad in (dict(block_fn="ParallelScalingBlock"), dict(block_fn="ResPostBlock"),
                dict(attn_layer="diff"), dict(block_fn="DiffParallelScalingBlock")):  # fmt: skip
        with pytest.raises(ValueError, match=r"scan_blocks=True needs block_fn='Block'.*"
                                             + next(iter(bad))):  # fmt: skip
            ViTConfig(**dict(TINY, embed_dim=64, **bad), scan_blocks=True)
    cfg = ViTConfig(**TINY, scan_blocks=True, remat_policy="full")
    assert ViTConfig.from_dict(cfg.to_dict()) == cfg


def test_vitjax_only_fields_stay_out_of_timm_args():
    from vitjax.factory import timm_fields
    from vitjax.registry import get_config

    cfg = dataclasses.replace(get_config("vit_base_patch16_224"), scan_blocks=True,
                              remat_policy="dots_saveable")  # fmt: skip
    assert vit.timm_model_args("vit_base_patch16_224", cfg) == {}
    fields = timm_fields(VisionTransformer(cfg), "vit_base_patch16_224")
    assert fields["architecture"] == "vit_base_patch16_224"
    assert set(fields["model_args"]) == {"img_size"}


def test_scanned_model_matches_timm_on_stacked_weights():
    import timm

    net = randomize_(timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32,
                                       patch_size=8, embed_dim=32, depth=3, num_heads=2,
                                       num_classes=5))  # fmt: skip
    from vitjax import from_timm

    model, variables = from_timm(net)
    scanned = VisionTransformer(dataclasses.replace(model.cfg, scan_blocks=True))
    stacked = {"params": stack_blocks(variables["params"], model.cfg.depth)}
    x = _images(model.cfg)
    with torch.no_grad():
        want = net(nchw(x)).numpy()
    assert_close(scanned.apply(stacked, x), want, "scan_vs_timm", dtype="float32_model")


def test_scanned_checkpoint_loads_and_exports_with_timms_keys(tmp_path):
    import timm
    from safetensors.torch import save_file

    import vitjax

    kw = dict(img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=2, num_classes=5)
    net = randomize_(timm.create_model("vit_tiny_patch16_224", pretrained=False, **kw))
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    model, variables = vitjax.create_model("vit_tiny_patch16_224", checkpoint_path=path,
                                           scan_blocks=True, **kw)  # fmt: skip
    assert model.cfg.scan_blocks and "blocks" in variables["params"]
    x = _images(model.cfg)
    with torch.no_grad():
        want = net(nchw(x)).numpy()
    assert_close(model.apply(variables, x), want, "scan_checkpoint_vs_timm", dtype="float32_model")
    sd = vitjax.to_timm_state_dict(model, variables, framework="pt")
    assert "blocks.2.attn.qkv.weight" in sd and not any(k.startswith("blocks.attn") for k in sd)
    fresh = timm.create_model("vit_tiny_patch16_224", pretrained=False, **kw).eval()
    fresh.load_state_dict(sd, strict=True)
    with torch.no_grad():
        assert_close(fresh(nchw(x)), want, "scan_export_vs_timm", dtype="exact")
    out = vitjax.save_pretrained(tmp_path / "out", model, variables)
    config = json.loads((Path(out) / "config.json").read_text())
    assert "scan_blocks" not in config["model_args"] and config["model_config"]["scan_blocks"]
    reloaded, reloaded_vars = vitjax.load_pretrained(out)
    assert reloaded.cfg == model.cfg
    assert_close(reloaded.apply(reloaded_vars, x), model.apply(variables, x), "scan_reloaded",
                 dtype="exact")  # fmt: skip
    net2 = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    with torch.no_grad():
        assert_close(net2(nchw(x)), want, "scan_saved_into_timm", dtype="exact")
    if "scan_blocks" in inspect.signature(vitjax.from_timm).parameters or any(
        p.kind is p.VAR_KEYWORD for p in inspect.signature(vitjax.from_timm).parameters.values()
    ):
        model2, variables2 = vitjax.from_timm(net, scan_blocks=True)
        assert_close(model2.apply(variables2, x), want, "scan_from_timm", dtype="float32_model")


def test_adamw_decay_mask_skips_norms_and_biases_of_scanned_blocks():
    from vitjax.training.steps import decay_mask

    kw = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=3)
    masks = []
    for scan in (False, True):
        model, variables = vitjax.create_model("vit_tiny_patch16_224", scan_blocks=scan, **kw)
        flat = {}
        for path, v in convert.flatten(decay_mask(variables["params"])).items():
            items = (
                [(f"blocks_{i}", *path[1:]) for i in range(2)] if path[0] == "blocks" else [path]
            )
            flat.update({p: bool(v) for p in items})
        masks.append(flat)
    assert masks[0] == masks[1]
    assert (
        not masks[1][("blocks_1", "norm1", "scale")]
        and masks[1][("blocks_1", "mlp", "fc1", "kernel")]
    )
