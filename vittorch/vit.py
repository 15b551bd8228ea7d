"""A Vision Transformer in PyTorch, from scratch, with timm's module names and forward order.

Any timm ``VisionTransformer`` state_dict whose options are covered by ``ViTConfig`` loads into
this model with ``strict=True``; vitjax/vit.py is the same model in Flax, class for class.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vitjax.models.vit_config import ViTConfig
from vitjax.util import to_2tuple


class QuickGELU(nn.Module):
    """x * sigmoid(1.702 x), as in OpenAI's CLIP."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


def make_act(name: str) -> nn.Module:
    """Activation module by config name."""
    if name == "gelu":
        return nn.GELU()
    if name == "gelu_tanh":
        return nn.GELU(approximate="tanh")
    if name == "quick_gelu":
        return QuickGELU()
    raise ValueError(f"unknown act_layer {name!r}")


class RmsNorm(nn.Module):
    """Root-mean-square norm over the last axis with a learned scale (timm's RmsNorm)."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


def make_norm(cfg: ViTConfig, dim: int) -> nn.Module:
    """Norm layer of the config's kind and eps."""
    if cfg.norm_layer == "rmsnorm":
        return RmsNorm(dim, eps=cfg.norm_eps)
    return nn.LayerNorm(dim, eps=cfg.norm_eps)


def resample_abs_pos_embed(
    posemb: torch.Tensor,
    new_size: tuple[int, int],
    old_size: tuple[int, int],
    num_prefix_tokens: int = 0,
) -> torch.Tensor:
    """Resize (1, prefix + H*W, C) position embeddings to a new grid, bicubic with antialias."""
    if tuple(new_size) == tuple(old_size):
        return posemb
    prefix, grid = posemb[:, :num_prefix_tokens], posemb[:, num_prefix_tokens:]
    C = grid.shape[-1]
    grid = grid.reshape(1, *old_size, C).permute(0, 3, 1, 2)  # (1, C, H, W)
    grid = F.interpolate(grid.float(), size=new_size, mode="bicubic", antialias=True)
    grid = grid.permute(0, 2, 3, 1).reshape(1, -1, C).to(posemb.dtype)  # (1, H'*W', C)
    return torch.cat([prefix, grid], dim=1)


class PatchEmbed(nn.Module):
    """Image to patch tokens with one strided convolution."""

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.img_size = to_2tuple(cfg.img_size)
        self.patch_size = to_2tuple(cfg.patch_size)
        self.grid_size = cfg.grid_size
        self.dynamic = cfg.dynamic_img_size
        self.dynamic_img_pad = cfg.dynamic_img_pad
        self.proj = nn.Conv2d(
            cfg.in_chans, cfg.embed_dim, self.patch_size, self.patch_size, bias=not cfg.pre_norm
        )
        self.norm = make_norm(cfg, cfg.embed_dim) if cfg.embed_norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        (ph, pw) = self.patch_size
        if not self.dynamic and (H, W) != self.img_size:
            raise ValueError(f"input size {(H, W)} does not match the model's {self.img_size}")
        if self.dynamic_img_pad:
            x = F.pad(x, (0, (pw - W % pw) % pw, 0, (ph - H % ph) % ph))
        elif self.dynamic and (H % ph or W % pw):  # fixed sizes floor, like timm
            raise ValueError(f"input size {(H, W)} is not divisible by patch size {(ph, pw)}")
        x = self.proj(x)  # (B, D, gh, gw)
        x = x.permute(0, 2, 3, 1)  # (B, gh, gw, D)
        if not self.dynamic:
            x = x.flatten(1, 2)  # (B, N, D)
        return self.norm(x)


class Attention(nn.Module):
    """Multi-head self-attention with one fused qkv projection."""

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        dim = cfg.embed_dim
        self.num_heads = cfg.num_heads
        self.head_dim = cfg.head_dim
        self.scale = cfg.scale
        self.qkv = nn.Linear(dim, dim * 3, bias=cfg.qkv_bias)
        self.q_norm = make_norm(cfg, self.head_dim) if cfg.qk_norm else nn.Identity()
        self.k_norm = make_norm(cfg, self.head_dim) if cfg.qk_norm else nn.Identity()
        self.attn_drop = cfg.attn_drop_rate
        self.proj = nn.Linear(dim, dim, bias=cfg.proj_bias)
        self.proj_drop = nn.Dropout(cfg.proj_drop_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim)  # (B, N, 3, H, Dh)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (B, H, N, Dh)
        q, k = self.q_norm(q), self.k_norm(k)
        drop = self.attn_drop if self.training else 0.0
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=drop, scale=self.scale)
        x = x.transpose(1, 2).reshape(B, N, C)  # (B, N, H*Dh)
        return self.proj_drop(self.proj(x))


class Mlp(nn.Module):
    """Linear -> activation -> dropout -> Linear -> dropout."""

    def __init__(self, cfg: ViTConfig, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden, bias=cfg.proj_bias)
        self.act = make_act(cfg.act_layer)
        self.drop1 = nn.Dropout(cfg.proj_drop_rate)
        self.fc2 = nn.Linear(hidden, dim, bias=cfg.proj_bias)
        self.drop2 = nn.Dropout(cfg.proj_drop_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))


class LayerScale(nn.Module):
    """Per-channel learned scale (CaiT / DeiT-3)."""

    def __init__(self, dim: int, init_values: float) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init_values)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class DropPath(nn.Module):
    """Stochastic depth: drop whole residual branches per sample while training."""

    def __init__(self, rate: float) -> None:
        super().__init__()
        self.rate = rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(self, cfg: ViTConfig, drop_path: float = 0.0) -> None:
        super().__init__()
        dim = cfg.embed_dim
        self.norm1 = make_norm(cfg, dim)
        self.attn = Attention(cfg)
        self.ls1 = LayerScale(dim, cfg.init_values) if cfg.init_values else nn.Identity()
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = make_norm(cfg, dim)
        self.mlp = Mlp(cfg, dim, cfg.mlp_hidden)
        self.ls2 = LayerScale(dim, cfg.init_values) if cfg.init_values else nn.Identity()
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path1(self.ls1(self.attn(self.norm1(x))))
        x = x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))
        return x


class AttentionPoolLatent(nn.Module):
    """Multi-head attention pooling with one learned latent query (SigLIP's 'map' head)."""

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        dim = cfg.embed_dim
        self.num_heads = cfg.num_heads
        self.head_dim = cfg.head_dim
        self.latent = nn.Parameter(torch.zeros(1, 1, dim))
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, dim * 2)
        self.proj = nn.Linear(dim, dim)
        self.norm = make_norm(cfg, dim)
        self.mlp = Mlp(cfg, dim, cfg.mlp_hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        H, Dh = self.num_heads, self.head_dim
        q = (
            self.q(self.latent.expand(B, -1, -1)).reshape(B, 1, H, Dh).transpose(1, 2)
        )  # (B, H, 1, Dh)
        kv = self.kv(x).reshape(B, N, 2, H, Dh).permute(2, 0, 3, 1, 4)  # (2, B, H, N, Dh)
        k, v = kv.unbind(0)
        x = F.scaled_dot_product_attention(q, k, v)  # (B, H, 1, Dh)
        x = self.proj(x.transpose(1, 2).reshape(B, 1, C))  # (B, 1, C)
        x = x + self.mlp(self.norm(x))
        return x[:, 0]


def _init_weights(module: nn.Module) -> None:
    """timm's default init: truncated normal(0.02) for Linear weights, zero biases."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


class VisionTransformer(nn.Module):
    """ViT: patch embed, prefix tokens + position embedding, blocks, norm, pool, head."""

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        cfg.require_plain("vittorch")  # the reference covers the plain ViT only
        self.cfg = cfg
        dim = cfg.embed_dim
        self.num_prefix_tokens = cfg.num_prefix_tokens
        self.global_pool = cfg.global_pool
        self.patch_embed = PatchEmbed(cfg)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim)) if cfg.class_token else None
        self.reg_token = (
            nn.Parameter(torch.zeros(1, cfg.reg_tokens, dim)) if cfg.reg_tokens else None
        )
        self.dist_token = nn.Parameter(torch.zeros(1, 1, dim)) if cfg.distilled else None
        self.pos_embed = (
            nn.Parameter(torch.zeros(1, cfg.embed_len, dim)) if cfg.has_pos_embed else None
        )
        self.pos_drop = nn.Dropout(cfg.pos_drop_rate)
        self.norm_pre = make_norm(cfg, dim) if cfg.pre_norm else nn.Identity()
        rates = torch.linspace(0, cfg.drop_path_rate, cfg.depth).tolist()
        self.blocks = nn.Sequential(*[Block(cfg, rates[i]) for i in range(cfg.depth)])
        self.norm = make_norm(cfg, dim) if cfg.final_norm and not cfg.use_fc_norm else nn.Identity()
        self.attn_pool = AttentionPoolLatent(cfg) if cfg.global_pool == "map" else None
        self.fc_norm = make_norm(cfg, dim) if cfg.final_norm and cfg.use_fc_norm else nn.Identity()
        self.head_drop = nn.Dropout(cfg.drop_rate)
        self.head = nn.Linear(dim, cfg.num_classes) if cfg.num_classes > 0 else nn.Identity()
        if cfg.distilled:
            self.head_dist = (
                nn.Linear(dim, cfg.num_classes) if cfg.num_classes > 0 else nn.Identity()
            )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """timm's default init (weight_init='')."""
        for p in (self.pos_embed, self.dist_token):
            if p is not None:
                nn.init.trunc_normal_(p, std=0.02)
        for p in (self.cls_token, self.reg_token):
            if p is not None:
                nn.init.normal_(p, std=1e-6)
        if self.attn_pool is not None:
            nn.init.trunc_normal_(self.attn_pool.latent, std=self.cfg.embed_dim**-0.5)
        self.apply(_init_weights)

    def _pos_embed(self, x: torch.Tensor) -> torch.Tensor:
        B = x.shape[0]
        prefix = [
            t.expand(B, -1, -1)
            for t in (self.cls_token, self.dist_token, self.reg_token)
            if t is not None
        ]
        pos_embed = self.pos_embed
        if self.cfg.dynamic_img_size:
            _, gh, gw, C = x.shape
            if pos_embed is not None:
                n_prefix = 0 if self.cfg.no_embed_class else self.num_prefix_tokens
                pos_embed = resample_abs_pos_embed(
                    pos_embed, (gh, gw), self.patch_embed.grid_size, n_prefix
                )
            x = x.reshape(B, gh * gw, C)  # (B, N, C)
        if pos_embed is None:
            return torch.cat(prefix + [x], dim=1)
        if self.cfg.no_embed_class:
            x = torch.cat(prefix + [x + pos_embed], dim=1)
        else:
            x = torch.cat(prefix + [x], dim=1) + pos_embed
        return self.pos_drop(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        x = self._pos_embed(x)
        x = self.norm_pre(x)
        x = self.blocks(x)
        return self.norm(x)

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        if self.attn_pool is not None:
            return self.attn_pool(
                x if self.cfg.pool_include_prefix else x[:, self.num_prefix_tokens :]
            )
        if self.global_pool == "token":
            return x[:, 0]
        if not self.global_pool:
            return x
        x = x if self.cfg.pool_include_prefix else x[:, self.num_prefix_tokens :]
        if self.global_pool == "avg":
            return x.mean(dim=1)
        if self.global_pool == "max":
            return x.amax(dim=1)
        return 0.5 * (x.amax(dim=1) + x.mean(dim=1))  # avgmax

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.cfg.distilled:
            x, x_dist = self.head_drop(x[:, 0]), self.head_drop(x[:, 1])
            if pre_logits:
                return (x + x_dist) / 2
            return (self.head(x) + self.head_dist(x_dist)) / 2
        x = self.head_drop(self.fc_norm(self.pool(x)))
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def count_params(module: nn.Module) -> int:
    """Number of parameters."""
    return sum(p.numel() for p in module.parameters())
