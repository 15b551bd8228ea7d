"""VARIANTS equal timm: each row is config_from_timm(timm.create_model(name)); refusals by name.

The names built on timm's other blocks, attention and MLPs (ResPostBlock, ParallelThingsBlock,
ParallelScalingBlock, DiffAttention, DiffParallelScalingBlock, SwiGLUPacked) convert: config
equality at depth 1 and full depth, and logits through vitjax.from_timm at depth 1.
"""

from __future__ import annotations

import warnings

import pytest
import timm
import torch
from devtools.timm_verify import flax_forward, images, make_timm, max_diff, timm_forward

import vitjax
from parity_tests.parity import assert_close
from vitjax.models.vit_config import VARIANTS
from vitjax.models.vit_timm import UnsupportedModelError, config_from_timm
from vitjax.registry import get_config, list_models

TIMM_NAMES = [n for n in VARIANTS if timm.is_model(n)]

# One full-depth row per size word or explicit size tuple: depth is checked at full depth there.
FULL_DEPTH = [
    "vit_tiny_patch16_224", "vit_xsmall_patch16_clip_224", "vit_wee_patch16_reg1_gap_256",
    "vit_little_patch16_reg1_gap_256", "vit_small_patch16_224", "vit_small_patch16_36x1_224",
    "vit_medium_patch16_gap_256", "vit_mediumd_patch16_reg4_gap_256",
    "vit_betwixt_patch16_reg4_gap_256", "vit_base_patch16_224", "vit_base_patch16_gap_224",
    "vit_so150m2_patch16_reg1_gap_256", "vit_base_patch16_plus_240",
    "vit_so150m_patch16_reg4_gap_256", "vit_large_patch16_224", "vit_so400m_patch14_siglip_224",
    "vit_huge_patch14_224", "vit_giant_patch14_224", "vit_giantopt_patch16_siglip_256",
    "vit_gigantic_patch14_224", "vit_giant_patch16_radio_v3", "test_vit", "test_vit2",
    "test_vit3", "test_vit4", "vit_small_patch16_18x2_224", "vit_base_patch16_18x2_224",
    "vit_base_patch16_rpn_224", "vit_base_patch16_xp_224", "vit_dwee_patch16_reg1_gap_256",
    "vit_pwee_patch16_reg1_gap_256", "vit_dpwee_patch16_reg1_gap_256",
    "vit_giant_patch14_dinov2",
]  # fmt: skip

# The VisionTransformer names whose blocks, attention or MLP are not timm's plain Block.
ALT_BLOCK_NAMES = [
    "vit_base_patch16_rpn_224", "vit_small_patch16_18x2_224", "vit_base_patch16_18x2_224",
    "vit_base_patch16_xp_224", "vit_large_patch14_xp_224", "vit_huge_patch14_xp_224",
    "vit_dwee_patch16_reg1_gap_256", "vit_dlittle_patch16_reg1_gap_256",
    "vit_pwee_patch16_reg1_gap_256", "vit_dpwee_patch16_reg1_gap_256",
    "vit_giant_patch14_dinov2", "vit_giant_patch14_reg4_dinov2", "vit_giant_patch14_reg1_tipsv2",
]  # fmt: skip

# timm names built on classes or parts vitjax does not mirror, and the part the refusal names.
REFUSED = {
    "beit3_base_patch16_224": "scale_attn_norm",
    "vit_relpos_base_patch16_224": "VisionTransformerRelPos",
    "vit_base_patch16_rope_224": "Eva",
    "vit_small_patch16_dinov3": "Eva",
}


def _meta_timm(name: str, **kwargs) -> torch.nn.Module:
    with warnings.catch_warnings(), torch.device("meta"):
        warnings.simplefilter("ignore")
        return timm.create_model(name, pretrained=False, **kwargs)


def test_variants_cover_every_supported_timm_name():
    assert len(TIMM_NAMES) == len(VARIANTS) - 2  # all but the two tutorial architectures
    assert all(n in VARIANTS for n in FULL_DEPTH)


def test_variants_match_timm_at_depth_1():
    bad = {}
    for name in TIMM_NAMES:
        want = config_from_timm(_meta_timm(name, depth=1))
        got = get_config(name, depth=1)
        if got != want:
            bad[name] = {
                k: (v, getattr(want, k))
                for k, v in got.to_dict().items()
                if getattr(want, k) != getattr(got, k)
            }
    assert not bad, f"VARIANTS rows differing from timm: {bad}"


@pytest.mark.parametrize("name", FULL_DEPTH)
def test_variants_match_timm_at_full_depth(name):
    assert get_config(name) == config_from_timm(_meta_timm(name))


@pytest.mark.parametrize("name", ALT_BLOCK_NAMES)
def test_alt_block_model_matches_torch(name):
    """config equality and logits at depth 1 (img_size 112 for the 518 / 448 px giants)."""
    kwargs = dict(depth=1, img_size=112) if "giant" in name else dict(depth=1)
    module = make_timm(name, **kwargs)
    model, variables = vitjax.from_timm(module)
    assert model.cfg == get_config(name, **kwargs)
    assert not model.cfg.is_plain
    x = images(module, batch=1)
    got, want = flax_forward(model, variables, x)[0], timm_forward(module, x)[0]
    assert_close(got, want, f"{name} logits (depth 1)")
    assert max_diff(got, want)["rel"] <= 1e-5, f"{name}: {max_diff(got, want)}"


@pytest.mark.parametrize("name,part", sorted(REFUSED.items()))
def test_from_timm_refuses_by_name(name, part):
    with pytest.raises(UnsupportedModelError, match=part):
        config_from_timm(_meta_timm(name, depth=1))


def test_list_models_and_tags():
    assert "vit_base_patch16_224" in vitjax.list_models("vit_base_*")
    assert list_models("deit3_*") == sorted(n for n in VARIANTS if n.startswith("deit3_"))
    assert get_config("vit_base_patch16_224.augreg2_in21k_ft_in1k") == get_config(
        "vit_base_patch16_224"
    )
    with pytest.raises(ValueError, match="did you mean"):
        get_config("vit_base_patch16_22")
