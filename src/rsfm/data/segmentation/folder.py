"""Any image/mask folder pair with integer label masks (``images/x.tif`` ↔ ``masks/x.png``).

.. versionadded:: 0.2
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from rsfm.data.segmentation.common import (
    IGNORE_INDEX,
    SegmentationDataModule,
    Split,
    index_mask_reader,
    infer_classes,
    pair_by_stem,
    resolve_splits,
)
from rsfm.utils.errors import DataError
from rsfm.utils.registry import DATASETS

__all__ = ["SegmentationFolderDataModule"]


@DATASETS.register
class SegmentationFolderDataModule(SegmentationDataModule):
    """Images and integer-label masks in two folders, paired by file stem.

    Args:
        root: dataset folder.
        images_dir: images folder relative to ``root`` (and to split sub-folders).
        masks_dir: masks folder, likewise.
        classes: class names for labels ``0..K-1``; None: ``"0"``, ``"1"``… up to the
            largest label found (every mask is read once).
        label_map: raw mask value → label (or 255 = ignore); raw values not in the map are
            ignored.
        palette: ``(R, G, B)`` per class for visualisations.
        train_split: sub-folder, or None: the images not held out.
        val_split: sub-folder or image stems for validation.
        test_split: sub-folder or image stems for testing (required).
        **kwargs: :class:`~rsfm.data.segmentation.common.SegmentationDataModule` options.
    """

    def __init__(
        self,
        root: str,
        images_dir: str = "images",
        masks_dir: str = "masks",
        classes: list[str] | None = None,
        label_map: dict[int, int] | None = None,
        palette: list[list[int]] | None = None,
        train_split: Split = None,
        val_split: Split = None,
        test_split: Split = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(root, **kwargs)
        self.images_dir, self.masks_dir = images_dir, masks_dir
        self.train_split, self.val_split, self.test_split = train_split, val_split, test_split
        self.label_map = {int(k): int(v) for k, v in label_map.items()} if label_map else None
        self._classes = [str(c) for c in classes] if classes else None
        self._palette = [tuple(int(v) for v in c) for c in palette] if palette else None
        if self._palette is not None and self._classes is not None and len(self._palette) != len(self._classes):
            raise DataError(f"data.palette has {len(self._palette)} colours for {len(self._classes)} classes")
        self._read: Any = None

    def _find(self, folder: Path) -> list[tuple[Path, Path]]:
        try:
            return pair_by_stem(folder / self.images_dir, folder / self.masks_dir)
        except (ValueError, FileNotFoundError) as err:
            raise DataError(str(err)) from None

    def split_pairs(self) -> dict[str, list[tuple[Path, Path]]]:
        """Pairs of the three splits."""
        return resolve_splits(self.root, self._find, self.train_split, self.val_split, self.test_split)

    def classes(self) -> list[str]:
        """The given class names, or names inferred from the label map or the masks."""
        if self._classes is None:
            if self.label_map is not None:
                labels = [v for v in self.label_map.values() if v != IGNORE_INDEX]
                self._classes = [str(i) for i in range(max(labels) + 1 if labels else 0)]
                if len(self._classes) < 2:
                    raise DataError(
                        f"data.label_map {self.label_map} gives the classes {self._classes} "
                        f"({IGNORE_INDEX} is the ignore index); training needs at least 2: map the values "
                        "to labels 0..K-1 (K >= 2) or set data.classes"
                    )
            else:
                pairs = self._pairs()
                self._classes = infer_classes(pairs["train"] + pairs["val"] + pairs["test"])
        return self._classes

    def palette(self) -> list[tuple[int, int, int]]:
        """The given palette, else fixed pseudo-random colours."""
        return self._palette if self._palette is not None else super().palette()  # type: ignore[return-value]

    def read_mask(self, path: Path) -> np.ndarray:
        """Integer labels through the label map."""
        if self._read is None:
            self._read = index_mask_reader(len(self.classes()), self.label_map, self.ignore_index)
        return self._read(path)
