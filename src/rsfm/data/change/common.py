"""What every change-detection layout shares: pair records, augmentation, dataset, datamodule.

Samples are dicts ``{"image_a": (C, H, W) float32 in [0, 1] (before), "image_b": (C, H, W)
float32 in [0, 1] (after), "mask": (H, W) int64 in {0, 1} (1 = change), "id": str}``;
normalisation is left to the model, so the same samples serve any encoder and the
visualisations. A layout (:mod:`~rsfm.data.change.levir_cd`, ``cdd``, ``oscd``) lists the
:class:`ChangePairRecord` of each split and may read multi-file or multispectral images.

Training samples are random ``crop_size`` crops with flips and 90° rotations applied
identically to both dates and the mask; validation and test samples are the full images,
predicted by sliding windows of the crop size in the task.

A pair with a file that cannot be read (empty, truncated, not an image) never stops a run: the
dataset returns ``{"skipped": (path, reason), "id": str}`` for it, and the loaders' collate
(:func:`~rsfm.data.skips.collate_skipping`) leaves it out of the batch and lists it under
``batch["skipped"]`` for the run's skip report. Named splits that share a pair with the
training split are an error.

.. versionadded:: 0.2
"""

from __future__ import annotations

import abc
import os
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from rsfm.data.base import DataInfo, DataModule, check_folder
from rsfm.data.io import IMAGE_EXTENSIONS, BadImageError, UnsupportedImageError, read_image
from rsfm.data.skips import READ_ERRORS, collate_skipping, skip_reason
from rsfm.data.splits import check_disjoint_splits
from rsfm.utils.errors import DataError

__all__ = [
    "ChangeDataset",
    "ChangeDetectionDataModule",
    "ChangePairRecord",
    "PairedAugment",
    "complete_pairs",
    "find_pairs",
    "read_change_mask",
]

Sample = dict[str, Any]


@dataclass(frozen=True)
class ChangePairRecord:
    """Files of one bi-temporal pair.

    Attributes:
        name: pair name (file name, or city for OSCD).
        image_a: before image: one file, or one file per band.
        image_b: after image, likewise.
        mask: change mask file (None for an unlabelled pair).
    """

    name: str
    image_a: Path | tuple[Path, ...]
    image_b: Path | tuple[Path, ...]
    mask: Path | None


def read_change_mask(path: str | os.PathLike[str], change_value: int = 255) -> Tensor:
    """Read a binary change mask.

    The file must hold one band (or identical R, G, B bands, as some re-saved copies do; an
    alpha band, as in ``LA`` or ``RGBA`` PNGs, is ignored) with
    only the values 0 (no change) and ``change_value`` (255 in LEVIR-CD). Anything else is an
    error rather than a guess: a JPEG-compressed or resampled mask has intermediate values.

    Args:
        path: mask image (PNG, TIFF...).
        change_value: pixel value that marks change.

    Returns:
        ``(H, W)`` int64, 1 = change, 0 = no change.

    Raises:
        ValueError: naming the file, if its bands differ or it holds values other than 0 and
            ``change_value``.

    """
    path = Path(path)
    with Image.open(path) as img:
        img.load()
        if img.mode == "1":
            img = img.convert("L")
        alpha = img.mode in ("LA", "RGBA", "La", "RGBa")
        a = np.asarray(img)
    if a.ndim == 3:
        bands = a[..., :-1] if alpha else a  # an alpha band is not a label band
        if any(not np.array_equal(bands[..., 0], bands[..., i]) for i in range(1, bands.shape[-1])):
            raise ValueError(
                f"{path}: change mask has {bands.shape[-1]} differing colour bands"
                f"{' (besides alpha)' if alpha else ''}; expected one band or identical bands"
            )
        a = bands[..., 0]
    values = np.unique(a)
    bad = [int(v) for v in values if v not in (0, change_value)]
    if bad:
        raise ValueError(
            f"{path}: change mask values must be 0 (no change) or {change_value} (change), found {bad[:5]}"
        )
    return torch.from_numpy((a == change_value).astype(np.int64))


def find_pairs(root: str | os.PathLike[str], folders: Sequence[str] = ("A", "B", "label")) -> list[str]:
    """File names present in all three ``folders`` (before, after, mask) of ``root``, sorted.

    Args:
        root: folder in the LEVIR-CD layout (or CDD's, with ``folders=("A", "B", "OUT")``).
        folders: names of the before, after and mask folders.

    Hidden files (``.DS_Store``, macOS ``._x.png`` resource forks) are not images and are
    passed over, as in the other folder datasets.

    Returns:
        The sorted file names (e.g. ``"test_2_0000_0000.png"``).

    Raises:
        DataError: if one of the three folders is missing, a file lacks its counterpart in
            another folder (the first few are named), or there are no images.

    """
    root = Path(root)
    found: dict[str, set[str]] = {}
    for folder in folders:
        d = root / folder
        if not d.is_dir():
            raise DataError(f"change-detection folder {d} not found; expected {root}/{{{','.join(folders)}}}")
        found[folder] = {
            p.name
            for p in d.iterdir()
            if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")
        }
    return complete_pairs(root, found)


def complete_pairs(root: Path, found: Mapping[str, Collection[str]], suffix: str = "") -> list[str]:
    """The sorted names present in every folder of ``found`` (folder -> names).

    Raises:
        DataError: naming ``root`` and the first five missing files (``folder/name`` +
            ``suffix``), if a name lacks a counterpart; if there are no names at all.
    """
    every = set().union(*found.values())
    missing = [f"{folder}/{name}{suffix}" for name in sorted(every) for folder in found if name not in found[folder]]
    if missing:
        raise DataError(
            f"{root}: unpaired files, missing {', '.join(missing[:5])}" + (" ..." if len(missing) > 5 else "")
        )
    if not every:
        raise DataError(f"{root}: no images in {', '.join(found)}")
    return sorted(every)


class PairedAugment:
    """Random crop, flips and 90° rotations applied identically to both images and the mask.

    Change labels are defined pixel by pixel between the two dates, so every geometric
    transform must move the before image, the after image and the mask together.

    Args:
        crop_size: side of the random square crop in pixels, >= 1; ``None`` keeps the full
            image.
        hflip: random horizontal flip (p = 0.5).
        vflip: random vertical flip (p = 0.5).
        rot90: random rotation by 0, 90, 180 or 270 degrees.
        generator: random generator; ``None`` uses torch's global one (seeded per sample by
            the loader, :class:`~rsfm.data.samplers.KeyedDataset`).

    Input and output: a sample dict (see the module docstring); other keys pass through.

    Raises:
        ValueError: if ``crop_size`` is not None and below 1; at call time, if the images are
            smaller than ``crop_size`` or the sample's images and mask differ in size.

    """

    def __init__(
        self,
        crop_size: int | None = None,
        hflip: bool = True,
        vflip: bool = True,
        rot90: bool = True,
        generator: torch.Generator | None = None,
    ) -> None:
        if crop_size is not None and crop_size < 1:
            raise ValueError(
                f"data.crop_size must be a positive number of pixels or None (whole images), got {crop_size}"
            )
        self.crop_size = crop_size
        self.hflip, self.vflip, self.rot90 = hflip, vflip, rot90
        self.generator = generator

    def _randint(self, high: int) -> int:
        return int(torch.randint(high, (1,), generator=self.generator))

    def __call__(self, sample: Sample) -> Sample:
        """Augment one sample; see the class docstring."""
        keys = ("image_a", "image_b", "mask")
        h, w = sample["mask"].shape[-2:]
        for k in keys[:2]:
            if tuple(sample[k].shape[-2:]) != (h, w):
                raise ValueError(f"{k} is {tuple(sample[k].shape[-2:])} but the mask is {(h, w)}")
        out = dict(sample)
        if self.crop_size is not None:
            c = self.crop_size
            if h < c or w < c:
                raise ValueError(
                    f"{sample.get('id', 'an image pair')}: data.crop_size {c} is larger than its {(h, w)} pixels; "
                    "lower data.crop_size, or set it to null for whole images"
                )
            top, left = self._randint(h - c + 1), self._randint(w - c + 1)
            for k in keys:
                out[k] = out[k][..., top : top + c, left : left + c]
        # draw every decision before applying any, so all three tensors get the same ones
        flip_w = self.hflip and self._randint(2) == 1
        flip_h = self.vflip and self._randint(2) == 1
        turns = self._randint(4) if self.rot90 else 0
        for k in keys:
            t = out[k]
            if flip_w:
                t = t.flip(-1)
            if flip_h:
                t = t.flip(-2)
            if turns:
                t = torch.rot90(t, turns, dims=(-2, -1))
            out[k] = t.contiguous()
        return out


def _first_file(paths: Path | tuple[Path, ...]) -> Path:
    """The file of a one-file image, the first band file of a multi-file one."""
    return Path(paths) if isinstance(paths, str | os.PathLike) else Path(paths[0])


def _failed_file(paths: Any, err: BaseException) -> Path:
    """The file of ``paths`` (one path, or one per band) that ``err`` was raised for."""
    if isinstance(err, BadImageError):
        return Path(err.path)
    if isinstance(paths, str | os.PathLike):
        return Path(paths)
    candidates = [Path(p) for p in paths]
    named = getattr(err, "filename", None)
    for p in candidates:
        if (named is not None and os.fspath(named) == str(p)) or str(p) in str(err):
            return p
    for p in candidates:  # a missing or empty band file
        try:
            if p.stat().st_size == 0:
                return p
        except OSError:
            return p
    return candidates[0]


class ChangeDataset(Dataset[Sample]):
    """Bi-temporal pairs read from disk; pairs with a file that cannot be read are skipped.

    Args:
        records: the pairs.
        read_image: ``path(s) -> (C, H, W) float32 in [0, 1]`` for one date.
        read_mask: ``path -> (H, W) int64 in {0, 1}``.
        transform: callable on the sample dict, e.g. :class:`PairedAugment`.
    """

    def __init__(
        self,
        records: Sequence[ChangePairRecord],
        read_image: Callable[[Any], Tensor],
        read_mask: Callable[[Path], Tensor],
        transform: Callable[[Sample], Sample] | None = None,
    ) -> None:
        self.records = list(records)
        self.read_image = read_image
        self.read_mask = read_mask
        self.transform = transform

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> Sample:
        """Read pair ``index`` (see the module docstring for the sample).

        When a file of the pair cannot be read (:data:`~rsfm.data.skips.READ_ERRORS`: empty,
        truncated, not an image, vanished), ``{"skipped": (path, reason), "id": name}``
        instead, naming the first such file (before image, after image, mask).

        Raises:
            DataError: naming the file, if the two images and the mask differ in size.
            UnsupportedImageError: naming the file, if it lacks a band of ``data.bands``.
        """
        r = self.records[index]
        read: list[Any] = []
        for paths, reader in ((r.image_a, self.read_image), (r.image_b, self.read_image), (r.mask, self.read_mask)):
            try:
                read.append(reader(paths))
            except UnsupportedImageError:
                raise  # bands the file lacks (data.bands): a setting to fix, not a damaged file
            except READ_ERRORS as err:
                failed = _failed_file(paths, err)
                return {"skipped": (str(failed), skip_reason(failed, err)), "id": r.name}
        image_a, image_b, mask = read
        for what, t in (("after image", image_b), ("mask", mask)):
            if tuple(t.shape[-2:]) != tuple(image_a.shape[-2:]):
                raise DataError(
                    f"pair {r.name}: the {what} is {tuple(t.shape[-2:])}, the before image {tuple(image_a.shape[-2:])}"
                )
        if image_a.shape[0] != image_b.shape[0]:
            raise DataError(f"pair {r.name}: {image_a.shape[0]} bands before, {image_b.shape[0]} after")
        sample: Sample = {"image_a": image_a, "image_b": image_b, "mask": mask, "id": r.name}
        return self.transform(sample) if self.transform is not None else sample


class ChangeDetectionDataModule(DataModule, abc.ABC):
    """Loaders of a change-detection layout: augmented crops for training, whole pairs for evaluation.

    Subclasses implement :meth:`split_records` and may override :meth:`read_image` and
    :meth:`read_mask`.

    Args:
        root: dataset folder.
        crop_size: training crop side in pixels, >= 1 (a multiple of the encoder's patch
            size); also the sliding-window side of evaluation. None: whole images.
        crops_per_image: random crops of each training pair per epoch.
        hflip: random left-right flips in training.
        vflip: random top-bottom flips in training.
        rot90: random 90° rotations in training.
        batch_size: training pairs per batch and device.
        eval_batch_size: whole pairs per validation/test batch.
        num_workers: loader processes.
        bands: 0-based bands of the image files (any number); None: RGB.
        raster_scale: ``"auto"`` or a divisor (see :class:`~rsfm.data.io.RasterRule`).
        mean: per-band mean of images in [0, 1] (None: ImageNet's, for RGB).
        std: per-band std, likewise.
        seed: seed of the training order and the augmentation (None: the run's ``seed``).
        pin_memory: pin batches when CUDA is available.

    Raises:
        DataError: if ``root`` is not a folder, mean/std do not fit the bands, or
            ``crop_size`` is neither None nor a positive integer (naming ``data.crop_size``).
        ValueError: on a bad loader setting.
    """

    sample_keys = ("image_a", "image_b", "mask")

    def __init__(
        self,
        root: str,
        crop_size: int | None = 256,
        crops_per_image: int = 1,
        hflip: bool = True,
        vflip: bool = True,
        rot90: bool = True,
        batch_size: int = 4,
        eval_batch_size: int = 1,
        num_workers: int = 0,
        bands: list[int] | None = None,
        raster_scale: str | float = "auto",
        mean: list[float] | None = None,
        std: list[float] | None = None,
        seed: int | None = None,
        pin_memory: bool = True,
    ) -> None:
        super().__init__(batch_size, eval_batch_size, num_workers, seed, pin_memory)
        self.root = check_folder(root)
        if crops_per_image < 1:
            raise ValueError(f"data.crops_per_image must be >= 1, got {crops_per_image}")
        if crop_size is not None and (isinstance(crop_size, bool) or int(crop_size) != crop_size or crop_size < 1):
            raise DataError(
                f"data.crop_size must be a positive number of pixels, or null for whole images; got {crop_size!r}"
            )
        self.crop_size = int(crop_size) if crop_size is not None else None
        self.crops_per_image = int(crops_per_image)
        self.augment = PairedAugment(self.crop_size, hflip=hflip, vflip=vflip, rot90=rot90)
        self.set_bands(bands, raster_scale, mean, std)
        self._records: dict[str, list[ChangePairRecord]] | None = None

    @abc.abstractmethod
    def split_records(self) -> dict[str, list[ChangePairRecord]]:
        """``{"train", "val", "test"}`` → pair records (each layout implements it)."""

    def read_image(self, path: Any) -> Tensor:
        """One date: ``(C, H, W)`` float32 in [0, 1] (8-bit files / 255)."""
        return read_image(path, self.raster).float().div_(255.0)

    def read_mask(self, path: Path) -> Tensor:
        """Change mask: ``(H, W)`` int64 in {0, 1} (0 / 255 files)."""
        return read_change_mask(path)

    def records(self) -> dict[str, list[ChangePairRecord]]:
        """The pair records of every split (listed once).

        Raises:
            DataError: if the training or test split is empty, or the training split shares a
                pair (by before-image file) with the validation or test split.

        Warns:
            UserWarning: if the validation and test splits share pairs.
        """
        if self._records is None:
            records = self.split_records()
            if not records.get("train"):
                raise DataError(f"the training split of {self.root} is empty")
            if not records.get("test"):
                raise DataError(f"the test split of {self.root} is empty")
            before = {k: [_first_file(r.image_a) for r in v] for k, v in records.items()}
            check_disjoint_splits(before, self.root, noun="pair")
            self._records = records
        return self._records

    def info(self) -> DataInfo:
        """Two classes (no change, change), bands and normalisation."""
        return DataInfo(
            classes=["no_change", "change"],
            num_channels=self.num_channels,
            mean=self.mean,
            std=self.std,
            sample_keys=self.sample_keys,
            palette=[(0, 0, 0), (255, 255, 255)],
            bands=list(self.raster.bands) if self.raster.bands is not None else None,
            raster_scale=self.raster.scale,
            crop_size=self.crop_size,
        )

    def collate(self) -> Callable[[list[Any]], dict[str, Any]]:
        """Stack the readable pairs, list the skipped ones (:func:`~rsfm.data.skips.collate_skipping`).

        A batch whose pairs were all unreadable is ``{"image_a": (0, C, 0, 0) float32,
        "image_b": (0, C, 0, 0) float32, "mask": (0, 0, 0) int64, "id": [], "skipped": [...]}``.
        """
        image = torch.empty((0, self.num_channels, 0, 0), dtype=torch.float32)
        empty = {"image_a": image, "image_b": image, "mask": torch.empty((0, 0, 0), dtype=torch.int64), "id": []}
        return partial(collate_skipping, empty=empty)

    def setup(self, stage: str | None = None) -> None:
        """Build the datasets of the splits (once)."""
        if self.datasets:
            return
        for split, recs in self.records().items():
            if recs:
                transform = self.augment if split == "train" else None
                self.datasets[split] = ChangeDataset(recs, self.read_image, self.read_mask, transform)
