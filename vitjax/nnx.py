"""The vitjax models as flax.nnx modules: ``nnx.bridge`` wrappers whose state is linen's variables.

``create_model`` takes the names, overrides and files of ``vitjax.create_model`` and returns a
:class:`Model`, an ``nnx.bridge.ToNNX`` holding the linen model's variables as NNX variables under
the same tree: ``nnx.state(model, nnx.Param)`` is the linen ``params`` (timm's module tree) and
``nnx.state(model, nnx.BatchStat)`` its ``batch_stats``, so every converter, file format and
export of vitjax works on it through :func:`to_linen`. ``model(x)`` runs the linen model on those
variables (one implementation, so the numbers are linen's), in eval mode unless ``train=True`` or
``model.train()``. Dropout keys come from ``rngs``: a key (used as the linen "dropout" key, as
``vitjax.training.train_step`` does), an ``nnx.Rngs`` (its ``dropout`` stream), or the ``rngs``
the model was built with. In training mode BatchNorm statistics are updated in place, as torch
does.

Fine-tuning: ``nnx.Optimizer(model, vitjax.training.make_optimizer(...), wrt=nnx.Param)`` (torch
semantics; ``freeze_backbone=True`` trains only head / head_dist) and :func:`train_step`. For
speed, stage the graph traversal out of the loop as Flax's performance guide advises:
``step = nnx.cached_partial(nnx.jit(train_step, donate_argnums=(0, 1)), model, optimizer)``, then
``metrics = step(batch, rng)``; model and optimizer are updated in place.
"""

from __future__ import annotations

import functools
import inspect
import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen, nnx
from flax.nnx import bridge
from flax.nnx.bridge import variables as bridge_vars

from vitjax import factory

__all__ = [
    "Model",
    "create_model",
    "eval_step",
    "from_linen",
    "from_timm",
    "load_pretrained",
    "save_pretrained",
    "to_linen",
    "to_timm_state_dict",
    "train_step",
]

Variables = dict[str, Any]
RngArg = nnx.Rngs | jax.Array | None
_NOT_VARIABLES = ("to_nnx__", "_pytree__")  # ToNNX's own attributes


class Model(bridge.ToNNX):
    """A vitjax linen model as an nnx.Module that holds its variables (timm's module tree)."""

    def __init__(
        self,
        module: linen.Module,
        variables: Mapping[str, Any],
        rngs: nnx.Rngs | None = None,
        deterministic: bool = True,
    ) -> None:
        super().__init__(module, rngs)
        self.deterministic = deterministic  # nnx's train() / eval() flip it
        for name, value in bridge_vars.linen_vars_to_nnx_attrs(dict(variables)).items():
            setattr(self, name, value)

    @property
    def cfg(self) -> Any:
        """The family config of the wrapped model."""
        return self.to_nnx__module.cfg

    @property
    def linen_module(self) -> linen.Module:
        """The wrapped linen model (the family's MODEL)."""
        return self.to_nnx__module

    def linen_variables(self) -> Variables:
        """The variables as linen holds them: {"params": ..., "batch_stats": ...}."""
        attrs = {
            k: v
            for k, v in vars(self).items()
            if not k.startswith(_NOT_VARIABLES) and k != "deterministic"
        }
        return bridge_vars.nnx_attrs_to_linen_vars(attrs)

    def __call__(
        self,
        x: Any,
        train: bool | None = None,
        pre_logits: bool = False,
        *,
        rngs: RngArg = None,
        **kwargs: Any,
    ) -> jax.Array:
        """Logits (pooled features with pre_logits) as the linen model's; kwargs go to it too."""
        return self.call_method(
            "__call__", x, train=train, pre_logits=pre_logits, rngs=rngs, **kwargs
        )

    def call_method(self, method: str, *args: Any, rngs: RngArg = None, **kwargs: Any) -> Any:
        """The linen model's method on this module's variables (train defaults to the mode)."""
        fn = getattr(type(self.to_nnx__module), method)
        if "train" in inspect.signature(fn).parameters and kwargs.get("train") is None:
            kwargs["train"] = not self.deterministic
        train = bool(kwargs.get("train", False))
        variables = self.linen_variables()
        mutable = ["batch_stats"] if train and "batch_stats" in variables else False
        out = self.to_nnx__module.apply(
            variables, *args, rngs=self._dropout_rngs(rngs, train), method=method,
            mutable=mutable, **kwargs,
        )  # fmt: skip
        if not mutable:
            return out
        out, updates = out
        nnx.update(self, updates["batch_stats"])  # running statistics, in place
        return out

    def _dropout_rngs(self, rngs: RngArg, train: bool) -> dict[str, jax.Array]:
        """Linen's rngs for a call: the "dropout" key when training (no stream is advanced else)."""
        rngs = self.to_nnx__rngs if rngs is None else rngs
        if not train or rngs is None:
            return {}
        if isinstance(rngs, nnx.Rngs):
            return {"dropout": rngs.dropout()}
        return {"dropout": rngs}

    def __getattr__(self, name: str) -> Any:
        # The family's own methods (forward_features, forward_head, ...) run as call_method;
        # linen.Module's (apply, init, bind, ...) are not this module's.
        module = vars(self).get("to_nnx__module")
        method = getattr(type(module), name, None)
        if name.startswith("_") or hasattr(linen.Module, name) or not inspect.isfunction(method):
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        return functools.partial(self.call_method, name)


def from_linen(
    module: linen.Module, variables: Mapping[str, Any], rngs: nnx.Rngs | None = None
) -> Model:
    """An NNX Model holding a copy of a linen model's variables (so donation spares the caller)."""
    return Model(module, jax.tree_util.tree_map(jnp.array, dict(variables)), rngs=rngs)


def to_linen(model: Model) -> tuple[linen.Module, Variables]:
    """(linen model, variables) of an NNX Model: what vitjax's linen API takes."""
    return model.linen_module, model.linen_variables()


def create_model(
    name: str,
    pretrained: bool = False,
    checkpoint_path: str | os.PathLike | None = None,
    seed: int = 0,
    dtype: Any = jnp.float32,
    allow_nonfinite: bool = False,
    *,
    rngs: nnx.Rngs | None = None,
    **overrides: Any,
) -> Model:
    """vitjax.create_model's model (same names, overrides and files) as an NNX Model."""
    module, variables = factory.create_model(
        name, pretrained, checkpoint_path, seed=seed, dtype=dtype,
        allow_nonfinite=allow_nonfinite, **overrides,
    )  # fmt: skip
    return Model(module, variables, rngs=rngs)


def from_timm(module: Any, dtype: Any = jnp.float32) -> Model:
    """The NNX twin of a timm model instance of any supported family, with its weights."""
    return Model(*factory.from_timm(module, dtype=dtype))


def load_pretrained(
    directory: str | os.PathLike, dtype: Any = jnp.float32, allow_nonfinite: bool = False
) -> Model:
    """An NNX Model from a save_pretrained directory (vitjax's or timm's HF layout)."""
    return Model(*factory.load_pretrained(directory, dtype=dtype, allow_nonfinite=allow_nonfinite))


def to_timm_state_dict(model: Model, framework: str = "np") -> dict[str, Any]:
    """timm-key state_dict of an NNX Model ("np" arrays or "pt" tensors), timm strict-loadable."""
    return factory.to_timm_state_dict(*to_linen(model), framework=framework)


def save_pretrained(directory: str | os.PathLike, model: Model, **kwargs: Any) -> os.PathLike:
    """vitjax.save_pretrained of an NNX Model (its keywords: pretrained_cfg, overwrite, ...)."""
    return factory.save_pretrained(directory, *to_linen(model), **kwargs)


def train_step(
    model: Model,
    optimizer: nnx.Optimizer,
    batch: Mapping[str, jax.Array],
    rng: jax.Array,
    label_smoothing: float = 0.0,
) -> dict[str, jax.Array]:
    """One optimizer step in place: vitjax.training.train_step's loss, keys and update."""
    from vitjax.training.steps import loss_and_metrics

    rng = jax.random.fold_in(rng, optimizer.step[...])  # the linen step's fold_in(rng, step)

    def loss_fn(model: Model) -> tuple[jax.Array, dict[str, jax.Array]]:
        logits = model(batch["image"], train=True, rngs=rng)
        return loss_and_metrics(logits, batch, label_smoothing)

    grads, metrics = nnx.grad(loss_fn, has_aux=True)(model)
    optimizer.update(model, grads)
    return metrics


def eval_step(
    model: Model, batch: Mapping[str, jax.Array], label_smoothing: float = 0.0
) -> dict[str, jax.Array]:
    """Loss and accuracy of the model in eval mode (no dropout, running BatchNorm statistics)."""
    from vitjax.training.steps import loss_and_metrics

    return loss_and_metrics(model(batch["image"], train=False), batch, label_smoothing)[1]
