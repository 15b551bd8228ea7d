"""Training with optax (the `train` extra: optax, grain, orbax, tqdm, matplotlib, scikit-learn).

steps (TrainState, optimizers with torch semantics, train_step / eval_step), sharding (Mesh,
batch sharding, jitted steps, several hosts), loop (fit), run (RunConfig, train_and_evaluate:
what the train CLI calls), data and transforms, schedules, checkpoints, plots.
"""

from vitjax.training.loop import evaluate, fit, format_record, train_epoch
from vitjax.training.run import RunConfig, train_and_evaluate
from vitjax.training.sharding import (
    DATA_AXIS,
    check_batch_size,
    jit_steps,
    make_mesh,
    maybe_initialize_distributed,
    pad_batch,
    replicate,
    shard_batch,
)
from vitjax.training.steps import (
    HEAD_NAMES,
    NO_WEIGHT_DECAY,
    OPTIMIZERS,
    TrainState,
    create_train_state,
    decay_mask,
    eval_step,
    head_labels,
    loss_and_metrics,
    make_optimizer,
    train_step,
    variables_of,
)

__all__ = [
    "DATA_AXIS", "HEAD_NAMES", "NO_WEIGHT_DECAY", "OPTIMIZERS", "RunConfig", "TrainState",
    "check_batch_size", "create_train_state", "decay_mask", "eval_step", "evaluate", "fit",
    "format_record", "head_labels", "jit_steps", "loss_and_metrics", "make_mesh",
    "make_optimizer", "maybe_initialize_distributed", "pad_batch", "replicate", "shard_batch",
    "train_and_evaluate", "train_epoch", "train_step", "variables_of",
]
