"""The shared part of the datamodules over image folders (pretraining, scene classification).

.. versionadded:: 0.2
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

from rsfm.data.base import DataInfo, DataModule, check_folder
from rsfm.data.folder import ImageFolder, check_distinct_classes, check_image_root
from rsfm.data.io import IMAGE_EXTENSIONS
from rsfm.data.shards import ShardCorpus, ShardDataset
from rsfm.data.skips import collate_skipping
from rsfm.data.splits import check_fraction
from rsfm.utils.errors import DataError

__all__ = ["FolderDataModule", "combine_skipped", "list_classes", "open_source", "round_robin"]


def list_classes(root: Path) -> list[str]:
    """Class folders (first level, visible, holding an image) of a labeled tree.

    Raises:
        DataError: if an image lies directly in ``root`` (it would have no class), or if two
            class folders are the same directory (a symlinked alias; both are named).
    """
    check_distinct_classes(root)
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


def open_source(root: str | os.PathLike[str] | None, shards: str | os.PathLike[str] | None) -> str | ShardCorpus:
    """The one image source of a recipe: ``data.root`` (a folder) or ``data.shards`` (a corpus).

    Args:
        root: folder of images, or None/``''``.
        shards: folder or ``s3://``/``gs://``/``azure://`` URL of a corpus written by
            ``rsfm curate`` (see :mod:`rsfm.data.shards`), or None/``''``.

    Returns:
        ``root`` as a string (checked later by :class:`FolderDataModule`), or the opened
        :class:`~rsfm.data.shards.ShardCorpus` (its manifest read, nothing decoded).

    Raises:
        DataError: naming ``data.root``/``data.shards`` when both or neither are given, and
            naming ``data.shards`` when the corpus folder, its ``shards/index.json`` or its
            manifest is missing or malformed.

    .. versionadded:: 0.3
    """
    has_root = root is not None and str(root) != ""
    has_shards = shards is not None and str(shards) != ""
    if has_root and has_shards:
        raise DataError(
            f"data.root ({root}) and data.shards ({shards}) are both set; give one: an image folder or a "
            "corpus written by `rsfm curate` (on the command line: data.shards=<corpus> data.root=null)"
        )
    if has_shards:
        return ShardCorpus.open(str(shards))
    if not has_root:
        raise DataError("data.root is required: the image folder (or data.shards: a corpus written by `rsfm curate`)")
    return str(root)


def combine_skipped(*datasets: ImageFolder | ShardDataset | None) -> list[tuple[str, str]]:
    """``(path, reason)`` of the scan-time skips of several folder datasets, without repeats."""
    seen: dict[str, str] = {}
    for dataset in datasets:
        if dataset is not None:
            for path, reason in dataset.scan_skipped:
                seen.setdefault(path, reason)
    return list(seen.items())


class FolderDataModule(DataModule):
    """Settings and datasets shared by the datamodules over an image folder (or a corpus).

    The held-out split (``test_fraction`` of every first-level sub-folder, stratified, each
    sub-folder's share chosen by ``split_seed`` and the sub-folder's name; see
    :class:`~rsfm.data.folder.ImageFolder`) is the same set of files in pretraining,
    scene-classification fine-tuning and ``rsfm evaluate``: an encoder pretrained on a folder
    never sees the images it is tested on.

    Subclasses with :attr:`reads_shards` may read a sharded corpus instead of a folder
    (``data.shards``, see :mod:`rsfm.data.shards`; they pass the
    :class:`~rsfm.data.shards.ShardCorpus` of :func:`open_source` as ``root``). Their datasets
    are then :class:`~rsfm.data.shards.ShardDataset` objects, whose held-out split is the
    folder's for a corpus curated from that folder with one tile per file; the bands come from
    the corpus (``data.bands``/``data.raster_scale`` were applied by ``rsfm curate``).

    Args:
        root: folder of images, at any depth (class = first-level folder where it matters),
            or an opened :class:`~rsfm.data.shards.ShardCorpus`.
        img_size: side of the images fed to the model, pixels.
        test_fraction: share of each first-level sub-folder held out, 0 <= x < 1.
        split_seed: seed of that split (keep it fixed across runs).
        batch_size: images per batch and device.
        num_workers: loader processes.
        bands: 0-based bands of the image files (any number); None: RGB (for a corpus: its
            band count, and only None is accepted).
        raster_scale: ``"auto"`` or a divisor (see :class:`~rsfm.data.io.RasterRule`; for a
            corpus only ``"auto"``).
        mean: per-band mean of images in [0, 1] (None: ImageNet's, for RGB).
        std: per-band std, likewise.
        seed: seed of the training order and of the augmentation (None: the run's ``seed``).
        pin_memory: pin batches when CUDA is available.

    Raises:
        DataError: if ``root`` is missing or holds no image (naming ``data.root``), if a
            corpus is given with ``data.bands``/``data.raster_scale`` or to a datamodule that
            does not read corpora (naming ``data.shards``), or the statistics do not fit the
            bands.
        ValueError: on an out-of-range setting.
    """

    #: class names of a labeled folder (None: unlabeled)
    classes: list[str] | None = None
    #: whether ``data.shards`` (a corpus written by ``rsfm curate``) can replace ``data.root``
    reads_shards: ClassVar[bool] = False

    def __init__(
        self,
        root: str | os.PathLike[str] | ShardCorpus | None,
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
        #: the image folder (None when reading a corpus)
        self.root: Path | None = None
        #: the sharded corpus (None when reading a folder)
        self.corpus: ShardCorpus | None = None
        if isinstance(root, ShardCorpus):
            if not self.reads_shards:
                raise DataError(
                    f"data.shards: {type(self).__name__} reads an image folder (data.root), not a sharded corpus"
                )
            if bands is not None or raster_scale != "auto":
                raise DataError(
                    f"data.bands/data.raster_scale: not used with data.shards ({root.location}): `rsfm curate` "
                    f"already selected and scaled the bands ({root.channels}-band uint8 tiles); leave them unset"
                )
            self.corpus = root
        else:
            folder = check_folder(root)
            try:
                self.root = check_image_root(folder)
            except FileNotFoundError as err:
                raise DataError(f"data.root: {err}") from None
        check_fraction(test_fraction, "data.test_fraction")
        self.img_size = int(img_size)
        self.test_fraction = float(test_fraction)
        self.split_seed = int(split_seed)
        self.set_bands(bands, raster_scale, mean, std)

    @property
    def shards(self) -> str | None:
        """Location of the corpus read (``data.shards``), or None for a folder."""
        return None if self.corpus is None else self.corpus.location

    def default_channels(self) -> int:
        """The corpus's band count, or 3 (RGB) for a folder without ``data.bands``."""
        return self.corpus.channels if self.corpus is not None else 3

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
        """The held-out split of ``root`` (or of the corpus), or the rest (everything when the fraction is 0).

        Args:
            cls: the folder dataset class (:class:`~rsfm.data.folder.ImageFolder` or a
                subclass); a corpus is always read as a :class:`~rsfm.data.shards.ShardDataset`.
            held_out: the held-out (``'val'``) split, else the training one.
            transform: ``(C, H, W)`` uint8 → float32 transform of the split.
            fraction: share held out (None: ``test_fraction``).
        """
        fraction = self.test_fraction if fraction is None else fraction
        split = "val" if held_out else "train" if fraction > 0 else "all"
        common = {
            "split": split,
            "val_fraction": fraction,
            "split_seed": self.split_seed,
            "transform": transform,
            "seed": self.seed,
        }
        if self.corpus is not None:
            return ShardDataset(self.corpus, **common)
        return cls(self.root, raster=self.raster, **common)
