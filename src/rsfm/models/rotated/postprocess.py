"""Post-processing of oriented detections: class-wise rotated NMS, and merging tiles of a scene.

.. versionadded:: 0.3
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["empty_detections", "merge_rotated_detections", "multiclass_nms_rotated"]


def empty_detections(device: torch.device | str | None = None) -> dict[str, Tensor]:
    """No detection: ``obbs`` ``(0, 5)``, ``scores`` ``(0,)`` float32, ``labels`` ``(0,)`` int64."""
    return {
        "obbs": torch.zeros((0, 5), device=device),
        "scores": torch.zeros(0, device=device),
        "labels": torch.zeros(0, dtype=torch.int64, device=device),
    }


def multiclass_nms_rotated(
    obbs: Tensor,
    scores: Tensor,
    score_threshold: float,
    iou_threshold: float,
    max_num: int | None = None,
) -> dict[str, Tensor]:
    """Class-wise rotated NMS of class-agnostic boxes with per-class scores.

    Every (box, class) pair scoring ``> score_threshold`` is a candidate; candidates of one
    class suppress each other at rotated IoU ``> iou_threshold``; the ``max_num`` best-scoring
    survivors are kept (the R-CNN test procedure of Faster R-CNN, on oriented boxes).

    Args:
        obbs: ``(N, 5)`` boxes ``(cx, cy, w, h, θ)``, pixels and radians.
        scores: ``(N, K)`` class probabilities (without the background).
        score_threshold: least score of a candidate.
        iou_threshold: rotated IoU above which a lower-scoring box of the class is dropped.
        max_num: detections kept; None: all.

    Returns:
        ``obbs`` ``(M, 5)`` float32, ``scores`` ``(M,)`` float32, ``labels`` ``(M,)`` int64 in
        ``[0, K)``, by decreasing score.
    """
    from rsfm.ops.rotated_nms import batched_nms_rotated

    idx, cls = torch.nonzero(scores > score_threshold, as_tuple=True)
    if len(idx) == 0:
        return empty_detections(obbs.device)
    boxes, s = obbs[idx].float(), scores[idx, cls].float()
    keep = batched_nms_rotated(boxes, s, cls, iou_threshold)
    if max_num is not None:
        keep = keep[:max_num]
    return {"obbs": boxes[keep], "scores": s[keep], "labels": cls[keep]}


def merge_rotated_detections(
    detections: Sequence[dict[str, Tensor]],
    offsets: Sequence[tuple[int, int]],
    iou_threshold: float = 0.1,
    max_detections: int | None = None,
) -> dict[str, Tensor]:
    """Shift per-tile oriented detections to image pixels and merge them by class-wise rotated NMS.

    As the DOTA devkit and mmrotate merge the patches of a large scene: objects seen by
    several overlapping tiles are kept once (the best-scoring box of the class).

    Args:
        detections: per tile ``obbs`` ``(n, 5)`` tile pixels, ``scores`` ``(n,)`` float32,
            ``labels`` ``(n,)`` int64.
        offsets: per tile its ``(y0, x0)`` in the image, pixels.
        iou_threshold: rotated IoU of the class-wise NMS across tiles.
        max_detections: keep the best-scoring ones; None: all.

    Returns:
        ``obbs`` ``(M, 5)`` float32 image pixels, ``scores`` ``(M,)``, ``labels`` ``(M,)`` int64,
        by decreasing score, on the detections' device (the CPU without tiles).
    """
    from rsfm.ops.rotated_nms import batched_nms_rotated

    if not detections:
        return empty_detections()
    shifted = []
    for d, (y0, x0) in zip(detections, offsets, strict=True):
        o = d["obbs"].float().clone()
        o[:, 0] += x0
        o[:, 1] += y0
        shifted.append(o)
    obbs = torch.cat(shifted)
    scores = torch.cat([d["scores"].float() for d in detections])
    labels = torch.cat([d["labels"] for d in detections])
    if len(detections) > 1 and len(obbs):
        keep = batched_nms_rotated(obbs, scores, labels, iou_threshold)
    else:
        keep = torch.argsort(scores, descending=True, stable=True)
    if max_detections is not None:
        keep = keep[:max_detections]
    return {"obbs": obbs[keep], "scores": scores[keep], "labels": labels[keep]}
