"""DIOR and DIOR-R as they ship: image set lists, two image folders, HBB and OBB XML folders.

DIOR (Li et al., "Object detection in optical remote sensing images: A survey and a new
benchmark", ISPRS J. Photogramm. Remote Sens. 159, 2020) holds 23,463 images of 800 × 800
pixels with 20 object classes; DIOR-R (Cheng et al., "Anchor-free Oriented Proposal Generator
for Object Detection", IEEE TGRS 2022) adds oriented boxes of the same objects. Layout::

    <root>/JPEGImages-trainval/<id>.jpg
    <root>/JPEGImages-test/<id>.jpg
    <root>/Annotations/Horizontal Bounding Boxes/<id>.xml   # VOC: <object><name>, <bndbox>
    <root>/Annotations/Oriented Bounding Boxes/<id>.xml     # DIOR-R: <robndbox> 4 corners
    <root>/ImageSets/Main/{train,val,test}.txt              # ids, one per line (CRLF or LF)

Both annotation folders' names contain spaces. Records are :class:`DetectionRecord` s, so
they feed :class:`~rsfm.data.detection.DetectionDataset` unchanged; box coordinates are taken
as written (continuous pixel coordinates, as :func:`~rsfm.data.detection.parse_voc_xml`
reads them). Oriented records also carry their corner polygons in ``meta['polygons']``.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rsfm.data.detection.common import DetectionDataModule, DetectionRecord, class_indices
from rsfm.data.detection.voc import parse_voc_xml
from rsfm.utils.registry import DATASETS

__all__ = [
    "DIOR_CLASSES",
    "DIOR_HBB_DIR",
    "DIOR_IMAGE_DIRS",
    "DIOR_OBB_DIR",
    "DIORDataModule",
    "dior_records",
    "parse_dior_obb_xml",
]

#: DIOR's 20 classes as spelled in its XML files (two capitalised), in the paper's order.
DIOR_CLASSES = (
    "airplane",
    "airport",
    "baseballfield",
    "basketballcourt",
    "bridge",
    "chimney",
    "dam",
    "Expressway-Service-area",
    "Expressway-toll-station",
    "golffield",
    "groundtrackfield",
    "harbor",
    "overpass",
    "ship",
    "stadium",
    "storagetank",
    "tenniscourt",
    "trainstation",
    "vehicle",
    "windmill",
)

#: Image folders under the root, searched in this order.
DIOR_IMAGE_DIRS = ("JPEGImages-trainval", "JPEGImages-test")
#: Horizontal-box annotation folder, relative to the root.
DIOR_HBB_DIR = Path("Annotations") / "Horizontal Bounding Boxes"
#: Oriented-box (DIOR-R) annotation folder, relative to the root.
DIOR_OBB_DIR = Path("Annotations") / "Oriented Bounding Boxes"

_CORNERS = (
    ("x_left_top", "y_left_top"),
    ("x_right_top", "y_right_top"),
    ("x_right_bottom", "y_right_bottom"),
    ("x_left_bottom", "y_left_bottom"),
)


def parse_dior_obb_xml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read one DIOR-R oriented annotation file.

    Each ``<object>`` holds ``<name>``, ``<difficult>`` (absent: 0) and ``<robndbox>`` with the
    corners ``x_left_top, y_left_top, x_right_top, y_right_top, x_right_bottom,
    y_right_bottom, x_left_bottom, y_left_bottom`` in pixels.

    Args:
        path: ``Annotations/Oriented Bounding Boxes/<id>.xml``.

    Returns:
        ``filename`` (str or None), ``size`` (``(width, height)`` or None), ``names`` (list of
        N class names), ``polygons`` ``(N, 4, 2)`` float32 corners (x, y) in the order
        left-top, right-top, right-bottom, left-bottom, and ``difficult`` ``(N,)`` bool.

    Raises:
        FileNotFoundError: if the file does not exist.
        ValueError: on malformed XML or an object without all eight corner values.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"DIOR-R annotation not found: {path}")
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as err:
        raise ValueError(f"{path}: not a valid XML file ({err})") from err
    size = None
    if (s := root.find("size")) is not None and s.findtext("width") and s.findtext("height"):
        size = (int(float(s.findtext("width"))), int(float(s.findtext("height"))))  # type: ignore[arg-type]
    names, polygons, difficult = [], [], []
    for n, obj in enumerate(root.iter("object")):
        name = (obj.findtext("name") or "").strip()
        rb = obj.find("robndbox")
        try:
            corners = [[float(rb.findtext(kx)), float(rb.findtext(ky))] for kx, ky in _CORNERS]  # type: ignore[union-attr,arg-type]
        except (AttributeError, TypeError, ValueError):
            raise ValueError(f"{path}: object {n} ({name!r}) has no complete <robndbox> with 4 corners") from None
        try:
            diff = int(float(obj.findtext("difficult") or 0)) == 1
        except ValueError:
            raise ValueError(f"{path}: object {n} ({name!r}) has a non-numeric <difficult>") from None
        names.append(name)
        polygons.append(corners)
        difficult.append(diff)
    return {
        "filename": root.findtext("filename"),
        "size": size,
        "names": names,
        "polygons": np.asarray(polygons, dtype=np.float32).reshape(-1, 4, 2),
        "difficult": np.asarray(difficult, dtype=bool),
    }


def _read_ids(path: Path) -> list[str]:
    """Ids of an image set file: first field of each non-blank line (LF or CRLF)."""
    if not path.is_file():
        raise FileNotFoundError(f"DIOR image set not found: {path}")
    return [line.split()[0] for line in path.read_text().splitlines() if line.strip()]


def _find_image(root: Path, rid: str) -> Path:
    for folder in DIOR_IMAGE_DIRS:
        if (p := root / folder / f"{rid}.jpg").is_file():
            return p
    raise FileNotFoundError(f"no image {rid}.jpg in {root / DIOR_IMAGE_DIRS[0]} or {root / DIOR_IMAGE_DIRS[1]}")


def dior_records(
    root: str | os.PathLike[str],
    image_set: str,
    classes: Sequence[str] = DIOR_CLASSES,
    oriented: bool = False,
) -> list[DetectionRecord]:
    """Records of a DIOR / DIOR-R folder for the ids of ``ImageSets/Main/<image_set>.txt``.

    Horizontal (``oriented=False``): boxes from ``Annotations/Horizontal Bounding Boxes``.
    Oriented (``oriented=True``): the DIOR-R corners from ``Annotations/Oriented Bounding
    Boxes``, with ``boxes`` their axis-aligned hull (min/max of the corners). Class names are
    matched exactly, else case-insensitively (some DIOR copies and tools lower-case the two
    ``Expressway-…`` classes). Boxes or polygons of zero area are dropped and counted in
    ``meta['num_degenerate']``.

    Args:
        root: the DIOR folder (see the module docstring).
        image_set: name of the id list, e.g. ``'train'``, ``'val'``, ``'test'``.
        classes: class names in index order; default DIOR's 20 (:data:`DIOR_CLASSES`).
        oriented: read the DIOR-R oriented annotations instead of the horizontal ones.

    Returns:
        One :class:`~rsfm.data.detection.DetectionRecord` per id, in the list's order:
        ``image`` (in ``JPEGImages-trainval`` or ``JPEGImages-test``, whichever holds
        ``<id>.jpg``), ``boxes`` ``(N, 4)`` float32 xyxy pixels, ``labels`` ``(N,)`` int64
        indices into ``classes``, ``difficult`` ``(N,)`` bool, ``id`` and ``meta`` with
        ``size`` (``(width, height)`` from the XML, or None), ``num_degenerate`` (int) and,
        when oriented, ``polygons`` ``(N, 4, 2)`` float32 corners (x, y) in pixels, in the
        order left-top, right-top, right-bottom, left-bottom.

    Raises:
        FileNotFoundError: if the image set, an annotation file or an image is missing (the
            message names the file, or both image folders).
        ValueError: on malformed XML, an incomplete box, or a class outside ``classes``
            (the message names the file).
    """
    root = Path(root)
    classes = list(classes)
    ids = _read_ids(root / "ImageSets" / "Main" / f"{image_set}.txt")
    ann_dir = root / (DIOR_OBB_DIR if oriented else DIOR_HBB_DIR)
    records = []
    for rid in ids:
        xml = ann_dir / f"{rid}.xml"
        if not xml.is_file():
            raise FileNotFoundError(f"DIOR annotation not found: {xml}")
        meta: dict[str, Any] = {}
        if oriented:
            ann = parse_dior_obb_xml(xml)
            polygons = ann["polygons"]
            boxes = np.concatenate([polygons.min(axis=1), polygons.max(axis=1)], axis=1).astype(np.float32)
            x, y = polygons[..., 0].astype(np.float64), polygons[..., 1].astype(np.float64)
            area = 0.5 * np.abs((x * np.roll(y, -1, axis=1) - y * np.roll(x, -1, axis=1)).sum(axis=1))
            keep = area > 0
            meta["polygons"] = polygons[keep]
        else:
            ann = parse_voc_xml(xml)
            boxes = ann["boxes"].astype(np.float32)
            keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        labels = np.asarray(class_indices(ann["names"], classes, xml), dtype=np.int64).reshape(-1)
        meta["size"] = ann["size"]
        meta["num_degenerate"] = int((~keep).sum())
        records.append(
            DetectionRecord(
                image=_find_image(root, rid),
                boxes=boxes[keep].reshape(-1, 4),
                labels=labels[keep],
                difficult=ann["difficult"].reshape(-1)[keep],
                id=rid,
                meta=meta,
            )
        )
    return records


@DATASETS.register
class DIORDataModule(DetectionDataModule):
    """DIOR (horizontal boxes) or DIOR-R (``oriented: true``) in the layout DIOR ships.

    Splits are ``ImageSets/Main/<name>.txt`` names: ``train``, ``val`` and ``test`` by
    default (the benchmark trains on ``train`` + ``val`` = ``trainval`` when a list file of
    that name exists).

    Args:
        root: folder holding ``JPEGImages-trainval``, ``JPEGImages-test``, ``Annotations`` and
            ``ImageSets``.
        oriented: read ``Annotations/Oriented Bounding Boxes`` (DIOR-R); the boxes are then
            the polygons' hulls, the polygons kept in the records' ``meta``.
        train_split: image-set name of the training split.
        val_split: image-set name of the validation split (None: drawn by ``val_fraction``).
        test_split: image-set name of the test split.
        **kwargs: :class:`~rsfm.data.detection.common.DetectionDataModule` options
            (``classes`` defaults to :data:`DIOR_CLASSES`).
    """

    def __init__(
        self,
        root: str,
        oriented: bool = False,
        train_split: str | None = "train",
        val_split: str | None = "val",
        test_split: str | None = "test",
        **kwargs: Any,
    ) -> None:
        super().__init__(root, train_split=train_split, val_split=val_split, test_split=test_split, **kwargs)
        self.oriented = bool(oriented)

    def load_split(self, name: str, classes: list[str] | None) -> tuple[list[DetectionRecord], list[str]]:
        """Records of ``ImageSets/Main/<name>.txt``."""
        names = list(classes) if classes is not None else list(DIOR_CLASSES)
        return dior_records(self.root, name, names, oriented=self.oriented), names
