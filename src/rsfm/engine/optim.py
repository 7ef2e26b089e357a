"""Optimiser and learning-rate schedule of the MAE family (METHODS.md §1, §2.6)."""

from __future__ import annotations

import math

import torch
from timm.optim import param_groups_weight_decay
from torch import nn

__all__ = ["build_adamw", "scaled_lr", "warmup_cosine"]


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
