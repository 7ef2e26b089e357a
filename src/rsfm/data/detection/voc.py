"""PASCAL VOC layout (``JPEGImages/``, ``Annotations/*.xml``, ``ImageSets/Main/*.txt``).

The layout of PASCAL VOC (Everingham et al., IJCV 2010) and of many remote-sensing sets that
copy it (NWPU VHR-10 conversions, NEPU-OWOD, HRRSD...). Splits are image-set names
(``ImageSets/Main/<name>.txt``).

.. versionadded:: 0.2
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rsfm.data.detection.common import IMAGE_SUFFIXES, DetectionDataModule, DetectionRecord, class_index, make_record
from rsfm.utils.registry import DATASETS

__all__ = ["VOCDataModule", "parse_voc_xml", "read_image_set", "voc_records"]


def parse_voc_xml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read one PASCAL VOC annotation file.

    Coordinates are taken as written (pixel edges), as MMDetection ≥ 2 reads them; the legacy
    1-based offset of VOC2007 (at most one pixel) is not subtracted.

    Args:
        path: ``Annotations/<id>.xml``.

    Returns:
        ``filename`` (str or None), ``size`` (``(width, height)`` or None), ``names``
        (list of N class names), ``boxes`` ``(N, 4)`` float32 xyxy pixels and ``difficult``
        ``(N,)`` bool (``<difficult>1</difficult>``; absent means 0).

    Raises:
        ValueError: on malformed XML or an object without a complete ``bndbox``.
    """
    path = Path(path)
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as err:
        raise ValueError(f"{path}: not a valid VOC XML file ({err})") from err
    size = None
    if (s := root.find("size")) is not None and s.findtext("width") and s.findtext("height"):
        size = (int(float(s.findtext("width"))), int(float(s.findtext("height"))))
    names, boxes, difficult = [], [], []
    for obj in root.iter("object"):
        name = (obj.findtext("name") or "").strip()
        bb = obj.find("bndbox")
        try:
            box = [float(bb.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")]  # type: ignore[union-attr,arg-type]
        except (AttributeError, TypeError, ValueError):
            raise ValueError(f"{path}: object {name!r} has no complete <bndbox>") from None
        names.append(name)
        boxes.append(box)
        difficult.append(int(float(obj.findtext("difficult") or 0)) == 1)
    return {
        "filename": root.findtext("filename"),
        "size": size,
        "names": names,
        "boxes": np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
        "difficult": np.asarray(difficult, dtype=bool),
    }


def read_image_set(path: Path) -> list[str]:
    """Image ids of an image-set file, one per line (CRLF line ends accepted).

    Raises:
        FileNotFoundError: if the file does not exist.
    """
    if not path.is_file():
        raise FileNotFoundError(f"image set not found: {path}")
    return [line.split()[0] for line in path.read_text().splitlines() if line.strip()]


def _voc_image(root: Path, rid: str, filename: str | None) -> Path:
    if filename and (root / "JPEGImages" / filename).is_file():
        return root / "JPEGImages" / filename
    for suffix in IMAGE_SUFFIXES:
        if (p := root / "JPEGImages" / f"{rid}{suffix}").is_file():
            return p
    raise FileNotFoundError(f"no image for {rid!r} in {root / 'JPEGImages'}")


def voc_records(
    root: str | os.PathLike[str], image_set: str = "train", classes: Sequence[str] | None = None
) -> tuple[list[DetectionRecord], list[str]]:
    """Records of a PASCAL VOC layout (``JPEGImages/``, ``Annotations/``, ``ImageSets/Main/``).

    Args:
        root: dataset folder.
        image_set: name of ``ImageSets/Main/<image_set>.txt``.
        classes: class names in index order; ``None``: the sorted names found in the set.

    Returns:
        The records in the order of the image set file, and the class names.

    Raises:
        FileNotFoundError: if the image set, an annotation or an image is missing.
        ValueError: on an object of a class outside ``classes`` or a box with no area.
    """
    root = Path(root)
    ids = read_image_set(root / "ImageSets" / "Main" / f"{image_set}.txt")
    parsed = []
    for rid in ids:
        xml = root / "Annotations" / f"{rid}.xml"
        if not xml.is_file():
            raise FileNotFoundError(f"annotation not found: {xml}")
        parsed.append((rid, xml, parse_voc_xml(xml)))
    if classes is None:
        classes = sorted({n for _, _, a in parsed for n in a["names"]})
    classes = list(classes)
    records = []
    for rid, xml, ann in parsed:
        b = ann["boxes"]
        if len(b) and ((b[:, 2] <= b[:, 0]) | (b[:, 3] <= b[:, 1])).any():
            raise ValueError(f"{xml}: a box has xmax <= xmin or ymax <= ymin")
        labels = [class_index(n, classes, xml) for n in ann["names"]]
        image = _voc_image(root, rid, ann["filename"])
        records.append(make_record(image, b, labels, ann["difficult"], rid, {"size": ann["size"]}))
    return records, classes


@DATASETS.register
class VOCDataModule(DetectionDataModule):
    """A PASCAL-VOC-layout detection set; splits are ``ImageSets/Main/<name>.txt`` names.

    Args:
        root: folder holding ``JPEGImages``, ``Annotations`` and ``ImageSets/Main``.

    The other options are those of :class:`~rsfm.data.detection.common.DetectionDataModule`
    (``train_split`` defaults to ``"train"``; ``classes`` to the sorted names found).
    """

    def load_split(self, name: str, classes: list[str] | None) -> tuple[list[DetectionRecord], list[str]]:
        """Records of ``ImageSets/Main/<name>.txt``."""
        return voc_records(self.root, name, classes)
