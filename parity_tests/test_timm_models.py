"""timm model families through the real file path: timm saves, vitjax loads, logits agree.

Each timm model is built with pretrained=False (depth 2 unless noted: every feature kept), given
random non-trivial weights, saved in one of timm's formats, loaded with vitjax.create_model(name,
checkpoint_path=...), and compared on logits and pre-logits. vittorch loads the same state_dict
with strict=True and is compared too.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from devtools.timm_verify import check_name, images

import vittorch
from parity_tests.parity import assert_close
from vitjax.registry import get_config

# (timm name, file format, create_model kwargs); depth=2 keeps every feature of the family.
CASES = [
    ("vit_tiny_patch16_224", "safetensors", dict(depth=2)),
    ("vit_small_patch32_384", "npz_vit_jax", dict(depth=2)),
    ("vit_small_patch8_224", "pth", dict(depth=2)),
    ("vit_base_patch16_224", "pth", dict(depth=2)),
    ("vit_large_patch16_224", "safetensors", dict(depth=2)),
    ("vit_medium_patch16_gap_256", "safetensors", dict(depth=2)),
    ("vit_betwixt_patch16_reg4_gap_256", "pth", dict(depth=2)),
    ("vit_base_patch32_clip_224", "safetensors", dict(depth=2)),
    ("vit_base_patch16_clip_quickgelu_224", "pth", dict(depth=2)),
    ("vit_base_patch16_siglip_224", "npz_big_vision", dict(depth=2)),
    ("vit_so400m_patch14_siglip_224", "safetensors", dict(depth=2)),
    ("vit_small_patch14_dinov2", "safetensors", dict(depth=2)),
    ("vit_small_patch14_reg4_dinov2", "pth", dict(depth=2)),
    ("deit_tiny_patch16_224", "npz_vit_jax", dict(depth=2)),
    ("deit_tiny_distilled_patch16_224", "safetensors", dict(depth=2)),
    ("deit3_small_patch16_224", "pth", dict(depth=2)),
    ("test_vit", "safetensors", {}),
    ("test_vit2", "pth", {}),
    ("test_vit3", "safetensors", {}),
    ("test_vit4", "safetensors", {}),
]


def _vittorch_logits(name: str, kwargs: dict, timm_state: dict, x: np.ndarray) -> np.ndarray:
    net = vittorch.VisionTransformer(get_config(name, **kwargs))
    net.load_state_dict(timm_state, strict=True)
    with torch.no_grad():
        return net.eval()(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()


@pytest.mark.parametrize("name,fmt,kwargs", CASES, ids=[f"{n}-{f}" for n, f, _ in CASES])
def test_timm_model_matches_torch(name, fmt, kwargs, tmp_path):
    r = check_name(name, fmt, workdir=tmp_path, **kwargs)
    assert_close(r["jax"]["logits"], r["timm"]["logits"], f"{name} logits ({fmt})")
    assert_close(r["jax"]["pre_logits"], r["timm"]["pre_logits"], f"{name} pre_logits ({fmt})")


@pytest.mark.parametrize("name,fmt,kwargs", CASES[::4], ids=[n for n, _, _ in CASES[::4]])
def test_vittorch_model_matches_torch(name, fmt, kwargs):
    from devtools.timm_verify import make_timm, timm_forward

    module = make_timm(name, **kwargs)
    x = images(module)
    want, _ = timm_forward(module, x)
    got = _vittorch_logits(name, kwargs, module.state_dict(), x)
    assert_close(got, want, f"vittorch {name} logits")


@pytest.mark.slow
def test_full_depth_vit_base_patch16_224_matches_torch(tmp_path):
    r = check_name("vit_base_patch16_224", "safetensors", workdir=tmp_path)
    assert_close(
        r["jax"]["logits"],
        r["timm"]["logits"],
        "vit_base_patch16_224 logits",
        dtype="float32_model",
    )
    assert_close(
        r["jax"]["pre_logits"],
        r["timm"]["pre_logits"],
        "vit_base_patch16_224 pre_logits",
        dtype="float32_model",
    )
