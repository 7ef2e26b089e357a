"""What every rotated (oriented) detection layout shares: records, augmentation, dataset, datamodule.

Every layout (:mod:`~rsfm.data.rotated.dota`, ``dior_r``, ``fair1m``, ``hrsc``,
``rolabelimg``, ``yolo_obb``) is read into :class:`RotatedRecord` lists (one per image, the
objects as 4-corner polygons) and served by :class:`RotatedDetectionDataset` as sample dicts::

    {'image': (C, H, W) float32 in [0, 1], 'obbs': (N, 5) float32 (cx, cy, w, h, theta),
     'polygons': (N, 8) float32, 'labels': (N,) int64 in [0, K), 'difficult': (N,) bool, 'id': str}

Coordinates are pixels with continuous edges: ``(0, 0)`` is the top-left corner of the image
and ``(W, H)`` its bottom-right one. ``theta`` is in radians, in the datamodule's
``angle_version`` (``le90`` by default: ``w`` is the long side, ``theta`` in ``[-pi/2, pi/2)``;
``le135`` and ``oc`` as in mmrotate); see :mod:`rsfm.ops.obb`. A box is the minimum-area
rectangle of its polygon (:func:`rsfm.ops.obb.poly2obb`), so rectangular annotations are kept
exactly and other quadrilaterals (DOTA's) become their tightest rectangle. ``polygons`` are the
corners ``x1 y1 ... x4 y4`` (pixels) the boxes were made from: in validation and test samples
the annotated quadrilaterals themselves, which the DOTA evaluation scores against
(:mod:`rsfm.metrics.dota`); in training samples the same corners moved with the image (and,
for objects cut by the crop, the clipped rectangle).

Annotations stay polygons until the sample is served: random crops clip them to the window
with shapely (an object cut by the border is kept when the visible share of its area is at
least ``min_visibility``, the minimum-area rectangle of the visible part becoming its
polygon), flips and 90° rotations move their corners with the image, and only then are they
turned into boxes in the requested angle convention.

Large images are trained on random crops (:class:`RotatedTrainTransform`) and evaluated
whole (the detection head tiles them), so validation and test samples are full images.

Splits, fractions, the disjointness checks, bands and normalisation are those of
:class:`~rsfm.data.detection.common.DetectionDataModule`, which
:class:`RotatedDetectionDataModule` extends. An image that cannot be read (empty, truncated,
not an image) never stops a run: the dataset returns ``{'skipped': (path, reason), 'id': str}``
and :func:`collate_rotated` leaves it out of the batch, listing it under ``batch['skipped']``.

.. versionadded:: 0.3
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from rsfm.data.detection.common import (
    IMAGE_SUFFIXES,
    DetectionDataModule,
    DetectionDataset,
    TrainTransform,
    class_indices,
    collate_lists,
    crop_window,
)
from rsfm.data.io import RasterRule, UnsupportedImageError, read_image
from rsfm.data.skips import READ_ERRORS, skip_reason
from rsfm.ops import obb as obb_ops
from rsfm.utils.errors import DataError

__all__ = [
    "ROTATED_BATCH_KEYS",
    "ImageIndex",
    "RotatedDetectionDataModule",
    "RotatedDetectionDataset",
    "RotatedRecord",
    "RotatedTrainTransform",
    "clip_polygons",
    "collate_rotated",
    "image_set_ids",
    "make_rotated_record",
    "min_area_rectangle",
    "obbs_to_polygons",
    "obbs_to_polygons_per_file",
    "polygon_areas",
    "polygons_to_obbs",
    "random_flip_rotate",
    "random_rotated_crop",
    "read_id_list",
    "read_xml",
    "records_from_annotations",
    "xml_flag",
    "xml_numbers",
]

#: keys of a rotated detection batch (:func:`collate_rotated`), besides ``skipped``
ROTATED_BATCH_KEYS = ("image", "obbs", "polygons", "labels", "difficult", "id")


# ------------------------------------------------------------------------------ records


@dataclass
class RotatedRecord:
    """Oriented annotation of one image.

    Attributes:
        image: image file.
        polygons: ``(N, 8)`` float32 corners ``x1 y1 x2 y2 x3 y3 x4 y4``, pixels (fractions
            of the width and height instead when ``normalized``).
        labels: ``(N,)`` int64 class indices in ``[0, K)``.
        difficult: ``(N,)`` bool, objects the training drops and the evaluation ignores.
        id: image identifier (the file stem in every layout here).
        meta: format-specific extras: ``gsd`` (metres per pixel), ``imagesource``, ``size``
            (``(width, height)`` from the annotation), ``num_degenerate`` (zero-area objects
            dropped), ``window``/``rate``/``source_id`` for patches of a split scene.
        normalized: polygons are in units of the image width (x) and height (y), as YOLO
            labels; they are scaled to pixels when the image is read (:meth:`in_pixels`).
    """

    image: Path
    polygons: np.ndarray
    labels: np.ndarray
    difficult: np.ndarray
    id: str
    meta: dict[str, Any] = field(default_factory=dict)
    normalized: bool = False

    def __len__(self) -> int:
        return len(self.labels)

    def in_pixels(self, width: int, height: int) -> RotatedRecord:
        """The record with pixel polygons (itself when they already are).

        Args:
            width: image width, pixels.
            height: image height, pixels.
        """
        if not self.normalized:
            return self
        scale = np.tile(np.asarray([width, height], dtype=np.float32), 4)
        return replace(self, polygons=(self.polygons * scale).astype(np.float32), normalized=False)


def polygon_areas(polygons: np.ndarray | Sequence[Sequence[float]]) -> np.ndarray:
    """Shoelace areas of 4-corner polygons.

    Args:
        polygons: ``(N, 8)`` (or ``(N, 4, 2)``) corners, pixels.

    Returns:
        ``(N,)`` float64 areas, pixels² (a self-intersecting corner order gives the
        difference of its two lobes, as the shoelace formula does).
    """
    xy = np.asarray(polygons, dtype=np.float64).reshape(-1, 4, 2)
    x, y = xy[..., 0], xy[..., 1]
    return 0.5 * np.abs((x * np.roll(y, -1, axis=1) - y * np.roll(x, -1, axis=1)).sum(axis=1))


def make_rotated_record(
    image: Path,
    polygons: Any,
    labels: Any,
    difficult: Any,
    rid: str,
    meta: dict[str, Any] | None = None,
    normalized: bool = False,
) -> RotatedRecord:
    """A :class:`RotatedRecord` from list or array annotations; zero-area polygons are dropped.

    Args:
        image: image file.
        polygons: ``(N, 8)`` or ``(N, 4, 2)`` corners, pixels (or fractions, ``normalized``).
        labels: ``(N,)`` class indices.
        difficult: ``(N,)`` flags.
        rid: image id.
        meta: extras; ``meta['num_degenerate']`` is increased by the polygons dropped here.
        normalized: polygons are fractions of the image size (see :class:`RotatedRecord`).

    Returns:
        The record, with polygons ``(M, 8)`` float32 of positive area.

    Raises:
        DataError: naming ``image`` if the three arrays do not have one entry per object or a
            coordinate is not finite.
    """
    polys = np.asarray(polygons, dtype=np.float32).reshape(-1, 8)
    labs = np.asarray(labels, dtype=np.int64).reshape(-1)
    diff = np.asarray(difficult, dtype=bool).reshape(-1)
    if not len(polys) == len(labs) == len(diff):
        raise DataError(
            f"{image}: {len(polys)} polygons, {len(labs)} labels and {len(diff)} difficult flags; "
            "expected one of each per object"
        )
    if not np.isfinite(polys).all():
        raise DataError(f"{image} ({rid}): non-finite polygon coordinates")
    meta = dict(meta or {})
    keep = polygon_areas(polys) > 0
    meta["num_degenerate"] = int(meta.get("num_degenerate", 0)) + int((~keep).sum())
    return RotatedRecord(Path(image), polys[keep], labs[keep], diff[keep], str(rid), meta, bool(normalized))


def records_from_annotations(
    parsed: Sequence[tuple[Path, Mapping[str, Any]]],
    classes: Sequence[str] | None,
    images: ImageIndex,
    meta_keys: Sequence[str] = ("size",),
) -> tuple[list[RotatedRecord], list[str]]:
    """Records of parsed annotation files, one per file, the image found by the file's stem.

    Args:
        parsed: ``(annotation file, annotation)`` pairs; an annotation holds ``names`` (N
            class names), ``polygons`` ``(N, 8)`` pixels, ``difficult`` ``(N,)`` and the
            ``meta_keys`` it has.
        classes: class names in index order (exact, else case-insensitive match); None: the
            sorted names found.
        images: where the images are (:class:`ImageIndex`).
        meta_keys: annotation entries copied into each record's ``meta``.

    Returns:
        The records in the order of ``parsed`` and the class names.

    Raises:
        FileNotFoundError: naming the stem if an image is missing.
        DataError: naming the annotation file of a class outside ``classes``.
    """
    if classes is None:
        classes = sorted({n for _, a in parsed for n in a["names"]})
    classes = list(classes)
    records = []
    for path, ann in parsed:
        labels = class_indices(ann["names"], classes, path)
        meta = {k: ann[k] for k in meta_keys if k in ann}
        rid = Path(path).stem
        records.append(make_rotated_record(images.find(rid), ann["polygons"], labels, ann["difficult"], rid, meta))
    return records, classes


def xml_flag(element: Any, tag: str, where: str) -> bool:
    """A VOC-style 0/1 flag (``<difficult>``): True when the number in ``tag`` is >= 1 (absent: False).

    Raises:
        DataError: naming ``where`` if the text is not a number.
    """
    text = element.findtext(tag)
    try:
        return int(float(text or 0)) >= 1
    except ValueError:
        raise DataError(f"{where}: expected 0 or 1 in <{tag}>, got {text!r}") from None


# ------------------------------------------------------------------------- file helpers


def read_id_list(path: str | os.PathLike[str]) -> list[str]:
    """Ids of an image-set file: the first field of each non-blank line (LF or CRLF ends).

    Raises:
        FileNotFoundError: naming the file if it does not exist.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image set not found: {path}")
    return [line.split()[0] for line in path.read_text().splitlines() if line.strip()]


def image_set_ids(root: Path, name: str, annotations: Path, suffix: str = ".xml") -> list[str]:
    """Ids of the split ``name`` of a VOC-like layout.

    ``"."`` means every annotation file (``annotations/*<suffix>``, sorted by stem); any other
    name is an id list ``ImageSets/Main/<name>.txt`` or ``ImageSets/<name>.txt`` under ``root``
    (the first that exists).

    Raises:
        FileNotFoundError: naming the files tried, or the annotation folder.
    """
    if name == ".":
        if not annotations.is_dir():
            raise FileNotFoundError(f"annotation folder not found: {annotations}")
        return sorted(p.stem for p in annotations.glob(f"*{suffix}"))
    candidates = [root / "ImageSets" / "Main" / f"{name}.txt", root / "ImageSets" / f"{name}.txt"]
    for path in candidates:
        if path.is_file():
            return read_id_list(path)
    raise FileNotFoundError(f"image set {name!r} not found: {candidates[0]} or {candidates[1]}")


def read_xml(path: str | os.PathLike[str]) -> Any:
    """The root element of an XML annotation file.

    Raises:
        FileNotFoundError: naming the file if it does not exist.
        DataError: naming the file if it is not well-formed XML.
    """
    import xml.etree.ElementTree as ET

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"annotation not found: {path}")
    try:
        return ET.parse(path).getroot()
    except ET.ParseError as err:
        raise DataError(f"{path}: not a valid XML file ({err})") from None


def xml_numbers(element: Any, tags: Sequence[str], where: str) -> list[float]:
    """The numbers in the child elements ``tags`` of ``element``.

    Raises:
        DataError: naming ``where`` (file and object) and the tag that is missing or not a
            finite number.
    """
    values = []
    for tag in tags:
        text = element.findtext(tag) if element is not None else None
        try:
            value = float((text or "").strip())
        except ValueError:
            raise DataError(f"{where}: expected a number in <{tag}>, got {text!r}") from None
        if not math.isfinite(value):
            raise DataError(f"{where}: expected a finite number in <{tag}>, got {text!r}")
        values.append(value)
    return values


class ImageIndex:
    """The image files of folders by stem, listed once (one directory read instead of a stat per file and suffix).

    Args:
        folders: folders searched in order (a stem found in an earlier one wins; missing
            folders hold nothing).
        suffixes: image suffixes, preferred in this order for one stem (case-insensitive).
    """

    def __init__(self, folders: Path | Iterable[Path], suffixes: Sequence[str] = IMAGE_SUFFIXES) -> None:
        self.folders = [folders] if isinstance(folders, Path) else list(folders)
        self.suffixes = tuple(s.lower() for s in suffixes)
        self._files: dict[str, Path] = {}
        rank: dict[str, tuple[int, int]] = {}
        for f, folder in enumerate(self.folders):
            if not folder.is_dir():
                continue
            for entry in os.scandir(folder):
                stem, suffix = os.path.splitext(entry.name)
                if suffix.lower() in self.suffixes:
                    key = (f, self.suffixes.index(suffix.lower()))
                    if stem not in rank or key < rank[stem]:
                        rank[stem] = key
                        self._files[stem] = folder / entry.name

    def find(self, stem: str) -> Path:
        """The image of ``stem``.

        Raises:
            FileNotFoundError: naming the stem and the folders searched.
        """
        try:
            return self._files[stem]
        except KeyError:
            names = ",".join(self.suffixes)
            raise FileNotFoundError(f"no image {stem}{{{names}}} in {', '.join(map(str, self.folders))}") from None


# ---------------------------------------------------------------------- box conversions


def polygons_to_obbs(polygons: Tensor | np.ndarray, version: str = "le90") -> Tensor:
    """Minimum-area rectangles of 4-corner polygons as oriented boxes.

    Args:
        polygons: ``(N, 8)`` corners, pixels.
        version: angle convention (:data:`rsfm.ops.obb.ANGLE_VERSIONS`).

    Returns:
        ``(N, 5)`` float32 ``(cx, cy, w, h, theta)``: pixels, radians.
    """
    polys = torch.as_tensor(np.asarray(polygons) if not isinstance(polygons, Tensor) else polygons)
    polys = polys.to(torch.float64).reshape(-1, 8)  # float64: near-ties between two rectangles resolve stably
    if not len(polys):
        return torch.zeros((0, 5), dtype=torch.float32)
    return obb_ops.poly2obb(polys, version=version).to(torch.float32)


def obbs_to_polygons(obbs: Any) -> np.ndarray:
    """Corners of oriented boxes.

    Args:
        obbs: ``(N, 5)`` ``(cx, cy, w, h, theta)``: pixels, radians (any angle convention).

    Returns:
        ``(N, 8)`` float32 corners, pixels.
    """
    boxes = torch.as_tensor(np.asarray(obbs, dtype=np.float64)).reshape(-1, 5)
    if not len(boxes):
        return np.zeros((0, 8), dtype=np.float32)
    return obb_ops.obb2poly(boxes).reshape(-1, 8).numpy().astype(np.float32)


def obbs_to_polygons_per_file(obbs: Sequence[Any]) -> list[np.ndarray]:
    """:func:`obbs_to_polygons` of the boxes of many files in one tensor operation.

    Args:
        obbs: per file, ``(N_i, 5)`` ``(cx, cy, w, h, theta)`` (pixels, radians).

    Returns:
        Per file, ``(N_i, 8)`` float32 corners, pixels.
    """
    rows = [np.asarray(o, dtype=np.float32).reshape(-1, 5) for o in obbs]
    if not rows:
        return []
    flat = obbs_to_polygons(np.concatenate(rows))
    return np.split(flat, np.cumsum([len(r) for r in rows])[:-1])


def clip_polygons(polygons: np.ndarray, window: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Clip 4-corner polygons to an axis-aligned window.

    An object wholly inside keeps its corners; one wholly outside gets visibility 0; one cut
    by the border is intersected with the window (shapely, on the convex hull of its corners,
    so that a self-intersecting corner order cannot fail) and replaced by the minimum-area
    rectangle of the visible part.

    Args:
        polygons: ``(N, 8)`` corners, pixels.
        window: ``(x0, y0, x1, y1)``, pixels.

    Returns:
        ``(clipped (N, 8) float32`` in the same (image) coordinates, ``visible (N,) float64)``:
        the share of each object's (hull) area inside the window, in [0, 1].
    """
    x0, y0, x1, y1 = (float(v) for v in window)
    p = np.asarray(polygons, dtype=np.float64).reshape(-1, 4, 2)
    out = p.reshape(-1, 8).astype(np.float32)
    lo, hi = p.min(axis=1), p.max(axis=1)
    inside = (lo[:, 0] >= x0) & (lo[:, 1] >= y0) & (hi[:, 0] <= x1) & (hi[:, 1] <= y1)
    outside = (hi[:, 0] <= x0) | (hi[:, 1] <= y0) | (lo[:, 0] >= x1) | (lo[:, 1] >= y1)
    visible = inside.astype(np.float64)
    cut = np.flatnonzero(~inside & ~outside)
    if len(cut):
        import shapely

        hulls = shapely.convex_hull(shapely.multipoints(p[cut]))
        parts = shapely.intersection(hulls, shapely.box(x0, y0, x1, y1))
        hull_area, part_area = shapely.area(hulls), shapely.area(parts)
        for i, area, whole, part in zip(cut, part_area, hull_area, parts, strict=True):
            if whole <= 0 or area <= 0 or shapely.get_type_id(part) != 3:
                continue  # nothing visible, or only a line or point of it
            visible[i] = min(1.0, area / whole)
            out[i] = min_area_rectangle(shapely.get_coordinates(part)[:-1]).reshape(8).astype(np.float32)
    return out, visible


def min_area_rectangle(points: np.ndarray) -> np.ndarray:
    """The minimum-area rectangle enclosing a convex polygon.

    Such a rectangle has a side along an edge of the polygon (Freeman & Shapira, CACM 1975),
    so each edge direction is tried. Used for clipped objects, which have 3 to 8 corners
    (:func:`rsfm.ops.obb.poly2obb` takes quadrilaterals).

    Args:
        points: ``(M, 2)`` corners of a convex polygon in order, pixels, M >= 3, not closed.

    Returns:
        ``(4, 2)`` float64 corners of the rectangle, in order around it, pixels.
    """
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    origin = pts.mean(axis=0)
    pts = pts - origin
    edges = np.roll(pts, -1, axis=0) - pts
    lengths = np.hypot(edges[:, 0], edges[:, 1])
    u = edges[lengths > 0] / lengths[lengths > 0, None]
    v = np.stack([-u[:, 1], u[:, 0]], axis=1)
    pu, pv = pts @ u.T, pts @ v.T  # (M, directions)
    area = (pu.max(0) - pu.min(0)) * (pv.max(0) - pv.min(0))
    k = int(np.argmin(area))
    (lo_u, hi_u), (lo_v, hi_v) = (pu[:, k].min(), pu[:, k].max()), (pv[:, k].min(), pv[:, k].max())
    corners = [(lo_u, lo_v), (hi_u, lo_v), (hi_u, hi_v), (lo_u, hi_v)]
    return np.asarray([origin + a * u[k] + b * v[k] for a, b in corners])


# --------------------------------------------------------------------------- augmentation


def _select(sample: dict[str, Any], keep: Tensor) -> dict[str, Any]:
    out = dict(sample)
    for key in ("polygons", "labels", "difficult"):
        out[key] = sample[key][keep]
    return out


def random_rotated_crop(
    sample: dict[str, Any],
    size: int,
    min_visibility: float = 0.5,
    object_prob: float = 0.5,
    generator: torch.Generator | None = None,
) -> dict[str, Any]:
    """Random ``size × size`` crop of a sample; polygons are clipped (:func:`clip_polygons`) and shifted.

    With probability ``object_prob`` the window is drawn among those that hold a randomly
    chosen non-difficult object's axis-aligned hull whole (so that crops of large, sparse
    scenes are not mostly empty); otherwise uniformly. An image smaller than ``size`` keeps
    its size on that axis. An object cut by the border is kept when at least
    ``min_visibility`` of its area is inside, as the minimum-area rectangle of that part.

    Args:
        sample: ``image`` ``(C, H, W)`` (any dtype), ``polygons`` ``(N, 8)`` float32 pixels,
            ``labels`` ``(N,)``, ``difficult`` ``(N,)`` bool; other keys are passed through.
        size: crop side, pixels.
        min_visibility: share of its area a cut object must keep, in [0, 1].
        object_prob: probability of an object-centred window.
        generator: random generator (default: torch's global one).

    Returns:
        The cropped sample, polygons in the crop's pixel coordinates.
    """
    image, polys = sample["image"], sample["polygons"]
    _, h, w = image.shape
    corners = polys.reshape(-1, 4, 2)
    hulls = torch.cat([corners.min(1).values, corners.max(1).values], dim=1)
    x0, y0, cw, ch = crop_window(hulls, sample["difficult"], size, h, w, object_prob, generator)
    clipped, visible = clip_polygons(polys.numpy(), (x0, y0, x0 + cw, y0 + ch))
    keep = torch.from_numpy((visible > 0) & (visible >= min_visibility))
    out = _select(sample, keep)
    out["image"] = image[:, y0 : y0 + ch, x0 : x0 + cw]
    shift = torch.tensor([x0, y0] * 4, dtype=torch.float32)
    out["polygons"] = torch.from_numpy(clipped)[keep] - shift
    return out


def random_flip_rotate(
    sample: dict[str, Any],
    hflip: bool = True,
    vflip: bool = True,
    rotate90: bool = True,
    generator: torch.Generator | None = None,
) -> dict[str, Any]:
    """Random flips (each with probability 0.5) and a random multiple of 90° rotation of image and polygons.

    The rotation turns the image by ``k × 90°`` as ``torch.rot90(image, k, dims=(-2, -1))``
    with ``k`` uniform in {0, 1, 2, 3}; polygons follow through :func:`rsfm.ops.obb.poly_flip`
    and :func:`rsfm.ops.obb.poly_rot90`.

    Args:
        sample: ``image`` ``(C, H, W)`` and ``polygons`` ``(N, 8)`` float32 pixels.
        hflip: allow left-right flips.
        vflip: allow top-bottom flips.
        rotate90: allow 90° rotations.
        generator: random generator (default: torch's global one).

    Returns:
        The transformed sample (``image`` ``(C, W, H)`` after an odd ``k``).
    """
    out = dict(sample)
    draws = torch.rand(2, generator=generator)
    k = int(torch.randint(4, (1,), generator=generator)) if rotate90 else 0
    for allowed, draw, direction, dim in ((hflip, draws[0], "horizontal", -1), (vflip, draws[1], "vertical", -2)):
        if allowed and draw < 0.5:
            size = tuple(out["image"].shape[-2:])
            out["polygons"] = obb_ops.poly_flip(out["polygons"], size, direction)
            out["image"] = out["image"].flip(dim)
    if k:
        size = tuple(out["image"].shape[-2:])
        out["polygons"] = obb_ops.poly_rot90(out["polygons"], size, k)
        out["image"] = torch.rot90(out["image"], k, dims=(-2, -1))
    return out


class RotatedTrainTransform(TrainTransform):
    """Training augmentation: drop difficult objects, rotation-aware random crop, flips, 90° rotations.

    Args:
        crop_size: crop side, pixels.
        min_visibility: share of its area a cut object must keep (see :func:`random_rotated_crop`).
        object_prob: probability of an object-centred crop.
        hflip: random left-right flips.
        vflip: random top-bottom flips.
        keep_difficult: keep difficult objects as ordinary targets.
        rotate90: random rotations by multiples of 90°.

    Raises:
        ValueError: naming ``data.crop_size`` if it is not positive.
    """

    def __init__(
        self,
        crop_size: int,
        min_visibility: float = 0.5,
        object_prob: float = 0.5,
        hflip: bool = True,
        vflip: bool = True,
        keep_difficult: bool = False,
        rotate90: bool = True,
    ) -> None:
        super().__init__(crop_size, min_visibility, object_prob, hflip, vflip, keep_difficult)
        self.rotate90 = bool(rotate90)

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        """Augment one sample (``image`` of any dtype, ``polygons`` ``(N, 8)`` pixels)."""
        if not self.keep_difficult:
            sample = _select(sample, ~sample["difficult"])
        sample = random_rotated_crop(sample, self.crop_size, self.min_visibility, self.object_prob)
        return random_flip_rotate(sample, self.hflip, self.vflip, self.rotate90)


# ------------------------------------------------------------------------------ dataset


class RotatedDetectionDataset(DetectionDataset):
    """Serves :class:`RotatedRecord` s as sample dicts (see the module docstring); unreadable images are skipped.

    Args:
        records: the images and their polygons.
        classes: class names in index order.
        transform: applied while the image is still uint8 and the objects are ``polygons``
            ``(N, 8)`` pixels (crop first, so a large scene is not converted to float whole).
        raster: how image files become bands (:class:`~rsfm.data.io.RasterRule`).
        angle_version: angle convention of the served ``obbs`` (:data:`rsfm.ops.obb.ANGLE_VERSIONS`).
    """

    def __init__(
        self,
        records: Sequence[RotatedRecord],
        classes: Sequence[str],
        transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        raster: RasterRule = RasterRule(),  # noqa: B008 (frozen)
        angle_version: str = "le90",
    ) -> None:
        super().__init__(records, classes, transform, raster)  # type: ignore[arg-type]
        self.angle_version = angle_version

    def __getitem__(self, index: int) -> dict[str, Any]:
        """Sample ``index``: ``image`` (C, H, W) float32 in [0, 1], ``obbs`` (N, 5), ``polygons`` (N, 8), labels...

        The keys are :data:`ROTATED_BATCH_KEYS` (see the module docstring); ``obbs`` are in
        :attr:`angle_version`, both boxes and polygons in pixels of the served image.

        When the image cannot be read (:data:`~rsfm.data.skips.READ_ERRORS`: empty, truncated,
        not an image, vanished), ``{'skipped': (path, reason), 'id': str}`` instead;
        :func:`collate_rotated` leaves it out of the batch and lists it.

        Raises:
            UnsupportedImageError: naming the file, if it lacks a band of ``data.bands``.
        """
        r: RotatedRecord = self.records[index]  # type: ignore[assignment]
        try:
            image = read_image(r.image, self.raster)
        except UnsupportedImageError:
            raise  # bands the file lacks (data.bands): a setting to fix, not a damaged file
        except READ_ERRORS as err:
            return {"skipped": (str(r.image), skip_reason(r.image, err)), "id": r.id}
        r = r.in_pixels(int(image.shape[-1]), int(image.shape[-2]))
        sample = {
            "image": image,
            "polygons": torch.from_numpy(r.polygons.copy()),
            "labels": torch.from_numpy(r.labels.copy()),
            "difficult": torch.from_numpy(r.difficult.copy()),
            "id": r.id,
        }
        if self.transform is not None:
            sample = self.transform(sample)
        sample["polygons"] = sample["polygons"].to(torch.float32)
        sample["obbs"] = polygons_to_obbs(sample["polygons"], self.angle_version)
        sample["image"] = sample["image"].float().div_(255.0)
        return {key: sample[key] for key in ROTATED_BATCH_KEYS}


def collate_rotated(samples: Sequence[Mapping[str, Any]]) -> dict[str, list[Any]]:
    """Collate rotated detection samples key by key into lists, setting aside skipped items.

    Args:
        samples: dataset items (``{'skipped': (path, reason), ...}`` for an unreadable image).

    Returns:
        ``{key: [value of each readable sample]}`` for :data:`ROTATED_BATCH_KEYS`, plus
        ``'skipped': list[(path, reason)]``. The batch size is ``len(batch['image'])``, 0 when
        every item was skipped (every key then holds an empty list).
    """
    return collate_lists(samples, ROTATED_BATCH_KEYS)


# --------------------------------------------------------------------------- datamodule


class RotatedDetectionDataModule(DetectionDataModule):
    """Loaders of an oriented-box layout: rotation-aware random crops for training, whole images for evaluation.

    Subclasses implement :meth:`load_split` (the :class:`RotatedRecord` s of one named split
    and the class names) and may set :attr:`default_train_split`. Training samples are
    ``crops_per_image`` random crops of every training image per epoch
    (:class:`RotatedTrainTransform`); validation and test samples are whole images. Batches
    are dicts of lists (:func:`collate_rotated`) with the keys of :data:`ROTATED_BATCH_KEYS`.

    Args:
        root: dataset folder.
        angle_version: angle convention of the served boxes: ``le90`` (default), ``le135`` or
            ``oc`` (:data:`rsfm.ops.obb.ANGLE_VERSIONS`).
        rotate90: random rotations by multiples of 90° in training (with ``hflip`` and
            ``vflip``, all eight symmetries of the square).
        **kwargs: the options of :class:`~rsfm.data.detection.common.DetectionDataModule`:
            ``train_split``, ``val_split``, ``test_split``, ``classes``, ``val_fraction``,
            ``test_fraction``, ``split_seed``, ``crop_size``, ``crops_per_image``,
            ``min_visibility`` (share of its area an object cut by the crop must keep),
            ``object_crop_prob``, ``hflip``, ``vflip``, ``keep_difficult``, ``batch_size``,
            ``eval_batch_size``, ``num_workers``, ``bands``, ``raster_scale``, ``mean``,
            ``std``, ``seed``, ``pin_memory``.

    Raises:
        DataError: if ``root`` is not a folder or a split cannot be read.
        ValueError: naming ``data.angle_version`` if it is not a known convention, or the
            option of :class:`~rsfm.data.detection.common.DetectionDataModule` that is out of range.
    """

    sample_keys = ("image", "obbs", "labels")

    def __init__(self, root: str, angle_version: str = "le90", rotate90: bool = True, **kwargs: Any) -> None:
        super().__init__(root, **kwargs)
        if angle_version not in obb_ops.ANGLE_VERSIONS:
            raise ValueError(f"data.angle_version must be one of {list(obb_ops.ANGLE_VERSIONS)}, got {angle_version!r}")
        self.angle_version = str(angle_version)
        t = self.transform
        self.transform = RotatedTrainTransform(
            t.crop_size, t.min_visibility, t.object_prob, t.hflip, t.vflip, t.keep_difficult, rotate90
        )

    def collate(self) -> Callable[[list[Any]], Any]:
        """Dicts of lists (images differ in size, boxes in count), skipped items listed."""
        return collate_rotated

    def make_dataset(self, records: Sequence[Any], transform: Callable[[dict[str, Any]], dict[str, Any]] | None) -> Any:
        """A :class:`RotatedDetectionDataset` serving boxes in :attr:`angle_version`."""
        return RotatedDetectionDataset(records, self.class_names, transform, self.raster, self.angle_version)  # type: ignore[arg-type]
