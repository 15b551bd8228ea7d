"""The vit family's config: one frozen dataclass with timm's option names, and VARIANTS.

Pure Python (no jax, no torch): vittorch reads the same table, so both frameworks build the same
model from the same name.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from vitjax.models.hybrid_config import (
    BackboneConfig,
    ConvStemConfig,
    ResNetConfig,
    ResNetV2Config,
    backbone_from_dict,
    backbone_to_dict,
)
from vitjax.util import ATTN_IMPLS, DENSE_IMPLS, to_2tuple

GLOBAL_POOLS = ("", "token", "avg", "max", "avgmax", "map")
ACT_LAYERS = ("gelu", "gelu_tanh", "quick_gelu", "silu", "relu")
NORM_LAYERS = ("layernorm", "rmsnorm")
# timm's block classes, attention layers (ATTN_LAYERS keys) and MLPs (Mlp, GluMlp, SwiGLU,
# SwiGLUPacked), by the names vitjax.layers.blocks builds them from.
BLOCK_FNS = ("Block", "ResPostBlock", "ParallelScalingBlock", "DiffParallelScalingBlock",
             "ParallelThingsBlock")  # fmt: skip
ATTN_LAYERS = ("attn", "diff")
MLP_LAYERS = ("mlp", "glu", "swiglu", "swiglu_packed")
_PARALLEL_SCALING = ("ParallelScalingBlock", "DiffParallelScalingBlock")  # one fused in_proj
# Rematerialisation of each block's activations in the backward pass: "none", "full" (recompute
# everything: jax.checkpoint_policies.nothing_saveable), or a jax.checkpoint_policies name.
REMAT_POLICIES = ("none", "full", "nothing_saveable", "dots_saveable",
                  "dots_with_no_batch_dims_saveable")  # fmt: skip


def mlp_ratio_for(dim: int, hidden: int) -> float:
    """The float ratio r closest to hidden / dim with int(dim * r) == hidden (timm's width rule)."""
    r = hidden / dim
    while int(dim * r) < hidden:
        r = math.nextafter(r, math.inf)
    return r


@dataclass(frozen=True)
class ViTConfig:
    """Every option of a VisionTransformer, with timm's names and defaults."""

    img_size: int | tuple[int, int] = 224
    patch_size: int | tuple[int, int] = 16
    in_chans: int = 3
    num_classes: int = 1000
    global_pool: str = "token"
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    qk_norm: bool = False
    proj_bias: bool = True
    init_values: float | None = None
    class_token: bool = True
    pos_embed: str = "learn"
    no_embed_class: bool = False
    reg_tokens: int = 0
    pre_norm: bool = False
    final_norm: bool = True
    fc_norm: bool | None = None
    pool_include_prefix: bool = False
    dynamic_img_size: bool = False
    dynamic_img_pad: bool = False
    drop_rate: float = 0.0
    pos_drop_rate: float = 0.0
    proj_drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    embed_norm: bool = False
    norm_layer: str = "layernorm"
    norm_eps: float = 1e-6
    act_layer: str = "gelu"
    block_fn: str = "Block"
    attn_layer: str = "attn"
    mlp_layer: str = "mlp"
    dual_lambda: bool = False  # differential attention: two scalar lambdas, not four vectors
    fuse_out_proj: bool = False  # ParallelScalingBlock: one out_proj over [attn, mlp]
    num_parallel: int = 2  # ParallelThingsBlock: attention / MLP branches per block
    attn_scale: float | None = None
    distilled: bool = False
    # Hybrid CNN stem (timm's HybridEmbed): None is PatchEmbed; a dict is read by backbone_from_dict
    backbone: BackboneConfig | dict[str, Any] | None = None
    embed_proj: bool = True  # HybridEmbed's proj conv (timm's embed_args=dict(proj=False))
    attn_impl: str = "auto"
    dense_impl: str = "auto"
    # vitjax-only (timm has no such arguments; the weights keep timm's per-block keys):
    scan_blocks: bool = False  # one nn.scan over stacked block params (params/blocks/...)
    remat_policy: str = "none"  # REMAT_POLICIES: what each block keeps for the backward pass

    def __post_init__(self) -> None:
        if isinstance(self.backbone, dict):  # from JSON: the frozen config holds the dataclass
            object.__setattr__(self, "backbone", backbone_from_dict(self.backbone))
        if self.global_pool not in GLOBAL_POOLS:
            raise ValueError(f"global_pool={self.global_pool!r}: expected one of {GLOBAL_POOLS}")
        if self.act_layer not in ACT_LAYERS:
            raise ValueError(f"act_layer={self.act_layer!r}: expected one of {ACT_LAYERS}")
        if self.norm_layer not in NORM_LAYERS:
            raise ValueError(f"norm_layer={self.norm_layer!r}: expected one of {NORM_LAYERS}")
        if self.attn_impl not in ATTN_IMPLS:
            raise ValueError(f"attn_impl={self.attn_impl!r}: expected one of {ATTN_IMPLS}")
        if self.dense_impl not in DENSE_IMPLS:
            raise ValueError(f"dense_impl={self.dense_impl!r}: expected one of {DENSE_IMPLS}")
        if self.pos_embed not in ("learn", "none", ""):
            raise ValueError(f"pos_embed={self.pos_embed!r}: expected 'learn' or 'none'")
        if self.global_pool == "token" and not self.class_token:
            raise ValueError("global_pool='token' needs class_token=True")
        if self.distilled and (self.global_pool != "token" or self.reg_tokens):
            raise ValueError("distilled models need global_pool='token' and no reg_tokens")
        if self.embed_dim % self.num_heads:
            raise ValueError(
                f"embed_dim={self.embed_dim} is not divisible by num_heads={self.num_heads}"
            )
        for name in ("img_size", "patch_size", "in_chans", "embed_dim", "depth", "num_heads"):
            if min(to_2tuple(getattr(self, name))) <= 0:
                raise ValueError(f"{name}={getattr(self, name)!r} must be positive")
        self._check_block_options()
        self._check_embed_options()
        self._check_scan_options()

    def _check_scan_options(self) -> None:
        """scan_blocks needs identical blocks: the plain Block with standard attention."""
        if not isinstance(self.scan_blocks, bool):
            raise ValueError(f"scan_blocks={self.scan_blocks!r}: expected True or False")
        if self.remat_policy not in REMAT_POLICIES:
            raise ValueError(
                f"remat_policy={self.remat_policy!r}: expected one of {REMAT_POLICIES}"
            )
        if self.scan_blocks and (self.block_fn, self.attn_layer) != ("Block", "attn"):
            raise ValueError(
                f"scan_blocks=True needs block_fn='Block' and attn_layer='attn', not "
                f"block_fn={self.block_fn!r}, attn_layer={self.attn_layer!r} (those blocks differ "
                "by index or take their own drop-path rate; use scan_blocks=False)"
            )

    def _check_embed_options(self) -> None:
        """A backbone's feature map must tile into patches, and feed embed_dim without proj."""
        if self.backbone is None:
            if not self.embed_proj:
                raise ValueError("embed_proj=False needs a backbone (HybridEmbed)")
            return
        if not isinstance(self.backbone, (ResNetV2Config, ResNetConfig, ConvStemConfig)):
            raise ValueError(f"backbone={self.backbone!r}: expected a backbone config")
        if self.embed_norm:
            raise ValueError("embed_norm=True with a backbone (timm's HybridEmbed has no norm)")
        (fh, fw), dim = self.backbone.feature_info(self.img_size)
        (ph, pw) = to_2tuple(self.patch_size)
        if min(fh, fw) <= 0:
            raise ValueError(f"img_size={self.img_size!r} is too small for the backbone")
        if not self.dynamic_img_pad and (fh % ph or fw % pw):
            raise ValueError(
                f"the backbone's feature map {(fh, fw)} is not divisible by patch_size {(ph, pw)} "
                "(timm asserts this unless dynamic_img_pad=True)"
            )
        if not self.embed_proj and dim != self.embed_dim:
            raise ValueError(
                f"embed_proj=False needs the backbone width ({dim}) equal to embed_dim "
                f"({self.embed_dim})"
            )

    def _check_block_options(self) -> None:
        """One config per model: options a block type does not use stay at their defaults."""
        for name, allowed in (
            ("block_fn", BLOCK_FNS), ("attn_layer", ATTN_LAYERS), ("mlp_layer", MLP_LAYERS)
        ):  # fmt: skip
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}={getattr(self, name)!r}: expected one of {allowed}")
        block = self.block_fn
        if block in _PARALLEL_SCALING and (self.attn_layer, self.mlp_layer) != ("attn", "mlp"):
            raise ValueError(f"{block} has its own attention and MLP: no attn_layer / mlp_layer")
        if self.fuse_out_proj and block != "ParallelScalingBlock":
            raise ValueError("fuse_out_proj=True needs block_fn='ParallelScalingBlock'")
        if self.num_parallel != 2 and block != "ParallelThingsBlock":
            raise ValueError("num_parallel needs block_fn='ParallelThingsBlock'")
        if self.num_parallel < 1:
            raise ValueError(f"num_parallel={self.num_parallel} must be positive")
        if self.uses_diff_attention:
            if self.embed_dim % (2 * self.num_heads):
                raise ValueError(
                    f"differential attention needs embed_dim={self.embed_dim} divisible by "
                    f"2 * num_heads={2 * self.num_heads}"
                )
        elif self.dual_lambda:
            raise ValueError("dual_lambda=True needs attn_layer='diff' or DiffParallelScalingBlock")
        if self.mlp_layer in ("glu", "swiglu_packed") and self.mlp_hidden % 2:
            raise ValueError(f"mlp_layer={self.mlp_layer!r} needs an even MLP width")
        if self.attn_scale is not None and (block, self.attn_layer) != ("Block", "attn"):
            raise ValueError("attn_scale needs block_fn='Block' with attn_layer='attn'")

    @property
    def uses_diff_attention(self) -> bool:
        return self.attn_layer == "diff" or self.block_fn == "DiffParallelScalingBlock"

    @property
    def is_plain(self) -> bool:
        """True for PatchEmbed and the plain ViT block (Block, Attention, Mlp): what vittorch
        builds."""
        plain = (self.block_fn, self.attn_layer, self.mlp_layer) == ("Block", "attn", "mlp")
        return plain and self.backbone is None

    def require_plain(self, who: str = "vittorch") -> None:
        """Raise a ValueError naming the options of a config that is not the plain ViT."""
        plain = {"block_fn": "Block", "attn_layer": "attn", "mlp_layer": "mlp", "backbone": None}
        bad = {k: getattr(self, k) for k, v in plain.items() if getattr(self, k) != v}
        if bad:
            opts = ", ".join(f"{k}={v!r}" for k, v in bad.items())
            raise ValueError(f"{who} builds the plain ViT block only, not {opts} (use vitjax)")

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def mlp_hidden(self) -> int:
        return int(self.embed_dim * self.mlp_ratio)

    @property
    def grid_size(self) -> tuple[int, int]:
        (h, w), (ph, pw) = to_2tuple(self.img_size), to_2tuple(self.patch_size)
        if self.backbone is not None:  # HybridEmbed: patches of the backbone's feature map
            (h, w), _ = self.backbone.feature_info(self.img_size)
        return h // ph, w // pw  # floor, as timm's PatchEmbed (also with dynamic_img_pad)

    @property
    def num_patches(self) -> int:
        gh, gw = self.grid_size
        return gh * gw

    @property
    def num_prefix_tokens(self) -> int:
        return int(self.class_token) + int(self.distilled) + self.reg_tokens

    @property
    def use_fc_norm(self) -> bool:
        if self.fc_norm is None:
            return self.global_pool in ("avg", "max", "avgmax")
        return self.fc_norm

    @property
    def has_pos_embed(self) -> bool:
        return self.pos_embed == "learn"

    @property
    def embed_len(self) -> int:
        return self.num_patches + (0 if self.no_embed_class else self.num_prefix_tokens)

    @property
    def scale(self) -> float:
        return self.head_dim**-0.5 if self.attn_scale is None else self.attn_scale

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of every field."""
        d = dataclasses.asdict(self)
        for k in ("img_size", "patch_size"):
            if isinstance(d[k], tuple):
                d[k] = list(d[k])
        if self.backbone is not None:  # asdict drops the kind; the dict names it
            d["backbone"] = backbone_to_dict(self.backbone)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ViTConfig:
        """Inverse of to_dict; unknown keys are an error naming them."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown ViTConfig fields: {unknown}")
        d = dict(d)
        for k in ("img_size", "patch_size"):
            if isinstance(d.get(k), list):
                d[k] = tuple(d[k])
        return cls(**d)


# fmt: off
# timm size words -> (embed_dim, depth, num_heads, MLP hidden width).
_SIZES: dict[str, tuple[int, int, int, int]] = {
    "tiny": (192, 12, 3, 768), "xsmall": (256, 10, 4, 1024), "wee": (256, 14, 4, 1280),
    "little": (320, 14, 5, 1792), "small": (384, 12, 6, 1536), "medium": (512, 12, 8, 2048),
    "mediumd": (512, 20, 8, 2048), "betwixt": (640, 12, 10, 2560), "base": (768, 12, 12, 3072),
    "so150m2": (832, 21, 13, 2176), "base_plus": (896, 12, 14, 3584),
    "so150m": (896, 18, 14, 2304), "large": (1024, 24, 16, 4096), "so400m": (1152, 27, 16, 4304),
    "huge": (1280, 32, 16, 5120), "giant": (1408, 40, 16, 6144), "giantopt": (1536, 40, 16, 6144),
    "gigantic": (1664, 48, 16, 8192),
}

# Option families, named after the timm models that share them.
_CLIP = dict(pre_norm=True, norm_eps=1e-5)  # OpenAI / OpenCLIP image towers
_QUICKGELU = dict(act_layer="quick_gelu")
_GELU_TANH = dict(act_layer="gelu_tanh")
_SIGLIP = dict(class_token=False, global_pool="map", num_classes=0)  # attention-pool (MAP) head
_SIGLIP_GAP = dict(class_token=False, global_pool="avg", fc_norm=False, num_classes=0)
_GAP = dict(class_token=False, global_pool="avg", fc_norm=False)
_REG_GAP = dict(class_token=False, no_embed_class=True, global_pool="avg", init_values=1e-5)
_SO150M2 = dict(class_token=False, global_pool="avg", qkv_bias=False, init_values=1e-5,
                reg_tokens=1)
_DEIT3 = dict(no_embed_class=True, init_values=1e-6)
_DINOV2 = dict(init_values=1e-5, num_classes=0)
_TIPSV2 = dict(init_values=1.0, no_embed_class=True, reg_tokens=1, num_classes=0)
_RADIO = dict(no_embed_class=True, final_norm=False, num_classes=0)
_XP = dict(pre_norm=True, no_embed_class=True, norm_layer="rmsnorm", qkv_bias=False, qk_norm=True,
           block_fn="ParallelScalingBlock")  # ViT-22B style parallel blocks
_SWIGLU_PACKED = dict(mlp_layer="swiglu_packed", act_layer="silu")  # GluMlp, gate first
# Hybrid backbones, as vision_transformer_hybrid builds them.
_R_STEM = ResNetV2Config(layers=())
_R26 = ResNetV2Config(layers=(2, 2, 2, 2))
_R50_S16 = ResNetV2Config(layers=(3, 4, 9), channels=(256, 512, 1024))
_R50_S32 = ResNetV2Config(layers=(3, 4, 6, 3))
_RESNET26D = ResNetConfig(layers=(2, 2, 2, 2))
_RESNET50D = ResNetConfig(layers=(3, 4, 6, 3))
_RESNET50D_S16 = ResNetConfig(layers=(3, 4, 6), channels=(64, 128, 256), out_indices=(3,))
_MCI_STEM = ConvStemConfig((192, 192, 768), (4, 2, 2), (4, 2, 2), (0, 0, 0), "gelu")
_TUTORIAL = dict(qkv_bias=False, norm_eps=1e-5, embed_dim=384, depth=7, num_heads=8, mlp_ratio=4.0)


def _m(
    name: str, size: str | tuple[int, int, int, int], patch: int, img: int, *families: dict,
    **kw: Any,
) -> tuple[str, dict[str, Any]]:
    """One VARIANTS row: size word (or tuple), patch, image size, option families, extras."""
    dim, depth, heads, hidden = _SIZES[size] if isinstance(size, str) else size
    cfg = dict(img_size=img, patch_size=patch, embed_dim=dim, depth=depth, num_heads=heads,
               mlp_ratio=mlp_ratio_for(dim, hidden))
    for family in families:
        cfg.update(family)
    return name, {**cfg, **kw}


# timm model name -> ViTConfig kwargs; num_classes is that of timm's default pretrained weights.
# Each row equals config_from_timm(timm.create_model(name)) (parity_tests/test_timm_variants.py).
VARIANTS: dict[str, dict[str, Any]] = dict([
    # The tutorial notebook's architecture (qkv without bias, LayerNorm eps 1e-5).
    ("vit_tutorial_patch28_224", dict(_TUTORIAL, img_size=224, patch_size=28, num_classes=2)),
    ("vit_tutorial_patch16_32", dict(_TUTORIAL, img_size=32, patch_size=16, num_classes=10)),
    # Original ViT / AugReg (Google), MIIL, SAM, DINO, ...
    _m("vit_tiny_patch16_224", "tiny", 16, 224),
    _m("vit_tiny_patch16_384", "tiny", 16, 384),
    _m("vit_small_patch32_224", "small", 32, 224),
    _m("vit_small_patch32_384", "small", 32, 384),
    _m("vit_small_patch16_224", "small", 16, 224),
    _m("vit_small_patch16_384", "small", 16, 384),
    _m("vit_small_patch8_224", "small", 8, 224, num_classes=0),
    _m("vit_small_patch16_36x1_224", (384, 36, 6, 1536), 16, 224, init_values=1e-5),
    _m("vit_small_patch16_18x2_224", (384, 18, 6, 1536), 16, 224, init_values=1e-5,
       block_fn="ParallelThingsBlock"),
    _m("vit_base_patch16_18x2_224", (768, 18, 12, 3072), 16, 224, init_values=1e-5,
       block_fn="ParallelThingsBlock"),
    _m("vit_base_patch16_rpn_224", "base", 16, 224, qkv_bias=False, init_values=1e-5,
       class_token=False, global_pool="avg", block_fn="ResPostBlock"),
    _m("vit_base_patch16_xp_224", "base", 16, 224, _XP),
    _m("vit_large_patch14_xp_224", "large", 14, 224, _XP),
    _m("vit_huge_patch14_xp_224", "huge", 14, 224, _XP),
    _m("vit_base_patch32_224", "base", 32, 224),
    _m("vit_base_patch32_384", "base", 32, 384),
    _m("vit_base_patch16_224", "base", 16, 224),
    _m("vit_base_patch16_384", "base", 16, 384),
    _m("vit_base_patch8_224", "base", 8, 224),
    _m("vit_base_patch16_224_miil", "base", 16, 224, num_classes=11221, qkv_bias=False),
    _m("vit_base_patch16_plus_240", "base_plus", 16, 240, init_values=1e-5),
    _m("vit_base_patch32_plus_256", "base_plus", 32, 256, init_values=1e-5),
    _m("vit_large_patch32_224", "large", 32, 224, num_classes=0),
    _m("vit_large_patch32_384", "large", 32, 384),
    _m("vit_large_patch16_224", "large", 16, 224),
    _m("vit_large_patch16_384", "large", 16, 384),
    _m("vit_large_patch14_224", "large", 14, 224),
    _m("eva_large_patch14_196", "large", 14, 196, global_pool="avg"),  # EVA-01 (MIM), timm ViT
    _m("eva_large_patch14_336", "large", 14, 336, global_pool="avg"),
    _m("vit_huge_patch14_224", "huge", 14, 224, num_classes=0),
    _m("vit_giant_patch14_224", "giant", 14, 224),
    _m("vit_gigantic_patch14_224", "gigantic", 14, 224),
    # DeiT, DeiT distilled (dist_token + head_dist), DeiT-3 (LayerScale, no_embed_class).
    _m("deit_tiny_patch16_224", "tiny", 16, 224),
    _m("deit_small_patch16_224", "small", 16, 224),
    _m("deit_base_patch16_224", "base", 16, 224),
    _m("deit_base_patch16_384", "base", 16, 384),
    _m("deit_tiny_distilled_patch16_224", "tiny", 16, 224, distilled=True),
    _m("deit_small_distilled_patch16_224", "small", 16, 224, distilled=True),
    _m("deit_base_distilled_patch16_224", "base", 16, 224, distilled=True),
    _m("deit_base_distilled_patch16_384", "base", 16, 384, distilled=True),
    _m("deit3_small_patch16_224", "small", 16, 224, _DEIT3),
    _m("deit3_small_patch16_384", "small", 16, 384, _DEIT3),
    _m("deit3_medium_patch16_224", "medium", 16, 224, _DEIT3),
    _m("deit3_base_patch16_224", "base", 16, 224, _DEIT3),
    _m("deit3_base_patch16_384", "base", 16, 384, _DEIT3),
    _m("deit3_large_patch16_224", "large", 16, 224, _DEIT3),
    _m("deit3_large_patch16_384", "large", 16, 384, _DEIT3),
    _m("deit3_huge_patch14_224", "huge", 14, 224, _DEIT3),
    # CLIP image towers (OpenAI, LAION, DFN, MetaCLIP, ...): norm_pre, eps 1e-5, QuickGELU.
    _m("vit_xsmall_patch16_clip_224", "xsmall", 16, 224, _CLIP, num_classes=512),
    _m("vit_medium_patch32_clip_224", "medium", 32, 224, _CLIP, num_classes=512),
    _m("vit_medium_patch16_clip_224", "medium", 16, 224, _CLIP, num_classes=512),
    _m("vit_betwixt_patch32_clip_224", "betwixt", 32, 224, _CLIP, num_classes=512),
    _m("vit_base_patch32_clip_224", "base", 32, 224, _CLIP),
    _m("vit_base_patch32_clip_256", "base", 32, 256, _CLIP, num_classes=512),
    _m("vit_base_patch32_clip_384", "base", 32, 384, _CLIP),
    _m("vit_base_patch32_clip_448", "base", 32, 448, _CLIP),
    _m("vit_base_patch16_clip_224", "base", 16, 224, _CLIP),
    _m("vit_base_patch16_clip_384", "base", 16, 384, _CLIP),
    _m("vit_base_patch16_plus_clip_240", "base_plus", 16, 240, _CLIP, num_classes=640),
    _m("vit_large_patch14_clip_224", "large", 14, 224, _CLIP),
    _m("vit_large_patch14_clip_336", "large", 14, 336, _CLIP),
    _m("vit_huge_patch14_clip_224", "huge", 14, 224, _CLIP),
    _m("vit_huge_patch14_clip_336", "huge", 14, 336, _CLIP),
    _m("vit_huge_patch14_clip_378", "huge", 14, 378, _CLIP, num_classes=1024),
    _m("vit_giant_patch14_clip_224", "giant", 14, 224, _CLIP, num_classes=1024),
    _m("vit_gigantic_patch14_clip_224", "gigantic", 14, 224, _CLIP, num_classes=1280),
    _m("vit_gigantic_patch14_clip_378", "gigantic", 14, 378, _CLIP, num_classes=1280),
    _m("vit_base_patch32_clip_quickgelu_224", "base", 32, 224, _CLIP, _QUICKGELU, num_classes=512),
    _m("vit_base_patch16_clip_quickgelu_224", "base", 16, 224, _CLIP, _QUICKGELU, num_classes=512),
    _m("vit_large_patch14_clip_quickgelu_224", "large", 14, 224, _CLIP, _QUICKGELU,
       num_classes=768),
    _m("vit_large_patch14_clip_quickgelu_336", "large", 14, 336, _CLIP, _QUICKGELU,
       num_classes=768),
    _m("vit_huge_patch14_clip_quickgelu_224", "huge", 14, 224, _CLIP, _QUICKGELU, num_classes=1024),
    _m("vit_huge_patch14_clip_quickgelu_378", "huge", 14, 378, _CLIP, _QUICKGELU, num_classes=1024),
    _m("vit_gigantic_patch14_clip_quickgelu_224", "gigantic", 14, 224, _CLIP, _QUICKGELU,
       num_classes=1280),
    # SigLIP / SigLIP-2 image towers: no class token, MAP head ('map') or average pooling.
    _m("vit_base_patch16_siglip_224", "base", 16, 224, _SIGLIP),
    _m("vit_base_patch16_siglip_256", "base", 16, 256, _SIGLIP),
    _m("vit_base_patch16_siglip_384", "base", 16, 384, _SIGLIP),
    _m("vit_base_patch16_siglip_512", "base", 16, 512, _SIGLIP),
    _m("vit_base_patch32_siglip_256", "base", 32, 256, _SIGLIP, _GELU_TANH),
    _m("vit_large_patch16_siglip_256", "large", 16, 256, _SIGLIP),
    _m("vit_large_patch16_siglip_384", "large", 16, 384, _SIGLIP),
    _m("vit_large_patch16_siglip_512", "large", 16, 512, _SIGLIP, _GELU_TANH),
    _m("vit_so400m_patch14_siglip_224", "so400m", 14, 224, _SIGLIP),
    _m("vit_so400m_patch14_siglip_378", "so400m", 14, 378, _SIGLIP),
    _m("vit_so400m_patch14_siglip_384", "so400m", 14, 384, _SIGLIP),
    _m("vit_so400m_patch16_siglip_256", "so400m", 16, 256, _SIGLIP, _GELU_TANH),
    _m("vit_so400m_patch16_siglip_384", "so400m", 16, 384, _SIGLIP, _GELU_TANH),
    _m("vit_so400m_patch16_siglip_512", "so400m", 16, 512, _SIGLIP, _GELU_TANH),
    _m("vit_giantopt_patch16_siglip_256", "giantopt", 16, 256, _SIGLIP, _GELU_TANH),
    _m("vit_giantopt_patch16_siglip_384", "giantopt", 16, 384, _SIGLIP, _GELU_TANH),
    _m("vit_base_patch16_siglip_gap_224", "base", 16, 224, _SIGLIP_GAP),
    _m("vit_base_patch16_siglip_gap_256", "base", 16, 256, _SIGLIP_GAP),
    _m("vit_base_patch16_siglip_gap_384", "base", 16, 384, _SIGLIP_GAP),
    _m("vit_base_patch16_siglip_gap_512", "base", 16, 512, _SIGLIP_GAP),
    _m("vit_base_patch32_siglip_gap_256", "base", 32, 256, _SIGLIP_GAP, _GELU_TANH),
    _m("vit_large_patch16_siglip_gap_256", "large", 16, 256, _SIGLIP_GAP),
    _m("vit_large_patch16_siglip_gap_384", "large", 16, 384, _SIGLIP_GAP),
    _m("vit_large_patch16_siglip_gap_512", "large", 16, 512, _SIGLIP_GAP, _GELU_TANH),
    _m("vit_so400m_patch14_siglip_gap_224", "so400m", 14, 224, _SIGLIP_GAP),
    _m("vit_so400m_patch14_siglip_gap_378", "so400m", 14, 378, _SIGLIP_GAP),
    _m("vit_so400m_patch14_siglip_gap_384", "so400m", 14, 384, _SIGLIP_GAP),
    _m("vit_so400m_patch14_siglip_gap_448", "so400m", 14, 448, _SIGLIP_GAP),
    _m("vit_so400m_patch14_siglip_gap_896", "so400m", 14, 896, _SIGLIP_GAP),
    _m("vit_so400m_patch16_siglip_gap_256", "so400m", 16, 256, _SIGLIP_GAP, _GELU_TANH),
    _m("vit_so400m_patch16_siglip_gap_384", "so400m", 16, 384, _SIGLIP_GAP, _GELU_TANH),
    _m("vit_so400m_patch16_siglip_gap_512", "so400m", 16, 512, _SIGLIP_GAP, _GELU_TANH),
    _m("vit_giantopt_patch16_siglip_gap_256", "giantopt", 16, 256, _SIGLIP_GAP, _GELU_TANH),
    _m("vit_giantopt_patch16_siglip_gap_384", "giantopt", 16, 384, _SIGLIP_GAP, _GELU_TANH),
    # Global-average-pool models (Big Vision / JAX and timm's own).
    _m("vit_base_patch16_gap_224", (768, 12, 16, 3072), 16, 224, _GAP),
    _m("vit_huge_patch14_gap_224", "huge", 14, 224, _SIGLIP_GAP),
    _m("vit_huge_patch16_gap_448", "huge", 16, 448, _SIGLIP_GAP),
    _m("vit_giant_patch16_gap_224", "giant", 16, 224, _SIGLIP_GAP),
    _m("vit_medium_patch16_gap_240", "medium", 16, 240, _GAP, num_classes=11821, qkv_bias=False,
       init_values=1e-6),
    _m("vit_medium_patch16_gap_256", "medium", 16, 256, _GAP, qkv_bias=False, init_values=1e-6),
    _m("vit_medium_patch16_gap_384", "medium", 16, 384, _GAP, qkv_bias=False, init_values=1e-6),
    _m("vit_betwixt_patch16_gap_256", "betwixt", 16, 256, _GAP, qkv_bias=False, init_values=1e-6),
    # Register tokens (order [cls, reg..., patches]) with average pooling.
    _m("vit_wee_patch16_reg1_gap_256", "wee", 16, 256, _REG_GAP, reg_tokens=1),
    _m("vit_dwee_patch16_reg1_gap_256", "wee", 16, 256, _REG_GAP, reg_tokens=1, attn_layer="diff"),
    _m("vit_pwee_patch16_reg1_gap_256", (256, 16, 4, 1280), 16, 256, _REG_GAP, reg_tokens=1,
       block_fn="ParallelScalingBlock"),
    _m("vit_dpwee_patch16_reg1_gap_256", (256, 16, 4, 1280), 16, 256, _REG_GAP, reg_tokens=1,
       block_fn="DiffParallelScalingBlock"),
    _m("vit_little_patch16_reg1_gap_256", "little", 16, 256, _REG_GAP, reg_tokens=1),
    _m("vit_dlittle_patch16_reg1_gap_256", "little", 16, 256, _REG_GAP, reg_tokens=1,
       attn_layer="diff"),
    _m("vit_little_patch16_reg4_gap_256", "little", 16, 256, _REG_GAP, reg_tokens=4),
    _m("vit_medium_patch16_reg1_gap_256", "medium", 16, 256, _REG_GAP, reg_tokens=1),
    _m("vit_medium_patch16_reg4_gap_256", "medium", 16, 256, _REG_GAP, reg_tokens=4),
    _m("vit_mediumd_patch16_reg4_gap_256", "mediumd", 16, 256, _REG_GAP, reg_tokens=4),
    _m("vit_mediumd_patch16_reg4_gap_384", "mediumd", 16, 384, _REG_GAP, reg_tokens=4),
    _m("vit_betwixt_patch16_reg1_gap_256", "betwixt", 16, 256, _REG_GAP, reg_tokens=1),
    _m("vit_betwixt_patch16_reg4_gap_256", "betwixt", 16, 256, _REG_GAP, reg_tokens=4),
    _m("vit_betwixt_patch16_reg4_gap_384", "betwixt", 16, 384, _REG_GAP, reg_tokens=4),
    _m("vit_base_patch16_reg4_gap_256", "base", 16, 256, _REG_GAP, reg_tokens=4, init_values=None),
    _m("vit_so150m_patch16_reg4_gap_256", "so150m", 16, 256, _GAP, reg_tokens=4),
    _m("vit_so150m_patch16_reg4_gap_384", "so150m", 16, 384, _GAP, reg_tokens=4),
    _m("vit_so150m_patch16_reg4_map_256", "so150m", 16, 256, class_token=False, global_pool="map",
       reg_tokens=4),
    _m("vit_so150m2_patch16_reg1_gap_256", "so150m2", 16, 256, _SO150M2),
    _m("vit_so150m2_patch16_reg1_gap_384", "so150m2", 16, 384, _SO150M2),
    _m("vit_so150m2_patch16_reg1_gap_448", "so150m2", 16, 448, _SO150M2),
    # DINOv2 (518 px, LayerScale; registers with no_embed_class) and TIPSv2.
    _m("vit_small_patch14_dinov2", "small", 14, 518, _DINOV2),
    _m("vit_base_patch14_dinov2", "base", 14, 518, _DINOV2),
    _m("vit_large_patch14_dinov2", "large", 14, 518, _DINOV2),
    _m("vit_giant_patch14_dinov2", (1536, 40, 24, 8192), 14, 518, _DINOV2, _SWIGLU_PACKED),
    _m("vit_small_patch14_reg4_dinov2", "small", 14, 518, _DINOV2, no_embed_class=True,
       reg_tokens=4),
    _m("vit_base_patch14_reg4_dinov2", "base", 14, 518, _DINOV2, no_embed_class=True, reg_tokens=4),
    _m("vit_large_patch14_reg4_dinov2", "large", 14, 518, _DINOV2, no_embed_class=True,
       reg_tokens=4),
    _m("vit_giant_patch14_reg4_dinov2", (1536, 40, 24, 8192), 14, 518, _DINOV2, _SWIGLU_PACKED,
       no_embed_class=True, reg_tokens=4),
    _m("vit_base_patch14_reg1_tipsv2", "base", 14, 448, _TIPSV2),
    _m("vit_large_patch14_reg1_tipsv2", "large", 14, 448, _TIPSV2),
    _m("vit_so400m_patch14_reg1_tipsv2", "so400m", 14, 448, _TIPSV2),
    _m("vit_giant_patch14_reg1_tipsv2", (1536, 40, 24, 8192), 14, 448, _TIPSV2, _SWIGLU_PACKED),
    # NVIDIA C-RADIO backbones (model only; RADIO-format checkpoints load through timm) and
    # InternViT-300M.
    _m("vit_base_patch16_radio_v3", "base", 16, 512, _RADIO, reg_tokens=7, init_values=1e-5),
    _m("vit_large_patch16_radio_v3", "large", 16, 512, _RADIO, reg_tokens=7, init_values=1e-5),
    _m("vit_huge_patch16_radio_v3", "huge", 16, 512, _RADIO, reg_tokens=7),
    _m("vit_giant_patch16_radio_v3", (1536, 40, 24, 6144), 16, 512, _RADIO, reg_tokens=7),
    _m("vit_so400m_patch16_radio_v4", "so400m", 16, 512, _RADIO, reg_tokens=9),
    _m("vit_huge_patch16_radio_v4", "huge", 16, 512, _RADIO, reg_tokens=9),
    _m("vit_intern300m_patch14_448", "large", 14, 448, num_classes=0, init_values=0.1,
       final_norm=False, dynamic_img_size=True),
    # Hybrids (timm's vision_transformer_hybrid): a CNN stem's feature map, patch_size 1 unless
    # given. ResNetV2 with StdConv + GroupNorm (BiT; layers=() is its stem alone), ResNet-D with
    # BatchNorm, MobileCLIP's ConvStem (BatchNorm, GELU) feeding the blocks without a projection.
    _m("vit_tiny_r_s16_p8_224", "tiny", 8, 224, backbone=_R_STEM),
    _m("vit_tiny_r_s16_p8_384", "tiny", 8, 384, backbone=_R_STEM),
    _m("vit_small_r26_s32_224", "small", 1, 224, backbone=_R26),
    _m("vit_small_r26_s32_384", "small", 1, 384, backbone=_R26),
    _m("vit_base_r26_s32_224", "base", 1, 224, backbone=_R26),
    _m("vit_base_r50_s16_224", "base", 1, 224, backbone=_R50_S16, num_classes=0),
    _m("vit_base_r50_s16_384", "base", 1, 384, backbone=_R50_S16),
    _m("vit_large_r50_s32_224", "large", 1, 224, backbone=_R50_S32),
    _m("vit_large_r50_s32_384", "large", 1, 384, backbone=_R50_S32),
    _m("vit_small_resnet26d_224", (768, 8, 8, 2304), 1, 224, backbone=_RESNET26D),
    _m("vit_small_resnet50d_s16_224", (768, 8, 8, 2304), 1, 224, backbone=_RESNET50D_S16),
    _m("vit_base_resnet26d_224", "base", 1, 224, backbone=_RESNET26D),
    _m("vit_base_resnet50d_224", "base", 1, 224, backbone=_RESNET50D),
    _m("vit_base_mci_224", "base", 1, 224, backbone=_MCI_STEM, embed_proj=False,
       no_embed_class=True, num_classes=512),
    # timm's test models.
    _m("test_vit", (64, 6, 2, 192), 16, 160, dynamic_img_size=True),
    _m("test_vit2", (64, 8, 2, 192), 16, 160, class_token=False, reg_tokens=1, global_pool="avg",
       init_values=1e-5, dynamic_img_size=True),
    _m("test_vit3", (96, 9, 3, 192), 16, 160, class_token=False, reg_tokens=1, global_pool="map",
       pool_include_prefix=True, init_values=1e-5),
    _m("test_vit4", (96, 9, 3, 288), 16, 160, class_token=False, reg_tokens=1, global_pool="avg",
       init_values=1e-5, dynamic_img_size=True, norm_layer="rmsnorm"),
])
# fmt: on
CONFIG = ViTConfig
