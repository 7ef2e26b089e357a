"""Files that could not be read: set aside in batches, counted over a run, reported.

Datasets return ``{'skipped': (path, reason), ...}`` for a file they cannot read instead of
raising; :func:`collate_skipping` leaves those out of the batch and lists them under
``batch['skipped']``; a :class:`SkipReport` counts them by reason (the engine's callback fills
it during a run and writes ``skipped_files.json``).

.. versionadded:: 0.1
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import UnidentifiedImageError
from torch.utils.data import default_collate

from rsfm.data.io import BadImageError
from rsfm.utils.files import write_json

__all__ = ["READ_ERRORS", "SkipReport", "collate_skipping", "skip_reason", "split_skipped"]


#: exceptions that mean "this file cannot be read" (as opposed to a wrong setting or layout):
#: :class:`~rsfm.data.io.BadImageError` from :func:`~rsfm.data.io.read_image`, and the
#: ``OSError`` s (PIL's ``UnidentifiedImageError``, truncated streams, vanished files,
#: rasterio's ``RasterioIOError``) of readers that open files themselves, such as mask readers.
#: The task datasets (segmentation, detection, change) re-raise
#: :class:`~rsfm.data.io.UnsupportedImageError` (a ``data.bands`` index the file lacks is a
#: setting to fix, not a damaged file); the folder datasets skip it too.
READ_ERRORS: tuple[type[BaseException], ...] = (BadImageError, OSError)


def skip_reason(path: str | os.PathLike[str], err: BaseException) -> str:
    """The :data:`~rsfm.data.io.BAD_IMAGE_REASONS` value of a file that failed to read.

    Args:
        path: the file that could not be read.
        err: what reading it raised (one of :data:`READ_ERRORS`).

    Returns:
        ``err.reason`` for a :class:`~rsfm.data.io.BadImageError`; otherwise ``'zero_byte'``
        for an empty file, ``'not_an_image'`` when PIL cannot identify the content,
        ``'truncated'`` when the stream ends early, ``'unreadable'`` for anything else
        (including a file that vanished).
    """
    if isinstance(err, BadImageError):
        return err.reason
    try:
        if Path(path).stat().st_size == 0:
            return "zero_byte"
    except OSError:
        return "unreadable"
    if isinstance(err, UnidentifiedImageError):
        return "not_an_image"
    if "truncated" in str(err).lower():
        return "truncated"
    return "unreadable"


def split_skipped(batch: Sequence[Mapping[str, Any]]) -> tuple[list[Mapping[str, Any]], list[tuple[str, str]]]:
    """Separate the readable items of a batch from the skipped ones.

    Args:
        batch: dataset items; a skipped one holds ``'skipped': (path, reason)``.

    Returns:
        ``(readable items, [(path, reason), ...] of the skipped ones)``, both in batch order.
    """
    good = [item for item in batch if "skipped" not in item]
    skipped = [(str(item["skipped"][0]), str(item["skipped"][1])) for item in batch if "skipped" in item]
    return good, skipped


def collate_skipping(
    batch: Sequence[Mapping[str, Any]],
    num_channels: int | None = None,
    empty: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Collate dataset items with torch's default collate, setting aside the skipped ones.

    Args:
        batch: items from a dataset that returns ``{'skipped': (path, reason), ...}`` for a
            file it cannot read (:class:`ImageFolder`, :class:`LabeledImageFolder`, the
            segmentation and change-detection datasets).
        num_channels: ``C`` of the empty ``image`` of a batch whose items were all skipped
            (folder form, see below); None: 0, the channel count being unknown here.
        empty: the batch returned when every item was skipped, instead of the folder form
            (tensors are cloned, lists copied), e.g. ``{'image': (0, C, 0, 0) float32,
            'mask': (0, 0, 0) int64, 'id': []}`` for segmentation.

    Returns:
        The default collate of the readable items (``'index'``, ``'label'`` and integer
        ``'id'`` s, when present, as ``(B,)`` int64), e.g. ``{'image': (B, C, H, W) float32,
        'index': (B,) int64}``, plus ``'skipped': list[(path, reason)]``; B counts the
        readable items. When every item was skipped, B = 0: ``empty`` if given, else the
        folder form ``{'image': (0, C, 0, 0) float32 (C = num_channels or 0; the size is
        unknown), 'index': (0,) int64}`` plus an empty ``'label'`` when the items carry labels
        and an empty int64 ``'id'`` when they carry integer ids (tiles of a
        :class:`~rsfm.data.shards.ShardDataset`). Consumers test ``batch['image'].shape[0] == 0``.

    .. versionadded:: 0.1
    .. versionchanged:: 0.2
        ``num_channels`` and ``empty``; the all-skipped folder batch no longer claims 3 channels.
    .. versionchanged:: 0.3
        Integer ``'id'`` s (global tile ids) as ``(B,)`` int64, also in the all-skipped folder batch.

    """
    good, skipped = split_skipped(batch)
    out: dict[str, Any]
    if good:
        out = default_collate(list(good))
        for key in ("index", "label", "id"):
            if isinstance(out.get(key), torch.Tensor):
                out[key] = out[key].to(torch.int64)
    elif empty is not None:
        out = {k: v.clone() if isinstance(v, torch.Tensor) else copy.copy(v) for k, v in empty.items()}
    else:
        out = {
            "image": torch.empty((0, int(num_channels or 0), 0, 0), dtype=torch.float32),
            "index": torch.empty((0,), dtype=torch.int64),
        }
        if any("label" in item for item in batch):
            out["label"] = torch.empty((0,), dtype=torch.int64)
        if any(isinstance(item.get("id"), int) for item in batch):
            out["id"] = torch.empty((0,), dtype=torch.int64)
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
