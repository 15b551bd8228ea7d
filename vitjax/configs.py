"""Model configs: one frozen dataclass with timm's option names, and VARIANTS (name -> kwargs).

Pure Python (no jax, no torch): vittorch reads the same table, so both frameworks build the same
model from the same name.
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
from dataclasses import dataclass
from typing import Any

GLOBAL_POOLS = ("", "token", "avg", "max", "avgmax", "map")
ACT_LAYERS = ("gelu", "gelu_tanh", "quick_gelu")
NORM_LAYERS = ("layernorm", "rmsnorm")


def to_2tuple(x: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    """Return (x, x) for an int, the pair itself otherwise."""
    if isinstance(x, (tuple, list)):
        a, b = x
        return int(a), int(b)
    return int(x), int(x)


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
    attn_scale: float | None = None
    distilled: bool = False

    def __post_init__(self) -> None:
        if self.global_pool not in GLOBAL_POOLS:
            raise ValueError(f"global_pool={self.global_pool!r}: expected one of {GLOBAL_POOLS}")
        if self.act_layer not in ACT_LAYERS:
            raise ValueError(f"act_layer={self.act_layer!r}: expected one of {ACT_LAYERS}")
        if self.norm_layer not in NORM_LAYERS:
            raise ValueError(f"norm_layer={self.norm_layer!r}: expected one of {NORM_LAYERS}")
        if self.pos_embed not in ("learn", "none", ""):
            raise ValueError(f"pos_embed={self.pos_embed!r}: expected 'learn' or 'none'")
        if self.global_pool == "token" and not self.class_token:
            raise ValueError("global_pool='token' needs class_token=True")
        if self.distilled and (self.global_pool != "token" or self.reg_tokens):
            raise ValueError("distilled models need global_pool='token' and no reg_tokens")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim={self.embed_dim} is not divisible by num_heads={self.num_heads}")
        for name in ("img_size", "patch_size", "in_chans", "embed_dim", "depth", "num_heads"):
            if min(to_2tuple(getattr(self, name))) <= 0:
                raise ValueError(f"{name}={getattr(self, name)!r} must be positive")

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def mlp_hidden(self) -> int:
        return int(self.embed_dim * self.mlp_ratio)

    @property
    def grid_size(self) -> tuple[int, int]:
        (h, w), (ph, pw) = to_2tuple(self.img_size), to_2tuple(self.patch_size)
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


def _vit(patch: int, dim: int, depth: int, heads: int, img: int = 224, **kw: Any) -> dict:
    return dict(patch_size=patch, embed_dim=dim, depth=depth, num_heads=heads, img_size=img, **kw)


_TI, _S, _B, _L = (192, 12, 3), (384, 12, 6), (768, 12, 12), (1024, 24, 16)
_TUTORIAL = dict(qkv_bias=False, norm_eps=1e-5, embed_dim=384, depth=7, num_heads=8, mlp_ratio=4.0)

# timm model name -> ViTConfig kwargs (pretrained weights' num_classes where timm's default differs).
VARIANTS: dict[str, dict[str, Any]] = {
    # The tutorial notebook's architecture (qkv without bias, LayerNorm eps 1e-5).
    "vit_tutorial_patch28_224": dict(_TUTORIAL, img_size=224, patch_size=28, num_classes=2),
    "vit_tutorial_patch16_32": dict(_TUTORIAL, img_size=32, patch_size=16, num_classes=10),
    "vit_tiny_patch16_224": _vit(16, *_TI),
    "vit_tiny_patch16_384": _vit(16, *_TI, img=384),
    "vit_small_patch32_224": _vit(32, *_S),
    "vit_small_patch32_384": _vit(32, *_S, img=384),
    "vit_small_patch16_224": _vit(16, *_S),
    "vit_small_patch16_384": _vit(16, *_S, img=384),
    "vit_small_patch8_224": _vit(8, *_S),
    "vit_base_patch32_224": _vit(32, *_B),
    "vit_base_patch32_384": _vit(32, *_B, img=384),
    "vit_base_patch16_224": _vit(16, *_B),
    "vit_base_patch16_384": _vit(16, *_B, img=384),
    "vit_base_patch8_224": _vit(8, *_B),
    "vit_large_patch32_224": _vit(32, *_L),
    "vit_large_patch32_384": _vit(32, *_L, img=384),
    "vit_large_patch16_224": _vit(16, *_L),
    "vit_large_patch16_384": _vit(16, *_L, img=384),
    "vit_large_patch14_224": _vit(14, *_L),
}


def list_models(pattern: str = "*") -> list[str]:
    """Sorted names in VARIANTS matching a shell-style pattern."""
    return sorted(n for n in VARIANTS if fnmatch.fnmatch(n, pattern))


def get_config(name: str, **overrides: Any) -> ViTConfig:
    """ViTConfig for a model name with keyword overrides (num_classes=2, img_size=384, ...)."""
    if name not in VARIANTS:
        close = difflib.get_close_matches(name, VARIANTS, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown model name {name!r}{hint} (see vitjax.list_models())")
    return ViTConfig(**{**VARIANTS[name], **overrides})
