"""Multi-task data for MTP: one labelled subset, its samples, its training augmentation.

MTP (Wang et al., "MTP: Advancing Remote Sensing Foundation Model via Multi-Task Pretraining",
IEEE JSTARS 2024, Sec. III) pretrains an encoder on the three subsets of SAMRS (Wang et al.,
"SAMRS: Scaling-up Remote Sensing Segmentation Dataset with Segment Anything Model", NeurIPS
2023 Datasets and Benchmarks): every image carries a semantic mask, instance masks and rotated
boxes, and the model learns semantic segmentation, instance segmentation and rotated detection
from it at once. This module serves one such *subset*:

* a :class:`MultiTaskSource` lists the images of a split (:class:`MultiTaskRecord`) and reads
  their labels as numpy arrays. It declares the label kinds it has in :attr:`~MultiTaskSource.tasks`
  (a subset of :data:`TASKS`): a boxes-only set (:class:`RotatedBoxesSource`) has
  ``("rotated",)``. Sources: :class:`SAMRSSource` (SAMRS's published formats, and what
  :func:`rsfm.data.samrs.build_samrs` writes), :class:`ISAIDDOTASource` (iSAID masks with the
  DOTA boxes of the same images) and :class:`RotatedBoxesSource` (any rsfm box layout).
* :class:`MultiTaskDataset` turns records into sample dicts (below); an image that cannot be
  read gives ``{'skipped': (path, reason), 'id': str}`` as in
  :class:`~rsfm.data.detection.common.DetectionDataset`, and :func:`collate_multitask` leaves it
  out of the batch, listing it under ``batch['skipped']``.
* :class:`MultiTaskTrainTransform` is MTP's per-sample training pipeline (flip, random resize,
  crop, photometric distortion) with rsfm's fixes of the release's defects.

A sample holds ``image`` and ``id`` and the keys of the source's tasks::

    {'image': (C, H, W) float32 in [0, 1],
     # "semantic": 0 = background, k + 1 = class k, 255 = ignore (padding)
     'mask': (H, W) int64,
     # "instance": one row per object, boxes the tight boxes of the masks
     'boxes': (N, 4) float32 xyxy pixels, 'labels': (N,) int64 in [0, K), 'masks': (N, H, W) uint8 {0, 1},
     # "rotated": le90 oriented boxes (w the long side, theta in [-pi/2, pi/2))
     'obbs': (M, 5) float32 (cx, cy, w, h, theta) pixels / radians, 'obb_labels': (M,) int64 in [0, K),
     'id': str}

Coordinates are continuous pixel edges (``(0, 0)`` the top-left corner of the image, a
``W × H`` image spans ``[0, W] × [0, H]``), angles as :mod:`rsfm.ops.obb` (clockwise on screen).
The ``K`` object classes are :attr:`MultiTaskSource.classes`, shared by the instance and rotated
labels; the semantic classes are ``["background", *classes]``.

.. versionadded:: 0.3
"""

from __future__ import annotations

import abc
import inspect
import json
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from rsfm.data.detection.common import IMAGE_SUFFIXES, class_indices, collate_lists
from rsfm.data.io import BadImageError, RasterRule, UnsupportedImageError, read_image
from rsfm.data.rotated.common import polygons_to_obbs, read_id_list
from rsfm.data.skips import READ_ERRORS, skip_reason
from rsfm.ops import obb as obb_ops
from rsfm.utils.errors import DataError

__all__ = [
    "FAST_CLASSES",
    "IGNORE_INDEX",
    "MULTITASK_KEYS",
    "SIOR_CLASSES",
    "SOTA_CLASSES",
    "TASKS",
    "ISAIDDOTASource",
    "MultiTaskDataset",
    "MultiTaskRecord",
    "MultiTaskSource",
    "MultiTaskTrainTransform",
    "RotatedBoxesSource",
    "SAMRSSource",
    "collate_multitask",
    "find_layout",
    "layout_records",
    "mask_boxes",
    "read_samrs_gray",
]

#: the label kinds a subset may carry, in sample-key order
TASKS = ("semantic", "instance", "rotated")
#: semantic label of pixels without a label (the padding of training crops)
IGNORE_INDEX = 255
#: sample keys of each task (besides ``image`` and ``id``)
TASK_KEYS = {"semantic": ("mask",), "instance": ("boxes", "labels", "masks"), "rotated": ("obbs", "obb_labels")}
#: every key a multi-task sample may hold, in order (besides ``skipped``)
MULTITASK_KEYS = ("image", "mask", "boxes", "labels", "masks", "obbs", "obb_labels", "id")

#: SAMRS SOTA (DOTA-v2.0 patches, rotated boxes; MTP's "SOTA-RBB"), in label order
SOTA_CLASSES = (
    "large-vehicle",
    "swimming-pool",
    "helicopter",
    "bridge",
    "plane",
    "ship",
    "soccer-ball-field",
    "basketball-court",
    "ground-track-field",
    "small-vehicle",
    "baseball-diamond",
    "tennis-court",
    "roundabout",
    "storage-tank",
    "harbor",
    "container-crane",
    "airport",
    "helipad",
)
#: SAMRS SIOR (DIOR), in label order
SIOR_CLASSES = (
    "airplane",
    "airport",
    "baseballfield",
    "basketballcourt",
    "bridge",
    "chimney",
    "expressway-service-area",
    "expressway-toll-station",
    "dam",
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
#: SAMRS FAST (FAIR1M-1.0 patches), in label order
FAST_CLASSES = (
    "A220",
    "A321",
    "A330",
    "A350",
    "ARJ21",
    "Baseball-Field",
    "Basketball-Court",
    "Boeing737",
    "Boeing747",
    "Boeing777",
    "Boeing787",
    "Bridge",
    "Bus",
    "C919",
    "Cargo-Truck",
    "Dry-Cargo-Ship",
    "Dump-Truck",
    "Engineering-Ship",
    "Excavator",
    "Fishing-Boat",
    "Football-Field",
    "Intersection",
    "Liquid-Cargo-Ship",
    "Motorboat",
    "other-airplane",
    "other-ship",
    "other-vehicle",
    "Passenger-Ship",
    "Roundabout",
    "Small-Car",
    "Tennis-Court",
    "Tractor",
    "Trailer",
    "Truck-Tractor",
    "Tugboat",
    "Van",
    "Warship",
)


# ------------------------------------------------------------------------------ records


@dataclass
class MultiTaskRecord:
    """One image of a multi-task subset and where its labels are.

    Attributes:
        image: image file.
        id: image identifier (the file stem in every source here).
        annotations: task name (:data:`TASKS`) → what the source needs to read that task's
            labels: a file (SAMRS gray PNG, box txt/xml, iSAID id PNG), a list of COCO
            annotations, a :class:`~rsfm.data.rotated.common.RotatedRecord`... Only the
            source that made the record reads it.
        meta: source-specific extras (e.g. ``size`` ``(width, height)`` from an annotation).
    """

    image: Path
    id: str
    annotations: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)


class MultiTaskSource(abc.ABC):
    """A labelled subset of multi-task data: its images per split and their raw labels.

    Subclasses set :attr:`name`, :attr:`tasks` and :attr:`classes` (in ``__init__``) and
    implement :meth:`records` and :meth:`load`.

    Attributes:
        name: the subset's name (MTP's ``SOTA``, ``SIOR``, ``FAST``; used for per-subset heads).
        tasks: the label kinds this subset has, a sub-tuple of :data:`TASKS` in that order.
        classes: object class names in label order (``K`` of them); instance and rotated
            labels index them, semantic labels are ``k + 1`` (:attr:`semantic_classes`).
        raster: how image files become bands (:class:`~rsfm.data.io.RasterRule`).
    """

    name: str = "subset"
    tasks: tuple[str, ...] = ()
    classes: list[str]
    raster: RasterRule = RasterRule()

    @property
    def semantic_classes(self) -> list[str]:
        """``["background", *classes]``: the classes of the semantic labels, 0 = background."""
        return ["background", *self.classes]

    @abc.abstractmethod
    def records(self, split: str | None = None) -> list[MultiTaskRecord]:
        """The images of ``split`` (a name each source documents), in a fixed order.

        Raises:
            DataError: naming the file or folder if the split or a label file is missing.
        """

    @abc.abstractmethod
    def load(self, record: MultiTaskRecord, size: tuple[int, int] | None = None) -> dict[str, np.ndarray]:
        """The labels of one image, as numpy arrays, for the tasks of :attr:`tasks`.

        Args:
            record: one of :meth:`records`.
            size: ``(H, W)`` of the image as read, pixels (for labels stored as fractions of
                the image size; most sources ignore it).

        Returns:
            ``semantic``: ``(H, W)`` uint8, 0 = background, ``k + 1`` = class ``k``, 255 =
            ignore; ``masks``: ``(N, H, W)`` bool and ``labels``: ``(N,)`` int64 in ``[0, K)``
            (instances); ``polygons``: ``(M, 8)`` float32 corners ``x1 y1 ... x4 y4`` (pixels)
            and ``obb_labels``: ``(M,)`` int64 in ``[0, K)`` (rotated boxes). Only the keys of
            :attr:`tasks` are required.

        Raises:
            DataError: naming the file of a label that is missing or malformed.
        """

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, tasks={self.tasks}, classes={len(self.classes)})"


# ---------------------------------------------------------------------------- helpers


def _check_tasks(tasks: Sequence[str], where: str) -> tuple[str, ...]:
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise DataError(f"{where}: unknown task(s) {unknown}; expected a subset of {list(TASKS)}")
    return tuple(t for t in TASKS if t in tasks)


def _image_files(folder: Path) -> list[Path]:
    """The image files of ``folder`` (not recursive), sorted by name."""
    if not folder.is_dir():
        raise DataError(f"image folder not found: {folder}")
    suffixes = set(IMAGE_SUFFIXES)
    return sorted(Path(e.path) for e in os.scandir(folder) if os.path.splitext(e.name)[1].lower() in suffixes)


def _class_labels(names: Sequence[str], classes: Sequence[str], where: Path | str) -> np.ndarray:
    try:
        return np.asarray(class_indices(names, classes, where), dtype=np.int64)
    except ValueError as err:
        raise DataError(str(err)) from None


def _read_box_file(path: Path, classes: Sequence[str]) -> dict[str, np.ndarray]:
    """Polygons and labels of a DOTA-style txt or a DIOR-R xml (``robndbox`` corners).

    Raises:
        DataError: naming the file (and line) on a missing file, a malformed line or object,
            or a class outside ``classes``.
    """
    from rsfm.data.detection.dior import parse_dior_obb_xml
    from rsfm.data.detection.dota import parse_dota_txt

    if not path.is_file():
        raise DataError(f"rotated box file not found: {path}")
    try:
        ann = parse_dior_obb_xml(path) if path.suffix.lower() == ".xml" else parse_dota_txt(path)
    except (ValueError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: {err}" if str(path) not in str(err) else str(err)) from None
    polygons = np.asarray(ann["polygons"], dtype=np.float32).reshape(-1, 8)
    if not np.isfinite(polygons).all():
        raise DataError(f"{path}: non-finite box coordinates")
    return {"polygons": polygons, "obb_labels": _class_labels(ann["names"], classes, path)}


def mask_boxes(masks: Tensor | np.ndarray) -> Tensor:
    """Tight boxes of binary masks.

    Args:
        masks: ``(N, H, W)`` bool or {0, 1} (tensor or array).

    Returns:
        ``(N, 4)`` float32 xyxy in continuous pixel edges: a mask whose pixels span columns
        ``c0..c1`` and rows ``r0..r1`` gives ``(c0, r0, c1 + 1, r1 + 1)``; an empty mask gives
        zeros.
    """
    m = masks.cpu().numpy() if isinstance(masks, Tensor) else np.asarray(masks)
    m = m.astype(bool, copy=False)
    n, h, w = m.shape
    if n == 0:
        return torch.zeros((0, 4), dtype=torch.float32)
    rows, cols = m.any(axis=2), m.any(axis=1)  # (N, H), (N, W)
    boxes = np.stack(
        [cols.argmax(1), rows.argmax(1), w - cols[:, ::-1].argmax(1), h - rows[:, ::-1].argmax(1)], axis=1
    ).astype(np.float32)
    boxes[~rows.any(1)] = 0.0
    return torch.from_numpy(boxes)


# ----------------------------------------------------------------------------- layouts


def _layout_key(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def find_layout(name: str) -> type:
    """The rsfm box-detection datamodule (rotated or horizontal layout) called ``name``.

    ``name`` is a registered class name (``HITUAVDataModule``, ``rsfm list datasets``) or its
    short form: lower case, without ``_``/``-``, the ``DataModule`` suffix and a ``Rotated``
    infix (``hit_uav``, ``dota``, ``dior_r``, ``fair1m``, ``hrsc2016``, ``rolabelimg``,
    ``yolo_obb``; the horizontal ``dior``, ``voc``, ``coco``). Where a rotated and a horizontal
    layout share a short form (``dota``), it names the rotated one.

    Raises:
        ConfigError: naming the known layouts if ``name`` is none of them.
    """
    from rsfm.data.detection.common import DetectionDataModule
    from rsfm.data.rotated.common import RotatedDetectionDataModule
    from rsfm.utils.errors import ConfigError
    from rsfm.utils.registry import DATASETS

    layouts: dict[str, type] = {}
    for key in DATASETS.names():
        cls = DATASETS.get(key)
        if not (isinstance(cls, type) and issubclass(cls, DetectionDataModule)) or inspect.isabstract(cls):
            continue
        if any(b.__name__ == "InstanceSegmentationDataModule" for b in cls.__mro__):
            continue  # instance layouts have masks already: they are not box sources
        layouts[key] = cls
    if name in layouts:
        return layouts[name]
    short: dict[str, type] = {}
    for key, cls in sorted(layouts.items(), key=lambda kv: issubclass(kv[1], RotatedDetectionDataModule)):
        base = _layout_key(key).removesuffix("datamodule")
        short[base] = cls
        short[base.replace("rotated", "")] = cls  # rotated layouts come last: they win a shared name
    cls = short.get(_layout_key(name))
    if cls is None:
        names = sorted({k for k in short if k} | set(layouts))
        raise ConfigError(f"unknown box layout {name!r}; known: {', '.join(names)}")
    return cls


def layout_records(
    layout: str | type,
    root: str | os.PathLike[str],
    split: str | None = None,
    classes: Sequence[str] | None = None,
    **options: Any,
) -> tuple[list[Any], list[str], bool]:
    """Records of one split of an rsfm box layout, read by the layout's datamodule.

    Args:
        layout: a layout name (:func:`find_layout`) or datamodule class.
        root: the dataset folder.
        split: split name in the layout (image set, folder...); None: the layout's training split.
        classes: class names in label order; None: the layout's default (or the names found).
        **options: further arguments of the datamodule (``version``, ``label_dir``...).

    Returns:
        ``(records, classes, rotated)``: :class:`~rsfm.data.rotated.common.RotatedRecord` s
        (``rotated`` True) or :class:`~rsfm.data.detection.common.DetectionRecord` s, and the
        class names.

    Raises:
        ConfigError: on an unknown layout name.
        DataError: naming the split if it cannot be read (missing files, malformed labels).
    """
    from rsfm.data.base import check_folder
    from rsfm.data.rotated.common import RotatedDetectionDataModule

    cls = find_layout(layout) if isinstance(layout, str) else layout
    dm = cls(root=str(check_folder(root, "root")), **options)
    name = split if split is not None else dm.train_split
    try:
        records, names = dm.load_split(name, list(classes) if classes is not None else None)
    except DataError:
        raise
    except (FileNotFoundError, ValueError) as err:
        raise DataError(f"{cls.__name__} split {name!r} in {root}: {err}") from None
    return list(records), list(names), issubclass(cls, RotatedDetectionDataModule)


# ----------------------------------------------------------------------------- sources


class SAMRSSource(MultiTaskSource):
    """A subset in SAMRS's published formats (and what :func:`rsfm.data.samrs.build_samrs` writes).

    Layout (every label part optional; sub-folder names configurable, absolute paths allowed)::

        <root>/images/<id>.<ext>        # image_dir
        <root>/gray/<id>.png            # semantic_dir: uint8, 255 = background, k = class k
        <root>/instances.json           # instances: COCO, RLE masks, 0-based category_id
        <root>/rbbtxts/<id>.txt         # rotated_dir: x1 y1 ... x4 y4 class_name [col10]
                                        #   or <id>.xml: DIOR-R <robndbox> corners
        <root>/<split>.txt              # optional id lists

    The semantic PNGs are read as ``y = (raw + 1) % 256``: background becomes 0 and class
    ``k`` becomes ``k + 1`` (as MTP reads SAMRS). Instance annotations may hold RLE
    (compressed or not) or polygons; their ``category_id`` is the 0-based class index (MTP's
    converted SAMRS JSONs). The txt's 10th column (SAMRS writes the class index, DOTA a
    difficulty) is not used; every box is a target. Zero-area polygons are dropped.

    Splits (:meth:`records`): ``"."`` or None is every image of ``image_dir``; another name is
    an id list ``<root>/<name>.txt`` or ``<root>/ImageSets/<name>.txt`` (or an existing file),
    else, when ``instances`` holds ``{split}`` (``sota_rbb_{split}_ins_segmentation.json``), the
    images of that JSON.

    Args:
        root: the subset's folder.
        classes: class names in label order; None: the JSON's categories (by id), else the
            ``classes`` of the ``manifest.json`` that :func:`~rsfm.data.samrs.build_samrs`
            wrote, else an error. Given together with a JSON, they must agree (case-insensitive).
        name: the subset's name.
        image_dir: folder of the images.
        semantic_dir: folder of the gray PNGs.
        instances: the COCO JSON, relative to ``root`` (may contain ``{split}``); None: none.
        rotated_dir: folder of the box files.
        tasks: the tasks to serve; None: those whose label part exists.
        raster: how image files become bands.

    Raises:
        DataError: if ``root`` is missing, a requested task's labels are missing, no labels
            are found at all, or the classes cannot be determined or disagree with the JSON
            (:meth:`records`: a missing ``image_dir``, split or label file).
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        classes: Sequence[str] | None = None,
        name: str = "samrs",
        image_dir: str = "images",
        semantic_dir: str = "gray",
        instances: str | None = "instances.json",
        rotated_dir: str = "rbbtxts",
        tasks: Sequence[str] | None = None,
        raster: RasterRule = RasterRule(),  # noqa: B008 (frozen)
    ) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(f"SAMRS folder not found: {self.root}")
        self.name = str(name)
        self.raster = raster
        self.image_dir = self.root / image_dir
        self.semantic_dir = self.root / semantic_dir
        self.rotated_dir = self.root / rotated_dir
        self.instances = instances
        self._coco: dict[Path, dict[str, Any]] = {}
        found = []
        if self.semantic_dir.is_dir():
            found.append("semantic")
        if instances is not None and self._instance_files():
            found.append("instance")
        if self.rotated_dir.is_dir():
            found.append("rotated")
        if tasks is None:
            if not found:
                raise DataError(
                    f"{self.root}: no labels found (expected {self.semantic_dir.name}/, {instances} "
                    f"or {self.rotated_dir.name}/)"
                )
            self.tasks = tuple(found)
        else:
            self.tasks = _check_tasks(tasks, f"SAMRS source {self.root}")
            where = {"semantic": self.semantic_dir, "instance": self.root / str(instances), "rotated": self.rotated_dir}
            for task in self.tasks:
                if task not in found:
                    raise DataError(f"{self.root}: the {task} labels are missing (expected {where[task]})")
        self.classes = self._resolve_classes(classes)

    # -- files ---------------------------------------------------------------------------

    def _instance_files(self) -> list[Path]:
        if self.instances is None:
            return []
        if "{split}" in self.instances:
            pattern = self.instances.replace("{split}", "*")
            folder = (self.root / pattern).parent
            return sorted(folder.glob(Path(pattern).name)) if folder.is_dir() else []
        path = self.root / self.instances
        return [path] if path.is_file() else []

    def _instance_file(self, split: str | None) -> Path:
        assert self.instances is not None
        if "{split}" in self.instances:
            if split in (None, "."):
                raise DataError(f"{self.root}: instances {self.instances!r} needs a split name, got {split!r}")
            return self.root / self.instances.format(split=split)
        return self.root / self.instances

    def _coco_index(self, path: Path) -> dict[str, Any]:
        """The COCO JSON ``path`` indexed by image stem (read once).

        Raises:
            DataError: naming the file if it is missing, not JSON, or malformed.
        """
        if path in self._coco:
            return self._coco[path]
        if not path.is_file():
            raise DataError(f"instance annotation file not found: {path}")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise DataError(f"{path}: not a valid JSON file ({err})") from None
        if not isinstance(data, dict) or "images" not in data or "annotations" not in data:
            raise DataError(f"{path}: a COCO instance file needs 'images' and 'annotations'")
        cats = sorted(data.get("categories", []), key=lambda c: c["id"])
        if cats and [c["id"] for c in cats] != list(range(len(cats))):
            raise DataError(f"{path}: expected 0-based contiguous category ids (SAMRS), got {[c['id'] for c in cats]}")
        images: dict[Any, dict[str, Any]] = {}
        by_stem: dict[str, dict[str, Any]] = {}
        for img in data["images"]:
            stem = Path(str(img["file_name"])).stem
            entry = {"size": (int(img["height"]), int(img["width"])), "anns": []}
            images[img["id"]] = entry
            by_stem[stem] = entry
        for ann in data["annotations"]:
            entry = images.get(ann.get("image_id"))
            if entry is None:
                raise DataError(f"{path}: annotation {ann.get('id')} names unknown image {ann.get('image_id')}")
            entry["anns"].append(ann)
        names = [str(c["name"]) for c in cats]
        known = getattr(self, "classes", None)
        if known is not None and names and [n.lower() for n in names] != [n.lower() for n in known]:
            raise DataError(f"{path}: its categories {names} differ from the classes {known}")
        index = {"categories": names, "images": by_stem, "path": path}
        self._coco[path] = index
        return index

    def _resolve_classes(self, classes: Sequence[str] | None) -> list[str]:
        if classes is not None:
            return [str(c) for c in classes]  # checked against each instance JSON when it is read
        if "instance" in self.tasks:
            names = self._coco_index(self._instance_files()[0])["categories"]
            if names:
                return names
        manifest = self.root / "manifest.json"
        if manifest.is_file():
            try:
                return [str(c) for c in json.loads(manifest.read_text(encoding="utf-8"))["classes"]]
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                raise DataError(f"{manifest}: expected a JSON object with 'classes' ({err})") from None
        raise DataError(f"{self.root}: the class names are required (no instance JSON or manifest.json to read them)")

    def _split_ids(self, split: str | None) -> list[str] | None:
        """Ids of a named split, or None for every image."""
        if split in (None, "."):
            return None
        for path in (self.root / f"{split}.txt", self.root / "ImageSets" / f"{split}.txt", Path(str(split))):
            if path.is_file():
                return read_id_list(path)
        if "instance" in self.tasks and self.instances and "{split}" in self.instances:
            return list(self._coco_index(self._instance_file(split))["images"])
        raise DataError(f"{self.root}: split {split!r} not found (expected {self.root / f'{split}.txt'})")

    # -- records and labels ----------------------------------------------------------------

    def records(self, split: str | None = None) -> list[MultiTaskRecord]:
        """The images of ``split`` (see the class docstring), each with its label files checked.

        Raises:
            DataError: naming the file if an image of an id list, a gray PNG, a box file or an
                image's entry in the instance JSON is missing.
        """
        files = {p.stem: p for p in _image_files(self.image_dir)}
        ids = self._split_ids(split)
        if ids is None:
            ids = sorted(files)
        semantic = set(os.listdir(self.semantic_dir)) if "semantic" in self.tasks else set()
        rotated = set(os.listdir(self.rotated_dir)) if "rotated" in self.tasks else set()
        coco = self._coco_index(self._instance_file(split)) if "instance" in self.tasks else None
        out = []
        for rid in ids:
            if rid not in files:
                raise DataError(f"no image {rid} in {self.image_dir}")
            ann: dict[str, Any] = {}
            if "semantic" in self.tasks:
                if f"{rid}.png" not in semantic:
                    raise DataError(f"semantic mask not found: {self.semantic_dir / f'{rid}.png'}")
                ann["semantic"] = self.semantic_dir / f"{rid}.png"
            if coco is not None:
                if rid not in coco["images"]:
                    raise DataError(f"{coco['path']}: no entry for image {files[rid].name}")
                ann["instance"] = (coco["path"], rid)
            if "rotated" in self.tasks:
                name = next((f"{rid}{s}" for s in (".txt", ".xml") if f"{rid}{s}" in rotated), None)
                if name is None:
                    raise DataError(f"rotated box file not found: {self.rotated_dir / f'{rid}.txt'} (or .xml)")
                ann["rotated"] = self.rotated_dir / name
            out.append(MultiTaskRecord(files[rid], rid, ann))
        return out

    def load(self, record: MultiTaskRecord, size: tuple[int, int] | None = None) -> dict[str, np.ndarray]:
        """Labels of one image (see :meth:`MultiTaskSource.load`).

        Raises:
            DataError: naming the file of a missing or unreadable gray PNG (or one that is not
                single-channel), a malformed instance annotation or box line, or an unknown class.
        """
        out: dict[str, np.ndarray] = {}
        if "semantic" in self.tasks:
            out["semantic"] = read_samrs_gray(record.annotations["semantic"])
        if "instance" in self.tasks:
            path, stem = record.annotations["instance"]
            out.update(self._decode_instances(path, stem))
        if "rotated" in self.tasks:
            out.update(_read_box_file(Path(record.annotations["rotated"]), self.classes))
        return out

    def _decode_instances(self, path: Path, stem: str) -> dict[str, np.ndarray]:
        entry = self._coco_index(path)["images"][stem]
        h, w = entry["size"]
        masks, labels = [], []
        for ann in entry["anns"]:
            cat = ann.get("category_id")
            if not isinstance(cat, int) or not 0 <= cat < len(self.classes):
                raise DataError(
                    f"{path}: annotation {ann.get('id')} has category_id {cat!r}, expected 0..{len(self.classes) - 1}"
                )
            masks.append(_decode_segmentation(ann.get("segmentation"), h, w, f"{path}: annotation {ann.get('id')}"))
            labels.append(cat)
        return {
            "masks": np.stack(masks).astype(bool) if masks else np.zeros((0, h, w), dtype=bool),
            "labels": np.asarray(labels, dtype=np.int64),
        }


def read_samrs_gray(path: str | os.PathLike[str]) -> np.ndarray:
    """A SAMRS gray PNG as semantic labels ``(raw + 1) % 256``: 0 = background, ``k + 1`` = class ``k``.

    Args:
        path: ``gray/<id>.png``, uint8 single-channel, 255 = background, ``k`` = class ``k``.

    Returns:
        ``(H, W)`` uint8.

    Raises:
        DataError: naming the file if it is missing or not single-channel 8-bit.
        BadImageError: naming the file if it cannot be decoded (empty, truncated, not a PNG).
    """
    from PIL import Image

    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode not in ("L", "P"):
                raise DataError(f"{path}: expected a single-channel 8-bit PNG (SAMRS gray mask), got mode {im.mode}")
            raw = np.asarray(im, dtype=np.uint8)
    except FileNotFoundError:
        raise DataError(f"semantic mask not found: {path}") from None
    except OSError as err:  # a damaged file: the dataset skips the sample
        raise BadImageError(path, skip_reason(path, err), f"cannot read the semantic mask ({err})") from err
    return ((raw.astype(np.int16) + 1) % 256).astype(np.uint8)


def _decode_segmentation(seg: Any, h: int, w: int, where: str) -> np.ndarray:
    """``(h, w)`` bool mask of a COCO segmentation (RLE, uncompressed RLE or polygons)."""
    from pycocotools import mask as mask_utils

    try:
        if isinstance(seg, dict):
            size = [int(v) for v in seg.get("size", [])]
            if size != [h, w]:
                raise DataError(f"{where}: RLE size {size} differs from the image's [{h}, {w}]")
            counts = seg["counts"]
            rle = (
                mask_utils.frPyObjects(seg, h, w)
                if isinstance(counts, list)
                else {"size": size, "counts": counts.encode() if isinstance(counts, str) else counts}
            )
        elif isinstance(seg, list) and seg:
            rle = mask_utils.merge(mask_utils.frPyObjects(seg, h, w))
        else:
            raise DataError(f"{where}: expected an RLE dict or polygons in 'segmentation', got {type(seg).__name__}")
        return mask_utils.decode(rle).astype(bool)
    except DataError:
        raise
    except (KeyError, TypeError, ValueError) as err:
        raise DataError(f"{where}: malformed segmentation ({err})") from None


class ISAIDDOTASource(MultiTaskSource):
    """iSAID instance and semantic masks with the DOTA rotated boxes of the same images.

    iSAID (Waqas Zamir et al., "iSAID: A Large-scale Dataset for Instance Segmentation in Aerial
    Images", CVPRW 2019) annotates the DOTA v1.0 images (Xia et al., CVPR 2018) with instance
    masks of the same 15 classes; together with DOTA's oriented boxes every image has the
    three label kinds of a SAMRS subset. iSAID's class names are mapped to DOTA's, so the
    three kinds share one class list (default DOTA v1.0's 15, in DOTA's order).

    Layout::

        <isaid_root>/<split>/images/<id>.png                        # the image
        <isaid_root>/<split>/images/<id>_instance_id_RGB.png        # instance ids
        <isaid_root>/<split>/images/<id>_instance_color_RGB.png     # class colours
        <dota_root>/labelTxt/<id>.txt  (or <dota_root>/<split>/labelTxt/<id>.txt)

    Semantic labels: pixels of no instance are background (0), class ``k`` is ``k + 1``.

    Args:
        isaid_root: the iSAID folder.
        dota_root: the DOTA folder with the boxes (``labelTxt``).
        classes: the shared class names (DOTA spelling), default DOTA v1.0's.
        name: the subset's name.
        label_dir: name of DOTA's label folder.
        raster: how image files become bands.

    Raises:
        DataError: if a folder is missing or an iSAID class has no DOTA name in ``classes``.
    """

    tasks = ("semantic", "instance", "rotated")

    def __init__(
        self,
        isaid_root: str | os.PathLike[str],
        dota_root: str | os.PathLike[str],
        classes: Sequence[str] | None = None,
        name: str = "isaid_dota",
        label_dir: str = "labelTxt",
        raster: RasterRule = RasterRule(),  # noqa: B008 (frozen)
    ) -> None:
        from rsfm.data.detection.dota import DOTA_V1_CLASSES
        from rsfm.data.instance.isaid import ISAID_CLASSES, dota_class_name

        self.isaid_root, self.dota_root = Path(isaid_root), Path(dota_root)
        for p in (self.isaid_root, self.dota_root):
            if not p.is_dir():
                raise DataError(f"folder not found: {p}")
        self.name = str(name)
        self.label_dir = str(label_dir)
        self.raster = raster
        self.classes = [str(c) for c in (classes if classes is not None else DOTA_V1_CLASSES)]
        self.isaid_classes = list(ISAID_CLASSES)
        mapped = [dota_class_name(c) for c in ISAID_CLASSES]
        self._to_shared = _class_labels(mapped, self.classes, "iSAID classes mapped to DOTA names")
        # iSAID semantic value (class index, 255 = unlabeled) -> shared semantic label
        self._semantic_lut = np.zeros(256, dtype=np.uint8)
        self._semantic_lut[: len(mapped)] = self._to_shared + 1

    def _label_folder(self, split: str) -> Path:
        nested = self.dota_root / split / self.label_dir
        return nested if nested.is_dir() else self.dota_root / self.label_dir

    def records(self, split: str | None = "train") -> list[MultiTaskRecord]:
        """The images of ``<isaid_root>/<split>/images`` (the ``*_instance_*`` PNGs excluded).

        Raises:
            DataError: naming the folder or file if the split, an instance-id PNG or a DOTA
                label file is missing.
        """
        split = split or "train"
        folder = self.isaid_root / split / "images"
        labels = self._label_folder(split)
        out = []
        for path in _image_files(folder):
            if "_instance_" in path.stem:
                continue
            ids = folder / f"{path.stem}_instance_id_RGB.png"
            if not ids.is_file():
                raise DataError(f"iSAID instance mask not found: {ids}")
            txt = labels / f"{path.stem}.txt"
            if not txt.is_file():
                raise DataError(f"DOTA label file not found: {txt}")
            out.append(MultiTaskRecord(path, path.stem, {"instance": ids, "semantic": ids, "rotated": txt}))
        return out

    def load(self, record: MultiTaskRecord, size: tuple[int, int] | None = None) -> dict[str, np.ndarray]:
        """Labels of one image (see :meth:`MultiTaskSource.load`).

        Raises:
            DataError: naming the file of a missing or malformed iSAID mask or DOTA label file.
        """
        from rsfm.data.instance.isaid import read_isaid_annotations

        try:
            ann = read_isaid_annotations(record.image, self.isaid_classes)
        except DataError:
            raise
        except (FileNotFoundError, ValueError) as err:
            raise DataError(f"{record.annotations['instance']}: {err}") from None
        out = {
            "semantic": self._semantic_lut[np.asarray(ann["semantic"], dtype=np.uint8)],
            "masks": np.asarray(ann["masks"], dtype=bool),
            "labels": self._to_shared[np.asarray(ann["labels"], dtype=np.int64)],
        }
        out.update(_read_box_file(Path(record.annotations["rotated"]), self.classes))
        return out


class RotatedBoxesSource(MultiTaskSource):
    """A boxes-only subset (``tasks = ("rotated",)``) from any rsfm box layout.

    Rotated layouts (DOTA, DIOR-R, FAIR1M, HRSC2016, roLabelImg/HIT-UAV, YOLO-OBB) serve their
    polygons; horizontal layouts (DIOR, VOC, COCO...) their boxes as axis-aligned rectangles.
    In MTP such a subset trains only the rotated-detection branch.

    Args:
        layout: a layout name (:func:`find_layout`: ``hit_uav``, ``dota``, ``dior_r``...) or a
            datamodule class.
        root: the dataset folder.
        classes: class names in label order; None: the layout's default.
        name: the subset's name (default: the layout's short name).
        keep_difficult: serve objects flagged difficult as ordinary targets (MTP ignores no
            box); False drops them.
        raster: how image files become bands.
        **options: further arguments of the layout's datamodule (``version``, ``label_dir``...).

    Splits (:meth:`records`) are the layout's split names (None: its training split).

    Raises:
        ConfigError: on an unknown layout name.
        DataError: if the folder is missing.
    """

    tasks = ("rotated",)

    def __init__(
        self,
        layout: str | type,
        root: str | os.PathLike[str],
        classes: Sequence[str] | None = None,
        name: str | None = None,
        keep_difficult: bool = True,
        raster: RasterRule = RasterRule(),  # noqa: B008 (frozen)
        **options: Any,
    ) -> None:
        self.layout = find_layout(layout) if isinstance(layout, str) else layout
        self.root = Path(root)
        self.options = dict(options)
        self.keep_difficult = bool(keep_difficult)
        self.raster = raster
        self.name = str(name or _layout_key(self.layout.__name__).removesuffix("datamodule"))
        self._cache: dict[str | None, list[MultiTaskRecord]] = {}
        if classes is not None:
            self.classes = [str(c) for c in classes]
        else:
            self.classes = []
            self._read(None, None)

    def _read(self, split: str | None, classes: list[str] | None) -> list[MultiTaskRecord]:
        records, names, _ = layout_records(self.layout, self.root, split, classes, **self.options)
        if not self.classes:
            self.classes = list(names)
        out = []
        for r in records:
            out.append(MultiTaskRecord(Path(r.image), str(r.id), {"rotated": r}, dict(r.meta)))
        self._cache[split] = out
        return out

    def records(self, split: str | None = None) -> list[MultiTaskRecord]:
        """The images of the layout's split ``split`` (None: its training split).

        Raises:
            DataError: naming the split if it cannot be read.
        """
        if split in self._cache:
            return list(self._cache[split])
        return list(self._read(split, self.classes))

    def load(self, record: MultiTaskRecord, size: tuple[int, int] | None = None) -> dict[str, np.ndarray]:
        """The boxes of one image as polygons (see :meth:`MultiTaskSource.load`).

        Args:
            record: one of :meth:`records`.
            size: ``(H, W)`` of the image; required for layouts that store fractions (YOLO).
        """
        r = record.annotations["rotated"]
        if hasattr(r, "polygons"):
            if getattr(r, "normalized", False):
                if size is None:
                    raise DataError(f"{r.image}: its boxes are fractions of the image size, which is needed")
                r = r.in_pixels(int(size[1]), int(size[0]))
            polygons = np.asarray(r.polygons, dtype=np.float32).reshape(-1, 8)
        else:  # horizontal boxes: axis-aligned rectangles, corners clockwise on screen
            b = np.asarray(r.boxes, dtype=np.float32).reshape(-1, 4)
            polygons = b[:, [0, 1, 2, 1, 2, 3, 0, 3]]
        keep = np.ones(len(polygons), dtype=bool) if self.keep_difficult else ~np.asarray(r.difficult, dtype=bool)
        return {"polygons": polygons[keep], "obb_labels": np.asarray(r.labels, dtype=np.int64)[keep]}


# ----------------------------------------------------------------------------- dataset


class MultiTaskDataset(Dataset):
    """Serves the records of one split of a :class:`MultiTaskSource` as sample dicts (module docstring).

    Args:
        source: the subset.
        split: split name of the source (see its :meth:`~MultiTaskSource.records`).
        transform: applied to the sample while ``image`` is ``(C, H, W)`` uint8, ``mask``
            ``(H, W)`` uint8, ``masks`` ``(N, H, W)`` bool and the rotated boxes are
            ``polygons`` ``(M, 8)`` float32 pixels (e.g. :class:`MultiTaskTrainTransform`);
            it may return ``image`` as float in [0, 1]. None (evaluation): whole images.
        records: the records to serve instead of ``source.records(split)``.

    Attributes:
        records: the served :class:`MultiTaskRecord` s.
        tasks: ``source.tasks``; classes: ``source.classes``.

    Raises:
        DataError: from ``source.records`` (missing split or label files).
    """

    def __init__(
        self,
        source: MultiTaskSource,
        split: str | None = None,
        transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        records: Sequence[MultiTaskRecord] | None = None,
    ) -> None:
        self.source = source
        self.split = split
        self.transform = transform
        self.records = list(records) if records is not None else source.records(split)
        self.tasks = tuple(source.tasks)
        self.classes = list(source.classes)

    @property
    def keys(self) -> tuple[str, ...]:
        """The keys of this dataset's samples (besides ``skipped``), in :data:`MULTITASK_KEYS` order."""
        have = {"image", "id", *(k for t in self.tasks for k in TASK_KEYS[t])}
        return tuple(k for k in MULTITASK_KEYS if k in have)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        """Sample ``index`` (see the module docstring), or ``{'skipped': (path, reason), 'id': str}``.

        The image is read with the source's raster rule; when it cannot be read
        (:data:`~rsfm.data.skips.READ_ERRORS`: empty, truncated, not an image, vanished), or a
        label image cannot be decoded (a :class:`~rsfm.data.io.BadImageError` of the source),
        the skipped entry is returned and :func:`collate_multitask` lists it.

        Raises:
            UnsupportedImageError: naming the file, if it lacks a band of the raster rule.
            DataError: naming the file of a missing or malformed label, or one whose size is
                not the image's.
        """
        r = self.records[index]
        try:
            image = read_image(r.image, self.source.raster)
        except UnsupportedImageError:
            raise
        except READ_ERRORS as err:
            return {"skipped": (str(r.image), skip_reason(r.image, err)), "id": r.id}
        h, w = int(image.shape[-2]), int(image.shape[-1])
        try:
            labels = self.source.load(r, (h, w))
        except UnsupportedImageError:
            raise
        except BadImageError as err:  # a damaged label image (truncated PNG): skipped like the image
            return {"skipped": (str(err.path), err.reason), "id": r.id}
        sample: dict[str, Any] = {"image": image, "id": r.id}
        if "semantic" in self.tasks:
            sem = _label(labels, "semantic", r)
            _check_size(sem.shape, (h, w), r, "semantic")
            sample["mask"] = torch.from_numpy(np.ascontiguousarray(sem, dtype=np.uint8))
        if "instance" in self.tasks:
            masks = np.asarray(_label(labels, "masks", r), dtype=bool)
            _check_size(masks.shape[1:], (h, w), r, "instance")
            sample["masks"] = torch.from_numpy(np.ascontiguousarray(masks))
            sample["labels"] = torch.from_numpy(np.asarray(_label(labels, "labels", r), dtype=np.int64).reshape(-1))
        if "rotated" in self.tasks:
            polys = np.asarray(_label(labels, "polygons", r), dtype=np.float32).reshape(-1, 8)
            sample["polygons"] = torch.from_numpy(polys.copy())
            sample["obb_labels"] = torch.from_numpy(np.asarray(_label(labels, "obb_labels", r), dtype=np.int64))
        if self.transform is not None:
            sample = self.transform(sample)
        return self._finish(sample)

    def _finish(self, sample: dict[str, Any]) -> dict[str, Any]:
        image = sample["image"]
        sample["image"] = image.float().div_(255.0) if not image.is_floating_point() else image.float()
        if "mask" in sample:
            sample["mask"] = sample["mask"].to(torch.int64)
        if "masks" in sample:
            masks = sample["masks"].bool()
            boxes = mask_boxes(masks)
            keep = (boxes[:, 2] - boxes[:, 0] > 1e-5) & (boxes[:, 3] - boxes[:, 1] > 1e-5)
            sample["masks"] = masks[keep].to(torch.uint8)
            sample["boxes"] = boxes[keep]
            sample["labels"] = sample["labels"][keep]
        if "polygons" in sample:
            obbs = polygons_to_obbs(sample.pop("polygons"), "le90")
            keep = (obbs[:, 2] > 1e-5) & (obbs[:, 3] > 1e-5)
            sample["obbs"] = obbs[keep]
            sample["obb_labels"] = sample["obb_labels"][keep]
        return {key: sample[key] for key in self.keys}


def _label(labels: Mapping[str, Any], key: str, record: MultiTaskRecord) -> Any:
    if key not in labels:
        raise DataError(f"{record.image}: the source gave no {key!r} labels")
    return labels[key]


def _check_size(shape: Sequence[int], size: tuple[int, int], record: MultiTaskRecord, task: str) -> None:
    if tuple(int(v) for v in shape) != size:
        where = record.annotations.get(task, record.image)
        if isinstance(where, tuple):
            where = where[0]
        raise DataError(
            f"{where}: {task} labels of {record.id} are {tuple(shape)}, the image {record.image} is {size} (H, W)"
        )


def collate_multitask(samples: Sequence[Mapping[str, Any]]) -> dict[str, list[Any]]:
    """Collate multi-task samples key by key into lists, setting aside skipped items.

    Args:
        samples: items of one :class:`MultiTaskDataset` (``{'skipped': (path, reason), 'id'}``
            for an unreadable image).

    Returns:
        ``{key: [value of each readable sample]}`` for the keys of the samples, plus
        ``'skipped': list[(path, reason)]``. The batch size is ``len(batch['image'])``; when
        every item was skipped the batch is ``{'image': [], 'id': [], 'skipped': [...]}``.
    """
    return collate_lists(samples, ("image", "id"))


# --------------------------------------------------------------------------- transform


def _nearest(size_in: int, size_out: int) -> Tensor:
    """Source index of each output pixel of a nearest resize on pixel centres (torch's ``nearest-exact``).

    Output pixel ``i`` has its centre at ``(i + ½)·size_in/size_out`` input pixels; the source
    is the pixel holding it, in exact integer arithmetic (the rule of
    :func:`rsfm.data.segmentation.augment.random_resize`).
    """
    i = torch.arange(size_out, dtype=torch.int64)
    return ((2 * i + 1) * size_in).div(2 * size_out, rounding_mode="floor").clamp_(0, size_in - 1)


def _take(a: Tensor, rows: Tensor, cols: Tensor, transpose: bool) -> Tensor:
    """``a[..., rows, cols]`` of the (transposed when ``transpose``) last two axes of ``a``."""
    if transpose:
        return a[..., cols[:, None], rows[None, :]].transpose(-1, -2)
    return a[..., rows[:, None], cols[None, :]]


class MultiTaskTrainTransform:
    """MTP's training augmentation of a multi-task sample, with rsfm's fixes (MTP, Sec. III / IV-A).

    In order, every label kind following the image exactly:

    1. random flip with probability ``flip_prob`` (0.75), the direction uniform over
       ``flip_directions``: ``horizontal`` (mirror x), ``vertical`` (mirror y), ``diagonal``
       (both: a half turn, MMCV's ``RandomFlip`` and :func:`rsfm.ops.obb.obb_flip`) and, if
       listed, ``transpose`` (mirror across the main diagonal, ``(x, y) → (y, x)``). Boxes
       follow their corners, so angles are updated and le90-normalised.
    2. random resize: ``r ~ U[scale_range)`` and the image is rescaled, aspect ratio kept, so
       that its long side is ``int(r · crop_size)`` (MMCV's ``RandomResize(scale=(s, s),
       ratio_range, keep_ratio=True)``): bilinear (antialiased when shrinking) for the image,
       nearest on pixel centres for the semantic and instance masks, exact scaling of the box
       corners.
    3. random crop of ``crop_size × crop_size`` (the whole axis where the image is smaller),
       offsets uniform. Instance masks are cropped (their boxes are recomputed from them by
       :class:`MultiTaskDataset`, and instances left with an empty mask dropped); rotated boxes
       are translated, not clipped, and kept when their centre is inside the crop.
    4. photometric distortion (:func:`rsfm.data.segmentation.augment.photometric_distortion`,
       MMSegmentation's ``PhotoMetricDistortion``: brightness ±32/255, contrast and saturation
       ×[0.5, 1.5], hue ±36°) on the 8-bit image scaled to [0, 1], with the value ranges of
       8-bit images; the release ran it on float32 values, which makes the HSV steps grey out
       or flip hues of about 2 samples in 5 (defect D3).
    5. with ``pad``, padding to ``crop_size × crop_size`` at the bottom and right: image with 0,
       semantic mask with 255 (ignore), instance masks with 0. The release padded the image
       but not the semantic mask, misaligning labels of about 29% of the samples (defect D2).

    Every random number comes from ``generator`` (default: torch's global RNG, which
    :class:`~rsfm.data.samplers.KeyedDataset` seeds per sample), 4 draws plus the 9 of the
    distortion, whatever branches are taken. Unlike the release, a sample whose crop holds no
    object is served as it is (empty targets), not replaced by another image.

    Args:
        crop_size: crop side, pixels (MTP: 448; 224 for ViT-B).
        scale_range: ``(lo, hi)`` of ``r``, ``0 < lo <= hi``.
        flip_prob: probability of a flip.
        flip_directions: the directions a flip draws from (see step 1).
        photometric_distortion: apply step 4.
        pad: apply step 5.

    Raises:
        ValueError: naming the argument that is out of range.
    """

    def __init__(
        self,
        crop_size: int = 448,
        scale_range: Sequence[float] = (0.5, 2.0),
        flip_prob: float = 0.75,
        flip_directions: Sequence[str] = ("horizontal", "vertical", "diagonal"),
        photometric_distortion: bool = True,
        pad: bool = True,
    ) -> None:
        if isinstance(crop_size, bool) or int(crop_size) < 1:
            raise ValueError(f"crop_size must be a positive number of pixels, got {crop_size!r}")
        lo, hi = (float(v) for v in scale_range)
        if not (math.isfinite(lo) and math.isfinite(hi) and 0 < lo <= hi):
            raise ValueError(f"scale_range must be (lo, hi) with 0 < lo <= hi, got {tuple(scale_range)}")
        if not 0.0 <= float(flip_prob) <= 1.0:
            raise ValueError(f"flip_prob must be in [0, 1], got {flip_prob}")
        allowed = ("horizontal", "vertical", "diagonal", "transpose")
        dirs = tuple(str(d) for d in flip_directions)
        if any(d not in allowed for d in dirs) or (not dirs and flip_prob > 0):
            raise ValueError(f"flip_directions must be a non-empty subset of {allowed}, got {dirs}")
        self.crop_size = int(crop_size)
        self.scale_range = (lo, hi)
        self.flip_prob = float(flip_prob)
        self.flip_directions = dirs
        self.photometric_distortion = bool(photometric_distortion)
        self.pad = bool(pad)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(crop_size={self.crop_size}, scale_range={self.scale_range}, "
            f"flip_prob={self.flip_prob}, flip_directions={self.flip_directions}, "
            f"photometric_distortion={self.photometric_distortion}, pad={self.pad})"
        )

    def __call__(self, sample: dict[str, Any], generator: torch.Generator | None = None) -> dict[str, Any]:
        """Augment one sample (see the class docstring).

        Args:
            sample: ``image`` ``(C, H, W)`` uint8; optional ``mask`` ``(H, W)`` uint8,
                ``masks`` ``(N, H, W)`` bool with ``labels`` ``(N,)``, ``polygons`` ``(M, 8)``
                float32 pixels with ``obb_labels`` ``(M,)``; other keys pass through.
            generator: source of randomness (None: torch's global RNG).

        Returns:
            A new dict: ``image`` ``(C, S, S)`` float32 in [0, 1] (``S = crop_size`` with
            ``pad``, else the crop's size), the labels transformed alike (instances with an
            empty mask and boxes whose centre left the crop removed).
        """
        image = sample["image"]
        _, h0, w0 = image.shape
        draws = torch.rand(4, generator=generator, dtype=torch.float64).tolist()
        direction = None
        if draws[0] < self.flip_prob:
            k = min(int(draws[0] / self.flip_prob * len(self.flip_directions)), len(self.flip_directions) - 1)
            direction = self.flip_directions[k]
        transpose = direction == "transpose"
        h, w = (w0, h0) if transpose else (h0, w0)  # size after the flip

        lo, hi = self.scale_range
        ratio = lo + (hi - lo) * draws[1]
        target = int(self.crop_size * ratio)
        factor = target / max(h, w)
        nh, nw = max(1, int(h * factor + 0.5)), max(1, int(w * factor + 0.5))
        ch, cw = min(self.crop_size, nh), min(self.crop_size, nw)
        y0 = min(int(draws[2] * (nh - ch + 1)), nh - ch)
        x0 = min(int(draws[3] * (nw - cw + 1)), nw - cw)

        # source pixel (in the flipped frame) of each output pixel, then in the input frame
        rows = _nearest(h, nh)[y0 : y0 + ch]
        cols = _nearest(w, nw)[x0 : x0 + cw]
        if direction in ("horizontal", "diagonal"):
            cols = (w - 1) - cols
        if direction in ("vertical", "diagonal"):
            rows = (h - 1) - rows

        out = dict(sample)
        out["image"] = self._image(image, direction, (nh, nw), (y0, x0, ch, cw), generator)
        if "mask" in sample:
            out["mask"] = self._pad(_take(sample["mask"], rows, cols, transpose), IGNORE_INDEX)
        if "masks" in sample:
            out.update(self._instances(sample, rows, cols, transpose))
        if "polygons" in sample:
            out.update(self._boxes(sample, direction, (h0, w0), (nh / h, nw / w), (y0, x0, ch, cw)))
        return out

    def _pad(self, a: Tensor, value: float) -> Tensor:
        if not self.pad:
            return a
        ph, pw = self.crop_size - a.shape[-2], self.crop_size - a.shape[-1]
        if ph == 0 and pw == 0:
            return a
        out = a.new_full((*a.shape[:-2], self.crop_size, self.crop_size), value)
        out[..., : a.shape[-2], : a.shape[-1]] = a
        return out

    def _image(
        self,
        image: Tensor,
        direction: str | None,
        size: tuple[int, int],
        window: tuple[int, int, int, int],
        generator: torch.Generator | None,
    ) -> Tensor:
        import torch.nn.functional as F

        from rsfm.data.segmentation.augment import photometric_distortion

        if direction in ("horizontal", "diagonal"):
            image = image.flip(-1)
        if direction in ("vertical", "diagonal"):
            image = image.flip(-2)
        if direction == "transpose":
            image = image.transpose(-1, -2)
        x = image.float()
        if tuple(x.shape[-2:]) != size:
            shrink = size[0] < x.shape[-2] or size[1] < x.shape[-1]
            x = F.interpolate(x[None], size=size, mode="bilinear", align_corners=False, antialias=shrink)[0]
        y0, x0, ch, cw = window
        x = x[:, y0 : y0 + ch, x0 : x0 + cw].div(255.0).clamp_(0.0, 1.0)
        if self.photometric_distortion:
            x = photometric_distortion({"image": x}, generator=generator)["image"]
        else:  # keep the number of draws fixed
            torch.rand(9, generator=generator, dtype=torch.float64)
        return self._pad(x.contiguous(), 0.0)

    def _instances(self, sample: dict[str, Any], rows: Tensor, cols: Tensor, transpose: bool) -> dict[str, Tensor]:
        masks, labels = sample["masks"], sample["labels"]
        cropped = _take(masks, rows, cols, transpose)  # (N, ch, cw): cheaper than a pass over (N, H, W)
        keep = cropped.flatten(1).view(torch.uint8).amax(1) > 0 if len(cropped) else labels.new_zeros(0, dtype=bool)
        return {"masks": self._pad(cropped[keep], False), "labels": labels[keep]}

    def _boxes(
        self,
        sample: dict[str, Any],
        direction: str | None,
        size: tuple[int, int],
        scale: tuple[float, float],
        window: tuple[int, int, int, int],
    ) -> dict[str, Tensor]:
        polys = sample["polygons"].to(torch.float64).reshape(-1, 8)
        if direction == "transpose":
            polys = polys.reshape(-1, 4, 2).flip(-1).reshape(-1, 8)
        elif direction is not None:
            polys = obb_ops.poly_flip(polys, size, direction)
        sy, sx = scale
        y0, x0, ch, cw = window
        xy = polys.reshape(-1, 4, 2) * torch.tensor([sx, sy], dtype=torch.float64)
        xy = xy - torch.tensor([x0, y0], dtype=torch.float64)
        centre = xy.mean(1)
        keep = (centre[:, 0] >= 0) & (centre[:, 0] < cw) & (centre[:, 1] >= 0) & (centre[:, 1] < ch)
        return {"polygons": xy.reshape(-1, 8)[keep].to(torch.float32), "obb_labels": sample["obb_labels"][keep]}
