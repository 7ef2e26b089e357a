"""Horizontal anchors of the oriented RPN, one grid per pyramid level.

Oriented R-CNN's RPN (Xie et al., ICCV 2021, §3, "Oriented RPN") keeps the horizontal anchors of Faster
R-CNN with FPN (Ren et al., NeurIPS 2015; Lin et al., CVPR 2017): at every location of a
level of stride ``s``, one anchor per aspect ratio, of area ``(scale · s)²`` — three ratios
and one scale (8) per level in the paper, i.e. 32 px anchors at stride 4 up to 512 px at
stride 64. Anchors are centred on the grid points ``(j · s, i · s)`` (pixels), as in mmdet's
anchor generator without a centre offset.

.. versionadded:: 0.3
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["base_anchors", "grid_anchors", "inside_image"]


def base_anchors(stride: int, scales: Sequence[float], ratios: Sequence[float]) -> Tensor:
    """The anchors of one grid point of a level, centred on the origin.

    An anchor of scale ``k`` and ratio ``r = h / w`` has area ``(k · stride)²``:
    ``w = k · stride / sqrt(r)``, ``h = k · stride · sqrt(r)`` (pixels).

    Args:
        stride: the level's stride, pixels.
        scales: anchor sizes in units of the stride (8 in the paper).
        ratios: height/width ratios (0.5, 1, 2 in the paper).

    Returns:
        ``(len(ratios) · len(scales), 4)`` float32 xyxy pixels, ratio-major (all scales of the
        first ratio first).

    Raises:
        ValueError: on an empty or non-positive scale or ratio list.
    """
    if not scales or not ratios or min(scales) <= 0 or min(ratios) <= 0:
        raise ValueError(f"anchor scales and ratios must be positive, got {list(scales)} and {list(ratios)}")
    out = []
    for r in ratios:
        for k in scales:
            w, h = k * stride / math.sqrt(r), k * stride * math.sqrt(r)
            out.append([-w / 2, -h / 2, w / 2, h / 2])
    return torch.tensor(out, dtype=torch.float32)


def grid_anchors(
    shapes: Sequence[tuple[int, int]],
    strides: Sequence[int],
    scales: Sequence[float],
    ratios: Sequence[float],
    device: torch.device | str | None = None,
) -> list[Tensor]:
    """Anchors of every location of every level.

    The order matches a ``(B, A · c, H, W)`` head output permuted to ``(B, H, W, A, c)`` and
    flattened: row-major locations, then the ``A = len(ratios) · len(scales)`` anchors of a
    location (see :func:`base_anchors`).

    Args:
        shapes: ``(H_l, W_l)`` of each level's map.
        strides: each level's stride, pixels.
        scales: anchor sizes in units of the stride.
        ratios: height/width ratios.
        device: where to create them.

    Returns:
        Per level, ``(H_l · W_l · A, 4)`` float32 xyxy pixels.
    """
    out = []
    for (h, w), s in zip(shapes, strides, strict=True):
        base = base_anchors(int(s), scales, ratios).to(device)
        ys = torch.arange(h, device=device, dtype=torch.float32) * s
        xs = torch.arange(w, device=device, dtype=torch.float32) * s
        yy, xx = torch.meshgrid(ys, xs, indexing="ij")
        shifts = torch.stack([xx, yy, xx, yy], dim=-1).reshape(-1, 1, 4)
        out.append((shifts + base[None]).reshape(-1, 4))
    return out


def inside_image(anchors: Tensor, size: tuple[int, int], allowed_border: int = 0) -> Tensor:
    """Which anchors lie inside an image (the RPN trains on those only).

    Args:
        anchors: ``(N, 4)`` xyxy pixels.
        size: the image's ``(H, W)`` before padding, pixels.
        allowed_border: how far an anchor may reach outside the image, pixels (mmdet's
            ``allowed_border``: 0 in Faster/Oriented R-CNN); negative: every anchor counts.

    Returns:
        ``(N,)`` bool.
    """
    if allowed_border < 0:
        return torch.ones(len(anchors), dtype=torch.bool, device=anchors.device)
    h, w = size
    b = float(allowed_border)
    return (anchors[:, 0] >= -b) & (anchors[:, 1] >= -b) & (anchors[:, 2] < w + b) & (anchors[:, 3] < h + b)
