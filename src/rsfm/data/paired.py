"""Paired RS + natural-image data for GeRSP (METHODS.md §3).

Each item pairs two augmented views of one unlabeled remote-sensing image with one labeled
natural image. An epoch has as many items as the longer of the two sets; the shorter one
wraps around (index modulo its length), and each wrap gets fresh augmentation. Both domains
use MoCo v1's augmentation (:func:`moco_v1_transform`).

The RS folder is split like :class:`~rsfm.data.datamodule.PretrainDataModule` (stratified by
sub-folder, ``holdout_fraction`` and ``split_seed``), so the held-out split that evaluation
scores is never pretrained on. The natural folder uses ImageNet's layout,
``<natural_root>/<class>/<image>``; all of it trains.

.. versionadded:: 0.2
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset
from torchdata.stateful_dataloader import StatefulDataLoader
from torchvision.transforms import v2

from .datamodule import _check_fraction, _combine_skipped, _FolderDataModule, _list_classes
from .folder import ImageFolder, LabeledImageFolder
from .io import RasterRule
from .transforms import IMAGENET_MEAN, IMAGENET_STD, _normalise

__all__ = ["PairedDataModule", "PairedDataset", "TwoViews", "moco_v1_transform", "natural_classes"]

#: offset of the natural images' augmentation seed, so the two domains draw independently
_NATURAL_SEED_OFFSET = 1_000_003


def moco_v1_transform(
    img_size: int,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    scale: tuple[float, float] = (0.2, 1.0),
) -> Callable[[Tensor], Tensor]:
    """MoCo v1's augmentation (He et al., CVPR 2020, §4.1), used by GeRSP for both domains.

    Random resized crop (area ``scale``), grayscale with p 0.2, colour jitter 0.4
    (brightness, contrast, saturation, hue), horizontal flip, normalise.

    Returns:
        a callable mapping (3, H, W) uint8 to (3, img_size, img_size) float32, normalised.

    Raises:
        ValueError: if ``scale`` is out of range or ``mean``/``std`` do not have 3 values.
    """
    if not 0 < scale[0] <= scale[1] <= 1:
        raise ValueError(f"scale must satisfy 0 < min <= max <= 1, got {scale}")
    return v2.Compose(
        [
            v2.RandomResizedCrop(img_size, scale=scale, antialias=True),
            v2.RandomGrayscale(p=0.2),
            v2.ColorJitter(0.4, 0.4, 0.4, 0.4),
            v2.RandomHorizontalFlip(),
            *_normalise(mean, std),
        ]
    )


class TwoViews:
    """Apply a random transform twice: ``(3, H, W)`` → ``(2, 3, S, S)`` (query, key views)."""

    def __init__(self, transform: Callable[[Tensor], Tensor]) -> None:
        """Wrap ``transform``."""
        self.transform = transform

    def __call__(self, image: Tensor) -> Tensor:
        """Return two independent augmentations of ``image``, stacked."""
        return torch.stack([self.transform(image), self.transform(image)])


def natural_classes(root: str | os.PathLike[str]) -> list[str]:
    """Class folders of a natural-image set in ImageNet layout (``root/<class>/<image>``).

    Raises:
        FileNotFoundError: if ``root`` is missing, naming ``data.natural_root``.
        ValueError: if it has no class folder with images, or has empty class folders.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(
            f"data.natural_root: folder not found: {root} (expected ImageNet layout <root>/<class>/<image>, "
            "e.g. ../shared/datasets/cifar10/train)"
        )
    classes = _list_classes(root)
    if not classes:
        raise ValueError(
            f"data.natural_root: no class folder with images under {root} (expected <root>/<class>/<image>)"
        )
    empty = sorted(
        e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith(".") and e.name not in classes
    )
    if empty:
        raise ValueError(
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
        rs: unlabeled RS images whose transform returns ``(2, 3, S, S)`` (see :class:`TwoViews`).
        natural: labeled natural images whose transform returns ``(3, S, S)``.
    """

    def __init__(self, rs: ImageFolder, natural: LabeledImageFolder) -> None:
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
            'natural': (3, S, S) float32, 'natural_label': int, 'index': int}``, or, when either
            file cannot be read, ``{'skipped': (path, reason), 'index': int}`` (the first bad
            file; the item is dropped by :func:`~rsfm.data.folder.collate_skipping`).

        Raises:
            IndexError: if the index is out of range.
        """
        i, epoch = (int(key[0]), int(key[1])) if isinstance(key, tuple | list) else (int(key), 0)
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} paired items")
        rs = self.rs[self._key(i, epoch, len(self.rs))]
        if "skipped" in rs:
            return {"skipped": rs["skipped"], "index": i}
        nat = self.natural[self._key(i, epoch, len(self.natural))]
        if "skipped" in nat:
            return {"skipped": nat["skipped"], "index": i}
        views = rs["image"]
        return {
            "image": views[0],
            "image_key": views[1],
            "natural": nat["image"],
            "natural_label": nat["label"],
            "index": i,
        }


class PairedDataModule(_FolderDataModule):
    """GeRSP's data: RS folder (``root``) paired with a natural-image folder (``natural_root``).

    Batches (from :func:`~rsfm.data.folder.collate_skipping`): ``{'image': (B, 3, S, S)``,
    ``'image_key': (B, 3, S, S)``, ``'natural': (B, 3, S, S)`` float32 normalised,
    ``'natural_label': (B,) int64``, ``'index': (B,) int64``, ``'skipped': list[(path,
    reason)]}``, B <= batch_size. The loader is a
    :class:`~torchdata.stateful_dataloader.StatefulDataLoader` over an
    :class:`~rsfm.data.datamodule.EpochSampler` (mid-epoch resume, sharding across ranks).

    .. versionadded:: 0.2
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        natural_root: str | os.PathLike[str],
        img_size: int = 224,
        batch_size: int = 32,
        num_workers: int = 4,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        holdout_fraction: float = 0.0,
        split_seed: int = 0,
        seed: int = 0,
        scale: tuple[float, float] = (0.2, 1.0),
        raster: RasterRule = RasterRule(),  # noqa: B008 (frozen, immutable)
        pin_memory: bool = True,
    ) -> None:
        """Check both folders, list the natural classes and store the settings.

        Args:
            root: RS images, at any depth (sub-folders stratify the held-out split).
            natural_root: natural images, ``<natural_root>/<class>/<image>``.
            img_size: side of the crops in pixels (both domains).
            batch_size: pairs per batch and rank (B RS images → 2B views, B natural images).
            num_workers: loader worker processes.
            mean: per-channel mean of images in [0, 1] (both domains).
            std: per-channel std of images in [0, 1].
            holdout_fraction: RS share held out of training, per sub-folder, 0 <= x < 1.
            split_seed: seed of the held-out split.
            seed: seed of the order and the augmentation.
            scale: crop area range of the random resized crop.
            raster: how RS files become 3-band uint8 images.
            pin_memory: pin batches when CUDA is available.

        Raises:
            FileNotFoundError: if a folder is missing or holds no image, naming it.
            ValueError: on an out-of-range setting or natural class folders without images.
        """
        _check_fraction(holdout_fraction, "holdout_fraction")
        super().__init__(root, img_size, batch_size, num_workers, mean, std, split_seed, seed, raster, pin_memory)
        self.natural_root = Path(natural_root)
        self.classes = natural_classes(self.natural_root)
        self.holdout_fraction = holdout_fraction
        self.scale = tuple(scale)
        self.train_dataset: PairedDataset | None = None

    @property
    def num_classes(self) -> int:
        """Number of natural-image classes."""
        return len(self.classes)

    def setup(self, stage: str | None = None) -> None:
        """Scan both folders and build the paired training set, once."""
        if self.train_dataset is not None:
            return
        transform = moco_v1_transform(self.img_size, self.mean, self.std, self.scale)
        rs = self._dataset(ImageFolder, False, self.holdout_fraction, TwoViews(transform))
        natural = LabeledImageFolder(
            self.natural_root, transform=transform, raster=self.raster, seed=self.seed + _NATURAL_SEED_OFFSET
        )
        if natural.classes != self.classes:
            raise ValueError(f"data.natural_root changed while loading: classes {natural.classes} != {self.classes}")
        self.train_dataset = PairedDataset(rs, natural)

    def train_dataloader(self) -> StatefulDataLoader:
        """Build the loader of this rank; ranks are equalised by dropping, as is the last short batch."""
        if self.train_dataset is None:
            self.setup("fit")
        assert self.train_dataset is not None
        return self._loader(self.train_dataset, shuffle=True, drop_last=True, drop_last_batch=True)  # type: ignore[arg-type]

    @property
    def scan_skipped(self) -> list[tuple[str, str]]:
        """``(path, reason)`` of files under either root that are not samples (after setup)."""
        if self.train_dataset is None:
            return []
        return _combine_skipped(self.train_dataset.rs, self.train_dataset.natural)
