"""The one LightningModule that pretrains with any registered method.

:class:`PretrainTask` builds the method named in the recipe's ``model`` section
(``{class_path: SelectiveMAE, init_args: {...}}``), filling ``img_size``, ``in_chans`` and
``num_classes`` from the data when the recipe leaves them unset; normalises the images of the
method's ``image_keys``; and runs :meth:`~rsfm.methods.base.PretrainMethod.training_step` with
the training progress and seeded generators. The optimiser follows ``optim``: ``blr`` scaled
by the effective batch and the method's ``lr_scale`` (SelectiveMAE's ``r / m``), or an
absolute ``lr``.

.. versionadded:: 0.2
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from rsfm.data.base import DataInfo
from rsfm.methods.base import PretrainMethod, StepContext
from rsfm.optim import param_groups
from rsfm.training import TrainingModule, is_sharded
from rsfm.utils.errors import ConfigError
from rsfm.utils.registry import METHODS

__all__ = ["LEGACY_DEFAULTS", "PretrainTask", "build_method"]

#: Method options added in rsfm 0.3, with the behaviour of the versions before them: a checkpoint
#: written before an option existed resumes only with that value (:meth:`PretrainTask.on_load_checkpoint`).
LEGACY_DEFAULTS: dict[str, Any] = {"token_weight_decay": False, "decoder": "rsfm"}


def build_method(spec: dict[str, Any], info: DataInfo) -> PretrainMethod:
    """The method of a ``model`` specification, with sizes the recipe left unset taken from the data.

    Raises:
        ConfigError: on an unknown method, a bad option, a size that contradicts the data, or
            sample keys the data does not provide.
    """
    from rsfm.models.task_model import build_part

    fill = {
        "in_chans": info.num_channels,
        "img_size": info.img_size,
        "num_classes": len(info.classes) or None,
        "subsets": info.subsets,  # multi-task data: each subset's tasks and classes (MTP)
    }
    method: PretrainMethod = build_part(spec, METHODS, "model", **{k: v for k, v in fill.items() if v is not None})
    if not isinstance(method, PretrainMethod):
        raise ConfigError(f"model.class_path: {type(method).__name__} is not a pretraining method")
    img = getattr(method, "img_size", None)
    if info.img_size is not None and img is not None and int(img) != int(info.img_size):
        raise ConfigError(f"model.img_size={img} differs from data.img_size={info.img_size}; leave it unset")
    missing = [k for k in method.sample_keys if k not in info.sample_keys]
    if missing:
        raise ConfigError(
            f"model ({type(method).__name__}) needs sample keys {missing} that the data does not provide "
            f"(it gives {list(info.sample_keys)}); e.g. GeRSP needs data.class_path: PairedDataModule"
        )
    return method


class PretrainTask(TrainingModule):
    """Pretrains any :class:`~rsfm.methods.base.PretrainMethod`.

    Args:
        model: the method's specification, ``{"class_path": ..., "init_args": {...}}``.
        optim: the ``optim`` section (:class:`rsfm.optim.OptimConfig` fields).
        data: the datamodule's :class:`~rsfm.data.base.DataInfo` as a dict (bands,
            normalisation, classes).
        batch_size: per-device batch (for ``blr`` scaling).
        seed: run seed; masks, sampling and shuffles of every step derive from it.

    Logged per step: ``train/loss``, the method's other scalars (``train/<name>``),
    ``train/lr`` and ``train/progress``.
    """

    def __init__(
        self, model: dict[str, Any], optim: dict[str, Any], data: dict[str, Any], batch_size: int = 64, seed: int = 0
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        info = DataInfo(**{**data, "sample_keys": tuple(data.get("sample_keys", ("image",)))})
        self.info = info
        self.model = build_method(model, info)
        self.method_name = type(self.model).__name__
        stats = getattr(self.model, "input_stats", None)
        if stats is not None and len(stats[0]) == info.num_channels:
            # normalise as the initial weights were pretrained (MTP from an MIM export)
            info.mean, info.std = list(stats[0]), list(stats[1])
        c = info.num_channels
        self.register_buffer("mean", torch.tensor(info.mean, dtype=torch.float32).view(1, c, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(info.std, dtype=torch.float32).view(1, c, 1, 1), persistent=False)

    @property
    def lr_scale(self) -> float:
        """The method's ``blr`` factor (SelectiveMAE: ``rec_ratio / mask_ratio``)."""
        return float(self.model.lr_scale)

    def optimizer_groups(self, lr: float) -> list[dict[str, Any]]:
        """All trainable parameters at ``lr``; no weight decay on norms, biases, tokens, position embeddings.

        A method with a ``layer_decay_encoder`` (MTP's encoder) gets its layer-wise decay
        (``optim.layer_decay``) there, the full ``lr`` elsewhere.
        """
        encoder = getattr(self.model, "layer_decay_encoder", None)
        cfg = self.optim_config
        return param_groups(self.model, encoder, lr, cfg.weight_decay, cfg.layer_decay if encoder is not None else None)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """The method's forward (what a strategy's wrapped module runs, e.g. FSDP's for figures)."""
        return self.model(*args, **kwargs)

    def normalise(self, x: Tensor) -> Tensor:
        """``(B, C, H, W)`` in [0, 1] → normalised with the data's mean and std."""
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor | None:
        """One step of the method on a batch whose images are in [0, 1].

        A batch whose files were all unreadable (counted by the skip report) is skipped in
        one process; under DDP the rank still runs the method's step with no rows (joining
        its collectives) and a zero loss that touches every parameter, so it joins the
        gradient all-reduce.
        """
        if getattr(self.model, "subset_batches", False):
            return self._subset_step(batch)
        n = batch["image"].shape[0]
        distributed = self.trainer.world_size > 1
        if n == 0 and not distributed:
            return None
        ctx = StepContext(
            progress=self.progress(),
            generator=self.step_generator(),
            shared_generator=self.step_generator(shared=True),
            world_size=self.trainer.world_size,
        )
        if n == 0:
            if is_sharded(self.trainer):
                # FSDP gathers and reduces each block's weights in the forward and backward of
                # every rank: run both on one blank image whose loss counts for nothing
                size = int(self.info.img_size or 224)
                blank = torch.zeros((1, self.info.num_channels, size, size), device=self.device)
                inputs = {**batch, **dict.fromkeys(self.model.image_keys, blank)}
                for key in self.model.sample_keys:
                    inputs.setdefault(key, torch.zeros(1, dtype=torch.long, device=self.device))
                return self.model.training_step(inputs, ctx)["loss"] * 0.0 + self.zero_loss()
            if not self.model.joins_collectives:
                return self.zero_loss()
            # rows of the shape the other ranks gather, so that the collectives match
            size = int(self.info.img_size or 224)
            empty = torch.zeros((0, self.info.num_channels, size, size), device=self.device)
            inputs = {**batch, **dict.fromkeys(self.model.image_keys, empty)}
            for key in self.model.sample_keys:
                inputs.setdefault(key, torch.zeros(0, dtype=torch.long, device=self.device))
            return self.model.training_step(inputs, ctx)["loss"] + self.zero_loss()
        inputs = dict(batch)
        for key in self.model.image_keys:
            inputs[key] = self.normalise(batch[key])
        out = self.model.training_step(inputs, ctx)
        loss = out["loss"]
        self.log("train/loss", loss, prog_bar=True, batch_size=n, sync_dist=False)
        for key, value in out.items():
            if key != "loss" and isinstance(value, Tensor) and value.ndim == 0:
                self.log(f"train/{key}", value.detach().float(), batch_size=n)
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"], batch_size=n)
        self.log("train/progress", ctx.progress, batch_size=n)
        return loss

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse to resume a checkpoint of an earlier rsfm whose defaults differ from this recipe's.

        Options added later keep the earlier behaviour only when set to it
        (:data:`LEGACY_DEFAULTS`); resuming under the new default would change the model or the
        optimiser's groups mid-run (and fail on the optimiser state), so the error names the
        settings that resume the run as it was.

        Raises:
            ConfigError: naming the ``model.*`` settings to add.
        """
        before = ((checkpoint.get("hyper_parameters") or {}).get("model") or {}).get("init_args") or {}
        now = (self.hparams.model or {}).get("init_args") or {}
        if not before:
            return
        fix = [f"model.{k}={v}" for k, v in LEGACY_DEFAULTS.items() if k in now and k not in before and now[k] != v]
        if fix:
            raise ConfigError(
                "this checkpoint was written by an earlier rsfm, which trained without options this recipe "
                f"sets otherwise; resume it with {' '.join(fix)} (the behaviour it was trained with)"
            )

    def on_fit_start(self) -> None:
        """Let the method refuse a run it cannot train (MTP: one crop per subset on one device)."""
        check = getattr(self.model, "check_setup", None)
        if check is not None:
            check(int(self.hparams.batch_size), int(self.trainer.world_size))

    def _subset_step(self, batch: dict[str, Any]) -> Tensor | None:
        """One step of a method whose batch is ``{subset: batch of lists}`` (MTP).

        Images are normalised one by one. Subsets whose files were all unreadable are left
        out; a step without any image is skipped in one process, and under DDP gives a zero
        loss touching every parameter. The loss always includes that zero term, so heads of
        subsets or tasks absent from this rank's step still join the gradient all-reduce.
        """
        n = sum(len(b["image"]) for b in batch.values())
        if n == 0:
            return None if self.trainer.world_size == 1 else self.zero_loss()
        ctx = StepContext(
            progress=self.progress(),
            generator=self.step_generator(),
            shared_generator=self.step_generator(shared=True),
            world_size=self.trainer.world_size,
        )
        inputs = {
            name: {**b, "image": [self.normalise(img[None].to(self.device))[0] for img in b["image"]]}
            for name, b in batch.items()
        }
        out = self.model.training_step(inputs, ctx)
        loss = out["loss"] + self.zero_loss()
        self.log("train/loss", out["loss"], prog_bar=True, batch_size=n, sync_dist=False)
        for key, value in out.items():
            if key != "loss" and isinstance(value, Tensor) and value.ndim == 0:
                self.log(f"train/{key}", value.detach().float(), batch_size=n)
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"], batch_size=n)
        self.log("train/progress", ctx.progress, batch_size=n)
        return loss

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        """Step the optimiser, then the method's post-step update (GeRSP's EMA teacher).

        Done here rather than in ``on_train_batch_end`` so that a checkpoint saved at the end
        of a batch already holds that step's teacher.
        """
        super().optimizer_step(*args, **kwargs)
        self.model.after_optimizer_step()

    def export_meta(self) -> dict[str, Any]:
        """The encoder's build metadata plus the method and the data's normalisation."""
        meta = self.model.export_meta()
        meta.update(method=self.method_name, mean=list(self.info.mean), std=list(self.info.std))
        return meta
