"""Scene classification: a linear classifier on the encoder's pooled features.

MAE's fine-tuning protocol (He et al. 2022, §A.3): the classifier is initialised with a
truncated normal of std 2e-5, trained with label-smoothed cross-entropy while the encoder
fine-tunes with layer-wise lr decay (the task's optimiser). With ``init: linear_probe`` the
classifier starts instead from a linear probe fitted on the frozen encoder's features of the
training split, before any encoder weight moves: LP-FT (Kumar et al., "Fine-Tuning can
Distort Pretrained Features and Underperform Out-of-Distribution", ICLR 2022). The task
fits it (:meth:`rsfm.tasks.module.DownstreamTask.on_fit_start`). Metrics (percent): ``OA``
(overall accuracy) and ``mean_class_accuracy`` (AA), per-class accuracy and the confusion
matrix in the report.

.. versionadded:: 0.2
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rsfm.models.heads.base import Features, Head, HeadMetrics
from rsfm.models.heads.segmentation import to_uint8_rgb
from rsfm.utils.errors import ConfigError
from rsfm.utils.registry import HEADS

if TYPE_CHECKING:
    from PIL import Image

    from rsfm.data.base import DataInfo

__all__ = ["ClassificationHead", "ClassificationMetricSet", "prediction_grid"]


class ClassificationMetricSet(HeadMetrics):
    """Confusion matrix of a split; ``OA`` and ``mean_class_accuracy`` in percent."""

    names = ("OA", "mean_class_accuracy")

    def __init__(self, classes: list[str]) -> None:
        super().__init__()
        from torchmetrics.classification import MulticlassConfusionMatrix

        self.classes = list(classes)
        self.confmat = MulticlassConfusionMatrix(len(classes), validate_args=False)

    def update(self, preds: Tensor, batch: Mapping[str, Any]) -> None:
        """Add ``(B,)`` predicted classes against ``batch["label"]``."""
        if preds.numel():
            self.confmat.update(preds, batch["label"])

    def _scores(self) -> tuple[Tensor, Tensor, Tensor]:
        cm = self.confmat.compute().double().cpu()
        support = cm.sum(1)
        per_class = torch.where(
            support > 0, cm.diagonal() / support.clamp(min=1), torch.full_like(support, float("nan"))
        )
        return cm, support, per_class

    def compute(self) -> dict[str, float]:
        """``OA`` and ``mean_class_accuracy`` (over classes with samples), percent."""
        cm, _, per_class = self._scores()
        total = float(cm.sum())
        oa = 100.0 * float(cm.diagonal().sum()) / total if total else float("nan")
        return {"OA": oa, "mean_class_accuracy": 100.0 * float(per_class.nanmean())}

    def report(self) -> dict[str, Any]:
        """Scores, per-class accuracy and support, and the confusion matrix (rows = true class)."""
        cm, support, per_class = self._scores()
        out: dict[str, Any] = dict(self.compute())
        out["n"] = int(cm.sum())
        out["per_class"] = {
            name: {
                "accuracy": None if bool(torch.isnan(per_class[i])) else 100.0 * float(per_class[i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(self.classes)
        }
        out["confusion"] = cm.long().tolist()
        return out


@HEADS.register
class ClassificationHead(Head):
    """Linear classifier on pooled encoder features (class token or mean of patch tokens).

    Args:
        label_smoothing: label smoothing of the cross-entropy (0.1 in MAE's fine-tuning).
        dropout: dropout on the pooled features before the classifier.
        loss_weight: weight of this head's loss.
        evaluate: score this head.
        init: ``trunc_normal`` (MAE's: std 2e-5, zero bias) or ``linear_probe`` (LP-FT: the
            weights of a linear probe on the frozen encoder's pooled features of the
            unaugmented training split; :func:`rsfm.tasks.probes.linear_probe`, its
            ``BatchNorm1d`` folded into the ``Linear``). The probe is fitted once, when a run
            starts from step 0; a resumed run keeps its checkpoint's weights.
        probe_epochs: passes of the probe over the cached features (``init: linear_probe``).
        probe_lr: the probe's SGD learning rate, or a list searched on a held-back fifth of
            the training features; None: :data:`rsfm.tasks.probes.linear.DEFAULT_LR_GRID`.

    Raises:
        ConfigError: on an unknown ``init``, ``probe_epochs < 1`` or a non-positive ``probe_lr``.

    .. versionchanged:: 0.3.3
       ``init``, ``probe_epochs`` and ``probe_lr`` (LP-FT).
    """

    input = "pooled"
    target_keys = ("label",)
    monitor = "OA"
    output_kind = "label"
    #: the accepted values of ``init``
    inits: ClassVar[tuple[str, ...]] = ("trunc_normal", "linear_probe")

    def __init__(
        self,
        label_smoothing: float = 0.1,
        dropout: float = 0.0,
        loss_weight: float = 1.0,
        evaluate: bool = True,
        init: str = "trunc_normal",
        probe_epochs: int = 100,
        probe_lr: float | list[float] | None = None,
    ) -> None:
        super().__init__(loss_weight, evaluate)
        self.label_smoothing, self.dropout = float(label_smoothing), float(dropout)
        if init not in self.inits:
            raise ConfigError(f"ClassificationHead.init: expected one of {list(self.inits)}, got {init!r}")
        if int(probe_epochs) < 1:
            raise ConfigError(f"ClassificationHead.probe_epochs: expected at least 1, got {probe_epochs}")
        single = isinstance(probe_lr, int | float)
        rates = [] if probe_lr is None else [float(probe_lr)] if single else [float(v) for v in probe_lr]
        if probe_lr is not None and (not rates or min(rates) <= 0):
            raise ConfigError(f"ClassificationHead.probe_lr: expected positive rates, got {probe_lr!r}")
        self.init, self.probe_epochs = init, int(probe_epochs)
        self.probe_lr: float | list[float] | None = None if probe_lr is None else rates[0] if single else rates
        self._shown: dict[int, int] = {}

    def build(self, in_channels: list[int], strides: list[int], info: DataInfo) -> None:
        """A ``Linear(D, K)`` with MAE's initialisation."""
        super().build(in_channels, strides, info)
        self.drop = nn.Dropout(self.dropout) if self.dropout > 0 else nn.Identity()
        self.fc = nn.Linear(in_channels[0], self.num_classes)
        nn.init.trunc_normal_(self.fc.weight, std=2e-5)
        nn.init.zeros_(self.fc.bias)

    @torch.no_grad()
    def load_probe(self, probe: nn.Module) -> None:
        """Take a linear probe's weights: ``BatchNorm1d`` then ``Linear``, folded into :attr:`fc`.

        With the norm's running mean μ, variance σ² and ε, the classifier becomes
        ``W' = W / sqrt(σ² + ε)`` and ``b' = b - W' μ`` (with an affine norm's γ, β:
        ``W' = W γ / sqrt(σ² + ε)``, ``b' = b + W β - W' μ``): its logits equal the probe's
        (in eval mode) on the same features, up to float32 rounding (the fold runs in float64).

        Args:
            probe: ``nn.Sequential(BatchNorm1d(D), Linear(D, K))``, e.g. the
                ``affine=False`` head of :class:`rsfm.tasks.probes.linear.LinearProbeResult`.

        Raises:
            ValueError: if the probe has another form or its ``D``, ``K`` differ from :attr:`fc`'s.
        """
        parts = list(probe.children())
        if len(parts) != 2 or not isinstance(parts[0], nn.BatchNorm1d) or not isinstance(parts[1], nn.Linear):
            raise ValueError(f"load_probe expects nn.Sequential(BatchNorm1d, Linear), got {probe}")
        norm, linear = parts
        if linear.weight.shape != self.fc.weight.shape:
            raise ValueError(
                f"the probe maps {linear.in_features} features to {linear.out_features} classes; "
                f"this head maps {self.fc.in_features} to {self.fc.out_features}"
            )
        assert norm.running_mean is not None and norm.running_var is not None
        w, b = linear.weight.double(), linear.bias.double()
        scale = (norm.running_var.double() + norm.eps).rsqrt()
        if norm.affine:  # y = γ (x - μ) / s + β: W' = W γ / s, b' = b + W β - W' μ
            scale = scale * norm.weight.double()
            b = b + w @ norm.bias.double()
        weight = w * scale[None, :]
        bias = b - weight @ norm.running_mean.double()
        self.fc.weight.copy_(weight.to(self.fc.weight))
        self.fc.bias.copy_(bias.to(self.fc.bias))

    def forward(self, features: Features, batch: Mapping[str, Any] | None = None) -> Tensor:
        """``(B, K)`` logits."""
        return self.fc(self.drop(features.pooled["image"]))

    def loss(self, features: Features, batch: Mapping[str, Any]) -> dict[str, Tensor]:
        """Label-smoothed cross-entropy."""
        return {"ce": F.cross_entropy(self(features, batch), batch["label"], label_smoothing=self.label_smoothing)}

    def predict(self, model: Any, batch: Mapping[str, Any]) -> Tensor:
        """``(B,)`` int64 predicted classes."""
        if batch["image"].shape[0] == 0:
            return torch.zeros(0, dtype=torch.int64, device=batch["image"].device)
        return self(model.features(batch, self), batch).argmax(1)

    def make_metrics(self) -> ClassificationMetricSet:
        """OA and mean class accuracy."""
        return ClassificationMetricSet(self.classes)

    def want_visual(self, batch: Mapping[str, Any], index: int, preds: Any) -> bool:
        """An even share of the pictures per class (test splits are sorted by class)."""
        label = int(batch["label"][index])
        if self._shown.get(label, 0) >= 1 + 32 // max(1, self.num_classes):
            return False
        self._shown[label] = self._shown.get(label, 0) + 1
        return True

    def render(self, batch: Mapping[str, Any], index: int, preds: Tensor) -> Image.Image:
        """The image framed green (right) or red (wrong) with its true and predicted class."""
        return prediction_grid(
            [(to_uint8_rgb(batch["image"][index]), int(batch["label"][index]), int(preds[index]))], self.classes, 1
        )

    def save_visuals(self, panels: list[tuple[str, Image.Image]], folder: Any) -> list[Any]:
        """All panels in one grid, ``predictions.png``."""
        from pathlib import Path

        from PIL import Image as PILImage

        from rsfm.utils.files import atomic_write

        self._shown = {}
        if not panels:
            return []
        columns = 8
        w, h = panels[0][1].size
        rows = -(-len(panels) // columns)
        grid = PILImage.new("RGB", (columns * w, rows * h), "white")
        for k, (_, p) in enumerate(panels):
            grid.paste(p, ((k % columns) * w, (k // columns) * h))
        return [atomic_write(Path(folder) / "predictions.png", lambda tmp: grid.save(tmp, format="PNG"))]


def prediction_grid(items: list[tuple[np.ndarray, int, int]], class_names: list[str], columns: int = 8) -> Image.Image:
    """Images with their true and predicted class, framed green (right) or red (wrong).

    Args:
        items: ``(image, label, pred)``: ``(H, W, 3)`` uint8 image, true and predicted index.
        class_names: class names by index.
        columns: images per row.

    Returns:
        An RGB PIL image; each cell is the image (at least 96 px) with a 3-pixel frame and two
        caption lines (``true:`` and ``pred:``).

    Raises:
        ValueError: if ``items`` is empty.
    """
    from PIL import Image, ImageDraw

    if not items:
        raise ValueError("prediction_grid needs at least one image")
    side = max(int(items[0][0].shape[1]), 96)
    caption, frame = 24, 3
    cell_w, cell_h = side + 2 * frame, side + 2 * frame + caption
    rows = (len(items) + columns - 1) // columns
    canvas = Image.new("RGB", (columns * cell_w, rows * cell_h), "white")
    draw = ImageDraw.Draw(canvas)
    for k, (pixels, label, pred) in enumerate(items):
        x0, y0 = (k % columns) * cell_w, (k // columns) * cell_h
        tile = Image.fromarray(np.ascontiguousarray(pixels)).resize((side, side), Image.Resampling.BILINEAR)
        colour = (40, 160, 40) if label == pred else (210, 30, 30)
        draw.rectangle([x0, y0, x0 + cell_w - 1, y0 + side + 2 * frame - 1], fill=colour)
        canvas.paste(tile, (x0 + frame, y0 + frame))
        draw.text((x0 + 2, y0 + side + 2 * frame), f"true: {class_names[label]}"[:24], fill=(0, 0, 0))
        draw.text((x0 + 2, y0 + side + 2 * frame + 11), f"pred: {class_names[pred]}"[:24], fill=colour)
    return canvas
