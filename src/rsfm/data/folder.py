"""Folder-of-images datasets that never crash on a bad file.

:class:`ImageFolder` (unlabeled, recursive) and :class:`LabeledImageFolder` (class = first-level
sub-folder) return ``{'image', 'index'[, 'label']}`` dicts, or ``{'skipped': (path, reason),
'index'}`` for a file that cannot be read; :func:`rsfm.data.skips.collate_skipping` drops the
latter from the batch and lists them under ``'skipped'``.

Random augmentation is a pure function of ``(seed, epoch, index)``, so a run is reproducible
whatever the number of workers and can be resumed mid-epoch bit for bit.

.. versionadded:: 0.1
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from rsfm.utils.errors import DataError

from .device_decode import DeferredAugment, deferred_item, is_jpeg
from .io import IMAGE_EXTENSIONS, BadImageError, RasterRule, decode_image, read_image
from .samplers import parse_key, sample_seed
from .splits import check_fraction, stratified_split

__all__ = ["ImageFolder", "LabeledImageFolder", "check_distinct_classes", "check_image_root", "scan_folder"]

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
    Folders that cannot be listed, broken symlinks and files that cannot be stat'ed are yielded
    with size -1 (counted as unreadable).
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
                    if entry.is_symlink():  # a link whose target is missing
                        yield entry.path, rel, -1
                    continue
                if os.path.splitext(entry.name)[1].lower() not in IMAGE_EXTENSIONS:
                    yield entry.path, rel, None
                else:
                    yield entry.path, rel, entry.stat().st_size
            except OSError:  # broken symlink, permission denied
                yield entry.path, rel, -1


def check_distinct_classes(root: str | os.PathLike[str]) -> None:
    """Refuse two first-level (class) folders of ``root`` that are the same directory.

    A symlinked alias of a class folder (``Airport_alias -> Airport``) would otherwise make the
    class list of the data module (every visible folder) and the scanned samples (each real
    folder once) disagree, shifting class names.

    Args:
        root: a labeled folder, ``root/<class>/...``.

    Raises:
        DataError: naming both folders, if two visible class folders resolve to the same
            directory.
    """
    first: dict[str, str] = {}
    with os.scandir(root) as it:
        entries = sorted(it, key=lambda e: e.name)
    for entry in entries:
        if entry.name.startswith(".") or not entry.is_dir():
            continue
        real = os.path.realpath(entry.path)
        if real in first:
            raise DataError(
                f"class folders {first[real]} and {entry.path} are the same directory ({real}); each class "
                "needs its own folder (remove the symlinked alias, or copy the images if both classes are meant)"
            )
        first[real] = entry.path


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


# ----------------------------------------------------------------------------------------------
# datasets
# ----------------------------------------------------------------------------------------------


class ImageFolder(Dataset[dict[str, Any]]):
    """Unlabeled images found recursively under a folder, e.g. a pretraining corpus.

    Files are scanned once (``os.scandir``, hidden entries ignored) and sorted by relative
    path. Files whose extension is not in :data:`~rsfm.data.io.IMAGE_EXTENSIONS` and empty
    image files are not samples; they are listed in :attr:`scan_skipped`. Files that fail to
    decode are found when read and returned as skipped items (see :meth:`__getitem__`).

    Each file belongs to the group named by the first component of its path below ``root``
    (``root/<group>/**/<file>``; files directly in ``root`` form the group ``''``, so a flat
    folder is one group). The train/val split is :func:`~rsfm.data.splits.stratified_split`
    over these groups: ``val_fraction`` of each group, chosen by a generator seeded from
    ``split_seed`` and the group's name. So on a tree without files directly in ``root`` it is
    the split of :class:`LabeledImageFolder` with the same ``val_fraction`` and ``split_seed``,
    at any depth (an encoder pretrained on the ``'train'`` split never saw a file of the
    labeled ``'val'`` split), and adding, removing or changing one group's files does not
    change which files of the other groups are held out.

    Attributes:
        root: the folder.
        samples: image files of this split.
        group_names: sorted names of the groups of the whole folder (``''`` for files
            directly in ``root``).
        groups: group of each sample, as its index in ``group_names``.
        scan_skipped: ``(path, reason)`` of files under root that are not samples (whole
            folder, not only this split).

    .. versionadded:: 0.1

    """

    #: reads ``(index, epoch)`` keys and seeds its own augmentation (no KeyedDataset needed)
    takes_keys = True

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
        check_fraction(val_fraction)
        if split == "val" and val_fraction == 0:
            raise ValueError("split='val' needs val_fraction > 0 (val_fraction=0 puts every file in train)")
        self.root = Path(root)
        self.split = split
        self.val_fraction = val_fraction
        self.split_seed = split_seed
        self.transform = transform
        self.raster = raster
        self.seed = seed

        self._check_root()
        samples, relative, self.scan_skipped = scan_folder(self.root)
        if not samples:
            raise FileNotFoundError(
                f"No image files found under {self.root} (searched recursively for non-empty "
                f"files with extensions {_accepted()}; {len(self.scan_skipped)} other files)"
            )
        names = [self._group_name(rel) for rel in relative]
        self.group_names: list[str] = sorted(set(names))
        ids = {name: i for i, name in enumerate(self.group_names)}
        if split == "all":
            keep = list(range(len(samples)))
        else:
            train, val = stratified_split(names, val_fraction, split_seed)
            keep = train if split == "train" else val
        self.samples: list[Path] = [samples[i] for i in keep]
        self.groups: list[int] = [ids[names[i]] for i in keep]

    def _check_root(self) -> None:
        """Checks of the folder's layout before it is scanned (none for unlabeled folders)."""

    def _group_name(self, relative: str) -> str:
        """Group of a file: the first component of its relative path, ``''`` directly in root."""
        name, sep, _ = relative.partition("/")
        return name if sep else ""

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
            the file's pixels in [0, 1]. With a :class:`~rsfm.data.device_decode.DeferredAugment`
            transform (``data.decode: device``), ``{'raw', 'params', 'name', 'index'}``
            instead: a JPEG's undecoded bytes or another file's decoded pixels, and the drawn
            crop and flips (see :mod:`rsfm.data.device_decode`). If the file cannot be read (any
            :class:`~rsfm.data.io.BadImageError`), ``{'skipped': (path, reason), 'index':
            int}`` instead: this method does not raise on bad files.

        Raises:
            IndexError: if the index is out of range.

        """
        index, epoch = parse_key(key, len(self.samples))
        path = self.samples[index]
        data: bytes | None = None
        if isinstance(self.transform, DeferredAugment) and self.raster.bands is None and is_jpeg(path):
            try:
                data = path.read_bytes()
            except OSError:
                return {"skipped": (str(path), "unreadable"), "index": index}
            deferred = deferred_item(self.transform, data, str(path), self.seed, epoch, index)
            if deferred is not None:
                return {**deferred, "index": index}
        try:
            image = read_image(path, self.raster) if data is None else decode_image(data, str(path), self.raster)
        except BadImageError as err:
            return {"skipped": (str(path), err.reason), "index": index}
        except Exception as err:  # a decoder bug must not stop a long run
            log.warning("unexpected error reading %s: %r", path, err)
            return {"skipped": (str(path), "unreadable"), "index": index}
        out = self._apply_transform(image, index, epoch)
        if isinstance(out, dict):  # device-side augmentation: the image travels decoded, uncropped
            return {**out, "name": str(path), "index": index}
        return {"image": out, "index": index}

    def _apply_transform(self, image: Tensor, index: int, epoch: int) -> Tensor:
        if self.transform is None:
            return image.to(torch.float32).div_(255.0)
        # the augmentation depends on (seed, epoch, index) only, not on the worker, the number
        # of workers or what ran before; the caller's RNG state is restored afterwards
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(sample_seed(self.seed, epoch, index))
            return self.transform(image)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(root={str(self.root)!r}, split={self.split!r}, "
            f"samples={len(self)}, scan_skipped={len(self.scan_skipped)})"
        )


class LabeledImageFolder(ImageFolder):
    """Images in class folders: ``root/<class>/**/<file>``, class = first-level folder.

    Same arguments, scanning, skipping, split and augmentation rules as :class:`ImageFolder`,
    whose groups are the classes here: the split is stratified by class, and each class's
    held-out files are those :class:`ImageFolder` holds out on the same folder. Items also
    carry ``'label': int`` (skipped items too, so a batch of only skipped items still has an
    empty ``'label'`` tensor). An image directly in ``root`` (no class folder) raises
    :class:`ValueError`; two class folders that are the same directory (a symlinked alias)
    raise :class:`~rsfm.utils.errors.DataError`, naming both.

    .. versionadded:: 0.1

    """

    @property
    def classes(self) -> list[str]:
        """Sorted names of the first-level folders that contain at least one image (``group_names``)."""
        return self.group_names

    @property
    def targets(self) -> list[int]:
        """Class index of each sample of this split (the same list as ``groups``)."""
        return self.groups

    def _check_root(self) -> None:
        if self.root.is_dir():
            check_distinct_classes(self.root)

    def _group_name(self, relative: str) -> str:
        name, sep, _ = relative.partition("/")
        if not sep:
            raise ValueError(
                f"Image {self.root / relative} lies directly in {self.root}; a labeled folder "
                "expects root/<class>/<image> (move it into a class folder or remove it)"
            )
        return name

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
