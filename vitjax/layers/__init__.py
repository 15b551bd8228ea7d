"""Shared Flax building blocks with timm's names (every model family draws on these)."""

from vitjax.layers.activations import ACT_LAYERS, gelu, make_act, quick_gelu
from vitjax.layers.attention import (
    ATTN_IMPLS,
    Attention,
    dot_product_attention,
    resolve_attn_impl,
)
from vitjax.layers.cnn_stems import BatchNorm2d, GroupNormAct
from vitjax.layers.drop import DropPath
from vitjax.layers.helpers import Dtype, dense_init, platform, to_2tuple
from vitjax.layers.hybrid_embed import (
    HybridEmbed,
    backbone_from_dict,
    backbone_to_dict,
    hybrid_embed_from_timm,
)
from vitjax.layers.layer_scale import LayerScale
from vitjax.layers.linear import DENSE_IMPLS, Dense, PatchConv, matmul, resolve_dense_impl
from vitjax.layers.mlp import GluMlp, Mlp, SwiGLU
from vitjax.layers.norms import NORM_LAYERS, LayerNorm, RmsNorm, make_norm
from vitjax.layers.patch_embed import PatchEmbed, check_images
from vitjax.layers.pool import AttentionPoolLatent
from vitjax.layers.pos_embed import resample_abs_pos_embed
from vitjax.layers.std_conv import StdConv2d, StdConv2dSame

__all__ = [
    "ACT_LAYERS",
    "ATTN_IMPLS",
    "DENSE_IMPLS",
    "NORM_LAYERS",
    "Attention",
    "AttentionPoolLatent",
    "BatchNorm2d",
    "Dense",
    "DropPath",
    "Dtype",
    "GluMlp",
    "GroupNormAct",
    "HybridEmbed",
    "LayerNorm",
    "LayerScale",
    "Mlp",
    "PatchConv",
    "PatchEmbed",
    "RmsNorm",
    "StdConv2d",
    "StdConv2dSame",
    "SwiGLU",
    "backbone_from_dict",
    "backbone_to_dict",
    "check_images",
    "dense_init",
    "dot_product_attention",
    "gelu",
    "hybrid_embed_from_timm",
    "make_act",
    "make_norm",
    "matmul",
    "platform",
    "quick_gelu",
    "resample_abs_pos_embed",
    "resolve_attn_impl",
    "resolve_dense_impl",
    "to_2tuple",
]
