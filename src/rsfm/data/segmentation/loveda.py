"""LoveDA land-cover segmentation (Wang et al., NeurIPS 2021 Datasets and Benchmarks).

Layout: ``images_png/*.png`` + ``masks_png/*.png`` (mode ``L``), directly under the root or in
the official ``Train|Val/Urban|Rural/`` sub-folders. Raw mask label 0 is no-data (ignored),
1–7 are background, building, road, water, barren, forest, agriculture (labels 0–6 here).

.. versionadded:: 0.2
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from rsfm.data.segmentation.common import (
    IGNORE_INDEX,
    SegmentationDataModule,
    Split,
    index_mask_reader,
    pair_by_stem,
    resolve_splits,
)
from rsfm.utils.errors import DataError
from rsfm.utils.registry import DATASETS

__all__ = ["LOVEDA_CLASSES", "LOVEDA_PALETTE", "LoveDADataModule", "loveda_pairs"]

#: LoveDA classes for labels 1–7 of its masks (here 0–6; raw 0 is no-data)
LOVEDA_CLASSES = ("background", "building", "road", "water", "barren", "forest", "agriculture")
#: LoveDA's own rendering colours, for visualisations
LOVEDA_PALETTE = (
    (255, 255, 255),
    (255, 0, 0),
    (255, 255, 0),
    (0, 0, 255),
    (159, 129, 183),
    (0, 255, 0),
    (255, 195, 128),
)


def loveda_pairs(root: str | os.PathLike[str]) -> list[tuple[Path, Path]]:
    """Image/mask pairs of every ``images_png``/``masks_png`` folder pair under ``root``.

    Covers both the flat layout (``root/images_png``) and the official one
    (``root/Train/Urban/images_png`` ...).

    Raises:
        DataError: if ``root`` does not exist, holds no ``images_png`` folder, or an image
            has no mask.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"LoveDA folder not found: {root}")
    dirs = sorted({p for p in [root / "images_png", *root.glob("**/images_png")] if p.is_dir()})
    if not dirs:
        raise DataError(f"no 'images_png' folder under {root}")
    try:
        return [pair for d in dirs for pair in pair_by_stem(d, d.parent / "masks_png")]
    except (ValueError, FileNotFoundError) as err:
        raise DataError(str(err)) from None


@DATASETS.register
class LoveDADataModule(SegmentationDataModule):
    """LoveDA: 7 land-cover classes, raw label 0 (no-data) ignored.

    Args:
        root: a folder holding ``images_png``/``masks_png``, or the official release root
            (with ``Train``/``Val``).
        train_split: sub-folder for training (``"Train"``), or None: the images of ``root``
            not held out by the other splits.
        val_split: sub-folder (``"Val"``) or image names (stems) held out for validation.
        test_split: sub-folder or image names of the test split (required; LoveDA's test
            labels are not public, so papers test on ``Val`` — set both to ``"Val"`` to do so).
        **kwargs: :class:`~rsfm.data.segmentation.common.SegmentationDataModule` options.
    """

    def __init__(
        self,
        root: str,
        train_split: Split = None,
        val_split: Split = None,
        test_split: Split = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(root, **kwargs)
        self.train_split, self.val_split, self.test_split = train_split, val_split, test_split
        self._read = index_mask_reader(
            len(LOVEDA_CLASSES), {0: IGNORE_INDEX, **{i + 1: i for i in range(len(LOVEDA_CLASSES))}}
        )

    def split_pairs(self) -> dict[str, list[tuple[Path, Path]]]:
        """Pairs of the three splits (see the arguments)."""
        return resolve_splits(self.root, loveda_pairs, self.train_split, self.val_split, self.test_split)

    def classes(self) -> list[str]:
        """LoveDA's 7 classes."""
        return list(LOVEDA_CLASSES)

    def palette(self) -> list[tuple[int, int, int]]:
        """LoveDA's rendering colours."""
        return list(LOVEDA_PALETTE)

    def read_mask(self, path: Path) -> np.ndarray:
        """Raw 0 → ignore, 1–7 → 0–6."""
        return self._read(path)
