"""Scene-classification metrics and side-by-side tables of the evaluation protocols.

Accuracies come from the integer confusion matrix, divided in float64: ``OA`` is correct / all,
per-class accuracy is the recall of each class, and ``mean_class_accuracy`` is their mean over
the classes present in the labels (what scene-classification papers call AA). The arithmetic is
that of :class:`rsfm.models.heads.classification.ClassificationMetricSet`, so both give the
same numbers (and scikit-learn's ``accuracy_score`` / ``recall_score`` to the last bits).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = ["classification_report", "format_table"]


def classification_report(preds: Tensor, labels: Tensor, class_names: Sequence[str]) -> dict[str, Any]:
    """Overall and per-class accuracy of predicted scene labels.

    Args:
        preds: ``(N,)`` int64 predicted class indices.
        labels: ``(N,)`` int64 true class indices in ``[0, C)``.
        class_names: the ``C`` class names, in index order.

    Returns:
        A JSON-serialisable dict (float64 arithmetic on integer counts): ``OA`` (overall
        accuracy, %), ``mean_class_accuracy`` (%,
        mean of per-class accuracies over classes with support > 0), ``n`` (number of
        samples), ``per_class`` ``{name: {"accuracy": % or None when the class has no
        samples, "support": int}}`` and ``confusion`` (``C × C`` list of counts, rows = true
        class, columns = predicted class).

    Raises:
        ValueError: on mismatched or non-1-D inputs, an empty input, or labels/predictions
            outside ``[0, C)``.

    """
    preds = torch.as_tensor(preds).detach().cpu().long()
    labels = torch.as_tensor(labels).detach().cpu().long()
    num_classes = len(class_names)
    if preds.ndim != 1 or preds.shape != labels.shape:
        raise ValueError(
            f"preds and labels must be matching 1-D tensors, got {tuple(preds.shape)} and {tuple(labels.shape)}"
        )
    if preds.numel() == 0:
        raise ValueError("cannot compute a classification report on zero samples")
    for name, t in (("preds", preds), ("labels", labels)):
        if int(t.min()) < 0 or int(t.max()) >= num_classes:
            raise ValueError(f"{name} must lie in [0, {num_classes}), got range [{int(t.min())}, {int(t.max())}]")

    # integer counts; the divisions in float64 (torchmetrics' accuracy is float32: off in the 7th digit)
    confusion = torch.bincount(labels * num_classes + preds, minlength=num_classes**2).reshape(num_classes, -1)
    cm = confusion.double()
    support = cm.sum(1)
    present = support > 0
    per_class = torch.where(present, cm.diagonal() / support.clamp(min=1), torch.full_like(support, math.nan))
    oa = 100.0 * float(cm.diagonal().sum()) / float(cm.sum())
    return {
        "OA": oa,
        "mean_class_accuracy": 100.0 * float(per_class.nanmean()),
        "n": int(labels.numel()),
        "per_class": {
            name: {
                "accuracy": 100.0 * float(per_class[i]) if present[i] else None,
                "support": int(support[i]),
            }
            for i, name in enumerate(class_names)
        },
        "confusion": confusion.long().tolist(),
    }


def _pct(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.2f}"


def format_table(results: Mapping[str, Mapping[str, Any]]) -> str:
    """Markdown tables comparing several protocols (or models) side by side.

    Args:
        results: ``{row name: report}`` with reports from :func:`classification_report`,
            e.g. ``{"knn": ..., "linear": ..., "finetune": ...}``.

    Returns:
        Two Markdown tables separated by a blank line: a summary (one row per entry: OA,
        mean class accuracy, n) and a per-class table (one row per class, one accuracy
        column per entry, plus the support of the first entry).

    """
    names = list(results)
    lines = ["| protocol | OA (%) | mean class acc. (%) | n |", "|---|---:|---:|---:|"]
    for name in names:
        r = results[name]
        lines.append(f"| {name} | {_pct(r['OA'])} | {_pct(r['mean_class_accuracy'])} | {r['n']} |")
    if not names:
        return "\n".join(lines)

    classes: list[str] = []
    for r in results.values():
        classes += [c for c in r["per_class"] if c not in classes]
    first = results[names[0]]["per_class"]
    lines += ["", "| class | " + " | ".join(names) + " | support |", "|---|" + "---:|" * (len(names) + 1)]
    for c in classes:
        cells = [_pct(results[n]["per_class"].get(c, {}).get("accuracy")) for n in names]
        support = first.get(c, {}).get("support", "–")
        lines.append(f"| {c} | " + " | ".join(cells) + f" | {support} |")
    return "\n".join(lines)
