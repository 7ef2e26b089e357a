"""Folder-of-images datasets that never crash on a bad file, and the accounting of skipped files.

:class:`ImageFolder` (unlabeled, recursive) and :class:`LabeledImageFolder` (class = first-level
sub-folder) return ``{'image', 'index'[, 'label']}`` dicts, or ``{'skipped': (path, reason),
'index'}`` for a file that cannot be read. :func:`collate_skipping` drops the latter from the
batch and lists them under ``'skipped'``; :class:`SkipReport` and :class:`SkipReportCallback`
count them over a run and write ``skipped_files.json``.

Random augmentation is a pure function of ``(seed, epoch, index)``, so a run is reproducible
whatever the number of workers and can be resumed mid-epoch bit for bit.

.. versionadded:: 0.1
"""

from __future__ import annotations

import hashlib
import json
import logging
import operator
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor
from torch.utils.data import Dataset, default_collate

from .io import IMAGE_EXTENSIONS, BadImageError, RasterRule, read_image

__all__ = [
    "ImageFolder",
    "LabeledImageFolder",
    "SkipReport",
    "SkipReportCallback",
    "check_image_root",
    "collate_skipping",
    "scan_folder",
    "stratified_split",
]

log = logging.getLogger(__name__)

_SPLITS = ("all", "train", "val")


# ----------------------------------------------------------------------------------------------
# scanning and splitting
# ----------------------------------------------------------------------------------------------


def _accepted() -> str:
    return ", ".join(sorted(IMAGE_EXTENSIONS))


def _check_dir(root: Path) -> None:
    if not root.exists():
        raise FileNotFoundError(f"Image folder not found: {root}")
    if not root.is_dir():
        raise FileNotFoundError(f"Image folder is not a directory: {root}")


def _walk(root: Path) -> Iterable[tuple[str, str, int | None]]:
    """Yield ``(path, relative posix path, size or None if not an image)`` for visible files.

    Hidden entries (name starting with '.') are ignored. Symlinked folders are followed once.
    Folders that cannot be listed are yielded with size -1.
    """
    root_str = os.fspath(root)
    stack = [root_str]
    seen = {os.path.realpath(root_str)}
    while stack:
        folder = stack.pop()
        try:
            with os.scandir(folder) as it:
                entries = list(it)
        except OSError:
            yield folder, os.path.relpath(folder, root_str).replace(os.sep, "/"), -1
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue
            rel = os.path.relpath(entry.path, root_str).replace(os.sep, "/")
            try:
                if entry.is_dir():
                    real = os.path.realpath(entry.path)
                    if real not in seen:
                        seen.add(real)
                        stack.append(entry.path)
                    continue
                if not entry.is_file():
                    continue
                if os.path.splitext(entry.name)[1].lower() not in IMAGE_EXTENSIONS:
                    yield entry.path, rel, None
                else:
                    yield entry.path, rel, entry.stat().st_size
            except OSError:  # broken symlink, permission denied
                yield entry.path, rel, -1


def scan_folder(
    root: str | os.PathLike[str],
) -> tuple[list[Path], list[str], list[tuple[str, str]]]:
    """List the image files under a folder, recursively, sorted by relative path.

    Args:
        root: folder to scan.

    Returns:
        samples: image files (non-empty, extension in :data:`IMAGE_EXTENSIONS`).
        relative: their paths relative to ``root``, posix style, in the same order.
        skipped: ``(path, reason)`` for visible files that are not samples: ``'not_an_image'``
            (other extension), ``'zero_byte'`` (empty image file) or ``'unreadable'`` (cannot
            be listed or stat'ed).

    Raises:
        FileNotFoundError: if ``root`` is missing or not a directory.

    .. versionadded:: 0.1

    """
    root = Path(root)
    _check_dir(root)
    found: list[tuple[str, str]] = []
    skipped: list[tuple[str, str, str]] = []
    for path, rel, size in _walk(root):
        if size is None:
            skipped.append((rel, path, "not_an_image"))
        elif size == 0:
            skipped.append((rel, path, "zero_byte"))
        elif size < 0:
            skipped.append((rel, path, "unreadable"))
        else:
            found.append((rel, path))
    found.sort()
    skipped.sort()
    return (
        [Path(p) for _, p in found],
        [r for r, _ in found],
        [(p, reason) for _, p, reason in skipped],
    )


def check_image_root(root: str | os.PathLike[str]) -> Path:
    """Fail fast if a folder is missing or holds no image file (stops at the first one found).

    Args:
        root: folder that should contain images, at any depth.

    Returns:
        root as a :class:`~pathlib.Path`.

    Raises:
        FileNotFoundError: naming ``root`` (and the accepted extensions when it has no image).

    .. versionadded:: 0.1

    """
    root = Path(root)
    _check_dir(root)
    for _, _, size in _walk(root):
        if size is not None and size > 0:
            return root
    raise FileNotFoundError(
        f"No image files found under {root} (searched recursively for non-empty files with extensions {_accepted()})"
    )


def _check_fraction(val_fraction: float) -> None:
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")


def stratified_split(groups: Sequence[int], val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Split item positions into train and val, the same fraction from every group.

    Each group of ``n`` items sends ``round(n * val_fraction)`` of them (at most ``n - 1``, so
    every group keeps at least one training item) to val, chosen by a random generator seeded
    with ``(seed, group)``. The result depends only on the arguments: callers pass items in a
    canonical order (sorted by relative path), which makes the split independent of the file
    system, and adding a group does not change the split of the others.

    Args:
        groups: group id (e.g. class index) of each item.
        val_fraction: fraction of each group to hold out, 0 <= val_fraction < 1.
        seed: split seed.

    Returns:
        train: sorted positions into ``groups``.
        val: sorted positions into ``groups``; disjoint from train, together all positions.

    Raises:
        ValueError: if ``val_fraction`` is outside [0, 1).

    .. versionadded:: 0.1

    """
    _check_fraction(val_fraction)
    members: dict[int, list[int]] = {}
    for position, group in enumerate(groups):
        members.setdefault(int(group), []).append(position)
    val: list[int] = []
    if val_fraction > 0:
        for group in sorted(members):
            items = members[group]
            n_val = min(round(len(items) * val_fraction), len(items) - 1)
            if n_val <= 0:
                continue
            entropy = [seed & 0xFFFFFFFFFFFFFFFF, group & 0xFFFFFFFFFFFFFFFF]
            rng = np.random.default_rng(np.random.SeedSequence(entropy))
            chosen = rng.choice(len(items), size=n_val, replace=False)
            val.extend(items[i] for i in chosen)
    val.sort()
    val_set = set(val)
    train = [i for i in range(len(groups)) if i not in val_set]
    return train, val


def _sample_seed(seed: int, epoch: int, index: int) -> int:
    """Derive a 64-bit seed that is a pure function of (seed, epoch, index)."""
    digest = hashlib.blake2b(f"{seed}:{epoch}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


# ----------------------------------------------------------------------------------------------
# datasets
# ----------------------------------------------------------------------------------------------


class ImageFolder(Dataset[dict[str, Any]]):
    """Unlabeled images found recursively under a folder, e.g. a pretraining corpus.

    Files are scanned once (``os.scandir``, hidden entries ignored) and sorted by relative
    path. Files whose extension is not in :data:`~rsfm.data.io.IMAGE_EXTENSIONS` and empty
    image files are not samples; they are listed in :attr:`scan_skipped`. Files that fail to
    decode are found when read and returned as skipped items (see :meth:`__getitem__`).

    The train/val split is stratified by the file's parent folder relative to ``root`` (a flat
    folder is one group), so on a ``root/<class>/<file>`` tree it equals the split of
    :class:`LabeledImageFolder` with the same ``val_fraction`` and ``split_seed``.

    Attributes:
        root: the folder.
        samples: image files of this split.
        groups: group id of each sample (index of its parent folder among the sorted parent
            folders).
        scan_skipped: ``(path, reason)`` of files under root that are not samples (whole
            folder, not only this split).

    .. versionadded:: 0.1

    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str = "all",
        val_fraction: float = 0.0,
        split_seed: int = 0,
        transform: Callable[[Tensor], Tensor] | None = None,
        raster: RasterRule = RasterRule(),  # noqa: B008 (frozen, immutable)
        seed: int = 0,
    ) -> None:
        """Scan ``root`` and select a split.

        Args:
            root: folder of images, at any depth.
            split: ``'all'``, ``'train'`` or ``'val'``.
            val_fraction: fraction of each group held out as ``'val'``, 0 <= x < 1; must be
                positive for ``split='val'``.
            split_seed: seed of the split (keep it fixed across runs).
            transform: maps a (3, H, W) uint8 image to a float32 tensor; it must draw its
                randomness from torch's global RNG (as torchvision v2 transforms do).
            raster: how files become 3-band uint8 images, see :class:`RasterRule`.
            seed: augmentation seed.

        Raises:
            FileNotFoundError: if ``root`` is missing or contains no image file.
            ValueError: if ``split`` or ``val_fraction`` is invalid.

        """
        if split not in _SPLITS:
            raise ValueError(f"split must be one of {_SPLITS}, got {split!r}")
        _check_fraction(val_fraction)
        if split == "val" and val_fraction == 0:
            raise ValueError("split='val' needs val_fraction > 0 (val_fraction=0 puts every file in train)")
        self.root = Path(root)
        self.split = split
        self.val_fraction = val_fraction
        self.split_seed = split_seed
        self.transform = transform
        self.raster = raster
        self.seed = seed

        samples, relative, self.scan_skipped = scan_folder(self.root)
        if not samples:
            raise FileNotFoundError(
                f"No image files found under {self.root} (searched recursively for non-empty "
                f"files with extensions {_accepted()}; {len(self.scan_skipped)} other files)"
            )
        groups = self._make_groups(relative)
        if split == "all":
            keep = list(range(len(samples)))
        else:
            train, val = stratified_split(groups, val_fraction, split_seed)
            keep = train if split == "train" else val
        self.samples: list[Path] = [samples[i] for i in keep]
        self.groups: list[int] = [groups[i] for i in keep]

    def _make_groups(self, relative: list[str]) -> list[int]:
        parents = [rel.rpartition("/")[0] for rel in relative]
        ids = {parent: i for i, parent in enumerate(sorted(set(parents)))}
        return [ids[parent] for parent in parents]

    def __len__(self) -> int:
        """Return the number of samples in this split."""
        return len(self.samples)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        """Read, and augment, one sample.

        Args:
            key: an index, or ``(index, epoch)`` as yielded by
                :class:`~rsfm.data.datamodule.EpochSampler`; ``epoch`` defaults to 0.

        Returns:
            ``{'image': (3, H, W) float32, 'index': int}``; without a transform ``image`` is
            the file's pixels in [0, 1]. If the file cannot be read (any
            :class:`~rsfm.data.io.BadImageError`), ``{'skipped': (path, reason), 'index':
            int}`` instead: this method does not raise on bad files.

        Raises:
            IndexError: if the index is out of range.

        """
        index, epoch = self._parse_key(key)
        path = self.samples[index]
        try:
            image = read_image(path, self.raster)
        except BadImageError as err:
            return {"skipped": (str(path), err.reason), "index": index}
        except Exception as err:  # a decoder bug must not stop a long run
            log.warning("unexpected error reading %s: %r", path, err)
            return {"skipped": (str(path), "unreadable"), "index": index}
        return {"image": self._apply_transform(image, index, epoch), "index": index}

    def _parse_key(self, key: int | tuple[int, int]) -> tuple[int, int]:
        if isinstance(key, tuple | list):
            index, epoch = (operator.index(k) for k in key)
        else:
            index, epoch = operator.index(key), 0
        n = len(self.samples)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} samples")
        return index % n, epoch

    def _apply_transform(self, image: Tensor, index: int, epoch: int) -> Tensor:
        if self.transform is None:
            return image.to(torch.float32).div_(255.0)
        # the augmentation depends on (seed, epoch, index) only, not on the worker, the number
        # of workers or what ran before; the caller's RNG state is restored afterwards
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_sample_seed(self.seed, epoch, index))
            return self.transform(image)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(root={str(self.root)!r}, split={self.split!r}, "
            f"samples={len(self)}, scan_skipped={len(self.scan_skipped)})"
        )


class LabeledImageFolder(ImageFolder):
    """Images in class folders: ``root/<class>/**/<file>``, class = first-level folder.

    Same arguments, scanning, skipping, split and augmentation rules as :class:`ImageFolder`;
    the split is stratified by class. Items also carry ``'label': int`` (skipped items too, so
    a batch of only skipped items still has an empty ``'label'`` tensor). An image directly in
    ``root`` (no class folder) raises :class:`ValueError`.

    Attributes:
        classes: sorted names of the first-level folders that contain at least one image.

    .. versionadded:: 0.1

    """

    classes: list[str]

    @property
    def targets(self) -> list[int]:
        """Class index of each sample of this split (the same list as ``groups``)."""
        return self.groups

    def _make_groups(self, relative: list[str]) -> list[int]:
        names = []
        for rel in relative:
            name, sep, _ = rel.partition("/")
            if not sep:
                raise ValueError(
                    f"Image {self.root / rel} lies directly in {self.root}; a labeled folder "
                    "expects root/<class>/<image> (move it into a class folder or remove it)"
                )
            names.append(name)
        self.classes = sorted(set(names))
        ids = {name: i for i, name in enumerate(self.classes)}
        return [ids[name] for name in names]

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        """Read, and augment, one sample.

        Args:
            key: an index, or ``(index, epoch)``.

        Returns:
            ``{'image': (3, H, W) float32, 'label': int, 'index': int}``, or for an unreadable
            file ``{'skipped': (path, reason), 'label': int, 'index': int}``.

        Raises:
            IndexError: if the index is out of range.

        """
        item = super().__getitem__(key)
        item["label"] = self.targets[item["index"]]
        return item


# ----------------------------------------------------------------------------------------------
# batching and accounting
# ----------------------------------------------------------------------------------------------


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
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    def __repr__(self) -> str:
        return f"SkipReport({self.summary()})"


def _gather(report: SkipReport) -> SkipReport:
    """Merge the reports of all ranks (identity when not distributed)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return report
    parts: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, report.to_dict())
    merged = SkipReport()
    for part in parts:
        merged.merge(part)
    return merged


class SkipReportCallback(pl.Callback):
    """Count the files skipped during a fit and report them at the end.

    Seeded at ``setup`` with ``trainer.datamodule.scan_skipped`` (files that were never
    samples), it adds ``batch['skipped']`` of every train and validation batch (batches from
    :func:`collate_skipping`). At the end of ``fit`` the reports of all ranks are merged,
    rank 0 prints a one-line summary (``'3 files skipped: 2 truncated, 1 zero_byte'`` or
    ``'no files skipped'``) and writes ``skipped_files.json`` into ``trainer.log_dir`` (or
    ``trainer.default_root_dir``). The report is saved in checkpoints, so a resumed run keeps
    its counts.

    Attributes:
        report: the :class:`SkipReport` of this rank (all ranks after ``fit``).
        path: the JSON file written, once written.

    .. versionadded:: 0.1

    """

    def __init__(
        self,
        filename: str = "skipped_files.json",
        scan_skipped: Iterable[Sequence[str]] = (),
    ) -> None:
        """Create the callback.

        Args:
            filename: name of the JSON file written at the end of fit.
            scan_skipped: extra ``(path, reason)`` pairs to seed the report with.

        """
        self.filename = filename
        self.report = SkipReport(scan_skipped)
        self.path: Path | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Seed the report with the datamodule's scan-time skips."""
        datamodule = getattr(trainer, "datamodule", None)
        self.report.add(getattr(datamodule, "scan_skipped", None) or ())

    def _add_batch(self, batch: Any) -> None:
        if isinstance(batch, Mapping) and batch.get("skipped"):
            self.report.add(batch["skipped"])

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        """Record the batch's skipped files."""
        self._add_batch(batch)

    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Record the batch's skipped files."""
        self._add_batch(batch)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Merge the reports of all ranks; rank 0 prints the summary and writes the JSON."""
        self.report = _gather(self.report)
        log_dir = trainer.log_dir or trainer.default_root_dir  # log_dir: call on all ranks
        if trainer.is_global_zero:
            print(self.report.summary())
            self.path = self.report.write_json(Path(log_dir) / self.filename)

    def state_dict(self) -> dict[str, Any]:
        """Return the report, saved in checkpoints."""
        return self.report.to_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the report from a checkpoint."""
        self.report.merge(state_dict)
