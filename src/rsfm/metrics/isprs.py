"""ISPRS 2-D semantic labelling (Potsdam, Vaihingen) scoring: eroded-boundary ground truth, five-class scores.

The ISPRS benchmark labels six classes — impervious surfaces, building, low vegetation, tree, car and
clutter/background — and also publishes the ground truth "with eroded boundaries" (``*_noBoundary`` label files):
the boundaries between objects are eroded with a circular disc of 3-pixel radius and the eroded pixels are left out
of the evaluation, so that uncertain border pixels do not count. The field (RVSA, MTP and most papers since) reports
scores on that eroded ground truth and over the first five classes only, leaving clutter out.

* :func:`rsfm.data.segmentation.boundaries.erode_boundaries` makes eroded-boundary ground truth from
  full label maps (for sets shipped without it, or to apply the same protocol elsewhere).
* :func:`isprs_scores` turns a 6-class confusion matrix into the five-class scores: per-class F1 and IoU, mF1, mIoU
  and OA, in percent.

Source: ISPRS Test Project on Urban Classification, 3D Building Reconstruction and Semantic Labeling, 2-D semantic
labelling contest (Vaihingen / Potsdam) description and its evaluation notes (Rottensteiner et al., ISPRS Annals
2012; the benchmark web pages of ISPRS WG II/4).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["ISPRS_CLASSES", "ISPRS_SCORED_CLASSES", "isprs_scores"]

#: ISPRS label order (the colour order of ``rsfm.data.segmentation.ISPRS_COLOURS``)
ISPRS_CLASSES = ("impervious_surfaces", "building", "low_vegetation", "tree", "car", "clutter")
#: the five classes the field scores (clutter left out)
ISPRS_SCORED_CLASSES = ISPRS_CLASSES[:5]


def _percent(num: float, den: float) -> float | None:
    """``100 · num / den``, None where ``den`` is 0."""
    return 100.0 * num / den if den > 0 else None


def _mean(values: list[float | None]) -> float | None:
    """Mean of the defined values, None if none is."""
    defined = [v for v in values if v is not None]
    return sum(defined) / len(defined) if defined else None


def isprs_scores(confmat: Tensor | np.ndarray | Any, include_clutter_rows: bool = False) -> dict[str, Any]:
    """Five-class ISPRS scores of a 6-class confusion matrix, in percent.

    The matrix is in ISPRS class order (:data:`ISPRS_CLASSES`: impervious surfaces, building, low vegetation, tree,
    car, clutter), rows = true class, columns = predicted class, summed over all scored pixels of a split (eroded
    boundaries already left out). By default the pixels whose true class is clutter are left out altogether:

    * ``TP_k`` = ``M[k, k]``; ``FN_k`` = row ``k`` minus ``TP_k``, so a pixel of one of the five classes predicted
      as clutter is an error; ``FP_k`` = column ``k`` over the five true-class rows, minus ``TP_k``;
    * ``F1_k = 2 TP_k / (2 TP_k + FP_k + FN_k)``, ``IoU_k = TP_k / (TP_k + FP_k + FN_k)``, also
      ``precision_k = TP_k / (TP_k + FP_k)`` and ``recall_k = TP_k / (TP_k + FN_k)``, for the five classes;
    * ``mF1``, ``mIoU``: means over the five classes (over those defined, as MMSegmentation's means; a class with
      ``TP_k = 0`` has F1 0 and counts in ``mF1``, where MMSegmentation's Fscore is undefined and left out, see
      :mod:`rsfm.metrics.segmentation`);
    * ``OA`` = ``Σ_k TP_k / Σ M[:5, :]``: accuracy over the pixels whose true class is one of the five.

    With ``include_clutter_rows=True`` the clutter row stays in: true-clutter pixels predicted as class ``k`` count
    as false positives of ``k`` and the OA runs over every pixel (clutter → clutter counting as correct), i.e.
    per-class scores of the full 6-class matrix averaged over the first five — what an MMSegmentation 6-class
    evaluation gives when clutter is then dropped from the table (some papers report that).

    Args:
        confmat: ``(6, 6)`` non-negative counts (tensor, array or nested sequence).
        include_clutter_rows: keep the true-clutter row in the false positives and the OA (see above).

    Returns:
        ``{"F1", "IoU", "precision", "recall": {class: float | None} for the five classes, "mF1", "mIoU", "OA":
        float | None, "classes": [the five names], "pixels": int}``. ``pixels`` counts the pixels behind the OA:
        those whose true class is one of the five, or with ``include_clutter_rows`` every pixel of the matrix
        (``segmentation_report``'s ``pixels`` always counts the whole matrix). Scores are plain floats in percent
        (0–100), None where a denominator is 0 (a class absent from both truth and prediction,
        or no pixel at all).

    Raises:
        ValueError: if ``confmat`` is not ``(6, 6)``, or holds negative or non-finite values.

    Source:
        ISPRS 2-D semantic labelling benchmark (per-class F1, overall accuracy; clutter left out of the published
        comparisons), with mIoU as reported by RVSA, MTP and other MMSegmentation-based papers.

    """
    cm = torch.as_tensor(np.asarray(confmat.cpu() if isinstance(confmat, Tensor) else confmat), dtype=torch.float64)
    if tuple(cm.shape) != (6, 6):
        raise ValueError(f"confmat must be (6, 6) in ISPRS class order {ISPRS_CLASSES}, got {tuple(cm.shape)}")
    if not bool(torch.isfinite(cm).all()) or bool((cm < 0).any()):
        raise ValueError("confmat must hold finite, non-negative counts")

    rows = cm if include_clutter_rows else cm[:5]
    tp = cm.diagonal()[:5]
    fn = cm[:5].sum(1) - tp
    fp = rows[:, :5].sum(0) - tp
    out: dict[str, Any] = {"F1": {}, "IoU": {}, "precision": {}, "recall": {}}
    for k, name in enumerate(ISPRS_SCORED_CLASSES):
        t, p, n = float(tp[k]), float(fp[k]), float(fn[k])
        out["F1"][name] = _percent(2 * t, 2 * t + p + n)
        out["IoU"][name] = _percent(t, t + p + n)
        out["precision"][name] = _percent(t, t + p)
        out["recall"][name] = _percent(t, t + n)
    out["mF1"] = _mean(list(out["F1"].values()))
    out["mIoU"] = _mean(list(out["IoU"].values()))
    correct = float(cm.diagonal().sum()) if include_clutter_rows else float(tp.sum())
    total = float(rows.sum())
    out["OA"] = _percent(correct, total)
    out["classes"] = list(ISPRS_SCORED_CLASSES)
    out["pixels"] = int(round(total))
    return out
