"""The shared part of the datamodules over image folders (pretraining, scene classification).

.. versionadded:: 0.2
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rsfm.data.base import DataInfo, DataModule, check_folder
from rsfm.data.folder import ImageFolder, check_image_root
from rsfm.data.io import IMAGE_EXTENSIONS
from rsfm.data.skips import collate_skipping
from rsfm.data.splits import check_fraction
from rsfm.utils.errors import DataError

__all__ = ["FolderDataModule", "combine_skipped", "list_classes", "round_robin"]


def list_classes(root: Path) -> list[str]:
    """Class folders (first level, visible, holding an image) of a labeled tree.

    Raises:
        DataError: if an image lies directly in ``root`` (it would have no class).
    """
    classes = []
    with os.scandir(root) as it:
        entries = sorted(it, key=lambda e: e.name)
    for entry in entries:
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            try:
                check_image_root(entry.path)
            except FileNotFoundError:
                continue
            classes.append(entry.name)
        elif (
            entry.is_file() and os.path.splitext(entry.name)[1].lower() in IMAGE_EXTENSIONS and entry.stat().st_size > 0
        ):
            raise DataError(
                f"image {entry.path} lies directly in {root}; a labeled folder expects "
                "root/<class>/<image> (move it into a class folder or remove it)"
            )
    return classes


def round_robin(groups: Sequence[int]) -> list[int]:
    """Positions of ``groups`` taking the first item of every group, then the second, and so on."""
    taken: dict[int, int] = {}
    rank = []
    for group in groups:
        rank.append(taken.get(group, 0))
        taken[group] = rank[-1] + 1
    return sorted(range(len(groups)), key=lambda i: (rank[i], groups[i]))


def combine_skipped(*datasets: ImageFolder | None) -> list[tuple[str, str]]:
    """``(path, reason)`` of the scan-time skips of several folder datasets, without repeats."""
    seen: dict[str, str] = {}
    for dataset in datasets:
        if dataset is not None:
            for path, reason in dataset.scan_skipped:
                seen.setdefault(path, reason)
    return list(seen.items())


class FolderDataModule(DataModule):
    """Settings and datasets shared by the datamodules over an image folder.

    The held-out split (``test_fraction`` of every first-level sub-folder, stratified, each
    sub-folder's share chosen by ``split_seed`` and the sub-folder's name; see
    :class:`~rsfm.data.folder.ImageFolder`) is the same set of files in pretraining,
    scene-classification fine-tuning and ``rsfm evaluate``: an encoder pretrained on a folder
    never sees the images it is tested on.

    Args:
        root: folder of images, at any depth (class = first-level folder where it matters).
        img_size: side of the images fed to the model, pixels.
        test_fraction: share of each first-level sub-folder held out, 0 <= x < 1.
        split_seed: seed of that split (keep it fixed across runs).
        batch_size: images per batch and device.
        num_workers: loader processes.
        bands: 0-based bands of the image files (any number); None: RGB.
        raster_scale: ``"auto"`` or a divisor (see :class:`~rsfm.data.io.RasterRule`).
        mean: per-band mean of images in [0, 1] (None: ImageNet's, for RGB).
        std: per-band std, likewise.
        seed: seed of the training order and of the augmentation (None: the run's ``seed``).
        pin_memory: pin batches when CUDA is available.

    Raises:
        DataError: if ``root`` is missing or holds no image (naming ``data.root``), or the
            statistics do not fit the bands.
        ValueError: on an out-of-range setting.
    """

    #: class names of a labeled folder (None: unlabeled)
    classes: list[str] | None = None

    def __init__(
        self,
        root: str,
        img_size: int = 224,
        test_fraction: float = 0.2,
        split_seed: int = 0,
        batch_size: int = 64,
        num_workers: int = 2,
        bands: list[int] | None = None,
        raster_scale: str | float = "auto",
        mean: list[float] | None = None,
        std: list[float] | None = None,
        seed: int | None = None,
        pin_memory: bool = True,
    ) -> None:
        super().__init__(batch_size, batch_size, num_workers, seed, pin_memory)
        check_folder(root)
        try:
            self.root = check_image_root(root)
        except FileNotFoundError as err:
            raise DataError(f"data.root: {err}") from None
        check_fraction(test_fraction, "data.test_fraction")
        self.img_size = int(img_size)
        self.test_fraction = float(test_fraction)
        self.split_seed = int(split_seed)
        self.set_bands(bands, raster_scale, mean, std)

    @property
    def num_classes(self) -> int:
        """Number of classes (0 for an unlabeled folder)."""
        return len(self.classes or [])

    def info(self) -> DataInfo:
        """Classes (where the subclass has them), bands and normalisation."""
        return DataInfo(
            classes=list(self.classes or []),
            num_channels=self.num_channels,
            mean=self.mean,
            std=self.std,
            sample_keys=self.sample_keys,
            img_size=self.img_size,
            bands=list(self.raster.bands) if self.raster.bands is not None else None,
            raster_scale=self.raster.scale,
        )

    def collate(self) -> Any:
        """Set unreadable files aside (:func:`~rsfm.data.skips.collate_skipping`)."""
        return collate_skipping

    def folder(self, cls: type[Any], held_out: bool, transform: Any, fraction: float | None = None) -> Any:
        """The held-out split of ``root``, or the rest (everything when the fraction is 0)."""
        fraction = self.test_fraction if fraction is None else fraction
        split = "val" if held_out else "train" if fraction > 0 else "all"
        return cls(
            self.root,
            split=split,
            val_fraction=fraction,
            split_seed=self.split_seed,
            transform=transform,
            raster=self.raster,
            seed=self.seed,
        )
