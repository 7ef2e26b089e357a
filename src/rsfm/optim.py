"""Optimisers and learning-rate schedules of every rsfm training run: the ``optim`` section.

One :class:`OptimConfig` for pretraining and fine-tuning. ``optim.lr`` always means the same
thing: the absolute peak learning rate (of the top layer groups, under layer decay) that the
warmup reaches. ``optim.blr`` is the alternative, a base rate per 256 samples:
``lr = lr_scale · blr · effective_batch / 256`` (MAE's linear scaling rule; ``lr_scale`` is a
method's, ``r / m`` for SelectiveMAE, Wang et al., arXiv 2406.11933), with ``effective_batch`` = per-device
batch × devices × nodes × gradient accumulation. Set one of the two.

AdamW with warmup then cosine (the MAE family, He et al. 2022; Wang et al. 2024; the fine-tuning recipes)
and SGD with cosine restarts (GeRSP, Huang et al. 2024), stepped every optimiser step over the
run's length in optimiser steps (:func:`run_length`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from rsfm.utils.errors import ConfigError

__all__ = [
    "OptimConfig",
    "build_optimizer",
    "param_groups",
    "peak_lr",
    "run_length",
    "scaled_lr",
    "schedule",
    "warmup_cosine",
    "warmup_cosine_restarts",
]

OPTIMIZERS = ("adamw", "sgd")


@dataclass
class OptimConfig:
    """The ``optim`` section of a recipe.

    Attributes:
        name: ``adamw`` or ``sgd``.
        lr: absolute peak learning rate; None: from ``blr``.
        blr: base learning rate per 256 samples (scaled by the effective batch); None: use ``lr``.
        weight_decay: decoupled (AdamW) or L2 (SGD) weight decay; AdamW skips norms, biases,
            position embeddings and tokens.
        betas: AdamW betas.
        momentum: SGD momentum.
        layer_decay: layer-wise lr decay of the encoder (fine-tuning; ViTs): block ``i`` of
            ``L`` gets ``layer_decay^(L - i)`` of ``lr``; None: off.
        warmup_epochs: epochs of linear warmup from 0 (fractions allowed).
        min_lr_ratio: learning rate at the end of each cosine cycle, as a fraction of the peak.
        restarts: cosine cycles over the run after the warmup, each restarting at the peak
            (GeRSP: 5); 0 or 1: one cosine.
        fused: AdamW's fused implementation (one kernel over all parameters, CPU or CUDA);
            None: fused when every parameter is a floating tensor on the CPU or a CUDA device,
            else PyTorch's default (``foreach``). The update is the same up to rounding.
    """

    name: str = "adamw"
    lr: float | None = None
    blr: float | None = None
    weight_decay: float = 0.05
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    momentum: float = 0.9
    layer_decay: float | None = None
    warmup_epochs: float = 1.0
    min_lr_ratio: float = 0.0
    restarts: int = 0
    fused: bool | None = None

    def __post_init__(self) -> None:
        if self.name not in OPTIMIZERS:
            raise ConfigError(f"optim.name must be one of {OPTIMIZERS}, got {self.name!r}")
        if self.lr is None and self.blr is None:
            raise ConfigError("set optim.lr (absolute peak learning rate) or optim.blr (per 256 samples)")
        if self.lr is not None and self.blr is not None:
            raise ConfigError(
                f"set optim.lr or optim.blr, not both (got lr={self.lr}, blr={self.blr}); lr is the absolute peak "
                "rate (to override a recipe's blr: optim.blr=null optim.lr=...)"
            )
        for key in ("lr", "blr"):
            value = getattr(self, key)
            if value is not None and not value >= 0:
                raise ConfigError(f"optim.{key} must be >= 0, got {value}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"optim.betas must be two values in [0, 1), got {self.betas}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError(f"optim.min_lr_ratio must lie in [0, 1], got {self.min_lr_ratio}")
        if self.layer_decay is not None and not 0 < self.layer_decay <= 1:
            raise ConfigError(f"optim.layer_decay must lie in (0, 1], got {self.layer_decay}")


def peak_lr(cfg: OptimConfig, effective_batch: int, lr_scale: float = 1.0) -> float:
    """The run's peak learning rate: ``cfg.lr``, or ``lr_scale · blr · effective_batch / 256``."""
    if cfg.lr is not None:
        return float(cfg.lr)
    assert cfg.blr is not None
    return scaled_lr(cfg.blr, effective_batch, lr_scale)


def scaled_lr(blr: float, effective_batch: int, lr_scale: float = 1.0) -> float:
    """Learning rate ``lr_scale · blr · effective_batch / 256``.

    MAE's linear scaling rule; SelectiveMAE adds ``lr_scale = r / m`` (Wang et al., arXiv 2406.11933).
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
    Hutter 2017, with ``T_mult = 1``). GeRSP: 5 cycles over 100 epochs (Huang et al. 2024).
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


def param_groups(
    model: nn.Module, encoder: Any, lr: float, weight_decay: float, layer_decay: float | None = None
) -> list[dict[str, Any]]:
    """Optimiser groups of a model built around an encoder (fine-tuning).

    The encoder's groups come from its ``param_groups`` (timm's layer-wise decay for ViTs);
    every other trainable parameter (necks, heads) gets the full ``lr``, without weight decay
    on 1-D tensors (biases, norms). Without an encoder, the same rule applies to the whole
    model (with ``model.no_weight_decay()`` names exempt).

    Returns:
        Non-empty groups with ``params``, ``lr`` and ``weight_decay``.
    """
    groups: list[dict[str, Any]] = []
    taken: set[int] = set()
    if encoder is not None:
        taken = {id(p) for p in encoder.parameters()}
        groups += encoder.param_groups(lr, weight_decay, layer_decay)
        rest = [p for p in model.parameters() if p.requires_grad and id(p) not in taken]
        decay = [p for p in rest if p.ndim > 1]
        no_decay = [p for p in rest if p.ndim <= 1]
    else:
        skip = model.no_weight_decay() if hasattr(model, "no_weight_decay") else set()
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        decay = [p for n, p in named if p.ndim > 1 and n not in skip]
        no_decay = [p for n, p in named if p.ndim <= 1 or n in skip]
    groups.append({"params": decay, "weight_decay": weight_decay, "lr": lr})
    groups.append({"params": no_decay, "weight_decay": 0.0, "lr": lr})
    return [g for g in groups if g["params"]]


def build_optimizer(groups: list[dict[str, Any]], cfg: OptimConfig) -> torch.optim.Optimizer:
    """``optim.name``: AdamW (``betas``, fused where it can be: ``optim.fused``) or SGD with ``momentum``.

    SGD decays every parameter (as MoCo and GeRSP): its groups' ``weight_decay`` is set to
    ``cfg.weight_decay``.
    """
    if cfg.name == "sgd":
        for g in groups:
            g["weight_decay"] = cfg.weight_decay
        return torch.optim.SGD(groups, lr=groups[0]["lr"], momentum=cfg.momentum)
    fused = cfg.fused
    if fused is None:
        fused = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for g in groups for p in g["params"])
    fused = fused or None  # False and None both mean PyTorch's default
    opt = torch.optim.AdamW(groups, lr=groups[0]["lr"], betas=(float(cfg.betas[0]), float(cfg.betas[1])), fused=fused)

    def keep_implementation(optimizer: torch.optim.Optimizer) -> None:
        # A resumed state carries the implementation of the run that saved it; the optimiser
        # keeps this run's, which its gradient-scaler handshake was set up for at construction.
        for group in optimizer.param_groups:
            group["fused"] = fused

    opt.register_load_state_dict_post_hook(keep_implementation)
    return opt


def run_length(trainer: Any, train_batches: int) -> tuple[int, int]:
    """``(total optimiser steps, steps per epoch)`` of a run.

    Computed from the training loader's length (``train_batches``) rather than Lightning's
    ``estimated_stepping_batches``: that property builds the loader inside
    ``configure_optimizers``, before a checkpoint's loader state is restored, and the
    mid-epoch position of a resumed run would be lost.

    Raises:
        ConfigError: if the run has no finite length (neither ``trainer.max_epochs`` nor
            ``trainer.max_steps``).
    """
    limit = trainer.limit_train_batches
    n = min(train_batches, int(limit)) if isinstance(limit, int) else int(train_batches * float(limit))
    per_epoch = max(1, math.ceil(n / trainer.accumulate_grad_batches))
    total = per_epoch * trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else 0
    if trainer.max_steps and trainer.max_steps > 0:
        total = min(total, trainer.max_steps) if total else trainer.max_steps
    if total <= 0:
        raise ConfigError("the run needs a finite length: set trainer.max_epochs or trainer.max_steps")
    return int(total), per_epoch


def schedule(optimizer: torch.optim.Optimizer, cfg: OptimConfig, total: int, per_epoch: int) -> dict[str, Any]:
    """Lightning ``lr_scheduler`` entry: per-step warmup, then ``restarts`` cosine cycles.

    Each group's ``lr`` at construction is its peak rate.
    """
    warmup = min(int(round(cfg.warmup_epochs * per_epoch)), max(0, total - 1))
    cycles = int(cfg.restarts or 1)
    ratio = float(cfg.min_lr_ratio)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine_restarts(step, warmup, total, cycles, ratio)
    )
    return {"scheduler": scheduler, "interval": "step"}
