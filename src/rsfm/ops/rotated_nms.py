"""Greedy non-maximum suppression of oriented boxes, plain and class-wise.

Greedy NMS as ``torchvision.ops.nms`` does it, with the exact rotated IoU of
:mod:`rsfm.ops.rotated_iou`: boxes are visited by decreasing score; a box is kept unless a kept
box overlaps it with IoU strictly above the threshold (MMCV's ``nms_rotated`` uses the same
strict ``>``). Equal scores keep the input order (a stable sort; torchvision leaves their order
unspecified).

How: boxes are taken in blocks in score order; for each block, the IoU of its boxes not yet
suppressed against the later boxes not yet suppressed is computed on the boxes' device (only
pairs whose enclosing horizontal boxes overlap), and the greedy pass over the block runs on the
CPU. The cost is that of the overlapping pairs of surviving boxes, not of all ``N²``.
Class-wise NMS restricts the candidate pairs to one class, so no coordinate offsets are added
(adding offsets, as MMCV's ``batched_nms`` does, loses float32 precision on large images).

.. versionadded:: 0.3
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from rsfm.ops.obb import _rows, obb2hbb
from rsfm.ops.rotated_iou import _pair_overlaps

__all__ = ["batched_nms_rotated", "nms_rotated"]


def _vector(x: Tensor, n: int, name: str) -> Tensor:
    """``x`` checked to be a ``(n,)`` tensor; ValueError naming ``name`` otherwise."""
    if not isinstance(x, Tensor) or x.ndim != 1 or x.shape[0] != n:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"{name} must have shape ({n},) for {n} boxes, got {shape}")
    return x


#: boxes (in score order) whose suppressions are found together
_BLOCK = 512


def _greedy(boxes: Tensor, scores: Tensor, iou_threshold: float, groups: Tensor | None) -> Tensor:
    """Kept indices (int64, by decreasing score) of greedy NMS within ``groups``.

    Boxes are taken in blocks of :data:`_BLOCK` in score order. For a block, the IoU of its
    boxes not yet suppressed against every later box not yet suppressed (whose enclosing
    horizontal boxes overlap, of the same group) is computed on the device; the greedy pass
    over the block then runs on the CPU. Suppressed boxes never get their IoUs computed,
    which saves most of the work on detector outputs (several boxes per object).
    """
    n = boxes.shape[0]
    if n == 0:
        return torch.zeros(0, dtype=torch.int64, device=boxes.device)
    order = torch.sort(scores, descending=True, stable=True).indices
    work = boxes.dtype if boxes.dtype in (torch.float32, torch.float64) else torch.float32
    b = boxes[order].to(work)
    hbb = obb2hbb(b)
    g = None if groups is None else groups[order]
    removed = np.zeros(n, dtype=bool)
    keep = np.zeros(n, dtype=bool)
    for s in range(0, n, _BLOCK):
        e = min(n, s + _BLOCK)
        rows = np.flatnonzero(~removed[s:e]) + s
        if len(rows) == 0:
            continue
        r = torch.from_numpy(rows).to(boxes.device)
        a, h = hbb[r][:, None], hbb[s:][None]
        hit = (a[..., 0] < h[..., 2]) & (h[..., 0] < a[..., 2]) & (a[..., 1] < h[..., 3]) & (h[..., 1] < a[..., 3])
        cols = torch.arange(s, n, device=boxes.device)
        hit &= cols[None, :] > r[:, None]
        hit &= torch.from_numpy(~removed[s:]).to(boxes.device)[None, :]
        if g is not None:
            hit &= g[r][:, None] == g[None, s:]
        i, j = hit.nonzero(as_tuple=True)  # i ascending
        i, j = r[i], j + s
        if i.numel():
            over = _pair_overlaps(b[i], b[j], "iou") > iou_threshold
            i, j = i[over], j[over]
        si, sj = i.cpu().numpy(), j.cpu().numpy()
        starts = np.searchsorted(si, rows)
        ends = np.searchsorted(si, rows, side="right")
        for row, lo, hi in zip(rows.tolist(), starts.tolist(), ends.tolist(), strict=True):
            if removed[row]:
                continue
            keep[row] = True
            if hi > lo:
                removed[sj[lo:hi]] = True
    kept = torch.from_numpy(np.flatnonzero(keep)).to(boxes.device)
    return order[kept]


def nms_rotated(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy NMS of oriented boxes by exact rotated IoU.

    Args:
        boxes: ``(N, 5)`` ``(cx, cy, w, h, θ)``, pixels and radians, any angle convention.
        scores: ``(N,)`` scores, higher first.
        iou_threshold: a box is suppressed by a kept box of IoU ``> iou_threshold``.

    Returns:
        ``(K,)`` int64 indices into ``boxes`` of the kept boxes, by decreasing score (ties in
        input order), on the boxes' device.

    Raises:
        ValueError: if ``boxes`` is not ``(N, 5)`` or ``scores`` not ``(N,)``.
    """
    boxes = _rows(boxes, 5, "boxes")
    scores = _vector(scores, boxes.shape[0], "scores")
    return _greedy(boxes, scores, float(iou_threshold), None)


def batched_nms_rotated(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    """Class-wise greedy NMS of oriented boxes: boxes of different ``idxs`` never suppress each other.

    The same as running :func:`nms_rotated` on each class and merging the kept boxes by score
    (as ``torchvision.ops.batched_nms``), in one pass.

    Args:
        boxes: ``(N, 5)`` ``(cx, cy, w, h, θ)``, pixels and radians.
        scores: ``(N,)`` scores.
        idxs: ``(N,)`` integer class (or image) of each box.
        iou_threshold: a box is suppressed by a kept box of its class of IoU ``> iou_threshold``.

    Returns:
        ``(K,)`` int64 indices of the kept boxes, by decreasing score (ties in input order).

    Raises:
        ValueError: if ``boxes`` is not ``(N, 5)``, or ``scores`` or ``idxs`` not ``(N,)``.
    """
    boxes = _rows(boxes, 5, "boxes")
    scores = _vector(scores, boxes.shape[0], "scores")
    idxs = _vector(idxs, boxes.shape[0], "idxs")
    return _greedy(boxes, scores, float(iou_threshold), idxs.to(boxes.device))
