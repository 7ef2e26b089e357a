"""Box coders of Oriented R-CNN: regression targets of the oriented RPN and of the rotated RoI head.

Boxes are ``(cx, cy, w, h, θ)`` in pixels and radians, ``le90`` (``w`` the long side, ``θ``
in ``[-π/2, π/2)``, the ``w`` side along ``(cos θ, sin θ)`` in image coordinates, ``y``
down: :mod:`rsfm.ops.obb`). Box arithmetic runs in float32 whatever the inputs' dtype (float64
for float64 inputs).

- :class:`MidpointOffsetCoder`: the oriented RPN's six deltas of an oriented box against a
  horizontal anchor, the *midpoint offset representation* (Xie et al., "Oriented R-CNN for
  Object Detection", ICCV 2021, §3, "Oriented RPN" and "Midpoint Offset Representation").
- :class:`DeltaXYWHTCoder`: the RoI head's five deltas of an oriented box against an
  oriented proposal (centre offsets in the proposal's own frame, log size ratios, angle
  difference), the regression of Oriented R-CNN's second stage (§3, "Oriented R-CNN Head"),
  as mmrotate's ``DeltaXYWHAOBBoxCoder`` configures it for Oriented R-CNN.

.. versionadded:: 0.3
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from rsfm.ops.obb import norm_angle, obb2poly, regularize_obb

__all__ = ["DeltaXYWHTCoder", "MidpointOffsetCoder"]

#: the largest |log| size ratio a decoded box may have against its reference (mmdet's
#: ``wh_ratio_clip`` of 16/1000: a box at most 62.5 times larger or smaller)
MAX_LOG_RATIO = abs(math.log(16 / 1000))


def _wide(x: Tensor) -> Tensor:
    """``x`` in float32, or float64 if it is float64 (half precision is too coarse for box arithmetic)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


class MidpointOffsetCoder:
    """Oriented boxes as six deltas against horizontal anchors: the midpoint offset representation.

    Xie et al., ICCV 2021, §3 ("Midpoint Offset Representation"). An oriented box is
    described by its enclosing horizontal box ``(x, y, w, h)`` and two offsets ``(Δα, Δβ)``:
    the top vertex of the oriented box lies at ``x + Δα`` on the top side of the horizontal
    box and its right vertex at ``y + Δβ`` on its right side (the other two vertices are
    their reflections through the centre). The
    deltas against an anchor ``(x_a, y_a, w_a, h_a)`` are::

        δx = (x - x_a) / w_a,  δy = (y - y_a) / h_a,  δw = log(w / w_a),  δh = log(h / h_a),
        δα = Δα / w,           δβ = Δβ / h

    each then normalised as ``(δ - mean) / std``. Decoding rebuilds the four vertices
    ``(x + Δα, y - h/2)``, ``(x + w/2, y + Δβ)``, ``(x - Δα, y + h/2)``, ``(x - w/2, y - Δβ)``, a
    parallelogram in general; its shorter diagonal is lengthened to the longer one's length,
    which makes it a rectangle (the paper's way to turn the prediction into an oriented box),
    returned as a ``le90`` box.

    Two vertices tie for the top (and two for the right) when a box is axis-aligned or within
    :attr:`TIE_PX` of it. The tie goes to the rightmost of the top vertices and the lowest of
    the right ones, as in the authors' OBBDetection and in mmrotate: every axis-aligned box is
    encoded ``δα = δβ = 0.5``, whichever of its sides is the longer. A rule that followed ``θ``
    instead (``0.5`` at ``θ = 0``, ``-0.5`` at ``θ = -π/2``; both decode to the same rectangle)
    gives near-square objects with nearly the same enclosing box opposite targets, and makes a
    car's target depend on whether it stands or lies; the RPN is pulled toward their mean,
    ``δα = δβ = 0``, which decodes to a square turned by 45° (seen on HIT-UAV, where half the
    boxes are axis-aligned, split between ``θ = 0`` and ``θ = -π/2``). ``δα``, ``δβ`` are
    clamped to ``[-0.5, 0.5]`` and ``δw``, ``δh`` to
    ``±log(1000/16)`` when decoding.

    Args:
        means: the six target means (0 in the paper's configuration).
        stds: the six target standard deviations (``1, 1, 1, 1, 0.5, 0.5`` in mmrotate's
            Oriented R-CNN configuration).

    Raises:
        ValueError: unless six means and six positive stds are given.

    .. versionchanged:: 0.3.1
       The tie of an axis-aligned box is broken by position, no longer by ``θ``.
    """

    #: how close two vertices' coordinates must be to tie for the top or right vertex, pixels
    TIE_PX = 0.1

    def __init__(
        self,
        means: Sequence[float] = (0.0,) * 6,
        stds: Sequence[float] = (1.0, 1.0, 1.0, 1.0, 0.5, 0.5),
    ) -> None:
        if len(means) != 6 or len(stds) != 6 or min(stds) <= 0:
            raise ValueError(f"MidpointOffsetCoder needs 6 means and 6 positive stds, got {means}, {stds}")
        self.means, self.stds = tuple(float(m) for m in means), tuple(float(s) for s in stds)

    def encode(self, anchors: Tensor, obbs: Tensor) -> Tensor:
        """Deltas that turn horizontal anchors into oriented boxes.

        Args:
            anchors: ``(N, 4)`` xyxy pixels.
            obbs: ``(N, 5)`` oriented boxes (any angle convention; regularised to ``le90``).

        Returns:
            ``(N, 6)`` float32 (float64 for float64 inputs) normalised ``(δx, δy, δw, δh, δα, δβ)``.
        """
        a, g = _wide(anchors), _wide(obbs)
        ax, ay = (a[:, 0] + a[:, 2]) / 2, (a[:, 1] + a[:, 3]) / 2
        aw, ah = a[:, 2] - a[:, 0], a[:, 3] - a[:, 1]
        g = regularize_obb(g, "le90")
        gx, gy = g[:, 0], g[:, 1]
        # the vertices' offsets from the centre: the corners of the box moved to the origin
        vx, vy = obb2poly(torch.cat([torch.zeros_like(g[:, :2]), g[:, 2:]], dim=1)).reshape(-1, 4, 2).unbind(-1)
        gw = 2 * vx.amax(dim=1)  # the enclosing horizontal box's width
        gh = 2 * vy.amax(dim=1)  # and height
        lowest = torch.finfo(vx.dtype).min
        # top vertex: the rightmost of those within TIE_PX of the least y; right vertex: the lowest
        # (largest y) of those within TIE_PX of the largest x
        top_dx = torch.where(vy <= vy.amin(dim=1, keepdim=True) + self.TIE_PX, vx, lowest).amax(dim=1)
        right_dy = torch.where(vx >= vx.amax(dim=1, keepdim=True) - self.TIE_PX, vy, lowest).amax(dim=1)
        deltas = torch.stack(
            [
                (gx - ax) / aw,
                (gy - ay) / ah,
                torch.log(gw / aw),
                torch.log(gh / ah),
                top_dx / gw,
                right_dy / gh,
            ],
            dim=-1,
        )
        return (deltas - deltas.new_tensor(self.means)) / deltas.new_tensor(self.stds)

    def decode(self, anchors: Tensor, deltas: Tensor) -> Tensor:
        """Oriented boxes from horizontal anchors and deltas (the rectangle of the decoded parallelogram).

        Args:
            anchors: ``(N, 4)`` xyxy pixels.
            deltas: ``(N, 6)`` normalised deltas (any float dtype).

        Returns:
            ``(N, 5)`` float32 (float64 for float64 inputs) ``le90`` boxes, pixels and radians.
        """
        a = _wide(anchors)
        d = _wide(deltas) * a.new_tensor(self.stds) + a.new_tensor(self.means)
        ax, ay = (a[:, 0] + a[:, 2]) / 2, (a[:, 1] + a[:, 3]) / 2
        aw, ah = a[:, 2] - a[:, 0], a[:, 3] - a[:, 1]
        gx, gy = ax + d[:, 0] * aw, ay + d[:, 1] * ah
        gw = aw * d[:, 2].clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO).exp()
        gh = ah * d[:, 3].clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO).exp()
        alpha = d[:, 4].clamp(-0.5, 0.5) * gw  # top vertex: (gx + alpha, gy - gh/2)
        beta = d[:, 5].clamp(-0.5, 0.5) * gh  # right vertex: (gx + gw/2, gy + beta)
        # half-diagonals from the centre to the top and right vertices (the bottom and left ones mirror them)
        top = torch.stack([alpha, -gh / 2], dim=-1)
        right = torch.stack([gw / 2, beta], dim=-1)
        top_len, right_len = top.norm(dim=-1, keepdim=True), right.norm(dim=-1, keepdim=True)
        half = torch.maximum(top_len, right_len)  # lengthen the shorter diagonal: a rectangle
        u_top, u_right = top / top_len.clamp_min(1e-12), right / right_len.clamp_min(1e-12)
        side1 = half * (u_right - u_top)  # top vertex -> right vertex
        side2 = half * (-u_top - u_right)  # right vertex -> bottom vertex
        len1, len2 = side1.norm(dim=-1), side2.norm(dim=-1)
        long = torch.where((len1 >= len2)[:, None], side1, side2)
        theta = norm_angle(torch.atan2(long[:, 1], long[:, 0]), "le90")
        return torch.stack([gx, gy, torch.maximum(len1, len2), torch.minimum(len1, len2), theta], dim=-1)


class DeltaXYWHTCoder:
    """Oriented boxes as five deltas against oriented proposals (the RoI head's regression).

    For a proposal ``(x_p, y_p, w_p, h_p, θ_p)`` and a target ``(x, y, w, h, θ)``, both
    ``le90``::

        δx = ( cos θ_p (x - x_p) + sin θ_p (y - y_p)) / w_p     (the centre offset in the
        δy = (-sin θ_p (x - x_p) + cos θ_p (y - y_p)) / h_p      proposal's own frame)
        δw = log(w' / w_p),  δh = log(h' / h_p),  δθ = θ' - θ_p

    where ``(w', h', θ')`` is the target written as ``(w, h, θ)`` or as the equivalent
    ``(h, w, θ + π/2)``, whichever turns less from the proposal (``δθ`` wrapped into
    ``[-π/2, π/2)``): the same box has one target however its sides are named (mmrotate's
    ``edge_swap`` and ``proj_xy``, the configuration of Oriented R-CNN). Deltas are
    normalised as ``(δ - mean) / std``. Decoding inverts this, clamps ``δw``, ``δh`` to
    ``±log(1000/16)`` and regularises the result to ``le90``.

    Args:
        means: the five target means (0).
        stds: the five target standard deviations (``0.1, 0.1, 0.2, 0.2, 0.1``).

    Raises:
        ValueError: unless five means and five positive stds are given.
    """

    def __init__(
        self,
        means: Sequence[float] = (0.0,) * 5,
        stds: Sequence[float] = (0.1, 0.1, 0.2, 0.2, 0.1),
    ) -> None:
        if len(means) != 5 or len(stds) != 5 or min(stds) <= 0:
            raise ValueError(f"DeltaXYWHTCoder needs 5 means and 5 positive stds, got {means}, {stds}")
        self.means, self.stds = tuple(float(m) for m in means), tuple(float(s) for s in stds)

    def encode(self, proposals: Tensor, obbs: Tensor) -> Tensor:
        """Deltas that turn oriented proposals into oriented targets.

        Args:
            proposals: ``(N, 5)`` ``le90`` boxes, pixels and radians.
            obbs: ``(N, 5)`` target boxes (any convention of the same boxes).

        Returns:
            ``(N, 5)`` float32 (float64 for float64 inputs) normalised ``(δx, δy, δw, δh, δθ)``.
        """
        px, py, pw, ph, pt = _wide(proposals).unbind(-1)
        gx, gy, gw, gh, gt = _wide(obbs).unbind(-1)
        cos, sin = torch.cos(pt), torch.sin(pt)
        dx = (cos * (gx - px) + sin * (gy - py)) / pw
        dy = (-sin * (gx - px) + cos * (gy - py)) / ph
        turn = norm_angle(gt - pt, "le90")
        turn_swapped = norm_angle(gt - pt + math.pi / 2, "le90")
        keep = turn.abs() <= turn_swapped.abs()
        w = torch.where(keep, gw, gh)
        h = torch.where(keep, gh, gw)
        dt = torch.where(keep, turn, turn_swapped)
        deltas = torch.stack([dx, dy, torch.log(w / pw), torch.log(h / ph), dt], dim=-1)
        return (deltas - deltas.new_tensor(self.means)) / deltas.new_tensor(self.stds)

    def decode(self, proposals: Tensor, deltas: Tensor) -> Tensor:
        """Oriented boxes from oriented proposals and deltas.

        Args:
            proposals: ``(N, 5)`` ``le90`` boxes, pixels and radians.
            deltas: ``(N, 5)`` normalised deltas (any float dtype).

        Returns:
            ``(N, 5)`` float32 (float64 for float64 inputs) ``le90`` boxes, pixels and radians.
        """
        px, py, pw, ph, pt = _wide(proposals).unbind(-1)
        d = _wide(deltas) * px.new_tensor(self.stds) + px.new_tensor(self.means)
        dx, dy = d[:, 0] * pw, d[:, 1] * ph
        cos, sin = torch.cos(pt), torch.sin(pt)
        gx = px + cos * dx - sin * dy
        gy = py + sin * dx + cos * dy
        gw = pw * d[:, 2].clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO).exp()
        gh = ph * d[:, 3].clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO).exp()
        return regularize_obb(torch.stack([gx, gy, gw, gh, pt + d[:, 4]], dim=-1), "le90")
