"""Shared test helpers: build a torch module and its Flax twin with the same (random) weights."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import torch

from vitjax.weights import convert


def randomize_(module: torch.nn.Module, seed: int = 0, std: float = 0.2) -> torch.nn.Module:
    """Give every parameter non-trivial values (norm scales near 1), in place; eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=g) * std
            is_scale = name.endswith(
                (
                    "norm1.weight",
                    "norm2.weight",
                    "norm.weight",
                    "_norm.weight",
                    "norm_pre.weight",
                    "fc_norm.weight",
                )
            )
            p.copy_(1.0 + noise if is_scale else noise)
    return module.eval()


def torch_state(module: torch.nn.Module) -> dict[str, np.ndarray]:
    """state_dict as float32 numpy arrays."""
    return {k: v.detach().cpu().float().numpy() for k, v in module.state_dict().items()}


def flax_twin(flax_module: Any, torch_module: torch.nn.Module, *example: Any) -> dict[str, Any]:
    """Flax variables holding torch_module's weights; every key and shape checked."""
    shapes = jax.eval_shape(flax_module.init, jax.random.PRNGKey(0), *example)["params"]
    params = convert.torch_to_flax(torch_state(torch_module), shapes)
    return {"params": jax.tree_util.tree_map(jnp.asarray, params)}


def nchw(x: np.ndarray) -> torch.Tensor:
    """NHWC numpy batch -> NCHW torch tensor."""
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
