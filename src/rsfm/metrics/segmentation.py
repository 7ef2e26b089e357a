"""Semantic-segmentation metrics from a pixel confusion matrix: IoU, mIoU, OA, F1, mF1.

Segmentation benchmarks (MMSegmentation's ``IoUMetric``; LoveDA, ISPRS, the MTP and RVSA
papers) score a whole split from one ``K × K`` confusion matrix summed over all its pixels,
not averaged per image. With ``TP_k`` the diagonal, ``FP_k`` the column sum minus ``TP_k``
(pixels predicted ``k`` that are not) and ``FN_k`` the row sum minus ``TP_k``:

* ``IoU_k = TP_k / (TP_k + FP_k + FN_k)``, ``mIoU`` its mean over classes,
* ``precision_k = TP_k / (TP_k + FP_k)``, ``recall_k = TP_k / (TP_k + FN_k)``,
* ``F1_k = 2 TP_k / (2 TP_k + FP_k + FN_k)``, ``mF1`` its mean over classes,
* ``OA = Σ TP_k / Σ all`` (overall pixel accuracy).

A class with a zero denominator (absent from both the ground truth and the prediction) has
NaN scores and is left out of the means, as in MMSegmentation. Pixels whose label is the
ignore index never enter the matrix. All scores are fractions in [0, 1].
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torchmetrics.classification import MulticlassConfusionMatrix

__all__ = ["SegmentationMetrics", "segmentation_report", "segmentation_scores"]


def _ratio(num: Tensor, den: Tensor) -> Tensor:
    """``num / den`` with NaN where ``den`` is 0."""
    return torch.where(den > 0, num / den.clamp(min=1), torch.full_like(num, math.nan))


def segmentation_scores(confmat: Tensor) -> dict[str, Tensor]:
    """Per-class and mean scores of a confusion matrix.

    Args:
        confmat: ``(K, K)`` counts (any numeric dtype), rows = true class, columns =
            predicted class (torchmetrics' layout).

    Returns:
        ``IoU``, ``F1``, ``precision``, ``recall``: ``(K,)`` float64 (NaN for a class with a
        zero denominator); ``mIoU``, ``mF1``: 0-d float64, means over the classes that are not
        NaN (NaN if all are); ``OA``: 0-d float64 (NaN for an empty matrix).

    Raises:
        ValueError: if ``confmat`` is not square.

    """
    if confmat.ndim != 2 or confmat.shape[0] != confmat.shape[1]:
        raise ValueError(f"confmat must be (K, K), got {tuple(confmat.shape)}")
    cm = confmat.double()
    tp = cm.diagonal()
    fp = cm.sum(0) - tp
    fn = cm.sum(1) - tp
    iou = _ratio(tp, tp + fp + fn)
    f1 = _ratio(2 * tp, 2 * tp + fp + fn)
    return {
        "IoU": iou,
        "F1": f1,
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, tp + fn),
        "mIoU": iou.nanmean(),
        "mF1": f1.nanmean(),
        "OA": _ratio(tp.sum(), cm.sum()),
    }


def _float(x: Tensor | float) -> float | None:
    """Python float, or None for NaN (JSON has no NaN)."""
    value = float(x)
    return None if math.isnan(value) else value


def segmentation_report(confmat: Tensor, class_names: Sequence[str] | None = None) -> dict[str, Any]:
    """Scores of :func:`segmentation_scores` as a JSON-ready dict.

    Args:
        confmat: ``(K, K)`` counts, rows = true class, columns = predicted class.
        class_names: ``K`` names for the per-class entries (default ``"0"``, ``"1"``...).

    Returns:
        ``{"mIoU", "OA", "mF1": float | None, "IoU", "F1", "precision", "recall":
        {name: float | None}, "pixels": int, "classes": [names], "confusion_matrix": K × K
        ints}``; None stands for NaN.

    Raises:
        ValueError: if the number of names is not ``K``.

    """
    k = confmat.shape[0]
    names = list(class_names) if class_names is not None else [str(i) for i in range(k)]
    if len(names) != k:
        raise ValueError(f"{len(names)} class names for a {k}-class confusion matrix")
    scores = segmentation_scores(confmat)
    out: dict[str, Any] = {key: _float(scores[key]) for key in ("mIoU", "OA", "mF1")}
    for key in ("IoU", "F1", "precision", "recall"):
        out[key] = {name: _float(v) for name, v in zip(names, scores[key], strict=True)}
    out["pixels"] = int(confmat.sum())
    out["classes"] = names
    out["confusion_matrix"] = confmat.long().tolist()
    return out


class SegmentationMetrics(MulticlassConfusionMatrix):
    """Pixel confusion matrix of label maps, accumulated over batches (and devices).

    A torchmetrics :class:`~torchmetrics.classification.MulticlassConfusionMatrix` whose
    :meth:`compute` returns the scores of :func:`segmentation_scores`; the state ``confmat``
    holds the matrix itself (rows = true class).

    ``update(preds, target)`` takes ``preds`` ``(B, H, W)`` int64 labels in ``[0, K)`` or
    ``(B, K, H, W)`` float logits/probabilities (arg-maxed), and ``target`` ``(B, H, W)`` int64;
    target pixels equal to ``ignore_index`` are skipped.

    Args:
        num_classes: number of classes ``K``.
        ignore_index: target value to skip (255 for rsfm's datasets), or None.
        **kwargs: passed to torchmetrics' ``Metric`` (e.g. ``dist_sync_on_step``).

    """

    def __init__(self, num_classes: int, ignore_index: int | None = 255, **kwargs: Any) -> None:
        # validate_args off: its checks scan every pixel of every batch (slow on large tiles)
        # and predictions are arg-maxes, in range by construction.
        kwargs.setdefault("validate_args", False)
        super().__init__(num_classes=num_classes, ignore_index=ignore_index, normalize=None, **kwargs)

    def compute(self) -> dict[str, Tensor]:  # type: ignore[override]
        """Scores of the accumulated matrix; see :func:`segmentation_scores`."""
        return segmentation_scores(self.confmat)

    def report(self, class_names: Sequence[str] | None = None) -> dict[str, Any]:
        """JSON-ready scores and matrix; see :func:`segmentation_report`."""
        return segmentation_report(self.confmat, class_names)
