"""Oriented boxes ``(cx, cy, w, h, θ)``: angle conventions, polygons, horizontal boxes, flips and 90° turns.

An oriented box is a row ``(cx, cy, w, h, theta)`` of a float tensor ``(N, 5)``:

* ``cx, cy``: the centre, in continuous pixel coordinates: ``(0, 0)`` is the top-left corner
  of the image (not the centre of the top-left pixel) and a ``W × H`` image spans
  ``[0, W] × [0, H]``.
* ``w, h``: the side lengths, pixels; side ``w`` lies along the direction ``(cos θ, sin θ)``
  and side ``h`` along ``(-sin θ, cos θ)``.
* ``theta``: radians in image axes (x to the right, y down), so a positive ``θ`` turns the x
  axis toward the y axis: clockwise as the image is shown on screen.

A corner of the box is ``(cx, cy) + R(θ) (±w/2, ±h/2)`` with ``R(θ) = [[cos θ, -sin θ], [sin θ,
cos θ]]``.

One rectangle has several such rows (swap ``w`` and ``h`` and turn by 90°; turn by 180°). An
*angle convention* picks one, as MMRotate (Zhou et al., "MMRotate: A Rotated Object Detection
Benchmark using PyTorch", ACM MM 2022) defines them:

* ``le90``: ``w >= h`` (``w`` is the long side), ``θ`` in ``[-π/2, π/2)``.
* ``le135``: ``w >= h``, ``θ`` in ``[-π/4, 3π/4)``.
* ``oc``: OpenCV's ``minAreaRect`` convention (OpenCV >= 4.5.1): ``θ`` in ``(0, π/2]``, ``w`` the
  side along ``(cos θ, sin θ)`` whichever is longer.

A square has ``w == h`` and keeps its angle under ``le90``/``le135`` (no swap). Every function
here reads any row as the rectangle it describes, whatever convention produced it, and writes
rows in the convention it is given (``regularize_obb``).

Polygons are ``(N, 8)`` rows ``x1 y1 x2 y2 x3 y3 x4 y4`` (pixels), as DOTA labels them.

All functions take tensors on any device, keep a floating input's dtype and device (integer
inputs give the default float dtype), accept empty inputs (``(0, 5)``, ``(0, 8)`` or ``(0,)``)
and raise ``ValueError`` naming the argument on a wrong shape, an unknown convention or
direction.

.. versionadded:: 0.3
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "ANGLE_VERSIONS",
    "convert_angle_version",
    "hbb2obb",
    "norm_angle",
    "obb2hbb",
    "obb2poly",
    "obb_flip",
    "obb_rot90",
    "poly2obb",
    "poly_flip",
    "poly_rot90",
    "regularize_obb",
]

#: the angle conventions (see the module docstring)
ANGLE_VERSIONS = ("le90", "le135", "oc")
#: the flip directions of :func:`obb_flip` and :func:`poly_flip`
FLIP_DIRECTIONS = ("horizontal", "vertical", "diagonal")

_HALF_PI = math.pi / 2


# --------------------------------------------------------------------------- checks


def _check_version(version: str, name: str = "version") -> None:
    """ValueError naming ``name`` unless ``version`` is one of :data:`ANGLE_VERSIONS`."""
    if version not in ANGLE_VERSIONS:
        raise ValueError(f"{name} must be one of {ANGLE_VERSIONS}, got {version!r}")


def _floating(x: Tensor) -> Tensor:
    """``x`` itself if floating point, else ``x`` in the default float dtype."""
    return x if x.is_floating_point() else x.to(torch.get_default_dtype())


def _rows(x: Tensor, cols: int, name: str) -> Tensor:
    """``x`` as a floating ``(N, cols)`` tensor; ValueError naming ``name`` on another shape."""
    if not isinstance(x, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape (N, {cols}), got {type(x).__name__}")
    if x.ndim == 1 and x.numel() == 0:
        x = x.reshape(0, cols)
    if x.ndim != 2 or x.shape[1] != cols:
        raise ValueError(f"{name} must have shape (N, {cols}), got {tuple(x.shape)}")
    return _floating(x)


def _size(size: tuple[int, int], name: str = "size") -> tuple[float, float]:
    """``(H, W)`` as floats; ValueError naming ``name`` unless it is two numbers."""
    try:
        h, w = size
        return float(h), float(w)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be (H, W) in pixels, got {size!r}") from None


# --------------------------------------------------------------------------- angles


def _wrap(theta: Tensor, low: float, period: float) -> Tensor:
    """``theta`` shifted by a multiple of ``period`` into ``[low, low + period)``."""
    t = torch.remainder(theta - low, period) + low
    # remainder may round up to exactly ``period`` for inputs just below a multiple of it
    return torch.where(t >= low + period, t - period, t)


def norm_angle(theta: Tensor, version: str) -> Tensor:
    """Angles (radians) wrapped into the range of a convention, modulo a half turn.

    ``le90``: into ``[-π/2, π/2)``; ``le135``: into ``[-π/4, 3π/4)`` (a box turned by π is the
    same box, so the rows keep their rectangles). ``oc``: returned unchanged, as MMRotate's
    ``norm_angle`` does: an angle is brought into ``(0, π/2]`` only together with a swap of
    ``w`` and ``h``, which :func:`regularize_obb` does.

    Args:
        theta: angles of any shape, radians, any float dtype and device.
        version: ``le90``, ``le135`` or ``oc``.

    Returns:
        The wrapped angles, same shape, dtype and device (an integer input gives the default
        float dtype).

    Raises:
        ValueError: on an unknown ``version``.
    """
    _check_version(version)
    theta = _floating(theta)
    if version == "le90":
        return _wrap(theta, -_HALF_PI, math.pi)
    if version == "le135":
        return _wrap(theta, -math.pi / 4, math.pi)
    return theta


def regularize_obb(obbs: Tensor, version: str = "le90") -> Tensor:
    """The same rectangles, written in the canonical ``(w, h, θ)`` of a convention.

    ``le90``/``le135``: ``w`` and ``h`` are swapped (and ``θ`` turned by π/2) where ``w < h``,
    then ``θ`` is wrapped modulo π into the range. ``oc``: ``θ`` is turned by the multiple of
    π/2 that brings it into ``(0, π/2]``, swapping ``w`` and ``h`` on each quarter turn.

    Args:
        obbs: ``(N, 5)`` ``(cx, cy, w, h, θ)``, pixels and radians, any convention.
        version: ``le90``, ``le135`` or ``oc``.

    Returns:
        ``(N, 5)``, same dtype and device; centres unchanged.

    Raises:
        ValueError: if ``obbs`` is not ``(N, 5)`` or ``version`` is unknown.
    """
    _check_version(version)
    obbs = _rows(obbs, 5, "obbs")
    cx, cy, w, h, theta = obbs.unbind(1)
    if version == "oc":
        k = torch.ceil(theta / _HALF_PI) - 1  # theta - k π/2 in (0, π/2]
        t = theta - k * _HALF_PI
        k = torch.where(t <= 0, k - 1, torch.where(t > _HALF_PI, k + 1, k))  # rounding at the ends
        t = theta - k * _HALF_PI
        t = t.clamp(min=torch.finfo(t.dtype).tiny, max=_HALF_PI)
        swap = torch.remainder(k, 2) != 0
    else:
        swap = w < h
        t = norm_angle(theta + swap.to(theta.dtype) * _HALF_PI, version)
    return torch.stack([cx, cy, torch.where(swap, h, w), torch.where(swap, w, h), t], dim=1)


def convert_angle_version(obbs: Tensor, src: str, dst: str) -> Tensor:
    """Boxes written in convention ``src`` rewritten in convention ``dst`` (the same rectangles).

    A row ``(cx, cy, w, h, θ)`` describes one rectangle whatever the convention, so the
    conversion is :func:`regularize_obb` to ``dst``; ``src`` is only checked.

    Args:
        obbs: ``(N, 5)`` boxes, pixels and radians.
        src: the convention of ``obbs`` (``le90``, ``le135`` or ``oc``).
        dst: the convention wanted.

    Returns:
        ``(N, 5)`` in ``dst``, same dtype and device.

    Raises:
        ValueError: if ``obbs`` is not ``(N, 5)`` or ``src``/``dst`` is unknown.
    """
    _check_version(src, "src")
    _check_version(dst, "dst")
    return regularize_obb(obbs, dst)


# --------------------------------------------------------------------------- polygons and horizontal boxes


#: the 6 point pairs of a quadrilateral, whose directions hold every edge of its convex hull
_PAIRS = ((0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3))


def poly2obb(polys: Tensor, version: str = "le90") -> Tensor:
    """The minimum-area rectangles enclosing quadrilaterals, as oriented boxes.

    The minimum-area enclosing rectangle of a point set has a side along an edge of its convex
    hull (Freeman & Shapira, "Determining the minimum-area encasing rectangle for an arbitrary
    closed curve", CACM 1975, the basis of rotating calipers). The hull of 4 points has its
    edges among the 6 lines through two of the points, so every one of those 6 directions is
    tried (projections of the 4 points on it and on its normal) and the one of least area
    kept: no explicit hull, no OpenCV, the same rectangle as OpenCV's ``minAreaRect`` (which
    MMRotate's ``poly2obb_np`` uses; MMRotate's tensor ``poly2obb`` instead reads ``w`` and
    ``h`` from two edges of the polygon, which differs for non-rectangular quadrilaterals).
    Any quadrilateral works (DOTA labels are not exact rectangles): convex or not, any vertex
    order. Coincident points give a zero-size box at that point; collinear points give
    ``h = 0``.

    Args:
        polys: ``(N, 8)`` ``x1 y1 ... x4 y4``, pixels.
        version: convention of the result (``le90``, ``le135`` or ``oc``).

    Returns:
        ``(N, 5)`` ``(cx, cy, w, h, θ)``, pixels and radians, same dtype and device.

    Raises:
        ValueError: if ``polys`` is not ``(N, 8)`` or ``version`` is unknown.
    """
    _check_version(version)
    polys = _rows(polys, 8, "polys")
    pts = polys.reshape(-1, 4, 2)
    origin = pts.mean(dim=1, keepdim=True)
    pts = pts - origin  # precision: project coordinates near 0
    i = torch.tensor([a for a, _ in _PAIRS], device=pts.device)
    j = torch.tensor([b for _, b in _PAIRS], device=pts.device)
    d = pts[:, j] - pts[:, i]  # (N, 6, 2)
    length = torch.linalg.vector_norm(d, dim=2, keepdim=True)
    ok = length > 0
    unit_x = torch.zeros_like(d)
    unit_x[..., 0] = 1.0
    u = torch.where(ok, d / torch.where(ok, length, torch.ones_like(length)), unit_x)
    v = torch.stack([-u[..., 1], u[..., 0]], dim=2)
    pu = torch.einsum("npk,nqk->npq", u, pts)  # (N, 6 directions, 4 points)
    pv = torch.einsum("npk,nqk->npq", v, pts)
    lo_u, hi_u = pu.amin(dim=2), pu.amax(dim=2)
    lo_v, hi_v = pv.amin(dim=2), pv.amax(dim=2)
    area = (hi_u - lo_u) * (hi_v - lo_v)
    area = torch.where(ok[..., 0], area, torch.full_like(area, math.inf))
    best = area.argmin(dim=1, keepdim=True)  # all directions degenerate: 0, along x

    def pick(t: Tensor) -> Tensor:
        return t.gather(1, best).squeeze(1)

    ub = u.gather(1, best[..., None].expand(-1, -1, 2)).squeeze(1)
    vb = v.gather(1, best[..., None].expand(-1, -1, 2)).squeeze(1)
    mid_u = (pick(lo_u) + pick(hi_u)) / 2
    mid_v = (pick(lo_v) + pick(hi_v)) / 2
    centre = origin.squeeze(1) + ub * mid_u[:, None] + vb * mid_v[:, None]
    w, h = pick(hi_u) - pick(lo_u), pick(hi_v) - pick(lo_v)
    theta = torch.atan2(ub[:, 1], ub[:, 0])
    return regularize_obb(torch.stack([centre[:, 0], centre[:, 1], w, h, theta], dim=1), version)


def obb2poly(obbs: Tensor) -> Tensor:
    """The 4 corners of oriented boxes.

    The corners are ``c + R(θ) (-w/2, -h/2)``, ``c + R(θ) (w/2, -h/2)``, ``c + R(θ) (w/2,
    h/2)``, ``c + R(θ) (-w/2, h/2)``: starting at the box's own top-left corner and going
    clockwise on screen (y down); the polygon's signed shoelace area in image axes is
    ``+w·h``.

    Args:
        obbs: ``(N, 5)`` ``(cx, cy, w, h, θ)``, pixels and radians, any convention.

    Returns:
        ``(N, 8)`` ``x1 y1 ... x4 y4``, pixels, same dtype and device.

    Raises:
        ValueError: if ``obbs`` is not ``(N, 5)``.
    """
    obbs = _rows(obbs, 5, "obbs")
    cx, cy, w, h, theta = (t[:, None] for t in obbs.unbind(1))
    c, s = torch.cos(theta), torch.sin(theta)
    sx = obbs.new_tensor([-0.5, 0.5, 0.5, -0.5])
    sy = obbs.new_tensor([-0.5, -0.5, 0.5, 0.5])
    dx, dy = w * sx, h * sy  # (N, 4)
    x = cx + dx * c - dy * s
    y = cy + dx * s + dy * c
    return torch.stack([x, y], dim=2).reshape(-1, 8)


def obb2hbb(obbs: Tensor) -> Tensor:
    """The horizontal boxes enclosing oriented boxes.

    Half extents ``|w/2 cos θ| + |h/2 sin θ|`` (x) and ``|w/2 sin θ| + |h/2 cos θ|`` (y).

    Args:
        obbs: ``(N, 5)`` ``(cx, cy, w, h, θ)``, pixels and radians, any convention.

    Returns:
        ``(N, 4)`` ``(x1, y1, x2, y2)``, pixels, same dtype and device.

    Raises:
        ValueError: if ``obbs`` is not ``(N, 5)``.
    """
    obbs = _rows(obbs, 5, "obbs")
    cx, cy, w, h, theta = obbs.unbind(1)
    c, s = torch.cos(theta).abs(), torch.sin(theta).abs()
    ex = (w * c + h * s) / 2
    ey = (w * s + h * c) / 2
    return torch.stack([cx - ex, cy - ey, cx + ex, cy + ey], dim=1)


def hbb2obb(boxes: Tensor, version: str = "le90") -> Tensor:
    """Horizontal boxes as oriented boxes (``θ = 0`` before :func:`regularize_obb`).

    A box taller than wide becomes, under ``le90``, ``(cx, cy, h, w, -π/2)`` (MMRotate's
    ``hbb2obb`` writes ``+π/2``, the same rectangle but outside ``[-π/2, π/2)``); under
    ``le135`` ``(cx, cy, h, w, π/2)``; under ``oc`` every box becomes ``(cx, cy, h, w, π/2)``.

    Args:
        boxes: ``(N, 4)`` ``(x1, y1, x2, y2)``, pixels.
        version: convention of the result.

    Returns:
        ``(N, 5)`` ``(cx, cy, w, h, θ)``, same dtype and device.

    Raises:
        ValueError: if ``boxes`` is not ``(N, 4)`` or ``version`` is unknown.
    """
    _check_version(version)
    boxes = _rows(boxes, 4, "boxes")
    x1, y1, x2, y2 = boxes.unbind(1)
    obbs = torch.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1, torch.zeros_like(x1)], dim=1)
    return regularize_obb(obbs, version)


# --------------------------------------------------------------------------- flips and 90° turns


def _check_direction(direction: str) -> None:
    if direction not in FLIP_DIRECTIONS:
        raise ValueError(f"direction must be one of {FLIP_DIRECTIONS}, got {direction!r}")


def obb_flip(obbs: Tensor, size: tuple[int, int], direction: str, version: str = "le90") -> Tensor:
    """Oriented boxes of a flipped image.

    ``horizontal`` mirrors x (``torch.flip(image, dims=(-1,))``): ``cx → W - cx``, ``θ → -θ``;
    ``vertical`` mirrors y (``dims=(-2,)``): ``cy → H - cy``, ``θ → -θ``; ``diagonal`` does
    both (a half turn; ``θ`` unchanged). Continuous pixel coordinates, so there is no ``- 1``
    (MMRotate 0.x's ``RRandomFlip`` writes ``W - cx - 1``, for inclusive pixel indices, and
    also negates ``θ`` on a diagonal flip).

    Args:
        obbs: ``(N, 5)`` ``(cx, cy, w, h, θ)``, pixels and radians.
        size: ``(H, W)`` of the image, pixels.
        direction: ``horizontal``, ``vertical`` or ``diagonal``.
        version: convention of the result.

    Returns:
        ``(N, 5)`` in ``version``, same dtype and device.

    Raises:
        ValueError: on a wrong shape of ``obbs``, a ``size`` that is not two numbers, or an
            unknown ``direction`` or ``version``.
    """
    _check_direction(direction)
    _check_version(version)
    obbs = _rows(obbs, 5, "obbs")
    height, width = _size(size)
    cx, cy, w, h, theta = obbs.unbind(1)
    if direction in ("horizontal", "diagonal"):
        cx = width - cx
    if direction in ("vertical", "diagonal"):
        cy = height - cy
    if direction != "diagonal":
        theta = -theta
    return regularize_obb(torch.stack([cx, cy, w, h, theta], dim=1), version)


def poly_flip(polys: Tensor, size: tuple[int, int], direction: str) -> Tensor:
    """Polygons of a flipped image (see :func:`obb_flip`): each vertex mirrored, order kept.

    A mirror reverses the polygon's orientation (a clockwise polygon becomes counter-clockwise
    under a horizontal or vertical flip).

    Args:
        polys: ``(N, 8)`` ``x1 y1 ... x4 y4``, pixels.
        size: ``(H, W)`` of the image, pixels.
        direction: ``horizontal``, ``vertical`` or ``diagonal``.

    Returns:
        ``(N, 8)``, same dtype and device.

    Raises:
        ValueError: on a wrong shape of ``polys``, a ``size`` that is not two numbers or an
            unknown ``direction``.
    """
    _check_direction(direction)
    polys = _rows(polys, 8, "polys")
    height, width = _size(size)
    x, y = polys[:, 0::2], polys[:, 1::2]
    if direction in ("horizontal", "diagonal"):
        x = width - x
    if direction in ("vertical", "diagonal"):
        y = height - y
    return torch.stack([x, y], dim=2).reshape(-1, 8)


def obb_rot90(obbs: Tensor, size: tuple[int, int], k: int, version: str = "le90") -> Tensor:
    """Oriented boxes of an image turned by ``k`` quarter turns as ``torch.rot90(image, k, dims=(-2, -1))``.

    ``torch.rot90`` with ``k = 1`` turns the image counter-clockwise on screen (like
    ``np.rot90``): the ``H × W`` image becomes ``W × H`` and a point ``(x, y)`` goes to ``(y,
    W - x)``, so a box's centre moves likewise and ``θ → θ - π/2`` (``θ`` is clockwise on
    screen). ``k`` may be any integer (negative: clockwise), taken modulo 4.

    Args:
        obbs: ``(N, 5)`` ``(cx, cy, w, h, θ)``, pixels and radians.
        size: ``(H, W)`` of the image before the turn, pixels.
        k: the number of quarter turns.
        version: convention of the result.

    Returns:
        ``(N, 5)`` in ``version``, same dtype and device.

    Raises:
        ValueError: on a wrong shape of ``obbs``, a ``size`` that is not two numbers or an
            unknown ``version``.
    """
    _check_version(version)
    obbs = _rows(obbs, 5, "obbs")
    height, width = _size(size)
    cx, cy, w, h, theta = obbs.unbind(1)
    for _ in range(int(k) % 4):
        cx, cy, theta = cy, width - cx, theta - _HALF_PI
        height, width = width, height
    return regularize_obb(torch.stack([cx, cy, w, h, theta], dim=1), version)


def poly_rot90(polys: Tensor, size: tuple[int, int], k: int) -> Tensor:
    """Polygons of an image turned as ``torch.rot90(image, k, dims=(-2, -1))`` (see :func:`obb_rot90`).

    Each vertex ``(x, y)`` goes to ``(y, W - x)`` per quarter turn; the vertex order is kept.

    Args:
        polys: ``(N, 8)`` ``x1 y1 ... x4 y4``, pixels.
        size: ``(H, W)`` of the image before the turn, pixels.
        k: the number of quarter turns (any integer, modulo 4; ``1``: counter-clockwise on
            screen).

    Returns:
        ``(N, 8)``, same dtype and device.

    Raises:
        ValueError: on a wrong shape of ``polys`` or a ``size`` that is not two numbers.
    """
    polys = _rows(polys, 8, "polys")
    height, width = _size(size)
    x, y = polys[:, 0::2], polys[:, 1::2]
    for _ in range(int(k) % 4):
        x, y = y, width - x
        height, width = width, height
    return torch.stack([x, y], dim=2).reshape(-1, 8)
