"""Semantic-segmentation heads: UperNet (the MAE/RVSA/MTP recipe) and an auxiliary FCN head.

Both predict per-pixel class logits from the neck's pyramid, upsampled (bilinear) to the
input, and train with cross-entropy that skips the ignore index (255). As in
MMSegmentation's UperNet recipes, an :class:`FCNHead` on the stride-``p`` level with loss
weight 0.4 can be trained beside the main head (``evaluate: false``: it is not scored).

Whole evaluation images are predicted by sliding windows of the training crop
(:func:`~rsfm.models.inference.slide_inference`, logits averaged where windows overlap), so
the model always sees inputs of the training size. Metrics (percent): ``mIoU``, ``OA``,
``mF1`` from one confusion matrix over the split, averaged over the dataset's scored classes
(all, or e.g. the five ISPRS classes without clutter).

.. versionadded:: 0.2
"""

from __future__ import annotations

import abc
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch.nn.functional as F
from torch import Tensor, nn

from rsfm.data.segmentation.common import IGNORE_INDEX, colourise
from rsfm.models.heads.base import Features, Head, HeadMetrics
from rsfm.models.heads.upernet import UperNet
from rsfm.models.inference import slide_inference
from rsfm.utils.errors import ConfigError
from rsfm.utils.registry import HEADS

if TYPE_CHECKING:
    from PIL import Image

    from rsfm.data.base import DataInfo
    from rsfm.models.task_model import TaskModel

__all__ = ["FCNHead", "SegmentationHead", "SegmentationMetricSet", "UperNetHead", "render_comparison", "to_uint8_rgb"]


def to_uint8_rgb(image: Tensor) -> np.ndarray:
    """``(C, H, W)`` float in [0, 1] → ``(H, W, 3)`` uint8 (first three bands; one band as grey)."""
    x = image.detach().float().cpu()
    x = x[:3] if x.shape[0] >= 3 else x[:1].expand(3, -1, -1)
    return (x.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()


def render_comparison(
    image: np.ndarray,
    target: np.ndarray,
    pred: np.ndarray,
    palette: Sequence[Sequence[int]],
    class_names: Sequence[str],
    max_side: int = 768,
) -> Image.Image:
    """Side-by-side panel: image | ground truth | prediction, with a colour legend below.

    Args:
        image: ``(H, W, 3)`` uint8.
        target: ``(H, W)`` int labels (ignore pixels drawn black).
        pred: ``(H, W)`` int labels.
        palette: ``(R, G, B)`` per class.
        class_names: class names for the legend.
        max_side: longest panel side in pixels; larger images are downscaled (labels by
            nearest neighbour).

    Returns:
        An RGB PIL image.

    """
    from PIL import Image, ImageDraw

    h, w = target.shape
    scale = min(1.0, max_side / max(h, w))
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    panels = [
        Image.fromarray(image).resize(size, Image.Resampling.BILINEAR),
        Image.fromarray(colourise(target, palette)).resize(size, Image.Resampling.NEAREST),
        Image.fromarray(colourise(pred, palette)).resize(size, Image.Resampling.NEAREST),
    ]
    gap, row = 6, 18
    rows = math.ceil(len(class_names) / 4)
    canvas = Image.new("RGB", (3 * size[0] + 2 * gap, size[1] + row * (rows + 1)), "white")
    for i, panel in enumerate(panels):
        canvas.paste(panel, (i * (size[0] + gap), 0))
    draw = ImageDraw.Draw(canvas)
    top = size[1] + 3
    draw.text((2, top), "image | ground truth | prediction (black: ignore)", fill="black")
    col_w = canvas.width // 4
    for k, name in enumerate(class_names):
        x, y = (k % 4) * col_w + 2, top + row * (1 + k // 4)
        draw.rectangle((x, y + 2, x + 12, y + 12), fill=tuple(int(c) for c in palette[k]), outline="black")
        draw.text((x + 16, y), str(name), fill="black")
    return canvas


class SegmentationMetricSet(HeadMetrics):
    """Confusion matrix of a split; ``mIoU``, ``OA``, ``mF1`` (percent) over the scored classes.

    Args:
        classes: class names.
        ignore_index: target label skipped.
        score_classes: labels averaged over (None: all).
    """

    names = ("mIoU", "OA", "mF1")

    def __init__(
        self, classes: Sequence[str], ignore_index: int = IGNORE_INDEX, score_classes: list[int] | None = None
    ):
        super().__init__()
        from rsfm.metrics.segmentation import SegmentationMetrics

        self.classes = list(classes)
        self.score_classes = score_classes
        self.confmat = SegmentationMetrics(len(self.classes), ignore_index)

    def update(self, preds: Tensor, batch: Mapping[str, Any]) -> None:
        """Add ``(B, H, W)`` predicted labels against ``batch["mask"]``."""
        self.confmat.update(preds, batch["mask"])

    def compute(self) -> dict[str, float]:
        """``mIoU``, ``OA``, ``mF1`` in percent (NaN when undefined)."""
        from rsfm.metrics.segmentation import segmentation_scores

        s = segmentation_scores(self.confmat.compute_matrix(), self.score_classes)
        return {k: 100.0 * float(s[k]) for k in self.names}

    def report(self) -> dict[str, Any]:
        """Scores, per-class IoU/F1/precision/recall and the confusion matrix (percent)."""
        from rsfm.metrics.segmentation import segmentation_report

        return segmentation_report(self.confmat.compute_matrix(), self.classes, self.score_classes)


class SegmentationHead(Head):
    """Base of the segmentation heads: loss, sliding-window prediction, metrics, pictures.

    Args:
        stride: step of the evaluation windows, pixels; default 2/3 of the window (the
            training crop, ``data.crop_size``).
        batch_windows: windows per forward pass at evaluation.
        loss_weight: weight of this head's loss.
        evaluate: score this head (off for an auxiliary head).
    """

    target_keys = ("mask",)
    monitor = "mIoU"
    output_kind = "mask"

    def __init__(
        self, stride: int | None = None, batch_windows: int = 8, loss_weight: float = 1.0, evaluate: bool = True
    ) -> None:
        super().__init__(loss_weight, evaluate)
        self.stride = stride
        self.batch_windows = int(batch_windows)

    def build(self, in_channels: list[int], strides: list[int], info: DataInfo) -> None:
        """Record the classes, ignore index and window; subclasses add their layers."""
        super().build(in_channels, strides, info)
        self.ignore_index = int(info.ignore_index if info.ignore_index is not None else IGNORE_INDEX)
        self.window = int(info.crop_size or 512)
        step = int(self.stride or max(1, self.window * 2 // 3))
        if not 0 < step <= self.window:
            raise ConfigError(f"model.heads: stride must be in (0, {self.window}] (the crop size), got {step}")
        self.step = step

    @abc.abstractmethod
    def logits(self, features: Features, key: str = "image") -> Tensor:
        """``(B, K, h, w)`` logits at the head's own resolution (subclasses)."""

    def forward(self, features: Features, batch: Mapping[str, Any] | None = None) -> Tensor:
        """``(B, K, H, W)`` float logits at the input resolution (bilinear upsampling)."""
        logits = F.interpolate(self.logits(features), size=features.shape, mode="bilinear", align_corners=False)
        return features.crop(logits)

    def loss(self, features: Features, batch: Mapping[str, Any]) -> dict[str, Tensor]:
        """Cross-entropy over labelled pixels (0 with a gradient when every pixel is ignored)."""
        logits, mask = self(features, batch), batch["mask"]
        # the mean over labelled pixels, without a host sync to test for an all-ignored batch
        total = F.cross_entropy(logits.float(), mask, ignore_index=self.ignore_index, reduction="sum")
        return {"ce": total / (mask != self.ignore_index).sum().clamp(min=1)}

    def predict(self, model: TaskModel, batch: Mapping[str, Any]) -> Tensor:
        """``(B, H, W)`` int64 labels of whole images by sliding windows of the crop size."""
        return self.predict_logits(model, batch["image"]).argmax(1)

    def predict_logits(self, model: TaskModel, images: Tensor) -> Tensor:
        """``(B, K, H, W)`` float32 sliding-window logits of ``(B, C, H, W)`` images in [0, 1]."""

        def run(windows: Tensor) -> Tensor:
            return self(model.features({"image": windows}, self), None)

        mean = model.mean.flatten()  # padding of small images: the mean colour, 0 once normalised
        return slide_inference(run, images, self.num_classes, self.window, self.step, self.batch_windows, mean)

    def make_metrics(self) -> SegmentationMetricSet:
        """Confusion-matrix metrics over the dataset's scored classes."""
        assert self.info is not None
        return SegmentationMetricSet(self.classes, self.ignore_index, self.info.score_classes)

    def render(self, batch: Mapping[str, Any], index: int, preds: Tensor) -> Image.Image:
        """Image | ground truth | prediction, with a colour legend."""
        assert self.info is not None
        palette = self.info.palette or [
            tuple(int(v) for v in c) for c in np.random.default_rng(0).integers(40, 256, (self.num_classes, 3))
        ]
        return render_comparison(
            to_uint8_rgb(batch["image"][index]),
            batch["mask"][index].cpu().numpy(),
            preds[index].cpu().numpy(),
            palette,
            self.classes,
        )


@HEADS.register
class UperNetHead(SegmentationHead):
    """UperNet (Xiao et al., ECCV 2018) on the neck's pyramid: the MAE/RVSA/MTP segmentation head.

    Args:
        channels: width of the lateral, FPN and fusion convolutions (512 in MMSegmentation's
            ViT recipes, 256 in smaller ones).
        pool_scales: adaptive-pool sides of the pyramid pooling module.
        dropout: channel dropout before the classifier.
        **kwargs: :class:`SegmentationHead` options (``stride``, ``batch_windows``,
            ``loss_weight``, ``evaluate``).
    """

    predictors = ("decoder.classifier",)

    def __init__(
        self,
        channels: int = 256,
        pool_scales: list[int] = [1, 2, 3, 6],  # noqa: B006 (never mutated)
        dropout: float = 0.1,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.channels, self.pool_scales, self.dropout = int(channels), [int(s) for s in pool_scales], float(dropout)

    def build(self, in_channels: list[int], strides: list[int], info: DataInfo) -> None:
        """Create the decoder for the given pyramid and classes."""
        super().build(in_channels, strides, info)
        self.decoder = UperNet(in_channels, self.num_classes, self.channels, self.pool_scales, self.dropout)

    def logits(self, features: Features, key: str = "image") -> Tensor:
        """Logits at the finest level's stride."""
        return self.decoder(features.maps[key])


@HEADS.register
class FCNHead(SegmentationHead):
    """FCN head (Long et al., CVPR 2015) on one pyramid level: MMSegmentation's auxiliary head.

    ``num_convs`` 3×3 conv–BN–ReLU layers, dropout and a 1×1 classifier on the map of
    ``in_index``. As UperNet's auxiliary head it is trained with ``loss_weight: 0.4`` and
    ``evaluate: false`` on the stride-``p`` level (``in_index: 2`` of the simple pyramid).

    Args:
        in_index: pyramid level it reads (0 = finest).
        channels: width of the convolutions.
        num_convs: number of conv–BN–ReLU layers.
        dropout: channel dropout before the classifier.
        loss_weight: weight of its loss (0.4 as an auxiliary head).
        evaluate: score it (false as an auxiliary head).
        **kwargs: :class:`SegmentationHead` options (``stride``, ``batch_windows``).
    """

    def __init__(
        self,
        in_index: int = 2,
        channels: int = 256,
        num_convs: int = 1,
        dropout: float = 0.1,
        loss_weight: float = 0.4,
        evaluate: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(loss_weight=loss_weight, evaluate=evaluate, **kwargs)
        self.in_index, self.channels, self.num_convs, self.dropout = (
            int(in_index),
            int(channels),
            int(num_convs),
            float(dropout),
        )

    def build(self, in_channels: list[int], strides: list[int], info: DataInfo) -> None:
        """Create the convolutions for the chosen level."""
        super().build(in_channels, strides, info)
        if not -len(in_channels) <= self.in_index < len(in_channels):
            raise ConfigError(f"model.heads: FCNHead in_index {self.in_index} outside the {len(in_channels)} levels")
        layers: list[nn.Module] = []
        c = in_channels[self.in_index]
        for _ in range(self.num_convs):
            layers += [
                nn.Conv2d(c, self.channels, 3, padding=1, bias=False),
                nn.BatchNorm2d(self.channels),
                nn.ReLU(True),
            ]
            c = self.channels
        self.convs = nn.Sequential(*layers)
        self.drop = nn.Dropout2d(self.dropout) if self.dropout > 0 else nn.Identity()
        self.classifier = nn.Conv2d(c, self.num_classes, 1)

    def logits(self, features: Features, key: str = "image") -> Tensor:
        """Logits at the stride of the chosen level."""
        return self.classifier(self.drop(self.convs(features.maps[key][self.in_index])))
