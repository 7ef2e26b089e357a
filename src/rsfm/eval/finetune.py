"""End-to-end fine-tuning of an encoder for scene classification.

The recipe is MAE's fine-tuning protocol (He et al. 2022, §A.3, after BEiT): AdamW with
layer-wise learning-rate decay (timm's parameter groups), an actual lr of
``base lr × batch / 256``, linear warmup then cosine decay per step, cross-entropy with label
smoothing, and stochastic depth set on the encoder by the caller. Overall accuracy (OA, the
micro-averaged accuracy) is tracked on the validation split.

A from-scratch baseline is the same call on a randomly initialised
:func:`rsfm.models.vit.build_vit` under the same budget.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import CSVLogger
from timm.optim import create_optimizer_v2
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

from rsfm.engine.optim import warmup_cosine
from rsfm.engine.precision import default_precision

__all__ = ["ClassificationModule", "finetune"]


class ClassificationModule(L.LightningModule):
    """Scene classification by fine-tuning a timm encoder with a linear head.

    Batches are dicts with ``image`` ``(B, 3, H, W)`` float32 (normalised) and ``label``
    ``(B,)`` int64, as made by :func:`rsfm.data.folder.collate_skipping`.

    Args:
        encoder: a timm ``VisionTransformer`` or ``ResNet``; its classifier is replaced by a fresh
            ``num_classes`` head (weights trunc-normal, std 2e-5, as MAE) unless it already
            has that many outputs. Set ``drop_path_rate`` when building it.
        num_classes: number of scene classes ``C``.
        lr: base learning rate; the optimizer uses ``lr × batch_size / 256``.
        batch_size: effective batch per optimizer step (per-device batch × devices ×
            accumulation), for the lr scaling.
        weight_decay: AdamW weight decay (none on biases, norms, tokens, position embedding).
        layer_decay: layer-wise lr decay (timm's groups): block ``i`` (0-based) of ``L``
            gets ``layer_decay^(L - i)`` of the lr, the patch embedding and class token
            ``layer_decay^(L + 1)``, the final norm and head the full lr. ``None`` or 1
            turns it off.
        label_smoothing: cross-entropy label smoothing.
        warmup_epochs: epochs of linear lr warmup.
        epochs: length of the cosine schedule in epochs; ``None``: the trainer's
            ``max_epochs``.
        min_lr_ratio: final lr as a fraction of the peak.

    """

    def __init__(
        self,
        encoder: nn.Module,
        num_classes: int,
        lr: float = 5e-4,
        batch_size: int = 256,
        weight_decay: float = 0.05,
        layer_decay: float | None = 0.75,
        label_smoothing: float = 0.1,
        warmup_epochs: float = 5,
        epochs: int | None = None,
        min_lr_ratio: float = 1e-3,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["encoder"])
        if getattr(encoder, "num_classes", None) != num_classes:
            encoder.reset_classifier(num_classes)
            head = encoder.get_classifier()  # ``head`` of a ViT, ``fc`` of a ResNet
            nn.init.trunc_normal_(head.weight, std=2e-5)
            nn.init.zeros_(head.bias)
        self.encoder = encoder
        self.val_oa = MulticlassAccuracy(num_classes=num_classes, average="micro")
        self.val_aa = MulticlassAccuracy(num_classes=num_classes, average="macro")

    def forward(self, images: Tensor) -> Tensor:
        """Class logits.

        Args:
            images: ``(B, 3, H, W)`` float32, normalised.

        Returns:
            ``(B, C)`` logits.

        """
        return self.encoder(images)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor | None:
        """Label-smoothed cross-entropy on one batch; ``None`` skips an empty batch."""
        images, labels = batch["image"], batch["label"]
        if images.shape[0] == 0:
            return None
        loss = F.cross_entropy(self(images), labels, label_smoothing=self.hparams.label_smoothing)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=images.shape[0])
        self.log(
            "train/lr",
            self.trainer.optimizers[0].param_groups[-1]["lr"],
            on_step=True,
            on_epoch=False,
            batch_size=images.shape[0],
        )
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        """Accumulate OA and mean class accuracy on the validation split."""
        images, labels = batch["image"], batch["label"]
        if images.shape[0] == 0:
            return
        preds = self(images).argmax(1)
        self.val_oa.update(preds, labels)
        self.val_aa.update(preds, labels)
        self.log("val/OA", self.val_oa, on_epoch=True, prog_bar=True, batch_size=images.shape[0])
        self.log("val/mean_class_accuracy", self.val_aa, on_epoch=True, batch_size=images.shape[0])

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Tensor]:
        """Predicted classes with the batch's labels (and dataset indices, if present)."""
        out = {"pred": self(batch["image"]).argmax(1), "label": batch["label"]}
        if "index" in batch:
            out["index"] = torch.as_tensor(batch["index"])
        return out

    def configure_optimizers(self) -> dict[str, Any]:
        """AdamW over timm's layer-decay groups, warmup + cosine lr stepped every batch."""
        hp = self.hparams
        lr = hp.lr * hp.batch_size / 256
        layer_decay = hp.layer_decay if hp.layer_decay not in (None, 1, 1.0) else None
        optimizer = create_optimizer_v2(
            self.encoder, opt="adamw", lr=lr, weight_decay=hp.weight_decay, layer_decay=layer_decay, betas=(0.9, 0.999)
        )
        # timm leaves the per-group ``lr_scale`` for its own schedulers to apply; fold it into
        # each group's lr so that any torch scheduler scales the decayed rates.
        for group in optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)

        total = int(self.trainer.estimated_stepping_batches)
        max_epochs = self.trainer.max_epochs if self.trainer.max_epochs not in (None, -1) else 1
        steps_per_epoch = max(1, total // max_epochs)
        if hp.epochs is not None:
            total = hp.epochs * steps_per_epoch
        warmup = min(int(round(hp.warmup_epochs * steps_per_epoch)), max(0, total - 1))
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: warmup_cosine(step, warmup, total, hp.min_lr_ratio)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def finetune(
    encoder: nn.Module,
    datamodule: L.LightningDataModule,
    max_epochs: int = 50,
    max_time: str | None = None,
    accelerator: str = "auto",
    precision: str | None = None,
    out_dir: str | os.PathLike[str] = "finetune",
    seed: int = 0,
    lr: float = 5e-4,
    weight_decay: float = 0.05,
    layer_decay: float | None = 0.75,
    label_smoothing: float = 0.1,
    warmup_epochs: float = 5,
    validate: bool = True,
    log_every_n_steps: int = 10,
    enable_progress_bar: bool = True,
    trainer_kwargs: dict[str, Any] | None = None,
) -> tuple[Tensor, Tensor]:
    """Fine-tune ``encoder`` on the datamodule's training split, then predict its held-out split.

    Training runs on one device with Lightning; metrics go to a CSV log under
    ``out_dir/csv/`` (``metrics.csv``: ``train/loss`` per step, ``val/OA`` per epoch). No
    checkpoints are written: the final weights predict the held-out split, so no model
    selection ever looks at it.

    Args:
        encoder: a timm ``VisionTransformer`` (pretrained, or ``build_vit(...)`` for a
            scratch baseline), built with the wanted ``drop_path_rate``.
        datamodule: a :class:`rsfm.data.datamodule.ClassificationDataModule` (or any
            datamodule with ``num_classes``, ``batch_size``, ``train_dataloader``,
            ``val_dataloader`` and ``test_dataloader``).
        max_epochs: epochs, and the length of the cosine schedule.
        max_time: optional wall-clock budget ``"DD:HH:MM:SS"``; training stops when it is
            spent (the lr schedule is still laid out over ``max_epochs``).
        accelerator: Lightning accelerator (``auto``, ``cpu``, ``gpu``).
        precision: Lightning precision; ``None``: bf16 mixed on a CUDA GPU, else 32-bit.
        out_dir: folder of the CSV log.
        seed: seed for initialisation, shuffling and augmentation.
        lr: base lr (scaled by ``batch_size / 256``).
        weight_decay: AdamW weight decay.
        layer_decay: layer-wise lr decay.
        label_smoothing: cross-entropy label smoothing.
        warmup_epochs: warmup length in epochs.
        validate: evaluate ``val/OA`` at the end of every epoch.
        log_every_n_steps: logging interval.
        enable_progress_bar: show Lightning's progress bar.
        trainer_kwargs: extra ``lightning.Trainer`` arguments (e.g. ``limit_train_batches``).

    Returns:
        ``(preds, labels)``, both ``(N,)`` int64 on CPU, over the held-out split in loader
        order.

    """
    L.seed_everything(seed, workers=True)
    if precision is None:
        precision = default_precision(accelerator)
    module = ClassificationModule(
        encoder,
        num_classes=datamodule.num_classes,
        lr=lr,
        batch_size=int(getattr(datamodule, "batch_size", 256))
        * int((trainer_kwargs or {}).get("accumulate_grad_batches", 1)),
        weight_decay=weight_decay,
        layer_decay=layer_decay,
        label_smoothing=label_smoothing,
        warmup_epochs=warmup_epochs,
        epochs=max_epochs,
    )
    out_dir = Path(out_dir)
    trainer = L.Trainer(
        max_epochs=max_epochs,
        max_time=max_time,
        accelerator=accelerator,
        devices=1,
        precision=precision,
        logger=CSVLogger(str(out_dir), name="csv", version=""),
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=enable_progress_bar,
        log_every_n_steps=log_every_n_steps,
        num_sanity_val_steps=0,
        limit_val_batches=None if validate else 0,
        default_root_dir=str(out_dir),
        **(trainer_kwargs or {}),
    )
    trainer.fit(module, datamodule=datamodule)
    outputs = trainer.predict(module, dataloaders=datamodule.test_dataloader())
    preds = torch.cat([o["pred"] for o in outputs]).long().cpu()
    labels = torch.cat([o["label"] for o in outputs]).long().cpu()
    return preds, labels
