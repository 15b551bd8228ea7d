"""The vit family's alternative blocks and differential attention, with timm's names.

timm's ``vision_transformer.py`` (ResPostBlock, ParallelScalingBlock, DiffParallelScalingBlock,
ParallelThingsBlock) and ``layers/diff_attention.py`` (DiffAttention). Each takes the arguments
of timm's class (a norm is a kind and an eps, an activation a name) and is called as
``block(x, train=False)`` on (B, N, C) tokens.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import linen as nn

from vitjax.layers.activations import make_act
from vitjax.layers.attention import Attention, dot_product_attention
from vitjax.layers.drop import DropPath
from vitjax.layers.helpers import Dtype
from vitjax.layers.layer_scale import LayerScale
from vitjax.layers.linear import Dense
from vitjax.layers.mlp import GluMlp, Mlp, SwiGLU
from vitjax.layers.norms import RmsNorm, make_norm

ATTN_LAYERS = ("attn", "diff")  # timm's ATTN_LAYERS keys: Attention, DiffAttention
MLP_LAYERS = ("mlp", "glu", "swiglu", "swiglu_packed")  # Mlp, GluMlp, SwiGLU, SwiGLUPacked
BLOCK_FNS = ("ResPostBlock", "ParallelScalingBlock", "DiffParallelScalingBlock",
             "ParallelThingsBlock")  # fmt: skip


def lambda_init_fn(depth: int) -> float:
    """Differential attention's depth-dependent lambda_init (timm's set_lambda_init)."""
    return 0.8 - 0.6 * math.exp(-0.3 * depth)


def _dropout_fn(module: nn.Module, rate: float, train: bool):
    """The attention-weight dropout for dot_product_attention, or None when it is off."""
    if not train or rate == 0.0:
        return None
    return lambda p: module(p, deterministic=False)


def setup_lambda(module: nn.Module, head_dim: int, dual_lambda: bool) -> None:
    """Differential attention's lambda parameters on module itself (timm's names, float32)."""
    # Called from setup(): timm keeps them on the attention / block module, not a child.
    if dual_lambda:
        module.lambda_a = module.param("lambda_a", nn.initializers.zeros, (), jnp.float32)
        module.lambda_b = module.param("lambda_b", nn.initializers.zeros, (), jnp.float32)
        return
    init, shape = nn.initializers.normal(0.1), (head_dim,)
    for name in ("lambda_q1", "lambda_k1", "lambda_q2", "lambda_k2"):
        setattr(module, name, module.param(name, init, shape, jnp.float32))


def compute_lambda(module: nn.Module, lambda_init: float, dual_lambda: bool) -> jax.Array:
    """exp(lambda_1) - exp(lambda_2) + lambda_init from the parameters setup_lambda made."""
    if dual_lambda:
        lambda_1, lambda_2 = jnp.exp(module.lambda_a), jnp.exp(module.lambda_b)
    else:
        lambda_1 = jnp.exp(jnp.sum(module.lambda_q1 * module.lambda_k1, axis=-1))
        lambda_2 = jnp.exp(jnp.sum(module.lambda_q2 * module.lambda_k2, axis=-1))
    return lambda_1 - lambda_2 + lambda_init


def diff_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    lambda_full: jax.Array,
    impl: str = "auto",
    dropout=None,
) -> jax.Array:
    """softmax(q1 k1^T) v - lambda softmax(q2 k2^T) v; q, k (B, 2H, N, Dh), v (B, H, N, 2Dh)."""
    B, H2, N, Dh = q.shape
    q = q.reshape(B, H2 // 2, 2, N, Dh)  # (B, H, 2, N, Dh): heads 2h, 2h+1 pair up
    k = k.reshape(B, H2 // 2, 2, N, Dh)
    scale = Dh**-0.5
    attn1 = dot_product_attention(q[:, :, 0], k[:, :, 0], v, scale, impl=impl, dropout=dropout)
    attn2 = dot_product_attention(q[:, :, 1], k[:, :, 1], v, scale, impl=impl, dropout=dropout)
    return attn1 - lambda_full.astype(attn1.dtype) * attn2  # (B, H, N, 2Dh)


class DiffAttention(nn.Module):
    """Differential attention (timm's DiffAttention): two softmax maps, one subtracted."""

    dim: int
    num_heads: int = 8
    qkv_bias: bool = False
    qk_norm: bool = False
    scale_norm: bool = False
    proj_bias: bool = True
    attn_drop: float = 0.0
    proj_drop: float = 0.0
    norm_layer: str = "rmsnorm"  # timm's default (None -> RmsNorm)
    norm_eps: float = 1e-6
    depth: int = 0
    dual_lambda: bool = False
    dtype: Dtype = jnp.float32
    attn_impl: str = "auto"
    dense_impl: str = "auto"

    def setup(self) -> None:
        dim, dt, impl = self.dim, self.dtype, self.dense_impl
        if dim % self.num_heads:
            raise ValueError(f"dim={dim} is not divisible by num_heads={self.num_heads}")
        self.head_dim = dim // self.num_heads // 2
        self.qkv = Dense(dim * 3, use_bias=self.qkv_bias, dtype=dt, impl=impl)
        norm = lambda: make_norm(self.norm_layer, self.norm_eps, dt)  # noqa: E731
        self.q_norm = norm() if self.qk_norm else None
        self.k_norm = norm() if self.qk_norm else None
        self.attn_dropout = nn.Dropout(self.attn_drop)
        self.norm = norm() if self.scale_norm else None
        self.proj = Dense(dim, use_bias=self.proj_bias, dtype=dt, impl=impl)
        self.proj_dropout = nn.Dropout(self.proj_drop)
        setup_lambda(self, self.head_dim, self.dual_lambda)
        self.sub_norm = RmsNorm(epsilon=1e-5, dtype=dt)
        self.lambda_init = lambda_init_fn(self.depth)

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        B, N, C = x.shape
        H, Dh = self.num_heads, self.head_dim
        q, k, v = jnp.split(self.qkv(x), 3, axis=-1)  # 3 x (B, N, C)
        q = q.reshape(B, N, 2 * H, Dh).transpose(0, 2, 1, 3)  # (B, 2H, N, Dh)
        k = k.reshape(B, N, 2 * H, Dh).transpose(0, 2, 1, 3)  # (B, 2H, N, Dh)
        v = v.reshape(B, N, H, 2 * Dh).transpose(0, 2, 1, 3)  # (B, H, N, 2Dh)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        drop = _dropout_fn(self.attn_dropout, self.attn_drop, train)
        lambda_full = compute_lambda(self, self.lambda_init, self.dual_lambda)
        x = diff_attention(q, k, v, lambda_full, self.attn_impl, drop)
        x = self.sub_norm(x) * (1 - self.lambda_init)
        x = x.transpose(0, 2, 1, 3).reshape(B, N, C)  # (B, N, C)
        if self.norm is not None:
            x = self.norm(x)
        return self.proj_dropout(self.proj(x), deterministic=not train)


def create_attn(
    attn_layer: str,
    dim: int,
    num_heads: int,
    qkv_bias: bool = False,
    qk_norm: bool = False,
    scale_norm: bool = False,
    proj_bias: bool = True,
    attn_drop: float = 0.0,
    proj_drop: float = 0.0,
    norm_layer: str = "layernorm",
    norm_eps: float = 1e-6,
    depth: int = 0,
    dtype: Dtype = jnp.float32,
    attn_impl: str = "auto",
    dense_impl: str = "auto",
    dual_lambda: bool = False,
) -> nn.Module:
    """Attention ('attn') or DiffAttention ('diff'), as timm's _create_attn builds them."""
    # depth (the block index) and dual_lambda reach DiffAttention only, as in timm (where
    # dual_lambda comes in through a DiffAttention subclass passed as attn_layer).
    kw = dict(
        qkv_bias=qkv_bias, qk_norm=qk_norm, proj_bias=proj_bias, attn_drop=attn_drop,
        proj_drop=proj_drop, norm_layer=norm_layer, norm_eps=norm_eps, dtype=dtype,
        attn_impl=attn_impl, dense_impl=dense_impl,
    )  # fmt: skip
    if attn_layer == "diff":
        return DiffAttention(
            dim, num_heads, scale_norm=scale_norm, depth=depth, dual_lambda=dual_lambda, **kw
        )
    if attn_layer != "attn":
        raise ValueError(f"unknown attn_layer {attn_layer!r}: expected one of {ATTN_LAYERS}")
    if scale_norm:
        raise ValueError("scale_attn_norm with attn_layer='attn' is not supported by vitjax")
    if dual_lambda:
        raise ValueError("dual_lambda=True needs attn_layer='diff'")
    return Attention(dim, num_heads, **kw)


def create_mlp(
    mlp_layer: str,
    dim: int,
    hidden_features: int,
    act_layer: str = "gelu",
    norm_layer: str | None = None,
    norm_eps: float = 1e-6,
    bias: bool = True,
    drop: float = 0.0,
    dtype: Dtype = jnp.float32,
    dense_impl: str = "auto",
) -> nn.Module:
    """The MLP named mlp_layer (timm's Mlp, GluMlp, SwiGLU, SwiGLUPacked) with timm's args."""
    kw = dict(
        act_layer=act_layer, bias=bias, drop=drop, norm_layer=norm_layer, norm_eps=norm_eps,
        dtype=dtype, dense_impl=dense_impl,
    )  # fmt: skip
    if mlp_layer == "mlp":
        return Mlp(hidden_features, dim, **kw)
    if mlp_layer == "swiglu":
        return SwiGLU(hidden_features, dim, **kw)
    if mlp_layer in ("glu", "swiglu_packed"):
        return GluMlp(hidden_features, dim, gate_last=mlp_layer == "glu", **kw)
    raise ValueError(f"unknown mlp_layer {mlp_layer!r}: expected one of {MLP_LAYERS}")


class ResPostBlock(nn.Module):
    """Residual post-norm block: x + norm1(attn(x)), then x + norm2(mlp(x))."""

    dim: int
    num_heads: int
    mlp_ratio: float = 4.0
    qkv_bias: bool = False
    qk_norm: bool = False
    scale_attn_norm: bool = False
    scale_mlp_norm: bool = False
    proj_bias: bool = True
    proj_drop: float = 0.0
    attn_drop: float = 0.0
    init_values: float | None = None
    drop_path: float = 0.0
    act_layer: str = "gelu"
    norm_layer: str = "layernorm"
    norm_eps: float = 1e-6
    mlp_layer: str = "mlp"
    attn_layer: str = "attn"
    depth: int = 0
    dual_lambda: bool = False
    dtype: Dtype = jnp.float32
    attn_impl: str = "auto"
    dense_impl: str = "auto"

    def setup(self) -> None:
        dim, dt = self.dim, self.dtype
        self.attn = create_attn(
            self.attn_layer, dim, self.num_heads, self.qkv_bias, self.qk_norm,
            self.scale_attn_norm, self.proj_bias, self.attn_drop, self.proj_drop,
            self.norm_layer, self.norm_eps, self.depth, dt, self.attn_impl, self.dense_impl,
            dual_lambda=self.dual_lambda,
        )  # fmt: skip
        # timm's init_weights sets both norm weights to init_values (the residual gain).
        gain = 1.0 if self.init_values is None else self.init_values
        self.norm1 = make_norm(self.norm_layer, self.norm_eps, dt, scale_init=gain)
        self.drop_path1 = DropPath(self.drop_path)
        self.mlp = create_mlp(
            self.mlp_layer, dim, int(dim * self.mlp_ratio), self.act_layer,
            self.norm_layer if self.scale_mlp_norm else None, self.norm_eps, self.proj_bias,
            self.proj_drop, dt, self.dense_impl,
        )  # fmt: skip
        self.norm2 = make_norm(self.norm_layer, self.norm_eps, dt, scale_init=gain)
        self.drop_path2 = DropPath(self.drop_path)

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = x + self.drop_path1(self.norm1(self.attn(x, train)), train)
        return x + self.drop_path2(self.norm2(self.mlp(x, train)), train)


class ParallelScalingBlock(nn.Module):
    """ViT-22B parallel block: one in_proj feeds attention and the MLP, summed into x."""

    dim: int
    num_heads: int
    mlp_ratio: float = 4.0
    qkv_bias: bool = False
    qk_norm: bool = False
    scale_attn_norm: bool = False
    scale_mlp_norm: bool = False
    proj_bias: bool = True
    proj_drop: float = 0.0
    attn_drop: float = 0.0
    init_values: float | None = None
    drop_path: float = 0.0
    act_layer: str = "gelu"
    norm_layer: str = "layernorm"
    norm_eps: float = 1e-6
    mlp_layer: str | None = None  # not used, as in timm
    attn_layer: str | None = None  # not used
    depth: int = 0  # not used
    fuse_out_proj: bool = False
    dtype: Dtype = jnp.float32
    attn_impl: str = "auto"
    dense_impl: str = "auto"

    head_dim_divisor = 1  # DiffParallelScalingBlock halves the head size

    def _setup_common(self) -> None:
        dim, dt, impl = self.dim, self.dtype, self.dense_impl
        if dim % self.num_heads:
            raise ValueError(f"dim={dim} is not divisible by num_heads={self.num_heads}")
        if self.scale_attn_norm or self.scale_mlp_norm:
            raise ValueError(f"{type(self).__name__}: scale norms are not supported (as in timm)")
        self.head_dim = dim // self.num_heads // self.head_dim_divisor
        self.mlp_hidden_dim = int(self.mlp_ratio * dim)
        self.in_norm = make_norm(self.norm_layer, self.norm_eps, dt)
        self.in_proj = Dense(self.mlp_hidden_dim + 3 * dim, use_bias=self.qkv_bias, dtype=dt,
                             impl=impl)  # fmt: skip
        # Without qkv_bias the MLP's fc1 bias is its own parameter (with it, in in_proj.bias).
        if not self.qkv_bias:
            self.mlp_bias = self.param("mlp_bias", nn.initializers.zeros, (self.mlp_hidden_dim,))
        norm = lambda: make_norm(self.norm_layer, self.norm_eps, dt)  # noqa: E731
        self.q_norm = norm() if self.qk_norm else None
        self.k_norm = norm() if self.qk_norm else None
        self.attn_dropout = nn.Dropout(self.attn_drop)
        self.mlp_drop = nn.Dropout(self.proj_drop)
        self.mlp_act = make_act(self.act_layer)
        self.ls = LayerScale(dim, self.init_values) if self.init_values is not None else None
        self.drop_path_ = DropPath(self.drop_path)

    def setup(self) -> None:
        self._setup_common()
        dt, impl = self.dtype, self.dense_impl
        if self.fuse_out_proj:
            self.out_proj = Dense(self.dim, use_bias=self.proj_bias, dtype=dt, impl=impl)
        else:
            self.attn_out_proj = Dense(self.dim, use_bias=self.proj_bias, dtype=dt, impl=impl)
            self.mlp_out_proj = Dense(self.dim, use_bias=self.proj_bias, dtype=dt, impl=impl)

    def _in_proj(self, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
        """in_norm + in_proj, split as timm's in_split: (mlp hidden, q, k, v)."""
        C, hidden = self.dim, self.mlp_hidden_dim
        y = self.in_proj(self.in_norm(x))  # (B, N, hidden + 3C)
        x_mlp, q, k, v = jnp.split(y, [hidden, hidden + C, hidden + 2 * C], axis=-1)
        if not self.qkv_bias:
            x_mlp = x_mlp + self.mlp_bias.astype(x_mlp.dtype)
        return x_mlp, q, k, v

    def _residual(self, x: jax.Array, y: jax.Array, train: bool) -> jax.Array:
        return x + self.drop_path_(self.ls(y) if self.ls is not None else y, train)

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        B, N, C = x.shape
        H, Dh = self.num_heads, self.head_dim
        x_mlp, q, k, v = self._in_proj(x)
        q, k = q.reshape(B, N, H, Dh), k.reshape(B, N, H, Dh)  # (B, N, H, Dh)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = q.transpose(0, 2, 1, 3), k.transpose(0, 2, 1, 3)  # (B, H, N, Dh)
        v = v.reshape(B, N, H, Dh).transpose(0, 2, 1, 3)  # (B, H, N, Dh)
        drop = _dropout_fn(self.attn_dropout, self.attn_drop, train)
        x_attn = dot_product_attention(q, k, v, Dh**-0.5, impl=self.attn_impl, dropout=drop)
        x_attn = x_attn.transpose(0, 2, 1, 3).reshape(B, N, C)  # (B, N, C)
        x_mlp = self.mlp_drop(self.mlp_act(x_mlp), deterministic=not train)
        if self.fuse_out_proj:
            y = self.out_proj(jnp.concatenate([x_attn, x_mlp], axis=-1))
        else:
            y = self.attn_out_proj(x_attn) + self.mlp_out_proj(x_mlp)
        return self._residual(x, y, train)


class DiffParallelScalingBlock(ParallelScalingBlock):
    """ParallelScalingBlock with differential attention and one fused out_proj."""

    dual_lambda: bool = False

    head_dim_divisor = 2

    def setup(self) -> None:
        self._setup_common()
        self.sub_norm = RmsNorm(epsilon=1e-5, dtype=self.dtype)
        setup_lambda(self, self.head_dim, self.dual_lambda)
        self.out_proj = Dense(self.dim, use_bias=self.proj_bias, dtype=self.dtype,
                              impl=self.dense_impl)  # fmt: skip
        self.lambda_init = lambda_init_fn(self.depth)

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        B, N, C = x.shape
        H, Dh = self.num_heads, self.head_dim
        x_mlp, q, k, v = self._in_proj(x)
        q = q.reshape(B, N, 2 * H, Dh).transpose(0, 2, 1, 3)  # (B, 2H, N, Dh)
        k = k.reshape(B, N, 2 * H, Dh).transpose(0, 2, 1, 3)  # (B, 2H, N, Dh)
        v = v.reshape(B, N, H, 2 * Dh).transpose(0, 2, 1, 3)  # (B, H, N, 2Dh)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        drop = _dropout_fn(self.attn_dropout, self.attn_drop, train)
        lambda_full = compute_lambda(self, self.lambda_init, self.dual_lambda)
        x_attn = diff_attention(q, k, v, lambda_full, self.attn_impl, drop)
        x_attn = self.sub_norm(x_attn) * (1 - self.lambda_init)
        x_attn = x_attn.transpose(0, 2, 1, 3).reshape(B, N, C)  # (B, N, C)
        x_mlp = self.mlp_drop(self.mlp_act(x_mlp), deterministic=not train)
        y = self.out_proj(jnp.concatenate([x_attn, x_mlp], axis=-1))
        return self._residual(x, y, train)


class _AttnBranch(nn.Module):
    """One of ParallelThingsBlock's attns: Sequential(norm, attn, ls, drop_path)."""

    attn_kw: dict
    init_values: float | None = None
    drop_path: float = 0.0

    def setup(self) -> None:
        kw = dict(self.attn_kw)
        self.norm = make_norm(kw["norm_layer"], kw["norm_eps"], kw["dtype"])
        self.attn = create_attn(**kw)
        self.ls = LayerScale(kw["dim"], self.init_values) if self.init_values else None
        self.drop_path_ = DropPath(self.drop_path)

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = self.attn(self.norm(x), train)
        return self.drop_path_(self.ls(x) if self.ls is not None else x, train)


class _FfnBranch(nn.Module):
    """One of ParallelThingsBlock's ffns: Sequential(norm, mlp, ls, drop_path)."""

    mlp_kw: dict
    norm_layer: str = "layernorm"
    norm_eps: float = 1e-6
    init_values: float | None = None
    drop_path: float = 0.0

    def setup(self) -> None:
        kw = dict(self.mlp_kw)
        self.norm = make_norm(self.norm_layer, self.norm_eps, kw["dtype"])
        self.mlp = create_mlp(**kw)
        self.ls = LayerScale(kw["dim"], self.init_values) if self.init_values else None
        self.drop_path_ = DropPath(self.drop_path)

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = self.mlp(self.norm(x), train)
        return self.drop_path_(self.ls(x) if self.ls is not None else x, train)


class ParallelThingsBlock(nn.Module):
    """num_parallel attention branches summed into x, then num_parallel MLP branches."""

    dim: int
    num_heads: int
    num_parallel: int = 2
    mlp_ratio: float = 4.0
    qkv_bias: bool = False
    qk_norm: bool = False
    scale_attn_norm: bool = False
    scale_mlp_norm: bool = False
    proj_bias: bool = True
    init_values: float | None = None
    proj_drop: float = 0.0
    attn_drop: float = 0.0
    drop_path: float = 0.0
    act_layer: str = "gelu"
    norm_layer: str = "layernorm"
    norm_eps: float = 1e-6
    mlp_layer: str = "mlp"
    attn_layer: str = "attn"
    depth: int = 0
    dual_lambda: bool = False
    dtype: Dtype = jnp.float32
    attn_impl: str = "auto"
    dense_impl: str = "auto"

    def setup(self) -> None:
        dim, dt = self.dim, self.dtype
        attn_kw = dict(
            attn_layer=self.attn_layer, dim=dim, num_heads=self.num_heads,
            qkv_bias=self.qkv_bias, qk_norm=self.qk_norm, scale_norm=self.scale_attn_norm,
            proj_bias=self.proj_bias, attn_drop=self.attn_drop, proj_drop=self.proj_drop,
            norm_layer=self.norm_layer, norm_eps=self.norm_eps, depth=self.depth, dtype=dt,
            attn_impl=self.attn_impl, dense_impl=self.dense_impl, dual_lambda=self.dual_lambda,
        )  # fmt: skip
        mlp_kw = dict(
            mlp_layer=self.mlp_layer, dim=dim, hidden_features=int(dim * self.mlp_ratio),
            act_layer=self.act_layer, norm_layer=self.norm_layer if self.scale_mlp_norm else None,
            norm_eps=self.norm_eps, bias=self.proj_bias, drop=self.proj_drop, dtype=dt,
            dense_impl=self.dense_impl,
        )  # fmt: skip
        branch = dict(init_values=self.init_values, drop_path=self.drop_path)
        self.attns = [_AttnBranch(attn_kw, **branch) for _ in range(self.num_parallel)]
        self.ffns = [
            _FfnBranch(mlp_kw, self.norm_layer, self.norm_eps, **branch)
            for _ in range(self.num_parallel)
        ]

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = x + sum(attn(x, train) for attn in self.attns)
        return x + sum(ffn(x, train) for ffn in self.ffns)
