"""timm's feature API (forward_intermediates, prune_intermediate_layers) against timm.

feature_take_indices against timm's; each family's forward_intermediates on tiny random-weight
twins (depth 3, rectangular images) for several index sets (int, list, negatives, unsorted),
both output formats (vitjax's "NHWC" is timm's "NCHW" transposed), with and without the final
norm, prefix tokens, intermediates_only and stop_early; pruned models against timm's pruned
models (kept indices, state_dict, features, forward).
"""

from __future__ import annotations

import copy
import functools
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import timm
import torch
from timm.models._features import feature_take_indices as torch_take_indices

import vitjax
from parity_tests.helpers import nchw, randomize_, torch_state
from parity_tests.parity import assert_close
from vitjax.layers.features import feature_take_indices, format_intermediates, prune_variables
from vitjax.weights import convert

# --- feature_take_indices -----------------------------------------------------------------------

TAKE = [(4, None), (4, 1), (4, 4), (5, [0, 2]), (5, [-1, 0]), (3, [2, 0, -3]), (6, (-2, -5))]


@pytest.mark.parametrize("n,indices", TAKE)
@pytest.mark.parametrize("as_set", [False, True])
def test_feature_take_indices_matches_torch(n, indices, as_set):
    assert feature_take_indices(n, indices, as_set) == torch_take_indices(n, indices, as_set)


@pytest.mark.parametrize("n,indices", [(4, 0), (4, 5), (4, [4]), (4, [-5]), (3, [0, 3])])
def test_feature_take_indices_refuses_what_torch_refuses(n, indices):
    with pytest.raises(AssertionError):
        torch_take_indices(n, indices)
    with pytest.raises(ValueError, match="out of range"):
        feature_take_indices(n, indices)


def test_format_intermediates_refuses_nchw():
    y = jnp.zeros((1, 7, 4))
    with pytest.raises(ValueError, match=r"NCHW transposed by \(0, 2, 3, 1\)"):
        format_intermediates([y], 1, (2, 3), "NCHW")


# --- twins ----------------------------------------------------------------------------------------

# config -> (timm name, create_model overrides, image sizes to run): depth 3, small grids
MODELS: dict[str, tuple[str, dict[str, Any], list[tuple[int, int]]]] = {
    # DINOv3: class + 4 register tokens, dinov3 rope, dynamic size (a second size under jit)
    "dinov3": ("vit_small_patch16_dinov3", {}, [(48, 64)]),
    # EVA-02: rope 'cat', SwiGLU, avg pool with fc_norm (so no final norm), rectangular img_size
    "eva02": ("eva02_tiny_patch14_224", dict(img_size=(56, 42)), [(56, 42)]),
    # RoPE-mixed: learnable per-block rotary frequencies, class-token pool
    "rope_mixed": ("vit_small_patch16_rope_mixed_224", dict(img_size=(32, 48)), [(32, 48)]),
    # relpos without class token, fc_norm (no final norm)
    "relpos_fcnorm": (
        "vit_relpos_small_patch16_224",
        dict(embed_dim=48, num_heads=3, img_size=(48, 64)),
        [(48, 64)],
    ),
    # relpos with class token, final norm, one relative-position MLP shared by all blocks
    "relpos_cls_shared": (
        "vit_relpos_medium_patch16_cls_224",
        dict(embed_dim=48, num_heads=3, img_size=(64, 48), rel_pos_dim=24, shared_rel_pos=True),
        [(64, 48)],
    ),
    # ViT: class + distillation tokens (DeiT)
    "vit_distilled": ("deit_tiny_distilled_patch16_224", dict(img_size=(32, 48)), [(32, 48)]),
    # ViT: 4 register tokens, avg pool + fc_norm, dynamic size with padding (56 // 16 rounds up)
    "vit_reg_gap_dynpad": (
        "vit_base_patch16_reg4_gap_256",
        dict(
            embed_dim=48,
            num_heads=3,
            img_size=(48, 32),
            dynamic_img_size=True,
            dynamic_img_pad=True,
        ),
        [(40, 56)],
    ),
    # hybrid ViT: ResNetV2 stem with BatchNorm statistics, patch 8 on its stride-16 map
    "vit_hybrid": ("vit_tiny_r_s16_p8_224", dict(img_size=(64, 32)), [(64, 32)]),
    # NaFlexVit on images: MAP head over the patches, 1 register token
    "naflex_map": ("naflexvit_base_patch16_map", dict(embed_dim=48, num_heads=3), [(48, 64)]),
}


@functools.cache
def _pair(config: str):
    """(timm model, Flax model, Flax variables) with the same random weights."""
    name, kw, _ = MODELS[config]
    tm = timm.create_model(name, pretrained=False, depth=3, num_classes=5, drop_path_rate=0.1, **kw)
    model, variables = vitjax.from_timm(randomize_(tm, std=0.1))
    return tm, model, variables


def _images(size: tuple[int, int], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((2, *size, 3)).astype(np.float32)


def _torch_kwargs(kw: dict[str, Any], num_prefix_tokens: int) -> dict[str, Any]:
    """The same call for timm: vitjax's "NHWC" is timm's "NCHW" (the default of both).

    Without prefix tokens vitjax ignores return_prefix_tokens, as timm's VisionTransformer does;
    timm's RelPos and Eva fail there instead, so they are asked without it.
    """
    kw = dict(kw)
    if kw.get("output_fmt", "NHWC") == "NHWC":
        kw["output_fmt"] = "NCHW"
    if not num_prefix_tokens:
        kw.pop("return_prefix_tokens", None)
    return kw


def _compare(got: Any, want: Any, name: str) -> None:
    """Same nesting (tuples and lists), then every tensor; 4-D timm tensors are NCHW."""
    if isinstance(want, dict):
        assert sorted(got) == sorted(want), f"{name}: keys {sorted(got)} != {sorted(want)}"
        for k in want:
            _compare(got[k], want[k], f"{name}.{k}")
        return
    if isinstance(want, (tuple, list)):
        assert type(got) is type(want), f"{name}: {type(got).__name__} != {type(want).__name__}"
        assert len(got) == len(want), f"{name}: {len(got)} entries, timm {len(want)}"
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            _compare(g, w, f"{name}[{i}]")
        return
    want = want.detach().numpy()
    if want.ndim == 4:
        want = want.transpose(0, 2, 3, 1)  # timm NCHW -> NHWC
    assert_close(got, want, name, dtype="float32_model")


# indices by name: int (last n), lists (negative, unsorted, one block), None (all)
CASES: dict[str, dict[str, Any]] = {
    "all": dict(),
    "last2_norm": dict(indices=2, norm=True),
    "neg_list_nlc_prefix": dict(indices=[0, -1], output_fmt="NLC", return_prefix_tokens=True),
    "unsorted_prefix_norm_only": dict(
        indices=[2, -3], return_prefix_tokens=True, norm=True, intermediates_only=True
    ),
    "stop_early_norm": dict(indices=[-2], stop_early=True, norm=True),
    "dict_prefix": dict(indices=[0, -1], output_dict=True, return_prefix_tokens=True),
    "stop_early_nlc_only": dict(
        indices=1, stop_early=True, output_fmt="NLC", intermediates_only=True
    ),  # fmt: skip
}
RUNS = [
    (config, size, case)
    for config, (_, _, sizes) in MODELS.items()
    for size in sizes
    for case in CASES
    if case != "dict_prefix" or config.startswith(("vit_", "naflex_"))  # timm's output_dict
]


@pytest.mark.parametrize(
    "config,size,case", RUNS, ids=[f"{c}-{h}x{w}-{k}" for c, (h, w), k in RUNS]
)
def test_forward_intermediates_matches_torch(config, size, case):
    tm, model, v = _pair(config)
    x = _images(size, seed=1)
    kw = CASES[case]
    with torch.no_grad():
        want = tm.forward_intermediates(nchw(x), **_torch_kwargs(kw, tm.num_prefix_tokens))
    got = model.apply(v, jnp.asarray(x), method="forward_intermediates", **kw)
    _compare(got, want, f"forward_intermediates[{config},{size[0]}x{size[1]},{case}]")


def test_forward_intermediates_jits_with_static_options():
    tm, model, v = _pair("dinov3")
    x = _images((64, 32), seed=2)  # another grid than the twin was built at (dynamic size)
    kw = dict(indices=[-1, 0], norm=True, return_prefix_tokens=True)
    fn = jax.jit(partial(model.apply, method="forward_intermediates", **kw))
    with torch.no_grad():
        want = tm.forward_intermediates(nchw(x), **kw)
    _compare(fn(v, jnp.asarray(x)), want, "forward_intermediates[dinov3,64x32,jit]")


def test_return_prefix_tokens_without_prefix_tokens_is_ignored():
    """timm's VisionTransformer behaviour (timm's RelPos and Eva fail with a NameError there)."""
    _, model, v = _pair("relpos_fcnorm")
    x = jnp.asarray(_images((48, 64)))
    fi = partial(model.apply, v, x, indices=[0, 2], method="forward_intermediates")
    plain, with_prefix = fi(), fi(return_prefix_tokens=True)
    leaves = jax.tree_util.tree_leaves
    for a, b in zip(leaves(plain), leaves(with_prefix), strict=True):
        np.testing.assert_array_equal(a, b)
    assert len(with_prefix[1]) == 2 and with_prefix[1][0].shape == (2, 3, 4, 48)


@pytest.mark.parametrize("config", ["dinov3", "relpos_cls_shared"])
def test_forward_intermediates_refuses_bad_arguments(config):
    _, model, v = _pair(config)
    x = jnp.asarray(_images(MODELS[config][2][0]))
    fi = partial(model.apply, v, x, method="forward_intermediates")
    with pytest.raises(ValueError, match="NHWC"):
        fi(output_fmt="NCHW")
    with pytest.raises(ValueError, match="out of range"):
        fi(indices=[3])


# --- pruning ------------------------------------------------------------------------------------

# config -> (indices, prune_norm, prune_head)
PRUNES = {
    "dinov3": ([-2], True, True),  # final norm and head go
    "eva02": ([0], False, True),  # fc_norm (no final norm) and head go
    "rope_mixed": ([1, 0], False, False),  # head kept; per-block rope freqs cut to 2 blocks
    "relpos_fcnorm": ([0, 1], False, True),  # fc_norm goes with the head
    "relpos_cls_shared": ([1], True, False),  # final norm goes, class-token head kept
    "vit_distilled": ([1, 0], False, True),
    "vit_reg_gap_dynpad": ([0], True, False),
    "vit_hybrid": ([-2], True, True),
    "naflex_map": ([0], False, True),
}


def _torch_pruned(config: str):
    tm = copy.deepcopy(_pair(config)[0])
    indices, prune_norm, prune_head = PRUNES[config]
    return tm, tm.prune_intermediate_layers(indices, prune_norm, prune_head)


@pytest.mark.parametrize("config", list(PRUNES))
def test_pruned_model_matches_torch(config):
    tm, model, v = _pair(config)
    indices, prune_norm, prune_head = PRUNES[config]
    t_pruned, t_take = _torch_pruned(config)
    pruned, take = model.prune_intermediate_layers(indices, prune_norm, prune_head)
    assert take == t_take
    pv = prune_variables(v, pruned)
    x = _images(MODELS[config][2][0], seed=3)
    shapes = jax.eval_shape(pruned.init, jax.random.PRNGKey(0), jnp.asarray(x))
    assert jax.tree_util.tree_map(np.shape, pv) == jax.tree_util.tree_map(np.shape, shapes)
    # the cut variables are exactly timm's pruned state_dict (per-block tables cut to the blocks)
    sd, want = convert.flax_to_torch_variables(pv), torch_state(t_pruned)
    assert sorted(sd) == sorted(want)
    for k, a in sd.items():
        w = want[k][tuple(slice(0, n) for n in a.shape)]
        assert_close(a, w, f"pruned[{config}].{k}", dtype="exact")
    # each kept block keeps its drop-path rate
    bound = pruned.bind(pv)
    for i, blk in enumerate(t_pruned.blocks):
        rate = getattr(blk.drop_path1, "drop_prob", 0.0)  # Identity at rate 0
        assert np.isclose(bound.blocks[i].drop_path, rate, rtol=1e-6, atol=0), (i, rate)
    kw = dict(indices=take, norm=True, return_prefix_tokens=True)
    with torch.no_grad():
        t_feats = t_pruned.forward_intermediates(nchw(x), **_torch_kwargs(kw, tm.num_prefix_tokens))
        t_out = t_pruned(nchw(x))
    got = pruned.apply(pv, jnp.asarray(x), method="forward_intermediates", **kw)
    _compare(got, t_feats, f"pruned.forward_intermediates[{config}]")
    _compare(pruned.apply(pv, jnp.asarray(x)), t_out, f"pruned.forward[{config}]")


def test_prune_variables_names_what_is_missing():
    _, model, v = _pair("eva02")
    pruned, _ = model.prune_intermediate_layers([0])
    with pytest.raises(ValueError, match="blocks_1"):
        prune_variables(prune_variables(v, pruned), model)
