"""RoIAlignRotated (rsfm.ops.roi_align_rotated): torchvision's RoIAlign at θ = 0, hand-computed samples, gradients."""

from __future__ import annotations

import math

import pytest
import torch
from torchvision.ops import roi_align

from rsfm.ops import roi_align_rotated as rar
from rsfm.ops.roi_align_rotated import RoIAlignRotated, roi_align_rotated

PI = math.pi

#: (batch, x1, y1, x2, y2) in image pixels; several cross the border of a 52 x 68 image (stride 4: 13 x 17)
XYXY = torch.tensor(
    [
        [0, -12.0, -8.0, 20.0, 28.0],
        [1, 9.2, 16.4, 79.0, 47.3],
        [0, 40.0, 20.0, 70.0, 60.0],
        [1, 0.0, 0.0, 8.0, 8.0],
        [0, 30.5, 10.25, 31.5, 12.0],
        [1, 60.0, 44.0, 90.0, 70.0],
    ],
    dtype=torch.float64,
)


def as_rotated(xyxy: torch.Tensor, theta: float = 0.0) -> torch.Tensor:
    b, x1, y1, x2, y2 = xyxy.unbind(1)
    return torch.stack([b, (x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1, torch.full_like(b, theta)], 1)


def feature_map(scale: float) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.rand(2, 3, round(52 * scale), round(68 * scale), generator=g, dtype=torch.float64)


@pytest.mark.parametrize("sampling_ratio", [0, 1, 2, 3])
@pytest.mark.parametrize("scale", [1.0, 0.5, 0.25])
@pytest.mark.parametrize("output_size", [(3, 5), 7])
def test_axis_aligned_boxes_equal_torchvision_roi_align(sampling_ratio: int, scale: float, output_size) -> None:
    x = feature_map(scale)
    ref = roi_align(x, XYXY, output_size, scale, sampling_ratio, aligned=True)
    for clockwise in (False, True):
        out = roi_align_rotated(x, as_rotated(XYXY), output_size, scale, sampling_ratio, True, clockwise)
        torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize("sampling_ratio", [0, 2])
def test_legacy_unaligned_mode_equals_torchvision(sampling_ratio: int) -> None:
    x = feature_map(0.5)
    boxes = XYXY[:4]  # sides of at least 1 feature pixel, where both raise nothing
    ref = roi_align(x, boxes, (3, 3), 0.5, sampling_ratio, aligned=False)
    out = roi_align_rotated(x, as_rotated(boxes), (3, 3), 0.5, sampling_ratio, aligned=False)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)


def test_half_turn_reverses_the_bins() -> None:
    x = feature_map(0.25)
    boxes = XYXY + torch.tensor([0, 0.3, 0.3, 0.3, 0.3], dtype=torch.float64)  # no sample exactly at x = -1
    ref = roi_align(x, boxes, (3, 4), 0.25, 2, aligned=True)
    out = roi_align_rotated(x, as_rotated(boxes, PI), (3, 4), 0.25, 2)
    torch.testing.assert_close(out, ref.flip(-1, -2), rtol=0, atol=1e-12)


def test_quarter_turn_on_a_ramp_by_hand() -> None:
    # value 10·row + column at pixel centres (row + 0.5, column + 0.5): bilinear sampling is exact on it
    img = (torch.arange(8.0)[:, None] * 10 + torch.arange(8.0)[None, :])[None, None]
    # a 4 x 2 box centred at (4, 4), θ = π/2: its w axis points down the image (clockwise=True)
    roi = torch.tensor([[0.0, 4.0, 4.0, 4.0, 2.0, PI / 2]])
    # 1 x 2 bins, one sample each, at ±1 along w: pixel coordinates (3.5, 2.5) and (3.5, 4.5)
    out = roi_align_rotated(img, roi, (1, 2), 1.0, 1, aligned=True, clockwise=True)
    torch.testing.assert_close(out, torch.tensor([[[[10 * 2.5 + 3.5, 10 * 4.5 + 3.5]]]]))
    # clockwise=False (MMCV's default): the same angle turns the w axis up the image
    out = roi_align_rotated(img, roi, (1, 2), 1.0, 1, aligned=True, clockwise=False)
    torch.testing.assert_close(out, torch.tensor([[[[48.5, 28.5]]]]))
    # two samples per bin along each axis, 2 x 1 bins: bin (i, 0) averages 4 samples
    # along h (now -x) at yy = ±0.5 → x = 3.5 ∓ 0.5; along w (+y) at xx ∈ {-1.5, -0.5} / {0.5, 1.5}
    out = roi_align_rotated(img, roi, (2, 1), 1.0, 2, aligned=True, clockwise=True)
    # rows (first bin index) run along h, which points to -x: bin 0 at x = 4.0, bin 1 at x = 3.0 (means)
    torch.testing.assert_close(out, torch.tensor([[[[10 * 3.5 + 4.0], [10 * 3.5 + 3.0]]]]))


def test_border_rule_by_hand() -> None:
    img = (torch.arange(4.0)[:, None] * 10 + torch.arange(4.0)[None, :])[None, None]  # 4 x 4
    # single samples (1 x 1 box, one bin, one sample) at chosen pixel coordinates (aligned: centre - 0.5)
    cases = [
        ((-0.5, 1.0), 10.0),  # x in [-1, 0): raised to column 0
        ((-1.5, 1.0), 0.0),  # x < -1: 0
        ((3.7, 2.0), 23.0),  # past the last column (x > W - 1): reads it
        ((4.0, 2.0), 23.0),  # x == W: still inside
        ((4.2, 2.0), 0.0),  # x > W: 0
        ((1.25, 2.5), 26.25),  # inside: bilinear
    ]
    rois = torch.tensor([[0.0, x + 0.5, y + 0.5, 1.0, 1.0, 0.3] for (x, y), _ in cases])
    rois[:, 3:5] = 1e-6  # a point-like box: the sample is at its centre whatever θ
    out = roi_align_rotated(img, rois, 1, 1.0, 1)
    torch.testing.assert_close(out.flatten(), torch.tensor([v for _, v in cases]), atol=1e-4, rtol=0)


def test_adaptive_grid_groups_and_chunks_keep_roi_order(monkeypatch: pytest.MonkeyPatch) -> None:
    x = feature_map(0.5)
    g = torch.Generator().manual_seed(3)
    n = 40
    rois = torch.cat(
        [
            torch.randint(2, (n, 1), generator=g).double(),
            torch.rand(n, 2, generator=g, dtype=torch.float64) * 70,
            torch.rand(n, 2, generator=g, dtype=torch.float64) * 40 + 0.5,
            (torch.rand(n, 1, generator=g, dtype=torch.float64) - 0.5) * 2 * PI,
        ],
        1,
    )
    out = roi_align_rotated(x, rois, (3, 4), 0.5, 0, clockwise=True)
    one_by_one = torch.cat([roi_align_rotated(x, r[None], (3, 4), 0.5, 0, clockwise=True) for r in rois])
    torch.testing.assert_close(out, one_by_one, rtol=0, atol=1e-12)
    monkeypatch.setattr(rar, "_CHUNK_ENTRIES", 50)
    torch.testing.assert_close(roi_align_rotated(x, rois, (3, 4), 0.5, 0, clockwise=True), out, rtol=0, atol=1e-12)


def test_gradcheck() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 2, 4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    rois = torch.tensor(
        [[0, 3.0, 2.5, 4.0, 2.0, 0.4], [1, 1.0, 4.0, 5.0, 3.0, -1.2], [0, 5.5, 0.5, 3.0, 3.0, 2.0]], dtype=torch.float64
    )
    assert torch.autograd.gradcheck(lambda t: roi_align_rotated(t, rois, (2, 2), 1.0, 2, clockwise=True), (x,))
    assert torch.autograd.gradcheck(lambda t: roi_align_rotated(t, rois, 2, 0.8, 0), (x,))
    out = roi_align_rotated(x, rois.requires_grad_(), 2, 1.0, 2)
    out.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert rois.grad is None  # as MMCV: no gradient for the rois


def test_bf16_autocast_forward_and_backward() -> None:
    # the op runs in float32 inside an autocast region (mixed-precision training), as mmcv's force_fp32
    g = torch.Generator().manual_seed(0)
    feat = torch.rand(1, 4, 20, 24, generator=g, requires_grad=True)
    rois = torch.tensor([[0, 10.0, 9.0, 8.0, 5.0, 0.6], [0, 5.0, 12.0, 6.0, 6.0, -1.2]])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = roi_align_rotated(feat, rois, 3, 1.0, 2)
        out.sum().backward()
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, roi_align_rotated(feat, rois, 3, 1.0, 2))
    assert feat.grad is not None and torch.isfinite(feat.grad).all() and feat.grad.abs().sum() > 0
    half = feat.detach().bfloat16().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = roi_align_rotated(half, rois, 3, 1.0, 2)
        out.float().sum().backward()
    assert out.dtype == torch.bfloat16 and half.grad is not None and half.grad.dtype == torch.bfloat16


def test_module_empty_and_errors() -> None:
    x = feature_map(0.25).float()
    m = RoIAlignRotated(7, 0.25, 2, clockwise=True)
    assert "clockwise=True" in repr(m)
    rois = as_rotated(XYXY, 0.7).float()
    torch.testing.assert_close(m(x, rois), roi_align_rotated(x, rois, 7, 0.25, 2, clockwise=True))
    assert m(x, rois).dtype == torch.float32
    assert m(x, torch.zeros(0, 6)).shape == (0, 3, 7, 7)
    with pytest.raises(ValueError, match="input"):
        roi_align_rotated(x[0], rois, 7)
    with pytest.raises(ValueError, match="rois"):
        roi_align_rotated(x, rois[:, :5], 7)
    with pytest.raises(ValueError, match="batch"):
        roi_align_rotated(x, rois + torch.tensor([5.0, 0, 0, 0, 0, 0]), 7)
    with pytest.raises(ValueError, match="output_size"):
        roi_align_rotated(x, rois, (7, 0))
    with pytest.raises(ValueError, match="sampling_ratio"):
        RoIAlignRotated(7, 0.25, -1)
    with pytest.raises(ValueError, match="spatial_scale"):
        RoIAlignRotated(7, 0.0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu() -> None:
    x = feature_map(0.25).float()
    rois = as_rotated(XYXY, 0.7).float()
    cpu = roi_align_rotated(x, rois, 7, 0.25, 0, clockwise=True)
    xg = x.cuda().requires_grad_()
    gpu = roi_align_rotated(xg, rois.cuda(), 7, 0.25, 0, clockwise=True)
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-5, atol=1e-5)
    gpu.sum().backward()
    xc = x.clone().requires_grad_()
    roi_align_rotated(xc, rois, 7, 0.25, 0, clockwise=True).sum().backward()
    torch.testing.assert_close(xg.grad.cpu(), xc.grad, rtol=1e-4, atol=1e-5)
