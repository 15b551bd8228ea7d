"""Public entry points: create_model, from_timm, to_timm_state_dict, save/load_pretrained."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vitjax import convert, io
from vitjax.configs import ViTConfig, get_config, split_tag, to_2tuple
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
    flat = convert.flatten(param_shapes(model))
    want = {}
    for head in ("head", "head_dist"):
        if (head, "kernel") in flat:
            n_in, n_out = flat[(head, "kernel")].shape
            want[f"{head}.weight"], want[f"{head}.bias"] = (n_out, n_in), (n_out,)
    if all(np.shape(state_dict.get(k, ())) == shape for k, shape in want.items()):
        return state_dict
    fresh_sd = convert.flax_to_torch(jax.device_get(init_variables(model, seed)["params"]))
    out = {k: v for k, v in state_dict.items() if k not in _HEAD_KEYS}
    out.update({k: fresh_sd[k] for k in _HEAD_KEYS if k in fresh_sd})
    return out


def _resample_source(
    name: str, checkpoint: str | os.PathLike, defaults: Mapping[str, Any]
) -> tuple[int, int] | None:
    """Position grid the checkpoint was trained on: its config.json's, else the named model's."""
    path = Path(checkpoint)
    if path.is_dir() and (path / io.CONFIG_NAME).is_file():
        try:
            return ViTConfig.from_dict(io.read_config(path)["model_config"]).grid_size
        except (TypeError, ValueError):
            return None
    return get_config(name, **defaults).grid_size


def _pretrained_defaults(name: str) -> dict[str, Any]:
    """num_classes / img_size of timm's pretrained config for name (a tag may change them)."""
    from vitjax.hub import resolve_pretrained_cfg

    try:
        cfg = resolve_pretrained_cfg(name)
    except ValueError:
        return {}
    out: dict[str, Any] = {}
    if isinstance(cfg.get("num_classes"), int) and cfg["num_classes"] >= 0:
        out["num_classes"] = cfg["num_classes"]
    if cfg.get("fixed_input_size") and cfg.get("input_size"):
        h, w = cfg["input_size"][-2:]
        out["img_size"] = h if h == w else (h, w)
    return out


def load_checkpoint(
    model: VisionTransformer,
    checkpoint: str | os.PathLike | Mapping[str, Any],
    *,
    new_head: bool = False,
    seed: int = 0,
    what: str | None = None,
    resample_pos_embed: bool = False,
    source_grid: tuple[int, int] | None = None,
    interpolation: str | None = None,
) -> Variables:
    """Variables for model from a checkpoint file, directory or state_dict, read as timm does."""
    # timm's conventions: CLIP / DINOv2 / OpenCLIP layouts and DeiT-3 gamma names; with
    # resample_pos_embed, pos_embed is resized to the model's grid (bicubic + antialias, or
    # bilinear for .npz files, as timm's _load_weights).
    from vitjax import timm_compat

    what = what or ("state_dict" if isinstance(checkpoint, Mapping) else str(checkpoint))
    sd = dict(checkpoint) if isinstance(checkpoint, Mapping) else io.load_state_dict(checkpoint)
    if convert.is_notebook_layout(sd):
        sd = convert.notebook_to_timm(sd)
    else:
        sd = timm_compat.filter_state_dict(sd)
        timm_compat.reshape_linear_patch_embed(sd, model.cfg)
    if resample_pos_embed:
        if interpolation is None:
            npz = not isinstance(checkpoint, Mapping) and str(checkpoint).endswith(".npz")
            interpolation = "bilinear" if npz else "bicubic"
        try:
            sd = timm_compat.adapt_pos_embed(
                sd, model.cfg, source_grid, interpolation, antialias=interpolation == "bicubic"
            )
        except ValueError as e:
            raise convert.WeightMismatchError(f"{what}: pos_embed: {e}") from e
    if new_head:
        sd = _adapt_head(sd, model, seed)
    try:
        return variables_from_state_dict(model, sd, what=what)
    except convert.WeightMismatchError as e:
        hint = f"\n  the checkpoint holds: {timm_compat.describe_state_dict(sd)}"
        raise convert.WeightMismatchError(f"{e}{hint}") from None


def create_model(
    name: str,
    pretrained: bool = False,
    checkpoint_path: str | os.PathLike | None = None,
    seed: int = 0,
    dtype: Any = jnp.float32,
    **overrides: Any,
) -> tuple[VisionTransformer, Variables]:
    """Model by timm name ('arch[.tag]'): random init, checkpoint_path, or pretrained (HF cache)."""
    # An img_size override (or pretrained=True) resamples the checkpoint's pos_embed like timm.
    defaults = _pretrained_defaults(name) if pretrained or split_tag(name)[1] else {}
    if pretrained and checkpoint_path is None:
        from vitjax.hub import pretrained_checkpoint

        checkpoint_path = pretrained_checkpoint(name)
    if checkpoint_path is None:
        model = VisionTransformer(get_config(name, **{**defaults, **overrides}), dtype=dtype)
        return model, init_variables(model, seed)
    sd = io.load_state_dict(checkpoint_path)
    notebook = (
        convert.notebook_overrides(sd, get_config(name)) if convert.is_notebook_layout(sd) else {}
    )
    model = VisionTransformer(
        get_config(name, **{**defaults, **notebook, **overrides}), dtype=dtype
    )
    resample = pretrained or "img_size" in overrides
    variables = load_checkpoint(
        model,
        sd,
        new_head="num_classes" in overrides,
        seed=seed,
        what=str(checkpoint_path),
        resample_pos_embed=resample,
        source_grid=_resample_source(name, checkpoint_path, defaults) if resample else None,
        interpolation="bilinear" if str(checkpoint_path).endswith(".npz") else "bicubic",
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
    pretrained_cfg: Mapping[str, Any] | str | None = None,
) -> os.PathLike:
    """Write config.json + model.safetensors (timm keys, so timm and vittorch load it too)."""
    # pretrained_cfg: timm's (mean, std, crop_pct, input_size, labels...) or a name to look up.
    if pretrained_cfg:
        from vitjax.hub import export_pretrained_cfg, fit_pretrained_cfg

        if isinstance(pretrained_cfg, str):
            pretrained_cfg = export_pretrained_cfg(pretrained_cfg)
        pretrained_cfg = fit_pretrained_cfg(dict(pretrained_cfg), model.cfg)
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
