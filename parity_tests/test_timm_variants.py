"""VARIANTS equal timm: each row is config_from_timm(timm.create_model(name)); refusals by name."""

from __future__ import annotations

import warnings

import pytest
import timm
import torch

import vitjax
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
    "test_vit3", "test_vit4",
]  # fmt: skip

# timm names built on classes or parts vitjax does not mirror, and the part the refusal names.
REFUSED = {
    "vit_base_r50_s16_224": "HybridEmbed",
    "vit_base_mci_224": "HybridEmbed",
    "vit_small_patch16_18x2_224": "ParallelThingsBlock",
    "vit_base_patch16_rpn_224": "ResPostBlock",
    "vit_base_patch16_xp_224": "ParallelScalingBlock",
    "vit_dwee_patch16_reg1_gap_256": "DiffAttention",
    "vit_dpwee_patch16_reg1_gap_256": "DiffParallelScalingBlock",
    "vit_giant_patch14_dinov2": "SwiGLU",
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
