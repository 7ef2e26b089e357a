"""GeRSP's data: unlabeled RS images paired with labeled natural images.

Huang et al., "Generic Knowledge Boosted Pre-training For Remote Sensing Images", IEEE TGRS
2024, arXiv 2401.04614.

Each item pairs two augmented views of an RS image (the student's query and the teacher's
key) with one labeled natural image, both domains augmented as MoCo v1. The shorter set wraps
around, so an epoch is one pass over the longer one.

.. versionadded:: 0.2
.. versionchanged:: 0.3
    The RS side may be a sharded corpus (``data.shards``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from rsfm.data.folder import ImageFolder, LabeledImageFolder
from rsfm.data.folder_base import FolderDataModule, combine_skipped, list_classes, open_source
from rsfm.data.shards import ShardDataset
from rsfm.data.transforms import check_scale
from rsfm.utils.errors import DataError
from rsfm.utils.registry import DATASETS

__all__ = ["PairedDataModule", "PairedDataset", "TwoViews", "natural_classes"]

#: offset of the natural images' augmentation seed, so the two domains draw independently
_NATURAL_SEED_OFFSET = 1_000_003


class TwoViews:
    """Apply a random transform twice: ``(3, H, W)`` → ``(2, 3, S, S)`` (query, key views)."""

    def __init__(self, transform: Callable[[Tensor], Tensor]) -> None:
        """Wrap ``transform``."""
        self.transform = transform

    def __call__(self, image: Tensor) -> Tensor:
        """Return two independent augmentations of ``image``, stacked."""
        return torch.stack([self.transform(image), self.transform(image)])


def natural_classes(root: str | os.PathLike[str] | None) -> list[str]:
    """Class folders of a natural-image set in ImageNet layout (``root/<class>/<image>``).

    Raises:
        DataError: naming ``data.natural_root``, if ``root`` is None, missing, has no class
            folder with images, or has empty class folders.
    """
    if root is None or str(root) == "":
        raise DataError(
            "data.natural_root is required: natural images in ImageNet layout <root>/<class>/<image> "
            "(e.g. ../shared/datasets/cifar10/train)"
        )
    root = Path(root)
    if not root.is_dir():
        raise DataError(
            f"data.natural_root: folder not found: {root} (expected ImageNet layout <root>/<class>/<image>, "
            "e.g. ../shared/datasets/cifar10/train)"
        )
    classes = list_classes(root)
    if not classes:
        raise DataError(
            f"data.natural_root: no class folder with images under {root} (expected <root>/<class>/<image>)"
        )
    empty = sorted(
        e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith(".") and e.name not in classes
    )
    if empty:
        raise DataError(
            f"data.natural_root: class folders without images under {root}: {empty[:5]}"
            f"{' ...' if len(empty) > 5 else ''} (they would be classes with no sample; remove them or add images)"
        )
    return classes


class PairedDataset(Dataset[dict[str, Any]]):
    """Items pairing two views of an RS image with a labeled natural image.

    Item ``i`` takes RS image ``i mod n_rs`` and natural image ``i mod n_nat``; the length is
    ``max(n_rs, n_nat)``. A wrapped-around repeat gets its own augmentation: the folders are
    read with key ``(i mod n, epoch · ⌈N / n⌉ + ⌊i / n⌋)``, so augmentation remains a pure
    function of ``(seed, epoch, i)``.

    Args:
        rs: unlabeled RS images (a folder or a corpus) whose transform returns
            ``(2, 3, S, S)`` (see :class:`TwoViews`).
        natural: labeled natural images whose transform returns ``(3, S, S)``.
    """

    takes_keys = True

    def __init__(self, rs: ImageFolder | ShardDataset, natural: LabeledImageFolder) -> None:
        """Pair ``rs`` and ``natural``."""
        if len(rs) == 0 or len(natural) == 0:
            raise ValueError(f"both sets need images, got {len(rs)} RS and {len(natural)} natural")
        self.rs = rs
        self.natural = natural

    def __len__(self) -> int:
        """Length of the longer set."""
        return max(len(self.rs), len(self.natural))

    def _key(self, i: int, epoch: int, n: int) -> tuple[int, int]:
        return i % n, epoch * math.ceil(len(self) / n) + i // n

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        """Read item ``key`` (an index or ``(index, epoch)`` from an EpochSampler).

        Returns:
            ``{'image': (3, S, S) float32 query view, 'image_key': (3, S, S) float32 key view,
            'natural': (3, S, S) float32 (all in [0, 1]), 'natural_label': int, 'index': int}``, or, when either
            file cannot be read, ``{'skipped': (path, reason), 'index': int}`` (the first bad
            file; the item is dropped by :func:`~rsfm.data.skips.collate_skipping`). When the
            RS side is a corpus, both forms also carry ``'id': int``, the RS tile's global id.

        Raises:
            IndexError: if the index is out of range.
        """
        i, epoch = (int(key[0]), int(key[1])) if isinstance(key, tuple | list) else (int(key), 0)
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} paired items")
        rs = self.rs[self._key(i, epoch, len(self.rs))]
        ids = {"id": rs["id"]} if "id" in rs else {}
        if "skipped" in rs:
            return {"skipped": rs["skipped"], "index": i, **ids}
        nat = self.natural[self._key(i, epoch, len(self.natural))]
        if "skipped" in nat:
            return {"skipped": nat["skipped"], "index": i, **ids}
        views = rs["image"]
        return {
            "image": views[0],
            "image_key": views[1],
            "natural": nat["image"],
            "natural_label": nat["label"],
            "index": i,
            **ids,
        }


@DATASETS.register
class PairedDataModule(FolderDataModule):
    """RS folder (``root``) or corpus (``shards``) paired with a natural-image folder (``natural_root``), for GeRSP.

    Batches (:func:`~rsfm.data.skips.collate_skipping`): ``{'image': (B, 3, S, S)``,
    ``'image_key': (B, 3, S, S)``, ``'natural': (B, 3, S, S)`` float32 in [0, 1],
    ``'natural_label': (B,) int64``, ``'index': (B,) int64``, ``'skipped': list[(path,
    reason)]}``, ``B <= batch_size``, plus ``'id': (B,) int64`` (the RS tiles' global ids)
    with ``shards``. Both domains are normalised with the same ``mean``/``std`` in the model.

    Args:
        root: RS images, at any depth (sub-folders stratify the held-out split); None with
            ``shards``.
        natural_root: natural images, ``<natural_root>/<class>/<image>`` (an ImageNet train
            folder; ``../shared/datasets/cifar10/train`` on a CPU).
        scale: crop area range of the random resized crop.
        batch_size: pairs per batch and device (B RS images → 2B views, B natural images).
        shards: folder or ``s3://``/``gs://``/``azure://`` URL of a 3-band corpus written by
            ``rsfm curate`` (see :mod:`rsfm.data.shards`), instead of ``root``.
        **kwargs: :class:`~rsfm.data.folder_base.FolderDataModule` options. ``bands`` and
            ``raster_scale`` apply to the RS images only; natural images are read with the
            default rule (RGB as stored).

    Raises:
        DataError: if a folder is missing or holds no image, naming it; if both or neither
            of ``root`` and ``shards`` are given, or the corpus is missing (naming
            ``data.shards``); if ``bands`` picks, or the corpus has, other than 3 bands (the
            augmentation and the natural images are RGB).
        ValueError: on an out-of-range setting.

    .. versionadded:: 0.2
    .. versionchanged:: 0.3
        ``shards``; ``root`` and ``natural_root`` are keywords with defaults (both still needed).
    .. versionchanged:: 0.3.6
        The natural images no longer get the RS band rule (``bands=[3, 2, 1]`` skipped every
        one of them, ``bands=[2, 1, 0]`` swapped their colours).
    """

    sample_keys = ("image", "image_key", "natural", "natural_label")
    reads_shards = True

    def __init__(
        self,
        root: str | None = None,
        natural_root: str | None = None,
        scale: list[float] = [0.2, 1.0],  # noqa: B006 (never mutated)
        batch_size: int = 32,
        shards: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(open_source(root, shards), batch_size=batch_size, **kwargs)
        if self.num_channels != 3:
            key = "data.bands" if self.corpus is None else f"data.shards ({self.corpus.location})"
            raise DataError(
                f"{key}: GeRSP's augmentation (colour jitter, grayscale) and its natural images are RGB; "
                f"got {self.num_channels} bands, expected 3"
            )
        self.classes = natural_classes(natural_root)
        self.natural_root = Path(str(natural_root))
        self.scale = check_scale(scale)

    def setup(self, stage: str | None = None) -> None:
        """Scan both folders (or the RS corpus's manifest) and build the paired training set, once.

        Raises:
            DataError: if the natural classes changed since construction.
        """
        if self.datasets:
            return
        from rsfm.data.transforms import moco_v1_transform

        transform = moco_v1_transform(self.img_size, self.scale)
        rs = self.folder(ImageFolder, False, TwoViews(transform))
        # the RS rule (bands, raster_scale) describes the RS files only: natural images are RGB
        natural = LabeledImageFolder(self.natural_root, transform=transform, seed=self.seed + _NATURAL_SEED_OFFSET)
        if natural.classes != self.classes:
            raise DataError(f"data.natural_root changed while loading: classes {natural.classes} != {self.classes}")
        self.datasets["train"] = PairedDataset(rs, natural)

    def val_dataloader(self) -> Any:
        """No validation during pretraining."""
        return []

    @property
    def scan_skipped(self) -> list[tuple[str, str]]:
        """``(path, reason)`` of files under either root that are not samples (after setup)."""
        ds = self.datasets.get("train")
        if ds is None:
            return []
        return combine_skipped(ds.rs, ds.natural)
