"""Classification metrics, side-by-side tables and JSON output for the evaluation protocols.

Accuracies come from torchmetrics: ``OA`` is the micro-averaged accuracy (correct / all),
per-class accuracy is the recall of each class, and ``mean_class_accuracy`` is their mean over
the classes present in the labels (what scene-classification papers call AA).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix

from rsfm.engine.export import atomic_write

__all__ = ["classification_report", "format_table", "write_json"]


def classification_report(preds: Tensor, labels: Tensor, class_names: Sequence[str]) -> dict[str, Any]:
    """Overall and per-class accuracy of predicted scene labels.

    Args:
        preds: ``(N,)`` int64 predicted class indices.
        labels: ``(N,)`` int64 true class indices in ``[0, C)``.
        class_names: the ``C`` class names, in index order.

    Returns:
        A JSON-serialisable dict: ``OA`` (overall accuracy, %), ``mean_class_accuracy`` (%,
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

    oa = MulticlassAccuracy(num_classes=num_classes, average="micro")(preds, labels)
    per_class = MulticlassAccuracy(num_classes=num_classes, average="none")(preds, labels)
    confusion = MulticlassConfusionMatrix(num_classes=num_classes)(preds, labels)
    support = torch.bincount(labels, minlength=num_classes)
    present = support > 0
    return {
        "OA": 100.0 * float(oa),
        "mean_class_accuracy": 100.0 * float(per_class[present].mean()),
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


def _to_jsonable(obj: Any) -> Any:
    if isinstance(obj, Tensor):
        return obj.item() if obj.ndim == 0 else obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist"):  # numpy arrays and scalars
        return obj.tolist()
    if isinstance(obj, set | frozenset):
        return sorted(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    """Write ``obj`` as indented JSON, atomically (a crash never leaves a truncated file).

    Tensors, numpy values, paths and sets are converted to plain JSON values.

    Args:
        path: destination file; parent folders are created.
        obj: a JSON-serialisable object (dicts, lists, numbers, strings, plus the above).

    Returns:
        The written path.

    Raises:
        TypeError: if ``obj`` holds a value that cannot be serialised.

    """
    text = json.dumps(obj, indent=2, default=_to_jsonable, allow_nan=True) + "\n"

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    return atomic_write(path, write)
