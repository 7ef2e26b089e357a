"""roLabelImg's VOC-style oriented annotations, and HIT-UAV, which ships in that layout.

roLabelImg (the rotated-box fork of labelImg) writes one XML file per image::

    <annotation><filename>..</filename><size><width/><height/></size>
      <object><type>robndbox</type><name>Car</name><difficult>0</difficult>
        <robndbox><cx/><cy/><w/><h/><angle/></robndbox></object>
      <object><type>bndbox</type><name>..</name><bndbox><xmin/><ymin/><xmax/><ymax/></bndbox></object>
    </annotation>

``cx, cy, w, h`` are pixels and ``angle`` radians in [0, π) (HIT-UAV: [0, π]): the box's
``w`` side points along ``(cos angle, sin angle)`` in image coordinates (x right, y down),
i.e. the angle turns clockwise on screen, the convention of :mod:`rsfm.ops.obb`; roLabelImg's
``Shape.rotate`` subtracts the on-screen counter-clockwise turn from the stored direction.
Boxes drawn without rotation are saved as ``bndbox`` and read as axis-aligned rectangles.

Layout (VOC)::

    <root>/JPEGImages/<id>.jpg
    <root>/Annotations/<id>.xml
    <root>/ImageSets/Main/{train,val,test}.txt    # ids, LF or CRLF line ends

HIT-UAV (Suo et al., "HIT-UAV: A high-altitude infrared thermal dataset for Unmanned Aerial
Vehicle-based object detection", Scientific Data 10, 2023): 2,898 thermal images of 640 × 512
pixels from 60-130 m altitude, classes :data:`HIT_UAV_CLASSES`, official train / val / test
lists. :class:`HITUAVDataModule` trains on ``train``, validates on ``val`` and tests on the
``test`` list when the copy has one; otherwise (a copy with ``train`` and ``val`` lists
only) it tests on images held out of ``train`` by ``test_fraction``, so that the test images
are neither trained on nor used to select the checkpoint.

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
    image_set_ids,
    obbs_to_polygons,
    obbs_to_polygons_per_file,
    read_xml,
    records_from_annotations,
    xml_flag,
    xml_numbers,
)
from rsfm.utils.errors import DataError
from rsfm.utils.registry import DATASETS

__all__ = [
    "HIT_UAV_CLASSES",
    "HITUAVDataModule",
    "RoLabelImgDataModule",
    "parse_rolabelimg_xml",
    "rolabelimg_records",
]

#: HIT-UAV's classes, in the order of its published label ids (0-4).
HIT_UAV_CLASSES = ("Person", "Car", "Bicycle", "OtherVehicle", "DontCare")

_ROBNDBOX = ("cx", "cy", "w", "h", "angle")
_BNDBOX = ("xmin", "ymin", "xmax", "ymax")


def parse_rolabelimg_xml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read one roLabelImg annotation file.

    Args:
        path: ``Annotations/<id>.xml``.

    Returns:
        ``filename`` (str or None), ``size`` (``(width, height)`` or None), ``names`` (N class
        names), ``obbs`` ``(N, 5)`` float32 ``(cx, cy, w, h, angle)`` as written (pixels,
        radians; ``bndbox`` objects as their centre and size with angle 0), ``polygons``
        ``(N, 8)`` float32 corners (pixels) and ``difficult`` ``(N,)`` bool.

    Raises:
        FileNotFoundError: if the file does not exist.
        DataError: naming the file and object on malformed XML, an object with neither a
            complete ``<robndbox>`` nor a ``<bndbox>``, or a non-numeric ``<difficult>``.
    """
    ann = _read_rolabelimg(Path(path))
    ann["polygons"] = obbs_to_polygons(ann["obbs"])
    return ann


def _read_rolabelimg(path: Path) -> dict[str, Any]:
    """:func:`parse_rolabelimg_xml` without the polygons (computed for many files at once)."""
    root = read_xml(path)
    size = None
    if (s := root.find("size")) is not None and s.findtext("width") and s.findtext("height"):
        w, h = xml_numbers(s, ("width", "height"), f"{path}: <size>")
        size = (int(w), int(h))
    names, obbs, difficult = [], [], []
    for n, obj in enumerate(root.iter("object")):
        name = (obj.findtext("name") or "").strip()
        where = f"{path}: object {n} ({name!r})"
        if obj.find("robndbox") is not None:
            obbs.append(xml_numbers(obj.find("robndbox"), _ROBNDBOX, where))
        elif obj.find("bndbox") is not None:
            x0, y0, x1, y1 = xml_numbers(obj.find("bndbox"), _BNDBOX, where)
            obbs.append([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0, 0.0])
        else:
            raise DataError(f"{where}: expected <robndbox> (cx, cy, w, h, angle) or <bndbox>")
        difficult.append(xml_flag(obj, "difficult", where))
        names.append(name)
    return {
        "filename": root.findtext("filename"),
        "size": size,
        "names": names,
        "obbs": np.asarray(obbs, dtype=np.float32).reshape(-1, 5),
        "difficult": np.asarray(difficult, dtype=bool),
    }


def rolabelimg_records(
    root: str | os.PathLike[str], image_set: str, classes: Sequence[str] | None = None
) -> tuple[list[RotatedRecord], list[str]]:
    """Oriented records of a roLabelImg VOC folder for the ids of one image set.

    Args:
        root: folder holding ``JPEGImages/``, ``Annotations/`` and ``ImageSets/Main/``.
        image_set: id list name (``ImageSets/Main/<name>.txt`` or ``ImageSets/<name>.txt``),
            or ``"."`` for every file of ``Annotations/``.
        classes: class names in index order (matched exactly, else case-insensitively);
            None: the sorted names found.

    Returns:
        The records in the list's order (``meta``: ``size`` and ``num_degenerate``, boxes of
        zero width or height being dropped) and the class names.

    Raises:
        FileNotFoundError: if the image set, an annotation or an image is missing (named).
        DataError: naming the file on malformed XML or a class outside ``classes``.
    """
    root = Path(root)
    ids = image_set_ids(root, image_set, root / "Annotations")
    parsed = [(path, _read_rolabelimg(path)) for path in (root / "Annotations" / f"{rid}.xml" for rid in ids)]
    polygons = obbs_to_polygons_per_file([ann["obbs"] for _, ann in parsed])
    for (_, ann), polys in zip(parsed, polygons, strict=True):
        ann["polygons"] = polys
    return records_from_annotations(parsed, classes, ImageIndex(root / "JPEGImages"))


@DATASETS.register
class RoLabelImgDataModule(RotatedDetectionDataModule):
    """A roLabelImg VOC-style folder; splits are image-set names (``"."``: every annotation).

    Args:
        root: folder holding ``JPEGImages/``, ``Annotations/`` and ``ImageSets/Main/``.
        **kwargs: :class:`~rsfm.data.rotated.common.RotatedDetectionDataModule` options
            (``train_split`` defaults to ``"train"``; ``classes`` to the sorted class names
            of the training split).
    """

    def load_split(self, name: str, classes: list[str] | None) -> tuple[list[RotatedRecord], list[str]]:
        """Records of the image set ``name``."""
        return rolabelimg_records(self.root, name, classes)


@DATASETS.register
class HITUAVDataModule(RoLabelImgDataModule):
    """HIT-UAV thermal drone images (roLabelImg layout, classes :data:`HIT_UAV_CLASSES`).

    Args:
        root: the HIT-UAV folder (``JPEGImages``, ``Annotations``, ``ImageSets/Main``).
        train_split: image set to train on.
        val_split: image set that selects checkpoints (None: drawn by ``val_fraction``).
        test_split: image set to test on; None: ``"test"`` when ``ImageSets/Main/test.txt``
            exists, else images held out of the training split by ``test_fraction``.
        **kwargs: :class:`~rsfm.data.rotated.common.RotatedDetectionDataModule` options
            (``classes`` defaults to :data:`HIT_UAV_CLASSES`).
    """

    def __init__(
        self,
        root: str,
        train_split: str | None = "train",
        val_split: str | None = "val",
        test_split: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(root, train_split=train_split, val_split=val_split, test_split=test_split, **kwargs)
        if test_split is None and (self.root / "ImageSets" / "Main" / "test.txt").is_file():
            self.test_split = "test"

    def load_split(self, name: str, classes: list[str] | None) -> tuple[list[RotatedRecord], list[str]]:
        """Records of the image set ``name``."""
        return rolabelimg_records(self.root, name, classes if classes is not None else HIT_UAV_CLASSES)
