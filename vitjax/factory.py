"""Public entry points for every family: create_model, from_timm, to_timm_state_dict, save/load."""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vitjax import one_off, registry
from vitjax.util import to_2tuple
from vitjax.weights import convert, hub, place, validate
from vitjax.weights import files as io
from vitjax.weights.errors import CheckpointError, WeightMismatchError

Variables = dict[str, Any]
Model = Any  # a family's MODEL (a flax.linen.Module with a .cfg)
_HEAD_KEYS = ("head.weight", "head.bias", "head_dist.weight", "head_dist.bias")


def _dummy_input(cfg: Any) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct((1, *to_2tuple(cfg.img_size), cfg.in_chans), jnp.float32)


def init_variables(
    model: Model, seed: int = 0, param_dtype: Any = None, shardings: Any = None
) -> Variables:
    """Randomly initialised variables (timm-style init); param_dtype: floating leaves' dtype.

    The cast runs inside the jitted init, so a bf16 model never exists in float32 as a whole;
    shardings (as in load_checkpoint) makes each leaf where it belongs. Without shardings the
    compiled init is kept for the process (the last 16 models): the same model again, with any
    seed, compiles nothing (vit_base_patch16_224: create_model 5.7 s, then 0.8-0.9 s).
    """
    if callable(shardings):
        shardings = place.resolve_shardings(shardings, variable_shapes(model))
    key = jax.random.PRNGKey(seed)
    if shardings is None:  # the same model again (any seed) reuses its compiled init
        options = one_off.options_for()
        program = _init_program(model, param_dtype, str(options))
        return dict(program(key))
    return dict(_compile_init(model, param_dtype, shardings)(key))


@functools.lru_cache(maxsize=16)
def _init_program(model: Model, param_dtype: Any, options: str) -> Any:
    """_compile_init on the default backend, per model, dtype and compiler options in force."""
    return _compile_init(model, param_dtype, None)


def _compile_init(model: Model, param_dtype: Any, shardings: Any) -> Any:
    """The init program for any seed (run once per model: vitjax.one_off compiles it quickly)."""
    x = jnp.zeros(_dummy_input(model.cfg).shape, jnp.float32)

    def init(rng: jax.Array) -> Variables:
        variables = dict(model.init(rng, x))
        return _cast_floats(variables, param_dtype) if param_dtype is not None else variables

    jitted = jax.jit(init, out_shardings=shardings)
    return one_off.compile_once(jitted, jax.random.PRNGKey(0), platform=_platform(shardings))


def _platform(shardings: Any) -> str:
    """The platform the init runs on: the shardings' devices', else the default backend."""
    for s in jax.tree_util.tree_leaves(shardings):
        if isinstance(s, jax.sharding.Sharding):
            return next(iter(s.device_set)).platform
    return jax.default_backend()


def _cast_floats(tree: Any, dtype: Any) -> Any:
    return jax.tree_util.tree_map(
        lambda v: v.astype(dtype) if jnp.issubdtype(v.dtype, jnp.floating) else v, tree
    )


def stacked_lists(model: Model) -> dict[str, int]:
    """List attributes the model runs with nn.scan, stored stacked: {name: length}."""
    fn = getattr(_family_module(model), "stacked_lists", None)
    return dict(fn(model.cfg)) if fn else {}


def variable_shapes(model: Model) -> dict[str, Any]:
    """The model's variables (params, batch_stats) as ShapeDtypeStructs, without allocating."""
    rng = jax.ShapeDtypeStruct((2,), jnp.uint32)
    return dict(jax.eval_shape(model.init, rng, _dummy_input(model.cfg)))


def param_shapes(model: Model) -> dict[str, Any]:
    """The model's parameter tree as ShapeDtypeStructs, without allocating it."""
    return variable_shapes(model)["params"]


def tree_bytes(tree: Any) -> int:
    """Bytes of a tree of arrays or jax.ShapeDtypeStructs."""
    leaves = jax.tree_util.tree_leaves(tree)
    return sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize for x in leaves)


def count_params(variables: Mapping[str, Any]) -> int:
    """Number of parameters in a variables or params tree."""
    tree = variables.get("params", variables)
    return sum(int(np.prod(np.shape(x))) for x in jax.tree_util.tree_leaves(tree))


def variables_from_state_dict(
    model: Model, state_dict: Mapping[str, Any], what: str = "state_dict"
) -> Variables:
    """Flax variables for model from a timm-key state_dict, every key and shape checked."""
    shapes = variable_shapes(model)
    put = place.Placer(check_finite=False, model_bytes=tree_bytes(shapes))
    stacked = stacked_lists(model)
    return convert.torch_to_flax_variables(state_dict, shapes, what, put=put, stacked=stacked)


def to_timm_state_dict(
    model: Model, variables: Mapping[str, Any], framework: str = "np"
) -> dict[str, Any]:
    """timm-key state_dict that loads into timm.create_model(name) with strict=True.

    framework="np": numpy arrays (safetensors.numpy.save_file takes them); "pt": writable torch
    tensors, for ``timm_model.load_state_dict(sd)`` (torch imported only then).
    """
    registry.family_of_model(model)  # a vitjax model; its tree alone determines the keys
    sd = convert.flax_to_torch_variables(jax.device_get(dict(variables)), stacked_lists(model))
    if framework == "np":
        return sd
    if framework != "pt":
        raise ValueError(f"framework={framework!r}: expected 'np' or 'pt'")
    import torch

    return {k: torch.from_numpy(np.array(v)) for k, v in sd.items()}  # np.array: an owned copy


def _adapt_head(
    state_dict: dict[str, np.ndarray], model: Model, seed: int
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
    x = jnp.zeros(_dummy_input(model.cfg).shape, jnp.float32)

    def heads(rng: jax.Array) -> Any:  # jitted: the rest of the fresh model is never computed
        params = model.init(rng, x)["params"]
        return {k: params[k] for k in ("head", "head_dist") if k in params}

    fresh_sd = convert.flax_to_torch(jax.device_get(jax.jit(heads)(jax.random.PRNGKey(seed))))
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
            return getattr(_config_from_dir(path), "grid_size", None)
        except (CheckpointError, KeyError):
            return None
    return getattr(registry.get_config(name, **defaults), "grid_size", None)


def _pretrained_defaults(name: str) -> dict[str, Any]:
    """num_classes / img_size of timm's pretrained config for name (a tag may change them)."""
    try:
        cfg = hub.resolve_pretrained_cfg(name)
    except ValueError:
        return {}
    out: dict[str, Any] = {}
    if isinstance(cfg.get("num_classes"), int) and cfg["num_classes"] >= 0:
        out["num_classes"] = cfg["num_classes"]
    if cfg.get("fixed_input_size") and cfg.get("input_size"):
        h, w = cfg["input_size"][-2:]
        out["img_size"] = h if h == w else (h, w)
    return out


def _family_module(model: Model) -> Any:
    return registry.model_module(registry.family_of_model(model))


def _non_float_keys(shapes: Mapping[str, Any]) -> set[str]:
    """timm keys of the model's variables that are not floating (none in today's families)."""
    return {
        convert.flax_leaf_to_torch(path[1:], np.broadcast_to(np.False_, leaf.shape))[0]
        for path, leaf in convert.flatten(shapes).items()
        if not validate.is_float(leaf.dtype)
    }


def load_checkpoint(
    model: Model,
    checkpoint: str | os.PathLike | Mapping[str, Any],
    *,
    new_head: bool = False,
    seed: int = 0,
    what: str | None = None,
    resample_pos_embed: bool = False,
    source_grid: tuple[int, int] | None = None,
    interpolation: str | None = None,
    dtype: Any = None,
    param_dtype: Any = None,
    allow_nonfinite: bool = False,
    shardings: Any = None,
) -> Variables:
    """Variables for model from a checkpoint file, directory or state_dict, read as timm does.

    Floating weights become float32 unless already in dtype (default: the model's dtype), so a
    bf16 file stays bf16 only when bf16 is asked for; param_dtype casts every floating weight to
    it instead. Integer, bool or complex tensors where the model has float weights, and NaN / Inf
    weights (unless allow_nonfinite), are refused. Leaves are converted and placed one at a time
    (a .safetensors file is read tensor by tensor): shardings, a tree like variable_shapes(model)
    of jax Shardings (or a callable taking that tree and returning one), puts each leaf straight
    into its sharding, so no device ever holds more than its share.
    """
    # The family's checkpoint_filter_fn rewrites foreign layouts into timm's keys; with
    # resample_pos_embed, pos_embed is resized to the model's grid (bicubic + antialias, or
    # bilinear for .npz files, as timm's _load_weights).
    what = what or ("state_dict" if isinstance(checkpoint, Mapping) else str(checkpoint))
    if isinstance(checkpoint, Mapping):
        sd = dict(checkpoint)  # a new dict: entries leave it as they are converted
    else:
        sd = io.load_state_dict(checkpoint, lazy=True)
    keep = getattr(model, "dtype", jnp.float32) if dtype is None else dtype
    if interpolation is None:
        npz = not isinstance(checkpoint, Mapping) and str(checkpoint).endswith(".npz")
        interpolation = "bilinear" if npz else "bicubic"
    family = _family_module(model)
    try:
        sd = family.checkpoint_filter_fn(
            sd, model.cfg, resample_pos_embed=resample_pos_embed, source_grid=source_grid,
            interpolation=interpolation, antialias=interpolation == "bicubic",
        )  # fmt: skip
    except WeightMismatchError as e:
        raise WeightMismatchError(f"{what}: {e}") from e
    shapes = variable_shapes(model)
    validate.check_float_dtypes(sd, _non_float_keys(shapes), what)
    if new_head:
        sd = _adapt_head(sd, model, seed)
    put = place.Placer(
        keep,
        param_dtype,
        place.flat_shardings(shardings, shapes),
        check_finite=not allow_nonfinite,
        model_bytes=tree_bytes(shapes),
    )
    try:
        variables = convert.torch_to_flax_variables(
            sd, shapes, what, put=put, stacked=stacked_lists(model), consume=True
        )
    except WeightMismatchError as e:
        describe = getattr(family, "describe_state_dict", None)
        hint = f"\n  the checkpoint holds: {describe(sd)}" if describe else ""
        raise WeightMismatchError(f"{e}{hint}") from None
    put.finish(variables, what)
    return variables


def build_model(name: str, dtype: Any = jnp.float32, **overrides: Any) -> Model:
    """The model (a Flax module, no weights made) for a timm name: see variable_shapes."""
    family = registry.resolve(name)[0]
    return _build(family, registry.get_config(name, **overrides), dtype)


def _build(family: str, cfg: Any, dtype: Any) -> Model:
    return registry.model_module(family).MODEL(cfg, dtype=dtype)


def _create_from_hub(
    name: str,
    checkpoint_path: str | os.PathLike | None,
    seed: int,
    dtype: Any,
    cache_dir: str | os.PathLike | None,
    overrides: dict[str, Any],
    load: dict[str, Any],
) -> tuple[Model, Variables]:
    """An hf-hub: repo's model (its config.json, then overrides) with the repo's weights."""
    # As timm.create_model("hf-hub:...", pretrained=True): model_args and the pretrained cfg
    # (num_classes, in_chans, a fixed img_size) make the config and keyword overrides win; a new
    # num_classes gets a fresh head and a new img_size a resampled pos_embed.
    family, fields, pretrained_cfg = hub.hub_model_config(name, cache_dir)
    source = validate.model_config(family, fields, f"{name} ({io.CONFIG_NAME})")
    cfg = type(source).from_dict({**source.to_dict(), **overrides}) if overrides else source
    model = _build(family, cfg, dtype)
    if checkpoint_path is None:
        checkpoint_path = hub.pretrained_checkpoint(pretrained_cfg, cache_dir)
    resample = "img_size" in overrides
    variables = load_checkpoint(
        model,
        checkpoint_path,
        new_head="num_classes" in overrides,
        seed=seed,
        what=f"{name} ({checkpoint_path})",
        resample_pos_embed=resample,
        source_grid=getattr(source, "grid_size", None) if resample else None,
        **load,
    )
    return model, variables


def create_model(
    name: str,
    pretrained: bool = False,
    checkpoint_path: str | os.PathLike | None = None,
    seed: int = 0,
    dtype: Any = jnp.float32,
    allow_nonfinite: bool = False,
    cache_dir: str | os.PathLike | None = None,
    param_dtype: Any = None,
    shardings: Any = None,
    **overrides: Any,
) -> tuple[Model, Variables]:
    """Model by timm name ('arch[.tag]' or 'hf-hub:org/repo[@rev]'), random or with weights.

    dtype: the compute dtype. param_dtype: the floating parameters' dtype (default float32, or a
    checkpoint's own dtype where that is dtype: a bf16 file with dtype=bfloat16 stays bf16).
    shardings: where each leaf goes (see load_checkpoint); random weights are made in place too.
    """
    # pretrained=True downloads timm's weights from the Hugging Face hub as timm does (cache_dir,
    # else HF_HUB_CACHE, holds them). An img_size override (or pretrained=True) resamples the
    # checkpoint's pos_embed like timm.
    load = dict(allow_nonfinite=allow_nonfinite, param_dtype=param_dtype, shardings=shardings)
    if name.startswith("local-dir:"):  # a save_pretrained folder, or one in timm's hub layout
        if overrides or checkpoint_path is not None:
            raise ValueError(f"{name}: a local-dir: model takes no overrides or checkpoint_path")
        return load_pretrained(name, dtype=dtype, **load)
    if hub.is_hub_name(name):  # always the repo's weights (timm's hf-hub: with pretrained=True)
        return _create_from_hub(name, checkpoint_path, seed, dtype, cache_dir, overrides, load)
    family, arch, tag = registry.resolve(name)
    defaults = _pretrained_defaults(name) if pretrained or tag else {}
    if pretrained and checkpoint_path is None:
        checkpoint_path = hub.pretrained_checkpoint(name, cache_dir)
    if checkpoint_path is None:
        model = _build(family, registry.get_config(name, **{**defaults, **overrides}), dtype)
        return model, init_variables(model, seed, param_dtype, shardings)
    sd = io.load_state_dict(checkpoint_path, lazy=True)  # keys and shapes; values when converted
    implied = getattr(registry.model_module(family), "checkpoint_overrides", None)
    implied = implied(sd, registry.get_config(name)) if implied else {}
    model = _build(family, registry.get_config(name, **{**defaults, **implied, **overrides}), dtype)
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
        **load,
    )
    return model, variables


def from_timm(module: Any, dtype: Any = jnp.float32) -> tuple[Model, Variables]:
    """The Flax twin of a timm model instance of any supported family, with its weights."""
    family = registry.family_of_timm(module)
    model = _build(family, registry.model_module(family).config_from_timm(module), dtype)
    sd = {
        k: v.detach().cpu().numpy()
        if not v.is_floating_point()
        else v.detach().cpu().float().numpy()
        for k, v in module.state_dict().items()
    }
    return model, variables_from_state_dict(model, sd, what=type(module).__name__)


def _jsonable(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def timm_fields(model: Model, architecture: str | None = None) -> dict[str, Any]:
    """config.json entries of timm's hub layout (architecture, num_classes, model_args, ...).

    The architecture is the given timm name when the model is that name plus timm keyword
    arguments, else the family's name needing the fewest; {} when timm cannot express the config
    (e.g. the tutorial models' LayerNorm eps 1e-5, or a family without timm_model_args).
    """
    family = registry.family_of_model(model)
    args_of = getattr(registry.model_module(family), "timm_model_args", None)
    if args_of is None:
        return {}
    names = [registry.split_tag(architecture)[0]] if architecture else []
    names += [
        n for n in registry.config_module(family).VARIANTS if not n.startswith("vit_tutorial")
    ]
    best: tuple[str, dict[str, Any]] | None = None
    for name in names:
        if name not in registry.config_module(family).VARIANTS or name.startswith("vit_tutorial"):
            continue
        try:  # JSON-able arguments only: no timm layer classes (nor timm imported to make them)
            args = args_of(name, model.cfg, layers=False)
        except (ValueError, KeyError):
            continue
        if best is None or len(args) < len(best[1]):
            best = (name, args)
        if name == names[0] and architecture:
            break  # the caller's name, when timm can express the model with it
    if best is None:
        return {}
    name, args = best
    cfg = model.cfg
    return {
        "architecture": name,
        "num_classes": cfg.num_classes,
        "num_features": getattr(cfg, "embed_dim", None),
        "global_pool": getattr(cfg, "global_pool", None),
        "model_args": {k: _jsonable(v) for k, v in {**args, "img_size": cfg.img_size}.items()},
    }


def save_pretrained(
    directory: str | os.PathLike,
    model: Model,
    variables: Mapping[str, Any],
    pretrained_cfg: Mapping[str, Any] | str | None = None,
    overwrite: bool = False,
    architecture: str | None = None,
) -> os.PathLike:
    """Write config.json + model.safetensors in timm's hub layout (and vitjax's exact config).

    ``timm.create_model("local-dir:DIR", pretrained=True)`` loads the folder wherever timm can
    express the model (see ``timm_fields``; architecture: the timm name to prefer), and
    ``vitjax.load_pretrained(DIR)`` / ``create_model("local-dir:DIR")`` always.
    pretrained_cfg: timm's (mean, std, crop_pct, input_size, labels...) or a name to look up.
    Other files in directory are kept; a config.json / model.safetensors vitjax did not write is
    refused unless overwrite=True.
    """
    if pretrained_cfg:
        if isinstance(pretrained_cfg, str):
            pretrained_cfg = hub.export_pretrained_cfg(pretrained_cfg)
        pretrained_cfg = hub.fit_pretrained_cfg(dict(pretrained_cfg), model.cfg)
    family = registry.family_of_model(model)
    timm = timm_fields(model, architecture)
    pretrained = dict(pretrained_cfg or {})
    pretrained.pop("hf_hub_id", None)
    if timm:
        pretrained = hub.fit_pretrained_cfg(pretrained, model.cfg)
        pretrained["architecture"] = timm["architecture"]
    config = {
        "architecture": family,  # replaced by the timm name below where timm can build it
        **timm,
        "family": family,
        "model_config": model.cfg.to_dict(),
        "pretrained_cfg": pretrained,
    }
    sd = to_timm_state_dict(model, variables)
    return io.write_pretrained_dir(directory, config, sd, overwrite=overwrite)


def _config_from_dir(directory: str | os.PathLike) -> Any:
    """The model config a save_pretrained (or timm hub-layout) directory's config.json holds."""
    config = io.read_config(directory)  # checks types, ranges and size
    return registry.config_module(config["family"]).CONFIG.from_dict(config["model_config"])


def load_pretrained(
    directory: str | os.PathLike,
    dtype: Any = jnp.float32,
    allow_nonfinite: bool = False,
    param_dtype: Any = None,
    shardings: Any = None,
) -> tuple[Model, Variables]:
    """Model and variables from a save_pretrained directory (or one in timm's hub layout)."""
    directory = str(directory).removeprefix("local-dir:")
    family = io.read_config(directory)["family"]
    model = _build(family, _config_from_dir(directory), dtype)
    load = dict(allow_nonfinite=allow_nonfinite, param_dtype=param_dtype, shardings=shardings)
    return model, load_checkpoint(model, directory, **load)
