"""ISPRS 2-D semantic labelling: Potsdam and Vaihingen (Rottensteiner et al., ISPRS Annals 2012).

Layout: a folder of image tiles and a folder of RGB colour-coded label tiles paired by name
after stripping a tag (Potsdam: ``top_potsdam_2_10_RGB.tif`` ↔ ``top_potsdam_2_10_label.tif``).
Six classes are trained; the benchmark, and the papers rsfm follows (RVSA, MTP), score the
first five (impervious surfaces, building, low vegetation, tree, car) and leave out clutter,
commonly on the *eroded-boundary* ground truth, whose class boundaries (a disc of radius 3
pixels) are ignored. ``eroded_boundaries: true`` erodes the validation and test masks so
when the release's ``*_noBoundary`` files are not used.

.. versionadded:: 0.2
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from rsfm.data.segmentation.common import (
    ColourTable,
    SegmentationDataModule,
    Split,
    colour_mask_reader,
    pair_by_stem,
    resolve_splits,
    select_pairs,
)
from rsfm.utils.errors import DataError
from rsfm.utils.registry import DATASETS

__all__ = ["ISPRS_COLOURS", "ISPRSDataModule"]

#: ISPRS 2-D semantic labelling (Potsdam, Vaihingen); black marks the eroded class
#: boundaries of the ``*_noBoundary`` label files and is ignored.
ISPRS_COLOURS = ColourTable(
    names=("impervious_surfaces", "building", "low_vegetation", "tree", "car", "clutter"),
    colours=("#FFFFFF", "#0000FF", "#00FFFF", "#00FF00", "#FFFF00", "#FF0000"),
    ignore_colours=("#000000",),
)


@DATASETS.register
class ISPRSDataModule(SegmentationDataModule):
    """ISPRS Potsdam / Vaihingen: 6 colour-coded classes, scored on 5.

    Args:
        root: dataset folder.
        images_dir: folder of image tiles, relative to ``root`` (and to split sub-folders).
        masks_dir: folder of label tiles, likewise.
        image_tag: suffix of image stems dropped before pairing (``"_RGB"``).
        mask_tag: suffix of label stems dropped before pairing (``"_label"``).
        train_split: sub-folder, or None: the tiles not held out.
        val_split: sub-folder or tile names (stems without tag) for validation.
        test_split: sub-folder or tile names for testing (required).
        score_clutter: also score clutter (six-class metrics) instead of the benchmark's five.
        eroded_boundaries: ignore class boundaries (radius ``boundary_radius``) in the
            validation and test masks, as the benchmark's eroded ground truth.
        boundary_radius: erosion radius in pixels.
        **kwargs: :class:`~rsfm.data.segmentation.common.SegmentationDataModule` options.
    """

    def __init__(
        self,
        root: str,
        images_dir: str = "images",
        masks_dir: str = "masks",
        image_tag: str = "",
        mask_tag: str = "",
        train_split: Split = None,
        val_split: Split = None,
        test_split: Split = None,
        score_clutter: bool = False,
        eroded_boundaries: bool = False,
        boundary_radius: int = 3,
        **kwargs: Any,
    ) -> None:
        super().__init__(root, **kwargs)
        self.images_dir, self.masks_dir = images_dir, masks_dir
        self.image_tag, self.mask_tag = image_tag, mask_tag
        self.train_split, self.val_split, self.test_split = train_split, val_split, test_split
        self.score_clutter = bool(score_clutter)
        self.eroded_boundaries = bool(eroded_boundaries)
        self.boundary_radius = int(boundary_radius)
        self._read = colour_mask_reader(ISPRS_COLOURS, self.ignore_index)

    def _find(self, folder: Path) -> list[tuple[Path, Path]]:
        try:
            return pair_by_stem(folder / self.images_dir, folder / self.masks_dir, self.image_tag, self.mask_tag)
        except (ValueError, FileNotFoundError) as err:
            raise DataError(str(err)) from None

    def _select(self, pairs: list[tuple[Path, Path]], names: list[str], root: Path) -> list[tuple[Path, Path]]:
        """:func:`select_pairs` that also takes tile names without the image tag (``top_potsdam_2_10``)."""
        tag = self.image_tag
        untagged = {p[0].stem[: -len(tag)] for p in pairs if tag and p[0].stem.endswith(tag)}
        return select_pairs(pairs, [f"{n}{tag}" if n in untagged else n for n in names], root)

    def split_pairs(self) -> dict[str, list[tuple[Path, Path]]]:
        """Pairs of the three splits."""
        return resolve_splits(
            self.root, self._find, self.train_split, self.val_split, self.test_split, select=self._select
        )

    def classes(self) -> list[str]:
        """The six ISPRS classes, clutter last."""
        return list(ISPRS_COLOURS.names)

    def palette(self) -> list[tuple[int, int, int]]:
        """The benchmark's colours."""
        return list(ISPRS_COLOURS.colours)

    def read_mask(self, path: Path) -> np.ndarray:
        """Colours → labels; black (eroded boundary) and unknown colours → ignore."""
        return self._read(path)

    def score_classes(self) -> list[int] | None:
        """The five scored classes (all six with ``score_clutter``)."""
        return None if self.score_clutter else [0, 1, 2, 3, 4]

    def eval_mask_transform(self) -> Any:
        """Boundary erosion of validation/test masks with ``eroded_boundaries``."""
        if not self.eroded_boundaries:
            return None
        return ErodeBoundaries(self.boundary_radius, self.ignore_index)


class ErodeBoundaries:
    """Sample transform: class boundaries of the mask within ``radius`` pixels become ignore."""

    def __init__(self, radius: int = 3, ignore_index: int = 255) -> None:
        self.radius, self.ignore_index = int(radius), int(ignore_index)

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        """Erode ``sample["mask"]``."""
        from rsfm.data.segmentation.boundaries import erode_boundaries

        return {**sample, "mask": erode_boundaries(sample["mask"], self.radius, self.ignore_index)}
