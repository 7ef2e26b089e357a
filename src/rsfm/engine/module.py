"""The Lightning module that trains any masked-image-modeling method of rsfm.

:class:`StepModule` holds what every pretraining module shares: the run length in optimiser
steps, the per-step seed, the optimiser and its per-step schedule.
"""

from __future__ import annotations

import hashlib
import inspect
import math
from typing import Any

import lightning as L
import torch
from torch import nn

from rsfm.engine.optim import build_optimizer, scaled_lr, warmup_cosine_restarts
from rsfm.methods.base import MaskedImageModel
from rsfm.methods.mae import MAE
from rsfm.methods.selection import psts_mix
from rsfm.methods.selective_mae import SelectiveMAE

__all__ = ["METHODS", "PretrainModule", "StepModule", "build_method", "check_options", "step_seed"]

METHODS: dict[str, type[MaskedImageModel]] = {"mae": MAE, "selective_mae": SelectiveMAE}


def check_options(name: str, cls: type, kwargs: dict[str, Any]) -> None:
    """Raise ValueError naming ``model.<key>`` if ``cls`` does not take a key of ``kwargs``."""
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise ValueError(f"model.{unknown[0]} is not an option of {name}; options: {sorted(accepted)}")


def build_method(name: str, **kwargs: Any) -> MaskedImageModel:
    """Build a pretraining method by name, with a clear error for unknown options.

    Args:
        name: ``mae`` or ``selective_mae``.
        **kwargs: the method's constructor arguments (``model.*`` in a recipe).

    Raises:
        ValueError: on an unknown method or an option the method does not take.
    """
    if name not in METHODS:
        raise ValueError(f"model.name: unknown method {name!r}; expected one of {sorted(METHODS)}")
    cls = METHODS[name]
    check_options(name, cls, kwargs)
    return cls(**kwargs)


def step_seed(seed: int, step: int, rank: int) -> int:
    """A 63-bit seed that depends only on (run seed, optimiser step, rank).

    The random masks of a resumed run therefore equal those of an uninterrupted one.
    """
    digest = hashlib.blake2b(f"{seed}:{step}:{rank}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


class StepModule(L.LightningModule):
    """Run length, per-step seeds and the optimiser shared by rsfm's pretraining modules.

    Subclasses set ``self.model`` (with ``lr_scale``) and save hyper-parameters ``blr``,
    ``lr``, ``weight_decay``, ``betas``, ``warmup_epochs``, ``min_lr``, ``batch_size``,
    ``seed``, ``optimizer``, ``momentum`` and ``restarts``.
    """

    model: nn.Module
    _total: int | None = None

    def progress(self) -> float:
        """Fraction of the run's optimiser steps done, in [0, 1]."""
        total = self._total_steps()
        return min(1.0, self.global_step / total) if total > 0 else 0.0

    def _total_steps(self) -> int:
        """Optimiser steps of the whole run, as Lightning's ``estimated_stepping_batches``.

        Computed from the datamodule's loader length rather than through
        ``estimated_stepping_batches``: that property builds Lightning's train loader inside
        ``configure_optimizers``, before a checkpoint's loader state is restored, and the
        mid-epoch position of a resumed run would then be lost.
        """
        if self._total is not None:
            return self._total
        if self._trainer is None:
            return 0
        t = self.trainer
        if t.datamodule is None:
            total = t.estimated_stepping_batches
            self._total = int(total) if total != float("inf") else 0
            return self._total
        n = len(t.datamodule.train_dataloader())
        limit = t.limit_train_batches
        n = min(n, int(limit)) if isinstance(limit, int) else int(n * float(limit))
        per_epoch = max(1, math.ceil(n / t.accumulate_grad_batches))
        total = per_epoch * t.max_epochs if t.max_epochs and t.max_epochs > 0 else 0
        if t.max_steps and t.max_steps > 0:
            total = min(total, t.max_steps) if total else t.max_steps
        self._total = int(total)
        return self._total

    def zero_loss(self) -> torch.Tensor:
        """A scalar 0 with a (zero) gradient path to every trainable parameter."""
        return sum((p.sum() * 0.0 for p in self.parameters() if p.requires_grad), torch.zeros((), device=self.device))

    def _generator(self) -> torch.Generator:
        g = torch.Generator(device=self.device)
        g.manual_seed(step_seed(self.hparams.seed, self.global_step, self.global_rank))
        return g

    # -- optimisation ---------------------------------------------------------------------
    def effective_batch(self) -> int:
        """Per-device batch × devices × nodes × gradient accumulation."""
        return int(self.hparams.batch_size * self.trainer.world_size * self.trainer.accumulate_grad_batches)

    def configure_optimizers(self) -> dict[str, Any]:
        """The optimiser and a per-step schedule: warmup, then cosine (``restarts`` cycles).

        AdamW has no decay on norms, biases and tokens; SGD decays every parameter.
        """
        hp = self.hparams
        lr = hp.lr if hp.lr is not None else scaled_lr(hp.blr, self.effective_batch(), self.model.lr_scale)
        optimizer = build_optimizer(
            hp.get("optimizer", "adamw"), self.model, lr, hp.weight_decay, tuple(hp.betas), hp.get("momentum", 0.9)
        )
        total = self._total_steps()
        if total <= 0:
            raise ValueError("the run needs a finite length: set trainer.max_epochs or trainer.max_steps")
        max_epochs = self.trainer.max_epochs or 1
        warmup = int(round(total * hp.warmup_epochs / max_epochs)) if max_epochs > 0 else 0
        min_ratio = hp.min_lr / lr if lr > 0 else 0.0
        cycles = int(hp.get("restarts", 0) or 1)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: warmup_cosine_restarts(step, warmup, total, cycles, min_ratio)
        )
        self.print(
            f"lr {lr:.3e} (effective batch {self.effective_batch()}), {warmup} warmup of {total} steps, "
            f"{cycles} cosine cycle(s)"
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


class PretrainModule(StepModule):
    """Trains a :class:`MaskedImageModel`, by default with AdamW and a warmup-cosine schedule.

    The learning rate is ``lr_scale · blr · effective_batch / 256`` (``lr_scale`` is the
    method's, e.g. ``r/m`` for SelectiveMAE) unless ``lr`` is given; the schedule is per
    optimiser step over the run, so training progress ``t = step / total_steps`` also drives
    SelectiveMAE's PSTS curriculum.

    Args:
        model: method options; ``name`` plus the method's constructor arguments.
        blr: base learning rate.
        lr: absolute learning rate (overrides ``blr`` scaling) or None.
        weight_decay: AdamW weight decay (0.05).
        betas: AdamW betas (0.9, 0.95).
        warmup_epochs: epochs of linear warmup (fractions allowed).
        min_lr: final learning rate of the cosine.
        batch_size: per-device batch size (for the lr scaling).
        seed: run seed; the per-step mask RNG derives from it.
        optimizer: ``adamw`` or ``sgd``.
        momentum: SGD momentum.
        restarts: cosine cycles over the run (0 or 1: one).
    """

    def __init__(
        self,
        model: dict[str, Any],
        blr: float = 1.5e-4,
        lr: float | None = None,
        weight_decay: float = 0.05,
        betas: tuple[float, float] = (0.9, 0.95),
        warmup_epochs: float = 1.0,
        min_lr: float = 0.0,
        batch_size: int = 64,
        seed: int = 0,
        optimizer: str = "adamw",
        momentum: float = 0.9,
        restarts: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        opts = dict(model)
        self.method_name = opts.pop("name")
        self.model = build_method(self.method_name, **opts)
        self._total: int | None = None

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor | None:
        """One optimisation step on ``batch['image']`` ``(B, C, H, W)`` float32.

        A batch whose files were all unreadable (counted by the skip report) is skipped: the
        step returns None in one process. Under DDP every rank must join the gradient
        all-reduce, so the rank returns a zero loss that touches every trainable parameter;
        the step then averages the other ranks' gradients with zeros.
        """
        imgs = batch["image"]
        if imgs.shape[0] == 0:
            if self.trainer.world_size > 1:
                return self.zero_loss()
            return None
        t = self.progress()
        out = self.model(imgs, progress=t, generator=self._generator())
        loss = out["loss"]
        # A finiteness check syncs device and host, so it runs on logging steps only.
        if self.global_step % self.trainer.log_every_n_steps == 0 and not torch.isfinite(loss):
            raise FloatingPointError(f"loss is {loss.item()} at step {self.global_step}; lower the learning rate")
        self.log("train/loss", loss, prog_bar=True, batch_size=imgs.shape[0], sync_dist=False)
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"], batch_size=imgs.shape[0])
        self.log("train/progress", t, batch_size=imgs.shape[0])
        if isinstance(self.model, SelectiveMAE):
            self.log("train/psts_stage", float(psts_mix(t, self.model.psts_boundaries).stage), batch_size=imgs.shape[0])
        return loss
