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
ignore index never enter the matrix.

Against MMSegmentation's ``IoUMetric``: per-class IoU, ``mIoU`` and ``OA`` are the same
numbers, and so are per-class precision and recall. ``F1`` and ``mF1`` are not always: rsfm's
``F1_k`` is the textbook ``2 TP / (2 TP + FP + FN)``, so a class with ``TP_k = 0`` that is in
the ground truth or the prediction scores 0 and pulls ``mF1`` down, while MMSegmentation's
``mFscore`` computes F from precision and recall, gets NaN (0/0) for such a class and leaves
it out of its mean. Example: target ``[0, 0, 1, 1]``, prediction ``[0, 0, 0, 2]`` (K = 3):
F1 = (0.8, 0, 0), ``mF1`` = 0.2667 here; MMSegmentation gives (0.8, NaN, NaN), ``mFscore``
0.8; both give IoU (2/3, 0, 0), ``mIoU`` 0.2222. With ``TP_k > 0`` for every class present,
the two F1 agree.

Some benchmarks score a subset of the classes (ISPRS: five, without clutter). With
``score_classes`` only pixels whose *true* label is scored count: a scored pixel predicted as
an unscored class is a miss (FN), an unscored pixel is left out entirely (no FP), and OA is
over scored pixels (:func:`rsfm.metrics.isprs.isprs_scores` is the ISPRS special case).

:func:`segmentation_scores` returns fractions (tensors); :func:`segmentation_report`, what
rsfm writes and prints, percentages.
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
    """``num / den`` with NaN where ``den`` is 0 (any positive ``den``, fractions included)."""
    ok = den > 0
    return torch.where(ok, num / torch.where(ok, den, torch.ones_like(den)), torch.full_like(num, math.nan))


def segmentation_scores(confmat: Tensor, score_classes: Sequence[int] | None = None) -> dict[str, Tensor]:
    """Per-class and mean scores of a confusion matrix, as fractions.

    Args:
        confmat: ``(K, K)`` counts (any numeric dtype; a normalised or weighted matrix gives
            the same ratios as its counts), rows = true class, columns = predicted class
            (torchmetrics' layout).
        score_classes: labels to score (see the module docstring); None: all ``K``.

    Returns:
        ``IoU``, ``F1``, ``precision``, ``recall``: ``(K,)`` float64 (NaN for a class with a
        zero denominator or not scored; ``F1`` is 0, not NaN, for a class with ``TP = 0`` and
        ``FP + FN > 0``, where MMSegmentation's Fscore is NaN, see the module docstring);
        ``mIoU``, ``mF1``: 0-d float64, means over the scored classes that are not NaN (NaN
        if all are); ``OA``: 0-d float64 over scored pixels (NaN for an empty matrix).

    Raises:
        ValueError: if ``confmat`` is not square or a scored label is out of range.

    .. versionchanged:: 0.3.7
        A normalised (fractional) matrix gives its counts' scores; denominators under 1 were
        taken as 1.

    """
    if confmat.ndim != 2 or confmat.shape[0] != confmat.shape[1]:
        raise ValueError(f"confmat must be (K, K), got {tuple(confmat.shape)}")
    k = confmat.shape[0]
    cm = confmat.double()
    scored = torch.zeros(k, dtype=torch.bool, device=cm.device)  # the matrix may live on a GPU
    if score_classes is None:
        scored[:] = True
    else:
        idx = [int(c) for c in score_classes]
        if any(not 0 <= c < k for c in idx):
            raise ValueError(f"score_classes {idx} outside [0, {k})")
        scored[idx] = True
    rows = cm * scored.double().unsqueeze(1)  # pixels whose true label is scored
    tp = rows.diagonal()
    fp = rows.sum(0) - tp
    fn = rows.sum(1) - tp
    nan = torch.full((k,), math.nan, dtype=torch.float64, device=cm.device)
    iou = torch.where(scored, _ratio(tp, tp + fp + fn), nan)
    f1 = torch.where(scored, _ratio(2 * tp, 2 * tp + fp + fn), nan)
    return {
        "IoU": iou,
        "F1": f1,
        "precision": torch.where(scored, _ratio(tp, tp + fp), nan),
        "recall": torch.where(scored, _ratio(tp, tp + fn), nan),
        "mIoU": iou.nanmean(),
        "mF1": f1.nanmean(),
        "OA": _ratio(tp.sum(), rows.sum()),
    }


def _percent(x: Tensor | float) -> float | None:
    """A fraction as a Python percentage, or None for NaN (JSON has no NaN)."""
    value = float(x)
    return None if math.isnan(value) else 100.0 * value


def segmentation_report(
    confmat: Tensor, class_names: Sequence[str] | None = None, score_classes: Sequence[int] | None = None
) -> dict[str, Any]:
    """Scores of :func:`segmentation_scores` as a JSON-ready dict, in percent.

    Args:
        confmat: ``(K, K)`` counts, rows = true class, columns = predicted class.
        class_names: ``K`` names for the per-class entries (default ``"0"``, ``"1"``...).
        score_classes: labels to score; None: all.

    Returns:
        ``{"mIoU", "OA", "mF1": percent | None, "IoU", "F1", "precision", "recall":
        {name: percent | None}, "pixels": int, "classes": [names], "scored_classes":
        [names], "confusion_matrix": K × K ints}``; None stands for NaN. ``pixels`` is every
        pixel in the matrix (its sum), the rows of unscored classes included; with
        ``score_classes`` the OA runs over fewer, the pixels whose true class is scored
        (:func:`rsfm.metrics.isprs.isprs_scores`' ``pixels`` counts only those).

    Raises:
        ValueError: if the number of names is not ``K``.

    """
    k = confmat.shape[0]
    names = list(class_names) if class_names is not None else [str(i) for i in range(k)]
    if len(names) != k:
        raise ValueError(f"{len(names)} class names for a {k}-class confusion matrix")
    scores = segmentation_scores(confmat, score_classes)
    out: dict[str, Any] = {key: _percent(scores[key]) for key in ("mIoU", "OA", "mF1")}
    for key in ("IoU", "F1", "precision", "recall"):
        out[key] = {name: _percent(v) for name, v in zip(names, scores[key], strict=True)}
    out["pixels"] = int(confmat.sum())
    out["classes"] = names
    out["scored_classes"] = names if score_classes is None else [names[int(c)] for c in score_classes]
    out["confusion_matrix"] = confmat.long().tolist()
    return out


class SegmentationMetrics(MulticlassConfusionMatrix):
    """Pixel confusion matrix of label maps, accumulated over batches (and devices).

    A torchmetrics :class:`~torchmetrics.classification.MulticlassConfusionMatrix`:
    ``compute()`` returns the matrix (rows = true class), summed over ranks under DDP;
    :meth:`scores` and :meth:`report` score it.

    ``update(preds, target)`` takes ``preds`` ``(B, H, W)`` int64 labels in ``[0, K)`` or
    ``(B, K, H, W)`` float logits/probabilities (arg-maxed), and ``target`` ``(B, H, W)`` int64
    in ``[0, K)``; target pixels equal to ``ignore_index`` are skipped. A label outside
    ``[0, K)`` (other than the ignore index in ``target``) raises ValueError naming the tensor,
    the value and ``K`` (one min/max pass per tensor; torchmetrics' own per-pixel checks stay
    off).

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

    def update(self, preds: Tensor, target: Tensor) -> None:
        """Add a batch (see the class docstring).

        Raises:
            ValueError: if a prediction label, or a target label other than ``ignore_index``, is
                outside ``[0, K)`` (such a pixel would be miscounted or break the matrix).
        """
        k = self.num_classes
        if not preds.is_floating_point() and preds.numel():
            lo, hi = torch.aminmax(preds)
            if int(lo) < 0 or int(hi) >= k:
                bad = int(lo) if int(lo) < 0 else int(hi)
                raise ValueError(f"prediction holds label {bad}; expected labels in [0, {k}) for K = {k} classes")
        if target.numel():
            valid = target if self.ignore_index is None else target.masked_fill(target == self.ignore_index, 0)
            lo, hi = torch.aminmax(valid)
            if int(lo) < 0 or int(hi) >= k:
                bad = int(lo) if int(lo) < 0 else int(hi)
                allowed = "" if self.ignore_index is None else f" or the ignore index {self.ignore_index}"
                raise ValueError(f"target holds label {bad}; expected labels in [0, {k}){allowed} for K = {k} classes")
        super().update(preds, target)

    def compute_matrix(self) -> Tensor:
        """The accumulated ``(K, K)`` matrix, summed over ranks under DDP (same as ``compute()``)."""
        return self.compute()

    def scores(self, score_classes: Sequence[int] | None = None) -> dict[str, Tensor]:
        """Scores (fractions) of the accumulated matrix; see :func:`segmentation_scores`."""
        return segmentation_scores(self.compute(), score_classes)

    def report(
        self, class_names: Sequence[str] | None = None, score_classes: Sequence[int] | None = None
    ) -> dict[str, Any]:
        """JSON-ready scores (percent) and matrix; see :func:`segmentation_report`."""
        return segmentation_report(self.compute(), class_names, score_classes)
