"""The vit family in Flax linen: timm's VisionTransformer, class for class, name for name.

Images are NHWC. ``setup()`` mirrors torch's ``__init__`` and ``__call__`` its ``forward``, so the
parameter tree is timm's module tree (``blocks.3.attn.qkv`` is ``blocks_3/attn/qkv``). The shared
layers (attention, MLP, norms, patch embedding) are in ``vitjax.layers``; vittorch/vit.py is the
same model in PyTorch (plain blocks only). ``cfg.block_fn`` / ``attn_layer`` / ``mlp_layer`` pick
timm's other blocks, differential attention and gated MLPs from ``vitjax.layers.blocks``;
``cfg.backbone`` a hybrid CNN stem (``vitjax.layers.hybrid_embed``), whose BatchNorm statistics
live in the ``batch_stats`` collection. ``cfg.scan_blocks`` runs the blocks as one ``nn.scan``
(params stacked under ``blocks/``, leading axis depth; ``stacked_lists`` tells the converter, so
files keep timm's ``blocks.{i}.*`` keys); ``cfg.remat_policy`` recomputes each block's
activations in the backward pass (``nn.remat``), with or without scan.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from vitjax.layers import (
    Attention,
    AttentionPoolLatent,
    DropPath,
    Dtype,
    LayerScale,
    Mlp,
    PatchEmbed,
    dense_init,
    make_norm,
    resample_abs_pos_embed,
)
from vitjax.layers import blocks as alt_blocks
from vitjax.layers.features import (
    check_output_fmt,
    collect_intermediates,
    feature_take_indices,
    format_intermediates,
    shape_intermediates,
)
from vitjax.layers.hybrid_embed import HybridEmbed
from vitjax.models.vit_config import VARIANTS, ViTConfig
from vitjax.models.vit_timm import (
    TIMM_CLASSES,
    checkpoint_filter_fn,
    checkpoint_overrides,
    config_from_timm,
    describe_state_dict,
    timm_model_args,
)

__all__ = [
    "CONFIG",
    "MODEL",
    "TIMM_CLASSES",
    "VARIANTS",
    "Block",
    "VisionTransformer",
    "block_for",
    "checkpoint_filter_fn",
    "checkpoint_overrides",
    "config_from_timm",
    "describe_state_dict",
    "drop_path_rates",
    "stacked_lists",
    "timm_model_args",
]


def _norm(cfg: ViTConfig, dtype: Dtype) -> nn.Module:
    return make_norm(cfg.norm_layer, cfg.norm_eps, dtype)


def patch_embed_for(cfg: ViTConfig, dtype: Dtype = jnp.float32) -> PatchEmbed | HybridEmbed:
    """The PatchEmbed (or, with a backbone, HybridEmbed) a VisionTransformer of this config uses."""
    if cfg.backbone is not None:
        return HybridEmbed(
            cfg.backbone, cfg.img_size, cfg.patch_size, cfg.in_chans, cfg.embed_dim,
            bias=not cfg.pre_norm, use_proj=cfg.embed_proj,
            output_fmt="NHWC" if cfg.dynamic_img_size else None,
            dynamic_img_pad=cfg.dynamic_img_pad, dtype=dtype, dense_impl=cfg.dense_impl,
        )  # fmt: skip
    return PatchEmbed(
        cfg.img_size, cfg.patch_size, cfg.in_chans, cfg.embed_dim, bias=not cfg.pre_norm,
        norm_layer=cfg.norm_layer if cfg.embed_norm else None, norm_eps=cfg.norm_eps,
        dynamic_img_size=cfg.dynamic_img_size, dynamic_img_pad=cfg.dynamic_img_pad,
        dtype=dtype, dense_impl=cfg.dense_impl,
    )  # fmt: skip


def attention_for(cfg: ViTConfig, dtype: Dtype = jnp.float32, depth: int = 0) -> nn.Module:
    """The attention a Block of this config uses (block index depth: DiffAttention's lambda)."""
    if cfg.attn_layer != "attn":
        return alt_blocks.create_attn(
            cfg.attn_layer, cfg.embed_dim, cfg.num_heads, cfg.qkv_bias, cfg.qk_norm,
            proj_bias=cfg.proj_bias, attn_drop=cfg.attn_drop_rate, proj_drop=cfg.proj_drop_rate,
            norm_layer=cfg.norm_layer, norm_eps=cfg.norm_eps, depth=depth, dtype=dtype,
            attn_impl=cfg.attn_impl, dense_impl=cfg.dense_impl, dual_lambda=cfg.dual_lambda,
        )  # fmt: skip
    return Attention(
        cfg.embed_dim, cfg.num_heads, qkv_bias=cfg.qkv_bias, qk_norm=cfg.qk_norm,
        proj_bias=cfg.proj_bias, attn_drop=cfg.attn_drop_rate, proj_drop=cfg.proj_drop_rate,
        scale=cfg.scale, norm_layer=cfg.norm_layer, norm_eps=cfg.norm_eps, dtype=dtype,
        attn_impl=cfg.attn_impl, dense_impl=cfg.dense_impl,
    )  # fmt: skip


def mlp_for(cfg: ViTConfig, dtype: Dtype = jnp.float32) -> nn.Module:
    """The MLP a Block of this config uses (Mlp, GluMlp or SwiGLU)."""
    if cfg.mlp_layer != "mlp":
        return alt_blocks.create_mlp(
            cfg.mlp_layer, cfg.embed_dim, cfg.mlp_hidden, cfg.act_layer, bias=cfg.proj_bias,
            drop=cfg.proj_drop_rate, dtype=dtype, dense_impl=cfg.dense_impl,
        )  # fmt: skip
    return Mlp(
        cfg.mlp_hidden, cfg.embed_dim, act_layer=cfg.act_layer, bias=cfg.proj_bias,
        drop=cfg.proj_drop_rate, dtype=dtype, dense_impl=cfg.dense_impl,
    )  # fmt: skip


def attn_pool_for(cfg: ViTConfig, dtype: Dtype = jnp.float32) -> AttentionPoolLatent:
    """The 'map' pooling head of this config."""
    return AttentionPoolLatent(
        cfg.embed_dim, cfg.num_heads, cfg.mlp_hidden, act_layer=cfg.act_layer,
        norm_layer=cfg.norm_layer, norm_eps=cfg.norm_eps, dtype=dtype, attn_impl=cfg.attn_impl,
    )  # fmt: skip


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    cfg: ViTConfig
    drop_path: float = 0.0
    dtype: Dtype = jnp.float32
    depth: int = 0  # the block's index (timm's depth=i)

    def setup(self) -> None:
        cfg, dim, dt = self.cfg, self.cfg.embed_dim, self.dtype
        self.norm1 = _norm(cfg, dt)
        self.attn = attention_for(cfg, dt, self.depth)
        self.ls1 = LayerScale(dim, cfg.init_values) if cfg.init_values else None
        self.drop_path1 = DropPath(self.drop_path)
        self.norm2 = _norm(cfg, dt)
        self.mlp = mlp_for(cfg, dt)
        self.ls2 = LayerScale(dim, cfg.init_values) if cfg.init_values else None
        self.drop_path2 = DropPath(self.drop_path)

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        y = self.attn(self.norm1(x), train)
        x = x + self.drop_path1(self.ls1(y) if self.ls1 else y, train)
        y = self.mlp(self.norm2(x), train)
        return x + self.drop_path2(self.ls2(y) if self.ls2 else y, train)


class ScanBlock(Block):
    """Block as the body of nn.scan: (x, its drop-path rate) -> (x, x if collect else None)."""

    def __call__(  # type: ignore[override]
        self, x: jax.Array, rate: jax.Array, train: bool = False, collect: bool = False
    ) -> tuple[jax.Array, jax.Array | None]:
        y = self.attn(self.norm1(x), train)
        x = x + self._drop_path(self.ls1(y) if self.ls1 else y, rate, train)
        y = self.mlp(self.norm2(x), train)
        x = x + self._drop_path(self.ls2(y) if self.ls2 else y, rate, train)
        return x, (x if collect else None)

    def _drop_path(self, x: jax.Array, rate: jax.Array, train: bool) -> jax.Array:
        """DropPath with a traced rate (each scanned block has its own)."""
        if not train or self.cfg.drop_path_rate == 0.0:
            return x
        keep = 1.0 - rate
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        mask = jax.random.bernoulli(self.make_rng("dropout"), keep, shape)
        scale = mask / jnp.where(keep > 0, keep, 1.0)  # rate 1 drops all, as timm's
        return x * scale.astype(x.dtype)


def drop_path_rates(cfg: ViTConfig) -> list[float]:
    """Each block's drop-path rate: timm's linspace(0, drop_path_rate, depth)."""
    return [cfg.drop_path_rate * i / max(cfg.depth - 1, 1) for i in range(cfg.depth)]


def stacked_lists(cfg: ViTConfig) -> dict[str, int]:
    """Module lists whose params are stacked on a leading axis (name -> length), for the
    converter: {"blocks": depth} with scan_blocks, else {}."""
    return {"blocks": cfg.depth} if cfg.scan_blocks else {}


def _remat_policy(name: str) -> Any:
    return getattr(jax.checkpoint_policies, "nothing_saveable" if name == "full" else name)


@functools.cache
def _remat(cls: type[nn.Module], policy: str, static_argnums: tuple[int, ...], scan: bool) -> Any:
    """cls with nn.remat (one lifted class per block class and policy, made once)."""
    # prevent_cse=False inside scan, as big_vision (scan already keeps XLA from merging them)
    return nn.remat(
        cls, policy=_remat_policy(policy), static_argnums=static_argnums, prevent_cse=not scan
    )


def scanned_blocks(cfg: ViTConfig, dtype: Dtype = jnp.float32) -> nn.Module:
    """All depth blocks as one nn.scan over ScanBlock: params stacked on a leading depth axis.

    Called as ``blocks(x, rates, train, collect) -> (x, (depth, B, N, C) outputs or None)``.
    """
    body: Any = ScanBlock
    if cfg.remat_policy != "none":  # self=0, x=1, rate=2: train and collect are static
        body = _remat(ScanBlock, cfg.remat_policy, (3, 4), True)
    return nn.scan(
        body, variable_axes={"params": 0}, split_rngs={"params": True, "dropout": True},
        in_axes=(0, nn.broadcast, nn.broadcast), length=cfg.depth,
    )(cfg, dtype=dtype)  # fmt: skip


def block_for(
    cfg: ViTConfig, depth: int, drop_path: float, dtype: Dtype = jnp.float32
) -> nn.Module:
    """Block number depth of this config: timm's block_fn with VisionTransformer's arguments."""
    cls = Block if cfg.block_fn == "Block" else getattr(alt_blocks, cfg.block_fn)
    if cfg.remat_policy != "none":  # self=0, x=1, train=2 (static)
        cls = _remat(cls, cfg.remat_policy, (2,), False)
    if cfg.block_fn == "Block":
        return cls(cfg, drop_path, dtype=dtype, depth=depth)
    kw = dict(
        dim=cfg.embed_dim, num_heads=cfg.num_heads, mlp_ratio=cfg.mlp_ratio,
        qkv_bias=cfg.qkv_bias, qk_norm=cfg.qk_norm, proj_bias=cfg.proj_bias,
        init_values=cfg.init_values, proj_drop=cfg.proj_drop_rate, attn_drop=cfg.attn_drop_rate,
        drop_path=drop_path, act_layer=cfg.act_layer, norm_layer=cfg.norm_layer,
        norm_eps=cfg.norm_eps, depth=depth, dtype=dtype, attn_impl=cfg.attn_impl,
        dense_impl=cfg.dense_impl,
    )  # fmt: skip
    if cfg.block_fn == "ParallelScalingBlock":
        kw["fuse_out_proj"] = cfg.fuse_out_proj
    elif cfg.block_fn == "DiffParallelScalingBlock":
        kw["dual_lambda"] = cfg.dual_lambda
    else:  # ResPostBlock, ParallelThingsBlock: timm's attention and MLP layers inside
        kw.update(mlp_layer=cfg.mlp_layer, attn_layer=cfg.attn_layer, dual_lambda=cfg.dual_lambda)
        if cfg.block_fn == "ParallelThingsBlock":
            kw["num_parallel"] = cfg.num_parallel
    return cls(**kw)


class VisionTransformer(nn.Module):
    """ViT: patch embed, prefix tokens + position embedding, blocks, norm, pool, head."""

    cfg: ViTConfig
    dtype: Dtype = jnp.float32

    def setup(self) -> None:
        cfg, dim, dt = self.cfg, self.cfg.embed_dim, self.dtype
        self.patch_embed = patch_embed_for(cfg, dt)
        tiny = nn.initializers.normal(1e-6)
        if cfg.class_token:
            self.cls_token = self.param("cls_token", tiny, (1, 1, dim))
        if cfg.reg_tokens:
            self.reg_token = self.param("reg_token", tiny, (1, cfg.reg_tokens, dim))
        if cfg.distilled:
            self.dist_token = self.param("dist_token", dense_init, (1, 1, dim))
        if cfg.has_pos_embed:
            self.pos_embed = self.param("pos_embed", dense_init, (1, cfg.embed_len, dim))
        self.pos_drop = nn.Dropout(cfg.pos_drop_rate)
        self.norm_pre = _norm(cfg, dt) if cfg.pre_norm else None
        if cfg.scan_blocks:
            self.blocks = scanned_blocks(cfg, dt)
        else:
            rates = drop_path_rates(cfg)
            self.blocks = [block_for(cfg, i, rates[i], dt) for i in range(cfg.depth)]
        self.norm = _norm(cfg, dt) if cfg.final_norm and not cfg.use_fc_norm else None
        self.attn_pool = attn_pool_for(cfg, dt) if cfg.global_pool == "map" else None
        self.fc_norm = _norm(cfg, dt) if cfg.final_norm and cfg.use_fc_norm else None
        self.head_drop = nn.Dropout(cfg.drop_rate)
        if cfg.num_classes > 0:
            self.head = nn.Dense(cfg.num_classes, kernel_init=dense_init, dtype=dt)
            if cfg.distilled:
                self.head_dist = nn.Dense(cfg.num_classes, kernel_init=dense_init, dtype=dt)

    def _pos_embed(self, x: jax.Array, train: bool) -> jax.Array:
        cfg = self.cfg
        B, C = x.shape[0], x.shape[-1]
        names = ("cls_token", "dist_token", "reg_token")
        used = (cfg.class_token, cfg.distilled, cfg.reg_tokens > 0)
        prefix = [
            jnp.broadcast_to(getattr(self, n).astype(x.dtype), (B, getattr(self, n).shape[1], C))
            for n, u in zip(names, used, strict=True)
            if u
        ]
        pos_embed = self.pos_embed.astype(x.dtype) if cfg.has_pos_embed else None
        if cfg.dynamic_img_size:
            _, gh, gw, _ = x.shape
            if pos_embed is not None:
                n_prefix = 0 if cfg.no_embed_class else cfg.num_prefix_tokens
                pos_embed = resample_abs_pos_embed(pos_embed, (gh, gw), cfg.grid_size, n_prefix)
            x = x.reshape(B, gh * gw, C)  # (B, N, C)
        if pos_embed is None:
            return jnp.concatenate(prefix + [x], axis=1)
        if cfg.no_embed_class:
            x = jnp.concatenate(prefix + [x + pos_embed], axis=1)
        else:
            x = jnp.concatenate(prefix + [x], axis=1) + pos_embed
        return self.pos_drop(x, deterministic=not train)

    def _embed_patches(
        self, x: jax.Array, train: bool = False, backbone_train: bool | None = None
    ) -> jax.Array:
        """patch_embed; a hybrid's backbone runs in backbone_train mode (default: train).

        backbone_train=False is torch's ``model.patch_embed.backbone.eval()`` in a training
        model: BatchNorm normalises with, and leaves unchanged, its running statistics.
        """
        x = x.astype(self.dtype)
        if self.cfg.backbone is None:
            return self.patch_embed(x)
        return self.patch_embed(x, train=train if backbone_train is None else backbone_train)

    def forward_features(
        self, x: jax.Array, train: bool = False, backbone_train: bool | None = None
    ) -> jax.Array:
        x = self._embed_patches(x, train, backbone_train)
        x = self._pos_embed(x, train)
        if self.norm_pre is not None:
            x = self.norm_pre(x)
        if self.cfg.scan_blocks:
            x, _ = self.blocks(x, jnp.asarray(drop_path_rates(self.cfg)), train, False)
        else:
            for blk in self.blocks:
                x = blk(x, train)
        return self.norm(x) if self.norm is not None else x

    def pool(self, x: jax.Array, train: bool = False) -> jax.Array:
        cfg = self.cfg
        patches = x if cfg.pool_include_prefix else x[:, cfg.num_prefix_tokens :]
        if self.attn_pool is not None:
            return self.attn_pool(patches, train)
        if cfg.global_pool == "token":
            return x[:, 0]
        if not cfg.global_pool:
            return x
        if cfg.global_pool == "avg":
            return patches.mean(axis=1)
        if cfg.global_pool == "max":
            return patches.max(axis=1)
        return 0.5 * (patches.max(axis=1) + patches.mean(axis=1))  # avgmax

    def forward_head(
        self, x: jax.Array, pre_logits: bool = False, train: bool = False
    ) -> jax.Array:
        cfg = self.cfg
        if cfg.distilled:
            x, x_dist = (self.head_drop(x[:, i], deterministic=not train) for i in (0, 1))
            if pre_logits or cfg.num_classes == 0:
                return (x + x_dist) / 2
            return (self.head(x) + self.head_dist(x_dist)) / 2
        x = self.pool(x, train)
        if self.fc_norm is not None:
            x = self.fc_norm(x)
        x = self.head_drop(x, deterministic=not train)
        return x if pre_logits or cfg.num_classes == 0 else self.head(x)

    def __call__(
        self,
        x: jax.Array,
        train: bool = False,
        pre_logits: bool = False,
        backbone_train: bool | None = None,
    ) -> jax.Array:
        x = self.forward_features(x, train, backbone_train)
        return self.forward_head(x, pre_logits, train)

    def forward_intermediates(
        self,
        x: jax.Array,
        indices: int | Sequence[int] | None = None,
        return_prefix_tokens: bool = False,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NHWC",
        intermediates_only: bool = False,
        output_dict: bool = False,
        train: bool = False,
        backbone_train: bool | None = None,
    ) -> list[Any] | tuple[jax.Array, list[Any]] | dict[str, Any]:
        """timm's forward_intermediates: (final features, per-block features), the list, or a dict.

        indices: the last n blocks if an int, all if None, else those indices (negative from the
        end). Each intermediate is (B, H, W, C) for output_fmt "NHWC" (timm's "NCHW" transposed
        by (0, 2, 3, 1)) or (B, H * W, C) for "NLC", normalised by the final norm if norm; with
        return_prefix_tokens, a (patches, (B, num_prefix_tokens, C) prefix tokens) tuple. The
        final features are forward_features' output (of block max(indices) with stop_early).
        output_dict: timm's {"image_intermediates", "image_intermediates_prefix",
        "image_features"} instead. With scan_blocks every block runs (the scan returns each
        block's output) and stop_early only chooses which output is the final one.
        """
        cfg = self.cfg
        check_output_fmt(output_fmt)
        take_indices, max_index = feature_take_indices(cfg.depth, indices)
        x = self._embed_patches(x, train, backbone_train)
        grid = x.shape[1:3] if cfg.dynamic_img_size else cfg.grid_size
        x = self._pos_embed(x, train)
        if self.norm_pre is not None:
            x = self.norm_pre(x)
        if cfg.scan_blocks:  # every block runs; the taken outputs are read off the stack
            x, ys = self.blocks(x, jnp.asarray(drop_path_rates(cfg)), train, True)
            x, intermediates = collect_intermediates(
                x, lambda i, _: ys[i], cfg.depth, take_indices, max_index, stop_early,
                self.norm if norm else None,
            )  # fmt: skip
        else:
            x, intermediates = collect_intermediates(
                x, lambda i, x: self.blocks[i](x, train), cfg.depth, take_indices, max_index,
                stop_early, self.norm if norm else None,
            )  # fmt: skip
        npt = cfg.num_prefix_tokens
        if output_dict:
            spatial, prefix = shape_intermediates(intermediates, npt, grid, output_fmt)
            out: dict[str, Any] = {"image_intermediates": spatial}
            if prefix is not None and return_prefix_tokens:
                out["image_intermediates_prefix"] = prefix
            if not intermediates_only:
                out["image_features"] = self.norm(x) if self.norm is not None else x
            return out
        intermediates = format_intermediates(
            intermediates, npt, grid, output_fmt, return_prefix_tokens
        )
        if intermediates_only:
            return intermediates
        return (self.norm(x) if self.norm is not None else x), intermediates

    @nn.nowrap
    def prune_intermediate_layers(
        self,
        indices: int | Sequence[int] = 1,
        prune_norm: bool = False,
        prune_head: bool = True,
    ) -> tuple[VisionTransformer, list[int]]:
        """timm's prune_intermediate_layers as a new model: (pruned model, indices it keeps).

        The pruned model has only the blocks up to max(indices) (each keeping its drop-path
        rate), no final norm if prune_norm, and no head (fc_norm, attention pool, classifier;
        global_pool "") if prune_head. Its variables are
        ``vitjax.layers.features.prune_variables(variables, pruned_model)``.
        """
        cfg = self.cfg
        take_indices, max_index = feature_take_indices(cfg.depth, indices)
        # the norm that exists (norm, or fc_norm instead) is the one that pruning drops
        dropped = prune_head if cfg.use_fc_norm else prune_norm
        changes: dict[str, Any] = dict(
            depth=max_index + 1,
            drop_path_rate=cfg.drop_path_rate * max_index / max(cfg.depth - 1, 1),
            fc_norm=cfg.use_fc_norm,  # explicit: global_pool no longer implies it
            final_norm=cfg.final_norm and not dropped,
        )
        if prune_head:  # a distilled head keeps reading the class and distillation tokens
            changes.update(num_classes=0, global_pool="token" if cfg.distilled else "")
        return self.clone(parent=None, cfg=dataclasses.replace(cfg, **changes)), take_indices


CONFIG = ViTConfig
MODEL = VisionTransformer
