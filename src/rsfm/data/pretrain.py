"""Unlabeled images of a folder or a sharded corpus, augmented MAE-style, for self-supervised pretraining.

.. versionadded:: 0.1
.. versionchanged:: 0.3
    ``data.shards``: a corpus written by ``rsfm curate`` instead of a folder.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor

from rsfm.data.device_decode import DECODE_MODES, DeferredAugment, collate_deferred, decode_and_augment
from rsfm.data.folder import ImageFolder
from rsfm.data.folder_base import FolderDataModule, combine_skipped, open_source, round_robin
from rsfm.data.shards import ShardDataset
from rsfm.data.transforms import check_scale
from rsfm.utils.registry import DATASETS

__all__ = ["PretrainDataModule"]


@DATASETS.register
class PretrainDataModule(FolderDataModule):
    """Unlabeled images found recursively under a folder, or the tiles of a sharded corpus.

    Batches (:func:`~rsfm.data.skips.collate_skipping`): ``{'image': (B, C, S, S) float32 in
    [0, 1], 'index': (B,) int64, 'skipped': list[(path, reason)]}`` with ``S = img_size`` and
    ``B <= batch_size`` (unreadable files are left out and counted). Batches of a corpus
    (``shards``) also carry ``'id': (B,) int64``, the tiles' global ids (``manifest.parquet``'s
    ``id``, e.g. to log what a run saw or to prune data).

    With ``shards`` (a corpus written by ``rsfm curate``, see :mod:`rsfm.data.shards`) the
    tiles are read by :class:`~rsfm.data.shards.ShardDataset`: ``C`` is the corpus's band
    count, the held-out split is taken by source file with the same rule, and for a corpus
    curated from a folder with one tile per file, training visits the same images in the same
    order, with the same augmentation, as training on the folder itself.

    The held-out split (``test_fraction`` of each first-level sub-folder, files directly in
    ``root`` counting as one more group; see :class:`~rsfm.data.folder.ImageFolder`) is kept
    out of training; it is what ``rsfm pretrain`` evaluates the encoder on and what
    reconstruction figures show. On a labeled tree it is the test split of
    :class:`~rsfm.data.scene.SceneClassificationDataModule` and ``rsfm evaluate`` with the
    same ``test_fraction`` and ``split_seed``.

    Args:
        root: folder of images, at any depth (or None with ``shards``).
        shards: folder or ``s3://``/``gs://``/``azure://`` URL of a corpus written by
            ``rsfm curate``, instead of ``root``.
        scale: crop area range of the random resized crop (MAE: [0.2, 1.0]).
        hflip: random horizontal flips.
        num_workers: loader processes.
        decode: where training images are decoded and augmented: ``'workers'`` (the loader
            processes) or ``'device'`` (the workers read the bytes and draw the crop; JPEGs
            are decoded, and every image cropped, resized and flipped, on the training
            device, see :mod:`rsfm.data.device_decode`). The same crops and flips either way;
            on a CPU device the same pixels. The held-out split is always decoded by the
            workers.
        **kwargs: :class:`~rsfm.data.folder_base.FolderDataModule` options (``img_size``,
            ``test_fraction``, ``split_seed``, ``batch_size``, ``num_workers``, ``bands``,
            ``raster_scale``, ``mean``, ``std``, ``seed``, ``pin_memory``; with ``shards``,
            ``bands`` and ``raster_scale`` must stay unset and ``mean``/``std`` are required
            for a corpus that is not 3-band).

    Raises:
        DataError: if ``root`` is missing or holds no image, naming ``data.root``; if both or
            neither of ``root`` and ``shards`` are given; if the corpus or its manifest is
            missing, or ``bands``/``raster_scale`` are set with it, naming ``data.shards``.
        ValueError: on an out-of-range setting, or a ``decode`` other than ``'workers'`` or
            ``'device'`` (naming ``data.decode``).

    .. versionadded:: 0.1
    .. versionchanged:: 0.3
        ``shards``; ``root`` optional; ``decode``.
    """

    sample_keys = ("image",)
    reads_shards = True

    def __init__(
        self,
        root: str | None = None,
        scale: list[float] = [0.2, 1.0],  # noqa: B006 (never mutated)
        hflip: bool = True,
        num_workers: int = 4,
        shards: str | None = None,
        decode: str = "workers",
        **kwargs: Any,
    ) -> None:
        if decode not in DECODE_MODES:
            raise ValueError(f"data.decode must be one of {list(DECODE_MODES)}, got {decode!r}")
        super().__init__(open_source(root, shards), num_workers=num_workers, **kwargs)
        self.decode = decode
        self.scale = check_scale(scale)
        self.hflip = bool(hflip)
        self._viz: ImageFolder | ShardDataset | None = None

    def setup(self, stage: str | None = None) -> None:
        """Scan the folder (or read the corpus's manifest) and build the training (and held-out) datasets, once."""
        if self.datasets:
            return
        from rsfm.data.transforms import eval_transform, pretrain_transform

        if self.decode == "device":
            train_transform: Any = DeferredAugment(self.img_size, self.scale, self.hflip)
        else:
            train_transform = pretrain_transform(self.img_size, self.scale, self.hflip)
        self.datasets["train"] = self.folder(ImageFolder, False, train_transform)
        if self.test_fraction > 0:
            self.datasets["holdout"] = self.folder(ImageFolder, True, eval_transform(self.img_size))

    def train_dataloader(self) -> Any:
        """Shuffled, augmented training batches (undecoded JPEGs and crop parameters with ``decode='device'``)."""
        collate = collate_deferred if self.decode == "device" else None
        return self.loader(self._split("train"), train=True, collate=collate)

    def on_device(self, batch: Any, device: Any) -> Any:
        """With ``decode='device'``: decode, crop, resize and flip a training batch on ``device``.

        Args:
            batch: a training batch in host memory (a :func:`~rsfm.data.device_decode.collate_deferred`
                batch with ``decode='device'``; any other batch is returned unchanged).
            device: the training device.

        Returns:
            the batch with ``'image'``: ``(B, C, img_size, img_size)`` float32 in [0, 1] on
            ``device`` (see :func:`~rsfm.data.device_decode.decode_and_augment`).
        """
        if isinstance(batch, dict) and "raw" in batch:
            return decode_and_augment(batch, device, self.img_size, self.num_channels)
        return batch

    def val_dataloader(self) -> Any:
        """No validation during pretraining."""
        return []

    def viz_batch(self, n: int = 8) -> Tensor:
        """Fixed images for reconstruction figures, without randomness.

        The images are spread over the groups (first-level sub-folders, i.e. classes on a
        labeled tree; a corpus's ``group`` column): the first image of every group, then the
        second of every group, and so on, each in path (shard) order; unreadable files are
        passed over.

        Args:
            n: number of images.

        Returns:
            ``(k, C, img_size, img_size)`` float32 in [0, 1]: ``k = min(n, readable)`` images of
            the held-out split, or of the training set when there is none.
        """
        if self._viz is None:
            self.setup("fit")
            if "holdout" in self.datasets:
                self._viz = self.datasets["holdout"]
            else:
                from rsfm.data.transforms import eval_transform

                self._viz = copy.copy(self.datasets["train"])
                self._viz.transform = eval_transform(self.img_size)
        images = []
        for index in round_robin(self._viz.groups):
            if len(images) == n:
                break
            item = self._viz[index]
            if "image" in item:
                images.append(item["image"])
        if not images:
            return torch.empty((0, self.num_channels, self.img_size, self.img_size), dtype=torch.float32)
        return torch.stack(images)

    @property
    def scan_skipped(self) -> list[tuple[str, str]]:
        """``(path, reason)`` of the files under root that are not samples (after setup; none for a corpus)."""
        return combine_skipped(self.datasets.get("train"), self.datasets.get("holdout"))
