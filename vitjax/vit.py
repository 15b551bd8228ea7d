"""The Vision Transformer in Flax linen: vittorch/vit.py class for class, name for name.

Images are NHWC. ``setup()`` mirrors torch's ``__init__`` and ``__call__`` its ``forward``, so the
parameter tree is timm's module tree (``blocks.3.attn.qkv`` is ``blocks_3/attn/qkv``).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from vitjax.configs import ViTConfig, to_2tuple

Dtype = Any
dense_init = nn.initializers.truncated_normal(0.02)


_SQRT_HALF = 0.7071067811865476  # a Python float: weakly typed, keeps x's dtype


def make_act(name: str):
    """Activation function by config name."""
    if name == "gelu":
        # torch's formula, x/2 (1 + erf(x/sqrt2)); jax.nn.gelu's erfc form is 2.6x slower on CPU
        # (erfc branches and calls exp) and no closer to torch (docs/benchmarks/README.md).
        return lambda x: x * 0.5 * (1.0 + jax.lax.erf(x * _SQRT_HALF))
    if name == "gelu_tanh":
        return lambda x: nn.gelu(x, approximate=True)
    if name == "quick_gelu":
        return lambda x: x * nn.sigmoid(1.702 * x)
    raise ValueError(f"unknown act_layer {name!r}")


def make_norm(cfg: ViTConfig, dtype: Dtype, name: str | None = None) -> nn.Module:
    """Norm layer of the config's kind and eps (exact two-pass variance, like torch)."""
    if cfg.norm_layer == "rmsnorm":
        return nn.RMSNorm(epsilon=cfg.norm_eps, dtype=dtype, name=name)
    return LayerNorm(epsilon=cfg.norm_eps, dtype=dtype, name=name)


class LayerNorm(nn.Module):
    """LayerNorm over the last axis: flax's params (scale, bias), torch's two-pass variance.

    The formula of ``nn.LayerNorm(use_fast_variance=False)``, written out because XLA fuses this
    form's backward far better on CPU (docs/benchmarks/README.md).
    """

    epsilon: float = 1e-6
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        C = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (C,))
        bias = self.param("bias", nn.initializers.zeros, (C,))
        x = x.astype(jnp.promote_types(x.dtype, jnp.float32))  # statistics in at least fp32
        xc = x - x.mean(axis=-1, keepdims=True)
        var = (xc * xc).mean(axis=-1, keepdims=True)
        return (xc * jax.lax.rsqrt(var + self.epsilon) * scale + bias).astype(self.dtype)


@jax.custom_vjp
def _matmul(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """x @ kernel over the last axis of x (reverse-mode only: custom_vjp has no forward mode)."""
    return x @ kernel


def _matmul_fwd(x: jax.Array, kernel: jax.Array):
    return x @ kernel, (x, kernel)


def _matmul_bwd(res, g: jax.Array):
    # The weight gradient contracts 2-D (tokens, features) operands. Autodiff's form leads XLA's
    # CPU backend to materialise a transposed copy of g and to fuse (and so recompute) the whole
    # residual-gradient chain into each such copy; this form does neither.
    x, kernel = res
    x2 = x.reshape(-1, x.shape[-1])  # (B*N, C_in)
    g2 = g.reshape(-1, g.shape[-1])  # (B*N, C_out)
    return g @ kernel.T, jnp.einsum("mk,mn->kn", x2, g2)


_matmul.defvjp(_matmul_fwd, _matmul_bwd)


class Dense(nn.Module):
    """nn.Dense's params and numbers (kernel (in, out), bias), with a CPU-friendly gradient."""

    features: int
    use_bias: bool = True
    kernel_init: Any = dense_init
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param("kernel", self.kernel_init, (x.shape[-1], self.features))
        y = _matmul(x.astype(self.dtype), kernel.astype(self.dtype))
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros, (self.features,)).astype(self.dtype)
        return y


class PatchConv(nn.Module):
    """nn.Conv with kernel == stride and VALID padding, as one matmul over flattened patches.

    Same params (kernel (ph, pw, C, D), bias) and init as nn.Conv; a size the patch does not
    divide is floored, as the convolution does.
    """

    features: int
    patch: tuple[int, int]
    use_bias: bool = True
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        B, H, W, C = x.shape
        ph, pw = self.patch
        gh, gw = H // ph, W // pw
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (ph, pw, C, self.features))
        x = x[:, : gh * ph, : gw * pw].reshape(B, gh, ph, gw, pw, C)  # (B, gh, ph, gw, pw, C)
        x = x.transpose(0, 1, 3, 2, 4, 5).reshape(B, gh, gw, ph * pw * C)  # (B, gh, gw, P)
        kernel = kernel.reshape(ph * pw * C, self.features)  # (P, D)
        y = _matmul(x.astype(self.dtype), kernel.astype(self.dtype))  # (B, gh, gw, D)
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros, (self.features,)).astype(self.dtype)
        return y


def resample_abs_pos_embed(
    posemb: jax.Array,
    new_size: tuple[int, int],
    old_size: tuple[int, int],
    num_prefix_tokens: int = 0,
    method: str = "bicubic",
    antialias: bool = True,
) -> jax.Array:
    """Resize (1, prefix + H*W, C) position embeddings to a new grid, like timm's."""
    if tuple(new_size) == tuple(old_size):
        return posemb
    prefix, grid = posemb[:, :num_prefix_tokens], posemb[:, num_prefix_tokens:]
    C = grid.shape[-1]
    grid = grid.reshape(1, *old_size, C).astype(jnp.float32)  # (1, H, W, C)
    method = {"bicubic": "cubic", "bilinear": "linear"}.get(method, method)
    grid = jax.image.resize(grid, (1, *new_size, C), method=method, antialias=antialias)
    grid = grid.reshape(1, -1, C).astype(posemb.dtype)  # (1, H'*W', C)
    return jnp.concatenate([prefix, grid], axis=1)


class PatchEmbed(nn.Module):
    """Image to patch tokens with one strided convolution (computed as a matmul)."""

    cfg: ViTConfig
    dtype: Dtype = jnp.float32

    def setup(self) -> None:
        cfg = self.cfg
        patch = to_2tuple(cfg.patch_size)
        self.proj = PatchConv(cfg.embed_dim, patch, use_bias=not cfg.pre_norm, dtype=self.dtype)
        self.norm = make_norm(cfg, self.dtype) if cfg.embed_norm else None

    def __call__(self, x: jax.Array) -> jax.Array:
        cfg = self.cfg
        B, H, W, C = x.shape
        ph, pw = to_2tuple(cfg.patch_size)
        if not cfg.dynamic_img_size and (H, W) != to_2tuple(cfg.img_size):
            raise ValueError(f"input size {(H, W)} does not match the model's {cfg.img_size}")
        if cfg.dynamic_img_pad:
            x = jnp.pad(x, ((0, 0), (0, (ph - H % ph) % ph), (0, (pw - W % pw) % pw), (0, 0)))
        elif cfg.dynamic_img_size and (H % ph or W % pw):  # fixed sizes floor, like timm
            raise ValueError(f"input size {(H, W)} is not divisible by patch size {(ph, pw)}")
        x = self.proj(x)  # (B, gh, gw, D)
        if not cfg.dynamic_img_size:
            x = x.reshape(B, -1, x.shape[-1])  # (B, N, D)
        return self.norm(x) if self.norm is not None else x


class Attention(nn.Module):
    """Multi-head self-attention with one fused qkv projection."""

    cfg: ViTConfig
    dtype: Dtype = jnp.float32

    def setup(self) -> None:
        cfg = self.cfg
        dim = cfg.embed_dim
        self.qkv = Dense(dim * 3, use_bias=cfg.qkv_bias, dtype=self.dtype)
        self.q_norm = make_norm(cfg, self.dtype) if cfg.qk_norm else None
        self.k_norm = make_norm(cfg, self.dtype) if cfg.qk_norm else None
        self.attn_drop = nn.Dropout(cfg.attn_drop_rate)
        self.proj = Dense(dim, use_bias=cfg.proj_bias, dtype=self.dtype)
        self.proj_drop = nn.Dropout(cfg.proj_drop_rate)

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        cfg = self.cfg
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, cfg.num_heads, cfg.head_dim)  # (B, N, 3, H, Dh)
        q, k, v = qkv.transpose(2, 0, 3, 1, 4)  # 3 x (B, H, N, Dh)
        if cfg.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        # softmax(s) @ v with the normalisation after the product: (exp(s - max) @ v) / sum, so
        # the division touches (N, Dh) instead of (N, N); head-major einsums. Both measured
        # faster on CPU than jax.nn.softmax + einsums or jax.nn.dot_product_attention
        # (docs/benchmarks/README.md). The max is a constant to autodiff (it cancels exactly).
        s = jnp.einsum("bhqd,bhkd->bhqk", q * cfg.scale, k)  # (B, H, N, N)
        p = jnp.exp(s - jax.lax.stop_gradient(s.max(axis=-1, keepdims=True)))
        denom = p.sum(axis=-1, keepdims=True)  # (B, H, N, 1)
        if train and cfg.attn_drop_rate > 0:  # dropout(p / denom) @ v == dropout(p) @ v / denom
            p = self.attn_drop(p, deterministic=False)
        x = jnp.einsum("bhqk,bhkd->bhqd", p, v) * (1.0 / denom)  # (B, H, N, Dh)
        x = self.proj(x.transpose(0, 2, 1, 3).reshape(B, N, C))  # (B, N, C)
        return self.proj_drop(x, deterministic=not train)


class Mlp(nn.Module):
    """Dense -> activation -> dropout -> Dense -> dropout."""

    cfg: ViTConfig
    hidden: int
    dtype: Dtype = jnp.float32

    def setup(self) -> None:
        cfg = self.cfg
        self.fc1 = Dense(self.hidden, use_bias=cfg.proj_bias, dtype=self.dtype)
        self.act = make_act(cfg.act_layer)
        self.drop1 = nn.Dropout(cfg.proj_drop_rate)
        self.fc2 = Dense(cfg.embed_dim, use_bias=cfg.proj_bias, dtype=self.dtype)
        self.drop2 = nn.Dropout(cfg.proj_drop_rate)

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = self.drop1(self.act(self.fc1(x)), deterministic=not train)
        return self.drop2(self.fc2(x), deterministic=not train)


class LayerScale(nn.Module):
    """Per-channel learned scale (CaiT / DeiT-3)."""

    dim: int
    init_values: float

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        gamma = self.param("gamma", nn.initializers.constant(self.init_values), (self.dim,))
        return x * gamma.astype(x.dtype)


class DropPath(nn.Module):
    """Stochastic depth: drop whole residual branches per sample while training."""

    rate: float

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        if not train or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        mask = jax.random.bernoulli(
            self.make_rng("dropout"), keep, (x.shape[0],) + (1,) * (x.ndim - 1)
        )
        return x * mask.astype(x.dtype) / keep


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    cfg: ViTConfig
    drop_path: float = 0.0
    dtype: Dtype = jnp.float32

    def setup(self) -> None:
        cfg, dim = self.cfg, self.cfg.embed_dim
        self.norm1 = make_norm(cfg, self.dtype)
        self.attn = Attention(cfg, dtype=self.dtype)
        self.ls1 = LayerScale(dim, cfg.init_values) if cfg.init_values else None
        self.drop_path1 = DropPath(self.drop_path)
        self.norm2 = make_norm(cfg, self.dtype)
        self.mlp = Mlp(cfg, cfg.mlp_hidden, dtype=self.dtype)
        self.ls2 = LayerScale(dim, cfg.init_values) if cfg.init_values else None
        self.drop_path2 = DropPath(self.drop_path)

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        y = self.attn(self.norm1(x), train)
        x = x + self.drop_path1(self.ls1(y) if self.ls1 else y, train)
        y = self.mlp(self.norm2(x), train)
        return x + self.drop_path2(self.ls2(y) if self.ls2 else y, train)


class AttentionPoolLatent(nn.Module):
    """Multi-head attention pooling with one learned latent query (SigLIP's 'map' head)."""

    cfg: ViTConfig
    dtype: Dtype = jnp.float32

    def setup(self) -> None:
        cfg, dim = self.cfg, self.cfg.embed_dim
        self.latent = self.param("latent", nn.initializers.truncated_normal(dim**-0.5), (1, 1, dim))
        self.q = nn.Dense(dim, kernel_init=dense_init, dtype=self.dtype)
        self.kv = nn.Dense(dim * 2, kernel_init=dense_init, dtype=self.dtype)
        self.proj = nn.Dense(dim, kernel_init=dense_init, dtype=self.dtype)
        self.norm = make_norm(cfg, self.dtype)
        self.mlp = Mlp(cfg, cfg.mlp_hidden, dtype=self.dtype)

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        cfg = self.cfg
        B, N, C = x.shape
        H, Dh = cfg.num_heads, cfg.head_dim
        latent = jnp.broadcast_to(self.latent.astype(x.dtype), (B, 1, C))
        q = self.q(latent).reshape(B, 1, H, Dh)  # (B, 1, H, Dh)
        kv = self.kv(x).reshape(B, N, 2, H, Dh)  # (B, N, 2, H, Dh)
        x = jax.nn.dot_product_attention(q, kv[:, :, 0], kv[:, :, 1], scale=Dh**-0.5)
        x = self.proj(x.reshape(B, 1, C))  # (B, 1, C)
        x = x + self.mlp(self.norm(x), train)
        return x[:, 0]


class VisionTransformer(nn.Module):
    """ViT: patch embed, prefix tokens + position embedding, blocks, norm, pool, head."""

    cfg: ViTConfig
    dtype: Dtype = jnp.float32

    def setup(self) -> None:
        cfg, dim, dt = self.cfg, self.cfg.embed_dim, self.dtype
        self.patch_embed = PatchEmbed(cfg, dtype=dt)
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
        self.norm_pre = make_norm(cfg, dt) if cfg.pre_norm else None
        rates = [cfg.drop_path_rate * i / max(cfg.depth - 1, 1) for i in range(cfg.depth)]
        self.blocks = [Block(cfg, rates[i], dtype=dt) for i in range(cfg.depth)]
        self.norm = make_norm(cfg, dt) if cfg.final_norm and not cfg.use_fc_norm else None
        self.attn_pool = AttentionPoolLatent(cfg, dtype=dt) if cfg.global_pool == "map" else None
        self.fc_norm = make_norm(cfg, dt) if cfg.final_norm and cfg.use_fc_norm else None
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

    def forward_features(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = self.patch_embed(x.astype(self.dtype))
        x = self._pos_embed(x, train)
        if self.norm_pre is not None:
            x = self.norm_pre(x)
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

    def __call__(self, x: jax.Array, train: bool = False, pre_logits: bool = False) -> jax.Array:
        return self.forward_head(self.forward_features(x, train), pre_logits, train)
