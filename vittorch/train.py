"""The PyTorch reference training loop, with the notebook's semantics and its bugs fixed.

The notebook: Adam lr 1e-2, CosineAnnealingLR(T_max=5, eta_min=1e-4) stepped once per epoch,
cross-entropy, accuracy per epoch, validation on the validation split. Fixed here: losses are
accumulated as Python numbers (not tensors holding the graph), evaluation runs on the validation
split under ``torch.inference_mode()``, and means are weighted by the examples in each batch.
Batches are ``(images NCHW, labels)`` pairs, as a torch DataLoader yields them.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

NO_WEIGHT_DECAY = frozenset({"pos_embed", "cls_token", "reg_token", "dist_token"})  # timm's set
HEAD_NAMES = ("head", "head_dist")


def param_groups_weight_decay(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """timm's param groups: no decay for 1-D params (biases, norms), tokens and pos_embed."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        skip = p.ndim <= 1 or name.endswith(".bias") or name in NO_WEIGHT_DECAY
        (no_decay if skip else decay).append(p)
    return [
        {"params": no_decay, "weight_decay": 0.0},
        {"params": decay, "weight_decay": weight_decay},
    ]


def freeze_backbone(model: nn.Module) -> None:
    """requires_grad only for the classifier (head, head_dist), as the notebook's fine-tuning."""
    for name, p in model.named_parameters():
        p.requires_grad = name.split(".")[0] in HEAD_NAMES


def make_optimizer(
    model: nn.Module,
    name: str,
    lr: float,
    weight_decay: float = 0.0,
    momentum: float = 0.9,
    nesterov: bool = False,
) -> torch.optim.Optimizer:
    """torch.optim Adam / AdamW (timm's decay groups) / SGD over the trainable parameters."""
    params = [p for p in model.parameters() if p.requires_grad]
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(param_groups_weight_decay(model, weight_decay), lr=lr)
    if name == "sgd":
        return torch.optim.SGD(
            params, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay
        )
    raise ValueError(f"unknown optimizer {name!r}")


def train_one_epoch(
    model: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    loss_fn: nn.Module,
    optimizer: torch.optim.Optimizer,
    device: str | torch.device = "cpu",
    clip_grad: float | None = None,
    autocast_dtype: torch.dtype | None = None,
) -> dict[str, Any]:
    """One epoch of training: mean loss and accuracy, and each step's loss."""
    model.train()
    losses, total_loss, correct, count = [], 0.0, 0, 0
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        with torch.autocast(
            torch.device(device).type, autocast_dtype, enabled=autocast_dtype is not None
        ):
            logits = model(x)
        loss = loss_fn(logits.float(), y)
        optimizer.zero_grad()
        loss.backward()
        if clip_grad:
            nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
        optimizer.step()
        n = len(y)
        losses.append(loss.item())
        total_loss += loss.item() * n
        correct += (logits.argmax(dim=1) == y).sum().item()
        count += n
    return {"loss": total_loss / count, "acc": correct / count, "losses": losses}


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    loss_fn: nn.Module,
    device: str | torch.device = "cpu",
) -> dict[str, float]:
    """Mean loss and accuracy over a loader, in eval mode."""
    model.eval()
    total_loss, correct, count = 0.0, 0, 0
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        logits = model(x)
        total_loss += loss_fn(logits, y).item() * len(y)
        correct += (logits.argmax(dim=1) == y).sum().item()
        count += len(y)
    return {"loss": total_loss / count, "acc": correct / count}


def fit(
    model: nn.Module,
    train_loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    val_loader: Iterable[tuple[torch.Tensor, torch.Tensor]] | None,
    optimizer: torch.optim.Optimizer,
    scheduler: Any | None,
    epochs: int,
    loss_fn: nn.Module | None = None,
    device: str | torch.device = "cpu",
    clip_grad: float | None = None,
    verbose: bool = False,
) -> list[dict[str, Any]]:
    """The notebook's loop: train, validate, step the scheduler once per epoch; one record each."""
    loss_fn = loss_fn if loss_fn is not None else nn.CrossEntropyLoss()
    model.to(device)
    history = []
    for epoch in range(epochs):
        lr = optimizer.param_groups[0]["lr"]
        train = train_one_epoch(model, train_loader, loss_fn, optimizer, device, clip_grad)
        val = evaluate(model, val_loader, loss_fn, device) if val_loader is not None else {}
        if scheduler is not None:
            scheduler.step()
        record = {
            "epoch": epoch + 1,
            "lr": lr,
            "train_loss": train["loss"],
            "train_acc": train["acc"],
            "val_loss": val.get("loss", float("nan")),
            "val_acc": val.get("acc", float("nan")),
            "losses": train["losses"],
        }
        history.append(record)
        if verbose:
            print(
                f"epoch {epoch + 1}: lr {lr:.3e} train loss {train['loss']:.4f} "
                f"acc {train['acc']:.4f} val loss {record['val_loss']:.4f} "
                f"acc {record['val_acc']:.4f}"
            )
    return history
