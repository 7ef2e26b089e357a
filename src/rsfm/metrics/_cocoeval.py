"""pycocotools' ``COCOeval`` run at one detection cap (shared by :mod:`rsfm.metrics.coco` and ``.instance``).

COCOeval's ``summarize()`` reads its headline AP at ``maxDets=100`` whatever ``params.maxDets``
holds, so it cannot report another cap. These helpers run ``evaluate()`` and ``accumulate()``
with ``params.maxDets = [cap]`` and read the precision table themselves: the numbers are
COCOeval's at that cap, for any cap of at least 1.

An *image* here is a dict ``{"size": [H, W], "pred": {...}, "target": {...}}`` of NumPy arrays:
``pred`` holds ``boxes`` ``(M, 4)`` float64 xyxy pixels, ``scores`` ``(M,)``, ``labels`` ``(M,)``
int64 in ``[0, K)``; ``target`` holds ``boxes`` ``(N, 4)``, ``labels`` ``(N,)`` and
``iscrowd`` ``(N,)`` bool; both also hold ``rles`` (pycocotools' RLE dicts, one per object)
for ``iou_type="segm"``.
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["check_max_detections", "coco_precision", "mean_valid", "percent_or_none"]


def check_max_detections(max_detections: int) -> int:
    """``max_detections`` as an int; ValueError if it is less than 1 (COCOeval would keep no detection)."""
    if isinstance(max_detections, bool) or int(max_detections) != max_detections or int(max_detections) < 1:
        raise ValueError(f"max_detections must be an integer of at least 1, got {max_detections!r}")
    return int(max_detections)


def percent_or_none(value: float) -> float | None:
    """COCO's -1 / NaN (nothing to evaluate) → None; else the fraction ``value`` in percent."""
    return None if value < 0 or math.isnan(value) else 100.0 * float(value)


def mean_valid(p: np.ndarray) -> float:
    """Mean of COCOeval precision entries that are defined (> -1); -1 when none is."""
    p = p[p > -1]
    return float(p.mean()) if p.size else -1.0


def _xywh(box: np.ndarray) -> list[float]:
    return [float(box[0]), float(box[1]), float(box[2] - box[0]), float(box[3] - box[1])]


def _coco_pair(images: list[dict[str, Any]], class_names: Sequence[str], iou_type: str) -> tuple[Any, Any]:
    """Ground-truth and result ``COCO`` objects of ``images`` for one IoU type.

    Results are built as ``COCO.loadRes`` builds them (ids from 1, ``iscrowd`` 0, the box's or
    the mask's area, the mask's enclosing box), without its deep copy of every annotation.
    """
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO

    info = [
        {"id": i + 1, "height": im.get("size", [0, 0])[0], "width": im.get("size", [0, 0])[1]}
        for i, im in enumerate(images)
    ]
    cats = [{"id": k + 1, "name": n} for k, n in enumerate(class_names)]
    gts: list[dict[str, Any]] = []
    dts: list[dict[str, Any]] = []
    for i, im in enumerate(images):
        t, p = im["target"], im["pred"]
        for j, (box, label, crowd) in enumerate(zip(t["boxes"], t["labels"], t["iscrowd"], strict=True)):
            xywh = _xywh(box)
            gt = {"id": len(gts) + 1, "image_id": i + 1, "category_id": int(label) + 1, "bbox": xywh}
            if iou_type == "segm":
                gt.update(segmentation=t["rles"][j], area=float(mask_utils.area(t["rles"][j])))
            else:
                gt["area"] = xywh[2] * xywh[3]
            gt["iscrowd"] = int(crowd)
            gts.append(gt)
        for j, (box, score, label) in enumerate(zip(p["boxes"], p["scores"], p["labels"], strict=True)):
            ann = {"id": len(dts) + 1, "image_id": i + 1, "category_id": int(label) + 1, "score": float(score)}
            if iou_type == "segm":
                rle = p["rles"][j]
                ann.update(segmentation=rle, area=float(mask_utils.area(rle)))
                ann["bbox"] = [float(v) for v in mask_utils.toBbox(rle)]
            else:
                xywh = _xywh(box)
                ann.update(bbox=xywh, area=xywh[2] * xywh[3])
            ann["iscrowd"] = 0
            dts.append(ann)
    out = []
    for anns in (gts, dts):
        coco = COCO()
        coco.dataset = {"images": info, "categories": cats, "annotations": anns}
        with contextlib.redirect_stdout(io.StringIO()):
            coco.createIndex()
        out.append(coco)
    return out[0], out[1]


def coco_precision(
    images: list[dict[str, Any]], class_names: Sequence[str], iou_type: str, max_detections: int
) -> np.ndarray:
    """COCOeval's precision table at one detection cap, all object sizes.

    Args:
        images: images in the form of the module docstring.
        class_names: the ``K`` class names (label ``k`` is COCO category ``k + 1``).
        iou_type: ``"bbox"`` or ``"segm"``.
        max_detections: COCOeval's ``maxDets``, detections per image and class (at least 1).

    Returns:
        ``(T, R, K)`` float64: precision at COCO's 10 IoU thresholds (0.50:0.05:0.95, index 0
        is 0.5), 101 recall points and ``K`` classes; -1 where COCOeval has nothing to score
        (a class without non-crowd ground truth).

    Raises:
        ValueError: if ``max_detections`` is less than 1.
    """
    from pycocotools.cocoeval import COCOeval

    cap = check_max_detections(max_detections)
    gt, dt = _coco_pair(images, class_names, iou_type)
    ev = COCOeval(gt, dt, iouType=iou_type)
    ev.params.maxDets = [cap]  # evaluate() keeps the top maxDets[-1] per image and class
    ev.params.catIds = list(range(1, len(class_names) + 1))
    ev.params.areaRng, ev.params.areaRngLbl = [[0.0, 1e10]], ["all"]  # COCO's "all"; no size ranges
    with contextlib.redirect_stdout(io.StringIO()):
        ev.evaluate()
        ev.accumulate()
    return np.asarray(ev.eval["precision"], dtype=np.float64)[:, :, :, 0, 0]
