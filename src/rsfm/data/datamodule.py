"""Lightning datamodules for pretraining on an image folder and for scene classification.

Both use :class:`EpochSampler`, which yields ``(index, epoch)`` keys so that every sample's
augmentation is a pure function of ``(seed, epoch, index)``, and
:class:`~torchdata.stateful_dataloader.StatefulDataLoader`, which lets Lightning resume in the
middle of an epoch with exactly the batches an uninterrupted run would have seen. The sampler
shards across ranks itself: create the Trainer with ``use_distributed_sampler=False``.

.. versionadded:: 0.1
"""

from __future__ import annotations

import copy
import hashlib
import math
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

import lightning.pytorch as pl
import torch
from torch import Tensor
from torch.utils.data import Sampler
from torchdata.stateful_dataloader import StatefulDataLoader

from .folder import (
    ImageFolder,
    LabeledImageFolder,
    check_image_root,
    collate_skipping,
)
from .io import IMAGE_EXTENSIONS, RasterRule
from .transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    eval_transform,
    finetune_transform,
    pretrain_transform,
)

__all__ = ["ClassificationDataModule", "EpochSampler", "PretrainDataModule"]


def _epoch_seed(seed: int, epoch: int) -> int:
    digest = hashlib.blake2b(f"sampler:{seed}:{epoch}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1  # 63 bits: any torch.Generator accepts it


class EpochSampler(Sampler[tuple[int, int]]):
    """Seeded per-epoch order of a dataset's indices, sharded across replicas.

    Yields ``(index, epoch)`` tuples: datasets such as
    :class:`~rsfm.data.folder.ImageFolder` seed each sample's augmentation with them. The
    order of epoch ``e`` is a permutation drawn from ``(seed, e)`` (or ``0..n-1`` without
    shuffling); rank ``r`` of ``R`` takes positions ``r, r + R, ...`` of it, like
    :class:`~torch.utils.data.distributed.DistributedSampler`. With ``drop_last`` the tail
    that does not divide evenly is dropped, otherwise the order is padded with its first
    indices, so every rank has the same length.

    Its iterators are stateful (``epoch`` and position), so a
    :class:`~torchdata.stateful_dataloader.StatefulDataLoader` restores the exact position
    even if :meth:`set_epoch` was not called before resuming.

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        num_samples: int,
        shuffle: bool = True,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
        drop_last: bool = True,
    ) -> None:
        """Create the sampler.

        Args:
            num_samples: length of the dataset.
            shuffle: draw a new order every epoch; if False, indices in order.
            seed: seed of the orders (same on every rank).
            num_replicas: number of ranks (world size).
            rank: this rank, 0 <= rank < num_replicas.
            drop_last: drop the indices that would make ranks unequal instead of padding.

        Raises:
            ValueError: if an argument is out of range.

        """
        if num_samples < 0:
            raise ValueError(f"num_samples must be >= 0, got {num_samples}")
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(
                f"need num_replicas >= 1 and 0 <= rank < num_replicas, got num_replicas={num_replicas}, rank={rank}"
            )
        self.num_samples = num_samples
        self.shuffle = shuffle
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.drop_last = drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order the next iterator yields (Lightning calls this).

        Args:
            epoch: epoch number.

        """
        self.epoch = int(epoch)

    def __len__(self) -> int:
        """Return the number of keys yielded per epoch on this rank."""
        if self.drop_last:
            return self.num_samples // self.num_replicas
        return math.ceil(self.num_samples / self.num_replicas)

    def indices(self, epoch: int) -> list[int]:
        """Return this rank's indices for an epoch, in order.

        Args:
            epoch: epoch number.

        Returns:
            ``len(self)`` dataset indices.

        """
        n = self.num_samples
        if self.shuffle:
            generator = torch.Generator()
            generator.manual_seed(_epoch_seed(self.seed, epoch))
            order = torch.randperm(n, generator=generator).tolist()
        else:
            order = list(range(n))
        total = len(self) * self.num_replicas
        if total > n and n > 0:
            order = (order * math.ceil(total / n))[:total]
        return order[self.rank : total : self.num_replicas]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        """Iterate over ``(index, epoch)`` of the current epoch."""
        return _EpochSamplerIterator(self)


class _EpochSamplerIterator(Iterator[tuple[int, int]]):
    def __init__(self, sampler: EpochSampler) -> None:
        self.sampler = sampler
        self._start(sampler.epoch, 0)

    def _start(self, epoch: int, yielded: int) -> None:
        self.epoch = epoch
        self.order = self.sampler.indices(epoch)
        self.yielded = yielded

    def __iter__(self) -> _EpochSamplerIterator:
        return self

    def __next__(self) -> tuple[int, int]:
        if self.yielded >= len(self.order):
            raise StopIteration
        index = self.order[self.yielded]
        self.yielded += 1
        return index, self.epoch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "yielded": self.yielded}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        self.sampler.epoch = int(state_dict["epoch"])
        self._start(int(state_dict["epoch"]), int(state_dict["yielded"]))


def _world(datamodule: pl.LightningDataModule) -> tuple[int, int]:
    trainer = datamodule.trainer
    if trainer is None:
        return 1, 0
    return trainer.world_size, trainer.global_rank


def _combine_skipped(*datasets: ImageFolder | None) -> list[tuple[str, str]]:
    seen: dict[str, str] = {}
    for dataset in datasets:
        if dataset is not None:
            for path, reason in dataset.scan_skipped:
                seen.setdefault(path, reason)
    return list(seen.items())


def _round_robin(groups: Sequence[int]) -> list[int]:
    """Positions of ``groups`` taking the first item of every group, then the second, and so on."""
    taken: dict[int, int] = {}
    rank = []
    for group in groups:
        rank.append(taken.get(group, 0))
        taken[group] = rank[-1] + 1
    return sorted(range(len(groups)), key=lambda i: (rank[i], groups[i]))


def _check_fraction(fraction: float, name: str) -> None:
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {fraction}")


_Folder = TypeVar("_Folder", bound=ImageFolder)


class _FolderDataModule(pl.LightningDataModule):
    """Settings, datasets and loaders shared by the datamodules over an image folder."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        img_size: int,
        batch_size: int,
        num_workers: int,
        mean: Sequence[float],
        std: Sequence[float],
        split_seed: int,
        seed: int,
        raster: RasterRule,
        pin_memory: bool,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        self.root = check_image_root(root)
        self.img_size = img_size
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.mean = tuple(mean)
        self.std = tuple(std)
        self.split_seed = split_seed
        self.seed = seed
        self.raster = raster
        self.pin_memory = pin_memory

    def _eval_transform(self) -> Callable[[Tensor], Tensor]:
        return eval_transform(self.img_size, self.mean, self.std)

    def _dataset(
        self, cls: type[_Folder], held_out: bool, fraction: float, transform: Callable[[Tensor], Tensor]
    ) -> _Folder:
        """The held-out split, or the training split (everything when ``fraction`` is 0)."""
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

    def _loader(
        self, dataset: ImageFolder, shuffle: bool, drop_last: bool, drop_last_batch: bool = False
    ) -> StatefulDataLoader:
        """Loader over this rank's :class:`EpochSampler` keys.

        ``drop_last`` goes to the sampler (ranks stay equal by dropping, else by padding);
        ``drop_last_batch`` drops the last incomplete batch, unless the rank has less than one.
        """
        world_size, rank = _world(self)
        sampler = EpochSampler(
            len(dataset), shuffle=shuffle, seed=self.seed, num_replicas=world_size, rank=rank, drop_last=drop_last
        )
        return StatefulDataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=collate_skipping,
            pin_memory=self.pin_memory and torch.cuda.is_available(),
            drop_last=drop_last_batch and len(sampler) >= self.batch_size,
            persistent_workers=self.num_workers > 0,
        )


class PretrainDataModule(_FolderDataModule):
    """Unlabeled images of a folder, augmented MAE-style, for self-supervised pretraining.

    Batches (from :func:`~rsfm.data.folder.collate_skipping`): ``{'image': (B, 3, S, S)
    float32 normalised, 'index': (B,) int64, 'skipped': list[(path, reason)]}`` with
    ``S = img_size`` and B <= batch_size (unreadable files are left out).

    An optional held-out split (``holdout_fraction``, stratified by sub-folder) is kept out of
    training and used for :meth:`viz_batch`.

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        img_size: int = 224,
        batch_size: int = 64,
        num_workers: int = 4,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        holdout_fraction: float = 0.0,
        split_seed: int = 0,
        seed: int = 0,
        scale: tuple[float, float] = (0.2, 1.0),
        hflip: bool = True,
        raster: RasterRule = RasterRule(),  # noqa: B008 (frozen, immutable)
        pin_memory: bool = True,
    ) -> None:
        """Check the folder and store the settings; datasets are built in :meth:`setup`.

        Args:
            root: folder of images, at any depth.
            img_size: side of the training crops in pixels.
            batch_size: images per batch and rank.
            num_workers: loader worker processes (0 = load in the main process).
            mean: per-channel mean of images in [0, 1] (see ``rsfm stats``).
            std: per-channel std of images in [0, 1].
            holdout_fraction: fraction of each sub-folder kept out of training, 0 <= x < 1.
            split_seed: seed of the held-out split.
            seed: seed of the sample order and of the augmentation.
            scale: crop area range of the random resized crop.
            hflip: random horizontal flips.
            raster: how files become 3-band uint8 images.
            pin_memory: pin batches when CUDA is available.

        Raises:
            FileNotFoundError: if ``root`` is missing or holds no image, naming it.
            ValueError: if a setting is out of range.

        """
        _check_fraction(holdout_fraction, "holdout_fraction")
        super().__init__(root, img_size, batch_size, num_workers, mean, std, split_seed, seed, raster, pin_memory)
        self.holdout_fraction = holdout_fraction
        self.scale = tuple(scale)
        self.hflip = hflip
        self.train_dataset: ImageFolder | None = None
        self.holdout_dataset: ImageFolder | None = None
        self._viz_dataset: ImageFolder | None = None

    def setup(self, stage: str | None = None) -> None:
        """Scan the folder and build the train (and held-out) datasets, once.

        Args:
            stage: ignored; the same datasets serve every stage.

        Raises:
            FileNotFoundError: if ``root`` vanished or holds no image.

        """
        if self.train_dataset is None:
            transform = pretrain_transform(self.img_size, self.mean, self.std, scale=self.scale, hflip=self.hflip)
            self.train_dataset = self._dataset(ImageFolder, False, self.holdout_fraction, transform)
        if self.holdout_fraction > 0 and self.holdout_dataset is None:
            self.holdout_dataset = self._dataset(ImageFolder, True, self.holdout_fraction, self._eval_transform())

    def _train(self) -> ImageFolder:
        if self.train_dataset is None:
            self.setup("fit")
        assert self.train_dataset is not None
        return self.train_dataset

    def train_dataloader(self) -> StatefulDataLoader:
        """Build the training loader for this rank.

        Rank and world size come from the attached trainer (1 and 0 without one). The
        sampler drops the samples that do not divide evenly across ranks; the last
        incomplete batch is dropped too, unless a rank has fewer samples than one batch.

        Returns:
            a :class:`~torchdata.stateful_dataloader.StatefulDataLoader` over
            ``(index, epoch)`` keys from an :class:`EpochSampler`.

        """
        return self._loader(self._train(), shuffle=True, drop_last=True, drop_last_batch=True)

    def viz_batch(self, n: int = 8) -> Tensor:
        """Return fixed images for reconstruction figures, without randomness.

        The images are spread over the sub-folders (classes, on a labeled tree): the first
        image of every sub-folder, then the second of every sub-folder, and so on, each in
        path order; unreadable files are passed over.

        Args:
            n: number of images.

        Returns:
            images: (k, 3, img_size, img_size) float32, normalised with ``eval_transform``:
            k = min(n, readable) images of the held-out split, or of the training set when
            there is none.

        """
        if self._viz_dataset is None:
            self._train()
            if self.holdout_dataset is not None:
                self._viz_dataset = self.holdout_dataset
            else:
                assert self.train_dataset is not None
                self._viz_dataset = copy.copy(self.train_dataset)
                self._viz_dataset.transform = self._eval_transform()
        images = []
        for index in _round_robin(self._viz_dataset.groups):
            if len(images) == n:
                break
            item = self._viz_dataset[index]
            if "image" in item:
                images.append(item["image"])
        if not images:
            return torch.empty((0, 3, self.img_size, self.img_size), dtype=torch.float32)
        return torch.stack(images)

    @property
    def scan_skipped(self) -> list[tuple[str, str]]:
        """``(path, reason)`` of the files under root that are not samples (after setup)."""
        return _combine_skipped(self.train_dataset, self.holdout_dataset)


def _list_classes(root: Path) -> list[str]:
    """Class folders (first level, visible, holding an image) of a labeled tree."""
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
            raise ValueError(
                f"Image {entry.path} lies directly in {root}; a labeled folder expects "
                "root/<class>/<image> (move it into a class folder or remove it)"
            )
    return classes


class ClassificationDataModule(_FolderDataModule):
    """Scene classification from class folders (``root/<class>/**/<image>``), e.g. AID.

    The held-out split (``LabeledImageFolder(split='val')``, stratified per class, fixed by
    ``split_seed``) is the validation and test set; it never overlaps the training split.
    Batches: ``{'image': (B, 3, S, S) float32, 'label': (B,) int64, 'index': (B,) int64,
    'skipped': list[(path, reason)]}``.

    ``train_transform='finetune'`` augments and shuffles the training split;
    ``'eval'`` (feature extraction for linear probes / kNN) uses the deterministic
    :func:`~rsfm.data.transforms.eval_transform` in file order. :attr:`classes` and
    :attr:`num_classes` are known right after construction (before :meth:`setup`).

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        img_size: int = 224,
        batch_size: int = 64,
        num_workers: int = 4,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        val_fraction: float = 0.2,
        split_seed: int = 0,
        seed: int = 0,
        train_transform: str = "finetune",
        raster: RasterRule = RasterRule(),  # noqa: B008 (frozen, immutable)
        pin_memory: bool = True,
    ) -> None:
        """Check the folder, list the classes and store the settings.

        Args:
            root: folder of class folders.
            img_size: side of the images in pixels.
            batch_size: images per batch and rank.
            num_workers: loader worker processes.
            mean: per-channel mean of images in [0, 1].
            std: per-channel std of images in [0, 1].
            val_fraction: fraction of each class held out for validation/test, 0 <= x < 1
                (0: no held-out split, ``val_dataloader`` returns ``[]``).
            split_seed: seed of the split; keep it fixed to compare runs.
            seed: seed of the sample order and of the augmentation.
            train_transform: ``'finetune'`` or ``'eval'``.
            raster: how files become 3-band uint8 images.
            pin_memory: pin batches when CUDA is available.

        Raises:
            FileNotFoundError: if ``root`` is missing or holds no image, naming it.
            ValueError: if a setting is out of range or an image lies directly in ``root``.

        """
        if train_transform not in ("finetune", "eval"):
            raise ValueError(f"train_transform must be 'finetune' or 'eval', got {train_transform!r}")
        _check_fraction(val_fraction, "val_fraction")
        super().__init__(root, img_size, batch_size, num_workers, mean, std, split_seed, seed, raster, pin_memory)
        self.classes: list[str] = _list_classes(self.root)
        self.val_fraction = val_fraction
        self.train_transform = train_transform
        self.train_dataset: LabeledImageFolder | None = None
        self.val_dataset: LabeledImageFolder | None = None

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.classes)

    def setup(self, stage: str | None = None) -> None:
        """Scan the folder and build the train and held-out datasets, once.

        Args:
            stage: ignored; the same datasets serve every stage.

        """
        if self.train_dataset is None:
            if self.train_transform == "finetune":
                transform = finetune_transform(self.img_size, self.mean, self.std)
            else:
                transform = self._eval_transform()
            self.train_dataset = self._dataset(LabeledImageFolder, False, self.val_fraction, transform)
            self.classes = self.train_dataset.classes
        if self.val_fraction > 0 and self.val_dataset is None:
            self.val_dataset = self._dataset(LabeledImageFolder, True, self.val_fraction, self._eval_transform())

    def train_dataloader(self) -> StatefulDataLoader:
        """Build the training loader for this rank (shuffled only with ``'finetune'``).

        Returns:
            a :class:`~torchdata.stateful_dataloader.StatefulDataLoader`.

        """
        if self.train_dataset is None:
            self.setup("fit")
        assert self.train_dataset is not None
        shuffle = self.train_transform == "finetune"
        return self._loader(self.train_dataset, shuffle=shuffle, drop_last=shuffle)

    def val_dataloader(self) -> StatefulDataLoader | list[StatefulDataLoader]:
        """Build the held-out loader, in file order; ranks are padded to equal length.

        Returns:
            a :class:`~torchdata.stateful_dataloader.StatefulDataLoader`, or ``[]`` when
            ``val_fraction`` is 0.

        """
        if self.val_dataset is None:
            self.setup("validate")
        if self.val_dataset is None:
            return []
        return self._loader(self.val_dataset, shuffle=False, drop_last=False)

    def test_dataloader(self) -> StatefulDataLoader | list[StatefulDataLoader]:
        """Same as :meth:`val_dataloader` (the held-out split)."""
        return self.val_dataloader()

    @property
    def scan_skipped(self) -> list[tuple[str, str]]:
        """``(path, reason)`` of the files under root that are not samples (after setup)."""
        return _combine_skipped(self.train_dataset, self.val_dataset)
