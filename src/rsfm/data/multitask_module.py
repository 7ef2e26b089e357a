"""Loaders of multi-task pretraining: one batch from every labelled subset per step.

MTP (Wang et al., "MTP: Advancing Remote Sensing Foundation Model via Multi-Task
Pretraining", IEEE JSTARS 2024, §III) trains one encoder on several datasets at once (SAMRS's
SOTA, SIOR and FAST), each step taking one batch of every dataset. :class:`MultiTaskDataModule`
serves any number of such subsets, each a :class:`~rsfm.data.multitask.MultiTaskSource`
(SAMRS's formats, iSAID masks with DOTA boxes, or any rotated-box layout as a boxes-only
subset), through Lightning's ``CombinedLoader`` in ``min_size`` mode: an epoch ends when the
shortest subset's loader is exhausted, as the release's ``zip`` of loaders does. Every subset's
loader is a resumable, rank-sharded loader of its own (:meth:`rsfm.data.base.DataModule.loader`),
so a run stopped mid-epoch resumes at the same batch of every subset.

A training batch is ``{subset name: batch}``, each batch the lists of
:func:`~rsfm.data.multitask.collate_multitask` (images of one crop size; the label keys of the
tasks that subset carries). :meth:`MultiTaskDataModule.info` reports each subset's tasks and
classes in :attr:`~rsfm.data.base.DataInfo.subsets`, from which the method builds its heads.

.. versionadded:: 0.3
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
from collections.abc import Mapping
from typing import Any

from rsfm.data.base import DataInfo, DataModule, default_stats
from rsfm.data.multitask import MultiTaskSource
from rsfm.utils.errors import ConfigError, DataError
from rsfm.utils.registry import DATASETS

__all__ = ["MultiTaskDataModule", "build_source"]


def build_source(spec: Mapping[str, Any], key: str) -> Any:
    """The :class:`~rsfm.data.multitask.MultiTaskSource` of ``{"class_path", "init_args"}``.

    ``class_path`` is a source class of :mod:`rsfm.data.multitask` (``SAMRSSource``,
    ``ISAIDDOTASource``, ``RotatedBoxesSource``) or an import path.

    Raises:
        ConfigError: naming ``key`` on an unknown class or options it does not take.
        DataError: naming ``key`` when the source's folders or label files are missing.
    """
    from rsfm.data import multitask

    if not isinstance(spec, Mapping) or "class_path" not in spec:
        raise ConfigError(f"{key} must be {{class_path: ..., init_args: {{...}}}}, got {spec!r}")
    path = str(spec["class_path"])
    cls = getattr(multitask, path, None)
    if cls is None and "." in path:
        module, _, name = path.rpartition(".")
        try:
            cls = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            cls = None
    if not (isinstance(cls, type) and issubclass(cls, multitask.MultiTaskSource)):
        known = sorted(
            n
            for n, c in vars(multitask).items()
            if isinstance(c, type) and issubclass(c, multitask.MultiTaskSource) and not inspect.isabstract(c)
        )
        raise ConfigError(
            f"{key}.class_path: {path!r} is not a multi-task source; expected one of "
            f"{', '.join(known)} or an import path of a MultiTaskSource subclass"
        )
    args = dict(spec.get("init_args") or {})
    if isinstance(args.get("raster"), Mapping):  # a recipe's raster rule arrives as a mapping
        from rsfm.data.io import RasterRule

        rule = dict(args["raster"])
        if rule.get("bands") is not None:
            rule["bands"] = tuple(int(b) for b in rule["bands"])
        args["raster"] = RasterRule(**rule)
    try:
        return cls(**args)
    except TypeError as err:
        raise ConfigError(f"{key}: {cls.__name__}: {err}") from None
    except DataError as err:
        raise DataError(f"{key}: {err}") from None


def _subset_seed(seed: int, name: str) -> int:
    """A seed of the augmentation of one subset (distinct subsets draw distinct crops)."""
    digest = hashlib.blake2b(f"subset:{seed}:{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


@DATASETS.register
class MultiTaskDataModule(DataModule):
    """Several labelled subsets, one batch of each per training step (MTP's data).

    Args:
        subsets: subset name → ``{class_path: <source>, init_args: {...}}`` (see
            :func:`build_source`); names are free (``sota``, ``hituav``) and name the
            per-subset predictors of the method.
        crop_size: side of the training crops, pixels (MTP: 448).
        scale_range: random resize factor range of the crops' source (MTP: 0.5–2.0).
        crops_per_image: random crops of every training image per epoch.
        flip_prob: probability of a random flip (horizontal, vertical or diagonal, equally).
        photometric_distortion: random brightness, contrast, saturation and hue (on 8-bit values).
        train_split: the split each source trains on (``train``; None: the source's default;
            ``"."``: every image of a SAMRS folder, e.g. one ``rsfm samrs`` wrote, which has no
            split lists).
        batch_size: samples per subset per step and device (MTP: 1 per subset per GPU).
        mean: per-band mean of the [0, 1] images (None: ImageNet's).
        std: per-band std, likewise.
        **kwargs: :class:`~rsfm.data.base.DataModule` options (``num_workers``, ``seed``...).

    Raises:
        ConfigError: on no subsets, a bad source specification or crop size.
        DataError: from the sources, on missing folders (naming the key).
    """

    sample_keys = ("image",)

    def __init__(
        self,
        subsets: dict[str, MultiTaskSource],
        crop_size: int = 448,
        scale_range: list[float] = [0.5, 2.0],  # noqa: B006 (never mutated)
        crops_per_image: int = 1,
        flip_prob: float = 0.75,
        photometric_distortion: bool = True,
        train_split: str | None = "train",
        batch_size: int = 1,
        mean: list[float] | None = None,
        std: list[float] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(batch_size=batch_size, **kwargs)
        if not subsets:
            raise ConfigError("data.subsets is empty: multi-task pretraining needs at least one labelled subset")
        if crop_size < 1:
            raise ConfigError(f"data.crop_size must be positive, got {crop_size}")
        if crops_per_image < 1:
            raise ConfigError(f"data.crops_per_image must be >= 1, got {crops_per_image}")
        if len(scale_range) != 2 or not 0 < scale_range[0] <= scale_range[1]:
            raise ConfigError(f"data.scale_range must be [low, high] with 0 < low <= high, got {scale_range}")
        self.sources = {str(n): build_source(s, f"data.subsets.{n}") for n, s in subsets.items()}
        for name, source in self.sources.items():
            if not source.tasks:
                raise DataError(f"data.subsets.{name}: the source carries no labels (no semantic, instance or rotated)")
        self.crop_size = int(crop_size)
        self.scale_range = (float(scale_range[0]), float(scale_range[1]))
        self.crops_per_image = int(crops_per_image)
        self.flip_prob = float(flip_prob)
        self.photometric_distortion = bool(photometric_distortion)
        self.train_split = train_split
        self.num_channels = 3
        self.mean, self.std = default_stats(3, mean, std)

    # -- description ---------------------------------------------------------------------------

    def info(self) -> DataInfo:
        """Normalisation, the crop size, and per subset its tasks and classes."""
        return DataInfo(
            classes=[],
            num_channels=self.num_channels,
            mean=list(self.mean),
            std=list(self.std),
            sample_keys=self.sample_keys,
            crop_size=self.crop_size,
            img_size=self.crop_size,
            subsets={name: {"tasks": list(s.tasks), "classes": list(s.classes)} for name, s in self.sources.items()},
        )

    @property
    def scan_skipped(self) -> list[tuple[str, str]]:
        """Unusable files the sources found while listing their records."""
        out: list[tuple[str, str]] = []
        for source in self.sources.values():
            out += list(getattr(source, "scan_skipped", None) or [])
        return out

    # -- datasets and loaders ----------------------------------------------------------------

    def collate(self) -> Any:
        """Lists per key (:func:`~rsfm.data.multitask.collate_multitask`)."""
        from rsfm.data.multitask import collate_multitask

        return collate_multitask

    def setup(self, stage: str | None = None) -> None:
        """Build every subset's training dataset (the augmentation of MTP, with rsfm's fixes)."""
        from rsfm.data.multitask import MultiTaskDataset, MultiTaskTrainTransform

        if "train" in self.datasets:
            return
        transform = MultiTaskTrainTransform(
            crop_size=self.crop_size,
            scale_range=self.scale_range,
            flip_prob=self.flip_prob,
            photometric_distortion=self.photometric_distortion,
        )
        train = {}
        for name, source in self.sources.items():
            ds = MultiTaskDataset(source, self.train_split, transform)
            if len(ds) == 0:
                raise DataError(f"data.subsets.{name}: no training images in split {self.train_split!r}")
            train[name] = ds
        self.datasets["train"] = train

    def train_dataloader(self) -> Any:
        """``CombinedLoader({subset: loader}, "min_size")``: one batch of every subset per step."""
        from rsfm.data.samplers import KeyedDataset

        datasets = self._split("train")
        loaders = {}
        for name, ds in datasets.items():
            keyed = KeyedDataset(ds, seed=_subset_seed(self.seed, name), repeats=self.crops_per_image)
            keyed.takes_keys = True  # type: ignore[attr-defined]
            loaders[name] = self.loader(keyed, train=True)
        return MinSizeLoader(loaders)

    def val_dataloader(self) -> Any:
        """No validation during pretraining (``[]``)."""
        return []

    def test_dataloader(self) -> Any:
        """Multi-task pretraining has no test split.

        Raises:
            DataError: always.
        """
        raise DataError("MultiTaskDataModule has no test split: evaluate the exported encoder downstream")


def _min_size_loader_class() -> type:
    from lightning.pytorch.utilities import CombinedLoader

    class _MinSizeLoader(CombinedLoader):
        """``CombinedLoader(..., "min_size")`` whose length is known before iterating (the run length needs it)."""

        def __init__(self, loaders: dict[str, Any]) -> None:
            super().__init__(loaders, mode="min_size")

        def __len__(self) -> int:
            if self._iterator is not None:
                return super().__len__()
            return min(len(loader) for loader in self.flattened)

    return _MinSizeLoader


def MinSizeLoader(loaders: dict[str, Any]) -> Any:  # noqa: N802 (a class factory: lightning is imported lazily)
    """``{name: loader}`` → a ``min_size`` :class:`~lightning.pytorch.utilities.CombinedLoader` with a length.

    Yields ``{name: batch}``; as many batches as the shortest loader has.
    """
    global _MIN_SIZE_LOADER
    if _MIN_SIZE_LOADER is None:
        _MIN_SIZE_LOADER = _min_size_loader_class()
    return _MIN_SIZE_LOADER(loaders)


_MIN_SIZE_LOADER: type | None = None
