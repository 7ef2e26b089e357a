"""DOTA v1.0 / v1.5 / v2.0 as oriented boxes (Xia et al., CVPR 2018; Ding et al., TPAMI 2021).

Layout of a split folder (DOTA's ``train``/``val`` release folders, or the patches written by
:func:`rsfm.data.rotated.split.split_dataset`)::

    <split>/images/<id>.png
    <split>/labelTxt/<id>.txt     # [imagesource:<name>] [gsd:<m/px>] then x1 y1 ... x4 y4 class difficult

The header lines are optional (DOTA v1.5 and v2.0 files, and split patches, often have none).
Files are read by :func:`rsfm.data.detection.dota.parse_dota_txt`: difficulty ≥ 1 marks an
object difficult, and zero-area polygons (the devkit's difficulty-2 slivers) are dropped and
counted in ``meta['num_degenerate']``. The class lists of the three versions are
:data:`DOTA_CLASSES` (v1.5 adds ``container-crane``; v2.0 adds ``airport`` and ``helipad``).

.. versionadded:: 0.3
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rsfm.data.detection.dota import DOTA_V1_CLASSES, parse_dota_txt
from rsfm.data.rotated.common import (
    ImageIndex,
    RotatedDetectionDataModule,
    RotatedRecord,
    records_from_annotations,
)
from rsfm.utils.errors import DataError
from rsfm.utils.registry import DATASETS

__all__ = [
    "DOTA_CLASSES",
    "DOTA_V1_CLASSES",
    "DOTA_V15_CLASSES",
    "DOTA_V2_CLASSES",
    "DOTARotatedDataModule",
    "dota_obb_records",
]

#: DOTA v1.5: v1.0's 15 classes and ``container-crane``.
DOTA_V15_CLASSES = (*DOTA_V1_CLASSES, "container-crane")
#: DOTA v2.0: v1.5's 16 classes, ``airport`` and ``helipad``.
DOTA_V2_CLASSES = (*DOTA_V15_CLASSES, "airport", "helipad")
#: class lists by DOTA version
DOTA_CLASSES = {"1.0": DOTA_V1_CLASSES, "1.5": DOTA_V15_CLASSES, "2.0": DOTA_V2_CLASSES}


def dota_obb_records(
    root: str | os.PathLike[str],
    classes: Sequence[str] | None = DOTA_V1_CLASSES,
    label_dir: str = "labelTxt",
) -> tuple[list[RotatedRecord], list[str]]:
    """Oriented records of a DOTA folder (``images/<id>.<ext>``, ``<label_dir>/<id>.txt``).

    Args:
        root: folder holding ``images/`` and the label folder.
        classes: class names in index order; default DOTA v1.0's 15; ``None``: the sorted
            names found.
        label_dir: name of the label folder under ``root``.

    Returns:
        The records sorted by id (polygons ``(N, 8)`` float32 pixels as written, ``meta``:
        ``gsd`` in metres per pixel or None, ``imagesource`` or None, ``num_degenerate``) and
        the class names.

    Raises:
        FileNotFoundError: if the label folder or an image is missing (naming it).
        ValueError: naming the file and line of a malformed line; DataError naming the file
            of a class outside ``classes``.
    """
    root = Path(root)
    labels = root / label_dir
    if not labels.is_dir():
        raise FileNotFoundError(f"DOTA label folder not found: {labels}")
    parsed = [(p, parse_dota_txt(p)) for p in sorted(labels.glob("*.txt"))]
    for _, ann in parsed:
        ann["polygons"] = ann["polygons"].reshape(-1, 8)
    meta = ("gsd", "imagesource", "num_degenerate")
    return records_from_annotations(parsed, classes, ImageIndex(root / "images"), meta)


def _dota_version(version: str | float) -> str:
    """``"1.0"``, ``"1.5"`` or ``"2.0"`` from any spelling of them (``1.5``, ``"v2"``).

    Raises:
        DataError: naming ``data.version`` otherwise.
    """
    text = str(version).strip().lower().removeprefix("v")
    try:
        key = f"{float(text):.1f}"
    except ValueError:
        key = text
    if key not in DOTA_CLASSES:
        raise DataError(f"data.version must be one of {list(DOTA_CLASSES)}, got {version!r}")
    return key


@DATASETS.register
class DOTARotatedDataModule(RotatedDetectionDataModule):
    """DOTA v1.0 / v1.5 / v2.0 as oriented boxes; splits are folders with ``images/`` and ``labelTxt/``.

    Args:
        root: dataset folder.
        version: ``"1.0"``, ``"1.5"`` or ``"2.0"`` (also written ``1.5``, ``"v1.5"``, ``2``): the
            default class list (:data:`DOTA_CLASSES`).
        label_dir: name of the label folder in each split folder (``labelTxt``; some DOTA
            releases unpack to ``labelTxt-v1.5/DOTA-v1.5_train``: name that folder here).
        **kwargs: :class:`~rsfm.data.rotated.common.RotatedDetectionDataModule` options
            (``train_split`` defaults to ``"."``, the root itself; ``classes`` to the
            version's list; ``angle_version``, ``rotate90``, crops, splits, loaders).

    Raises:
        DataError: naming ``data.version`` if it is not one of the three.
    """

    default_train_split = "."

    def __init__(self, root: str, version: str | float = "1.0", label_dir: str = "labelTxt", **kwargs: Any) -> None:
        super().__init__(root, **kwargs)
        self.version = _dota_version(version)
        self.label_dir = str(label_dir)

    def load_split(self, name: str, classes: list[str] | None) -> tuple[list[RotatedRecord], list[str]]:
        """Records of the folder ``root/<name>``."""
        return dota_obb_records(self.root / name, classes or DOTA_CLASSES[self.version], self.label_dir)
