"""Change detection: a Siamese head that fuses the two dates' pyramids and decodes a change map.

The design is the common bi-temporal baseline (FC-Siam-diff / FC-Siam-conc, Daudt et al.,
ICIP 2018, on a feature pyramid as in BIT and the MTP change-detection head): both dates go
through the *same* encoder and neck (shared weights, one batched pass), each pyramid level
fuses the two maps by their absolute difference (``diff``, symmetric in the two dates) or by
concatenation and a 1×1 conv (``concat``), and an FPN-style decoder (lateral 1×1 convs,
top-down 2× upsampling and addition, a 3×3 conv; Lin et al., CVPR 2017) turns the finest
level into change logits upsampled to the input size.

Loss: ``"ce"``, pixel cross-entropy (binary cross-entropy for one logit), or ``"ce+dice"``,
that plus ``dice_weight`` × the soft Dice loss of the change class over the whole batch
(Milletari et al., 3DV 2016): change pixels are ~5–25 % of LEVIR-CD, and the Dice term
counters that imbalance. Evaluation predicts whole pairs by sliding windows of the training
crop. Metrics (percent): precision, recall, ``F1``, ``IoU`` of the change class and ``OA``.

.. versionadded:: 0.2
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rsfm.models.heads.base import Features, Head, HeadMetrics
from rsfm.models.heads.segmentation import to_uint8_rgb
from rsfm.models.inference import slide_inference
from rsfm.utils.errors import ConfigError
from rsfm.utils.registry import HEADS

if TYPE_CHECKING:
    from PIL import Image

    from rsfm.data.base import DataInfo
    from rsfm.models.task_model import TaskModel

__all__ = ["ChangeHead", "ChangeMetricSet", "change_panel", "soft_dice_loss"]

FUSIONS = ("diff", "concat")
LOSSES = ("ce", "ce+dice")


def _conv_bn_relu(c_in: int, c_out: int, k: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, k, padding=k // 2, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(True))


def soft_dice_loss(prob: Tensor, target: Tensor, eps: float = 1.0) -> Tensor:
    """Soft Dice loss of the change class over a whole batch.

    Args:
        prob: ``(B, H, W)`` float32 change probabilities.
        target: ``(B, H, W)`` int64 in {0, 1}.
        eps: smoothing added to numerator and denominator (pixels).

    Returns:
        Scalar ``1 - (2 Σ p·y + eps) / (Σ p + Σ y + eps)``.
    """
    t = target.to(prob.dtype)
    return 1 - (2 * (prob * t).sum() + eps) / (prob.sum() + t.sum() + eps)


def change_panel(image_a: np.ndarray, image_b: np.ndarray, mask: Tensor, pred: Tensor, gap: int = 4) -> np.ndarray:
    """Side-by-side picture: before | after | ground truth | prediction.

    The ground truth is white on black. The prediction is coloured against it: white =
    change found (TP), red = false alarm (FP), green = missed change (FN), black = no change.

    Args:
        image_a: ``(H, W, 3)`` uint8, before.
        image_b: ``(H, W, 3)`` uint8, after.
        mask: ``(H, W)`` int64 in {0, 1}, true change.
        pred: ``(H, W)`` int64 in {0, 1}, predicted change.
        gap: white gap between panels in pixels.

    Returns:
        ``(H, 4 W + 3 gap, 3)`` uint8 RGB.
    """
    h, w = mask.shape
    m, p = mask.bool().cpu().numpy(), pred.bool().cpu().numpy()
    gt = np.zeros((h, w, 3), np.uint8)
    gt[m] = 255
    pr = np.zeros((h, w, 3), np.uint8)
    pr[m & p] = (255, 255, 255)
    pr[~m & p] = (230, 40, 40)
    pr[m & ~p] = (40, 200, 40)
    sep = np.full((h, gap, 3), 255, np.uint8)
    return np.concatenate([image_a, sep, image_b, sep, gt, sep, pr], axis=1)


class ChangeMetricSet(HeadMetrics):
    """Pixel confusion matrix of the change class over a split; scores in percent."""

    names = ("precision", "recall", "F1", "IoU", "OA")

    def __init__(self) -> None:
        super().__init__()
        from rsfm.metrics.change_detection import ChangeDetectionMetrics

        self.confmat = ChangeDetectionMetrics()
        self.per_image: list[dict[str, Any]] = []

    def update(self, preds: Tensor, batch: Mapping[str, Any]) -> None:
        """Add ``(B, H, W)`` predicted change against ``batch["mask"]``; keep per-pair scores."""
        from rsfm.metrics.change_detection import change_scores

        self.confmat.update(preds, batch["mask"])
        ids = batch.get("id") or [str(i) for i in range(preds.shape[0])]
        for i, name in enumerate(ids):
            cm = torch.bincount((2 * batch["mask"][i] + preds[i]).flatten(), minlength=4).view(2, 2)
            self.per_image.append({"id": name, **{k: 100.0 * v for k, v in change_scores(cm.cpu()).items()}})

    def compute(self) -> dict[str, float]:
        """precision, recall, F1, IoU of the change class and OA, percent."""
        return {k: 100.0 * v for k, v in self.confmat.scores().items()}

    def report(self) -> dict[str, Any]:
        """Scores, counts, per-class scores and per-pair scores (every rank's pairs under DDP).

        Under DDP every rank must call it (the per-pair scores are gathered).
        """
        import torch.distributed as dist

        from rsfm.metrics.change_detection import change_scores
        from rsfm.metrics.voc import distributed_gather

        per_image = self.per_image
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            per_image = [p for part in distributed_gather(self.per_image) for p in part]

        report = self.confmat.report()
        cm = torch.tensor(report["confusion"])
        pct = lambda d: {k: 100.0 * v for k, v in d.items() if k != "OA"}  # noqa: E731
        return {
            "metrics": {k: report[k] for k in ("precision", "recall", "F1", "IoU", "OA")},
            "per_class": {"no_change": pct(change_scores(cm.flip(0, 1))), "change": pct(change_scores(cm))},
            "counts": {k: report[k] for k in ("TP", "FP", "FN", "TN")},
            "pairs": len(per_image),
            "per_image": per_image,
        }

    def reset(self) -> None:
        """Forget the accumulated pairs."""
        self.confmat.reset()
        self.per_image = []


@HEADS.register
class ChangeHead(Head):
    """Siamese change head on the neck's pyramids of the two dates.

    Args:
        fusion: ``"diff"`` (``|f_a - f_b|``) or ``"concat"`` (``[f_a, f_b]``, 1×1 conv, BN, ReLU).
        channels: decoder width.
        num_logits: 2 (no change / change, softmax) or 1 (one sigmoid logit).
        loss: ``"ce"`` or ``"ce+dice"`` (see the module docstring).
        dice_weight: weight of the Dice term with ``"ce+dice"``.
        threshold: change probability above which a pixel is predicted as change.
        stride: step of the evaluation windows, pixels; default 2/3 of the window (the
            training crop); whole pairs without a crop size.
        batch_windows: windows per forward pass at evaluation.
        loss_weight: weight of this head's loss.
        evaluate: score this head.

    Raises:
        ConfigError: on an unknown fusion or loss, or ``num_logits`` not 1 or 2.
    """

    image_keys = ("image_a", "image_b")
    target_keys = ("mask",)
    monitor = "F1"
    output_kind = "change"

    def __init__(
        self,
        fusion: str = "diff",
        channels: int = 128,
        num_logits: int = 2,
        loss: str = "ce+dice",
        dice_weight: float = 1.0,
        threshold: float = 0.5,
        stride: int | None = None,
        batch_windows: int = 8,
        loss_weight: float = 1.0,
        evaluate: bool = True,
    ) -> None:
        super().__init__(loss_weight, evaluate)
        if fusion not in FUSIONS:
            raise ConfigError(f"model.heads: fusion must be one of {FUSIONS}, got {fusion!r}")
        if loss not in LOSSES:
            raise ConfigError(f"model.heads: loss must be one of {LOSSES}, got {loss!r}")
        if num_logits not in (1, 2):
            raise ConfigError(f"model.heads: num_logits must be 1 or 2, got {num_logits}")
        self.fusion, self.channels, self.num_logits = fusion, int(channels), int(num_logits)
        self.loss_name, self.dice_weight, self.threshold = loss, float(dice_weight), float(threshold)
        self.stride, self.batch_windows = stride, int(batch_windows)

    def build(self, in_channels: list[int], strides: list[int], info: DataInfo) -> None:
        """Fusion convs (``concat``), lateral convs, a smoothing conv and the classifier."""
        super().build(in_channels, strides, info)
        if self.fusion == "concat":
            self.fuse = nn.ModuleList(_conv_bn_relu(2 * c, c, 1) for c in in_channels)
        self.lateral = nn.ModuleList(nn.Conv2d(c, self.channels, 1) for c in in_channels)
        self.smooth = _conv_bn_relu(self.channels, self.channels, 3)
        self.classifier = nn.Conv2d(self.channels, self.num_logits, 1)
        self.window = info.crop_size
        self.pad_multiple = int(max(strides))

    def fuse_level(self, level: int, fa: Tensor, fb: Tensor) -> Tensor:
        """Fuse the two dates' ``(B, C, h, w)`` maps of one pyramid level."""
        if self.fusion == "diff":
            return (fa - fb).abs()
        return self.fuse[level](torch.cat([fa, fb], dim=1))

    def forward(self, features: Features, batch: Mapping[str, Any] | None = None) -> Tensor:
        """``(B, num_logits, H, W)`` float change logits at the input resolution."""
        fused = [
            self.fuse_level(i, a, b)
            for i, (a, b) in enumerate(zip(features.maps["image_a"], features.maps["image_b"], strict=True))
        ]
        x = self.lateral[-1](fused[-1])
        for i in range(len(fused) - 2, -1, -1):
            lat = self.lateral[i](fused[i])
            x = lat + F.interpolate(x, size=lat.shape[-2:], mode="bilinear", align_corners=False)
        logits = self.classifier(self.smooth(x))
        return features.crop(F.interpolate(logits, size=features.shape, mode="bilinear", align_corners=False))

    def change_probability(self, logits: Tensor) -> Tensor:
        """``(B, num_logits, H, W)`` logits → ``(B, H, W)`` float32 probability of change."""
        if logits.shape[1] == 1:
            return logits[:, 0].float().sigmoid()
        return logits.float().softmax(1)[:, 1]

    def loss(self, features: Features, batch: Mapping[str, Any]) -> dict[str, Tensor]:
        """Cross-entropy (BCE for one logit), plus the weighted Dice term with ``"ce+dice"``."""
        logits, mask = self(features, batch).float(), batch["mask"]
        if logits.shape[1] == 1:
            terms = {"ce": F.binary_cross_entropy_with_logits(logits[:, 0], mask.float())}
        else:
            terms = {"ce": F.cross_entropy(logits, mask)}
        if self.loss_name == "ce+dice":
            terms["dice"] = self.dice_weight * soft_dice_loss(self.change_probability(logits), mask)
        return terms

    @torch.no_grad()
    def predict_probability(self, model: TaskModel, image_a: Tensor, image_b: Tensor) -> Tensor:
        """``(B, H, W)`` change probability of whole pairs in [0, 1], by sliding windows of the crop size.

        Where windows overlap their probabilities are averaged.
        """
        c = image_a.shape[1]

        def run(windows: Tensor) -> Tensor:
            pair = {"image_a": windows[:, :c], "image_b": windows[:, c:]}
            return self.change_probability(self(model.features(pair, self), None)).unsqueeze(1)

        both = torch.cat([image_a, image_b], dim=1)
        if self.window is None:  # whole pairs, replicate-padded to the coarsest stride
            h, w = both.shape[-2:]
            m = self.pad_multiple
            padded = F.pad(both, (0, (-w) % m, 0, (-h) % m), mode="replicate")
            return run(padded)[:, 0, :h, :w]
        step = int(self.stride or max(1, self.window * 2 // 3))
        mean = model.mean.flatten().repeat(2)  # both images of the pair
        return slide_inference(run, both, 1, self.window, step, self.batch_windows, mean)[:, 0]

    def predict(self, model: TaskModel, batch: Mapping[str, Any]) -> Tensor:
        """``(B, H, W)`` int64 predicted change of whole pairs."""
        return (self.predict_probability(model, batch["image_a"], batch["image_b"]) > self.threshold).long()

    def make_metrics(self) -> ChangeMetricSet:
        """Change-class confusion matrix."""
        return ChangeMetricSet()

    def render(self, batch: Mapping[str, Any], index: int, preds: Tensor) -> Image.Image:
        """Before | after | ground truth | prediction (TP white, FP red, FN green)."""
        from PIL import Image as PILImage

        panel = change_panel(
            to_uint8_rgb(batch["image_a"][index]),
            to_uint8_rgb(batch["image_b"][index]),
            batch["mask"][index],
            preds[index],
        )
        return PILImage.fromarray(panel)
