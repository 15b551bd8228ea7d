"""Position-embedding resampling equals timm's: the function, and loading at another img_size.

timm resamples with resample_abs_pos_embed: bicubic + antialias for torch checkpoints, bilinear
without antialias on its .npz path; both are checked up and down, square and rectangular grids,
with 0, 1 and 5 prefix tokens.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
import timm
import torch
from devtools.timm_verify import (
    flax_forward,
    images,
    make_timm,
    save_timm_checkpoint,
    timm_forward,
)
from timm.layers import resample_abs_pos_embed as timm_resample

from parity_tests.parity import assert_close
from vitjax.factory import create_model
from vitjax.models.vit import resample_abs_pos_embed
from vitjax.models.vit_timm import adapt_pos_embed
from vitjax.registry import get_config
from vitjax.weights.convert import WeightMismatchError

GRIDS = {
    "up_square": ((14, 14), (24, 24)),
    "down_square": ((24, 24), (14, 14)),
    "up_rect": ((7, 5), (9, 13)),
    "down_rect": ((16, 12), (5, 9)),
    "mixed_rect": ((16, 16), (15, 17)),
    "down_37_to_16": ((37, 37), (16, 16)),
}
METHODS = {"bicubic_antialias": ("bicubic", True), "bilinear": ("bilinear", False)}


@pytest.mark.parametrize("prefix", [0, 1, 5])
@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("grid", sorted(GRIDS))
def test_resample_abs_pos_embed_matches_torch(grid, method, prefix):
    old, new = GRIDS[grid]
    interpolation, antialias = METHODS[method]
    pe = np.random.default_rng(0).standard_normal((1, prefix + old[0] * old[1], 16))
    pe = pe.astype(np.float32)
    want = timm_resample(
        torch.from_numpy(pe),
        new,
        old,
        num_prefix_tokens=prefix,
        interpolation=interpolation,
        antialias=antialias,
    )
    got = resample_abs_pos_embed(
        jnp.asarray(pe), new, old, prefix, method=interpolation, antialias=antialias
    )
    assert_close(got, want, f"pos_embed {old}->{new} {method} prefix={prefix}")


# (timm name, checkpoint format, new img_size): timm's own pretrained-file loader is the reference.
LOAD_CASES = [
    ("vit_tiny_patch16_224", "safetensors", 384),
    ("vit_tiny_patch16_224", "pth", 128),
    ("vit_tiny_patch16_224", "safetensors", (160, 256)),
    ("deit3_small_patch16_224", "pth", 288),
    ("vit_small_patch14_reg4_dinov2", "safetensors", 224),
    ("vit_base_patch16_siglip_224", "npz_big_vision", 256),
]


@pytest.mark.parametrize(
    "name,fmt,img_size", LOAD_CASES, ids=[f"{n}-{f}-{s}" for n, f, s in LOAD_CASES]
)
def test_load_at_new_img_size_matches_torch(name, fmt, img_size, tmp_path):
    kwargs = dict(depth=2, embed_dim=96) if "siglip" in name else dict(depth=2)
    module = make_timm(name, **kwargs)
    path = save_timm_checkpoint(module, tmp_path / "ckpt", fmt)
    overlay = dict(file=str(path), custom_load=fmt.startswith("npz"))
    twin = timm.create_model(
        name, pretrained=True, pretrained_cfg_overlay=overlay, img_size=img_size, **kwargs
    ).eval()
    model, variables = create_model(name, checkpoint_path=path, img_size=img_size, **kwargs)
    assert_close(variables["params"]["pos_embed"], twin.pos_embed, f"{name} pos_embed")
    x = images(twin)
    assert_close(
        flax_forward(model, variables, x)[0],
        timm_forward(twin, x)[0],
        f"{name} logits at {img_size}",
    )


def test_checkpoint_at_other_size_without_override_is_an_error(tmp_path):
    module = make_timm("vit_tiny_patch16_224", depth=2, img_size=256)
    path = save_timm_checkpoint(module, tmp_path / "ckpt", "safetensors")
    with pytest.raises(WeightMismatchError, match=r"pos_embed: expected \(1, 197, 192\)"):
        create_model("vit_tiny_patch16_224", checkpoint_path=path, depth=2)


def test_unknown_source_grid_is_an_error():
    pe = np.zeros((1, 1 + 6 * 4, 8), np.float32)
    cfg_like = get_config("test_vit", depth=1)
    with pytest.raises(ValueError, match="cannot infer the position-embedding grid"):
        adapt_pos_embed({"pos_embed": pe}, cfg_like)
