"""iSAID instance segmentation (Waqas Zamir et al., CVPR Workshops 2019) over DOTA's images.

Layout, per split folder (``train``, ``val``): ``images/<id>.png`` (the DOTA image) with two
companion PNGs of the same size in the same folder:

* ``<id>_instance_id_RGB.png``: the instance of every pixel, ``id = R + 256·G + 65536·B``
  (0 = background);
* ``<id>_instance_color_RGB.png``: the class of every pixel as a colour of
  :data:`ISAID_COLOURS` (``(0, 0, 0)`` = unlabeled).

:func:`read_isaid_annotations` turns one image's pair into instance masks, their classes, a
semantic map and the instance ids; :class:`ISAIDDataModule` serves the split folders as
instance-segmentation samples (:mod:`rsfm.data.instance.common`). iSAID's test labels are
not public, so the test split defaults to the validation folder.

.. versionadded:: 0.3
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from rsfm.data.detection.common import IMAGE_SUFFIXES
from rsfm.data.detection.dota import DOTA_V1_CLASSES
from rsfm.data.instance.common import InstanceRecord, InstanceSegmentationDataModule
from rsfm.data.io import BadImageError
from rsfm.data.skips import skip_reason
from rsfm.utils.errors import DataError
from rsfm.utils.registry import DATASETS

__all__ = [
    "ISAIDDataModule",
    "ISAIDRecord",
    "ISAID_CLASSES",
    "ISAID_COLOURS",
    "ISAID_IGNORE_INDEX",
    "decode_isaid",
    "dota_class_name",
    "isaid_companions",
    "isaid_records",
    "read_isaid_annotations",
]

#: iSAID's 15 class names, in the order (and spelling) of the dataset's colour table
ISAID_CLASSES: tuple[str, ...] = (
    "ship",
    "storage_tank",
    "baseball_diamond",
    "tennis_court",
    "basketball_court",
    "Ground_Track_Field",
    "Bridge",
    "Large_Vehicle",
    "Small_Vehicle",
    "Helicopter",
    "Swimming_pool",
    "Roundabout",
    "Soccer_ball_field",
    "plane",
    "Harbor",
)

#: ``(R, G, B)`` of each class of :data:`ISAID_CLASSES` in ``<id>_instance_color_RGB.png``
ISAID_COLOURS: tuple[tuple[int, int, int], ...] = (
    (0, 0, 63),
    (0, 63, 63),
    (0, 63, 0),
    (0, 63, 127),
    (0, 63, 191),
    (0, 63, 255),
    (0, 127, 63),
    (0, 127, 127),
    (0, 0, 127),
    (0, 0, 191),
    (0, 0, 255),
    (0, 191, 127),
    (0, 127, 191),
    (0, 127, 255),
    (0, 100, 155),
)

#: value of unlabeled pixels in the semantic map (SAMRS's convention)
ISAID_IGNORE_INDEX = 255

_UNLABELED = (0, 0, 0)
_ID_SUFFIX = "_instance_id_RGB.png"
_COLOUR_SUFFIX = "_instance_color_RGB.png"


def _normalise(name: str) -> str:
    return str(name).strip().lower().replace("_", "-").replace(" ", "-")


def dota_class_name(isaid_name: str) -> str:
    """DOTA v1.0's spelling of an iSAID class name: lower case, ``_`` → ``-``.

    ``"Large_Vehicle"`` → ``"large-vehicle"``, ``"plane"`` → ``"plane"``; a DOTA spelling is
    returned unchanged. iSAID's 15 classes are exactly DOTA v1.0's.

    Args:
        isaid_name: a name of :data:`ISAID_CLASSES` (any case).

    Returns:
        The name in :data:`rsfm.data.detection.DOTA_V1_CLASSES`.

    Raises:
        DataError: if the name is not one of the 15 classes.
    """
    name = _normalise(isaid_name)
    if name not in DOTA_V1_CLASSES:
        raise DataError(f"{isaid_name!r} is not an iSAID / DOTA v1.0 class; expected one of {list(ISAID_CLASSES)}")
    return name


def _class_map(classes: Sequence[str]) -> np.ndarray:
    """``(15,)`` int64: output label of each iSAID class (``-1``: not in ``classes``)."""
    isaid = {_normalise(c): i for i, c in enumerate(ISAID_CLASSES)}
    out = np.full(len(ISAID_CLASSES), -1, dtype=np.int64)
    for k, name in enumerate(classes):
        i = isaid.get(_normalise(name))
        if i is None:
            raise DataError(f"class {name!r} is not an iSAID class; expected names of {list(ISAID_CLASSES)}")
        if out[i] >= 0:
            raise DataError(f"class {name!r} appears twice in the class list {list(classes)}")
        out[i] = k
    return out


def isaid_companions(image_path: str | os.PathLike[str]) -> tuple[Path, Path]:
    """The instance-id and class-colour PNGs of the iSAID image ``<dir>/<id>.png``.

    Returns:
        ``(<dir>/<id>_instance_id_RGB.png, <dir>/<id>_instance_color_RGB.png)``.

    Raises:
        DataError: naming the missing file if either is absent.
    """
    image_path = Path(image_path)
    out = []
    for suffix in (_ID_SUFFIX, _COLOUR_SUFFIX):
        p = image_path.with_name(image_path.stem + suffix)
        if not p.is_file():
            raise DataError(f"{p}: iSAID annotation PNG not found (needed for the image {image_path.name})")
        out.append(p)
    return out[0], out[1]


def _open_error(path: Path, err: BaseException) -> BadImageError:
    """A :class:`~rsfm.data.io.BadImageError` naming ``path`` for a PIL failure."""
    return BadImageError(path, skip_reason(path, err), f"cannot decode the PNG ({err})")


def _read_rgb(path: Path, height: int, width: int, image_path: Path) -> np.ndarray:
    """``(H, W, 3)`` uint8 of a companion PNG; raises DataError on a size mismatch."""
    try:
        with Image.open(path) as img:
            img.load()
            size = img.size
            rgb = np.asarray(img.convert("RGB"))
    except (OSError, EOFError, SyntaxError, ValueError) as err:
        raise _open_error(path, err) from err
    if size != (width, height):
        raise DataError(
            f"{path}: size {size[0]}x{size[1]} (width x height) differs from the image "
            f"{image_path.name} ({width}x{height})"
        )
    return rgb


def _pack(rgb: np.ndarray) -> np.ndarray:
    return (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) | rgb[..., 2].astype(np.int64)


def decode_isaid(
    image_path: str | os.PathLike[str],
    height: int,
    width: int,
    classes: Sequence[str] = ISAID_CLASSES,
) -> dict[str, Any]:
    """Decode the companion PNGs of an iSAID image into an instance map (compact form).

    The instances are those of the id PNG (ids sorted increasingly); an instance's class is
    the majority class colour of its pixels (unlabeled pixels not counted). Instances of
    iSAID classes not in ``classes`` are left out (background in ``instance_map``, 255 in
    ``semantic``).

    Args:
        image_path: the image ``<dir>/<id>.png`` (not read here).
        height: the image's height ``H``, pixels.
        width: the image's width ``W``, pixels.
        classes: class names in label order: any of iSAID's 15, in iSAID's or DOTA's
            spelling (:func:`dota_class_name`), e.g. :data:`ISAID_CLASSES` or DOTA v1.0's order.

    Returns:
        ``instance_map`` ``(H, W)`` int32 (``i + 1`` on the pixels of instance ``i``, 0
        elsewhere), ``labels`` ``(N,)`` int64 in ``[0, K)``, ``ids`` ``(N,)`` int64 (the
        instance ids of the PNG), ``semantic`` ``(H, W)`` uint8 (class index, 255 unlabeled).

    Raises:
        DataError: naming the file if a companion PNG is missing or its size differs from
            ``(H, W)``, if the colour PNG holds a colour that is not in :data:`ISAID_COLOURS`
            (naming the colour), or if an instance has no class colour at all; naming the class
            if ``classes`` holds a name that is not iSAID's.
        BadImageError: naming the file if a companion PNG cannot be decoded (empty,
            truncated, not a PNG: a :data:`rsfm.data.skips.READ_ERRORS` case, which datasets skip).
    """
    image_path = Path(image_path)
    out_of = _class_map(classes)
    id_path, colour_path = isaid_companions(image_path)
    id_rgb = _read_rgb(id_path, height, width, image_path)
    colour = _pack(_read_rgb(colour_path, height, width, image_path))

    # class of every pixel: 0..14 iSAID class, 15 unlabeled
    k = len(ISAID_COLOURS)
    keys = np.array([_pack(np.array(c)) for c in (*ISAID_COLOURS, _UNLABELED)], dtype=np.int64)
    order = np.argsort(keys)
    pos = np.searchsorted(keys[order], colour).clip(max=len(keys) - 1)
    known = keys[order][pos] == colour
    if not known.all():
        bad, count = np.unique(colour[~known], return_counts=True)
        c = int(bad[np.argmax(count)])
        raise DataError(
            f"{colour_path}: colour {(c >> 16, (c >> 8) & 255, c & 255)} ({int(count.max())} pixels"
            f"{f', and {len(bad) - 1} other unknown colours' if len(bad) > 1 else ''}) is not an iSAID class "
            f"colour; expected one of {list(ISAID_COLOURS)} or (0, 0, 0) for unlabeled"
        )
    pixel_class = order[pos]  # index into keys: class, or k for unlabeled

    ids = _pack(id_rgb[..., ::-1])  # R + 256 G + 65536 B
    inside = ids != 0
    inside_ids = ids[inside]
    uniq = np.concatenate([[0], np.unique(inside_ids)])  # sorting the instance pixels only
    inverse = np.zeros(ids.shape, dtype=np.int64)  # 0 background, i + 1 instance i
    inverse[inside] = np.searchsorted(uniq, inside_ids)
    n = len(uniq) - 1
    counts = np.bincount((inverse * (k + 1) + pixel_class).ravel(), minlength=(n + 1) * (k + 1))
    counts = counts.reshape(n + 1, k + 1)[1:, :k]
    empty = counts.sum(1) == 0
    if empty.any():
        raise DataError(
            f"{id_path}: instance id {int(uniq[1:][empty][0])} has no class colour in {colour_path.name} "
            f"(all its pixels are unlabeled (0, 0, 0)); {int(empty.sum())} such instance(s)"
        )
    labels = out_of[counts.argmax(1)]
    keep = labels >= 0
    relabel = np.zeros(n + 1, dtype=np.int32)
    relabel[1:][keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    semantic_of = np.full(k + 1, ISAID_IGNORE_INDEX, dtype=np.uint8)
    semantic_of[:k][out_of >= 0] = out_of[out_of >= 0]
    return {
        "instance_map": relabel[inverse],
        "labels": labels[keep].astype(np.int64),
        "ids": uniq[1:][keep].astype(np.int64),
        "semantic": semantic_of[pixel_class],
    }


def read_isaid_annotations(
    image_path: str | os.PathLike[str], classes: Sequence[str] = ISAID_CLASSES
) -> dict[str, np.ndarray]:
    """The instances and the semantic map of one iSAID image from its companion PNGs.

    Reads ``<dir>/<id>_instance_id_RGB.png`` (instance id = R + 256·G + 65536·B, 0 =
    background) and ``<dir>/<id>_instance_color_RGB.png`` (class colours of
    :data:`ISAID_COLOURS`, ``(0, 0, 0)`` unlabeled) next to ``image_path``; only the image's
    header is read (for its size). An instance's class is its colour's class; an instance
    whose pixels carry several colours takes the majority (unlabeled pixels not counted).
    Instances of iSAID classes left out of ``classes`` are dropped (255 in ``semantic``).

    Memory: ``masks`` takes ``N·H·W`` bytes (a 4000 × 4000 iSAID scene with 1000 instances:
    16 GB); the datasets of :mod:`rsfm.data.instance` use the compact form of
    :func:`decode_isaid` and build masks only for the served (cropped) sample.

    Args:
        image_path: the image ``<dir>/<id>.png``.
        classes: class names in label order: any of iSAID's 15, in iSAID's or DOTA's spelling
            (default :data:`ISAID_CLASSES`; DOTA v1.0's order gives DOTA's labels).

    Returns:
        numpy arrays: ``masks`` ``(N, H, W)`` bool, ``labels`` ``(N,)`` int64 in ``[0, K)``
        (``K = len(classes)``), ``semantic`` ``(H, W)`` uint8 (class index in ``[0, K)``,
        255 unlabeled), ``ids`` ``(N,)`` int64 (instance ids, increasing).

    Raises:
        DataError: naming the file if a companion PNG is missing or its size differs from
            the image's, if the colour PNG holds an unknown colour (named), or if an instance
            has no class colour; naming the class if ``classes`` holds a non-iSAID name.
        BadImageError: naming the file if the image's header or a companion PNG cannot be
            decoded (a :data:`rsfm.data.skips.READ_ERRORS` case, which datasets skip).
    """
    image_path = Path(image_path)
    isaid_companions(image_path)  # a missing companion is reported before the image is opened
    try:
        with Image.open(image_path) as img:
            width, height = img.size
    except (OSError, EOFError, SyntaxError, ValueError) as err:
        raise _open_error(image_path, err) from err
    ann = decode_isaid(image_path, height, width, classes)
    n = len(ann["labels"])
    masks = ann["instance_map"][None] == np.arange(1, n + 1, dtype=np.int32)[:, None, None]
    return {"masks": masks, "labels": ann["labels"], "semantic": ann["semantic"], "ids": ann["ids"]}


# ------------------------------------------------------------------------------ records, datamodule


@dataclass
class ISAIDRecord(InstanceRecord):
    """An iSAID image; its instances are decoded from the companion PNGs when served.

    Attributes:
        classes: class names in label order (see :func:`decode_isaid`).
    """

    classes: tuple[str, ...] = ISAID_CLASSES

    def read_target(self, height: int, width: int) -> dict[str, np.ndarray]:
        """``instance_map`` ``(H, W)`` int32, ``labels`` ``(N,)`` int64, ``difficult`` ``(N,)`` bool (all False).

        Also ``semantic`` ``(H, W)`` uint8 and ``ids`` ``(N,)`` int64 (see :func:`decode_isaid`).

        Raises:
            DataError: see :func:`decode_isaid`.
            BadImageError: naming the companion PNG that cannot be decoded.
        """
        ann = decode_isaid(self.image, height, width, self.classes)
        ann["difficult"] = np.zeros(len(ann["labels"]), dtype=bool)
        return ann


def _is_companion(name: str) -> bool:
    return name.endswith((_ID_SUFFIX, _COLOUR_SUFFIX))


def isaid_records(
    folder: str | os.PathLike[str], classes: Sequence[str] = ISAID_CLASSES
) -> tuple[list[ISAIDRecord], list[str]]:
    """Records of an iSAID split folder: every image of ``folder/images`` with its companion PNGs.

    Images are the files of ``images/`` with an image suffix (``.png`` in iSAID) that are not
    themselves ``*_instance_id_RGB.png`` / ``*_instance_color_RGB.png``; their annotations are
    only checked for presence here (decoded when served).

    Args:
        folder: a split folder holding ``images/`` (e.g. ``<root>/train``).
        classes: class names in label order (iSAID's or DOTA's spelling; see :func:`decode_isaid`).

    Returns:
        The records sorted by image id, and the class names.

    Raises:
        FileNotFoundError: if ``folder/images`` is missing or holds no image.
        DataError: naming the file if an image lacks a companion PNG, or naming the class if
            ``classes`` holds a name that is not iSAID's.
    """
    images_dir = Path(folder) / "images"
    if not images_dir.is_dir():
        raise FileNotFoundError(f"iSAID image folder not found: {images_dir}")
    _class_map(classes)  # a wrong class name fails here, not in a loader worker
    images = sorted(
        p
        for p in images_dir.iterdir()
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not _is_companion(p.name)
    )
    if not images:
        raise FileNotFoundError(f"no image in {images_dir}")
    records = []
    for image in images:
        isaid_companions(image)
        records.append(ISAIDRecord(image=image, id=image.stem, classes=tuple(str(c) for c in classes)))
    return records, [str(c) for c in classes]


@DATASETS.register
class ISAIDDataModule(InstanceSegmentationDataModule):
    """iSAID instance segmentation (15 classes); splits are folders ``<root>/<split>/images``.

    Each split folder holds ``images/<id>.png`` with ``<id>_instance_id_RGB.png`` and
    ``<id>_instance_color_RGB.png`` beside it (see the module docstring). iSAID's test labels
    are not public, so ``test_split`` defaults to the validation folder, as papers report
    (the datamodule then warns that the test scores are not independent of checkpoint
    selection). Large iSAID scenes are trained by ``crop_size`` crops, ``crops_per_image``
    per scene and epoch.

    Args:
        root: the iSAID folder (holding ``train/`` and ``val/``).
        train_split: training split folder under ``root`` (``"train"``).
        val_split: validation split folder (``"val"``), or None: drawn from the training
            images by ``val_fraction``.
        test_split: test split folder; None: the validation folder (``val_split``), or drawn
            from the training images by ``test_fraction`` when ``val_split`` is None too.
        classes: class names in label order; None: :data:`ISAID_CLASSES`. Any subset or
            order of the 15, in iSAID's or DOTA's spelling (DOTA v1.0's list gives DOTA's
            label order); instances of classes left out are dropped.
        **kwargs: :class:`~rsfm.data.instance.common.InstanceSegmentationDataModule` options
            (``scale_range``, ``min_area``, crops, fractions, loaders).

    Raises:
        DataError: if ``root`` is not a folder, a split folder or an image's annotation PNG is
            missing, or a class name is not iSAID's.
    """

    def __init__(
        self,
        root: str,
        train_split: str = "train",
        val_split: str | None = "val",
        test_split: str | None = None,
        classes: list[str] | None = None,
        **kwargs: Any,
    ) -> None:
        if test_split is None:
            test_split = val_split
        super().__init__(
            root,
            train_split=train_split,
            val_split=val_split,
            test_split=test_split,
            classes=list(classes) if classes is not None else list(ISAID_CLASSES),
            **kwargs,
        )

    def load_split(self, name: str, classes: list[str] | None) -> tuple[list[ISAIDRecord], list[str]]:
        """Records of the split folder ``root/<name>``."""
        return isaid_records(self.root / name, classes if classes is not None else ISAID_CLASSES)
