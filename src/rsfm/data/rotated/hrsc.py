"""HRSC2016 ship detection (Liu et al., ICPRAM 2017) as oriented boxes, one ``ship`` class.

Layout as released::

    <root>/FullDataSet/AllImages/<id>.bmp
    <root>/FullDataSet/Annotations/<id>.xml
    <root>/ImageSets/{trainval,train,val,test}.txt     # ids (ImageSets/Main/ is accepted too)

Each ``HRSC_Image/HRSC_Objects/HRSC_Object`` holds the rotated box ``mbox_cx, mbox_cy,
mbox_w, mbox_h`` (pixels) and ``mbox_ang`` (radians, the ``mbox_w`` side pointing along
``(cos, sin)`` in image coordinates, y down: the convention of :mod:`rsfm.ops.obb`, as
mmrotate reads it), and ``difficult``. The benchmark trains on ``trainval`` (617 images) and
tests on ``test`` (444 images); all ships form one class (the task of most oriented-detection
papers; the 31-class ``Class_ID`` level is not read).

.. versionadded:: 0.3
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from rsfm.data.rotated.common import (
    ImageIndex,
    RotatedDetectionDataModule,
    RotatedRecord,
    image_set_ids,
    make_rotated_record,
    obbs_to_polygons,
    obbs_to_polygons_per_file,
    read_xml,
    xml_flag,
    xml_numbers,
)
from rsfm.utils.errors import DataError
from rsfm.utils.registry import DATASETS

__all__ = ["HRSC_CLASSES", "HRSC2016DataModule", "hrsc_records", "parse_hrsc_xml"]

#: HRSC2016 in single-class mode.
HRSC_CLASSES = ("ship",)
#: Image and annotation folders under the root.
HRSC_IMAGE_DIR = Path("FullDataSet") / "AllImages"
HRSC_ANNOTATION_DIR = Path("FullDataSet") / "Annotations"

_MBOX = ("mbox_cx", "mbox_cy", "mbox_w", "mbox_h", "mbox_ang")


def parse_hrsc_xml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read one HRSC2016 annotation file.

    Args:
        path: ``FullDataSet/Annotations/<id>.xml``.

    Returns:
        ``size`` (``(width, height)`` from ``Img_SizeWidth``/``Img_SizeHeight``, or None),
        ``obbs`` ``(N, 5)`` float32 ``(cx, cy, w, h, angle)`` as written (pixels, radians),
        ``polygons`` ``(N, 8)`` float32 corners (pixels), ``difficult`` ``(N,)`` bool and
        ``class_ids`` (N strings, HRSC's fine-grained ``Class_ID``).

    Raises:
        FileNotFoundError: if the file does not exist.
        DataError: naming the file and object on malformed XML, a missing or non-numeric
            ``mbox_*`` value or a non-numeric ``difficult``.
    """
    ann = _read_hrsc(Path(path))
    ann["polygons"] = obbs_to_polygons(ann["obbs"])
    return ann


def _read_hrsc(path: Path) -> dict[str, Any]:
    """:func:`parse_hrsc_xml` without the polygons (computed for many files at once)."""
    root = read_xml(path)
    size = None
    if root.findtext("Img_SizeWidth") and root.findtext("Img_SizeHeight"):
        w, h = xml_numbers(root, ("Img_SizeWidth", "Img_SizeHeight"), f"{path}: image size")
        size = (int(w), int(h))
    obbs, difficult, class_ids = [], [], []
    for n, obj in enumerate(root.iter("HRSC_Object")):
        where = f"{path}: HRSC_Object {n}"
        obbs.append(xml_numbers(obj, _MBOX, where))
        difficult.append(xml_flag(obj, "difficult", where))
        class_ids.append((obj.findtext("Class_ID") or "").strip())
    return {
        "size": size,
        "obbs": np.asarray(obbs, dtype=np.float32).reshape(-1, 5),
        "difficult": np.asarray(difficult, dtype=bool),
        "class_ids": class_ids,
    }


def hrsc_records(root: str | os.PathLike[str], image_set: str) -> list[RotatedRecord]:
    """Single-class oriented records of the ids of an HRSC2016 image set.

    Args:
        root: the HRSC2016 folder (see the module docstring).
        image_set: id list name (``ImageSets/<name>.txt`` or ``ImageSets/Main/<name>.txt``),
            or ``"."`` for every annotation file.

    Returns:
        One record per id (label 0 for every ship; ``meta``: ``size``, ``num_degenerate``).

    Raises:
        FileNotFoundError: if the image set, an annotation or an image is missing (named).
        DataError: naming the file on a malformed annotation.
    """
    root = Path(root)
    ids = image_set_ids(root, image_set, root / HRSC_ANNOTATION_DIR)
    parsed = [_read_hrsc(root / HRSC_ANNOTATION_DIR / f"{rid}.xml") for rid in ids]
    images = ImageIndex(root / HRSC_IMAGE_DIR, (".bmp", ".jpg", ".png", ".tif"))
    records = []
    for rid, ann, polys in zip(ids, parsed, obbs_to_polygons_per_file([a["obbs"] for a in parsed]), strict=True):
        labels = np.zeros(len(polys), dtype=np.int64)
        meta = {"size": ann["size"]}
        records.append(make_rotated_record(images.find(rid), polys, labels, ann["difficult"], rid, meta))
    return records


@DATASETS.register
class HRSC2016DataModule(RotatedDetectionDataModule):
    """HRSC2016 ships as one oriented class; splits are image-set names.

    Args:
        root: folder holding ``FullDataSet/`` and ``ImageSets/``.
        train_split: image set to train on.
        val_split: image set that selects checkpoints (None: drawn from the training set by
            ``val_fraction``).
        test_split: image set to test on.
        **kwargs: :class:`~rsfm.data.rotated.common.RotatedDetectionDataModule` options
            (``classes`` defaults to ``["ship"]``; a list of one other name renames it).
    """

    def __init__(
        self,
        root: str,
        train_split: str | None = "trainval",
        val_split: str | None = None,
        test_split: str | None = "test",
        **kwargs: Any,
    ) -> None:
        super().__init__(root, train_split=train_split, val_split=val_split, test_split=test_split, **kwargs)

    def load_split(self, name: str, classes: list[str] | None) -> tuple[list[RotatedRecord], list[str]]:
        """Records of the image set ``name``.

        Raises:
            DataError: naming ``data.classes`` if it does not hold exactly one name.
        """
        names = list(classes) if classes is not None else list(HRSC_CLASSES)
        if len(names) != 1:
            raise DataError(f"data.classes: HRSC2016 is read as one class, got {names}")
        return hrsc_records(self.root, name), names
