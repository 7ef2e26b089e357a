"""Bi-temporal change-detection data in the LEVIR-CD layout, its augmentation and datamodule.

LEVIR-CD (Chen & Shi, Remote Sensing 2020) stores each scene pair under one file name in three
folders::

    root/A/<name>.png       before image, RGB
    root/B/<name>.png       after image, RGB, same size
    root/label/<name>.png   change mask, 0 = no change, 255 = change (single band)

The published set also splits it into ``root/{train,val,test}/{A,B,label}``; with that layout
the datamodule uses the published split, otherwise it draws a seeded split by file.

Samples are dicts ``{"image_a": (3, H, W) float32 in [0, 1], "image_b": (3, H, W) float32 in
[0, 1], "mask": (H, W) int64 in {0, 1}, "name": str}``; normalisation is left to the model
(:class:`~rsfm.tasks.change_detection.ChangeDetectionTask`), so the same samples serve any
encoder and the visualisations.

.. versionadded:: 0.1
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import ConcatDataset, DataLoader, Dataset

from .io import IMAGE_EXTENSIONS, read_image

__all__ = [
    "ChangeDetectionDataModule",
    "LEVIRCD",
    "PairedAugment",
    "find_pairs",
    "read_change_mask",
    "split_pairs",
]

#: folder names of the LEVIR-CD layout: before, after, change mask
FOLDERS = ("A", "B", "label")

Sample = dict[str, Any]


def read_change_mask(path: str | os.PathLike[str], change_value: int = 255) -> Tensor:
    """Read a binary change mask.

    The file must hold one band (or identical R, G, B bands, as some re-saved copies do) with
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
        a = np.asarray(img)
    if a.ndim == 3:
        bands = a[..., :3]
        if not (np.array_equal(bands[..., 0], bands[..., 1]) and np.array_equal(bands[..., 0], bands[..., 2])):
            raise ValueError(f"{path}: change mask has {a.shape[-1]} differing bands; expected one band")
        a = bands[..., 0]
    values = np.unique(a)
    bad = [int(v) for v in values if v not in (0, change_value)]
    if bad:
        raise ValueError(
            f"{path}: change mask values must be 0 (no change) or {change_value} (change), found {bad[:5]}"
        )
    return torch.from_numpy((a == change_value).astype(np.int64))


def find_pairs(root: str | os.PathLike[str]) -> list[str]:
    """File names present in all of ``root/A``, ``root/B`` and ``root/label``, sorted.

    Args:
        root: folder in the LEVIR-CD layout.

    Returns:
        The sorted file names (e.g. ``"test_2_0000_0000.png"``).

    Raises:
        FileNotFoundError: if one of the three folders is missing.
        ValueError: if a file lacks its counterpart in another folder (the first few are
            named), or there are no images.

    """
    root = Path(root)
    found: dict[str, set[str]] = {}
    for folder in FOLDERS:
        d = root / folder
        if not d.is_dir():
            raise FileNotFoundError(f"change-detection folder {d} not found; expected {root}/{{A,B,label}}")
        found[folder] = {p.name for p in d.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS}
    every = set().union(*found.values())
    missing = [f"{folder}/{name}" for name in sorted(every) for folder in FOLDERS if name not in found[folder]]
    if missing:
        raise ValueError(
            f"{root}: unpaired files, missing {', '.join(missing[:5])}" + (" ..." if len(missing) > 5 else "")
        )
    if not every:
        raise ValueError(f"{root}: no images in A/, B/ and label/")
    return sorted(every)


def split_pairs(
    names: Sequence[str], val_fraction: float = 0.2, test_fraction: float = 0.2, seed: int = 0
) -> dict[str, list[str]]:
    """Seeded split of pair names into train / val / test.

    The names are sorted, then permuted by a generator seeded with ``seed``; the first
    ``round(n × test_fraction)`` go to test, the next ``round(n × val_fraction)`` to val, the
    rest to train. The same names and seed always give the same split, whatever the order in
    which the files were listed. 11 LEVIR-CD pairs with the defaults: 7 / 2 / 2.

    Args:
        names: pair file names.
        val_fraction: fraction of pairs for validation, in [0, 1).
        test_fraction: fraction of pairs for testing, in [0, 1).
        seed: seed of the permutation.

    Returns:
        ``{"train": [...], "val": [...], "test": [...]}``, each sorted.

    Raises:
        ValueError: on fractions out of range or a split that leaves no training pair.

    """
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1):
        raise ValueError(f"val_fraction and test_fraction must lie in [0, 1), got {val_fraction}, {test_fraction}")
    names = sorted(names)
    n = len(names)
    n_test, n_val = round(n * test_fraction), round(n * val_fraction)
    if n - n_test - n_val < 1:
        raise ValueError(f"{n} pairs leave no training pair with val_fraction={val_fraction}, test={test_fraction}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    picked = [names[i] for i in order]
    return {
        "train": sorted(picked[n_test + n_val :]),
        "val": sorted(picked[n_test : n_test + n_val]),
        "test": sorted(picked[:n_test]),
    }


class PairedAugment:
    """Random crop, flips and 90° rotations applied identically to both images and the mask.

    Change labels are defined pixel by pixel between the two dates, so every geometric
    transform must move the before image, the after image and the mask together.

    Args:
        crop_size: side of the random square crop in pixels; ``None`` keeps the full image.
        hflip: random horizontal flip (p = 0.5).
        vflip: random vertical flip (p = 0.5).
        rot90: random rotation by 0, 90, 180 or 270 degrees.
        generator: random generator; ``None`` uses torch's global one (seeded per worker by
            Lightning's ``seed_everything(workers=True)``).

    Input and output: a sample dict (see the module docstring); other keys pass through.

    Raises:
        ValueError: at call time, if the images are smaller than ``crop_size`` or the sample's
            images and mask differ in size.

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
            raise ValueError(f"crop_size must be positive, got {crop_size}")
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
                raise ValueError(f"image {(h, w)} is smaller than crop_size {c}")
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


class LEVIRCD(Dataset[Sample]):
    """Change-detection pairs in the LEVIR-CD layout.

    Args:
        root: folder holding ``A/``, ``B/`` and ``label/``.
        names: the pair file names to use (a split); ``None``: all of :func:`find_pairs`.
        transform: callable on the sample dict, e.g. :class:`PairedAugment`.
        change_value: mask value that marks change (255 in LEVIR-CD).

    Raises:
        FileNotFoundError, ValueError: from :func:`find_pairs`; ValueError if a name in
            ``names`` is not a complete pair.

    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        names: Sequence[str] | None = None,
        transform: Callable[[Sample], Sample] | None = None,
        change_value: int = 255,
    ) -> None:
        self.root = Path(root)
        available = find_pairs(self.root)
        if names is None:
            names = available
        else:
            unknown = sorted(set(names) - set(available))
            if unknown:
                raise ValueError(f"{self.root}: no complete pair for {unknown[:5]}")
        self.names = list(names)
        self.transform = transform
        self.change_value = change_value

    def __len__(self) -> int:
        """Return the number of pairs."""
        return len(self.names)

    def __getitem__(self, index: int) -> Sample:
        """Read pair ``index``.

        Returns:
            ``{"image_a", "image_b": (3, H, W) float32 in [0, 1], "mask": (H, W) int64 in
            {0, 1}, "name": str}``, after ``transform``.

        Raises:
            ValueError: naming the file, if the two images and the mask differ in size or the
                mask holds unexpected values.

        """
        name = self.names[index]
        paths = [self.root / folder / name for folder in FOLDERS]
        image_a = read_image(paths[0]).float().div_(255)
        image_b = read_image(paths[1]).float().div_(255)
        mask = read_change_mask(paths[2], self.change_value)
        for p, t in ((paths[1], image_b), (paths[2], mask)):
            if tuple(t.shape[-2:]) != tuple(image_a.shape[-2:]):
                raise ValueError(f"{p}: size {tuple(t.shape[-2:])} differs from {paths[0]} {tuple(image_a.shape[-2:])}")
        sample: Sample = {"image_a": image_a, "image_b": image_b, "mask": mask, "name": name}
        return self.transform(sample) if self.transform is not None else sample


class ChangeDetectionDataModule(L.LightningDataModule):
    """Train / val / test loaders over a LEVIR-CD folder.

    Splits: ``root/{train,val,test}/{A,B,label}`` when present (the published split),
    otherwise :func:`split_pairs` of ``root/{A,B,label}`` with ``val_fraction``,
    ``test_fraction`` and ``split_seed``. Training samples are augmented by
    :class:`PairedAugment` (random ``crop_size`` crop, flips, 90° rotations); validation and
    test samples are the full images, unaugmented.

    Args:
        root: dataset folder.
        crop_size: training crop side in pixels (a multiple of the encoder's patch size);
            ``None``: full images.
        batch_size: pairs per training batch.
        eval_batch_size: pairs per validation/test batch; ``None``: ``batch_size``.
        num_workers: data-loading worker processes.
        val_fraction: fraction of pairs for validation (random split only).
        test_fraction: fraction of pairs for testing (random split only).
        split_seed: seed of the random split.
        train_repeats: passes over the training pairs per epoch (each with fresh random
            crops); lets a tiny set give more than one optimiser step per epoch.
        hflip: random horizontal flips in training.
        vflip: random vertical flips in training.
        rot90: random 90° rotations in training.
        change_value: mask value that marks change.

    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        crop_size: int | None = 256,
        batch_size: int = 4,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        val_fraction: float = 0.2,
        test_fraction: float = 0.2,
        split_seed: int = 0,
        train_repeats: int = 1,
        hflip: bool = True,
        vflip: bool = True,
        rot90: bool = True,
        change_value: int = 255,
    ) -> None:
        super().__init__()
        if train_repeats < 1:
            raise ValueError(f"train_repeats must be >= 1, got {train_repeats}")
        self.root = Path(root)
        self.crop_size = crop_size
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.val_fraction, self.test_fraction, self.split_seed = val_fraction, test_fraction, split_seed
        self.train_repeats = train_repeats
        self.augment = PairedAugment(crop_size, hflip=hflip, vflip=vflip, rot90=rot90)
        self.change_value = change_value
        self.datasets: dict[str, LEVIRCD] = {}

    def split_names(self) -> dict[str, list[str]]:
        """The pair names of each split (``train``, ``val``, ``test``)."""
        if all((self.root / s / "A").is_dir() for s in ("train", "val", "test")):
            return {s: find_pairs(self.root / s) for s in ("train", "val", "test")}
        return split_pairs(find_pairs(self.root), self.val_fraction, self.test_fraction, self.split_seed)

    def _split_root(self, split: str) -> Path:
        return self.root / split if (self.root / split / "A").is_dir() else self.root

    def setup(self, stage: str | None = None) -> None:
        """Index the splits (cheap: file names only)."""
        if self.datasets:
            return
        for split, names in self.split_names().items():
            transform = self.augment if split == "train" else None
            self.datasets[split] = LEVIRCD(self._split_root(split), names, transform, self.change_value)

    def _loader(self, split: str, train: bool) -> DataLoader[Sample]:
        self.setup()
        ds: Dataset[Sample] = self.datasets[split]
        if len(ds) == 0:
            raise ValueError(f"the {split} split of {self.root} is empty")
        if train and self.train_repeats > 1:
            ds = ConcatDataset([ds] * self.train_repeats)
        return DataLoader(
            ds,
            batch_size=self.batch_size if train else self.eval_batch_size,
            shuffle=train,
            drop_last=train and len(ds) >= self.batch_size,  # type: ignore[arg-type]
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader[Sample]:
        """Shuffled, augmented training pairs (incomplete last batch dropped)."""
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader[Sample]:
        """Validation pairs at full size, in name order."""
        return self._loader("val", train=False)

    def test_dataloader(self) -> DataLoader[Sample]:
        """Test pairs at full size, in name order."""
        return self._loader("test", train=False)
