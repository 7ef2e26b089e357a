"""Cut large scenes into overlapping patches, as the DOTA devkit's ``ImgSplit`` does.

DOTA's images reach 20,000 pixels a side; detectors train and predict on patches of
``patch_size`` pixels overlapping by ``gap`` (DOTA's usual 1024 / 200), at one or more
scales (``rates``; 0.5, 1.0 and 1.5 for multi-scale training). This module writes such
patches as a DOTA layout that :class:`~rsfm.data.rotated.dota.DOTARotatedDataModule` reads,
with the devkit's file names, so detections on a patch map back to the scene::

    <dst>/images/<id>__<rate>__<x0>___<y0>.png     # e.g. P0003__1__0___312.png, P0003__0.5__0___0.png
    <dst>/labelTxt/<id>__<rate>__<x0>___<y0>.txt   # when the source has labels

``(x0, y0)`` is the patch's top-left corner in the scene resized by ``rate``: a point ``p``
of the patch is ``(p + (x0, y0)) / rate`` in the scene (:func:`patch_to_source`).

Windows (:func:`patch_windows`) step by ``patch_size - gap``; the last window of a row or
column is shifted back to end at the image border, so every window but those of an image
smaller than a patch is ``patch_size`` wide and the windows cover the image.

Objects follow the devkit's rule (``ImgSplit.savepatches``), with ``iof`` the share of an
object's area inside the window (intersection over its own area):

* ``iof == 1``: kept with its own corners and difficulty;
* ``iof_threshold <= iof < 1``: kept, clipped to the window, with its own difficulty;
* ``0 < iof < iof_threshold``: kept, clipped, and marked difficult (written with the
  devkit's difficulty ``2``), or dropped with ``keep_below=False``;
* ``iof == 0``: not in the patch.

Two departures from the devkit: a clipped object becomes the minimum-area rectangle of its
visible part (the devkit keeps the clipped polygon when it has 4 corners, merges the two
closest corners of a 5-corner one and drops objects whose clipped part has more corners), and
coordinates are written as floats to 0.1 pixel rather than truncated to integers and clamped
to ``[1, patch_size]``. The devkit also keeps ``iof == threshold`` below the threshold
(``half_iou > thresh``); here it is kept as an ordinary object. Patches are not padded to
``patch_size`` unless ``pad`` (the devkit pads with black).

Run as a command: ``rsfm split SRC DST --patch-size 1024 --gap 200 --rates 0.5 1.0`` (or
``python -m rsfm.data.rotated.split ...``). After predicting the patches, detections go back
to their scenes with :func:`merge_patch_detections` (tensors) or :func:`merge_task1` (DOTA
Task1 files; ``rsfm merge SRC DST``).

.. versionadded:: 0.3
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from rsfm.data.detection.common import IMAGE_SUFFIXES
from rsfm.data.io import RasterRule, UnsupportedImageError, read_image
from rsfm.data.rotated.common import RotatedRecord, clip_polygons
from rsfm.data.rotated.dota import dota_obb_records
from rsfm.data.skips import READ_ERRORS, skip_reason
from rsfm.utils.errors import ConfigError, DataError

__all__ = [
    "add_split_arguments",
    "main",
    "merge_patch_detections",
    "merge_task1",
    "parse_patch_name",
    "patch_name",
    "patch_to_source",
    "patch_windows",
    "run_split",
    "split_dataset",
    "split_image",
    "split_record",
]

_PATCH_NAME = re.compile(r"^(?P<id>.+)__(?P<rate>\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)__(?P<x>-?\d+)___(?P<y>-?\d+)$")


def _check_patching(patch_size: int, gap: int) -> None:
    if patch_size < 1:
        raise ValueError(f"patch_size must be >= 1 pixel, got {patch_size}")
    if not 0 <= gap < patch_size:
        raise ValueError(f"gap must be in [0, patch_size={patch_size}) pixels, got {gap}")


def _starts(length: int, patch: int, step: int) -> list[int]:
    if length <= patch:
        return [0]
    return [*range(0, length - patch, step), length - patch]


def patch_windows(height: int, width: int, patch_size: int = 1024, gap: int = 200) -> list[tuple[int, int, int, int]]:
    """Overlapping windows that cover an image, in row-major order.

    Windows start every ``patch_size - gap`` pixels along each axis; the last one is shifted
    back to end at the border. An axis shorter than ``patch_size`` gets one window spanning it.

    Args:
        height: image height, pixels.
        width: image width, pixels.
        patch_size: window side, pixels.
        gap: overlap of neighbouring windows, pixels, in ``[0, patch_size)``.

    Returns:
        ``(x0, y0, x1, y1)`` integer windows, pixels (``x1 - x0 == min(patch_size, width)``).

    Raises:
        ValueError: if ``patch_size < 1``, ``gap`` is outside ``[0, patch_size)`` or the image is empty.
    """
    _check_patching(patch_size, gap)
    if height < 1 or width < 1:
        raise ValueError(f"image size must be positive, got {height} x {width} pixels")
    step = patch_size - gap
    return [
        (x0, y0, min(x0 + patch_size, width), min(y0 + patch_size, height))
        for y0 in _starts(height, patch_size, step)
        for x0 in _starts(width, patch_size, step)
    ]


def _rate_text(rate: float) -> str:
    return f"{float(rate):g}"


def patch_name(image_id: str, rate: float, x0: int, y0: int) -> str:
    """The DOTA devkit's patch name ``<id>__<rate>__<x0>___<y0>`` (rate ``1`` for 1.0, ``0.5``...)."""
    return f"{image_id}__{_rate_text(rate)}__{int(x0)}___{int(y0)}"


def parse_patch_name(name: str | os.PathLike[str]) -> tuple[str, float, int, int]:
    """Scene id, rate and window corner of a patch name (a file name or path is accepted).

    Args:
        name: ``<id>__<rate>__<x0>___<y0>``, optionally with an image or ``.txt`` suffix.

    Returns:
        ``(image_id, rate, x0, y0)``; ``x0, y0`` in pixels of the scene resized by ``rate``.

    Raises:
        DataError: naming ``name`` if it does not follow that pattern.
    """
    text = Path(name).name
    for suffix in (*IMAGE_SUFFIXES, ".txt"):
        if text.lower().endswith(suffix):
            text = text[: -len(suffix)]
            break
    m = _PATCH_NAME.match(text)
    if m is None:
        raise DataError(f"{name}: not a patch name '<id>__<rate>__<x0>___<y0>' (as written by the DOTA devkit)")
    return m["id"], float(m["rate"]), int(m["x"]), int(m["y"])


def patch_to_source(boxes: Tensor, x0: float, y0: float, rate: float = 1.0) -> Tensor:
    """Boxes or polygons of a patch in the coordinates of the whole scene.

    Args:
        boxes: ``(N, 5)`` oriented boxes ``(cx, cy, w, h, theta)`` or ``(N, 8)`` polygons,
            pixels of the patch (theta in radians, unchanged).
        x0: patch corner in the scene resized by ``rate`` (:func:`parse_patch_name`), pixels.
        y0: likewise.
        rate: the scale the scene was resized by before cutting.

    Returns:
        The same shape and dtype, pixels of the original scene.

    Raises:
        ValueError: if ``boxes`` is not ``(N, 5)`` or ``(N, 8)`` or ``rate`` is not positive.
    """
    if boxes.ndim != 2 or boxes.shape[1] not in (5, 8):
        raise ValueError(f"boxes must be (N, 5) oriented boxes or (N, 8) polygons, got {tuple(boxes.shape)}")
    if rate <= 0:
        raise ValueError(f"rate must be positive, got {rate}")
    out = boxes.clone()
    if boxes.shape[1] == 8:
        out[:, 0::2] = (boxes[:, 0::2] + x0) / rate
        out[:, 1::2] = (boxes[:, 1::2] + y0) / rate
    else:
        out[:, 0] = (boxes[:, 0] + x0) / rate
        out[:, 1] = (boxes[:, 1] + y0) / rate
        out[:, 2:4] = boxes[:, 2:4] / rate
    return out


def split_record(
    record: RotatedRecord,
    windows: Sequence[Sequence[int]],
    iof_threshold: float = 0.7,
    rate: float = 1.0,
    keep_below: bool = True,
) -> list[RotatedRecord]:
    """The annotations of each window of a scene (the devkit's rule, see the module docstring).

    Args:
        record: the scene's annotation, pixel polygons of the original scene.
        windows: ``(x0, y0, x1, y1)`` in the scene resized by ``rate``, pixels
            (:func:`patch_windows`).
        iof_threshold: share of its area an object cut by the window must keep to stay an
            ordinary object, in [0, 1].
        rate: scale of the scene the windows were cut from.
        keep_below: keep objects below the threshold, marked difficult (the devkit's
            difficulty 2); False: drop them.

    Returns:
        One record per window, in order: ``id`` the patch name, ``image`` the scene's file,
        ``polygons`` ``(M, 8)`` float32 in the patch's pixels, ``labels``, ``difficult`` and
        ``meta`` with ``window``, ``rate``, ``source_id``, ``below_threshold`` (``(M,)`` bool:
        objects kept below the threshold), ``gsd`` (the scene's divided by ``rate``) and
        ``imagesource``.

    Raises:
        ValueError: if the record's polygons are normalised (call
            :meth:`~rsfm.data.rotated.common.RotatedRecord.in_pixels` first), ``rate`` is not
            positive or ``iof_threshold`` is outside [0, 1].
    """
    if record.normalized:
        raise ValueError(f"{record.image}: polygons are normalised; call record.in_pixels(width, height) first")
    if rate <= 0:
        raise ValueError(f"rate must be positive, got {rate}")
    if not 0.0 <= iof_threshold <= 1.0:
        raise ValueError(f"iof_threshold must be in [0, 1], got {iof_threshold}")
    polys = record.polygons.astype(np.float32) * np.float32(rate)
    gsd = record.meta.get("gsd")
    out = []
    for window in windows:
        x0, y0 = int(window[0]), int(window[1])
        clipped, iof = clip_polygons(polys, window)
        below = (iof > 0) & (iof < iof_threshold)
        keep = (iof > 0) & (keep_below | ~below)
        meta = {
            "window": tuple(int(v) for v in window),
            "rate": float(rate),
            "source_id": record.id,
            "below_threshold": below[keep],
            "gsd": gsd / rate if gsd else gsd,
            "imagesource": record.meta.get("imagesource"),
        }
        out.append(
            RotatedRecord(
                image=record.image,
                polygons=(clipped[keep] - np.asarray([x0, y0] * 4, np.float32)).astype(np.float32),
                labels=record.labels[keep],
                difficult=record.difficult[keep] | below[keep],
                id=patch_name(record.id, rate, x0, y0),
                meta=meta,
            )
        )
    return out


def _resize(image: Tensor, rate: float) -> Tensor:
    """``(C, H, W)`` uint8 resized by ``rate`` (bicubic, antialiased when shrinking)."""
    if rate == 1:
        return image
    h, w = image.shape[-2:]
    size = (max(1, round(h * rate)), max(1, round(w * rate)))
    out = torch.nn.functional.interpolate(
        image[None].float(), size=size, mode="bicubic", align_corners=False, antialias=rate < 1
    )[0]
    return out.round_().clamp_(0, 255).to(torch.uint8)


def _save_png(patch: Tensor, path: Path, compress_level: int) -> None:
    from PIL import Image

    c = patch.shape[0]
    if c not in (1, 3, 4):
        raise ValueError(f"{path}: a PNG holds 1, 3 or 4 bands, the image has {c} (choose 3 with bands)")
    array = patch.permute(1, 2, 0).numpy()
    Image.fromarray(array[..., 0] if c == 1 else array).save(path, compress_level=compress_level)


def _label_lines(patch: RotatedRecord, classes: Sequence[str]) -> list[str]:
    lines = []
    if patch.meta.get("imagesource"):
        lines.append(f"imagesource:{patch.meta['imagesource']}")
    if patch.meta.get("gsd"):
        lines.append(f"gsd:{patch.meta['gsd']:.12g}")
    below = patch.meta.get("below_threshold", np.zeros(len(patch), bool))
    for poly, label, diff, low in zip(patch.polygons, patch.labels, patch.difficult, below, strict=True):
        coords = " ".join(f"{v:.1f}" for v in poly)
        lines.append(f"{coords} {classes[int(label)]} {2 if low else int(diff)}")
    return lines


def split_image(
    image: str | os.PathLike[str],
    dst_root: str | os.PathLike[str],
    record: RotatedRecord | None = None,
    classes: Sequence[str] = (),
    patch_size: int = 1024,
    gap: int = 200,
    rates: Sequence[float] = (1.0,),
    iof_threshold: float = 0.7,
    keep_below: bool = True,
    keep_empty: bool = True,
    pad: bool = False,
    raster: RasterRule = RasterRule(),  # noqa: B008 (frozen)
    compress_level: int = 1,
) -> list[tuple[str, int | None]]:
    """Cut one scene (and its annotation) into patches under ``dst_root`` (see the module docstring).

    Args:
        image: the scene's image file.
        dst_root: output folder; ``images/`` (and ``labelTxt/`` with a record) are created.
        record: the scene's annotation (pixel or normalised polygons), or None: images only.
        classes: class names of the record's labels (written into the label files).
        patch_size: patch side, pixels.
        gap: overlap of neighbouring patches, pixels.
        rates: scales the scene is resized by before cutting (1.0: as is).
        iof_threshold: see :func:`split_record`.
        keep_below: see :func:`split_record`.
        keep_empty: also write patches without objects (ignored without a record).
        pad: pad patches smaller than ``patch_size`` (scenes smaller than a patch) with zeros
            at the bottom and right.
        raster: how the image file becomes bands (:class:`~rsfm.data.io.RasterRule`).
        compress_level: PNG compression, 0-9 (lossless at every level; 1 writes fast).

    Returns:
        The patch names written (``<id>__<rate>__<x0>___<y0>``), in order, with the number of
        objects in each label file (None without a record).

    Raises:
        BadImageError: if the scene cannot be read (see :func:`~rsfm.data.io.read_image`).
        ValueError: on a bad ``patch_size``/``gap``/``rates``, or an image whose band count a
            PNG cannot hold.
    """
    _check_patching(patch_size, gap)
    if not rates or min(rates) <= 0:
        raise ValueError(f"rates must be positive scales, got {list(rates)}")
    image = Path(image)
    dst = Path(dst_root)
    (dst / "images").mkdir(parents=True, exist_ok=True)
    if record is not None:
        (dst / "labelTxt").mkdir(parents=True, exist_ok=True)
    pixels = read_image(image, raster)
    if record is not None:
        record = record.in_pixels(int(pixels.shape[-1]), int(pixels.shape[-2]))
    rid = record.id if record is not None else image.stem
    written: list[tuple[str, int | None]] = []
    for rate in rates:
        scaled = _resize(pixels, float(rate))
        windows = patch_windows(int(scaled.shape[-2]), int(scaled.shape[-1]), patch_size, gap)
        if record is not None:
            patches = split_record(record, windows, iof_threshold, float(rate), keep_below)
        else:
            patches = [None] * len(windows)
        for (x0, y0, x1, y1), patch in zip(windows, patches, strict=True):
            if patch is not None and not len(patch) and not keep_empty:
                continue
            name = patch_name(rid, rate, x0, y0)
            tile = scaled[:, y0:y1, x0:x1]
            if pad and (tile.shape[-2] < patch_size or tile.shape[-1] < patch_size):
                padded = torch.zeros((tile.shape[0], patch_size, patch_size), dtype=tile.dtype)
                padded[:, : tile.shape[-2], : tile.shape[-1]] = tile
                tile = padded
            _save_png(tile.contiguous(), dst / "images" / f"{name}.png", compress_level)
            if patch is not None:
                (dst / "labelTxt" / f"{name}.txt").write_text(
                    "".join(f"{line}\n" for line in _label_lines(patch, classes))
                )
            written.append((name, len(patch) if patch is not None else None))
    return written


def split_dataset(
    src_root: str | os.PathLike[str],
    dst_root: str | os.PathLike[str],
    patch_size: int = 1024,
    gap: int = 200,
    rates: Sequence[float] = (1.0,),
    iof_threshold: float = 0.7,
    keep_below: bool = True,
    keep_empty: bool = True,
    pad: bool = False,
    label_dir: str = "labelTxt",
    raster: RasterRule = RasterRule(),  # noqa: B008 (frozen)
) -> dict[str, Any]:
    """Cut every scene of a DOTA folder into patches, written as a DOTA folder.

    With ``<src>/<label_dir>/`` the scenes are those labelled there (each with its image in
    ``images/``); without it every image of ``images/`` is cut, without labels (DOTA's test
    set). A scene that cannot be read is skipped and counted, never fatal.

    Args:
        src_root: folder holding ``images/`` and optionally the label folder.
        dst_root: output folder (``images/``, ``labelTxt/``).
        patch_size: patch side, pixels.
        gap: overlap of neighbouring patches, pixels.
        rates: scales the scenes are resized by before cutting.
        iof_threshold: see :func:`split_record`.
        keep_below: see :func:`split_record`.
        keep_empty: also write patches without objects.
        pad: pad patches of scenes smaller than ``patch_size`` to ``patch_size``.
        label_dir: label folder name under ``src_root``.
        raster: how image files become bands.

    Returns:
        ``{'scenes': int, 'patches': int, 'objects': int (object lines written),
        'num_degenerate': int (zero-area source polygons dropped), 'skipped': [(path, reason)],
        'unlabelled': [path]}`` (``unlabelled``: images of ``images/`` without a label file,
        not cut, when the label folder exists).

    Raises:
        FileNotFoundError: if ``src_root/images`` does not exist or a labelled scene has no image.
        ValueError: naming the file on a malformed label; on bad ``patch_size``/``gap``/``rates``.
    """
    src, dst = Path(src_root), Path(dst_root)
    if not (src / "images").is_dir():
        raise FileNotFoundError(f"image folder not found: {src / 'images'}")
    _check_patching(patch_size, gap)
    images = [p for p in sorted((src / "images").iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES]
    unlabelled: list[str] = []
    if (src / label_dir).is_dir():
        records, classes = dota_obb_records(src, None, label_dir)
        scenes: list[tuple[Path, RotatedRecord | None]] = [(r.image, r) for r in records]
        labelled = {Path(r.image).resolve() for r in records}
        unlabelled = [str(p) for p in images if p.resolve() not in labelled]
    else:
        classes = []
        scenes = [(p, None) for p in images]
    summary: dict[str, Any] = {
        "scenes": 0,
        "patches": 0,
        "objects": 0,
        "num_degenerate": 0,
        "skipped": [],
        "unlabelled": unlabelled,
    }
    for image, record in scenes:
        try:
            names = split_image(
                image, dst, record, classes, patch_size, gap, rates, iof_threshold, keep_below, keep_empty, pad, raster
            )
        except UnsupportedImageError:
            raise
        except READ_ERRORS as err:
            summary["skipped"].append((str(image), skip_reason(image, err)))
            continue
        summary["scenes"] += 1
        summary["patches"] += len(names)
        summary["objects"] += sum(n or 0 for _, n in names)
        if record is not None:
            summary["num_degenerate"] += int(record.meta.get("num_degenerate", 0))
    return summary


def merge_patch_detections(
    detections: Mapping[str, Mapping[str, Tensor]], iou_threshold: float = 0.1
) -> dict[str, dict[str, Tensor]]:
    """Detections of patches as detections of their scenes: mapped back, then class-wise rotated NMS.

    The last step of the DOTA workflow (split, predict on patches, merge): an object in the
    overlap of two patches is detected in both, and NMS over the scene keeps the best of them.
    The default threshold, 0.1, is the one mmrotate's DOTA merge uses (oriented objects of one
    class rarely overlap).

    Args:
        detections: patch name (:func:`patch_name`, a file stem or path) → ``obbs`` ``(N, 5)``
            (pixels of the patch, radians), ``scores`` ``(N,)``, ``labels`` ``(N,)`` int64.
        iou_threshold: rotated IoU above which the lower-scoring of two same-class boxes goes.

    Returns:
        Scene id → ``obbs`` ``(M, 5)`` in pixels of the scene, ``scores``, ``labels``, by
        decreasing score.

    Raises:
        DataError: if a key is not a patch name.
    """
    from rsfm.ops.rotated_nms import batched_nms_rotated

    scenes: dict[str, list[tuple[Tensor, Tensor, Tensor]]] = {}
    for name, det in detections.items():
        image_id, rate, x0, y0 = parse_patch_name(name)
        obbs = torch.as_tensor(det["obbs"]).reshape(-1, 5)
        part = (
            patch_to_source(obbs, x0, y0, rate),
            torch.as_tensor(det["scores"]).reshape(-1),
            torch.as_tensor(det["labels"]).reshape(-1),
        )
        scenes.setdefault(image_id, []).append(part)
    out = {}
    for image_id, parts in scenes.items():
        obbs, scores, labels = (torch.cat([p[k] for p in parts]) for k in range(3))
        keep = batched_nms_rotated(obbs, scores, labels, iou_threshold)
        out[image_id] = {"obbs": obbs[keep], "scores": scores[keep], "labels": labels[keep]}
    return out


def merge_task1(src: str | os.PathLike[str], dst: str | os.PathLike[str], iou_threshold: float = 0.1) -> dict[str, int]:
    """Merge DOTA Task1 files of patches into Task1 files of their scenes (the devkit's ``ResultMerge``).

    Reads every ``Task1_<class>.txt`` of ``src`` (lines ``<patch name> score x1 y1 ... x4 y4``,
    as ``rsfm predict`` writes for patches cut by :func:`split_dataset`), maps the polygons
    back to their scenes and writes ``Task1_<class>.txt`` to ``dst`` with scene ids, after
    rotated NMS per scene and class (:func:`merge_patch_detections`).

    Args:
        src: folder of the patches' Task1 files.
        dst: output folder (created).
        iou_threshold: NMS threshold.

    Returns:
        ``{"classes": files merged, "patch_detections": lines read, "detections": lines written}``.

    Raises:
        ConfigError: if ``iou_threshold`` is outside [0, 1].
        DataError: if ``src`` holds no ``Task1_*.txt`` file, or a line is malformed or names
            no patch (naming the file and line).
    """
    from rsfm.ops.obb import obb2poly, poly2obb
    from rsfm.utils.files import atomic_write

    if not 0.0 <= iou_threshold <= 1.0:
        raise ConfigError(f"iou_threshold (--iou-threshold) must be in [0, 1], got {iou_threshold}")
    files = sorted(Path(src).glob("Task1_*.txt"))
    if not files:
        raise DataError(f"{src}: no Task1_<class>.txt files to merge")
    Path(dst).mkdir(parents=True, exist_ok=True)
    summary = {"classes": 0, "patch_detections": 0, "detections": 0}
    for path in files:
        per_patch: dict[str, list[list[float]]] = {}
        for n, line in enumerate(path.read_text().splitlines(), 1):
            parts = line.split()
            if not parts:
                continue
            try:
                if len(parts) != 10:
                    raise ValueError
                row = [float(v) for v in parts[1:]]
            except ValueError:
                raise DataError(f"{path}:{n}: expected '<patch> score x1 y1 ... x4 y4', got {line!r}") from None
            if parts[0] not in per_patch:
                try:
                    parse_patch_name(parts[0])
                except DataError as err:
                    raise DataError(f"{path}:{n}: {err}") from None
            per_patch.setdefault(parts[0], []).append(row)
        dets = {}
        for name, rows in per_patch.items():
            t = torch.tensor(rows, dtype=torch.float64)
            dets[name] = {
                "obbs": poly2obb(t[:, 1:]),
                "scores": t[:, 0],
                "labels": torch.zeros(len(t), dtype=torch.int64),
            }
        merged = merge_patch_detections(dets, iou_threshold)
        lines = []
        for image_id in sorted(merged):
            m = merged[image_id]
            for score, poly in zip(m["scores"].tolist(), obb2poly(m["obbs"]).tolist(), strict=True):
                lines.append(" ".join([image_id, f"{score:.6f}", *(f"{v:.2f}" for v in poly)]))
        text = "".join(f"{ln}\n" for ln in lines)
        atomic_write(Path(dst) / path.name, lambda tmp, t=text: Path(tmp).write_text(t))
        summary["classes"] += 1
        summary["patch_detections"] += sum(len(r) for r in per_patch.values())
        summary["detections"] += len(lines)
    return summary


def add_split_arguments(p: argparse.ArgumentParser) -> None:
    """The options of the split command (``rsfm split`` and ``python -m rsfm.data.rotated.split``)."""
    p.add_argument("src", help="DOTA folder: images/ and (optionally) labelTxt/")
    p.add_argument("dst", help="output folder")
    p.add_argument("--patch-size", type=int, default=1024, help="patch side, pixels (1024)")
    p.add_argument("--gap", type=int, default=200, help="overlap of neighbouring patches, pixels (200)")
    p.add_argument("--rates", type=float, nargs="+", default=[1.0], help="scales to cut at (1.0)")
    p.add_argument("--iof-threshold", type=float, default=0.7, help="share of area a cut object keeps (0.7)")
    p.add_argument("--drop-below", action="store_true", help="drop objects below the threshold (else: difficult)")
    p.add_argument("--drop-empty", action="store_true", help="do not write patches without objects")
    p.add_argument("--pad", action="store_true", help="pad patches of small scenes to patch-size")
    p.add_argument("--label-dir", default="labelTxt", help="label folder name (labelTxt)")


def run_split(args: argparse.Namespace) -> int:
    """Split as the parsed options of :func:`add_split_arguments` say; prints a summary."""
    summary = split_dataset(
        args.src,
        args.dst,
        args.patch_size,
        args.gap,
        args.rates,
        args.iof_threshold,
        keep_below=not args.drop_below,
        keep_empty=not args.drop_empty,
        pad=args.pad,
        label_dir=args.label_dir,
    )
    print(
        f"{summary['scenes']} scene(s) -> {summary['patches']} patch(es), {summary['objects']} object(s) "
        f"in {args.dst}; {len(summary['skipped'])} unreadable scene(s) skipped"
    )
    for path, reason in summary["skipped"]:
        print(f"  skipped {path}: {reason}")
    if summary["unlabelled"]:
        shown = ", ".join(Path(p).name for p in summary["unlabelled"][:5])
        more = f" and {len(summary['unlabelled']) - 5} more" if len(summary["unlabelled"]) > 5 else ""
        print(f"{len(summary['unlabelled'])} image(s) without a label file in {args.label_dir}/ not cut: {shown}{more}")
    return 0


def main(argv: Sequence[str] | None = None, prog: str = "python -m rsfm.data.rotated.split") -> int:
    """Command line: ``rsfm split SRC DST [--patch-size ...]`` (or ``python -m ...``); prints a summary."""
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    p.add_argument("--print-config", "--print_config", action="store_true", help="print the resolved options and exit")
    add_split_arguments(p)
    args = p.parse_args(argv)
    if args.print_config:
        import yaml

        print(yaml.safe_dump({k: v for k, v in vars(args).items() if k != "print_config"}, sort_keys=False), end="")
        return 0
    return run_split(args)


if __name__ == "__main__":
    raise SystemExit(main())
