"""timm's checkpoint conventions, applied as timm applies them; errors name keys and shapes.

Foreign layouts (OpenAI CLIP, Meta DINOv2 with and without registers, DeiT-3 gamma names, OpenCLIP
timm trunks, DDP prefixes and EMA containers) are written from a timm model's weights; timm's own
checkpoint_filter_fn / load_checkpoint maps each back to the model (grounding the layout), and
vitjax.create_model(checkpoint_path=...) must then give timm's logits.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from devtools.timm_verify import flax_forward, images, make_timm, timm_forward
from safetensors.torch import save_file
from timm.models import load_checkpoint
from timm.models.vision_transformer import checkpoint_filter_fn

from parity_tests.parity import assert_close
from vitjax.factory import create_model
from vitjax.models.vit_timm import UnsupportedModelError
from vitjax.weights.convert import WeightMismatchError
from vitjax.weights.files import CheckpointError

CLIP_SWAPS = [
    ("patch_embed.proj", "conv1"), ("pos_embed", "positional_embedding"),
    ("blocks.", "transformer.resblocks."), ("norm_pre", "ln_pre"), ("norm1", "ln_1"),
    ("norm2", "ln_2"), ("attn.qkv.", "attn.in_proj_"), ("attn.proj", "attn.out_proj"),
    ("mlp.fc1", "mlp.c_fc"), ("mlp.fc2", "mlp.c_proj"),
]  # fmt: skip


def _sd(module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def to_openai_clip(sd: dict[str, torch.Tensor], prefix: str = "visual.") -> dict:
    """timm CLIP tower -> OpenAI CLIP keys (the inverse of timm's _convert_openai_clip)."""
    out = {"token_embedding.weight": torch.zeros(4, 3), "logit_scale": torch.ones(())}
    for k, v in sd.items():
        if k == "cls_token":
            k, v = "class_embedding", v[0, 0]
        elif k == "pos_embed":
            v = v[0]
        elif k == "norm.weight" or k == "norm.bias":
            k = k.replace("norm", "ln_post")
        elif k == "head.weight":
            k, v = "proj", v.T
        elif k == "head.bias":
            continue
        for a, b in CLIP_SWAPS:
            k = k.replace(a, b)
        out[prefix + k] = v.contiguous()
    return out


def to_meta_dinov2(sd: dict[str, torch.Tensor], registers: bool) -> dict:
    """timm DINOv2 -> Meta layout (mask_token; registers apart; cls position in pos_embed)."""
    out = dict(sd, mask_token=torch.zeros(1, sd["cls_token"].shape[-1]))
    if registers:
        pos0 = torch.randn(1, 1, sd["pos_embed"].shape[-1]) * 0.2
        out["register_tokens"] = out.pop("reg_token")
        out["cls_token"] = sd["cls_token"] - pos0
        out["pos_embed"] = torch.cat([pos0, sd["pos_embed"]], dim=1)
    return out


def _check_against(module, name, path, tmp_label, **kwargs) -> None:
    model, variables = create_model(name, checkpoint_path=path, **kwargs)
    x = images(module)
    assert_close(flax_forward(model, variables, x)[0], timm_forward(module, x)[0], tmp_label)


def _grounded(foreign: dict, module, filter_kwargs=None) -> None:
    """timm's checkpoint_filter_fn maps the foreign layout back onto the model exactly."""
    back = checkpoint_filter_fn(dict(foreign), module, **(filter_kwargs or {}))
    assert sorted(back) == sorted(module.state_dict())
    for k, v in module.state_dict().items():
        assert_close(back[k], v, f"timm filter {k}")


def test_openai_clip_layout_matches_torch(tmp_path):
    module = make_timm("vit_base_patch16_clip_quickgelu_224", depth=2, embed_dim=96)
    with torch.no_grad():
        module.head.bias.zero_()  # OpenAI's projection has no bias
    foreign = to_openai_clip(_sd(module))
    _grounded(foreign, module)
    torch.save(foreign, tmp_path / "clip.pt")
    _check_against(
        module,
        "vit_base_patch16_clip_quickgelu_224",
        tmp_path / "clip.pt",
        "OpenAI CLIP layout logits",
        depth=2,
        embed_dim=96,
    )


@pytest.mark.parametrize("registers", [False, True], ids=["dinov2", "dinov2_reg4"])
def test_meta_dinov2_layout_matches_torch(registers, tmp_path):
    name = "vit_small_patch14_reg4_dinov2" if registers else "vit_small_patch14_dinov2"
    module = make_timm(name, depth=2, img_size=98)
    foreign = to_meta_dinov2(_sd(module), registers)
    _grounded(foreign, module)
    save_file({k: v.contiguous() for k, v in foreign.items()}, tmp_path / "dino.safetensors")
    _check_against(
        module,
        name,
        tmp_path / "dino.safetensors",
        f"Meta {name} layout logits",
        depth=2,
        img_size=98,
    )


def test_deit3_gamma_names_match_torch(tmp_path):
    module = make_timm("deit3_small_patch16_224", depth=2)
    foreign = {
        k.replace("ls1.gamma", "gamma_1").replace("ls2.gamma", "gamma_2"): v
        for k, v in _sd(module).items()
    }
    assert "blocks.0.gamma_1" in foreign
    _grounded(foreign, module, dict(adapt_layer_scale=True))
    torch.save({"model": foreign}, tmp_path / "deit3.pth")
    _check_against(
        module, "deit3_small_patch16_224", tmp_path / "deit3.pth", "DeiT-3 logits", depth=2
    )


def test_open_clip_timm_trunk_matches_torch(tmp_path):
    module = make_timm("vit_base_patch16_siglip_gap_224", depth=2, embed_dim=96, num_classes=8)
    with torch.no_grad():
        module.head.bias.zero_()
    sd = _sd(module)
    foreign = {f"visual.trunk.{k}": v for k, v in sd.items() if not k.startswith("head.")}
    foreign["visual.head.proj.weight"] = sd["head.weight"]
    foreign["text.token_embedding.weight"] = torch.zeros(3, 2)
    _grounded(foreign, module)
    save_file(foreign, tmp_path / "open_clip.safetensors")
    _check_against(
        module,
        "vit_base_patch16_siglip_gap_224",
        tmp_path / "open_clip.safetensors",
        "OpenCLIP trunk logits",
        depth=2,
        embed_dim=96,
        num_classes=8,
    )


def test_ema_container_ddp_prefix_and_pre_logits_like_timm(tmp_path):
    module = make_timm("vit_tiny_patch16_224", depth=2)
    ema = {f"module.{k}": v for k, v in _sd(module).items()}
    ema["module.pre_logits.fc.weight"] = torch.zeros(2, 2)
    stale = {k: torch.zeros_like(v) for k, v in _sd(module).items()}
    torch.save({"state_dict": stale, "state_dict_ema": ema, "epoch": 7}, tmp_path / "train.pth")
    twin = make_timm("vit_tiny_patch16_224", seed=1, depth=2)
    load_checkpoint(twin, str(tmp_path / "train.pth"), strict=False)  # timm picks the EMA weights
    x = images(module)
    assert_close(timm_forward(twin, x)[0], timm_forward(module, x)[0], "timm reads EMA")
    _check_against(module, "vit_tiny_patch16_224", tmp_path / "train.pth", "EMA logits", depth=2)


def test_linear_patch_embedding_is_reshaped_like_timm(tmp_path):
    module = make_timm("vit_tiny_patch16_224", depth=1)
    sd = _sd(module)
    sd["patch_embed.proj.weight"] = sd["patch_embed.proj.weight"].reshape(192, -1)
    _grounded(sd, module)
    save_file(sd, tmp_path / "old.safetensors")
    _check_against(
        module, "vit_tiny_patch16_224", tmp_path / "old.safetensors", "old ViT logits", depth=1
    )


def test_wrong_model_name_names_keys_and_shapes(tmp_path):
    module = make_timm("vit_small_patch16_224", depth=2)
    save_file(_sd(module), tmp_path / "small.safetensors")
    with pytest.raises(WeightMismatchError) as e:
        create_model("vit_tiny_patch16_224", checkpoint_path=tmp_path / "small.safetensors")
    msg = str(e.value)
    assert "small.safetensors does not fit the model" in msg
    assert "wrong shape for cls_token: expected (1, 1, 192), found (1, 1, 384)" in msg
    assert "missing key blocks.11.norm1.weight" in msg
    assert "the checkpoint holds: embed_dim=384, patch_size=(16, 16), depth=2" in msg


def test_unreadable_and_foreign_files_are_named(tmp_path):
    (tmp_path / "cut.safetensors").write_bytes(b"\x10\x00\x00")
    with pytest.raises(CheckpointError, match="cut.safetensors"):
        create_model("vit_tiny_patch16_224", checkpoint_path=tmp_path / "cut.safetensors")
    save_file(
        {"radio_model.model.patch_generator.embedder.weight": torch.zeros(4, 48)},
        tmp_path / "radio.safetensors",
    )
    with pytest.raises(UnsupportedModelError, match="RADIO"):
        create_model("vit_base_patch16_radio_v3", checkpoint_path=tmp_path / "radio.safetensors")


def test_filter_keeps_plain_timm_state_dicts_unchanged():
    from vitjax.models.vit_timm import filter_state_dict

    sd = {k: v.numpy() for k, v in _sd(make_timm("test_vit3")).items()}
    out = filter_state_dict(sd)
    assert sorted(out) == sorted(sd)
    assert all(np.array_equal(out[k], sd[k]) for k in sd)
