"""Ultralytics YOLO-OBB labels: ``class_index x1 y1 x2 y2 x3 y3 x4 y4``, corners normalised to [0, 1].

Layout (ultralytics' ``DOTAv1`` and every ``*-obb`` data set)::

    <root>/images/<split>/<id>.jpg
    <root>/labels/<split>/<id>.txt     # one object per line; no file or an empty one: no object
    <root>/<name>.yaml                 # names: {0: plane, 1: ship, ...} or [plane, ship, ...]

Coordinates are fractions of the image width (x) and height (y); they become pixels when the
image is read (:meth:`RotatedRecord.in_pixels`), so scanning a split opens no image. Class
names come from the data YAML's ``names`` or from ``classes``. YOLO labels carry no
difficulty: every object is an ordinary target.

.. versionadded:: 0.3
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rsfm.data.detection.common import IMAGE_SUFFIXES
from rsfm.data.rotated.common import RotatedDetectionDataModule, RotatedRecord, make_rotated_record
from rsfm.utils.errors import DataError
from rsfm.utils.registry import DATASETS

__all__ = ["YOLOOBBDataModule", "parse_yolo_obb_txt", "read_yolo_names", "yolo_obb_records"]


def parse_yolo_obb_txt(path: str | os.PathLike[str], num_classes: int | None = None) -> dict[str, Any]:
    """Read one YOLO-OBB label file.

    Args:
        path: ``labels/<split>/<id>.txt``.
        num_classes: number of classes, to check the indices against (None: not checked).

    Returns:
        ``labels`` ``(N,)`` int64 class indices and ``polygons`` ``(N, 8)`` float32 corners
        as fractions of the image width (x) and height (y).

    Raises:
        FileNotFoundError: if the file does not exist.
        DataError: naming the file and line on a line that is not a class index and 8
            finite numbers, or an index outside ``[0, num_classes)``.
    """
    path = Path(path)
    labels, polygons = [], []
    for n, raw in enumerate(path.read_text().splitlines(), 1):
        parts = raw.split()
        if not parts:
            continue
        if len(parts) != 9:
            raise DataError(f"{path}:{n}: expected 'class_index x1 y1 x2 y2 x3 y3 x4 y4', got {raw.strip()!r}")
        try:
            cls = int(parts[0])
            xy = [float(v) for v in parts[1:]]
        except ValueError:
            raise DataError(f"{path}:{n}: non-numeric class index or coordinates in {raw.strip()!r}") from None
        if not np.isfinite(xy).all():
            raise DataError(f"{path}:{n}: non-finite coordinates in {raw.strip()!r}")
        if cls < 0 or (num_classes is not None and cls >= num_classes):
            raise DataError(f"{path}:{n}: class index {cls} outside [0, {num_classes}) (the class list's length)")
        labels.append(cls)
        polygons.append(xy)
    return {
        "labels": np.asarray(labels, dtype=np.int64),
        "polygons": np.asarray(polygons, dtype=np.float32).reshape(-1, 8),
    }


def read_yolo_names(path: str | os.PathLike[str]) -> list[str]:
    """Class names of an ultralytics data YAML (``names`` as a list or an ``{index: name}`` map).

    Raises:
        FileNotFoundError: if the file does not exist.
        DataError: naming the file if it has no ``names`` or their indices are not 0..K-1.
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"YOLO data YAML not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise DataError(f"{path}: not a valid YAML file ({err})") from None
    names = data.get("names") if isinstance(data, dict) else None
    if isinstance(names, dict):
        try:
            order = sorted(int(k) for k in names)
        except (TypeError, ValueError):
            order = []
        if order != list(range(len(names))):
            raise DataError(f"{path}: 'names' must map the indices 0..{len(names) - 1} to class names")
        names = [names[k] if k in names else names[str(k)] for k in order]
    if not isinstance(names, list) or not names:
        raise DataError(f"{path}: expected 'names', a list of class names or a map from index to name")
    return [str(n) for n in names]


def yolo_obb_records(root: str | os.PathLike[str], split: str, num_classes: int | None = None) -> list[RotatedRecord]:
    """Records (normalised polygons) of the images of ``images/<split>/``.

    Args:
        root: folder holding ``images/`` and ``labels/``.
        split: split folder name under both.
        num_classes: length of the class list (indices are checked against it).

    Returns:
        One record per image file, sorted by name (``normalized=True``; an image without a
        label file has no object).

    Raises:
        FileNotFoundError: if ``images/<split>`` does not exist.
        DataError: naming the file on a malformed label line.
    """
    root = Path(root)
    images = root / "images" / split
    if not images.is_dir():
        raise FileNotFoundError(f"YOLO image folder not found: {images}")
    records = []
    for image in sorted(p for p in images.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
        txt = root / "labels" / split / f"{image.stem}.txt"
        if txt.is_file():
            ann = parse_yolo_obb_txt(txt, num_classes)
        else:
            ann = {"labels": np.zeros(0, np.int64), "polygons": np.zeros((0, 8), np.float32)}
        difficult = np.zeros(len(ann["labels"]), dtype=bool)
        records.append(
            make_rotated_record(image, ann["polygons"], ann["labels"], difficult, image.stem, normalized=True)
        )
    return records


@DATASETS.register
class YOLOOBBDataModule(RotatedDetectionDataModule):
    """An ultralytics YOLO-OBB data set; splits are folder names under ``images/`` and ``labels/``.

    Args:
        root: folder holding ``images/`` and ``labels/``.
        data_yaml: ultralytics data YAML whose ``names`` are the classes (relative to
            ``root`` or absolute); None: ``classes`` if given, else the only ``*.yaml`` of
            ``root``.
        train_split: split folder to train on.
        val_split: split folder that selects checkpoints (None: drawn by ``val_fraction``).
        test_split: split folder to test on (None: drawn by ``test_fraction``).
        **kwargs: :class:`~rsfm.data.rotated.common.RotatedDetectionDataModule` options
            (``classes`` overrides the YAML's names).
    """

    def __init__(
        self,
        root: str,
        data_yaml: str | None = None,
        train_split: str | None = "train",
        val_split: str | None = "val",
        test_split: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(root, train_split=train_split, val_split=val_split, test_split=test_split, **kwargs)
        self.data_yaml = data_yaml

    def yolo_names(self, classes: Sequence[str] | None) -> list[str]:
        """The class list: ``classes``, else the names of the data YAML.

        Raises:
            DataError: naming ``data.data_yaml`` and ``data.classes`` if neither gives names.
        """
        if classes is not None:
            return list(classes)
        if self.data_yaml is not None:
            return read_yolo_names(self.root / self.data_yaml)
        found = sorted([*self.root.glob("*.yaml"), *self.root.glob("*.yml")])
        if len(found) != 1:
            raise DataError(
                f"{self.root}: {len(found)} data YAML files found; "
                "set data.data_yaml or data.classes to name the classes"
            )
        return read_yolo_names(found[0])

    def load_split(self, name: str, classes: list[str] | None) -> tuple[list[RotatedRecord], list[str]]:
        """Records of ``images/<name>`` and ``labels/<name>``."""
        names = self.yolo_names(classes)
        return yolo_obb_records(self.root, name, len(names)), names
