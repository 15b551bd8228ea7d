"""Public entry points: create_model, from_timm, to_timm_state_dict, save/load_pretrained."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vitjax import convert, io
from vitjax.configs import ViTConfig, get_config, to_2tuple
from vitjax.vit import VisionTransformer

Variables = dict[str, Any]
_HEAD_KEYS = ("head.weight", "head.bias", "head_dist.weight", "head_dist.bias")


def _dummy_input(cfg: ViTConfig) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct((1, *to_2tuple(cfg.img_size), cfg.in_chans), jnp.float32)


def init_variables(model: VisionTransformer, seed: int = 0) -> Variables:
    """Randomly initialised variables (timm-style init) for a model."""
    x = jnp.zeros(_dummy_input(model.cfg).shape, jnp.float32)
    return jax.jit(model.init)(jax.random.PRNGKey(seed), x)


def param_shapes(model: VisionTransformer) -> dict[str, Any]:
    """The model's parameter tree as ShapeDtypeStructs, without allocating it."""
    rng = jax.ShapeDtypeStruct((2,), jnp.uint32)
    return jax.eval_shape(model.init, rng, _dummy_input(model.cfg))["params"]


def count_params(variables: Mapping[str, Any]) -> int:
    """Number of parameters in a variables or params tree."""
    tree = variables.get("params", variables)
    return sum(int(np.prod(np.shape(x))) for x in jax.tree_util.tree_leaves(tree))


def variables_from_state_dict(
    model: VisionTransformer, state_dict: Mapping[str, Any], what: str = "state_dict"
) -> Variables:
    """Flax variables for model from a timm-key state_dict, every key and shape checked."""
    params = convert.torch_to_flax(state_dict, param_shapes(model), what)
    return {"params": jax.tree_util.tree_map(jnp.asarray, params)}


def to_timm_state_dict(
    model: VisionTransformer, variables: Mapping[str, Any]
) -> dict[str, np.ndarray]:
    """timm-key state_dict (numpy) that loads into timm.create_model(name) with strict=True."""
    del model  # the tree alone determines the keys; kept for API symmetry
    return convert.flax_to_torch(jax.device_get(variables["params"]))


def _adapt_head(
    state_dict: dict[str, np.ndarray], model: VisionTransformer, seed: int
) -> dict[str, np.ndarray]:
    """Swap the checkpoint's classifier for a fresh one when num_classes was changed on purpose."""
    want = convert.flax_to_torch(jax.tree_util.tree_map(np.zeros_like, param_shapes(model)))
    if all(state_dict.get(k, np.empty(0)).shape == want[k].shape for k in _HEAD_KEYS if k in want):
        return state_dict
    fresh_sd = convert.flax_to_torch(jax.device_get(init_variables(model, seed)["params"]))
    out = {k: v for k, v in state_dict.items() if k not in _HEAD_KEYS}
    out.update({k: fresh_sd[k] for k in _HEAD_KEYS if k in fresh_sd})
    return out


def load_checkpoint(
    model: VisionTransformer,
    checkpoint: str | os.PathLike | Mapping[str, Any],
    *,
    new_head: bool = False,
    seed: int = 0,
    what: str | None = None,
) -> Variables:
    """Variables for model from a checkpoint file, save_pretrained directory or state_dict."""
    what = what or ("state_dict" if isinstance(checkpoint, Mapping) else str(checkpoint))
    sd = dict(checkpoint) if isinstance(checkpoint, Mapping) else io.load_state_dict(checkpoint)
    if convert.is_notebook_layout(sd):
        sd = convert.notebook_to_timm(sd)
    if new_head:
        sd = _adapt_head(sd, model, seed)
    return variables_from_state_dict(model, sd, what=what)


def create_model(
    name: str,
    pretrained: bool = False,
    checkpoint_path: str | os.PathLike | None = None,
    seed: int = 0,
    dtype: Any = jnp.float32,
    **overrides: Any,
) -> tuple[VisionTransformer, Variables]:
    """Build a model by timm name; random init, or weights from checkpoint_path (or pretrained)."""
    if pretrained and checkpoint_path is None:
        from vitjax.hub import pretrained_checkpoint

        checkpoint_path = pretrained_checkpoint(name)
    if checkpoint_path is None:
        model = VisionTransformer(get_config(name, **overrides), dtype=dtype)
        return model, init_variables(model, seed)
    sd = io.load_state_dict(checkpoint_path)
    notebook = (
        convert.notebook_overrides(sd, get_config(name)) if convert.is_notebook_layout(sd) else {}
    )
    model = VisionTransformer(get_config(name, **{**notebook, **overrides}), dtype=dtype)
    variables = load_checkpoint(
        model, sd, new_head="num_classes" in overrides, seed=seed, what=str(checkpoint_path)
    )
    return model, variables


def from_timm(module: Any, dtype: Any = jnp.float32) -> tuple[VisionTransformer, Variables]:
    """The Flax twin of a timm VisionTransformer instance, with its weights."""
    from vitjax.timm_compat import config_from_timm

    model = VisionTransformer(config_from_timm(module), dtype=dtype)
    sd = {k: v.detach().cpu().float().numpy() for k, v in module.state_dict().items()}
    return model, variables_from_state_dict(model, sd, what=type(module).__name__)


def save_pretrained(
    directory: str | os.PathLike,
    model: VisionTransformer,
    variables: Mapping[str, Any],
    pretrained_cfg: Mapping[str, Any] | None = None,
) -> os.PathLike:
    """Write config.json + model.safetensors (timm keys, so timm and vittorch load it too)."""
    config = {
        "architecture": "vit",
        "model_config": model.cfg.to_dict(),
        "pretrained_cfg": dict(pretrained_cfg or {}),
    }
    return io.write_pretrained_dir(directory, config, to_timm_state_dict(model, variables))


def load_pretrained(
    directory: str | os.PathLike, dtype: Any = jnp.float32
) -> tuple[VisionTransformer, Variables]:
    """Model and variables from a save_pretrained directory."""
    config = io.read_config(directory)
    try:
        cfg = ViTConfig.from_dict(config["model_config"])
    except (TypeError, ValueError) as e:
        raise io.CheckpointError(f"{directory}/{io.CONFIG_NAME}: bad model_config ({e})") from e
    model = VisionTransformer(cfg, dtype=dtype)
    return model, load_checkpoint(model, directory)
