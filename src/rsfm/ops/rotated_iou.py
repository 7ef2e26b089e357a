"""Exact IoU of oriented boxes: the area of the intersection polygon, batched over all pairs.

The intersection of two rectangles is a convex polygon of at most 8 vertices. It is found by
Sutherland–Hodgman clipping (Sutherland & Hodgman, "Reentrant polygon clipping", CACM 1974):
the first rectangle is clipped by the 4 half-planes of the second, in the second's own frame
(where those are ``|x| <= w/2`` and ``|y| <= h/2``), and the polygon's area is the shoelace
formula. Every pair runs the same fixed sequence of tensor operations on a vertex buffer with
a vertex count (4 vertices, room for one more after each of the 4 cuts), so all pairs of a
chunk are clipped at once, on CPU or CUDA.

Robustness: a vertex whose distance to a clipping line is within 32 ulps of the pair's
coordinate scale counts as on the line, so that shared edges (identical, nested or touching
boxes) never create spurious crossings; the error this allows is of the order of float
rounding times the perimeter. Zero-size boxes have zero area and give IoU 0 (no NaN).

Pairs whose enclosing horizontal boxes do not overlap are never clipped (their IoU is 0):
dense ``(N, M)`` matrices of scattered boxes cost little more than the pairs that touch.
Pairs are clipped in chunks of :data:`CHUNK_PAIRS`, so the memory used does not grow with
``N × M`` beyond the ``(N, M)`` result and a boolean mask of a block of rows.

Boxes are ``(cx, cy, w, h, θ)`` as in :mod:`rsfm.ops.obb` (pixels, radians, any angle
convention). Results agree with shapely's polygon intersection to float precision (see
``tests/ops/test_rotated_iou.py``). MMCV's ``box_iou_rotated`` finds the same polygon another
way (candidate vertices sorted by angle) and returns 0 when a box's area is below 1e-14;
its ``clockwise=True`` (the default of MMCV 2) is this module's angle direction.

.. versionadded:: 0.3
"""

from __future__ import annotations

import torch
from torch import Tensor

from rsfm.ops.obb import _rows, obb2hbb

__all__ = ["CHUNK_PAIRS", "box_iou_rotated"]

#: box pairs clipped at once (about 1 KiB of temporaries each)
CHUNK_PAIRS = 1 << 16
#: booleans of the horizontal-overlap mask built at once when searching candidate pairs
_MASK_BLOCK = 1 << 22
MODES = ("iou", "iof")


def _clip(x: Tensor, y: Tensor, count: Tensor, dist: Tensor, tol: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """One Sutherland–Hodgman step: the polygons cut to the side where ``dist >= 0``.

    Args:
        x: ``(P, B)`` vertex x, the first ``count`` entries of a row valid, in order.
        y: ``(P, B)`` vertex y.
        count: ``(P,)`` int64 number of valid vertices.
        dist: ``(P, B)`` signed distance of each vertex to the line, positive inside.
        tol: ``(P, 1)`` distances within ``tol`` of 0 count as 0 (on the line).

    Returns:
        The clipped polygons ``x``, ``y`` ``(P, B + 1)`` (a convex polygon gains at most one
        vertex) and their counts ``(P,)``.
    """
    p, b = x.shape
    idx = torch.arange(b, device=x.device)
    valid = idx < count[:, None]
    dist = dist.masked_fill(dist.abs() <= tol, 0.0)
    nxt = torch.where(idx + 1 < count[:, None], idx + 1, 0)
    dist_n, x_n, y_n = dist.gather(1, nxt), x.gather(1, nxt), y.gather(1, nxt)
    keep = valid & (dist >= 0)
    cross = valid & (dist * dist_n < 0)  # strictly opposite sides: the edge meets the line
    t = dist / torch.where(cross, dist - dist_n, 1.0)
    emit = keep.to(torch.int64) + cross.to(torch.int64)
    start = torch.cumsum(emit, dim=1) - emit  # output slot of each vertex's first point
    size = b + 1
    spare = torch.full_like(start, size)  # unused points go to a spare slot, then dropped
    at_keep = torch.where(keep & (start < size), start, spare)
    at_cross = torch.where(cross & (start + keep < size), start + keep, spare)
    out = []
    for v, v_n in ((x, x_n), (y, y_n)):
        o = v.new_zeros(p, size + 1).scatter(1, at_keep, v)
        out.append(o.scatter(1, at_cross, v + t * (v_n - v))[:, :size])
    return out[0], out[1], emit.sum(dim=1).clamp(max=size)


def _intersection(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Intersection areas of aligned pairs of oriented boxes (pixels²).

    Args:
        boxes1: ``(P, 5)`` boxes.
        boxes2: ``(P, 5)`` boxes, same dtype and device.

    Returns:
        ``(P,)`` areas, ``>= 0`` and at most the smaller box's area.
    """
    p = boxes1.shape[0]
    c1, (w1, h1, t1) = boxes1[:, :2], boxes1[:, 2:].unbind(1)
    c2, (w2, h2, t2) = boxes2[:, :2], boxes2[:, 2:].unbind(1)
    w1, h1, w2, h2 = w1.clamp(min=0), h1.clamp(min=0), w2.clamp(min=0), h2.clamp(min=0)
    # boxes1's corners in boxes2's frame: centre at 0, sides along the axes
    cos2, sin2 = torch.cos(t2), torch.sin(t2)
    rel = c1 - c2
    rx = (rel[:, 0] * cos2 + rel[:, 1] * sin2)[:, None]
    ry = (rel[:, 1] * cos2 - rel[:, 0] * sin2)[:, None]
    dc, ds = torch.cos(t1 - t2)[:, None], torch.sin(t1 - t2)[:, None]
    dx = w1[:, None] * boxes1.new_tensor([-0.5, 0.5, 0.5, -0.5])
    dy = h1[:, None] * boxes1.new_tensor([-0.5, -0.5, 0.5, 0.5])
    x, y = rx + dx * dc - dy * ds, ry + dx * ds + dy * dc
    count = torch.full((p,), 4, dtype=torch.int64, device=boxes1.device)
    scale = torch.cat([rx.abs(), ry.abs(), torch.stack([w1, h1, w2, h2], dim=1)], dim=1).amax(dim=1, keepdim=True)
    tol = scale * (32 * torch.finfo(boxes1.dtype).eps)
    hw, hh = (w2 / 2)[:, None], (h2 / 2)[:, None]
    x, y, count = _clip(x, y, count, hw - x, tol)
    x, y, count = _clip(x, y, count, hw + x, tol)
    x, y, count = _clip(x, y, count, hh - y, tol)
    x, y, count = _clip(x, y, count, hh + y, tol)
    idx = torch.arange(x.shape[1], device=x.device)
    nxt = torch.where(idx + 1 < count[:, None], idx + 1, 0)
    cross = x * y.gather(1, nxt) - y * x.gather(1, nxt)
    area = cross.masked_fill(idx >= count[:, None], 0.0).sum(dim=1).abs() / 2
    return torch.minimum(area, torch.minimum(w1 * h1, w2 * h2))


def _pair_overlaps(boxes1: Tensor, boxes2: Tensor, mode: str) -> Tensor:
    """IoU (or IoF) of aligned pairs ``(P, 5)``, ``(P, 5)`` → ``(P,)``, clipped in chunks."""
    out = []
    for s in range(0, boxes1.shape[0], CHUNK_PAIRS):
        b1, b2 = boxes1[s : s + CHUNK_PAIRS], boxes2[s : s + CHUNK_PAIRS]
        inter = _intersection(b1, b2)
        area1 = b1[:, 2].clamp(min=0) * b1[:, 3].clamp(min=0)
        denom = area1 if mode == "iof" else area1 + b2[:, 2].clamp(min=0) * b2[:, 3].clamp(min=0) - inter
        ok = denom > 0
        out.append(torch.where(ok, inter / torch.where(ok, denom, torch.ones_like(denom)), torch.zeros_like(inter)))
    return torch.cat(out).clamp(max=1) if out else boxes1.new_zeros(0)


def _candidate_pairs(boxes1: Tensor, boxes2: Tensor) -> tuple[Tensor, Tensor]:
    """Index pairs ``(i, j)`` whose enclosing horizontal boxes overlap (with positive area).

    Args:
        boxes1: ``(N, 5)`` boxes.
        boxes2: ``(M, 5)`` boxes.

    Returns:
        ``(i, j)``, two int64 ``(P,)`` tensors.
    """
    h1, h2 = obb2hbb(boxes1), obb2hbb(boxes2)
    rows = max(1, _MASK_BLOCK // max(h2.shape[0], 1))
    found_i, found_j = [], []
    for s in range(0, h1.shape[0], rows):
        a = h1[s : s + rows, None]
        hit = (
            (a[..., 0] < h2[None, :, 2])
            & (h2[None, :, 0] < a[..., 2])
            & (a[..., 1] < h2[None, :, 3])
            & (h2[None, :, 1] < a[..., 3])
        )
        i, j = hit.nonzero(as_tuple=True)
        found_i.append(i + s)
        found_j.append(j)
    return torch.cat(found_i), torch.cat(found_j)


def box_iou_rotated(boxes1: Tensor, boxes2: Tensor, aligned: bool = False, mode: str = "iou") -> Tensor:
    """IoU (or intersection over the first box's area) of oriented boxes, exact.

    ``iou``: ``|A ∩ B| / |A ∪ B|``; ``iof``: ``|A ∩ B| / |A|`` (MMCV's name: intersection
    over foreground, the area of ``boxes1``). A zero denominator gives 0. The intersection is
    the exact polygon (see the module docstring), computed in the inputs' dtype (float32 or
    float64; half precision is computed in float32 and cast back), on their device.
    Differentiable almost everywhere by autograd, but meant for evaluation and matching.

    Args:
        boxes1: ``(N, 5)`` ``(cx, cy, w, h, θ)``, pixels and radians, any angle convention.
        boxes2: ``(M, 5)`` likewise, same device.
        aligned: compare ``boxes1[i]`` with ``boxes2[i]`` only (needs ``N == M``).
        mode: ``iou`` or ``iof``.

    Returns:
        ``(N, M)`` (``(N,)`` if ``aligned``) in ``[0, 1]``, the inputs' promoted float dtype.

    Raises:
        ValueError: if a box tensor is not ``(K, 5)``, ``mode`` is unknown, or ``aligned`` with
            ``N != M``.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    boxes1, boxes2 = _rows(boxes1, 5, "boxes1"), _rows(boxes2, 5, "boxes2")
    dtype = torch.promote_types(boxes1.dtype, boxes2.dtype)
    work = dtype if dtype in (torch.float32, torch.float64) else torch.float32
    b1, b2 = boxes1.to(work), boxes2.to(work)
    n, m = b1.shape[0], b2.shape[0]
    if aligned:
        if n != m:
            raise ValueError(f"aligned needs as many boxes1 as boxes2, got {n} and {m}")
        out = b1.new_zeros(n)
        h1, h2 = obb2hbb(b1), obb2hbb(b2)
        hit = ((h1[:, 0] < h2[:, 2]) & (h2[:, 0] < h1[:, 2]) & (h1[:, 1] < h2[:, 3]) & (h2[:, 1] < h1[:, 3])).nonzero(
            as_tuple=True
        )[0]
        out = out.index_put((hit,), _pair_overlaps(b1[hit], b2[hit], mode))
        return out.to(dtype)
    out = b1.new_zeros(n, m)
    if n and m:
        i, j = _candidate_pairs(b1, b2)
        out = out.index_put((i, j), _pair_overlaps(b1[i], b2[j], mode))
    return out.to(dtype)
