"""RoIAlignRotated: features of oriented boxes pooled to a fixed grid, in plain PyTorch.

The operator of rotated two-stage detectors (RoI Transformer, Oriented R-CNN), with the
semantics of MMCV's ``RoIAlignRotated`` (itself Detectron2's ``ROIAlignRotated``, the rotated
form of RoIAlign, He et al., "Mask R-CNN", ICCV 2017):

1. A RoI ``(b, cx, cy, w, h, θ)`` in input-image pixels is scaled by ``spatial_scale`` to the
   feature map; with ``aligned=True`` its centre is shifted by -0.5 (feature-map pixel
   centres are at integer + 0.5 coordinates), with ``aligned=False`` its sides are raised
   to at least 1 (legacy).
2. In the box's own frame (centre at 0, side ``w`` along the first axis) the box is cut into
   ``out_h × out_w`` bins; each bin holds ``grid_h × grid_w`` sample points, evenly spaced
   at the centres of a regular sub-grid: ``sampling_ratio`` per axis, or, with
   ``sampling_ratio=0``, ``ceil(h / out_h)`` and ``ceil(w / out_w)`` (feature pixels, so
   about one sample per pixel).
3. Sample ``(xx, yy)`` of the box frame lands at ``x = xx cos α + yy sin α + cx``, ``y = -xx
   sin α + yy cos α + cy`` of the map, where ``α = θ`` if ``clockwise=False`` and ``α = -θ`` if
   ``clockwise=True``.
4. Each sample is read by bilinear interpolation with RoIAlign's border rule: a sample with
   ``y < -1``, ``y > H``, ``x < -1`` or ``x > W`` reads 0; otherwise coordinates below 0 are
   raised to 0 and those at or past the last row/column read that row/column.
5. A bin's value is the mean of its samples (a bin without samples is 0).

Angle direction: with ``clockwise=False`` (MMCV's default) a positive ``θ`` turns the box's
first axis from x toward -y, counter-clockwise on screen. Boxes of :mod:`rsfm.ops.obb` turn
x toward +y (clockwise on screen), so they need ``clockwise=True``, as MMRotate's RoI
extractors set it.

Implementation: rois are grouped by their sample grid and processed in chunks. For a chunk,
the bilinear weights of all samples, divided by the samples per bin, form a sparse matrix
(one row per output bin, one column per feature-map pixel, 4 entries per sample), and the
output is its product with a channels-last copy of the map (``torch.sparse.mm``): no
``samples × channels`` temporaries, and autograd differentiates with respect to ``input``
(the transposed product). As in MMCV, there is no gradient with respect to the rois.

.. versionadded:: 0.3
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["RoIAlignRotated", "roi_align_rotated"]

#: interpolation weights (sparse entries) per chunk of rois, bounds the temporary memory
_CHUNK_ENTRIES = 1 << 22


def _output_size(output_size: int | tuple[int, int]) -> tuple[int, int]:
    """``(out_h, out_w)`` from an int or a pair; ValueError unless positive integers."""
    size = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)
    if len(size) != 2 or not all(isinstance(s, int) and s > 0 for s in size):
        raise ValueError(f"output_size must be a positive int or a pair of them, got {output_size!r}")
    return int(size[0]), int(size[1])


def _interpolation_matrix(
    x: Tensor, y: Tensor, base: Tensor, height: int, width: int, out_w: int, grid: tuple[int, int], columns: int
) -> Tensor:
    """The sparse matrix that averages bilinear samples into bins, with RoIAlign's border rule.

    Row ``r · out_h · out_w + bin`` of the result holds, for every sample of that bin of roi
    ``r``, its 4 bilinear weights divided by the samples per bin, at the columns of its 4
    neighbouring pixels ``batch · H · W + row · W + column``. A sample with ``y < -1``, ``y >
    H``, ``x < -1`` or ``x > W`` has zero weights (it reads 0); otherwise coordinates below 0 are
    raised to 0 and those at or past the last row/column read that row/column.

    Args:
        x: ``(R, out_h·gh, out_w·gw)`` sample x (columns; pixel centres at integers).
        y: ``(R, out_h·gh, out_w·gw)`` sample y (rows).
        base: ``(R,)`` int64 ``batch_index · H · W`` of each roi.
        height: ``H``.
        width: ``W``.
        out_w: bins along x.
        grid: ``(gh, gw)`` samples per bin along y and x.
        columns: ``N · H · W``.

    Returns:
        Sparse COO ``(R · out_h · out_w, N · H · W)``, coalesced, of ``x``'s dtype.
    """
    gh, gw = grid
    r, sy, sx = x.shape
    inside = ((y >= -1) & (y <= height) & (x >= -1) & (x <= width)).to(x.dtype)
    y, x = y.clamp(min=0), x.clamp(min=0)
    y0, x0 = y.floor().to(torch.int64), x.floor().to(torch.int64)
    last_y, last_x = y0 >= height - 1, x0 >= width - 1
    y0, x0 = y0.clamp(max=height - 1), x0.clamp(max=width - 1)
    y1 = torch.where(last_y, y0, y0 + 1)
    x1 = torch.where(last_x, x0, x0 + 1)
    ly = torch.where(last_y, 0.0, y - y0) * inside / (gh * gw)  # zero weights outside
    lx = torch.where(last_x, 0.0, x - x0)
    hy, hx = inside / (gh * gw) - ly, 1.0 - lx
    dev = x.device
    bins = (torch.arange(sy, device=dev) // gh)[:, None] * out_w + (torch.arange(sx, device=dev) // gw)[None, :]
    rows = (torch.arange(r, device=dev)[:, None, None] * ((sy // gh) * out_w) + bins).expand(r, sy, sx)
    base = base[:, None, None]
    cols = [base + yi * width + xi for yi, xi in ((y0, x0), (y0, x1), (y1, x0), (y1, x1))]
    vals = [hy * hx, hy * lx, ly * hx, ly * lx]
    index = torch.stack([rows.reshape(-1).repeat(4), torch.cat([c.reshape(-1) for c in cols])])
    size = (r * (sy // gh) * out_w, columns)
    m = torch.sparse_coo_tensor(index, torch.cat([v.reshape(-1) for v in vals]), size, check_invariants=False)
    return m.coalesce()


def roi_align_rotated(
    input: Tensor,
    rois: Tensor,
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = 0,
    aligned: bool = True,
    clockwise: bool = False,
) -> Tensor:
    """Rotated RoIAlign (MMCV's semantics, see the module docstring).

    Args:
        input: ``(N, C, H, W)`` float feature map, CPU or CUDA (sample positions are computed
            in float32, or float64 for a float64 map).
        rois: ``(K, 6)`` ``(batch_index, cx, cy, w, h, θ)``: the batch index in ``[0, N)``,
            the box in input-image pixels (scaled by ``spatial_scale``), ``θ`` in radians
            (see ``clockwise``).
        output_size: ``out`` or ``(out_h, out_w)``, bins.
        spatial_scale: feature-map pixels per input-image pixel (``1 / stride``).
        sampling_ratio: samples per bin along each axis; 0: ``ceil(side / bins)`` per roi.
        aligned: shift the box by -0.5 feature pixel (the pixel-centre convention); False is
            the legacy mode that also raises sides below 1 to 1.
        clockwise: True for angles that turn x toward y (clockwise on screen), as the
            boxes of :mod:`rsfm.ops.obb`; False (the default, as MMCV) for the opposite.

    Returns:
        ``(K, C, out_h, out_w)`` pooled features, ``input``'s dtype and device.

    Raises:
        ValueError: if ``input`` is not 4-D, ``rois`` not ``(K, 6)``, a batch index out of
            range, ``output_size`` not positive, or ``sampling_ratio`` negative.
    """
    if not isinstance(input, Tensor) or input.ndim != 4:
        raise ValueError(f"input must have shape (N, C, H, W), got {getattr(input, 'shape', type(input).__name__)}")
    if not isinstance(rois, Tensor) or rois.ndim != 2 or rois.shape[1] != 6:
        raise ValueError(f"rois must have shape (K, 6), got {getattr(rois, 'shape', type(rois).__name__)}")
    if int(sampling_ratio) < 0:
        raise ValueError(f"sampling_ratio must be >= 0, got {sampling_ratio}")
    out_h, out_w = _output_size(output_size)
    n, c, height, width = input.shape
    k = rois.shape[0]
    if k == 0:
        return input.new_zeros(0, c, out_h, out_w)
    geo = torch.promote_types(input.dtype, torch.float32)  # sample positions: float32 at least
    rois = rois.detach().to(device=input.device, dtype=geo)
    batch = rois[:, 0].round().to(torch.int64)
    if bool(((batch < 0) | (batch >= n)).any()):
        raise ValueError(f"rois[:, 0] must be batch indices in [0, {n}), got {rois[:, 0].unique().tolist()}")
    offset = 0.5 if aligned else 0.0
    cx = rois[:, 1] * spatial_scale - offset
    cy = rois[:, 2] * spatial_scale - offset
    rw, rh = rois[:, 3] * spatial_scale, rois[:, 4] * spatial_scale
    if not aligned:
        rw, rh = rw.clamp(min=1.0), rh.clamp(min=1.0)
    alpha = -rois[:, 5] if clockwise else rois[:, 5]
    cos, sin = torch.cos(alpha), torch.sin(alpha)
    if sampling_ratio > 0:
        grid_h = torch.full((k,), int(sampling_ratio), dtype=torch.int64, device=input.device)
        grid_w = grid_h
    else:
        grid_h = torch.ceil(rh / out_h).clamp(min=0).to(torch.int64)
        grid_w = torch.ceil(rw / out_w).clamp(min=0).to(torch.int64)
    # autocast off: the sparse products run in float32 (or float64) whatever the region says
    with torch.autocast(input.device.type, enabled=False):
        out = _pool(input, cx, cy, rw, rh, cos, sin, grid_h, grid_w, batch, out_h, out_w, geo)
    return out.to(input.dtype)


def _pool(
    input: Tensor,
    cx: Tensor,
    cy: Tensor,
    rw: Tensor,
    rh: Tensor,
    cos: Tensor,
    sin: Tensor,
    grid_h: Tensor,
    grid_w: Tensor,
    batch: Tensor,
    out_h: int,
    out_w: int,
    geo: torch.dtype,
) -> Tensor:
    """The pooling of :func:`roi_align_rotated` once the rois are in map pixels, ``(K, C, out_h, out_w)`` in ``geo``."""
    n, c, height, width = input.shape
    # channels last, in the sample dtype (sparse products need float32 or float64)
    feat = input.permute(0, 2, 3, 1).reshape(n * height * width, c).to(geo)
    base = batch * (height * width)
    pieces, order = [], []
    pairs = torch.stack([grid_h, grid_w], dim=1)
    for gh, gw in torch.unique(pairs, dim=0).tolist():
        sel = ((grid_h == gh) & (grid_w == gw)).nonzero(as_tuple=True)[0]
        if gh == 0 or gw == 0:
            pieces.append(feat.new_zeros(len(sel), c, out_h, out_w))
            order.append(sel)
            continue
        # sample positions along each axis of the box, in bins: (i + (j + 0.5) / grid)
        fy = (torch.arange(out_h * gh, device=input.device, dtype=geo) + 0.5) / gh
        fx = (torch.arange(out_w * gw, device=input.device, dtype=geo) + 0.5) / gw
        step = max(1, _CHUNK_ENTRIES // (4 * out_h * gh * out_w * gw))
        for s in range(0, len(sel), step):
            r = sel[s : s + step]
            yy = (-rh[r, None] / 2 + rh[r, None] / out_h * fy)[:, :, None]  # (R, out_h·gh, 1)
            xx = (-rw[r, None] / 2 + rw[r, None] / out_w * fx)[:, None, :]  # (R, 1, out_w·gw)
            co, si = cos[r, None, None], sin[r, None, None]
            x = xx * co + yy * si + cx[r, None, None]
            y = yy * co - xx * si + cy[r, None, None]
            m = _interpolation_matrix(x, y, base[r], height, width, out_w, (gh, gw), n * height * width)
            vals = torch.sparse.mm(m, feat)  # (R · out_h · out_w, C)
            pieces.append(vals.view(len(r), out_h, out_w, c).permute(0, 3, 1, 2))
            order.append(r)
    out = torch.cat(pieces)
    return out[torch.argsort(torch.cat(order))]


class RoIAlignRotated(nn.Module):
    """:func:`roi_align_rotated` as a module (no parameters).

    Args:
        output_size: ``out`` or ``(out_h, out_w)``, bins.
        spatial_scale: feature-map pixels per input-image pixel (``1 / stride``).
        sampling_ratio: samples per bin along each axis; 0: adaptive.
        aligned: the -0.5 pixel-centre shift (see :func:`roi_align_rotated`).
        clockwise: True for :mod:`rsfm.ops.obb` angles (x toward y).
    """

    def __init__(
        self,
        output_size: int | tuple[int, int],
        spatial_scale: float,
        sampling_ratio: int = 0,
        aligned: bool = True,
        clockwise: bool = False,
    ) -> None:
        super().__init__()
        self.output_size = _output_size(output_size)
        if int(sampling_ratio) < 0:
            raise ValueError(f"sampling_ratio must be >= 0, got {sampling_ratio}")
        if not (math.isfinite(spatial_scale) and spatial_scale > 0):
            raise ValueError(f"spatial_scale must be a positive number, got {spatial_scale}")
        self.spatial_scale = float(spatial_scale)
        self.sampling_ratio = int(sampling_ratio)
        self.aligned = bool(aligned)
        self.clockwise = bool(clockwise)

    def forward(self, input: Tensor, rois: Tensor) -> Tensor:
        """``(N, C, H, W)`` map and ``(K, 6)`` rois → ``(K, C, out_h, out_w)``."""
        return roi_align_rotated(
            input, rois, self.output_size, self.spatial_scale, self.sampling_ratio, self.aligned, self.clockwise
        )

    def extra_repr(self) -> str:
        """The options, for ``print(module)``."""
        return (
            f"output_size={self.output_size}, spatial_scale={self.spatial_scale}, "
            f"sampling_ratio={self.sampling_ratio}, aligned={self.aligned}, clockwise={self.clockwise}"
        )
