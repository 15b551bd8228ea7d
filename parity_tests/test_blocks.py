"""The vit family's alternative blocks and DiffAttention against timm's, module by module."""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from timm.layers import DiffAttention as TorchDiffAttention
from timm.layers import GluMlp as TorchGluMlp
from timm.layers import LayerNorm as TorchLayerNorm
from timm.layers import Mlp as TorchMlp
from timm.layers import RmsNorm as TorchRmsNorm
from timm.layers import SwiGLU as TorchSwiGLU
from timm.layers import SwiGLUPacked as TorchSwiGLUPacked
from timm.models import vision_transformer as tv
from torch import nn as tnn

from parity_tests.helpers import flax_twin, randomize_
from parity_tests.parity import assert_close
from vitjax.layers import blocks

TORCH_NORMS = {"layernorm": TorchLayerNorm, "rmsnorm": TorchRmsNorm}
TORCH_ACTS = {"gelu": tnn.GELU, "silu": tnn.SiLU, "relu": tnn.ReLU}
TORCH_MLPS = {
    "mlp": TorchMlp,
    "glu": TorchGluMlp,
    "swiglu": TorchSwiGLU,
    "swiglu_packed": TorchSwiGLUPacked,
}
TORCH_ATTNS = {"attn": "attn", "diff": "diff"}  # timm's _create_attn takes these strings
TORCH_BLOCKS = {
    "ResPostBlock": tv.ResPostBlock,
    "ParallelScalingBlock": tv.ParallelScalingBlock,
    "DiffParallelScalingBlock": tv.DiffParallelScalingBlock,
    "ParallelThingsBlock": tv.ParallelThingsBlock,
}


def _torch_kwargs(kw: dict) -> dict:
    """The Flax block's keyword arguments as timm's constructor takes them."""
    kw = dict(kw)
    kw.pop("attn_impl", None)
    eps = kw.pop("norm_eps", 1e-6)
    if "norm_layer" in kw:
        kw["norm_layer"] = partial(TORCH_NORMS[kw["norm_layer"]], eps=eps)
    if "act_layer" in kw:
        kw["act_layer"] = TORCH_ACTS[kw["act_layer"]]
    if "mlp_layer" in kw:
        kw["mlp_layer"] = TORCH_MLPS[kw["mlp_layer"]]
    if "attn_layer" in kw:
        kw["attn_layer"] = TORCH_ATTNS[kw["attn_layer"]]
    return kw


def _compare(flax_module, torch_module, shape: tuple[int, int, int], name: str) -> None:
    randomize_(torch_module, seed=1)
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    variables = flax_twin(flax_module, torch_module, jnp.asarray(x))
    got = jax.jit(flax_module.apply)(variables, jnp.asarray(x))
    with torch.no_grad():
        want = torch_module(torch.from_numpy(x))
    assert_close(got, want, name)


DIFF_ATTN = {
    "ln_qkvbias": dict(dim=36, num_heads=3, qkv_bias=True, norm_layer="layernorm"),
    "rms_qknorm_scalenorm": dict(
        dim=36, num_heads=3, qk_norm=True, scale_norm=True, norm_layer="rmsnorm", depth=3
    ),
    "dual_lambda_noprojbias": dict(
        dim=20, num_heads=2, dual_lambda=True, proj_bias=False, norm_layer="rmsnorm", depth=1
    ),
    "xla_impl": dict(dim=24, num_heads=2, qk_norm=True, norm_layer="layernorm", attn_impl="xla"),
}


@pytest.mark.parametrize("config", list(DIFF_ATTN))
def test_diff_attention_matches_torch(config):
    kw = DIFF_ATTN[config]
    tm = TorchDiffAttention(**_torch_kwargs(kw))
    _compare(blocks.DiffAttention(**kw), tm, (2, 7, kw["dim"]), f"DiffAttention[{config}]")


BLOCKS = {
    "respost_ls_qkvbias": (
        "ResPostBlock",
        dict(dim=36, num_heads=3, mlp_ratio=2.5, qkv_bias=True, init_values=1e-5),
    ),
    "respost_diff_qknorm_nobias": (
        "ResPostBlock",
        dict(
            dim=36,
            num_heads=3,
            qk_norm=True,
            proj_bias=False,
            attn_layer="diff",
            depth=2,
            norm_layer="rmsnorm",
        ),
    ),
    "respost_swiglu_subln": (
        "ResPostBlock",
        dict(dim=20, num_heads=4, mlp_layer="swiglu", act_layer="silu", scale_mlp_norm=True),
    ),
    "parallel_scaling_rms_qknorm": (
        "ParallelScalingBlock",
        dict(dim=36, num_heads=3, mlp_ratio=3.0, qk_norm=True, norm_layer="rmsnorm"),
    ),
    "parallel_scaling_qkvbias_ls": (
        "ParallelScalingBlock",
        dict(dim=30, num_heads=5, qkv_bias=True, init_values=1e-5, proj_bias=False),
    ),
    "parallel_scaling_fused_out": (
        "ParallelScalingBlock",
        dict(dim=36, num_heads=3, fuse_out_proj=True, init_values=0.5, act_layer="silu"),
    ),
    "diff_parallel_ls_qknorm": (
        "DiffParallelScalingBlock",
        dict(dim=36, num_heads=3, mlp_ratio=5.0, init_values=1e-5, qk_norm=True, depth=4),
    ),
    "diff_parallel_dual_qkvbias": (
        "DiffParallelScalingBlock",
        dict(dim=24, num_heads=2, qkv_bias=True, dual_lambda=True, norm_layer="rmsnorm"),
    ),
    "things_2x_ls": (
        "ParallelThingsBlock",
        dict(dim=36, num_heads=3, init_values=1e-5, qkv_bias=True),
    ),
    "things_3x_diff_qknorm": (
        "ParallelThingsBlock",
        dict(
            dim=36,
            num_heads=3,
            num_parallel=3,
            qk_norm=True,
            attn_layer="diff",
            depth=5,
            proj_bias=False,
        ),
    ),
    "things_2x_glu_xla": (
        "ParallelThingsBlock",
        dict(dim=20, num_heads=2, mlp_layer="swiglu_packed", act_layer="silu", attn_impl="xla"),
    ),
}


@pytest.mark.parametrize("config", list(BLOCKS))
def test_block_matches_torch(config):
    block_fn, kw = BLOCKS[config]
    tm = TORCH_BLOCKS[block_fn](**_torch_kwargs(kw))
    fm = getattr(blocks, block_fn)(**kw)
    _compare(fm, tm, (3, 5, kw["dim"]), f"{block_fn}[{config}]")


def test_parallel_scaling_in_proj_split_matches_torch():
    """in_proj's rows are (mlp hidden, q, k, v) in that order, as timm's in_split."""
    tm = tv.ParallelScalingBlock(dim=12, num_heads=2, mlp_ratio=2.0)
    assert tm.in_split == [24, 12, 12, 12]
    fm = blocks.ParallelScalingBlock(dim=12, num_heads=2, mlp_ratio=2.0)
    x = jnp.zeros((1, 3, 12))
    shapes = jax.eval_shape(fm.init, jax.random.PRNGKey(0), x)["params"]
    assert shapes["in_proj"]["kernel"].shape == (12, 24 + 36)
    assert shapes["mlp_bias"].shape == (24,)
    _compare(fm, tm, (2, 3, 12), "ParallelScalingBlock[in_split]")


@pytest.mark.parametrize("block_fn", ["ParallelScalingBlock", "DiffParallelScalingBlock"])
def test_block_param_names_match_torch(block_fn):
    """The Flax tree, flattened with timm's rules, has exactly timm's state_dict keys."""
    from vitjax.weights import convert

    kw = dict(dim=24, num_heads=2, init_values=1e-5)
    tm = TORCH_BLOCKS[block_fn](**_torch_kwargs(kw))
    fm = getattr(blocks, block_fn)(**kw)
    shapes = jax.eval_shape(fm.init, jax.random.PRNGKey(0), jnp.zeros((1, 3, 24)))["params"]
    params = jax.tree_util.tree_map(lambda s: np.zeros(s.shape, np.float32), shapes)
    assert set(convert.flax_to_torch(params)) == set(tm.state_dict())
