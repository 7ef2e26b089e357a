"""What every rsfm LightningModule shares: optimiser, schedule, run length, seeds, resume.

:class:`TrainingModule` is the base of the pretraining module
(:class:`rsfm.methods.module.PretrainTask`) and of the downstream module
(:class:`rsfm.tasks.module.DownstreamTask`). It builds the optimiser and its per-step
schedule from the recipe's ``optim`` section (:class:`rsfm.optim.OptimConfig`), seeds torch's
global RNG before every batch from ``(seed, epoch, batch, rank)`` — so dropout, stochastic
depth and proposal sampling of a resumed run equal an uninterrupted run's, bit for bit — and,
when a run resumes with a different ``optim.lr``, continues with the new rate (the advice
printed when a run diverges: lower the rate and rerun).

.. versionadded:: 0.2
"""

from __future__ import annotations

import abc
import dataclasses
import hashlib
from typing import Any

import lightning as L
import torch
from torch import Tensor

from rsfm.optim import OptimConfig, build_optimizer, peak_lr, run_length, schedule

__all__ = ["TrainingModule", "is_sharded", "step_seed"]


def step_seed(*parts: int) -> int:
    """A 63-bit seed that depends only on the given integers (run seed, step, rank...)."""
    digest = hashlib.blake2b(":".join(str(int(p)) for p in parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


class TrainingModule(L.LightningModule, metaclass=abc.ABCMeta):
    """Base of rsfm's LightningModules.

    Subclasses call ``super().__init__()``, save hyper-parameters including ``optim`` (a plain
    dict of :class:`~rsfm.optim.OptimConfig`), ``seed`` and ``batch_size`` (per device), and
    implement :meth:`optimizer_groups`.
    """

    _total: tuple[int, int] | None = None
    _configured_lrs: list[float] | None = None

    # -- randomness --------------------------------------------------------------------------

    _batch_idx: int = 0

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        """Seed torch's global RNG from ``(seed, epoch, batch, rank)`` (resumable randomness)."""
        self._batch_idx = batch_idx
        torch.manual_seed(step_seed(self.hparams.seed, self.current_epoch, batch_idx, self.global_rank))

    def step_generator(self, shared: bool = False) -> torch.Generator:
        """A generator seeded from ``(seed, optimiser step, rank)``; ``shared``: the same on every rank (CPU).

        With ``trainer.accumulate_grad_batches > 1`` the micro-batch's place in the
        accumulation is part of the seed too, so the micro-batches of one step draw
        different noise (masks, token selection).
        """
        parts: tuple[int, ...] = (self.hparams.seed, self.global_step)
        accumulate = int(getattr(self._trainer, "accumulate_grad_batches", 1) or 1)
        if accumulate > 1:
            parts += (self._batch_idx % accumulate,)
        if shared:
            return torch.Generator().manual_seed(step_seed(*parts, 0))
        g = torch.Generator(device=self.device)
        g.manual_seed(step_seed(*parts, self.global_rank))
        return g

    # -- run length ----------------------------------------------------------------------------

    def run_length(self) -> tuple[int, int]:
        """``(total optimiser steps, steps per epoch)`` of the run (see :func:`rsfm.optim.run_length`)."""
        if self._total is None:
            t = self.trainer
            if t.datamodule is not None:
                self._total = run_length(t, len(t.datamodule.train_dataloader()))
            else:  # loaders passed to fit() directly: Lightning's estimate (no mid-epoch resume concern)
                total = int(t.estimated_stepping_batches)
                epochs = t.max_epochs if t.max_epochs and t.max_epochs > 0 else 1
                self._total = (total, max(1, total // epochs))
        return self._total

    def progress(self) -> float:
        """Fraction of the run's optimiser steps done, in [0, 1]."""
        if self._trainer is None:
            return 0.0
        total, _ = self.run_length()
        return min(1.0, self.global_step / total)

    def effective_batch(self) -> int:
        """Per-device batch × devices × nodes × gradient accumulation."""
        return int(self.hparams.batch_size * self.trainer.world_size * self.trainer.accumulate_grad_batches)

    # -- optimisation --------------------------------------------------------------------------

    @property
    def optim_config(self) -> OptimConfig:
        """The recipe's ``optim`` section."""
        return OptimConfig(**self.hparams.optim)

    @property
    def lr_scale(self) -> float:
        """Factor of ``blr`` scaling (a method's; 1 by default)."""
        return 1.0

    @abc.abstractmethod
    def optimizer_groups(self, lr: float) -> list[dict[str, Any]]:
        """Parameter groups with their ``lr`` and ``weight_decay`` (subclasses)."""

    def configure_optimizers(self) -> dict[str, Any]:
        """The optimiser of ``optim`` and its per-step warmup + cosine schedule.

        With a loss scaler (``16-mixed``) and ``trainer.gradient_clip_val``, ``optim.fused: null``
        builds PyTorch's unfused AdamW: the scaler must unscale the gradients before they are
        clipped, and a fused AdamW unscales them only inside its step. Every other run keeps the
        fused AdamW, clipping included (:meth:`configure_gradient_clipping`). MTP's recipes clip.
        """
        cfg = self.optim_config
        if cfg.fused is None and self.trainer.gradient_clip_val and _loss_scaler(self.trainer) is not None:
            cfg = dataclasses.replace(cfg, fused=False)
        lr = peak_lr(cfg, self.effective_batch(), self.lr_scale)
        optimizer = build_optimizer(self.optimizer_groups(lr), cfg)
        self._configured_lrs = [float(g["lr"]) for g in optimizer.param_groups]
        total, per_epoch = self.run_length()
        entry = schedule(optimizer, cfg, total, per_epoch)
        how = f"optim.lr {cfg.lr:g}" if cfg.lr is not None else f"optim.blr {cfg.blr:g} × {self.effective_batch()}/256"
        self.print(f"lr {lr:.3e} ({how}), {total} steps, {cfg.name}")
        return {"optimizer": optimizer, "lr_scheduler": entry}

    def configure_gradient_clipping(
        self,
        optimizer: torch.optim.Optimizer,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        """Clip as Lightning does (``trainer.gradient_clip_val``), and in the two cases it refuses.

        * FSDP: the gradient norm over every rank's shards, by the root FSDP unit's
          ``clip_grad_norm_`` (a collective; ``torch.nn.utils.clip_grad_norm_`` would measure
          each rank's shard alone, so Lightning refuses norm clipping under FSDP).
        * A fused optimiser under mixed precision without a loss scaler (``bf16-mixed``): the
          gradients are final once computed, so clipping them before the fused step is exact;
          Lightning refuses every fused optimiser under mixed precision, for fp16's sake (with
          a scaler rsfm builds the unfused AdamW instead, :meth:`configure_optimizers`).

        Args:
            optimizer: the run's optimiser.
            gradient_clip_val: the largest gradient norm (or value) kept; None or 0: no clipping.
            gradient_clip_algorithm: ``'norm'`` (default) or ``'value'``.
        """
        if not gradient_clip_val or gradient_clip_val <= 0:
            return
        algorithm = gradient_clip_algorithm or "norm"
        model = self.trainer.model
        if algorithm == "norm" and is_sharded(self.trainer) and hasattr(model, "clip_grad_norm_"):
            model.clip_grad_norm_(float(gradient_clip_val))
            return
        mixed = str(self.trainer.precision).endswith("-mixed")
        fused = any(group.get("fused") for group in optimizer.param_groups)
        if mixed and fused and _loss_scaler(self.trainer) is None:
            params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
            if algorithm == "norm":
                torch.nn.utils.clip_grad_norm_(params, float(gradient_clip_val))
            else:
                torch.nn.utils.clip_grad_value_(params, float(gradient_clip_val))
            return
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def on_train_start(self) -> None:
        """After a resume, continue with the recipe's learning rate if it changed since the checkpoint."""
        if self._configured_lrs is None or not self.trainer.lr_scheduler_configs:
            return
        scheduler = self.trainer.lr_scheduler_configs[0].scheduler
        old = [float(v) for v in scheduler.base_lrs]
        new = self._configured_lrs
        if len(old) != len(new):
            return
        changed = any(abs(a - b) > 1e-12 * max(1.0, abs(b)) for a, b in zip(old, new, strict=True))
        scheduler.base_lrs = list(new)
        # the rate of the coming step under this run's schedule (identical to the restored one
        # when neither the rate nor the run length changed)
        for group, base, fn in zip(self.trainer.optimizers[0].param_groups, new, scheduler.lr_lambdas, strict=True):
            group["initial_lr"] = base
            group["lr"] = base * fn(scheduler.last_epoch)
        if changed:
            self.print(
                f"optim.lr changed since the checkpoint: peak {max(old):.3e} → {max(new):.3e}; continuing with it"
            )

    def zero_loss(self) -> Tensor:
        """A scalar 0 with a (zero) gradient path to every trainable parameter.

        A rank whose batch holds nothing still has to join DDP's gradient all-reduce.
        """
        return sum((p.sum() * 0.0 for p in self.parameters() if p.requires_grad), torch.zeros((), device=self.device))


def _loss_scaler(trainer: Any) -> Any:
    """The gradient scaler of ``trainer``'s precision (``16-mixed``), None without one (fp32, bf16)."""
    return getattr(getattr(trainer, "precision_plugin", None), "scaler", None)


def is_sharded(trainer: Any) -> bool:
    """Whether ``trainer`` shards the weights over its ranks (FSDP): every rank must then run each forward."""
    from lightning.pytorch.strategies import FSDPStrategy

    return isinstance(getattr(trainer, "strategy", None), FSDPStrategy)
