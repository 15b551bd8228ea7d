"""Read a ViTConfig off a live timm VisionTransformer; refuse, by name, what vitjax cannot mirror.

Imports nothing from torch or timm at module level: the module handed in brings them.
"""

from __future__ import annotations

import math
from typing import Any

from vitjax.configs import ViTConfig


class UnsupportedModelError(ValueError):
    """A timm model (or part of one) that vitjax does not mirror; says which part."""


def _cls(m: Any) -> str:
    return type(m).__name__


def _is_identity(m: Any) -> bool:
    return m is None or _cls(m) == "Identity"


def _act_name(act: Any) -> str:
    name = _cls(act)
    if name == "GELU":
        return "gelu_tanh" if getattr(act, "approximate", "none") == "tanh" else "gelu"
    table = {"GELUTanh": "gelu_tanh", "QuickGELU": "quick_gelu"}
    if name not in table:
        raise UnsupportedModelError(f"activation {name} is not supported (gelu, gelu_tanh, quick_gelu)")
    return table[name]


def _norm(norm: Any, where: str) -> tuple[str, float]:
    name = _cls(norm)
    if name in ("LayerNorm",) and getattr(norm, "elementwise_affine", True):
        return "layernorm", float(norm.eps)
    if name == "RmsNorm" and getattr(norm, "elementwise_affine", True):
        return "rmsnorm", float(norm.eps)
    raise UnsupportedModelError(f"{where}: norm layer {name} is not supported (LayerNorm, RmsNorm)")


def _mlp_ratio(dim: int, hidden: int) -> float:
    """A float ratio r with int(dim * r) == hidden, as timm computes the hidden width."""
    r = hidden / dim
    while int(dim * r) < hidden:
        r = math.nextafter(r, math.inf)
    return r


def _require(ok: bool, what: str) -> None:
    if not ok:
        raise UnsupportedModelError(f"{what} is not supported by vitjax")


def _check_block(blk: Any, i: int) -> None:
    _require(_cls(blk) == "Block", f"blocks.{i} of type {_cls(blk)} (e.g. parallel/res-post blocks)")
    _require(_cls(blk.attn) == "Attention", f"blocks.{i}.attn of type {_cls(blk.attn)}")
    _require(_cls(blk.mlp) == "Mlp", f"blocks.{i}.mlp of type {_cls(blk.mlp)} (SwiGLU/GLU MLPs)")
    attn, mlp = blk.attn, blk.mlp
    _require(_is_identity(getattr(attn, "norm", None)), f"blocks.{i}.attn.norm (scale_attn_norm)")
    _require(getattr(attn, "gate", None) is None, f"blocks.{i}.attn.gate (gated attention)")
    _require(_is_identity(getattr(mlp, "norm", None)), f"blocks.{i}.mlp.norm (scale_mlp_norm)")
    _require(attn.head_dim * attn.num_heads == attn.qkv.in_features,
             f"blocks.{i}.attn with attn_head_dim != dim / num_heads")
    _require(attn.proj.out_features == attn.qkv.in_features, f"blocks.{i}.attn with dim_out != dim")


def _check_pool(model: Any) -> None:
    pool = model.attn_pool
    if pool is None:
        return
    _require(_cls(pool) == "AttentionPoolLatent", f"attn_pool of type {_cls(pool)}")
    _require(pool.latent_len == 1 and pool.pos_embed is None and pool.pool == "token",
             "attn_pool with latent_len > 1, a position embedding or non-token pooling")
    _require(_is_identity(pool.q_norm) and pool.mlp is not None and _cls(pool.q) == "Linear",
             "attn_pool with qk_norm, q_proj=False or no MLP")
    _require(pool.num_heads == model.blocks[0].attn.num_heads, "attn_pool with its own head count")


def config_from_timm(model: Any) -> ViTConfig:
    """ViTConfig equal to a timm VisionTransformer / VisionTransformerDistilled instance."""
    name = _cls(model)
    _require(name in ("VisionTransformer", "VisionTransformerDistilled"), f"model class {name}")
    pe = model.patch_embed
    _require(_cls(pe) == "PatchEmbed", f"patch_embed of type {_cls(pe)} (hybrid CNN stems)")
    _require(_is_identity(getattr(model, "patch_drop", None)), "patch_drop (patch dropout)")
    _require(len(model.blocks) > 0, "a model with no blocks")
    for i, blk in enumerate(model.blocks):
        _check_block(blk, i)
    _check_pool(model)
    blk = model.blocks[0]
    dim = model.embed_dim
    norm_layer, eps = _norm(blk.norm1, "blocks.0.norm1")
    distilled = getattr(model, "dist_token", None) is not None
    init_values = getattr(getattr(blk, "ls1", None), "gamma", None)
    return ViTConfig(
        img_size=tuple(pe.img_size),
        patch_size=tuple(pe.patch_size),
        in_chans=pe.proj.in_channels,
        num_classes=model.num_classes,
        global_pool=model.global_pool,
        embed_dim=dim,
        depth=len(model.blocks),
        num_heads=blk.attn.num_heads,
        mlp_ratio=_mlp_ratio(dim, blk.mlp.fc1.out_features),
        qkv_bias=blk.attn.qkv.bias is not None,
        qk_norm=not _is_identity(blk.attn.q_norm),
        proj_bias=blk.attn.proj.bias is not None,
        init_values=float(blk.ls1.init_values) if init_values is not None else None,
        class_token=model.cls_token is not None,
        pos_embed="learn" if model.pos_embed is not None else "none",
        no_embed_class=bool(model.no_embed_class),
        reg_tokens=int(getattr(model, "num_reg_tokens", 0)),
        pre_norm=not _is_identity(model.norm_pre),
        final_norm=not (_is_identity(model.norm) and _is_identity(model.fc_norm)),
        fc_norm=not _is_identity(model.fc_norm),
        pool_include_prefix=bool(model.pool_include_prefix),
        dynamic_img_size=bool(model.dynamic_img_size),
        dynamic_img_pad=bool(pe.dynamic_img_pad),
        embed_norm=not _is_identity(pe.norm),
        norm_layer=norm_layer,
        norm_eps=eps,
        act_layer=_act_name(blk.mlp.act),
        attn_scale=None if abs(blk.attn.scale - blk.attn.head_dim**-0.5) < 1e-12 else blk.attn.scale,
        distilled=distilled,
    )
