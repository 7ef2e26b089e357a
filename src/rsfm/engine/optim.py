"""Optimisers and learning-rate schedules.

AdamW with warmup-cosine (the MAE family, METHODS.md §1, §2.6) and SGD with cosine restarts
(GeRSP, METHODS.md §3).
"""

from __future__ import annotations

import math

import lightning as L
import torch
from timm.optim import param_groups_layer_decay, param_groups_weight_decay
from torch import nn

__all__ = [
    "build_adamw",
    "build_optimizer",
    "build_sgd",
    "dense_param_groups",
    "scaled_lr",
    "step_schedule",
    "warmup_cosine",
    "warmup_cosine_restarts",
]

OPTIMIZERS = ("adamw", "sgd")


def scaled_lr(blr: float, effective_batch: int, lr_scale: float = 1.0) -> float:
    """Learning rate ``lr_scale · blr · effective_batch / 256``.

    MAE's linear scaling rule; SelectiveMAE adds ``lr_scale = r / m`` (METHODS.md §2.6).
    """
    return lr_scale * blr * effective_batch / 256.0


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, min_ratio: float = 0.0) -> float:
    """Learning-rate multiplier: linear warmup from 0, then half-cycle cosine to ``min_ratio``.

    Args:
        step: optimiser steps done.
        warmup_steps: steps of linear warmup.
        total_steps: steps of the whole run.
        min_ratio: final multiplier (``min_lr / lr``).

    Returns:
        A multiplier in ``[0, 1]``.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return step / warmup_steps
    span = max(1, total_steps - warmup_steps)
    t = min(1.0, (step - warmup_steps) / span)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * t))


def warmup_cosine_restarts(
    step: int, warmup_steps: int, total_steps: int, cycles: int = 1, min_ratio: float = 0.0
) -> float:
    """Learning-rate multiplier: linear warmup, then ``cycles`` equal cosine cycles.

    After the warmup the remaining steps are cut into ``cycles`` equal spans; each runs a
    half-cycle cosine from 1 to ``min_ratio`` and the next restarts at 1 (SGDR, Loshchilov &
    Hutter 2017, with ``T_mult = 1``). GeRSP: 5 cycles over 100 epochs (METHODS.md §3).
    ``cycles <= 1`` is :func:`warmup_cosine`.

    Args:
        step: optimiser steps done.
        warmup_steps: steps of linear warmup.
        total_steps: steps of the whole run.
        cycles: number of cosine cycles.
        min_ratio: multiplier at the end of each cycle.

    Returns:
        A multiplier in ``[0, 1]``.
    """
    if cycles <= 1 or (warmup_steps > 0 and step < warmup_steps):
        return warmup_cosine(step, warmup_steps, total_steps, min_ratio)
    span = max(1, total_steps - warmup_steps) / cycles
    done = min(step - warmup_steps, max(0, total_steps - warmup_steps) - 1)
    t = (done - span * min(cycles - 1, int(done // span))) / span
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))


def build_sgd(model: nn.Module, lr: float, weight_decay: float = 5e-4, momentum: float = 0.9) -> torch.optim.SGD:
    """SGD with momentum over the trainable parameters, weight decay on all (as MoCo and GeRSP)."""
    return torch.optim.SGD(
        [p for p in model.parameters() if p.requires_grad], lr=lr, momentum=momentum, weight_decay=weight_decay
    )


def build_optimizer(
    name: str,
    model: nn.Module,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float] = (0.9, 0.95),
    momentum: float = 0.9,
) -> torch.optim.Optimizer:
    """``optim.name``: ``adamw`` (:func:`build_adamw`) or ``sgd`` (:func:`build_sgd`).

    Raises:
        ValueError: on another name.
    """
    if name == "adamw":
        return build_adamw(model, lr, weight_decay, betas)
    if name == "sgd":
        return build_sgd(model, lr, weight_decay, momentum)
    raise ValueError(f"optim.name: unknown optimiser {name!r}; expected one of {OPTIMIZERS}")


def build_adamw(
    model: nn.Module, lr: float, weight_decay: float = 0.05, betas: tuple[float, float] = (0.9, 0.95)
) -> torch.optim.AdamW:
    """AdamW without weight decay on norms, biases and the model's ``no_weight_decay()`` names.

    Those names are position embeddings and class and mask tokens; grouping by timm's
    ``param_groups_weight_decay``.
    """
    skip = model.no_weight_decay() if hasattr(model, "no_weight_decay") else set()
    groups = param_groups_weight_decay(model, weight_decay, no_weight_decay_list=skip)
    return torch.optim.AdamW(groups, lr=lr, betas=betas)


def dense_param_groups(
    model: nn.Module, encoder: nn.Module | None, lr: float, weight_decay: float, layer_decay: float | None
) -> list[dict]:
    """Parameter groups for fine-tuning a model built around a ViT encoder.

    The encoder gets timm's layer-wise lr decay groups (``lr · layer_decay^(depth − i)``, no
    decay on norms, biases and its ``no_weight_decay()`` names), or plain weight-decay groups
    when ``layer_decay`` is None or 1; every other trainable parameter (necks, heads) gets the
    full ``lr``, without weight decay on 1-D tensors. timm leaves its per-group ``lr_scale`` to
    its own schedulers, so it is folded into each group's ``lr`` here and any torch scheduler
    scales the decayed rates.

    Args:
        model: the whole model.
        encoder: the ViT inside it (None, or frozen: all parameters at full lr).
        lr: base learning rate.
        weight_decay: AdamW weight decay.
        layer_decay: per-block lr decay (e.g. 0.75), or None.

    Returns:
        Non-empty parameter groups with ``params``, ``lr`` and ``weight_decay``.
    """
    groups: list[dict] = []
    taken: set[int] = set()
    if encoder is not None:
        taken = {id(p) for p in encoder.parameters()}
        if any(p.requires_grad for p in encoder.parameters()):
            skip = encoder.no_weight_decay() if hasattr(encoder, "no_weight_decay") else set()
            if layer_decay not in (None, 1, 1.0):
                groups += param_groups_layer_decay(
                    encoder, weight_decay, no_weight_decay_list=skip, layer_decay=layer_decay
                )
            else:
                groups += param_groups_weight_decay(encoder, weight_decay, no_weight_decay_list=skip)
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in taken]
    groups.append({"params": [p for p in rest if p.ndim > 1], "weight_decay": weight_decay})
    groups.append({"params": [p for p in rest if p.ndim <= 1], "weight_decay": 0.0})
    groups = [g for g in groups if g["params"]]
    for g in groups:
        g["lr"] = lr * g.pop("lr_scale", 1.0)
    return groups


def step_schedule(
    optimizer: torch.optim.Optimizer, trainer: L.Trainer, warmup_epochs: float, min_ratio: float = 0.0
) -> dict:
    """Lightning ``lr_scheduler`` entry: per-step linear warmup then cosine over the run.

    Args:
        optimizer: the optimiser whose groups' ``lr`` are the peak rates.
        trainer: the attached trainer (for the run's optimiser steps and epochs).
        warmup_epochs: warmup length in epochs (fractions allowed).
        min_ratio: final lr as a fraction of the peak.
    """
    total = max(1, int(trainer.estimated_stepping_batches))
    max_epochs = trainer.max_epochs if trainer.max_epochs not in (None, -1) else 1
    steps_per_epoch = max(1, total // max(1, max_epochs))
    warmup = min(int(round(warmup_epochs * steps_per_epoch)), total - 1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: warmup_cosine(step, warmup, total, min_ratio))
    return {"scheduler": scheduler, "interval": "step"}
