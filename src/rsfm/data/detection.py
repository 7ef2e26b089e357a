"""Horizontal object detection data: PASCAL VOC XML, COCO JSON and DOTA ``labelTxt`` sets.

Every format is read into :class:`DetectionRecord` lists (one per image) and served by
:class:`DetectionDataset` as sample dicts::

    {'image': (3, H, W) float32 in [0, 1], 'boxes': (N, 4) float32 xyxy pixels,
     'labels': (N,) int64 in [0, K), 'difficult': (N,) bool, 'id': str}

Box coordinates are continuous pixel edges: ``(0, 0, W, H)`` covers the whole image.
``difficult`` objects (VOC's flag, DOTA's difficulty ≥ 1, COCO's ``iscrowd``) are kept and
flagged; the training transform drops them from the targets and the evaluation ignores them
(:mod:`rsfm.metrics.detection`), as the VOC protocol does.

Large images are trained on random crops (:class:`TrainTransform`) and evaluated whole by
tiled prediction (:func:`rsfm.models.detection.detect_tiled`), so the validation and test
samples are full images.
"""

from __future__ import annotations

import json
import math
import os
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from rsfm.data.io import read_image

__all__ = [
    "DOTA_V1_CLASSES",
    "DetectionDataModule",
    "DetectionDataset",
    "DetectionRecord",
    "TrainTransform",
    "coco_records",
    "collate_lists",
    "dota_records",
    "parse_dota_txt",
    "parse_voc_xml",
    "random_crop",
    "random_flip",
    "seeded_split",
    "voc_records",
]

#: The 15 categories of DOTA v1.0 (Xia et al., CVPR 2018), in the devkit's order.
DOTA_V1_CLASSES = (
    "plane",
    "baseball-diamond",
    "bridge",
    "ground-track-field",
    "small-vehicle",
    "large-vehicle",
    "ship",
    "tennis-court",
    "basketball-court",
    "storage-tank",
    "soccer-ball-field",
    "roundabout",
    "harbor",
    "swimming-pool",
    "helicopter",
)

_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


@dataclass
class DetectionRecord:
    """Annotation of one image.

    Attributes:
        image: image file.
        boxes: ``(N, 4)`` float32 xyxy, pixels.
        labels: ``(N,)`` int64 class indices in ``[0, K)``.
        difficult: ``(N,)`` bool, objects ignored by the evaluation.
        id: image identifier (file stem for VOC and DOTA, the COCO image id as text).
        meta: format-specific extras (DOTA: ``gsd`` in metres per pixel, ``imagesource``).
    """

    image: Path
    boxes: np.ndarray
    labels: np.ndarray
    difficult: np.ndarray
    id: str
    meta: dict[str, Any] = field(default_factory=dict)


def _record(image: Path, boxes: list, labels: list, difficult: list, rid: str, meta: dict | None = None):
    return DetectionRecord(
        image=image,
        boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
        labels=np.asarray(labels, dtype=np.int64).reshape(-1),
        difficult=np.asarray(difficult, dtype=bool).reshape(-1),
        id=rid,
        meta=meta or {},
    )


def _class_index(name: str, classes: Sequence[str], where: os.PathLike[str] | str) -> int:
    try:
        return list(classes).index(name)
    except ValueError:
        raise ValueError(f"{where}: class {name!r} is not in the class list {list(classes)}") from None


# --------------------------------------------------------------------------- PASCAL VOC


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


def _read_ids(path: Path) -> list[str]:
    if not path.is_file():
        raise FileNotFoundError(f"image set not found: {path}")
    return [line.split()[0] for line in path.read_text().splitlines() if line.strip()]


def _voc_image(root: Path, rid: str, filename: str | None) -> Path:
    if filename and (root / "JPEGImages" / filename).is_file():
        return root / "JPEGImages" / filename
    for suffix in _IMAGE_SUFFIXES:
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
    ids = _read_ids(root / "ImageSets" / "Main" / f"{image_set}.txt")
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
        labels = [_class_index(n, classes, xml) for n in ann["names"]]
        image = _voc_image(root, rid, ann["filename"])
        records.append(_record(image, b, labels, ann["difficult"], rid, {"size": ann["size"]}))
    return records, classes


# --------------------------------------------------------------------------- DOTA


def _polygon_area(xy: np.ndarray) -> float:
    """Shoelace area (pixels²) of a ``(4, 2)`` polygon."""
    x, y = xy[:, 0], xy[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def parse_dota_txt(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read one DOTA v1 ``labelTxt`` file as horizontal boxes.

    Lines are ``x1 y1 x2 y2 x3 y3 x4 y4 class difficulty``, optionally preceded by the
    ``imagesource:<name>`` and ``gsd:<metres per pixel>`` header lines of DOTA v1.0 (v1.5
    files have none). The horizontal box is the min/max of the four corners. Degenerate
    polygons (zero area, e.g. all four corners on one line, written with difficulty 2 in the
    DOTA devkit) are dropped and counted.

    Args:
        path: a ``labelTxt/<id>.txt`` file.

    Returns:
        ``names`` (list of N class names), ``boxes`` ``(N, 4)`` float32 xyxy pixels,
        ``polygons`` ``(N, 4, 2)`` float32, ``difficult`` ``(N,)`` bool (difficulty ≥ 1),
        ``gsd`` (float metres per pixel, or None), ``imagesource`` (str or None) and
        ``num_degenerate`` (int, polygons dropped).

    Raises:
        ValueError: on a line that is neither a header nor a 10-field object line.
    """
    path = Path(path)
    names, polys, difficult = [], [], []
    gsd, source, degenerate = None, None, 0
    for n, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line:
            continue
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() == "imagesource":
            source = value.strip()
            continue
        if sep and key.strip().lower() == "gsd":
            v = value.strip()
            gsd = float(v) if v and v.lower() not in ("none", "null") else None
            continue
        parts = line.split()
        if len(parts) not in (9, 10):
            raise ValueError(f"{path}:{n}: expected 'x1 y1 ... x4 y4 class [difficult]', got {line!r}")
        try:
            xy = np.asarray([float(v) for v in parts[:8]], dtype=np.float32).reshape(4, 2)
            diff = int(parts[9]) if len(parts) == 10 else 0
        except ValueError:
            raise ValueError(f"{path}:{n}: non-numeric coordinates or difficulty in {line!r}") from None
        if _polygon_area(xy) <= 0.0:
            degenerate += 1
            continue
        names.append(parts[8])
        polys.append(xy)
        difficult.append(diff >= 1)
    polygons = np.asarray(polys, dtype=np.float32).reshape(-1, 4, 2)
    boxes = np.concatenate([polygons.min(1), polygons.max(1)], axis=1) if len(polys) else np.zeros((0, 4), np.float32)
    return {
        "names": names,
        "boxes": boxes.astype(np.float32),
        "polygons": polygons,
        "difficult": np.asarray(difficult, dtype=bool),
        "gsd": gsd,
        "imagesource": source,
        "num_degenerate": degenerate,
    }


def dota_records(
    root: str | os.PathLike[str], classes: Sequence[str] | None = DOTA_V1_CLASSES
) -> tuple[list[DetectionRecord], list[str], int]:
    """Records of a DOTA folder (``images/<id>.png``, ``labelTxt/<id>.txt``), horizontal boxes.

    Args:
        root: folder holding ``images/`` and ``labelTxt/``.
        classes: class names in index order; default DOTA v1.0's 15; ``None``: the sorted
            names found.

    Returns:
        The records sorted by id, the class names and the number of degenerate polygons
        dropped (see :func:`parse_dota_txt`).

    Raises:
        FileNotFoundError: if a folder or an image is missing.
        ValueError: on a malformed line or a class outside ``classes``.
    """
    root = Path(root)
    labels_dir = root / "labelTxt"
    if not labels_dir.is_dir():
        raise FileNotFoundError(f"DOTA label folder not found: {labels_dir}")
    parsed = [(p, parse_dota_txt(p)) for p in sorted(labels_dir.glob("*.txt"))]
    if classes is None:
        classes = sorted({n for _, a in parsed for n in a["names"]})
    classes = list(classes)
    records, dropped = [], 0
    for txt, ann in parsed:
        candidates = [root / "images" / f"{txt.stem}{s}" for s in _IMAGE_SUFFIXES]
        image = next((p for p in candidates if p.is_file()), None)
        if image is None:
            raise FileNotFoundError(f"no image for {txt.name} in {root / 'images'}")
        labels = [_class_index(n, classes, txt) for n in ann["names"]]
        meta = {"gsd": ann["gsd"], "imagesource": ann["imagesource"], "num_degenerate": ann["num_degenerate"]}
        records.append(_record(image, ann["boxes"], labels, ann["difficult"], txt.stem, meta))
        dropped += ann["num_degenerate"]
    return records, classes, dropped


# --------------------------------------------------------------------------- COCO


def coco_records(
    ann_file: str | os.PathLike[str], image_dir: str | os.PathLike[str]
) -> tuple[list[DetectionRecord], list[str]]:
    """Records of a COCO detection JSON (``images``, ``annotations``, ``categories``).

    Category ids are mapped to contiguous indices in increasing id order; ``bbox`` ``[x, y,
    w, h]`` becomes xyxy; ``iscrowd`` annotations are kept as difficult (ignored by the
    evaluation); boxes with no area are dropped. Images without annotations are kept.

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
        boxes, labels, difficult = [], [], []
        for ann in per_image[img["id"]]:
            x, y, w, h = (float(v) for v in ann["bbox"])
            if w <= 0 or h <= 0:
                continue
            boxes.append([x, y, x + w, y + h])
            labels.append(cat_index[ann["category_id"]])
            difficult.append(bool(ann.get("iscrowd", 0)))
        records.append(_record(image_dir / img["file_name"], boxes, labels, difficult, str(img["id"])))
    return records, [c["name"] for c in cats]


# --------------------------------------------------------------------------- splits


def seeded_split(n: int, fractions: Sequence[float] = (0.7, 0.15, 0.15), seed: int = 0) -> dict[str, list[int]]:
    """Deterministic train/val/test split of ``n`` images.

    Indices are permuted with a seeded generator; val and test get ``round(f·n)`` images, at
    least one each when ``n >= 3``; train gets the rest.

    Args:
        n: number of images.
        fractions: train, val and test shares (normalised to sum 1).
        seed: permutation seed.

    Returns:
        ``{'train': [...], 'val': [...], 'test': [...]}`` sorted index lists.

    Raises:
        ValueError: if ``fractions`` is not three non-negative numbers or leaves train empty.
    """
    if len(fractions) != 3 or any(f < 0 for f in fractions) or sum(fractions) <= 0:
        raise ValueError(f"split_fractions must be three non-negative numbers, got {list(fractions)}")
    total = float(sum(fractions))
    counts = [round(f / total * n) for f in fractions[1:]]
    counts = [max(c, 1) if f > 0 and n >= 3 else c for c, f in zip(counts, fractions[1:], strict=True)]
    n_val, n_test = counts
    if n - n_val - n_test < 1:
        raise ValueError(f"cannot split {n} images by {list(fractions)}: no training image left")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    return {
        "train": sorted(perm[n_val + n_test :]),
        "val": sorted(perm[:n_val]),
        "test": sorted(perm[n_val : n_val + n_test]),
    }


# --------------------------------------------------------------------------- transforms


def _area(boxes: Tensor) -> Tensor:
    return (boxes[:, 2] - boxes[:, 0]).clamp(min=0) * (boxes[:, 3] - boxes[:, 1]).clamp(min=0)


def _select(sample: dict[str, Any], keep: Tensor) -> dict[str, Any]:
    out = dict(sample)
    for key in ("boxes", "labels", "difficult"):
        out[key] = sample[key][keep]
    return out


def _start(lo: int, hi: int, generator: torch.Generator | None) -> int:
    return lo if hi <= lo else int(torch.randint(lo, hi + 1, (1,), generator=generator))


def random_crop(
    sample: dict[str, Any],
    size: int,
    min_visibility: float = 0.5,
    object_prob: float = 0.5,
    generator: torch.Generator | None = None,
) -> dict[str, Any]:
    """Random ``size × size`` crop of a sample; boxes are shifted, clipped and filtered.

    With probability ``object_prob`` the window is drawn among those that hold a randomly
    chosen non-difficult object whole (so that crops of large, sparse scenes are not mostly
    empty); otherwise uniformly. An image smaller than ``size`` keeps its size on that axis.

    Args:
        sample: ``image`` ``(C, H, W)`` (any dtype), ``boxes`` ``(N, 4)`` xyxy pixels,
            ``labels`` ``(N,)``, ``difficult`` ``(N,)``; other keys are passed through.
        size: crop side, pixels.
        min_visibility: a clipped box is kept if it keeps at least this share of its area.
        object_prob: probability of an object-centred window.
        generator: random generator (default: torch's global one).

    Returns:
        The cropped sample.
    """
    image, boxes = sample["image"], sample["boxes"]
    _, h, w = image.shape
    ch, cw = min(size, h), min(size, w)
    pick = (~sample["difficult"]).nonzero().flatten()
    if len(pick) and float(torch.rand((), generator=generator)) < object_prob:
        b = boxes[pick[int(torch.randint(len(pick), (1,), generator=generator))]].tolist()
        windows = []
        for lo_edge, hi_edge, c, full in ((b[0], b[2], cw, w), (b[1], b[3], ch, h)):
            lo, hi = max(0, math.ceil(hi_edge) - c), min(math.floor(lo_edge), full - c)
            if lo > hi:  # the object is larger than the crop: centre on it
                lo = hi = min(max(0, round((lo_edge + hi_edge - c) / 2)), full - c)
            windows.append(_start(lo, hi, generator))
        x0, y0 = windows
    else:
        x0, y0 = _start(0, w - cw, generator), _start(0, h - ch, generator)
    out = dict(sample)
    out["image"] = image[:, y0 : y0 + ch, x0 : x0 + cw]
    shifted = boxes - torch.tensor([x0, y0, x0, y0], dtype=boxes.dtype)
    clipped = torch.stack(
        [
            shifted[:, 0].clamp(0, cw),
            shifted[:, 1].clamp(0, ch),
            shifted[:, 2].clamp(0, cw),
            shifted[:, 3].clamp(0, ch),
        ],
        dim=1,
    )
    keep = (_area(clipped) >= min_visibility * _area(shifted)) & (_area(clipped) > 0)
    out = _select(out, keep)
    out["boxes"] = clipped[keep]
    return out


def random_flip(sample: dict[str, Any], generator: torch.Generator | None = None) -> dict[str, Any]:
    """Random horizontal and vertical flips (each with probability 0.5) of image and boxes.

    Args:
        sample: ``image`` ``(C, H, W)`` and ``boxes`` ``(N, 4)`` xyxy pixels.
        generator: random generator.

    Returns:
        The flipped sample.
    """
    out = dict(sample)
    _, h, w = out["image"].shape
    flips = torch.rand(2, generator=generator) < 0.5
    if flips[0]:
        out["image"] = out["image"].flip(-1)
        b = out["boxes"]
        out["boxes"] = torch.stack([w - b[:, 2], b[:, 1], w - b[:, 0], b[:, 3]], dim=1)
    if flips[1]:
        out["image"] = out["image"].flip(-2)
        b = out["boxes"]
        out["boxes"] = torch.stack([b[:, 0], h - b[:, 3], b[:, 2], h - b[:, 1]], dim=1)
    return out


class TrainTransform:
    """Training augmentation: drop difficult objects, random crop, random flips.

    Args:
        crop_size: crop side, pixels.
        min_visibility: share of its area a clipped box must keep (see :func:`random_crop`).
        object_prob: probability of an object-centred crop.
        flip: apply :func:`random_flip`.
        keep_difficult: keep difficult objects as ordinary targets.
    """

    def __init__(
        self,
        crop_size: int,
        min_visibility: float = 0.5,
        object_prob: float = 0.5,
        flip: bool = True,
        keep_difficult: bool = False,
    ) -> None:
        self.crop_size = int(crop_size)
        self.min_visibility = float(min_visibility)
        self.object_prob = float(object_prob)
        self.flip = bool(flip)
        self.keep_difficult = bool(keep_difficult)

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        """Augment one sample (image of any dtype)."""
        if not self.keep_difficult:
            sample = _select(sample, ~sample["difficult"])
        sample = random_crop(sample, self.crop_size, self.min_visibility, self.object_prob)
        return random_flip(sample) if self.flip else sample


# --------------------------------------------------------------------------- dataset


class DetectionDataset(Dataset):
    """Serves :class:`DetectionRecord` s as sample dicts (see the module docstring).

    Args:
        records: the images and their annotations.
        classes: class names in index order.
        transform: applied to the sample while its image is still uint8 (crop first, so a
            large scene is not converted to float whole).
        repeats: each record is served this many times per epoch (several random crops of a
            large image per epoch).
    """

    def __init__(
        self,
        records: Sequence[DetectionRecord],
        classes: Sequence[str],
        transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        repeats: int = 1,
    ) -> None:
        self.records = list(records)
        self.classes = list(classes)
        self.transform = transform
        self.repeats = max(1, int(repeats))

    def __len__(self) -> int:
        return len(self.records) * self.repeats

    def __getitem__(self, index: int) -> dict[str, Any]:
        """Sample ``index``: ``image`` (3, H, W) float32 in [0, 1], ``boxes``, ``labels``, ``difficult``, ``id``."""
        r = self.records[index % len(self.records)]
        sample = {
            "image": read_image(r.image),
            "boxes": torch.from_numpy(r.boxes.copy()),
            "labels": torch.from_numpy(r.labels.copy()),
            "difficult": torch.from_numpy(r.difficult.copy()),
            "id": r.id,
        }
        _, h, w = sample["image"].shape
        b = sample["boxes"]
        b[:, 0::2] = b[:, 0::2].clamp(0, w)
        b[:, 1::2] = b[:, 1::2].clamp(0, h)
        sample = _select(sample, _area(b) > 0)
        if self.transform is not None:
            sample = self.transform(sample)
        sample["image"] = sample["image"].float().div_(255.0)
        return sample


def collate_lists(samples: Sequence[Mapping[str, Any]]) -> dict[str, list[Any]]:
    """Collate detection samples key by key into lists (images differ in size, boxes in count)."""
    return {key: [s[key] for s in samples] for key in samples[0]}


# --------------------------------------------------------------------------- datamodule


class DetectionDataModule(L.LightningDataModule):
    """Train/val/test loaders of a VOC, COCO or DOTA detection set.

    ``sets`` says where the splits come from: one name, split by image with a seeded
    permutation (:func:`seeded_split`), or a mapping ``{'train', 'val', 'test'} → name``.
    Names are ``ImageSets/Main/<name>.txt`` for VOC, JSON files under ``root`` for COCO and
    folders under ``root`` holding ``images/`` and ``labelTxt/`` for DOTA (``'.'``: root).
    ``None`` means: VOC, the ``train``/``val``/``test`` sets when all three exist, else
    ``trainval`` (or ``train``) split by seed; DOTA, ``'.'``; COCO requires a name.

    Training samples are random crops (:class:`TrainTransform`); validation and test samples
    are whole images (evaluated by tiling). Batches are dicts of lists
    (:func:`collate_lists`).

    Args:
        format: ``voc``, ``coco`` or ``dota``.
        root: dataset folder.
        sets: see above.
        image_dir: COCO only, the images' folder under ``root``.
        classes: class names in index order; ``None``: discovered (VOC), from the
            categories (COCO), DOTA v1.0's 15 (DOTA).
        split_fractions: train/val/test shares for a seeded split.
        crop_size: training crop side, pixels.
        crops_per_image: random crops of each training image per epoch.
        min_visibility: share of its area a cropped box must keep.
        object_crop_prob: probability of a crop centred on an object.
        flip: random flips in training.
        keep_difficult: train on difficult objects too.
        batch_size: training crops per batch.
        eval_batch_size: whole images per validation/test batch.
        num_workers: loader processes.
        seed: split seed.

    Raises:
        ValueError: on an unknown format or invalid ``sets``.
    """

    def __init__(
        self,
        format: str,
        root: str,
        sets: str | Mapping[str, str] | None = None,
        image_dir: str = "images",
        classes: Sequence[str] | None = None,
        split_fractions: Sequence[float] = (0.7, 0.15, 0.15),
        crop_size: int = 256,
        crops_per_image: int = 1,
        min_visibility: float = 0.5,
        object_crop_prob: float = 0.5,
        flip: bool = True,
        keep_difficult: bool = False,
        batch_size: int = 4,
        eval_batch_size: int = 1,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if format not in ("voc", "coco", "dota"):
            raise ValueError(f"data.format must be 'voc', 'coco' or 'dota', got {format!r}")
        if isinstance(sets, Mapping) and set(sets) != {"train", "val", "test"}:
            raise ValueError(f"data.sets as a mapping needs exactly train, val and test, got {sorted(sets)}")
        if format == "coco" and sets is None:
            raise ValueError("data.sets must name the COCO annotation JSON (or a train/val/test mapping of them)")
        self.format = format
        self.root = Path(root)
        self.sets = dict(sets) if isinstance(sets, Mapping) else sets
        self.image_dir = image_dir
        self._classes = list(classes) if classes is not None else None
        self.split_fractions = tuple(float(f) for f in split_fractions)
        self.transform = TrainTransform(crop_size, min_visibility, object_crop_prob, flip, keep_difficult)
        self.crops_per_image = int(crops_per_image)
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size)
        self.num_workers = int(num_workers)
        self.seed = int(seed)
        self._splits: dict[str, list[DetectionRecord]] | None = None
        self.num_degenerate = 0

    def _load(self, name: str, classes: Sequence[str] | None) -> tuple[list[DetectionRecord], list[str]]:
        if self.format == "voc":
            return voc_records(self.root, name, classes)
        if self.format == "coco":
            return coco_records(self.root / name, self.root / self.image_dir)
        records, found, dropped = dota_records(self.root / name, DOTA_V1_CLASSES if classes is None else classes)
        self.num_degenerate += dropped
        return records, found

    def _voc_default_sets(self) -> str | dict[str, str]:
        main = self.root / "ImageSets" / "Main"
        if all((main / f"{s}.txt").is_file() for s in ("train", "val", "test")):
            return {s: s for s in ("train", "val", "test")}
        return "trainval" if (main / "trainval.txt").is_file() else "train"

    def splits(self) -> dict[str, list[DetectionRecord]]:
        """The train/val/test records (parsed once)."""
        if self._splits is not None:
            return self._splits
        sets = self.sets
        if sets is None:
            sets = self._voc_default_sets() if self.format == "voc" else "."
        self.num_degenerate = 0
        if isinstance(sets, dict):
            classes = self._classes
            if classes is None and self.format == "voc":
                # names of all three sets, so that the indices agree across splits
                classes = sorted({n for s in sets.values() for n in voc_records(self.root, s)[1]})
            self._splits = {}
            for s in ("train", "val", "test"):
                records, found = self._load(sets[s], classes)
                if classes is None:
                    classes = found
                elif list(found) != list(classes):
                    raise ValueError(f"the {s} set's classes {found} differ from the other sets' {list(classes)}")
                self._splits[s] = records
        else:
            records, classes = self._load(sets, self._classes)
            idx = seeded_split(len(records), self.split_fractions, self.seed)
            self._splits = {k: [records[i] for i in v] for k, v in idx.items()}
        self._classes = list(classes)
        return self._splits

    @property
    def class_names(self) -> list[str]:
        """Class names in index order (parses the annotations if needed)."""
        if self._classes is None:
            self.splits()
        return list(self._classes)  # type: ignore[arg-type]

    def setup(self, stage: str | None = None) -> None:
        """Build the datasets of the splits."""
        splits = self.splits()
        self.train_dataset = DetectionDataset(splits["train"], self.class_names, self.transform, self.crops_per_image)
        self.val_dataset = DetectionDataset(splits["val"], self.class_names)
        self.test_dataset = DetectionDataset(splits["test"], self.class_names)

    def _loader(self, dataset: Dataset, batch_size: int, shuffle: bool) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            collate_fn=collate_lists,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        """Random crops, shuffled."""
        return self._loader(self.train_dataset, self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        """Whole validation images."""
        return self._loader(self.val_dataset, self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        """Whole test images."""
        return self._loader(self.test_dataset, self.eval_batch_size, shuffle=False)
