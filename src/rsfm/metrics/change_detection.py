"""Change-detection metrics for the change class: precision, recall, F1, IoU, plus OA.

Change-detection papers (LEVIR-CD, Chen & Shi 2020; BIT, ChangeFormer, MTP) score the
*change* class only, from a binary confusion matrix summed over all pixels of the split
(not averaged per image):

* precision = TP / (TP + FP), recall = TP / (TP + FN),
* F1 = 2 TP / (2 TP + FP + FN) (the harmonic mean of precision and recall),
* IoU = TP / (TP + FP + FN),
* OA = (TP + TN) / (TP + TN + FP + FN).

A score whose denominator is zero (e.g. precision when nothing is predicted as change) is 0,
as torchmetrics' ``zero_division=0``. :func:`change_scores` returns fractions;
:meth:`ChangeDetectionMetrics.report`, what rsfm writes and prints, percentages.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor
from torchmetrics.classification import BinaryConfusionMatrix

__all__ = ["ChangeDetectionMetrics", "change_scores"]


def change_scores(confmat: Tensor) -> dict[str, float]:
    """Scores of the change class from a binary confusion matrix.

    Args:
        confmat: ``(2, 2)`` integer counts, rows = true class, columns = predicted class,
            class 0 = no change, 1 = change (torchmetrics' layout: ``[[TN, FP], [FN, TP]]``).

    Returns:
        ``{"precision", "recall", "F1", "IoU", "OA"}`` as floats in [0, 1]; a ratio with a
        zero denominator is 0.

    Raises:
        ValueError: if ``confmat`` is not ``(2, 2)``.

    """
    if tuple(confmat.shape) != (2, 2):
        raise ValueError(f"confmat must be (2, 2), got {tuple(confmat.shape)}")
    (tn, fp), (fn, tp) = confmat.double().tolist()

    def ratio(num: float, den: float) -> float:
        return num / den if den > 0 else 0.0

    return {
        "precision": ratio(tp, tp + fp),
        "recall": ratio(tp, tp + fn),
        "F1": ratio(2 * tp, 2 * tp + fp + fn),
        "IoU": ratio(tp, tp + fp + fn),
        "OA": ratio(tp + tn, tp + tn + fp + fn),
    }


class ChangeDetectionMetrics(BinaryConfusionMatrix):
    """Pixel confusion matrix of change maps, accumulated over batches (and devices).

    A torchmetrics :class:`~torchmetrics.classification.BinaryConfusionMatrix`:
    ``compute()`` returns the ``(2, 2)`` matrix summed over ranks under DDP; :meth:`scores`
    (fractions) and :meth:`report` (percent, with counts) score the change class.

    ``update(preds, target)`` takes ``preds`` ``(B, H, W)`` int64 in {0, 1} (hard labels) or
    float probabilities of change (thresholded at ``threshold``), and ``target`` ``(B, H, W)``
    int64 in {0, 1}; pixels equal to ``ignore_index`` in ``target`` are skipped.

    Args:
        ignore_index: target value to skip, or None.
        threshold: probability above which a float prediction counts as change.
        **kwargs: passed to torchmetrics' ``Metric`` (e.g. ``dist_sync_on_step``).

    """

    def __init__(self, ignore_index: int | None = None, threshold: float = 0.5, **kwargs: Any) -> None:
        super().__init__(threshold=threshold, ignore_index=ignore_index, normalize=None, **kwargs)

    def scores(self) -> dict[str, float]:
        """Change-class scores (fractions) of the accumulated matrix; see :func:`change_scores`."""
        return change_scores(self.compute())

    def report(self) -> dict[str, Any]:
        """Scores in percent plus the raw counts, JSON-ready.

        Returns:
            ``{"precision", "recall", "F1", "IoU", "OA": percent, "TP", "FP", "FN", "TN":
            int, "confusion": [[TN, FP], [FN, TP]]}``.

        """
        cm = self.compute().long().cpu()
        (tn, fp), (fn, tp) = cm.tolist()
        percent = {k: 100.0 * v for k, v in change_scores(cm).items()}
        return {**percent, "TP": tp, "FP": fp, "FN": fn, "TN": tn, "confusion": cm.tolist()}
