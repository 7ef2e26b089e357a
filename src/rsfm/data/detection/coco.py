"""COCO detection JSON layout (Lin et al., ECCV 2014): ``images``, ``annotations``, ``categories``.

Splits are annotation files under the root (``train_split: annotations/train.json``), images
are under ``image_dir``.

.. versionadded:: 0.2
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from rsfm.data.detection.common import DetectionDataModule, DetectionRecord, make_record
from rsfm.utils.registry import DATASETS

__all__ = ["COCODataModule", "coco_records"]


def coco_records(
    ann_file: str | os.PathLike[str], image_dir: str | os.PathLike[str]
) -> tuple[list[DetectionRecord], list[str]]:
    """Records of a COCO detection JSON (``images``, ``annotations``, ``categories``).

    Category ids are mapped to contiguous indices in increasing id order; ``bbox`` ``[x, y,
    w, h]`` becomes xyxy; ``iscrowd`` annotations are kept as difficult (ignored by the
    evaluation); boxes with no area are dropped, counted in the record's
    ``meta['num_degenerate']``. Images without annotations are kept.

    Args:
        ann_file: the JSON file.
        image_dir: folder the images' ``file_name`` are relative to.

    Returns:
        The records in the file's image order, and the class names.

    Raises:
        FileNotFoundError: if the JSON file is missing.
        ValueError: if it lacks ``images`` or ``categories``, or an annotation names an
            unknown image or category.
    """
    ann_file, image_dir = Path(ann_file), Path(image_dir)
    if not ann_file.is_file():
        raise FileNotFoundError(f"COCO annotation file not found: {ann_file}")
    data = json.loads(ann_file.read_text())
    if "images" not in data or "categories" not in data:
        raise ValueError(f"{ann_file}: a COCO detection file needs 'images' and 'categories'")
    cats = sorted(data["categories"], key=lambda c: c["id"])
    cat_index = {c["id"]: i for i, c in enumerate(cats)}
    per_image: dict[Any, list[dict]] = {img["id"]: [] for img in data["images"]}
    for ann in data.get("annotations", []):
        if ann["image_id"] not in per_image:
            raise ValueError(f"{ann_file}: annotation {ann.get('id')} names unknown image {ann['image_id']}")
        if ann["category_id"] not in cat_index:
            raise ValueError(f"{ann_file}: annotation {ann.get('id')} names unknown category {ann['category_id']}")
        per_image[ann["image_id"]].append(ann)
    records = []
    for img in data["images"]:
        boxes, labels, difficult, degenerate = [], [], [], 0
        for ann in per_image[img["id"]]:
            x, y, w, h = (float(v) for v in ann["bbox"])
            if w <= 0 or h <= 0:
                degenerate += 1
                continue
            boxes.append([x, y, x + w, y + h])
            labels.append(cat_index[ann["category_id"]])
            difficult.append(bool(ann.get("iscrowd", 0)))
        meta = {"num_degenerate": degenerate}
        records.append(make_record(image_dir / img["file_name"], boxes, labels, difficult, str(img["id"]), meta))
    return records, [c["name"] for c in cats]


@DATASETS.register
class COCODataModule(DetectionDataModule):
    """A COCO-JSON detection set; splits are annotation files relative to the root.

    Args:
        root: dataset folder.
        image_dir: folder of the images, relative to ``root``.
        **kwargs: :class:`~rsfm.data.detection.common.DetectionDataModule` options
            (``train_split`` is required: the training annotation file).
    """

    def __init__(self, root: str, image_dir: str = "images", **kwargs: Any) -> None:
        super().__init__(root, **kwargs)
        self.image_dir = image_dir

    def load_split(self, name: str, classes: list[str] | None) -> tuple[list[DetectionRecord], list[str]]:
        """Records of the annotation file ``root/<name>``."""
        return coco_records(self.root / name, self.root / self.image_dir)
