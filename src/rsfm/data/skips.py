"""Files that could not be read: set aside in batches, counted over a run, reported.

Datasets return ``{'skipped': (path, reason), ...}`` for a file they cannot read instead of
raising; :func:`collate_skipping` leaves those out of the batch and lists them under
``batch['skipped']``; a :class:`SkipReport` counts them by reason (the engine's callback fills
it during a run and writes ``skipped_files.json``).

.. versionadded:: 0.1
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import default_collate

from rsfm.utils.files import write_json

__all__ = ["SkipReport", "collate_skipping"]


def collate_skipping(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """Collate dataset items, setting aside the skipped ones.

    Args:
        batch: items from :class:`ImageFolder` or :class:`LabeledImageFolder`.

    Returns:
        ``{'image': (B, 3, H, W) float32, 'index': (B,) int64, 'skipped': list[(path,
        reason)]}`` plus ``'label': (B,) int64`` when the items have labels, where B counts
        the readable items. When every item was skipped, B = 0: ``image`` is an empty
        (0, 3, 0, 0) float32 tensor (the size is unknown), ``index``/``label`` are empty
        int64 tensors; consumers test ``batch['image'].shape[0] == 0``.

    .. versionadded:: 0.1

    """
    good = [item for item in batch if "skipped" not in item]
    skipped = [tuple(item["skipped"]) for item in batch if "skipped" in item]
    if good:
        out: dict[str, Any] = default_collate(good)
        out["index"] = out["index"].to(torch.int64)
        if "label" in out:
            out["label"] = out["label"].to(torch.int64)
    else:
        out = {
            "image": torch.empty((0, 3, 0, 0), dtype=torch.float32),
            "index": torch.empty((0,), dtype=torch.int64),
        }
        if any("label" in item for item in batch):
            out["label"] = torch.empty((0,), dtype=torch.int64)
    out["skipped"] = skipped
    return out


class SkipReport:
    """Skipped files of a run, deduplicated by path (the first reason seen is kept).

    .. versionadded:: 0.1
    """

    def __init__(self, items: Iterable[Sequence[str]] = ()) -> None:
        """Start a report.

        Args:
            items: initial ``(path, reason)`` pairs.

        """
        self._reasons: dict[str, str] = {}
        self.add(items)

    def add(self, items: Iterable[Sequence[str]]) -> None:
        """Record ``(path, reason)`` pairs; paths already recorded are ignored.

        Args:
            items: pairs such as ``batch['skipped']`` or ``dataset.scan_skipped``.

        """
        for path, reason in items:
            self._reasons.setdefault(str(path), str(reason))

    @property
    def total(self) -> int:
        """Number of distinct skipped files."""
        return len(self._reasons)

    def __len__(self) -> int:
        return self.total

    def counts(self) -> dict[str, int]:
        """Count files per reason, most frequent first.

        Returns:
            reason -> count.

        """
        counts: dict[str, int] = {}
        for reason in self._reasons.values():
            counts[reason] = counts.get(reason, 0) + 1
        return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))

    def examples(self, reason: str, n: int = 3) -> list[str]:
        """Return the first ``n`` paths skipped for ``reason``.

        Args:
            reason: e.g. ``'truncated'``.
            n: how many.

        Returns:
            up to ``n`` paths, in the order they were recorded.

        """
        found = []
        for path, r in self._reasons.items():
            if r == reason:
                found.append(path)
                if len(found) == n:
                    break
        return found

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form: ``{'total', 'counts', 'files': [{'path', 'reason'}, ...]}``."""
        return {
            "total": self.total,
            "counts": self.counts(),
            "files": [{"path": p, "reason": r} for p, r in self._reasons.items()],
        }

    def merge(self, other: Mapping[str, Any] | SkipReport) -> None:
        """Add the files of another report (or of its :meth:`to_dict`).

        Args:
            other: a report or a dict from :meth:`to_dict`.

        """
        if isinstance(other, SkipReport):
            other = other.to_dict()
        self.add((f["path"], f["reason"]) for f in other.get("files", ()))

    def summary(self) -> str:
        """One line, e.g. ``'3 files skipped: 2 truncated, 1 zero_byte'``."""
        if not self.total:
            return "no files skipped"
        parts = ", ".join(f"{count} {reason}" for reason, count in self.counts().items())
        noun = "file" if self.total == 1 else "files"
        return f"{self.total} {noun} skipped: {parts}"

    def format(self) -> str:
        """Format a small table: reason, count and one example path per reason."""
        if not self.total:
            return "no files skipped"
        rows = [("reason", "count", "example")]
        rows += [(r, str(c), self.examples(r, 1)[0]) for r, c in self.counts().items()]
        w0 = max(len(r[0]) for r in rows)
        w1 = max(len(r[1]) for r in rows)
        return "\n".join(f"{a:<{w0}}  {b:>{w1}}  {c}" for a, b, c in rows)

    def write_json(self, path: str | os.PathLike[str]) -> Path:
        """Write :meth:`to_dict` as JSON, creating parent folders.

        Args:
            path: output file.

        Returns:
            the path written.

        """
        return write_json(path, self.to_dict())

    def __repr__(self) -> str:
        return f"SkipReport({self.summary()})"
