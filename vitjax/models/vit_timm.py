"""The vit family's timm rules: read a ViTConfig off a live timm model; timm's checkpoint filter.

``config_from_timm`` refuses, by name, every timm part that vitjax does not mirror; a HybridEmbed
(timm's hybrid CNN stems) is read into ``cfg.backbone``. The checkpoint half is pure numpy (plus jax
for resampling): OpenAI-CLIP / DINOv2 / OpenCLIP / MobileCLIP layouts, DeiT-3 gamma renames and
position-embedding resampling, as timm's ``checkpoint_filter_fn`` applies them.
Imports nothing from torch or timm: a module handed in brings them.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np

from vitjax.layers.hybrid_embed import hybrid_embed_from_timm
from vitjax.layers.pos_embed import resample_abs_pos_embed
from vitjax.models.common import (
    UnsupportedModelError,
    act_name,
    check_linear,
    cls_name,
    is_identity,
    norm_kind,
    require,
)
from vitjax.models.vit_config import ViTConfig, mlp_ratio_for
from vitjax.util import to_2tuple
from vitjax.weights.errors import WeightMismatchError

# Other timm ViT classes, and what they have that VisionTransformer does not.
_OTHER_CLASSES = {
    "Eva": "rotary position embeddings, SwiGLU: EVA, DINOv3, PE, RoPE ViTs",
    "VisionTransformerRelPos": "relative-position attention bias",
    "VisionTransformerSAM": "windowed attention, relative positions",
    "NaFlexVit": "variable-resolution NaFlex embedding",
}


TIMM_CLASSES = ("VisionTransformer", "VisionTransformerDistilled")

_SUB_NORM = ("rmsnorm", 1e-5)  # DiffAttention's sub_norm: RmsNorm(2 * head_dim, eps=1e-5)
_MLP_CLASSES = {"Mlp": "mlp", "SwiGLU": "swiglu"}  # GluMlp: "glu" or "swiglu_packed"


def _lambda_init(depth: int) -> float:
    """timm's differential-attention lambda_init at block index depth."""
    return 0.8 - 0.6 * math.exp(-0.3 * depth)


def _act(act: Any, where: str) -> str:
    """Config name of a timm activation module (SiLU / ReLU beside common.act_name's GELUs)."""
    return {"SiLU": "silu", "ReLU": "relu"}.get(cls_name(act)) or act_name(act, where)


def _layer_scale(ls: Any, where: str) -> float | None:
    """init_values of a LayerScale, None for Identity."""
    if is_identity(ls):
        return None
    require(cls_name(ls) == "LayerScale", f"{where} of type {cls_name(ls)}")
    return float(ls.init_values)


def _qk_norm(mod: Any, where: str, norm: tuple[str, float]) -> bool:
    """Whether mod has q_norm / k_norm (both, of the model's norm kind)."""
    has = [not is_identity(getattr(mod, n)) for n in ("q_norm", "k_norm")]
    require(has[0] == has[1], f"{where}: q_norm without k_norm (or the reverse)")
    for n in ("q_norm", "k_norm") if has[0] else ():
        require(norm_kind(getattr(mod, n), f"{where}.{n}") == norm, f"{where}.{n} of another kind")
    return has[0]


def _diff_lambda(mod: Any, where: str, depth: int) -> bool:
    """dual_lambda of a differential attention at block index depth; checks lambda_init."""
    require(
        abs(float(mod.lambda_init) - _lambda_init(depth)) < 1e-12,
        f"{where}.lambda_init={mod.lambda_init} (timm's rule at depth {depth} gives "
        f"{_lambda_init(depth)})",
    )
    require(norm_kind(mod.sub_norm, f"{where}.sub_norm") == _SUB_NORM, f"{where}.sub_norm eps")
    return bool(mod.dual_lambda)


def _read_attn(attn: Any, where: str, dim: int, norm: tuple[str, float], depth: int) -> dict:
    """Config fields of an Attention or DiffAttention inside a block."""
    kind = {"Attention": "attn", "DiffAttention": "diff"}.get(cls_name(attn))
    require(kind is not None, f"{where} of type {cls_name(attn)}")
    heads = attn.num_heads
    per_head = 2 if kind == "diff" else 1
    require(attn.head_dim * heads * per_head == dim, f"{where} with attn_head_dim != dim / heads")
    require(is_identity(getattr(attn, "norm", None)), f"{where}.norm (scale_attn_norm)")
    require(getattr(attn, "gate", None) is None, f"{where}.gate (gated attention)")
    require(abs(attn.scale - attn.head_dim**-0.5) < 1e-12, f"{where} with a custom scale")
    check_linear(attn.qkv, f"{where}.qkv", dim, 3 * dim)
    check_linear(attn.proj, f"{where}.proj", dim, dim)
    return dict(
        attn_layer=kind, num_heads=heads, qkv_bias=attn.qkv.bias is not None,
        proj_bias=attn.proj.bias is not None, qk_norm=_qk_norm(attn, where, norm),
        dual_lambda=_diff_lambda(attn, where, depth) if kind == "diff" else False,
        attn_drop=_drop(attn.attn_drop), proj_drop=_drop(attn.proj_drop),
    )  # fmt: skip


def _read_mlp(mlp: Any, where: str, dim: int) -> dict:
    """Config fields of an Mlp, GluMlp (glu / swiglu_packed) or SwiGLU inside a block."""
    name = cls_name(mlp)
    if name == "GluMlp":
        kind = "glu" if mlp.gate_last else "swiglu_packed"
        require(mlp.chunk_dim == -1, f"{where} with 1x1 convolutions")
        fc1s, fc2_in = [mlp.fc1], mlp.fc1.out_features // 2
    else:
        kind = _MLP_CLASSES.get(name)
        require(kind is not None, f"{where} of type {name} (supported: Mlp, GluMlp, SwiGLU)")
        fc1s = [mlp.fc1_g, mlp.fc1_x] if kind == "swiglu" else [mlp.fc1]
        fc2_in = fc1s[0].out_features
    hidden, bias = fc1s[0].out_features, fc1s[0].bias is not None
    for fc, n in zip(fc1s, ("fc1_g", "fc1_x") if kind == "swiglu" else ("fc1",), strict=True):
        check_linear(fc, f"{where}.{n}", dim, hidden, bias)
    check_linear(mlp.fc2, f"{where}.fc2", fc2_in, dim, bias)
    require(is_identity(getattr(mlp, "norm", None)), f"{where}.norm (scale_mlp_norm)")
    return dict(mlp_layer=kind, hidden=hidden, mlp_bias=bias, act=_act(mlp.act, f"{where}.act"))


def _block_fields(blk: Any, i: int, dim: int) -> dict[str, Any]:
    """The config fields one timm block implies (its drop_path rate under 'drop_path')."""
    w, kind = f"blocks.{i}", cls_name(blk)
    readers = {
        "Block": _read_pre_norm_block, "ResPostBlock": _read_res_post_block,
        "ParallelScalingBlock": _read_parallel_scaling_block,
        "DiffParallelScalingBlock": _read_parallel_scaling_block,
        "ParallelThingsBlock": _read_parallel_things_block,
    }  # fmt: skip
    require(kind in readers, f"{w} of type {kind} (supported: {', '.join(readers)})")
    f = readers[kind](blk, w, dim, i)
    if "mlp_bias" in f:  # Block, ResPostBlock, ParallelThingsBlock: one bias flag for both
        require(f.pop("mlp_bias") == f["proj_bias"], f"{w}.mlp bias differing from attn.proj's")
    return dict(block_fn=kind, **f)


def _read_pre_norm_block(blk: Any, w: str, dim: int, i: int) -> dict[str, Any]:
    norm = norm_kind(blk.norm1, f"{w}.norm1")
    require(norm_kind(blk.norm2, f"{w}.norm2") == norm, f"{w}.norm2 of another kind or eps")
    init = [_layer_scale(getattr(blk, n), f"{w}.{n}") for n in ("ls1", "ls2")]
    require(init[0] == init[1], f"{w}.ls1 / ls2 with different init_values")
    return dict(
        norm=norm, **_read_attn(blk.attn, f"{w}.attn", dim, norm, i),
        **_read_mlp(blk.mlp, f"{w}.mlp", dim), init_values=init[0],
        drop_path=_drop(blk.drop_path1),
    )  # fmt: skip


def _read_res_post_block(blk: Any, w: str, dim: int, i: int) -> dict[str, Any]:
    norm = norm_kind(blk.norm1, f"{w}.norm1")
    require(norm_kind(blk.norm2, f"{w}.norm2") == norm, f"{w}.norm2 of another kind or eps")
    init = blk.init_values  # no LayerScale: timm starts norm1 / norm2 weights at init_values
    return dict(
        norm=norm, **_read_attn(blk.attn, f"{w}.attn", dim, norm, i),
        **_read_mlp(blk.mlp, f"{w}.mlp", dim), init_values=None if init is None else float(init),
        drop_path=_drop(blk.drop_path1),
    )  # fmt: skip


def _read_parallel_scaling_block(blk: Any, w: str, dim: int, i: int) -> dict[str, Any]:
    diff = cls_name(blk) == "DiffParallelScalingBlock"
    norm = norm_kind(blk.in_norm, f"{w}.in_norm")
    heads, hidden = blk.num_heads, blk.in_split[0]
    require(blk.head_dim * heads * (2 if diff else 1) == dim, f"{w} with head_dim != dim / heads")
    require(list(blk.in_split) == [hidden, dim, dim, dim], f"{w}.in_split {blk.in_split}")
    qkv_bias = blk.in_proj.bias is not None
    check_linear(blk.in_proj, f"{w}.in_proj", dim, hidden + 3 * dim)
    require((blk.mlp_bias is None) == qkv_bias, f"{w}.mlp_bias present together with qkv_bias")
    fused = blk.out_proj is not None
    if fused:
        check_linear(blk.out_proj, f"{w}.out_proj", dim + hidden, dim)
        proj_bias = blk.out_proj.bias is not None
    else:
        proj_bias = blk.attn_out_proj.bias is not None
        check_linear(blk.attn_out_proj, f"{w}.attn_out_proj", dim, dim, proj_bias)
        check_linear(blk.mlp_out_proj, f"{w}.mlp_out_proj", hidden, dim, proj_bias)
    require(fused or not diff, f"{w} without out_proj")
    return dict(
        norm=norm, attn_layer="attn", num_heads=heads, qkv_bias=qkv_bias, proj_bias=proj_bias,
        qk_norm=_qk_norm(blk, w, norm), mlp_layer="mlp", hidden=hidden,
        act=_act(blk.mlp_act, f"{w}.mlp_act"), init_values=_layer_scale(blk.ls, f"{w}.ls"),
        dual_lambda=_diff_lambda(blk, w, i) if diff else False, fuse_out_proj=fused and not diff,
        attn_drop=_drop(blk.attn_drop), proj_drop=_drop(blk.mlp_drop),
        drop_path=_drop(blk.drop_path),
    )  # fmt: skip


def _read_parallel_things_block(blk: Any, w: str, dim: int, i: int) -> dict[str, Any]:
    n = len(blk.attns)
    require(n == len(blk.ffns) and n > 0, f"{w} with {n} attns and {len(blk.ffns)} ffns")
    branches = []
    for j in range(n):
        a, f = blk.attns[j], blk.ffns[j]
        aw, fw = f"{w}.attns.{j}", f"{w}.ffns.{j}"
        norm = norm_kind(a.norm, f"{aw}.norm")
        require(norm_kind(f.norm, f"{fw}.norm") == norm, f"{fw}.norm of another kind or eps")
        init = [_layer_scale(a.ls, f"{aw}.ls"), _layer_scale(f.ls, f"{fw}.ls")]
        require(init[0] == init[1], f"{w}: attns / ffns LayerScale with different init_values")
        rates = [_drop(a.drop_path), _drop(f.drop_path)]
        require(rates[0] == rates[1], f"{w}: attns / ffns with different drop_path rates")
        branches.append(dict(
            norm=norm, **_read_attn(a.attn, f"{aw}.attn", dim, norm, i),
            **_read_mlp(f.mlp, f"{fw}.mlp", dim), init_values=init[0], drop_path=rates[0],
        ))  # fmt: skip
    for j, b in enumerate(branches[1:], 1):
        require(b == branches[0], f"{w}: branch {j} differing from branch 0")
    return dict(branches[0], num_parallel=n)


def _check_pool(model: Any, ref: dict[str, Any]) -> None:
    pool = model.attn_pool
    if model.global_pool == "prr" or cls_name(pool) == "AttentionPoolPrr":
        raise UnsupportedModelError(
            "global_pool='prr' (AttentionPoolPrr) is not supported by vitjax"
        )
    if pool is None:
        return
    require(cls_name(pool) == "AttentionPoolLatent", f"attn_pool of type {cls_name(pool)}")
    require(
        pool.latent_len == 1 and pool.pos_embed is None and pool.pool == "token",
        "attn_pool with latent_len > 1, a position embedding or non-token pooling",
    )
    require(
        is_identity(pool.q_norm) and pool.mlp is not None,
        "attn_pool with qk_norm or out_features=0",
    )
    dim, hidden = ref["dim"], ref["hidden"]
    require(pool.num_heads == ref["num_heads"], "attn_pool with its own head count")
    check_linear(pool.q, "attn_pool.q", dim, dim, True)
    check_linear(pool.kv, "attn_pool.kv", dim, 2 * dim, True)
    check_linear(pool.proj, "attn_pool.proj", dim, dim, True)
    require(ref["proj_bias"], "attn_pool ('map') together with proj_bias=False")
    check_linear(pool.mlp.fc1, "attn_pool.mlp.fc1", dim, hidden, True)
    check_linear(pool.mlp.fc2, "attn_pool.mlp.fc2", hidden, dim, True)
    require(is_identity(getattr(pool.mlp, "norm", None)), "attn_pool.mlp.norm")
    require(
        act_name(pool.mlp.act, "attn_pool.mlp.act") == ref["act"],
        "attn_pool.mlp.act differing from the blocks'",
    )
    require(
        norm_kind(pool.norm, "attn_pool.norm") == ref["norm"], "attn_pool.norm with another eps"
    )


def _read_hybrid_embed(model: Any, dim: int, pre_norm: bool) -> dict[str, Any]:
    """backbone / embed_proj of a timm HybridEmbed, checked against the model's other fields."""
    pe = model.patch_embed
    f = hybrid_embed_from_timm(pe)
    require(f["embed_dim"] == dim, f"patch_embed with embed_dim {f['embed_dim']} (blocks: {dim})")
    require(
        not f["use_proj"] or f["bias"] == (not pre_norm),
        f"patch_embed.proj with bias={f.get('bias')} and pre_norm={pre_norm}",
    )
    fmt = "NHWC" if model.dynamic_img_size else None
    require(
        f["flatten"] == (fmt is None) and f["output_fmt"] == fmt,
        f"patch_embed with flatten={f['flatten']}, output_fmt={f['output_fmt']!r} "
        f"(dynamic_img_size={model.dynamic_img_size})",
    )
    return dict(backbone=f["backbone_cfg"], embed_proj=f["use_proj"])


def _check_patch_embed(model: Any, pre_norm: bool, norm: tuple[str, float]) -> None:
    pe = model.patch_embed
    require(cls_name(pe) == "PatchEmbed", f"patch_embed of type {cls_name(pe)}")
    proj = pe.proj
    require(cls_name(proj) == "Conv2d", f"patch_embed.proj of type {cls_name(proj)}")
    require(
        tuple(proj.kernel_size) == tuple(proj.stride) == tuple(pe.patch_size)
        and tuple(proj.padding) == (0, 0)
        and proj.groups == 1,
        "patch_embed.proj that is not a plain patchify convolution",
    )
    require(
        (proj.bias is None) == pre_norm,
        f"patch_embed.proj with bias={proj.bias is not None} and pre_norm={pre_norm}",
    )
    if not is_identity(pe.norm):
        require(norm_kind(pe.norm, "patch_embed.norm") == norm, "patch_embed.norm with another eps")


def _square(x: tuple[int, int]) -> int | tuple[int, int]:
    return x[0] if x[0] == x[1] else (int(x[0]), int(x[1]))


def _drop(m: Any) -> float:
    return float(getattr(m, "p", getattr(m, "drop_prob", 0.0)) or 0.0)


def _read_blocks(model: Any, dim: int) -> dict[str, Any]:
    """The block fields every block shares (refusing any that differ), drop_path of the last."""
    fields = [_block_fields(b, i, dim) for i, b in enumerate(model.blocks)]
    ref = {k: v for k, v in fields[0].items() if k != "drop_path"}
    for i, f in enumerate(fields[1:], 1):
        diff = sorted(k for k in ref if f[k] != ref[k])
        require(not diff, f"blocks.{i} differing from blocks.0 in {', '.join(diff)}")
    return dict(ref, dim=dim, drop_path=fields[-1]["drop_path"])


def config_from_timm(model: Any) -> ViTConfig:
    """ViTConfig equal to a timm VisionTransformer / VisionTransformerDistilled instance."""
    name = cls_name(model)
    require(
        name in ("VisionTransformer", "VisionTransformerDistilled"),
        f"model class {name} ({_OTHER_CLASSES.get(name, 'another ViT class')})",
    )
    require(is_identity(getattr(model, "patch_drop", None)), "patch_drop (patch dropout)")
    require(len(model.blocks) > 0, "a model with no blocks")
    dim = model.embed_dim
    ref = _read_blocks(model, dim)
    _check_pool(model, ref)
    pre_norm = not is_identity(model.norm_pre)
    pe = model.patch_embed
    hybrid = cls_name(pe) == "HybridEmbed"
    if hybrid:
        embed = _read_hybrid_embed(model, dim, pre_norm)
    else:
        _check_patch_embed(model, pre_norm, ref["norm"])
        embed = {}
    for n in ("norm_pre", "norm", "fc_norm"):
        if not is_identity(getattr(model, n)):
            require(
                norm_kind(getattr(model, n), n) == ref["norm"], f"{n} with another norm kind or eps"
            )
    global_pool = model.global_pool
    final_norm = not (is_identity(model.norm) and is_identity(model.fc_norm))
    use_fc_norm = not is_identity(model.fc_norm)
    fc_norm = (
        None
        if not final_norm or use_fc_norm == (global_pool in ("avg", "max", "avgmax"))
        else use_fc_norm
    )
    cfg = ViTConfig(
        img_size=_square(tuple(pe.img_size)),
        patch_size=_square(tuple(pe.patch_size)),
        in_chans=pe.in_chans if hybrid else pe.proj.in_channels,
        num_classes=model.num_classes,
        global_pool=global_pool,
        embed_dim=dim,
        depth=len(model.blocks),
        num_heads=ref["num_heads"],
        mlp_ratio=mlp_ratio_for(dim, ref["hidden"]),
        qkv_bias=ref["qkv_bias"],
        qk_norm=ref["qk_norm"],
        proj_bias=ref["proj_bias"],
        init_values=ref["init_values"],
        class_token=model.cls_token is not None,
        pos_embed="learn" if model.pos_embed is not None else "none",
        no_embed_class=bool(model.no_embed_class),
        reg_tokens=int(getattr(model, "num_reg_tokens", 0)),
        pre_norm=pre_norm,
        final_norm=final_norm,
        fc_norm=fc_norm,
        pool_include_prefix=bool(model.pool_include_prefix),
        dynamic_img_size=bool(model.dynamic_img_size),
        dynamic_img_pad=bool(pe.dynamic_img_pad),
        drop_rate=_drop(model.head_drop),
        pos_drop_rate=_drop(model.pos_drop),
        proj_drop_rate=ref["proj_drop"],
        attn_drop_rate=ref["attn_drop"],
        drop_path_rate=ref["drop_path"],
        embed_norm=not is_identity(getattr(pe, "norm", None)),
        norm_layer=ref["norm"][0],
        norm_eps=ref["norm"][1],
        act_layer=ref["act"],
        block_fn=ref["block_fn"],
        attn_layer=ref["attn_layer"],
        mlp_layer=ref["mlp_layer"],
        dual_lambda=ref["dual_lambda"],
        fuse_out_proj=ref.get("fuse_out_proj", False),
        num_parallel=ref.get("num_parallel", 2),
        distilled=getattr(model, "dist_token", None) is not None,
        **embed,
    )
    if model.pos_embed is not None:
        shape = tuple(model.pos_embed.shape)
        require(
            shape == (1, cfg.embed_len, dim),
            f"pos_embed of shape {shape} (the tokens need {(1, cfg.embed_len, dim)}; e.g. "
            "VisionTransformerDistilled with no_embed_class, which timm cannot run either)",
        )
    return cfg


# --- timm's checkpoint conventions (numpy) ----------------------------------------------------

_CLIP_SWAPS = (
    ("conv1", "patch_embed.proj"),
    ("positional_embedding", "pos_embed"),
    ("transformer.resblocks.", "blocks."),
    ("ln_pre", "norm_pre"),
    ("ln_post", "norm"),
    ("ln_", "norm"),
    ("in_proj_", "qkv."),
    ("out_proj", "proj"),
    ("mlp.c_fc", "mlp.fc1"),
    ("mlp.c_proj", "mlp.fc2"),
)


def _convert_openai_clip(sd: Mapping[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    """OpenAI CLIP visual tower keys -> timm keys (timm's _convert_openai_clip)."""
    out: dict[str, np.ndarray] = {}
    for k, v in sd.items():
        if not k.startswith(prefix):
            continue
        k = k.replace(prefix, "")
        for a, b in _CLIP_SWAPS:
            k = k.replace(a, b)
        if k == "proj":
            k, v = "head.weight", v.T
            out["head.bias"] = np.zeros(v.shape[0], v.dtype)
        elif k == "class_embedding":
            k, v = "cls_token", v[None, None]
        elif k == "pos_embed":
            v = v[None]
        out[k] = v
    return out


def _convert_dinov2(sd: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Meta DINOv2 keys -> timm keys (timm's _convert_dinov2)."""
    sd = {k: v for k, v in sd.items() if k != "mask_token"}
    out: dict[str, np.ndarray] = {}
    if "register_tokens" in sd:
        out["reg_token"] = sd.pop("register_tokens")
        out["cls_token"] = sd.pop("cls_token") + sd["pos_embed"][:, 0]
        out["pos_embed"] = sd.pop("pos_embed")[:, 1:]
    for k, v in sd.items():
        k = re.sub(r"^(blocks\.\d+\.mlp\.)w12\.", r"\1fc1.", k)
        k = re.sub(r"^(blocks\.\d+\.mlp\.)w3\.", r"\1fc2.", k)
        out[k] = v
    return out


_MOBILECLIP_SWAPS = (
    ("patch_emb.", "patch_embed.backbone."),
    ("block.conv", "conv"),
    ("block.norm", "bn"),
    ("post_transformer_norm.", "norm."),
    ("pre_norm_mha.0", "norm1"),
    ("pre_norm_mha.1", "attn"),
    ("pre_norm_ffn.0", "norm2"),
    ("pre_norm_ffn.1", "mlp.fc1"),
    ("pre_norm_ffn.4", "mlp.fc2"),
    ("qkv_proj.", "qkv."),
    ("out_proj.", "proj."),
    ("transformer.", "blocks."),
)
MOBILECLIP_KEY = "image_encoder.model.patch_emb.0.block.conv.weight"  # timm's detection key


def _convert_mobileclip(
    sd: Mapping[str, np.ndarray], prefix: str = "image_encoder.model."
) -> dict[str, np.ndarray]:
    """Apple's MobileCLIP image-encoder keys -> timm keys (vision_transformer_hybrid's
    _convert_mobileclip): the ConvStem, the blocks, the position embedding and the projection."""
    out: dict[str, np.ndarray] = {}
    for k, v in sd.items():
        if not k.startswith(prefix):
            continue
        k = k.replace(prefix, "")
        for a, b in _MOBILECLIP_SWAPS:
            k = k.replace(a, b)
        if k == "pos_embed.pos_embed.pos_embed":
            k, v = "pos_embed", v[0] if v.shape[0] == 1 else v  # torch's squeeze(0)
        if "classifier.proj" in k:
            v = v.T
            out[k.replace("classifier.proj", "head.bias")] = np.zeros(v.shape[0], v.dtype)
            k = k.replace("classifier.proj", "head.weight")
        out[k] = v
    return out


def _strip(sd: Mapping[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    return {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}


def _arrays(state_dict: Mapping[str, Any]) -> dict[str, np.ndarray]:
    return {k: np.asarray(v) for k, v in state_dict.items()}


def filter_state_dict(state_dict: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Foreign layouts -> timm keys, as timm's checkpoint_filter_fn does (no resampling here)."""
    sd = dict(state_dict)  # values stay as given (lazy file tensors too) unless rewritten here
    if MOBILECLIP_KEY in sd:  # timm's hybrid filter, before the ViT one
        sd = _convert_mobileclip(_arrays(sd))
    if "visual.class_embedding" in sd:
        sd = _convert_openai_clip(_arrays(sd), "visual.")
    elif "module.visual.class_embedding" in sd:
        sd = _convert_openai_clip(_arrays(sd), "module.visual.")
    elif "mask_token" in sd:
        sd = _convert_dinov2(_arrays(sd))
    elif "vision_encoder.mask_token" in sd:
        sd = _convert_dinov2(_strip(_arrays(sd), "vision_encoder."))
    elif "visual.trunk.pos_embed" in sd or "visual.trunk.blocks.0.norm1.weight" in sd:
        head = sd.get("visual.head.proj.weight")
        sd = _strip(sd, "visual.trunk.")
        if head is not None:
            sd["head.weight"], sd["head.bias"] = head, np.zeros(head.shape[0], head.dtype)
    elif "module.visual.trunk.pos_embed" in sd:
        sd = _strip(sd, "module.visual.trunk.")
    elif any(k.startswith("radio_model.") for k in sd):
        raise UnsupportedModelError(
            "NVIDIA RADIO checkpoints (radio_model.*) are not converted by vitjax; load them in "
            "timm and use vitjax.from_timm(model)"
        )
    out = {}
    for k, v in sd.items():
        if k.startswith("pre_logits"):
            continue  # representation layer, dropped by timm
        out[re.sub(r"gamma_([0-9])", r"ls\1.gamma", k)] = v  # DeiT-3 layer scale
    return out


def source_grid(num_tokens: int, default: tuple[int, int] | None = None) -> tuple[int, int]:
    """The position grid a checkpoint was trained on: ``default`` if it fits, else a square."""
    if default is not None and default[0] * default[1] == num_tokens:
        return tuple(default)
    side = math.isqrt(num_tokens)
    if side * side != num_tokens:
        raise ValueError(
            f"cannot infer the position-embedding grid from {num_tokens} patch tokens "
            "(not square and not the model's default grid)"
        )
    return side, side


def adapt_pos_embed(
    state_dict: dict[str, np.ndarray],
    cfg: ViTConfig,
    old_grid: tuple[int, int] | None = None,
    interpolation: str = "bicubic",
    antialias: bool = True,
) -> dict[str, np.ndarray]:
    """Resample the checkpoint's pos_embed to cfg's grid, as timm does when loading weights."""
    pe = state_dict.get("pos_embed")
    if pe is None or not cfg.has_pos_embed or pe.ndim != 3:
        return state_dict
    n_prefix = 0 if cfg.no_embed_class else cfg.num_prefix_tokens
    try:
        grid = source_grid(pe.shape[1] - n_prefix, old_grid)
    except ValueError:
        if pe.shape[1] == cfg.embed_len:  # no other grid fits: the model's own (non-square) one
            return state_dict
        raise
    if pe.shape[1] == cfg.embed_len and grid == cfg.grid_size:
        return state_dict
    new = resample_abs_pos_embed(
        jnp.asarray(np.asarray(pe), jnp.float32),
        cfg.grid_size,
        grid,
        n_prefix,
        method=interpolation,
        antialias=antialias,
    )
    return {**state_dict, "pos_embed": np.asarray(new).astype(pe.dtype)}


def reshape_linear_patch_embed(state_dict: dict[str, np.ndarray], cfg: ViTConfig) -> None:
    """Old linear patch projections (O, C*ph*pw) -> conv weights (O, C, ph, pw), in place."""
    w = state_dict.get("patch_embed.proj.weight")
    if w is not None and w.ndim < 4:
        ph, pw = to_2tuple(cfg.patch_size)
        state_dict["patch_embed.proj.weight"] = np.asarray(w).reshape(w.shape[0], -1, ph, pw)


def describe_state_dict(state_dict: Mapping[str, Any]) -> str:
    """A one-line guess of the architecture a timm-key state_dict holds (for error messages)."""
    parts = []
    w = state_dict.get("patch_embed.proj.weight")
    if w is not None and np.ndim(w) == 4:
        parts += [f"embed_dim={np.shape(w)[0]}", f"patch_size={tuple(np.shape(w)[2:])}"]
    blocks = {int(m[1]) for k in state_dict if (m := re.match(r"blocks\.(\d+)\.", k))}
    if blocks:
        parts.append(f"depth={max(blocks) + 1}")
    for k in ("pos_embed", "reg_token", "head.weight"):
        if k in state_dict:
            parts.append(f"{k} {tuple(np.shape(state_dict[k]))}")
    return ", ".join(parts) or "no timm ViT keys"


_TIMM_MLPS = {"mlp": "Mlp", "glu": "GluMlp", "swiglu": "SwiGLU", "swiglu_packed": "SwiGLUPacked"}


def _timm_layers(cfg: ViTConfig) -> dict[str, Any]:
    """timm's block_fn / attn_layer / mlp_layer arguments for cfg (timm classes and partials)."""
    from functools import partial

    import timm.layers
    from timm.models import vision_transformer as tv

    block_fn = getattr(tv, cfg.block_fn)
    if cfg.fuse_out_proj:
        block_fn = partial(block_fn, fuse_out_proj=True)
    elif cfg.num_parallel != 2:
        block_fn = partial(block_fn, num_parallel=cfg.num_parallel)
    elif cfg.dual_lambda and cfg.block_fn == "DiffParallelScalingBlock":
        block_fn = partial(block_fn, dual_lambda=True)
    attn_layer: Any = cfg.attn_layer
    if cfg.dual_lambda and cfg.attn_layer == "diff":
        attn_layer = _dual_lambda_diff_attention()
    mlp_layer = getattr(timm.layers, _TIMM_MLPS[cfg.mlp_layer])
    return dict(block_fn=block_fn, attn_layer=attn_layer, mlp_layer=mlp_layer)


def _dual_lambda_diff_attention() -> type:
    """timm's DiffAttention with dual_lambda=True, as a subclass (timm's _create_attn needs one)."""
    import timm.layers

    class DiffAttention(timm.layers.DiffAttention):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, dual_lambda=True, **kwargs)

    return DiffAttention


_LAYER_FIELDS = ("block_fn", "attn_layer", "mlp_layer", "dual_lambda", "fuse_out_proj",
                 "num_parallel")  # fmt: skip
# How vitjax runs the model, not what it is: timm builds the same weights without them.
_VITJAX_ONLY = ("attn_impl", "dense_impl", "scan_blocks", "remat_policy")


def timm_model_args(name: str, cfg: ViTConfig, layers: bool = True) -> dict[str, Any]:
    """timm.create_model kwargs that turn the named timm model into cfg (differences only).

    layers=False: a ValueError where that takes timm's layer classes (block_fn, attn_layer,
    mlp_layer), which JSON cannot hold and which need timm (and torch) imported.
    """
    import warnings

    from vitjax import registry

    with warnings.catch_warnings():  # an old name: timm warns when it builds the model
        warnings.simplefilter("ignore")
        base = registry.get_config(name)
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        new, old = getattr(cfg, f.name), getattr(base, f.name)
        if new == old or f.name in (*_VITJAX_ONLY, *_LAYER_FIELDS):
            continue
        if f.name == "embed_norm":
            out["embed_norm_layer"] = cfg.norm_layer if new else None
        elif f.name in ("norm_eps", "attn_scale", "distilled", "backbone", "embed_proj"):
            raise ValueError(f"{f.name}={new!r} (model default {old!r}) has no timm argument")
        else:
            out[f.name] = new
    new_keys, old_keys = _layer_keys(cfg), _layer_keys(base)
    changed = [k for k in new_keys if new_keys[k] != old_keys[k]]
    if changed and not layers:
        raise ValueError(f"{name}: {', '.join(changed)} would take timm's layer classes")
    if changed:
        classes = _timm_layers(cfg)
        out.update({k: classes[k] for k in changed})
    return out


def _layer_keys(cfg: ViTConfig) -> dict[str, Any]:
    """What each of timm's block_fn / attn_layer / mlp_layer arguments is made of, for cfg."""
    dual_block = cfg.dual_lambda and cfg.block_fn == "DiffParallelScalingBlock"
    return dict(
        block_fn=(cfg.block_fn, cfg.fuse_out_proj, cfg.num_parallel, dual_block),
        attn_layer=(cfg.attn_layer, cfg.dual_lambda and cfg.attn_layer == "diff"),
        mlp_layer=cfg.mlp_layer,
    )


# --- The tutorial notebook's own layout -------------------------------------------------------

_NOTEBOOK_RULES = [
    (r"input_layer\.patch_emb_layer\.", "patch_embed.proj."),
    (r"input_layer\.cls_token$", "cls_token"),
    (r"input_layer\.pos_emb$", "pos_embed"),
    (r"encoder\.(\d+)\.ln1\.", r"blocks.\1.norm1."),
    (r"encoder\.(\d+)\.ln2\.", r"blocks.\1.norm2."),
    (r"encoder\.(\d+)\.msa\.w_o\.0\.", r"blocks.\1.attn.proj."),
    (r"encoder\.(\d+)\.mlp\.0\.", r"blocks.\1.mlp.fc1."),
    (r"encoder\.(\d+)\.mlp\.3\.", r"blocks.\1.mlp.fc2."),
    (r"mlp_head\.0\.", "norm."),
    (r"mlp_head\.1\.", "head."),
]
_NOTEBOOK_QKV = re.compile(r"encoder\.(\d+)\.msa\.w_([qkv])\.(weight|bias)$")


def is_notebook_layout(state_dict: Mapping[str, Any]) -> bool:
    """True for a state_dict saved from the tutorial notebook's ViT class."""
    return "input_layer.cls_token" in state_dict and any(
        k.startswith("encoder.") for k in state_dict
    )


def notebook_to_timm(state_dict: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Rename the notebook's keys to timm's and fuse its w_q/w_k/w_v into one qkv."""
    out: dict[str, np.ndarray] = {}
    qkv: dict[tuple[str, str], dict[str, np.ndarray]] = {}
    for key, value in state_dict.items():
        arr = np.asarray(value)
        m = _NOTEBOOK_QKV.match(key)
        if m:
            qkv.setdefault((m[1], m[3]), {})[m[2]] = arr
            continue
        for pattern, repl in _NOTEBOOK_RULES:
            new, n = re.subn("^" + pattern, repl, key)
            if n:
                out[new] = arr
                break
        else:
            raise WeightMismatchError(f"unexpected key {key!r} in a notebook-layout state_dict")
    for (i, leaf), parts in sorted(qkv.items()):
        if set(parts) != {"q", "k", "v"}:
            raise WeightMismatchError(f"block {i}: w_q/w_k/w_v.{leaf} incomplete: {sorted(parts)}")
        out[f"blocks.{i}.attn.qkv.{leaf}"] = np.concatenate([parts[c] for c in "qkv"], axis=0)
    return out


def checkpoint_overrides(state_dict: Mapping[str, Any], cfg: ViTConfig) -> dict[str, Any]:
    """Config overrides a file's layout implies: the notebook's sqrt(num_heads) scale, qkv bias."""
    if not is_notebook_layout(state_dict):
        return {}
    has_bias = any(k.endswith("msa.w_q.bias") for k in state_dict)
    return dict(attn_scale=cfg.num_heads**-0.5, qkv_bias=has_bias)


def checkpoint_filter_fn(
    state_dict: Mapping[str, Any],
    cfg: ViTConfig,
    resample_pos_embed: bool = False,
    source_grid: tuple[int, int] | None = None,
    interpolation: str = "bicubic",
    antialias: bool = True,
) -> dict[str, np.ndarray]:
    """Any layout the vit family's weights are published in -> timm keys, as timm's filter.

    The notebook's class layout, OpenAI CLIP, OpenCLIP, DINOv2, MobileCLIP, DeiT-3 gamma names
    and linear patch projections; with resample_pos_embed, pos_embed is resized to cfg's grid from
    source_grid (or the square / default grid its length implies).
    """
    if is_notebook_layout(state_dict):
        sd = notebook_to_timm(state_dict)
    else:
        sd = filter_state_dict(state_dict)
        reshape_linear_patch_embed(sd, cfg)
    if resample_pos_embed:
        try:
            sd = adapt_pos_embed(sd, cfg, source_grid, interpolation, antialias=antialias)
        except ValueError as e:
            raise WeightMismatchError(f"pos_embed: {e}") from e
    return sd
