"""JAX .npz checkpoints (vit_jax and big_vision layouts), grounded in timm's own _load_weights.

Each file is written from a timm model's weights by vitjax.npz.save_npz, then read back by timm's
model.load_pretrained(npz) (which must reproduce the weights exactly: the file is what timm reads)
and by vitjax.create_model(checkpoint_path=npz), whose logits must match timm's.
"""

from __future__ import annotations

import numpy as np
import pytest
import timm
from devtools.timm_verify import flax_forward, images, make_timm, timm_forward

from parity_tests.parity import assert_close
from vitjax.factory import create_model
from vitjax.weights.files import CheckpointError
from vitjax.weights.npz import load_npz, save_npz, to_npz_arrays

# (timm name, layout, stacked, prefix, kwargs)
NPZ_CASES = [
    ("vit_tiny_patch16_224", "vit_jax", False, "", {}),
    ("vit_tiny_patch16_224", "vit_jax", False, "opt/target/", {}),
    ("vit_base_patch16_siglip_224", "big_vision", True, "params/img/", dict(embed_dim=96)),
    ("vit_base_patch16_siglip_gap_224", "big_vision", False, "params/", dict(embed_dim=96)),
    ("vit_base_patch16_gap_224", "big_vision", True, "", dict(embed_dim=96)),
]


def _state(module) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy() for k, v in module.state_dict().items()}


@pytest.mark.parametrize(
    "name,layout,stacked,prefix,kwargs",
    NPZ_CASES,
    ids=[f"{n}-{lay}{'-stacked' if s else ''}-{p or 'root'}" for n, lay, s, p, _ in NPZ_CASES],
)
def test_npz_checkpoint_matches_torch(name, layout, stacked, prefix, kwargs, tmp_path):
    kwargs = dict(depth=2, **kwargs)
    module = make_timm(name, **kwargs)
    heads = module.blocks[0].attn.num_heads
    path = save_npz(tmp_path / "w.npz", _state(module), heads, layout, stacked, prefix)
    twin = timm.create_model(name, pretrained=False, **kwargs).eval()
    twin.load_pretrained(str(path))  # timm's _load_weights
    for k, v in _state(module).items():
        assert_close(twin.state_dict()[k], v, f"timm reads {k}", dtype="exact")
    model, variables = create_model(name, checkpoint_path=path, **kwargs)
    x = images(module)
    want, want_pre = timm_forward(module, x)
    got, got_pre = flax_forward(model, variables, x)
    assert_close(got, want, f"{name} logits from npz")
    assert_close(got_pre, want_pre, f"{name} pre_logits from npz")


def test_npz_reader_inverts_writer_exactly(tmp_path):
    module = make_timm("vit_base_patch16_siglip_224", depth=2, embed_dim=96)
    sd = _state(module)
    for layout, stacked in (("vit_jax", False), ("big_vision", False), ("big_vision", True)):
        path = save_npz(tmp_path / f"{layout}{stacked}.npz", sd, 12, layout, stacked)
        back = load_npz(path)
        assert sorted(back) == sorted(sd)
        for k in sd:
            assert_close(back[k], sd[k], f"{layout} {k}", dtype="exact")


def test_npz_img_size_resamples_bilinear_like_timm(tmp_path):
    module = make_timm("vit_tiny_patch16_224", depth=2)
    path = save_npz(tmp_path / "w.npz", _state(module), 3)
    twin = timm.create_model(
        "vit_tiny_patch16_224",
        pretrained=True,
        depth=2,
        img_size=288,
        pretrained_cfg_overlay=dict(file=str(path), custom_load=True),
    ).eval()
    model, variables = create_model(
        "vit_tiny_patch16_224", checkpoint_path=path, depth=2, img_size=288
    )
    assert_close(variables["params"]["pos_embed"], twin.pos_embed, "pos_embed 14->18 bilinear")
    x = images(twin)
    assert_close(flax_forward(model, variables, x)[0], timm_forward(twin, x)[0], "logits @288")


def test_npz_errors_name_the_entries(tmp_path):
    module = make_timm("vit_tiny_patch16_224", depth=1)
    arrays = to_npz_arrays(_state(module), 3)
    np.savez(tmp_path / "extra.npz", **arrays, **{"Transformer/mystery/kernel": np.zeros(3)})
    with pytest.raises(CheckpointError, match="Transformer/mystery/kernel"):
        load_npz(tmp_path / "extra.npz")
    np.savez(tmp_path / "foreign.npz", weights=np.zeros(3))
    with pytest.raises(CheckpointError, match="no embedding/kernel"):
        load_npz(tmp_path / "foreign.npz")
    (tmp_path / "broken.npz").write_bytes(b"not a zip")
    with pytest.raises(CheckpointError, match="broken.npz"):
        load_npz(tmp_path / "broken.npz")
    del arrays["Transformer/encoderblock_0/LayerNorm_2/scale"]
    np.savez(tmp_path / "missing.npz", **arrays)
    with pytest.raises(CheckpointError, match="LayerNorm_2/scale"):
        load_npz(tmp_path / "missing.npz")


def test_npz_writer_refuses_what_the_layout_cannot_hold():
    module = make_timm("vit_small_patch14_reg4_dinov2", depth=1, img_size=56)
    with pytest.raises(ValueError, match="reg_token"):
        to_npz_arrays(_state(module), 6)
