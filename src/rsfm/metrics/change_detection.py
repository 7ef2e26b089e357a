"""Change-detection metrics for the change class: precision, recall, F1, IoU, plus OA.

Change-detection papers (LEVIR-CD, Chen & Shi 2020; BIT, ChangeFormer, MTP) score the
*change* class only, from a binary confusion matrix summed over all pixels of the split
(not averaged per image):

* precision = TP / (TP + FP), recall = TP / (TP + FN),
* F1 = 2 TP / (2 TP + FP + FN) (the harmonic mean of precision and recall),
* IoU = TP / (TP + FP + FN),
* OA = (TP + TN) / (TP + TN + FP + FN).

A score whose denominator is zero (e.g. precision when nothing is predicted as change) is 0,
as torchmetrics' ``zero_division=0``. All scores are fractions in [0, 1].
"""

from __future__ import annotations

from typing import Any

from torch import Tensor
from torchmetrics.classification import BinaryConfusionMatrix

__all__ = ["ChangeDetectionMetrics", "change_scores"]

#: score names, in the order they are reported
SCORES = ("precision", "recall", "F1", "IoU", "OA")


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

    A torchmetrics :class:`~torchmetrics.classification.BinaryConfusionMatrix` whose
    :meth:`compute` returns the change-class scores of :func:`change_scores` rather than the
    matrix; the state ``confmat`` holds the matrix itself.

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

    def compute(self) -> dict[str, float]:  # type: ignore[override]
        """Change-class scores of the accumulated matrix; see :func:`change_scores`."""
        return change_scores(self.confmat)

    def report(self) -> dict[str, Any]:
        """Scores plus the raw counts, JSON-ready.

        Returns:
            ``{**scores, "TP", "FP", "FN", "TN": int, "confusion": [[TN, FP], [FN, TP]]}``.

        """
        cm = self.confmat.long()
        (tn, fp), (fn, tp) = cm.tolist()
        return {**change_scores(cm), "TP": tp, "FP": fp, "FN": fn, "TN": tn, "confusion": cm.tolist()}
