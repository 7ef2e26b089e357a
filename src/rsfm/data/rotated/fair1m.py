"""FAIR1M-2.0 as oriented boxes.

FAIR1M: Sun et al., "FAIR1M: A benchmark dataset for fine-grained object recognition in
high-resolution remote sensing imagery", ISPRS J. Photogramm. Remote Sens. 184, 2022.

Layout of a split folder (``train/part1``, ``validation``, ...)::

    <split>/images/<id>.tif
    <split>/labelXml/<id>.xml        # (labelXmls/ is accepted too)

Each ``<objects><object>`` holds ``<possibleresult><name>`` (the class) and
``<points><point>x,y</point>…`` with the four corners in pixels and the first repeated at
the end (five points; a closing repeat is dropped, four points are read as they are). The 37
fine-grained classes of v2.0 are :data:`FAIR1M_CLASSES` (v1.0 has the same list).

.. versionadded:: 0.3
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rsfm.data.rotated.common import (
    ImageIndex,
    RotatedDetectionDataModule,
    RotatedRecord,
    read_xml,
    records_from_annotations,
)
from rsfm.utils.errors import DataError
from rsfm.utils.registry import DATASETS

__all__ = ["FAIR1M_CLASSES", "FAIR1MDataModule", "fair1m_records", "parse_fair1m_xml"]

#: FAIR1M-2.0's 37 classes as spelled in its XML files, grouped as in the paper: airplanes,
#: ships, vehicles, courts, roads.
FAIR1M_CLASSES = (
    "Boeing737",
    "Boeing747",
    "Boeing777",
    "Boeing787",
    "C919",
    "A220",
    "A321",
    "A330",
    "A350",
    "ARJ21",
    "other-airplane",
    "Passenger Ship",
    "Motorboat",
    "Fishing Boat",
    "Tugboat",
    "Engineering Ship",
    "Liquid Cargo Ship",
    "Dry Cargo Ship",
    "Warship",
    "other-ship",
    "Small Car",
    "Bus",
    "Cargo Truck",
    "Dump Truck",
    "Van",
    "Trailer",
    "Tractor",
    "Excavator",
    "Truck Tractor",
    "other-vehicle",
    "Basketball Court",
    "Tennis Court",
    "Football Field",
    "Baseball Field",
    "Intersection",
    "Roundabout",
    "Bridge",
)

#: label folder names of the FAIR1M releases, tried in this order
FAIR1M_LABEL_DIRS = ("labelXml", "labelXmls")


def _point(text: str | None, where: str) -> list[float]:
    parts = (text or "").replace(" ", "").split(",")
    try:
        x, y = (float(v) for v in parts)
    except ValueError:
        raise DataError(f"{where}: expected a point 'x,y' in pixels, got {text!r}") from None
    if not (np.isfinite(x) and np.isfinite(y)):
        raise DataError(f"{where}: expected finite coordinates, got {text!r}")
    return [x, y]


def parse_fair1m_xml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read one FAIR1M annotation file.

    Args:
        path: ``labelXml/<id>.xml``.

    Returns:
        ``filename`` (``source/filename`` or None), ``size`` (``(width, height)`` or None),
        ``names`` (N class names), ``polygons`` ``(N, 8)`` float32 corners (pixels, in the
        file's order) and ``difficult`` ``(N,)`` bool (all False: FAIR1M flags none).

    Raises:
        FileNotFoundError: if the file does not exist.
        DataError: naming the file and object on malformed XML, an object without a name,
            or one whose ``<points>`` are not 4 corners (5 with the first repeated).
    """
    path = Path(path)
    root = read_xml(path)
    size = None
    s = root.find("size")
    if s is not None and s.findtext("width") and s.findtext("height"):
        try:
            size = (int(float(s.findtext("width") or "")), int(float(s.findtext("height") or "")))
        except ValueError:
            raise DataError(f"{path}: <size> holds a non-numeric width or height") from None
    names, polygons = [], []
    for n, obj in enumerate(root.iter("object")):
        name = (obj.findtext("possibleresult/name") or "").strip()
        where = f"{path}: object {n} ({name!r})"
        if not name:
            raise DataError(f"{where}: expected <possibleresult><name>")
        points = [_point(p.text, where) for p in obj.iterfind("points/point")]
        if len(points) == 5 and np.allclose(points[0], points[-1]):
            points = points[:4]
        if len(points) != 4:
            raise DataError(f"{where}: expected 4 corners in <points> (5 with the first repeated), got {len(points)}")
        names.append(name)
        polygons.append(np.asarray(points, dtype=np.float32).reshape(8))
    return {
        "filename": root.findtext("source/filename"),
        "size": size,
        "names": names,
        "polygons": np.asarray(polygons, dtype=np.float32).reshape(-1, 8),
        "difficult": np.zeros(len(names), dtype=bool),
    }


def fair1m_records(
    root: str | os.PathLike[str], classes: Sequence[str] | None = FAIR1M_CLASSES
) -> tuple[list[RotatedRecord], list[str]]:
    """Oriented records of a FAIR1M split folder (``images/``, ``labelXml/``).

    Args:
        root: the split folder.
        classes: class names in index order (matched exactly, else case-insensitively);
            default the 37 of :data:`FAIR1M_CLASSES`; None: the sorted names found.

    Returns:
        The records sorted by id (``meta``: ``size``, ``num_degenerate``) and the class names.

    Raises:
        FileNotFoundError: if no label folder exists or an image is missing (named).
        DataError: naming the file on a malformed annotation or a class outside ``classes``.
    """
    root = Path(root)
    labels = next((root / d for d in FAIR1M_LABEL_DIRS if (root / d).is_dir()), None)
    if labels is None:
        raise FileNotFoundError(f"FAIR1M label folder not found: {root / FAIR1M_LABEL_DIRS[0]}")
    parsed = [(p, parse_fair1m_xml(p)) for p in sorted(labels.glob("*.xml"))]
    images = ImageIndex(root / "images", (".tif", ".tiff", ".png", ".jpg"))
    return records_from_annotations(parsed, classes, images)


@DATASETS.register
class FAIR1MDataModule(RotatedDetectionDataModule):
    """FAIR1M-1.0/2.0 as oriented boxes; splits are folders with ``images/`` and ``labelXml/``.

    Args:
        root: dataset folder.
        **kwargs: :class:`~rsfm.data.rotated.common.RotatedDetectionDataModule` options
            (``train_split`` defaults to ``"."``, the root itself, e.g. ``train/part1``;
            ``classes`` to :data:`FAIR1M_CLASSES`).
    """

    default_train_split = "."

    def load_split(self, name: str, classes: list[str] | None) -> tuple[list[RotatedRecord], list[str]]:
        """Records of the folder ``root/<name>``."""
        return fair1m_records(self.root / name, classes if classes is not None else FAIR1M_CLASSES)
