"""Image to patch tokens: one strided convolution (timm's PatchEmbed), NHWC in."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn

from vitjax.layers.helpers import Dtype, to_2tuple
from vitjax.layers.linear import PatchConv
from vitjax.layers.norms import make_norm


def check_images(x: jax.Array, in_chans: int) -> None:
    """Raise a ValueError that says what is wrong unless x is an NHWC batch of in_chans."""
    if x.ndim != 4:
        raise ValueError(f"expected a batch of NHWC images (B, H, W, C), got shape {x.shape}")
    B, H, W, C = x.shape
    if C == in_chans:
        return
    hint = ""
    if H == in_chans:  # (B, C, H, W): the torch layout
        hint = "; it looks NCHW (torch's layout): pass x.transpose(0, 2, 3, 1)"
    raise ValueError(
        f"expected NHWC images with {in_chans} channels (B, H, W, {in_chans}), "
        f"got shape {x.shape}{hint}"
    )


class PatchEmbed(nn.Module):
    """(B, H, W, C) -> (B, N, D) tokens, or (B, gh, gw, D) with dynamic_img_size."""

    img_size: int | tuple[int, int] = 224
    patch_size: int | tuple[int, int] = 16
    in_chans: int = 3
    embed_dim: int = 768
    bias: bool = True
    norm_layer: str | None = None
    norm_eps: float = 1e-6
    dynamic_img_size: bool = False
    dynamic_img_pad: bool = False
    dtype: Dtype = jnp.float32
    dense_impl: str = "auto"

    def setup(self) -> None:
        patch = to_2tuple(self.patch_size)
        self.proj = PatchConv(
            self.embed_dim, patch, use_bias=self.bias, dtype=self.dtype, impl=self.dense_impl
        )
        self.norm = (
            make_norm(self.norm_layer, self.norm_eps, self.dtype) if self.norm_layer else None
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        check_images(x, self.in_chans)
        B, H, W, C = x.shape
        ph, pw = to_2tuple(self.patch_size)
        if not self.dynamic_img_size and (H, W) != to_2tuple(self.img_size):
            raise ValueError(
                f"input size {(H, W)} does not match the model's img_size {self.img_size} "
                "(build it with img_size=... or dynamic_img_size=True)"
            )
        if self.dynamic_img_pad:
            x = jnp.pad(x, ((0, 0), (0, (ph - H % ph) % ph), (0, (pw - W % pw) % pw), (0, 0)))
        elif self.dynamic_img_size and (H % ph or W % pw):  # fixed sizes floor, like timm
            raise ValueError(f"input size {(H, W)} is not divisible by patch size {(ph, pw)}")
        x = self.proj(x)  # (B, gh, gw, D)
        if not self.dynamic_img_size:
            x = x.reshape(B, -1, x.shape[-1])  # (B, N, D)
        return self.norm(x) if self.norm is not None else x
