"""COCO instance-segmentation JSON (Lin et al., ECCV 2014): ``images``, ``annotations``, ``categories``.

Each annotation's ``segmentation`` is either a list of polygons (``[[x1, y1, x2, y2, ...],
...]``, pixels) or a run-length encoding ``{"size": [H, W], "counts": ...}`` whose counts are
a compressed string (COCO's RLE) or an uncompressed list of run lengths (column-major, as
COCO writes ``iscrowd`` masks). Masks are decoded with :mod:`pycocotools.mask` when a sample
is served. Category ids are mapped to labels ``0..K-1`` in increasing id order (the class
names are listed in that order); ``iscrowd`` annotations are kept as ``difficult``; images
without annotations are kept (negatives).

Splits are annotation files relative to the root, as in
:class:`~rsfm.data.detection.coco.COCODataModule` (``train_split: annotations/train.json``,
``val_split``, ``test_split``; without named validation/test files they are drawn from the
training file's images by ``val_fraction``/``test_fraction``/``split_seed``); images are under
``image_dir``.

.. versionadded:: 0.3
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rsfm.data.instance.common import InstanceRecord, InstanceSegmentationDataModule
from rsfm.utils.errors import DataError
from rsfm.utils.registry import DATASETS

__all__ = ["COCOInstanceDataModule", "COCOInstanceRecord", "coco_instance_records", "decode_segmentation"]


def decode_segmentation(segmentation: Any, height: int, width: int, where: str = "segmentation") -> np.ndarray:
    """One COCO ``segmentation`` as a binary mask.

    Args:
        segmentation: a list of polygons (``[[x1, y1, ...], ...]``, pixels, each with at least
            three points) or an RLE dict ``{"size": [H, W], "counts": str | bytes | list[int]}``.
        height: image height ``H``, pixels.
        width: image width ``W``, pixels.
        where: what to name in errors (file and annotation).

    Returns:
        ``(H, W)`` bool.

    Raises:
        DataError: naming ``where`` if the RLE's size differs from ``(H, W)`` or the
            segmentation is neither form.
    """
    from pycocotools import mask as mask_utils  # imported here: keeps `import rsfm.data` light

    if isinstance(segmentation, dict):
        size = [int(v) for v in segmentation.get("size", [])]
        if size != [height, width]:
            raise DataError(
                f"{where}: RLE size {segmentation.get('size')} differs from the image's [{height}, {width}]"
            )
        counts = segmentation.get("counts")
        if isinstance(counts, list):
            rle = mask_utils.frPyObjects(segmentation, height, width)
        elif isinstance(counts, str | bytes):
            rle = {"size": size, "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
        else:
            raise DataError(f"{where}: RLE 'counts' must be a string or a list of run lengths")
    elif isinstance(segmentation, list) and segmentation:
        polygons = [[float(v) for v in poly] for poly in segmentation]
        rle = mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
    else:
        raise DataError(f"{where}: expected a list of polygons or an RLE dict, got {type(segmentation).__name__}")
    return np.asarray(mask_utils.decode(rle), dtype=bool)


@dataclass
class COCOInstanceRecord(InstanceRecord):
    """A COCO image and its annotations' segmentations (decoded when served).

    Attributes:
        segmentations: one COCO ``segmentation`` per instance (polygons or RLE).
        labels: ``(N,)`` int64 in ``[0, K)``.
        difficult: ``(N,)`` bool (``iscrowd``).
        size: ``(H, W)`` pixels, from the JSON's ``height``/``width`` (None when absent).
        ann_file: the annotation file (for error messages).
    """

    segmentations: list[Any] = field(default_factory=list)
    labels: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    difficult: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    size: tuple[int, int] | None = None
    ann_file: str = ""

    def read_target(self, height: int, width: int) -> dict[str, np.ndarray]:
        """``masks`` ``(N, H, W)`` bool, ``labels`` ``(N,)`` int64, ``difficult`` ``(N,)`` bool.

        Raises:
            DataError: naming the annotation file and image if the JSON's ``height``/``width``
                or an RLE's size differ from the image's.
        """
        if self.size is not None and tuple(self.size) != (height, width):
            raise DataError(
                f"{self.ann_file}: image {self.id} ({self.image.name}) is {height}x{width} (height x width) "
                f"but the file says {self.size[0]}x{self.size[1]}"
            )
        masks = np.zeros((len(self.segmentations), height, width), dtype=bool)
        for i, seg in enumerate(self.segmentations):
            masks[i] = decode_segmentation(seg, height, width, f"{self.ann_file}: image {self.id}, annotation {i}")
        return {"masks": masks, "labels": self.labels, "difficult": self.difficult}


def _check_segmentation(seg: Any, where: str) -> bool:
    """Validate a segmentation's structure; False when it holds no usable polygon (degenerate)."""
    if isinstance(seg, dict):
        if "counts" not in seg or "size" not in seg or len(seg["size"]) != 2:
            raise ValueError(f"{where}: an RLE segmentation needs 'counts' and 'size' [H, W]")
        return True
    if not isinstance(seg, list):
        raise ValueError(f"{where}: 'segmentation' must be a list of polygons or an RLE dict")
    for poly in seg:
        if not isinstance(poly, list) or not all(isinstance(v, int | float) for v in poly):
            raise ValueError(f"{where}: polygons must be lists of numbers [x1, y1, x2, y2, ...]")
    return any(len(poly) >= 6 and len(poly) % 2 == 0 for poly in seg)


def coco_instance_records(
    ann_file: str | os.PathLike[str], image_dir: str | os.PathLike[str]
) -> tuple[list[COCOInstanceRecord], list[str]]:
    """Records of a COCO instance-segmentation JSON (``images``, ``annotations``, ``categories``).

    Category ids are mapped to contiguous labels in increasing id order. Annotations whose
    polygons all have fewer than three points (or an odd number of coordinates) are dropped,
    counted in the record's ``meta['num_degenerate']``; polygons of that kind among good ones
    are left out of the mask. ``iscrowd`` annotations are kept as difficult. Images without
    annotations are kept.

    Args:
        ann_file: the JSON file.
        image_dir: folder the images' ``file_name`` are relative to.

    Returns:
        The records in the file's image order, and the class names.

    Raises:
        FileNotFoundError: if the JSON file is missing.
        ValueError: naming the file and annotation if it lacks ``images`` or ``categories``,
            an annotation names an unknown image or category, lacks ``segmentation`` or has a
            malformed one, or an RLE's size differs from its image's ``height``/``width``.
    """
    ann_file, image_dir = Path(ann_file), Path(image_dir)
    if not ann_file.is_file():
        raise FileNotFoundError(f"COCO annotation file not found: {ann_file}")
    try:
        data = json.loads(ann_file.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{ann_file}: not valid JSON ({err})") from None
    if not isinstance(data, dict) or "images" not in data or "categories" not in data:
        raise ValueError(f"{ann_file}: a COCO file needs 'images' and 'categories'")
    cats = sorted(data["categories"], key=lambda c: c["id"])
    cat_index = {c["id"]: i for i, c in enumerate(cats)}
    images = {img["id"]: img for img in data["images"]}
    per_image: dict[Any, list[dict]] = {i: [] for i in images}
    for ann in data.get("annotations", []):
        where = f"{ann_file}: annotation {ann.get('id')}"
        if ann.get("image_id") not in per_image:
            raise ValueError(f"{where} names unknown image {ann.get('image_id')}")
        if ann.get("category_id") not in cat_index:
            raise ValueError(f"{where} names unknown category {ann.get('category_id')}")
        if "segmentation" not in ann:
            raise ValueError(f"{where} has no 'segmentation' (a detection-only COCO file?)")
        per_image[ann["image_id"]].append(ann)
    records = []
    for img in data["images"]:
        size = (int(img["height"]), int(img["width"])) if "height" in img and "width" in img else None
        segs, labels, difficult, degenerate = [], [], [], 0
        for ann in per_image[img["id"]]:
            where = f"{ann_file}: annotation {ann.get('id')}"
            seg = ann["segmentation"]
            if not _check_segmentation(seg, where):
                degenerate += 1
                continue
            if isinstance(seg, dict) and size is not None and [int(v) for v in seg["size"]] != list(size):
                raise ValueError(f"{where}: RLE size {seg['size']} differs from image {img['id']}'s {list(size)}")
            if isinstance(seg, list):
                seg = [p for p in seg if len(p) >= 6 and len(p) % 2 == 0]
            segs.append(seg)
            labels.append(cat_index[ann["category_id"]])
            difficult.append(bool(ann.get("iscrowd", 0)))
        records.append(
            COCOInstanceRecord(
                image=image_dir / img["file_name"],
                id=str(img["id"]),
                meta={"num_degenerate": degenerate},
                segmentations=segs,
                labels=np.asarray(labels, dtype=np.int64),
                difficult=np.asarray(difficult, dtype=bool),
                size=size,
                ann_file=str(ann_file),
            )
        )
    return records, [str(c["name"]) for c in cats]


@DATASETS.register
class COCOInstanceDataModule(InstanceSegmentationDataModule):
    """A COCO-JSON instance-segmentation set; splits are annotation files relative to the root.

    Labels follow the categories in increasing id order (``info().classes``). Polygon and
    RLE (compressed or uncompressed) segmentations are decoded with pycocotools.

    Args:
        root: dataset folder.
        image_dir: folder of the images, relative to ``root``.
        **kwargs: :class:`~rsfm.data.instance.common.InstanceSegmentationDataModule` options
            (``train_split`` is required: the training annotation file; ``val_split`` and
            ``test_split`` name annotation files, or are drawn from the training file by
            ``val_fraction``/``test_fraction``/``split_seed``).
    """

    def __init__(self, root: str, image_dir: str = "images", **kwargs: Any) -> None:
        super().__init__(root, **kwargs)
        self.image_dir = image_dir

    def load_split(self, name: str, classes: list[str] | None) -> tuple[list[COCOInstanceRecord], list[str]]:
        """Records of the annotation file ``root/<name>``."""
        records, found = coco_instance_records(self.root / name, self.root / self.image_dir)
        if classes is not None and list(classes) != found:
            raise DataError(
                f"data.classes {list(classes)} differ from the categories {found} of {self.root / name} "
                "(labels follow the category ids in increasing order; leave data.classes unset)"
            )
        return records, found
