"""The Dubai aerial set ("Semantic segmentation of aerial imagery", MBRSC satellite, Humans in the Loop).

Layout: ``Tile N/images/*.jpg`` with ``Tile N/masks/*.png`` RGB colour-coded masks, 8 tiles.
The colours listed in its ``classes.json`` do not occur in the masks; :data:`DUBAI_COLOURS`
holds the ones that do. Splits are by tile, so that no part of a tile's scene leaks across.

.. versionadded:: 0.2
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rsfm.data.segmentation.common import (
    ColourTable,
    SegmentationDataModule,
    colour_mask_reader,
    pair_by_stem,
)
from rsfm.data.splits import check_disjoint_splits
from rsfm.utils.errors import DataError
from rsfm.utils.registry import DATASETS

__all__ = ["DUBAI_COLOURS", "DubaiDataModule", "dubai_pairs"]

#: Dubai aerial set ("Semantic segmentation of aerial imagery", MBRSC, Humans in the Loop):
#: the colours that occur in its masks; #000000 (~0.5% of pixels) carries no label.
DUBAI_COLOURS = ColourTable(
    names=("building", "land", "road", "vegetation", "water", "unlabeled"),
    colours=("#3C1098", "#8429F6", "#6EC1E4", "#FEDD3A", "#E2A929", "#9B9B9B"),
    ignore_colours=("#000000",),
)


def _tile_key(path: Path) -> tuple[int, str]:
    match = re.search(r"(\d+)$", path.name)
    return (int(match.group(1)) if match else -1, path.name)


def tile_name(tile: str | int) -> str:
    """``3`` or ``"3"`` → ``"Tile 3"``; other names unchanged."""
    return f"Tile {tile}" if isinstance(tile, int) or str(tile).isdigit() else str(tile)


def dubai_pairs(root: str | Path, tiles: Sequence[str | int] | None = None) -> list[tuple[Path, Path]]:
    """Image/mask pairs of the Dubai aerial set: ``Tile N/images/x.jpg`` ↔ ``Tile N/masks/x.png``.

    Args:
        root: folder holding the ``Tile N`` folders.
        tiles: tiles to take (``"Tile 3"`` or ``3``); None for all, in tile order.

    Returns:
        ``(image, mask)`` path pairs, by tile number then file name.

    Raises:
        DataError: if ``root`` or a named tile does not exist, the root holds no tile, or an
            image has no mask.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"Dubai dataset folder not found: {root}")
    if tiles is None:
        dirs = sorted((d for d in root.iterdir() if d.is_dir() and (d / "images").is_dir()), key=_tile_key)
        if not dirs:
            raise DataError(f"no 'Tile N/images' folder under {root}")
    else:
        dirs = [root / tile_name(t) for t in tiles]
        for d in dirs:
            if not d.is_dir():
                raise DataError(f"tile folder not found: {d}")
    try:
        return [pair for d in dirs for pair in pair_by_stem(d / "images", d / "masks")]
    except (ValueError, FileNotFoundError) as err:
        raise DataError(str(err)) from None


def _tiles(selector: Any) -> list[str]:
    items = selector if isinstance(selector, list | tuple) else [selector]
    return [tile_name(t) for t in items]


@DATASETS.register
class DubaiDataModule(SegmentationDataModule):
    """Dubai aerial imagery: 6 colour-coded classes, split by tile.

    Args:
        root: folder holding ``Tile 1`` … ``Tile 8``.
        val_split: validation tiles (``"Tile 2"`` or ``2``, or a list); None: no validation.
        test_split: test tiles (required).
        train_split: training tiles (none of them a validation or test tile); None: every tile
            not in the other splits.
        **kwargs: :class:`~rsfm.data.segmentation.common.SegmentationDataModule` options.
    """

    def __init__(
        self,
        root: str,
        val_split: str | int | list[str | int] | None = None,
        test_split: str | int | list[str | int] | None = None,
        train_split: str | int | list[str | int] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(root, **kwargs)
        if test_split is None:
            raise DataError("data.test_split is required: the test tiles (e.g. [3])")
        self.val_tiles = _tiles(val_split) if val_split is not None else []
        self.test_tiles = _tiles(test_split)
        self.train_tiles = _tiles(train_split) if train_split is not None else None
        self._read = colour_mask_reader(DUBAI_COLOURS, self.ignore_index)

    def split_pairs(self) -> dict[str, list[tuple[Path, Path]]]:
        """Pairs of the train, val and test tiles.

        Raises:
            DataError: if a tile does not exist, no tile is left to train on, or
                ``train_split`` shares a tile with ``val_split`` or ``test_split``.

        Warns:
            UserWarning: if the validation and test tiles overlap (or are the same).
        """
        train = self.train_tiles
        if train is None:
            everything = [p.parent.parent.name for p, _ in dubai_pairs(self.root)]
            held = set(self.val_tiles) | set(self.test_tiles)
            train = [t for t in dict.fromkeys(everything) if t not in held]
        if not train:
            raise DataError("data.val_split and data.test_split leave no tile to train on")
        out = {
            "train": dubai_pairs(self.root, train),
            "val": dubai_pairs(self.root, self.val_tiles) if self.val_tiles else [],
            "test": dubai_pairs(self.root, self.test_tiles),
        }
        check_disjoint_splits({k: [image for image, _ in v] for k, v in out.items()}, self.root)
        return out

    def classes(self) -> list[str]:
        """The 6 classes of :data:`DUBAI_COLOURS`."""
        return list(DUBAI_COLOURS.names)

    def palette(self) -> list[tuple[int, int, int]]:
        """The masks' own colours."""
        return list(DUBAI_COLOURS.colours)

    def read_mask(self, path: Path) -> np.ndarray:
        """Colours → labels; black and unknown colours → ignore."""
        return self._read(path)
