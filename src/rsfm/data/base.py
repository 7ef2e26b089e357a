"""What every rsfm datamodule shares: settings checked at once, resumable sharded loaders.

A datamodule is the ``data`` section of a recipe (``class_path: LoveDADataModule``). Its
``__init__`` takes the recipe's values, checks them and the data folder at once (a missing
folder fails before any model is built), and builds nothing heavy; datasets are scanned in
:meth:`DataModule.setup`. Datamodules are plain Python classes, cheap to import, so that a
recipe is validated in a few seconds; the engine hands them to Lightning through an adapter
(:class:`rsfm.engine.data.LightningData`), which also sets :attr:`DataModule.trainer`.

Every loader is a :class:`~torchdata.stateful_dataloader.StatefulDataLoader` over an
:class:`~rsfm.data.samplers.EpochSampler` and a :class:`~rsfm.data.samplers.KeyedDataset`:
training order and augmentation are pure functions of ``(seed, epoch, index)``, ranks get
disjoint shards, and a run stopped mid-epoch resumes with exactly the remaining batches.

Samples are dicts. Images are ``(C, H, W)`` float32 scaled to [0, 1] (8-bit values / 255, or
reflectance / ``raster_scale``); normalisation with :attr:`DataInfo.mean`/``std`` happens in
the model, so visualisations and any encoder's statistics work on the same samples.

.. versionadded:: 0.2
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from rsfm.utils.errors import DataError

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "DataInfo", "DataModule", "check_folder", "default_stats"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class DataInfo:
    """What the model needs to know about a datamodule's samples.

    Attributes:
        classes: class names in label order (empty for unlabeled data).
        num_channels: image channels ``C``.
        mean: per-channel mean of the [0, 1]-scaled images (normalisation in the model).
        std: per-channel std, likewise.
        sample_keys: keys every training sample carries (``image``, ``mask``, ``boxes``...).
        palette: ``(R, G, B)`` per class for visualisations, or None.
        ignore_index: label of unlabeled pixels (segmentation), or None.
        score_classes: label indices the metrics average over (None: all classes), e.g. the
            five ISPRS classes without clutter.
        crop_size: side of the training crops, pixels (the sliding window of evaluation), or
            None when training sees whole images.
        img_size: side of the (resized) images of folder datamodules, pixels, or None.
        bands: bands read from image files (:attr:`rsfm.data.io.RasterRule.bands`), or None.
        raster_scale: ``"auto"`` or the divisor of non-8-bit rasters.
        subsets: for multi-task data, subset name → ``{"tasks": [...], "classes": [...]}``
            (the labels each subset carries and its object classes); None otherwise.
    """

    classes: list[str] = field(default_factory=list)
    num_channels: int = 3
    mean: list[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    std: list[float] = field(default_factory=lambda: list(IMAGENET_STD))
    sample_keys: tuple[str, ...] = ("image",)
    palette: list[tuple[int, int, int]] | None = None
    ignore_index: int | None = None
    score_classes: list[int] | None = None
    crop_size: int | None = None
    img_size: int | None = None
    bands: list[int] | None = None
    raster_scale: str | float = "auto"
    subsets: dict[str, dict[str, Any]] | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python copy (lists, no tuples of tuples) for hyper-parameters and JSON."""
        d = asdict(self)
        d["sample_keys"] = list(self.sample_keys)
        if self.palette is not None:
            d["palette"] = [list(c) for c in self.palette]
        return d


def default_stats(
    num_channels: int, mean: Sequence[float] | None, std: Sequence[float] | None
) -> tuple[list[float], list[float]]:
    """The recipe's ``mean``/``std``, or ImageNet's for 3 channels.

    Raises:
        DataError: if they are missing for ``num_channels != 3`` or have the wrong length, or
            a std is not positive (naming ``data.mean``/``data.std``).
    """
    if mean is None or std is None:
        if num_channels != 3:
            raise DataError(
                f"data.mean and data.std are required for {num_channels}-band input "
                "(per band, for values scaled to [0, 1]; `rsfm stats <folder>` computes them)"
            )
        mean, std = mean or IMAGENET_MEAN, std or IMAGENET_STD
    mean, std = [float(v) for v in mean], [float(v) for v in std]
    if len(mean) != num_channels or len(std) != num_channels:
        raise DataError(f"data.mean and data.std need {num_channels} values (one per band), got {mean} and {std}")
    if min(std) <= 0:
        raise DataError(f"data.std must be positive, got {std}")
    return mean, std


def check_folder(path: str | os.PathLike[str] | None, key: str = "data.root") -> Path:
    """Fail at once, naming ``key``, unless ``path`` is an existing folder.

    Raises:
        DataError: if ``path`` is None, missing or not a folder.
    """
    if path is None or str(path) == "":
        raise DataError(f"{key} is required: the dataset folder")
    p = Path(path)
    if not p.exists():
        raise DataError(f"{key}: folder not found: {p}")
    if not p.is_dir():
        raise DataError(f"{key}: {p} is a file, expected a folder")
    return p


class DataModule:
    """Base of the datamodules: loader settings, rank sharding, resumable loaders.

    Subclasses set :attr:`sample_keys`, build their datasets in :meth:`setup` (into
    :attr:`datasets`, keyed ``train``/``val``/``test``) and describe their samples in
    :meth:`info`.

    Args:
        batch_size: training samples per batch and device.
        eval_batch_size: samples per validation/test batch (1 for whole images of
            different sizes).
        num_workers: loader worker processes (0: load in the main process).
        seed: seed of the training order and of every random augmentation (None: the run's ``seed``).
        pin_memory: pin batches in host memory when CUDA is available.

    Raises:
        ValueError: on a batch size below 1 or a negative worker count.
    """

    #: keys of every training sample
    sample_keys: ClassVar[tuple[str, ...]] = ("image",)

    def __init__(
        self,
        batch_size: int = 8,
        eval_batch_size: int = 1,
        num_workers: int = 0,
        seed: int | None = None,
        pin_memory: bool = True,
    ) -> None:
        if batch_size < 1 or eval_batch_size < 1:
            raise ValueError(
                f"data.batch_size and data.eval_batch_size must be >= 1, got {batch_size}, {eval_batch_size}"
            )
        if num_workers < 0:
            raise ValueError(f"data.num_workers must be >= 0, got {num_workers}")
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size)
        self.num_workers = int(num_workers)
        self.seed = int(seed or 0)
        self.pin_memory = bool(pin_memory)
        self.datasets: dict[str, Any] = {}
        #: the Lightning trainer, set by the engine's adapter (rank and world size come from it)
        self.trainer: Any = None

    # -- bands ---------------------------------------------------------------------------

    def default_channels(self) -> int:
        """Bands of an image when the recipe gives no ``data.bands`` (3: RGB)."""
        return 3

    def set_bands(
        self,
        bands: Sequence[int] | None,
        raster_scale: str | float,
        mean: Sequence[float] | None,
        std: Sequence[float] | None,
    ) -> None:
        """Set :attr:`raster`, :attr:`num_channels`, :attr:`mean` and :attr:`std` from a recipe.

        Args:
            bands: 0-based bands of the image files; None: :meth:`default_channels` bands.
            raster_scale: ``"auto"`` or the divisor that maps raw values to [0, 1] (see
                :class:`~rsfm.data.io.RasterRule`).
            mean: per-band mean of images in [0, 1]; None: ImageNet's (3 bands only).
            std: per-band std, likewise.

        Raises:
            DataError: if mean/std are missing for a non-RGB band count or do not fit it.
        """
        from rsfm.data.io import RasterRule

        self.raster = RasterRule(
            bands=tuple(int(b) for b in bands) if bands is not None else None,
            scale=raster_scale if raster_scale == "auto" else float(raster_scale),
        )
        self.num_channels = self.default_channels() if bands is None else len(bands)
        self.mean, self.std = default_stats(self.num_channels, mean, std)

    # -- description ---------------------------------------------------------------------

    def info(self) -> DataInfo:
        """Classes, channels, normalisation and sample keys of this datamodule's samples."""
        return DataInfo(sample_keys=self.sample_keys)

    @property
    def scan_skipped(self) -> list[tuple[str, str]]:
        """``(path, reason)`` of files found unusable while scanning (counted in the skip report)."""
        return []

    # -- datasets and loaders ---------------------------------------------------------------

    def setup(self, stage: str | None = None) -> None:
        """Build the datasets (subclasses); called by Lightning before each stage."""

    def world(self) -> tuple[int, int]:
        """``(world_size, rank)`` of the attached trainer, ``(1, 0)`` without one."""
        if self.trainer is None:
            return 1, 0
        return int(self.trainer.world_size), int(self.trainer.global_rank)

    def collate(self) -> Callable[[list[Any]], Any] | None:
        """The collate function of this datamodule's loaders (None: torch's default)."""
        return None

    def loader(
        self,
        dataset: Any,
        train: bool,
        batch_size: int | None = None,
        repeats: int = 1,
        collate: Callable[[list[Any]], Any] | None = None,
        shard: bool = True,
    ) -> Any:
        """A resumable, rank-sharded loader over ``dataset``.

        Training loaders shuffle with a new order per epoch, wrap the dataset in a
        :class:`~rsfm.data.samplers.KeyedDataset` (seeded augmentation, ``repeats`` passes per
        epoch), drop the indices that do not divide across ranks and the last incomplete
        batch (unless a rank has less than one batch). Evaluation loaders keep file order and
        give each sample to one rank (no padding), so scores gathered over ranks count every
        sample once, as on one device (unless the split has fewer samples than ranks: a rank
        then repeats one, with a warning).

        Args:
            dataset: a map-style dataset (or one that takes ``(index, epoch)`` keys itself).
            train: training (shuffled, augmented) or evaluation loader.
            batch_size: samples per batch; default :attr:`batch_size` or
                :attr:`eval_batch_size`.
            repeats: passes over ``dataset`` per training epoch.
            collate: collate function of this loader (None: :meth:`collate`).
            shard: split the samples across ranks; False: every rank reads all of them.

        Returns:
            A :class:`~torchdata.stateful_dataloader.StatefulDataLoader`.

        .. versionchanged:: 0.3.3
           ``shard``.
        """
        import torch
        from torchdata.stateful_dataloader import StatefulDataLoader

        from rsfm.data.samplers import EpochSampler, KeyedDataset

        if not getattr(dataset, "takes_keys", False):
            dataset = KeyedDataset(dataset, seed=self.seed, repeats=repeats if train else 1)
        world, rank = self.world() if shard else (1, 0)
        sampler = EpochSampler(
            len(dataset), shuffle=train, seed=self.seed, num_replicas=world, rank=rank, drop_last=train, pad=False
        )
        if not train and 0 < len(dataset) < world and rank == 0:
            warnings.warn(
                f"an evaluation split of {len(dataset)} sample(s) on {world} processes: each process needs one, "
                f"so {world - len(dataset)} sample(s) are evaluated twice and count twice in its scores; "
                "evaluate on fewer devices (trainer.devices) for exact figures",
                stacklevel=2,
            )
        size = batch_size or (self.batch_size if train else self.eval_batch_size)
        return StatefulDataLoader(
            dataset,
            batch_size=size,
            sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=collate or self.collate(),
            pin_memory=self.pin_memory and torch.cuda.is_available(),
            drop_last=train and len(sampler) >= size,
            persistent_workers=self.num_workers > 0,
        )

    def on_device(self, batch: Any, device: Any) -> Any:
        """Finish a batch on the training device, before the rest of it is moved there.

        Called by the engine (Lightning's ``transfer_batch_to_device``) with the batch still in
        host memory. The default returns it unchanged; :class:`~rsfm.data.pretrain.PretrainDataModule`
        decodes and augments its images here with ``data.decode: device``.

        Args:
            batch: a batch of this datamodule's loaders, in host memory.
            device: the ``torch.device`` the batch goes to.

        Returns:
            the batch, parts of it possibly already on ``device``.

        .. versionadded:: 0.3
        """
        return batch

    def _split(self, name: str) -> Any:
        if name not in self.datasets:
            self.setup("fit" if name == "train" else name)
        return self.datasets.get(name)

    def unaugmented_train(self) -> Any:
        """The training samples under the evaluation transform, for fitting a head on frozen features.

        Returns:
            a map-style dataset of the training split's samples, not augmented.

        Raises:
            DataError: if this datamodule cannot give one (only scene classification does).

        .. versionadded:: 0.3.3
        """
        raise DataError(
            f"data: {type(self).__name__} cannot give its training split without augmentation "
            "(a linear-probe initialisation needs SceneClassificationDataModule)"
        )

    def train_dataloader(self) -> Any:
        """Shuffled, augmented training batches."""
        return self.loader(self._split("train"), train=True, repeats=getattr(self, "crops_per_image", 1))

    def val_dataloader(self) -> Any:
        """Validation batches in file order (``[]`` without a validation split)."""
        ds = self._split("val")
        return [] if ds is None else self.loader(ds, train=False)

    def test_dataloader(self) -> Any:
        """Test batches in file order."""
        ds = self._split("test")
        if ds is None:
            raise DataError(f"{type(self).__name__} has no test split")
        return self.loader(ds, train=False)

    def predict_dataloader(self) -> Any:
        """Same as :meth:`test_dataloader`."""
        return self.test_dataloader()

    # -- Lightning's datamodule protocol ----------------------------------------------------

    def prepare_data(self) -> None:
        """Nothing to download: rsfm reads local folders."""

    def teardown(self, stage: str | None = None) -> None:
        """Nothing to release."""

    def state_dict(self) -> dict[str, Any]:
        """No state of its own: loader positions are saved by Lightning with the loaders."""
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Nothing to restore (see :meth:`state_dict`)."""
