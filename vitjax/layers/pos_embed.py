"""Absolute position embeddings resized to a new grid, as timm's resample_abs_pos_embed."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def resample_abs_pos_embed(
    posemb: jax.Array,
    new_size: tuple[int, int],
    old_size: tuple[int, int],
    num_prefix_tokens: int = 0,
    method: str = "bicubic",
    antialias: bool = True,
) -> jax.Array:
    """Resize (1, prefix + H*W, C) position embeddings to a new (H', W') grid."""
    # bicubic + antialias is timm's default; bilinear without antialias its .npz path.
    if tuple(new_size) == tuple(old_size):
        return posemb
    prefix, grid = posemb[:, :num_prefix_tokens], posemb[:, num_prefix_tokens:]
    C = grid.shape[-1]
    grid = grid.reshape(1, *old_size, C).astype(jnp.float32)  # (1, H, W, C)
    method = {"bicubic": "cubic", "bilinear": "linear"}.get(method, method)
    grid = jax.image.resize(grid, (1, *new_size, C), method=method, antialias=antialias)
    grid = grid.reshape(1, -1, C).astype(posemb.dtype)  # (1, H'*W', C)
    return jnp.concatenate([prefix, grid], axis=1)
