"""timm's feature API, shared by every family: which blocks to take, and how to shape their tokens.

Mirrors ``feature_take_indices`` (timm ``models/_features.py``) and the tail every timm
``forward_intermediates`` shares (prefix-token split, spatial reshape). vitjax's spatial format is
"NHWC": timm's "NCHW" intermediates transposed by (0, 2, 3, 1). ``prune_variables`` cuts a
model's variables down to those of the smaller model ``prune_intermediate_layers`` returns
(Flax modules are immutable, so pruning builds a new model instead of editing one).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import traverse_util

from vitjax.layers.helpers import to_2tuple

__all__ = [
    "OUTPUT_FMTS",
    "check_output_fmt",
    "collect_intermediates",
    "dynamic_feat_size",
    "feature_take_indices",
    "format_intermediates",
    "prune_variables",
    "shape_intermediates",
    "split_prefix_tokens",
    "tokens_to_nhwc",
]

OUTPUT_FMTS = ("NHWC", "NLC")


def feature_take_indices(
    num_features: int,
    indices: int | Sequence[int] | None = None,
    as_set: bool = False,
) -> tuple[list[int] | set[int], int]:
    """timm's feature_take_indices: (absolute indices to take, the largest of them).

    None takes all, an int n the last n, a sequence those indices (negative ones count from the
    end). Out-of-range indices raise ValueError with timm's message (timm raises AssertionError).
    """
    if indices is None:
        indices = num_features
    if isinstance(indices, int):
        if not 0 < indices <= num_features:
            raise ValueError(f"last-n ({indices}) is out of range (1 to {num_features})")
        take = [num_features - indices + i for i in range(indices)]
    else:
        take = []
        for i in indices:
            idx = num_features + i if i < 0 else i
            if not 0 <= idx < num_features:
                raise ValueError(f"feature index {idx} is out of range (0 to {num_features - 1})")
            take.append(idx)
    if not take:
        raise ValueError("no feature indices to take (an empty sequence)")
    return (set(take) if as_set else take), max(take)


def check_output_fmt(output_fmt: str) -> bool:
    """True for the spatial format "NHWC", False for "NLC"; anything else is a ValueError."""
    if output_fmt in OUTPUT_FMTS:
        return output_fmt == "NHWC"
    hint = ""
    if output_fmt == "NCHW":
        hint = " (vitjax's spatial layout is NHWC: timm's NCHW transposed by (0, 2, 3, 1))"
    raise ValueError(f"output_fmt={output_fmt!r}: expected one of {OUTPUT_FMTS}{hint}")


def dynamic_feat_size(
    img_size: tuple[int, int], patch_size: int | tuple[int, int], dynamic_img_pad: bool = False
) -> tuple[int, int]:
    """timm's PatchEmbed.dynamic_feat_size: the token grid of an image (ceil when padded)."""
    (H, W), (ph, pw) = img_size, to_2tuple(patch_size)
    if dynamic_img_pad:
        return -(-H // ph), -(-W // pw)
    return H // ph, W // pw


def collect_intermediates(
    x: jax.Array,
    step: Callable[[int, jax.Array], jax.Array],
    num_blocks: int,
    take_indices: Sequence[int],
    max_index: int,
    stop_early: bool = False,
    norm: Callable[[jax.Array], jax.Array] | None = None,
) -> tuple[jax.Array, list[jax.Array]]:
    """Run step(i, x) for each block; keep x (norm(x) if norm is given) after the taken ones.

    With stop_early the blocks after max_index do not run, so the returned x is the output of
    block max_index, as in timm.
    """
    intermediates = []
    for i in range(max_index + 1 if stop_early else num_blocks):
        x = step(i, x)
        if i in take_indices:
            intermediates.append(norm(x) if norm is not None else x)
    return x, intermediates


def split_prefix_tokens(
    tokens: Sequence[jax.Array], num_prefix_tokens: int
) -> tuple[list[jax.Array], list[jax.Array] | None]:
    """(B, N, C) token sequences -> (patch tokens, prefix tokens); no prefix tokens gives None."""
    if not num_prefix_tokens:
        return list(tokens), None
    prefix = [y[:, :num_prefix_tokens] for y in tokens]  # (B, num_prefix_tokens, C)
    return [y[:, num_prefix_tokens:] for y in tokens], prefix


def tokens_to_nhwc(x: jax.Array, grid: tuple[int, int]) -> jax.Array:
    """(B, H * W, C) patch tokens, row-major over the grid -> (B, H, W, C)."""
    B, N, C = x.shape
    H, W = grid
    if N != H * W:
        raise ValueError(f"{N} patch tokens do not fill a {H}x{W} grid")
    return x.reshape(B, H, W, C)  # (B, H, W, C)


def shape_intermediates(
    intermediates: Sequence[jax.Array],
    num_prefix_tokens: int,
    grid: tuple[int, int],
    output_fmt: str = "NHWC",
) -> tuple[list[jax.Array], list[jax.Array] | None]:
    """(patch tokens as (B, H, W, C) for "NHWC" or (B, H * W, C) for "NLC", prefix tokens)."""
    spatial, prefix = split_prefix_tokens(intermediates, num_prefix_tokens)
    if check_output_fmt(output_fmt):
        spatial = [tokens_to_nhwc(y, grid) for y in spatial]
    return spatial, prefix


def format_intermediates(
    intermediates: Sequence[jax.Array],
    num_prefix_tokens: int,
    grid: tuple[int, int],
    output_fmt: str = "NHWC",
    return_prefix_tokens: bool = False,
) -> list[Any]:
    """timm's tail of forward_intermediates: split off prefix tokens, shape the patch tokens.

    Each entry is (B, H, W, C) for "NHWC" or (B, H * W, C) for "NLC"; with return_prefix_tokens
    a (patches, (B, num_prefix_tokens, C) prefix) tuple. A model without prefix tokens ignores
    return_prefix_tokens, as timm's VisionTransformer does (timm's Eva and RelPos fail there).
    """
    spatial, prefix = shape_intermediates(intermediates, num_prefix_tokens, grid, output_fmt)
    if return_prefix_tokens and prefix is not None:
        return list(zip(spatial, prefix, strict=True))
    return spatial


def _example_input(model: Any) -> jax.Array:
    cfg = model.cfg
    return jnp.zeros((1, *to_2tuple(cfg.img_size), cfg.in_chans), jnp.float32)


def _cut_leaf(path: tuple[str, ...], leaf: Any, want: tuple[int, ...]) -> Any:
    """leaf itself if it has the wanted shape; else its leading entries along the one axis
    that is longer (per-block tables such as mixed RoPE's ``freqs``)."""
    have = tuple(leaf.shape)
    if have == want:
        return leaf
    longer = [a for a, (h, w) in enumerate(zip(have, want, strict=False)) if h != w]
    if len(have) != len(want) or len(longer) != 1 or have[longer[0]] < want[longer[0]]:
        raise ValueError(f"{'/'.join(path)}: shape {have} cannot be cut to {want}")
    index = [slice(None)] * len(have)
    index[longer[0]] = slice(0, want[longer[0]])
    return leaf[tuple(index)]


def prune_variables(variables: Mapping[str, Any], model: Any, *example: Any) -> dict[str, Any]:
    """The variables of model (a pruned model) taken from those of the model it was pruned from.

    Keeps exactly the leaves model.init makes (every collection; example inputs default to a
    zero image of model.cfg's size), so dropped blocks, norms and heads go; a per-block table
    (mixed RoPE's ``freqs``) keeps the kept blocks' entries. A leaf the pruned model needs but
    variables lack is a ValueError naming it.
    """
    example = example or (_example_input(model),)
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), *example)
    want = traverse_util.flatten_dict(shapes)
    have = traverse_util.flatten_dict(variables)
    missing = sorted("/".join(p) for p in want if p not in have)
    if missing:
        raise ValueError(f"the pruned model needs variables the source lacks: {missing}")
    return traverse_util.unflatten_dict(
        {p: _cut_leaf(p, have[p], tuple(s.shape)) for p, s in want.items()}
    )
