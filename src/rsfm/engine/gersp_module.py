"""The Lightning module that trains GeRSP (METHODS.md §3)."""

from __future__ import annotations

from typing import Any

import torch

from rsfm.engine.module import StepModule, check_options, step_seed
from rsfm.methods.gersp import GeRSP

__all__ = ["GeRSPModule", "build_gersp"]


def build_gersp(**kwargs: Any) -> GeRSP:
    """Build :class:`~rsfm.methods.gersp.GeRSP` from ``model.*`` options (``name`` removed).

    Raises:
        ValueError: on an option GeRSP does not take, naming it, or an invalid value.
    """
    check_options("gersp", GeRSP, kwargs)
    return GeRSP(**kwargs)


class GeRSPModule(StepModule):
    """Trains :class:`~rsfm.methods.gersp.GeRSP`: SGD, cosine with restarts, EMA teacher.

    The paper's optimiser is SGD (lr 0.007 at batch 256, momentum 0.9, weight decay 5e-4)
    with a cosine schedule restarted 5 times over 100 epochs, stepped per optimiser step. The
    learning rate is ``blr · effective_batch / 256`` unless ``lr`` is given. After every
    optimiser step the teacher takes an EMA step (:meth:`GeRSP.update_teacher`).

    Batches come from :class:`rsfm.data.paired.PairedDataModule`. Logged: ``train/loss``,
    ``train/loss_con``, ``train/loss_ce``, ``train/acc_natural``, ``train/acc_con``,
    ``train/lr``.

    Args:
        model: ``name: gersp`` plus :class:`GeRSP`'s arguments (``num_classes`` included).
        blr: base learning rate (per 256 pairs).
        lr: absolute learning rate or None.
        weight_decay: weight decay (on every parameter with SGD).
        betas: AdamW betas (``optimizer='adamw'`` only).
        warmup_epochs: epochs of linear warmup before the first cycle.
        min_lr: lr at the end of each cosine cycle.
        batch_size: pairs per device (for the lr scaling).
        seed: run seed; the shuffle-BN permutation of each step derives from it.
        optimizer: ``sgd`` (the paper's) or ``adamw``.
        momentum: SGD momentum.
        restarts: cosine cycles over the run.
    """

    def __init__(
        self,
        model: dict[str, Any],
        blr: float = 0.007,
        lr: float | None = None,
        weight_decay: float = 5e-4,
        betas: tuple[float, float] = (0.9, 0.999),
        warmup_epochs: float = 0.0,
        min_lr: float = 0.0,
        batch_size: int = 32,
        seed: int = 0,
        optimizer: str = "sgd",
        momentum: float = 0.9,
        restarts: int = 5,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        opts = dict(model)
        self.method_name = opts.pop("name")
        if self.method_name != "gersp":
            raise ValueError(f"GeRSPModule trains model.name=gersp, got {self.method_name!r}")
        self.model = build_gersp(**opts)
        self.model.lr_scale = 1.0
        self._total: int | None = None

    def _shared_generator(self) -> torch.Generator:
        """CPU generator in the same state on every rank: the shuffle-BN permutation is shared."""
        return torch.Generator().manual_seed(step_seed(self.hparams.seed, self.global_step, 0))

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor | None:
        """``L_con + α·L_ce`` on one paired batch; None if every item was unreadable."""
        if batch["image"].shape[0] == 0:
            return None
        b = batch["image"].shape[0]
        out = self.model(
            batch["image"], batch["image_key"], batch["natural"], batch["natural_label"], self._shared_generator()
        )
        loss = out["loss"]
        if self.global_step % self.trainer.log_every_n_steps == 0 and not torch.isfinite(loss):
            raise FloatingPointError(f"loss is {loss.item()} at step {self.global_step}; lower the learning rate")
        self.log("train/loss", loss, prog_bar=True, batch_size=b)
        for key in ("loss_con", "loss_ce", "acc_natural", "acc_con"):
            self.log(f"train/{key}", out[key].detach(), batch_size=b, prog_bar=key == "acc_natural")
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"], batch_size=b)
        return loss

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        """Step the optimiser, then the teacher (EMA), once per optimiser step.

        Done here rather than in ``on_train_batch_end`` so that a checkpoint saved at the end
        of a batch already holds the teacher of that step.
        """
        super().optimizer_step(*args, **kwargs)
        self.model.update_teacher()
