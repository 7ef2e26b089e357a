"""Scene classification as a downstream task of the ``rsfm finetune`` / ``test`` runner.

The model and its optimiser are :class:`rsfm.eval.finetune.ClassificationModule` (MAE's
fine-tuning protocol: AdamW with layer-wise lr decay, warmup then cosine per step,
label-smoothed cross-entropy); this module adds what the runner needs: a recipe ``build``,
a validation split for checkpoint selection that is disjoint from the test split, and the
test outputs every task writes (``metrics.json`` and PNGs).

Splits of a class-folder dataset (``root/<class>/<image>``, e.g. AID):

- **test**: ``data.test_fraction`` of each class, chosen by ``data.split_seed``. With the
  defaults (0.2, seed 0) this is exactly the split that ``rsfm pretrain`` holds back
  (``data.holdout_fraction``/``data.split_seed``), so an encoder pretrained by rsfm on the
  same folder has never seen a test image.
- **val**: ``data.val_fraction`` of each class of the remaining images (seed
  ``split_seed + 1``), for selecting the checkpoint that is tested.
- **train**: the rest.

Metrics (:func:`rsfm.eval.report.classification_report`): ``OA`` (overall accuracy),
``mean_class_accuracy``, per-class accuracy and the confusion matrix. Like every task of the
runner, scores are fractions in [0, 1] (``rsfm evaluate``'s tables print percentages).
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch
from PIL import Image, ImageDraw
from torch import Tensor, nn

from rsfm.data.datamodule import ClassificationDataModule
from rsfm.data.folder import LabeledImageFolder, stratified_split
from rsfm.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from rsfm.engine.export import atomic_write, load_encoder
from rsfm.eval.finetune import ClassificationModule
from rsfm.eval.report import classification_report, write_json
from rsfm.models.vit import build_vit
from rsfm.tasks.recipe import encoder_normalisation, recipe_sections

__all__ = ["ClassificationTask", "SceneClassificationDataModule", "build", "build_classifier", "prediction_grid"]

DATA_KEYS = {
    "root", "img_size", "batch_size", "num_workers", "test_fraction", "val_fraction", "split_seed", "mean", "std",
}  # fmt: skip
MODEL_KEYS = {"label_smoothing", "num_visualisations"}


class SceneClassificationDataModule(ClassificationDataModule):
    """Class folders split three ways: train, val (checkpoint selection) and test (held out).

    ``test`` is the stratified held-out split of :class:`ClassificationDataModule` with
    ``test_fraction``; ``val`` is a stratified ``val_fraction`` of the other images (seed
    ``split_seed + 1``), evaluated without augmentation; ``train`` is the rest, augmented.
    Batches are those of :class:`ClassificationDataModule`.

    Args:
        root: folder of class folders.
        test_fraction: share of each class held out for testing, 0 < x < 1.
        val_fraction: share of each class's non-test images used for validation,
            0 <= x < 1 (0: no validation; the last checkpoint is tested).
        **kwargs: other :class:`ClassificationDataModule` arguments (``img_size``,
            ``batch_size``, ``num_workers``, ``mean``, ``std``, ``split_seed``, ``seed``).

    Raises:
        ValueError: if a fraction is out of range (naming it).
        FileNotFoundError: if ``root`` holds no image.
    """

    def __init__(
        self, root: str | os.PathLike[str], test_fraction: float = 0.2, val_fraction: float = 0.1, **kwargs: Any
    ) -> None:
        if not 0 < test_fraction < 1:
            raise ValueError(f"data.test_fraction must lie in (0, 1), got {test_fraction}")
        if not 0 <= val_fraction < 1:
            raise ValueError(f"data.val_fraction must lie in [0, 1), got {val_fraction}")
        super().__init__(root, val_fraction=test_fraction, train_transform="finetune", **kwargs)
        self.test_fraction = test_fraction
        self.select_fraction = val_fraction
        self.test_dataset: LabeledImageFolder | None = None
        self.select_dataset: LabeledImageFolder | None = None

    def setup(self, stage: str | None = None) -> None:
        """Build the three splits once (the first call scans the folder)."""
        if self.test_dataset is not None:
            return
        super().setup(stage)
        assert self.train_dataset is not None and self.val_dataset is not None
        self.test_dataset = self.val_dataset
        if self.select_fraction > 0:
            full = self.train_dataset
            train_pos, val_pos = stratified_split(full.groups, self.select_fraction, self.split_seed + 1)
            self.train_dataset = _subset(full, train_pos, full.transform)
            self.select_dataset = _subset(full, val_pos, self._eval_transform())
        self.val_dataset = self.select_dataset

    def val_dataloader(self) -> Any:
        """Validation loader (in file order), or ``[]`` when ``val_fraction`` is 0."""
        self.setup("validate")
        if self.select_dataset is None:
            return []
        return self._loader(self.select_dataset, shuffle=False, drop_last=False)

    def test_dataloader(self) -> Any:
        """Test loader over the held-out split, in file order."""
        self.setup("test")
        assert self.test_dataset is not None
        return self._loader(self.test_dataset, shuffle=False, drop_last=False)


def _subset(folder: LabeledImageFolder, positions: list[int], transform: Any) -> LabeledImageFolder:
    """A shallow copy of ``folder`` restricted to ``positions`` (its own sample lists)."""
    part = copy.copy(folder)
    part.samples = [folder.samples[i] for i in positions]
    part.groups = [folder.groups[i] for i in positions]
    part.transform = transform
    return part


def build_classifier(spec: dict[str, Any], num_classes: int) -> nn.Module:
    """A timm classifier from a recipe's ``backbone`` section.

    Args:
        spec: ``encoder`` (an rsfm ``.safetensors`` export; its architecture, normalisation
            and weights are used) or, for random initialisation, ``arch`` (``vit`` with
            ``size``, ``img_size``, ``patch_size``; or a timm ResNet name such as
            ``resnet50``); optional ``drop_path_rate`` (stochastic depth).
        num_classes: classifier outputs ``C``.

    Returns:
        A timm model mapping ``(B, 3, H, W)`` float32 to ``(B, C)`` logits; built from an
        export it carries the export's metadata as ``rsfm_meta``.

    Raises:
        ValueError: on an unknown ``arch``, a missing ViT option, or an option this task
            does not use (``frozen``, ``out_indices``).
        FileNotFoundError: if ``encoder`` does not exist.
    """
    for key in ("frozen", "out_indices"):
        if spec.get(key):
            raise ValueError(f"backbone.{key} is not used by classification (use `rsfm evaluate` for linear probes)")
    drop_path = float(spec.get("drop_path_rate", 0.0))
    if spec.get("encoder"):
        return load_encoder(spec["encoder"], num_classes=num_classes, drop_path_rate=drop_path, dynamic_img_size=True)
    arch = spec.get("arch", "vit")
    if arch == "vit":
        for key in ("size", "patch_size"):
            if key not in spec:
                raise ValueError(f"backbone.{key} is required for a randomly initialised ViT")
        return build_vit(
            spec["size"],
            img_size=int(spec.get("img_size", 224)),
            patch_size=int(spec["patch_size"]),
            num_classes=num_classes,
            drop_path_rate=drop_path,
            dynamic_img_size=True,
        )
    if arch.startswith("resnet"):
        return timm.create_model(arch, pretrained=False, num_classes=num_classes, drop_path_rate=drop_path)
    raise ValueError(f"backbone.arch {arch!r} is not supported; expected 'vit' or a timm ResNet name")


class ClassificationTask(ClassificationModule):
    """:class:`ClassificationModule` with a test split: ``test/OA``, ``metrics.json`` and PNGs.

    Args:
        encoder: a timm classifier (see :func:`build_classifier`).
        class_names: the ``C`` class names in label order.
        mean: normalisation mean of inputs in [0, 1] (to draw the test images).
        std: normalisation std of inputs in [0, 1].
        num_visualisations: test images drawn into ``visualisations/predictions.png`` (an
            even share per class, at least one).
        **kwargs: :class:`ClassificationModule` arguments (``lr``, ``batch_size``,
            ``weight_decay``, ``layer_decay``, ``label_smoothing``, ``warmup_epochs``,
            ``min_lr_ratio``).

    Under DDP the test split is padded to equal rank lengths, so a few images count twice;
    test on one device for exact figures.
    """

    def __init__(
        self,
        encoder: nn.Module,
        class_names: list[str],
        mean: list[float] | tuple[float, ...] = IMAGENET_MEAN,
        std: list[float] | tuple[float, ...] = IMAGENET_STD,
        num_visualisations: int = 32,
        **kwargs: Any,
    ) -> None:
        super().__init__(encoder, num_classes=len(class_names), **kwargs)
        self.save_hyperparameters(ignore=["encoder"])
        self.out_dir: str | None = None
        self._preds: list[Tensor] = []
        self._labels: list[Tensor] = []
        self._visuals: list[tuple[Tensor, int, int]] = []
        self._shown: dict[int, int] = {}

    def on_test_epoch_start(self) -> None:
        """Forget the predictions of an earlier test run."""
        self._preds, self._labels, self._visuals = [], [], []
        self._shown: dict[int, int] = {}

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        """Predict one batch of the test split; keep the first images for the PNG."""
        images, labels = batch["image"], batch["label"]
        if images.shape[0] == 0:
            return
        preds = self(images).argmax(1)
        self._preds.append(preds.cpu())
        self._labels.append(labels.cpu())
        # an even share per class, so that the grid shows every class of a class-sorted split
        per_class = max(1, self.hparams.num_visualisations // len(self.hparams.class_names))
        for i in range(images.shape[0]):
            label = int(labels[i])
            if len(self._visuals) >= self.hparams.num_visualisations or self._shown.get(label, 0) >= per_class:
                continue
            self._shown[label] = self._shown.get(label, 0) + 1
            self._visuals.append((images[i].float().cpu(), label, int(preds[i])))

    def on_test_epoch_end(self) -> None:
        """Log ``test/OA`` and ``test/mean_class_accuracy``; write ``metrics.json`` and PNGs.

        Scores are fractions in [0, 1], as in every task of the runner.

        Raises:
            RuntimeError: if the test split gave no readable image.
        """
        if not self._preds:
            raise RuntimeError("the test split produced no readable image")
        preds = self.all_gather(torch.cat(self._preds)).flatten().cpu()
        labels = self.all_gather(torch.cat(self._labels)).flatten().cpu()
        report = _as_fractions(classification_report(preds, labels, self.hparams.class_names))
        self.log("test/OA", report["OA"], sync_dist=False)
        self.log("test/mean_class_accuracy", report["mean_class_accuracy"], sync_dist=False)
        if not self.trainer.is_global_zero:
            return
        out = self.resolve_out_dir()
        write_json(out / "metrics.json", {"task": "classification", "split": "test", **report})
        grid = prediction_grid(self._visuals, self.hparams.class_names, self.hparams.mean, self.hparams.std)
        atomic_write(out / "visualisations" / "predictions.png", lambda tmp: grid.save(tmp, format="PNG"))

    def resolve_out_dir(self) -> Path:
        """``out_dir``, else the trainer's ``log_dir``, else its ``default_root_dir``."""
        if self.out_dir is not None:
            return Path(self.out_dir)
        log_dir = self.trainer.log_dir if self._trainer is not None else None
        return Path(log_dir or self.trainer.default_root_dir)


def _as_fractions(report: dict[str, Any]) -> dict[str, Any]:
    """``classification_report``'s percentages as fractions in [0, 1]."""
    out = dict(report, OA=report["OA"] / 100, mean_class_accuracy=report["mean_class_accuracy"] / 100)
    out["per_class"] = {
        name: dict(v, accuracy=None if v["accuracy"] is None else v["accuracy"] / 100)
        for name, v in report["per_class"].items()
    }
    return out


def prediction_grid(
    items: list[tuple[Tensor, int, int]],
    class_names: list[str],
    mean: list[float] | tuple[float, ...],
    std: list[float] | tuple[float, ...],
    columns: int = 8,
) -> Image.Image:
    """Test images with their true and predicted class, framed green (right) or red (wrong).

    Args:
        items: ``(image, label, pred)``: ``(3, H, W)`` float32 normalised image, true and
            predicted class index.
        class_names: class names by index.
        mean: normalisation mean of the images (inputs in [0, 1]).
        std: normalisation std.
        columns: images per row.

    Returns:
        An RGB PIL image; each cell is the image with a 3-pixel frame and two caption lines
        (``true:`` and ``pred:``).

    Raises:
        ValueError: if ``items`` is empty.
    """
    if not items:
        raise ValueError("prediction_grid needs at least one image")
    side = max(int(items[0][0].shape[-1]), 96)
    caption, frame = 24, 3
    cell_w, cell_h = side + 2 * frame, side + 2 * frame + caption
    rows = (len(items) + columns - 1) // columns
    canvas = Image.new("RGB", (columns * cell_w, rows * cell_h), "white")
    draw = ImageDraw.Draw(canvas)
    m = torch.tensor(mean).view(3, 1, 1)
    s = torch.tensor(std).view(3, 1, 1)
    for k, (image, label, pred) in enumerate(items):
        x0, y0 = (k % columns) * cell_w, (k // columns) * cell_h
        pixels = ((image * s + m).clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
        tile = Image.fromarray(np.ascontiguousarray(pixels)).resize((side, side), Image.Resampling.BILINEAR)
        colour = (40, 160, 40) if label == pred else (210, 30, 30)
        draw.rectangle([x0, y0, x0 + cell_w - 1, y0 + side + 2 * frame - 1], fill=colour)
        canvas.paste(tile, (x0 + frame, y0 + frame))
        draw.text((x0 + 2, y0 + side + 2 * frame), f"true: {class_names[label]}"[:24], fill=(0, 0, 0))
        draw.text((x0 + 2, y0 + side + 2 * frame + 11), f"pred: {class_names[pred]}"[:24], fill=colour)
    return canvas


def build(cfg: dict[str, Any]) -> tuple[ClassificationTask, SceneClassificationDataModule]:
    """Task and datamodule from a classification recipe (plain dict of the YAML).

    Sections: ``backbone`` (see :func:`build_classifier`), ``data`` (``root``,
    ``img_size``, ``batch_size``, ``num_workers``, ``test_fraction``, ``val_fraction``,
    ``split_seed``, ``mean``, ``std``), ``model`` (``label_smoothing``,
    ``num_visualisations``), ``optim`` (``lr`` — the base lr, scaled by batch/256 —,
    ``weight_decay``, ``layer_decay``, ``warmup_epochs``, ``min_lr_ratio``).

    Inputs are normalised with the ``mean``/``std`` recorded in an rsfm export when
    ``backbone.encoder`` is set, else with ``data.mean``/``data.std`` (ImageNet's by default).

    Raises:
        ValueError: if ``task`` is not ``classification``, on an unknown key (named as
            ``section.key``) or a missing ``data.root``.
    """
    if cfg.get("task", "classification") != "classification":
        raise ValueError(f"task must be 'classification', got {cfg.get('task')!r}")
    backbone, data, model, optim = recipe_sections(cfg, "classification", DATA_KEYS, MODEL_KEYS)
    if not data.get("root"):
        raise ValueError("data.root is required (a folder of class folders, e.g. ../shared/datasets/aid)")
    data.setdefault("img_size", int(backbone.get("img_size", 224)))
    encoder_normalisation(backbone, data)
    data.setdefault("mean", list(IMAGENET_MEAN))
    data.setdefault("std", list(IMAGENET_STD))
    datamodule = SceneClassificationDataModule(seed=int(cfg.get("seed", 0)), **data)
    encoder = build_classifier(backbone, datamodule.num_classes)
    trainer_cfg = cfg.get("trainer") or {}
    # effective batch for the lr scaling: per-device batch × devices × nodes × accumulation
    devices = trainer_cfg.get("devices", 1)
    world = (devices if isinstance(devices, int) and devices > 0 else 1) * int(trainer_cfg.get("num_nodes", 1))
    batch = int(data.get("batch_size", 64)) * world * int(trainer_cfg.get("accumulate_grad_batches", 1))
    if "lr" in optim:
        optim["lr"] = float(optim["lr"])
    task = ClassificationTask(
        encoder,
        class_names=datamodule.classes,
        mean=list(data["mean"]),
        std=list(data["std"]),
        batch_size=batch,
        **model,
        **optim,
    )
    return task, datamodule
