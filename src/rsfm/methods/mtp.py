"""MTP: multi-task supervised pretraining of an MIM-initialised encoder.

Wang et al., "MTP: Advancing Remote Sensing Foundation Model via Multi-Task Pretraining",
IEEE JSTARS 2024 (arXiv 2403.13430). Masked image modelling alone teaches scene- and
pixel-level statistics, not objects; MTP continues the pretraining of an MIM encoder (the
"stage-wise" path: MAE, SelectiveMAE) with supervision of three dense tasks at once, on
several labelled datasets (SAMRS's SOTA, SIOR and FAST in the paper, §III-A):

- semantic segmentation with UperNet (Xiao et al., ECCV 2018);
- instance segmentation with Mask R-CNN (He et al., ICCV 2017);
- rotated detection with Oriented R-CNN (Xie et al., ICCV 2021).

Every step takes one batch of every subset; their images pass through the encoder **once**,
concatenated (§III-B), and the features are split back per subset. Each decoder is shared by
all subsets; only its final class predictors are per subset (their class lists differ), which
:func:`~rsfm.models.heads.base.share_trunk` arranges. The loss is the sum over subsets of every
task's loss terms (Eq. 1 of the paper: L = L_sem + L_ins + L_rod), each task weighted by
``loss_weights`` (1 by default, as the paper).

Unlike the release, a subset may carry only some of the labels (semantic masks only, rotated
boxes only): its heads run for the tasks whose labels it has, so partly labelled sets mix with
SAMRS. What is exported is the encoder (with its simple feature pyramid for ViT+RVSA, as the
release's encoder file), ready for every downstream task.

.. versionadded:: 0.3
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rsfm.data.base import DataInfo
from rsfm.methods.base import PretrainMethod, StepContext
from rsfm.models.encoders.base import Encoder
from rsfm.models.heads.base import Head
from rsfm.models.necks import Neck
from rsfm.utils.errors import ConfigError
from rsfm.utils.registry import METHODS

__all__ = ["DEFAULT_HEADS", "MTP", "TASKS"]

#: the tasks, in the order their losses are computed, and the sample keys each reads
TASKS: dict[str, tuple[str, ...]] = {
    "semantic": ("mask",),
    "instance": ("boxes", "labels", "masks"),
    "rotated": ("obbs", "obb_labels"),
}

#: MTP's decoders (§III-B; UperNet at 256 channels without an auxiliary head)
DEFAULT_HEADS: dict[str, dict[str, Any]] = {
    "semantic": {"class_path": "UperNetHead", "init_args": {"channels": 256, "dropout": 0.1}},
    "instance": {"class_path": "MaskRCNNHead", "init_args": {}},
    "rotated": {"class_path": "OrientedRCNNHead", "init_args": {}},
}

#: label of padded and unlabelled pixels in semantic masks
IGNORE = 255


@METHODS.register
class MTP(PretrainMethod):
    """Multi-task pretraining: one encoder, shared decoders, per-subset predictors.

    The parts are specifications (``{class_path, init_args}`` mappings, checked against the
    classes' signatures when a recipe is read), built here.

    Args:
        encoder: the encoder specification (``{class_path: ViTRVSA, init_args: {...}}``,
            ``rsfm list encoders``), as in fine-tuning recipes.
        init: an rsfm MIM export (``encoder.safetensors`` of an ``rsfm pretrain`` run of
            SelectiveMAE or MAE) the encoder starts from (it becomes the encoder's
            ``weights``); None: the encoder specification's own ``weights`` (or random).
        neck: a neck specification, for encoders without a pyramid of their own (a plain
            ``ViT`` needs ``SimpleFeaturePyramid``; ``ViTRVSA`` has its own); None: none.
        heads: task → head specification overriding :data:`DEFAULT_HEADS` (``semantic``,
            ``instance``, ``rotated``); a task set to None is not trained.
        loss_weights: task → weight of its loss (1 for each task by default, as the paper).
        subsets: subset → ``{"tasks": [...], "classes": [...]}``; filled from the data
            (:class:`~rsfm.data.multitask_module.MultiTaskDataModule`).
        in_chans: input bands (filled from the data).
        img_size: training crop side, pixels (filled from the data).

    Raises:
        ConfigError: on an unknown task or part, no subsets, a subset no head can train, or
            an encoder whose maps the heads cannot take.
    """

    #: the batch is ``{subset: batch}`` of lists (the pretraining module normalises each image)
    subset_batches: ClassVar[bool] = True
    image_keys: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        encoder: Encoder,
        init: str | None = None,
        neck: Neck | None = None,
        heads: dict[str, Head | None] | None = None,
        loss_weights: dict[str, float] | None = None,
        subsets: dict[str, dict[str, Any]] | None = None,
        in_chans: int | None = None,
        img_size: int | None = None,
    ) -> None:
        super().__init__()
        from rsfm.models.heads.base import share_trunk
        from rsfm.models.task_model import build_part
        from rsfm.utils.registry import ENCODERS, HEADS, NECKS

        if not subsets:
            raise ConfigError(
                "model.subsets is empty: MTP needs multi-task data (data.class_path: MultiTaskDataModule)"
            )
        unknown = sorted(set(heads or {}) - set(TASKS))
        if unknown:
            raise ConfigError(f"model.heads: unknown tasks {unknown}; MTP's tasks are {list(TASKS)}")
        unknown = sorted(set(loss_weights or {}) - set(TASKS))
        if unknown:
            raise ConfigError(f"model.loss_weights: unknown tasks {unknown}; MTP's tasks are {list(TASKS)}")
        specs = {**DEFAULT_HEADS, **(heads or {})}
        self.loss_weights = {t: float((loss_weights or {}).get(t, 1.0)) for t in TASKS}
        self.img_size = int(img_size) if img_size else None
        enc = {"class_path": encoder["class_path"], "init_args": dict(encoder.get("init_args") or {})}
        if init:
            enc["init_args"]["weights"] = str(init)
        self.backbone = build_part(enc, ENCODERS, "model.encoder", in_chans=in_chans)
        channels, strides = list(self.backbone.out_channels), list(self.backbone.strides)
        self.neck = None
        if neck is not None:
            self.neck = build_part(neck, NECKS, "model.neck")
            self.neck.build(channels, strides)
            channels, strides = list(self.neck.out_channels), list(self.neck.strides)
        if len(set(strides)) != len(strides):
            raise ConfigError(
                f"model: the encoder's maps share one stride ({strides}); MTP's dense heads need a pyramid: "
                "set model.neck: {class_path: SimpleFeaturePyramid} for a plain ViT"
            )
        # the final norm stays although no head uses it: the export keeps the MIM encoder's
        # (a plain ViT's classification fine-tuning pools through it); every step touches it with a zero
        # gradient, so DDP sees no unused parameter
        # decoders[task][subset]; the first subset's head owns the shared layers
        self.decoders = nn.ModuleDict()
        self.subset_tasks: dict[str, list[str]] = {}
        for name, sub in subsets.items():
            tasks = [t for t in TASKS if t in sub.get("tasks", ()) and specs.get(t) is not None]
            if not tasks:
                raise ConfigError(
                    f"model: subset {name!r} carries {list(sub.get('tasks', ()))} but no head is set for them"
                )
            self.subset_tasks[name] = tasks
            for task in tasks:
                classes = list(sub["classes"])
                info = DataInfo(
                    classes=["background", *classes] if task == "semantic" else classes,
                    ignore_index=IGNORE,
                    crop_size=self.img_size,
                )
                head = build_part(specs[task], HEADS, f"model.heads.{task}")
                head.build(channels, strides, info)
                group = self.decoders[task] if task in self.decoders else None
                if group is None:
                    group = self.decoders[task] = nn.ModuleDict()
                elif len(group):
                    share_trunk(head, next(iter(group.values())))
                group[name] = head
        self.subsets = {n: dict(s) for n, s in subsets.items()}
        #: padding multiple of the concatenated crops (as the task model's: 32, the coarsest
        #: stride and the encoder's input multiple, e.g. a ViT's patch)
        self.size_divisor = math.lcm(int(max([32, *strides])), int(self.backbone.input_multiple))

    # -- what is exported ----------------------------------------------------------------------

    @property
    def encoder(self) -> nn.Module:  # type: ignore[override]
        """The network exported after pretraining (timm key names; ViT+RVSA with its pyramid)."""
        return self.backbone.model

    @property
    def layer_decay_encoder(self) -> nn.Module:
        """The encoder whose ``param_groups`` apply layer-wise lr decay (``optim.layer_decay``)."""
        return self.backbone

    @property
    def input_stats(self) -> tuple[list[float], list[float]] | None:
        """``(mean, std)`` the initial weights were pretrained with (None: the data's)."""
        meta = self.backbone.meta
        if meta.get("weights") and meta.get("mean") and meta.get("std"):
            return list(map(float, meta["mean"])), list(map(float, meta["std"]))
        return None

    def export_meta(self) -> dict[str, Any]:
        """The encoder's build metadata (``arch``, size, patch...), and where it started."""
        run_keys = ("weights", "method", "mean", "std", "data_root", "test_fraction", "split_seed", "epochs", "steps")
        meta = {k: v for k, v in self.backbone.meta.items() if k not in (*run_keys, "natural_root", "init")}
        meta["init"] = self.backbone.meta.get("weights")
        meta["init_method"] = self.backbone.meta.get("method")
        meta["subsets"] = self.subsets
        return meta

    # -- training ----------------------------------------------------------------------------

    def check_setup(self, batch_size: int, world_size: int) -> None:
        """Refuse a run whose semantic decoder would see one sample per BatchNorm call.

        MTP's UperNet normalises each subset's batch separately (the release: SyncBN over 32
        GPUs, one crop per subset each); without SyncBN (one device, or several without
        ``trainer.sync_batchnorm``) that needs two crops per subset and device.

        Raises:
            ConfigError: if ``batch_size`` is 1, a subset trains semantics and its BatchNorm
                is not synchronised over several devices.
        """
        semantic = [n for n, tasks in self.subset_tasks.items() if "semantic" in tasks]
        synced = world_size > 1 and any(isinstance(m, nn.SyncBatchNorm) for m in self.modules())
        if semantic and batch_size < 2 and not synced:
            where = "on one device" if world_size == 1 else f"on each of {world_size} devices without SyncBN"
            raise ConfigError(
                f"data.batch_size=1: the semantic decoder's BatchNorm needs at least 2 crops of a subset "
                f"({', '.join(semantic)}) per step {where}; raise data.batch_size, or train on several "
                "GPUs with trainer.sync_batchnorm=true"
            )

    def pyramid(self, x: Tensor) -> list[Tensor]:
        """Maps ``(B, C_i, H/s_i, W/s_i)`` of normalised images (encoder, then neck), finest first."""
        maps = self.backbone.forward_intermediates(x)
        return self.neck(maps) if self.neck is not None else maps

    @staticmethod
    def _task_batch(task: str, batch: Mapping[str, Any], shape: tuple[int, int]) -> dict[str, Any]:
        """The keys a task's head reads, renamed as the heads name them."""
        if task == "semantic":
            h, w = shape
            masks = [F.pad(m.long(), (0, w - m.shape[-1], 0, h - m.shape[-2]), value=IGNORE) for m in batch["mask"]]
            return {"mask": torch.stack(masks)}
        if task == "instance":
            return {"boxes": batch["boxes"], "labels": batch["labels"], "masks": batch["masks"]}
        return {"obbs": batch["obbs"], "labels": batch["obb_labels"]}

    def training_step(self, batch: dict[str, Any], ctx: StepContext) -> dict[str, Tensor]:
        """Losses of one step over every subset's batch (images already normalised).

        Args:
            batch: ``{subset: {"image": [(C, H_i, W_i) float32 normalised], "mask": [(H_i, W_i)
                int64], "boxes"/"labels"/"masks", "obbs"/"obb_labels": per image}}``, the keys of
                the tasks each subset carries (:func:`~rsfm.data.multitask.collate_multitask`).
            ctx: the step's context (unused: the heads sample with torch's global RNG, which the
                pretraining module seeds per step).

        Returns:
            ``loss`` (the weighted sum), one scalar per task (summed over subsets) and per
            ``<task>/<subset>``; subsets without images this step are left out.
        """
        from rsfm.models.heads.base import Features
        from rsfm.models.task_model import _pad_batch

        names = [n for n in self.subset_tasks if n in batch and len(batch[n]["image"])]
        if not names:
            raise ValueError("MTP.training_step: no subset of the batch holds an image")
        images = [img for n in names for img in batch[n]["image"]]
        x, sizes = _pad_batch(images, self.size_divisor)
        maps = self.pyramid(x)
        shape = (int(x.shape[-2]), int(x.shape[-1]))
        out: dict[str, Tensor] = {}
        per_task = {t: x.new_zeros(()) for t in TASKS}
        start = 0
        for name in names:
            b = batch[name]
            k = len(b["image"])
            sub_maps = [m[start : start + k] for m in maps]
            sub_sizes = sizes[start : start + k]
            start += k
            for task in self.subset_tasks[name]:
                if task == "semantic" and k == 1 and ctx.world_size == 1 and self.training:
                    # UperNet's BatchNorm cannot train on one sample (its 1x1 pooling branch);
                    # only when unreadable files shrank this batch: check_setup refuses batch 1
                    continue
                head = self.decoders[task][name]
                # semantic labels are padded to the batch (ignore), so the logits are not cropped
                feats = Features(
                    maps={"image": sub_maps},
                    sizes=[shape] * k if task == "semantic" else sub_sizes,
                    shape=shape,
                )
                terms = head.loss(feats, self._task_batch(task, b, shape))
                value = sum(terms.values(), x.new_zeros(()))
                out[f"{task}/{name}"] = value.detach()
                per_task[task] = per_task[task] + value
        loss = x.new_zeros(())
        for task, value in per_task.items():
            if any(task in self.subset_tasks[n] for n in names):
                out[task] = value.detach()
                loss = loss + self.loss_weights[task] * value
        out["loss"] = loss
        return out
