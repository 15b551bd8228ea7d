"""Training steps: TrainState, torch-semantics optimizers, train_step and eval_step.

``train_step(state, batch, rng)`` is pure: the caller jits it with the state donated (``fit``
does). A batch is ``{"image": (B, H, W, C) float32, "label": (B,) int32}`` with an optional
``"mask"`` (B,) of 0/1 weights, so a short last batch can be padded to a fixed shape and still
give the exact mean over its real examples. Models with BatchNorm keep their running statistics
in ``state.batch_stats``, updated in training mode as torch updates them; with
``freeze_batch_stats`` the backbone's BatchNorm runs in eval mode instead (torch's
``model.patch_embed.backbone.eval()``): running statistics normalise and stay as they are.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from flax.training import train_state

from vitjax.util import kept_call

Batch = dict[str, Any]
Metrics = dict[str, Any]
Schedule = Callable[[Any], Any]

OPTIMIZERS = ("adam", "adamw", "sgd")
NO_WEIGHT_DECAY = frozenset({"pos_embed", "cls_token", "reg_token", "dist_token"})  # timm's set
HEAD_NAMES = ("head", "head_dist")


class TrainState(train_state.TrainState):
    """flax TrainState (step, params, tx, opt_state), BatchNorm statistics, label smoothing."""

    batch_stats: Any = None
    label_smoothing: float = struct.field(pytree_node=False, default=0.0)
    freeze_batch_stats: bool = struct.field(pytree_node=False, default=False)


@dataclasses.dataclass(frozen=True)
class ModelApply:
    """``model.apply``, equal for equal models (a bound method is equal only to itself): jax
    compares a TrainState's static fields by ==, so two runs of equal models share their
    compiled steps."""

    model: Any

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.model.apply(*args, **kwargs)


SCANNED_LISTS = ("blocks",)  # list attributes the models can stack for nn.scan


def _top_name(path: tuple[Any, ...]) -> str:
    """Name of the top-level module or parameter of a tree path."""
    return str(getattr(path[0], "key", path[0]))


def decay_mask(params: Any) -> Any:
    """True where timm's AdamW decays: not 1-D (biases, norms, scales), not a token or pos_embed.

    Blocks run with nn.scan (``scan_blocks=True``: a top-level ``blocks`` without an index) hold
    each block's leaf on a leading axis, which does not count.
    """

    def decays(path: tuple[Any, ...], p: Any) -> bool:
        top = _top_name(path)
        return bool(np.ndim(p) - (top in SCANNED_LISTS) > 1 and top not in NO_WEIGHT_DECAY)

    return jax.tree_util.tree_map_with_path(decays, params)


def head_labels(params: Any) -> Any:
    """'train' for the classifier (head, head_dist), 'frozen' for everything else."""
    labels = jax.tree_util.tree_map_with_path(
        lambda path, _: "train" if _top_name(path) in HEAD_NAMES else "frozen", params
    )
    if "train" not in jax.tree_util.tree_leaves(labels):
        raise ValueError("freeze_backbone: the model has no head to train (num_classes=0?)")
    return labels


def make_optimizer(
    name: str,
    learning_rate: float | Schedule,
    *,
    weight_decay: float = 0.0,
    momentum: float = 0.9,
    nesterov: bool = False,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    clip_grad: float | None = None,
    freeze_backbone: bool = False,
) -> optax.GradientTransformation:
    """An optax optimizer with torch.optim semantics (Adam: coupled L2; AdamW: timm's mask).

    Equal arguments give the same transformation object (``vitjax.util.kept_call``): a second
    run with equal settings reuses the first one's compiled steps."""
    return kept_call(
        _make_optimizer, name, learning_rate, weight_decay=weight_decay, momentum=momentum,
        nesterov=nesterov, betas=tuple(betas), eps=eps, clip_grad=clip_grad,
        freeze_backbone=freeze_backbone,
    )  # fmt: skip


def _make_optimizer(
    name: str,
    learning_rate: float | Schedule,
    *,
    weight_decay: float,
    momentum: float,
    nesterov: bool,
    betas: tuple[float, float],
    eps: float,
    clip_grad: float | None,
    freeze_backbone: bool,
) -> optax.GradientTransformation:
    if name == "adam":  # torch.optim.Adam: weight decay is L2 added to the gradient
        core = [optax.add_decayed_weights(weight_decay)] if weight_decay else []
        core.append(optax.scale_by_adam(*betas, eps=eps))
    elif name == "adamw":  # torch.optim.AdamW on timm's param groups: decoupled, masked
        core = [optax.scale_by_adam(*betas, eps=eps)]
        if weight_decay:
            core.append(optax.add_decayed_weights(weight_decay, mask=decay_mask))
    elif name == "sgd":  # torch.optim.SGD: coupled L2, dampening 0, optional nesterov
        core = [optax.add_decayed_weights(weight_decay)] if weight_decay else []
        if momentum:
            core.append(optax.trace(decay=momentum, nesterov=nesterov))
    else:
        raise ValueError(f"unknown optimizer {name!r}; choose from {OPTIMIZERS}")
    clip = [optax.clip_by_global_norm(clip_grad)] if clip_grad else []
    tx = optax.chain(*clip, *core, optax.scale_by_learning_rate(learning_rate))
    if freeze_backbone:
        tx = optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, head_labels)
    return tx


def create_train_state(
    model: Any,
    variables: dict[str, Any],
    tx: optax.GradientTransformation,
    label_smoothing: float = 0.0,
    freeze_batch_stats: bool = False,
    *,
    shardings: Any = None,
) -> TrainState:
    """A fresh TrainState at step 0 (params copied, so donating it leaves variables intact).

    freeze_batch_stats: train with the backbone's BatchNorm in eval mode (running statistics
    used and kept), for models whose apply takes ``backbone_train`` (the vit family's hybrids).
    shardings: where the state's arrays go, a tree like the state (its leaves
    jax.sharding.Sharding) or a callable taking the state's shapes (a TrainState of
    ShapeDtypeStructs) and returning one, e.g. ``lambda s: fsdp_shardings(s, mesh)``. The
    optimizer state is made in place, shard by shard (no device holds more than its share);
    default: on the default device.
    """
    stats = variables.get("batch_stats")
    if freeze_batch_stats and stats is None:
        raise ValueError("freeze_batch_stats: the model has no BatchNorm statistics to freeze")

    def build(params: Any, stats: Any, init: Callable = tx.init) -> TrainState:
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            apply_fn=ModelApply(model),
            params=params,
            tx=tx,
            opt_state=init(params),
            batch_stats=stats,
            label_smoothing=label_smoothing,
            freeze_batch_stats=freeze_batch_stats,
        )

    params = variables["params"]
    if shardings is None:
        copy = functools.partial(jax.tree_util.tree_map, jnp.array)
        return build(copy(params), None if stats is None else copy(stats), jax.jit(tx.init))
    from vitjax.training.sharding import place

    if isinstance(shardings, jax.sharding.Sharding):  # one for every array
        one = shardings
        shardings = jax.tree_util.tree_map(lambda _: one, jax.eval_shape(build, params, stats))
    elif callable(shardings):
        shardings = shardings(jax.eval_shape(build, params, stats))
    params = place(params, shardings.params)
    stats = None if stats is None else place(stats, shardings.batch_stats)
    return jax.jit(build, out_shardings=shardings)(params, stats)  # new buffers: a copy


def variables_of(state: TrainState, params: Any = None) -> dict[str, Any]:
    """The Flax variables of a state (its params, or the given ones, and batch statistics)."""
    variables = {"params": state.params if params is None else params}
    if state.batch_stats is not None:
        variables["batch_stats"] = state.batch_stats
    return variables


def _mask(batch: Batch) -> jax.Array:
    """Per-example weights: the batch's mask, or ones."""
    if "mask" in batch:
        return batch["mask"].astype(jnp.float32)
    return jnp.ones(batch["label"].shape, jnp.float32)


def loss_and_metrics(
    logits: jax.Array, batch: Batch, label_smoothing: float = 0.0
) -> tuple[jax.Array, Metrics]:
    """Mean cross-entropy (torch's, with label smoothing) and accuracy over unmasked examples."""
    logits = logits.astype(jnp.float32)
    labels, w = batch["label"], _mask(batch)
    targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), label_smoothing)
    count = w.sum()
    denom = jnp.maximum(count, 1.0)
    loss = (optax.softmax_cross_entropy(logits, targets) * w).sum() / denom
    accuracy = ((jnp.argmax(logits, -1) == labels) * w).sum() / denom
    return loss, {"loss": loss, "accuracy": accuracy, "count": count}


def train_step(state: TrainState, batch: Batch, rng: jax.Array) -> tuple[TrainState, Metrics]:
    """One optimizer step; dropout/drop-path draw from fold_in(rng, step)."""
    rng = jax.random.fold_in(rng, state.step)

    def loss_fn(params: Any) -> tuple[jax.Array, tuple[Metrics, Any]]:
        variables = variables_of(state, params)
        if state.batch_stats is None:
            logits = state.apply_fn(variables, batch["image"], train=True, rngs={"dropout": rng})
            stats = None
        elif state.freeze_batch_stats:  # backbone BatchNorm in eval mode: stats read, not written
            logits = state.apply_fn(
                variables, batch["image"], train=True, rngs={"dropout": rng}, backbone_train=False
            )
            stats = state.batch_stats
        else:  # BatchNorm in training mode: batch statistics, running-stat update
            logits, updates = state.apply_fn(
                variables, batch["image"], train=True, rngs={"dropout": rng},
                mutable=["batch_stats"],
            )  # fmt: skip
            stats = updates["batch_stats"]
        loss, metrics = loss_and_metrics(logits, batch, state.label_smoothing)
        return loss, (metrics, stats)

    grads, (metrics, stats) = jax.grad(loss_fn, has_aux=True)(state.params)
    state = state.apply_gradients(grads=grads)
    return (state if stats is None else state.replace(batch_stats=stats)), metrics


def eval_step(state: TrainState, batch: Batch) -> Metrics:
    """Loss and accuracy of the model in eval mode (no dropout)."""
    logits = state.apply_fn(variables_of(state), batch["image"], train=False)
    return loss_and_metrics(logits, batch, state.label_smoothing)[1]
