"""Exact rotated IoU (rsfm.ops.rotated_iou) against shapely's polygon intersection."""

from __future__ import annotations

import math

import numpy as np
import pytest
import shapely
import torch

from rsfm.ops import rotated_iou
from rsfm.ops.obb import obb2poly, regularize_obb
from rsfm.ops.rotated_iou import box_iou_rotated

PI = math.pi


def shapely_overlaps(boxes1: torch.Tensor, boxes2: torch.Tensor, mode: str = "iou") -> np.ndarray:
    """Aligned IoU (or IoF) of box pairs by shapely, float64."""
    p1 = shapely.polygons(obb2poly(boxes1.double()).reshape(-1, 4, 2).numpy())
    p2 = shapely.polygons(obb2poly(boxes2.double()).reshape(-1, 4, 2).numpy())
    inter = shapely.area(shapely.intersection(p1, p2))
    a1, a2 = shapely.area(p1), shapely.area(p2)
    denom = a1 if mode == "iof" else a1 + a2 - inter
    return np.where(denom > 0, inter / np.where(denom > 0, denom, 1.0), 0.0)


def pair_cases(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, dict[str, slice]]:
    """2,400 aligned pairs of float64 boxes in named groups of 300."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.rand(*shape, generator=g, dtype=torch.float64)

    def boxes(n, span=30.0):
        return torch.cat([rand(n, 2) * span, rand(n, 2) * 20 + 0.5, (rand(n, 1) - 0.5) * 4 * PI], 1)

    n = 300
    groups = {}
    a_list, b_list = [], []

    def add(name, a, b):
        start = sum(len(x) for x in a_list)
        a_list.append(a)
        b_list.append(b)
        groups[name] = slice(start, start + len(a))

    add("random", boxes(n), boxes(n))
    a = boxes(n)
    add("identical", a, a.clone())
    a = boxes(n)
    add("same box another convention", a, regularize_obb(a, "oc"))
    a = boxes(n)
    b = a.clone()
    b[:, 2:4] *= rand(n, 2) * 0.9 + 0.05  # nested: same centre and angle, smaller sides
    add("nested", a, b)
    a = boxes(n)
    b = a.clone()
    b[:, 2:4] *= 0.3
    b[:, 4] = rand(n) * PI  # a small box at the same centre, any angle (mostly nested)
    add("nested turned", a, b)
    a = boxes(n)
    b = boxes(n)
    b[:, :2] = a[:, :2] + 200.0
    add("disjoint", a, b)
    # touching: b is a shifted along its w axis by exactly (w_a + w_b) / 2, same angle and h
    a = boxes(n)
    b = a.clone()
    b[:, 2] = rand(n) * 10 + 1
    shift = (a[:, 2] + b[:, 2]) / 2
    b[:, 0] += shift * a[:, 4].cos()
    b[:, 1] += shift * a[:, 4].sin()
    add("touching", a, b)
    # partly overlapping along a shared edge line (collinear edges)
    a = boxes(n)
    b = a.clone()
    frac = rand(n) * 0.8 + 0.1
    b[:, 0] += frac * a[:, 2] * a[:, 4].cos()
    b[:, 1] += frac * a[:, 2] * a[:, 4].sin()
    add("shifted along an edge", a, b)
    return torch.cat(a_list), torch.cat(b_list), groups


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("mode", ["iou", "iof"])
def test_aligned_against_shapely(dtype: torch.dtype, mode: str) -> None:
    a, b, groups = pair_cases()
    assert len(a) >= 2000
    ref = shapely_overlaps(a, b, mode)
    got = box_iou_rotated(a.to(dtype), b.to(dtype), aligned=True, mode=mode)
    assert got.dtype == dtype and got.shape == (len(a),)
    assert got.isfinite().all()
    err = (got.double().numpy() - ref).__abs__()
    for name, sl in groups.items():
        assert err[sl].max() <= 1e-4, (name, err[sl].max())
    assert np.abs(ref[groups["identical"]] - 1).max() <= 1e-9
    if mode == "iou":
        torch.testing.assert_close(got[groups["identical"]], torch.ones(300, dtype=dtype))
        torch.testing.assert_close(got[groups["same box another convention"]], torch.ones(300, dtype=dtype))
        assert (got[groups["disjoint"]] == 0).all()
        assert got[groups["touching"]].abs().max() <= 1e-5
    else:
        nested = groups["nested"]  # the small box lies inside the big one
        inside = box_iou_rotated(b[nested].to(dtype), a[nested].to(dtype), aligned=True, mode="iof")
        torch.testing.assert_close(inside, torch.ones(300, dtype=dtype))


def test_matrix_against_shapely_and_symmetry() -> None:
    g = torch.Generator().manual_seed(4)
    n, m = 70, 50
    b1 = torch.cat(
        [torch.rand(n, 2, generator=g) * 60, torch.rand(n, 2, generator=g) * 25 + 1, torch.rand(n, 1, generator=g) * 7],
        1,
    )
    b2 = torch.cat(
        [torch.rand(m, 2, generator=g) * 60, torch.rand(m, 2, generator=g) * 25 + 1, torch.rand(m, 1, generator=g) * 7],
        1,
    )
    got = box_iou_rotated(b1, b2)
    assert got.shape == (n, m) and got.dtype == torch.float32
    ii, jj = torch.meshgrid(torch.arange(n), torch.arange(m), indexing="ij")
    ref = shapely_overlaps(b1[ii.flatten()], b2[jj.flatten()]).reshape(n, m)
    assert np.abs(got.double().numpy() - ref).max() <= 1e-4
    assert (ref > 0).mean() > 0.1  # the case has overlaps
    torch.testing.assert_close(box_iou_rotated(b2, b1), got.T, rtol=0, atol=1e-6)
    iof = box_iou_rotated(b1, b2, mode="iof")
    ref_iof = shapely_overlaps(b1[ii.flatten()], b2[jj.flatten()], "iof").reshape(n, m)
    assert np.abs(iof.double().numpy() - ref_iof).max() <= 1e-4


def test_chunking_does_not_change_results(monkeypatch: pytest.MonkeyPatch) -> None:
    g = torch.Generator().manual_seed(5)
    b = torch.cat(
        [
            torch.rand(60, 2, generator=g) * 40,
            torch.rand(60, 2, generator=g) * 15 + 1,
            torch.rand(60, 1, generator=g) * 3,
        ],
        1,
    )
    full = box_iou_rotated(b, b[:45])
    aligned = box_iou_rotated(b, b.roll(1, 0), aligned=True)
    monkeypatch.setattr(rotated_iou, "CHUNK_PAIRS", 7)
    monkeypatch.setattr(rotated_iou, "_MASK_BLOCK", 100)
    torch.testing.assert_close(box_iou_rotated(b, b[:45]), full, rtol=0, atol=0)
    torch.testing.assert_close(box_iou_rotated(b, b.roll(1, 0), aligned=True), aligned, rtol=0, atol=0)


def test_hand_computed_values() -> None:
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0, 0.0]], dtype=torch.float64)
    # the same square turned by 45°: the intersection is a regular octagon of area 8(√2 - 1)
    b = torch.tensor([[0.0, 0.0, 2.0, 2.0, PI / 4]], dtype=torch.float64)
    octagon = 8 * (math.sqrt(2) - 1)
    torch.testing.assert_close(box_iou_rotated(a, b)[0, 0].item(), octagon / (8 - octagon))
    # half overlap of two unit-height boxes: 1 / 3
    c = torch.tensor([[1.0, 0.0, 2.0, 2.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(box_iou_rotated(a, c)[0, 0].item(), 1 / 3)
    torch.testing.assert_close(box_iou_rotated(a, c, mode="iof")[0, 0].item(), 0.5)
    # θ + π is the same box
    torch.testing.assert_close(
        box_iou_rotated(b, b + torch.tensor([0, 0, 0, 0, PI], dtype=torch.float64))[0, 0].item(), 1.0
    )


def test_degenerate_boxes_give_zero_without_nan() -> None:
    a = torch.tensor([[5.0, 5.0, 0.0, 4.0, 0.3], [5.0, 5.0, 0.0, 0.0, 0.0], [5.0, 5.0, 4.0, 4.0, 0.0]])
    b = torch.tensor([[5.0, 5.0, 4.0, 4.0, 0.1], [5.0, 5.0, 0.0, 0.0, 0.0], [5.0, 5.0, 4.0, 0.0, 1.0]])
    for mode in ("iou", "iof"):
        out = box_iou_rotated(a, b, mode=mode)
        assert out.isfinite().all()
        assert (out[:2] == 0).all() and (out[:, 1:] == 0).all()


def test_empty_inputs_and_errors() -> None:
    assert box_iou_rotated(torch.zeros(0, 5), torch.zeros(3, 5)).shape == (0, 3)
    assert box_iou_rotated(torch.zeros(2, 5), torch.zeros(0, 5)).shape == (2, 0)
    assert box_iou_rotated(torch.zeros(0, 5), torch.zeros(0, 5), aligned=True).shape == (0,)
    assert box_iou_rotated(torch.zeros(0, 5, dtype=torch.float64), torch.zeros(1, 5)).dtype == torch.float64
    with pytest.raises(ValueError, match="boxes1"):
        box_iou_rotated(torch.zeros(2, 4), torch.zeros(2, 5))
    with pytest.raises(ValueError, match="boxes2"):
        box_iou_rotated(torch.zeros(2, 5), torch.zeros(2, 8))
    with pytest.raises(ValueError, match="mode"):
        box_iou_rotated(torch.zeros(2, 5), torch.zeros(2, 5), mode="giou")
    with pytest.raises(ValueError, match="aligned"):
        box_iou_rotated(torch.zeros(2, 5), torch.zeros(3, 5), aligned=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu() -> None:
    a, b, _ = pair_cases(seed=2)
    for dtype in (torch.float32, torch.float64):
        cpu = box_iou_rotated(a.to(dtype), b.to(dtype), aligned=True)
        gpu = box_iou_rotated(a.to(dtype).cuda(), b.to(dtype).cuda(), aligned=True)
        assert gpu.is_cuda
        torch.testing.assert_close(gpu.cpu(), cpu, rtol=0, atol=1e-5)
        full = box_iou_rotated(a[:500].cuda(), b[:400].cuda())
        torch.testing.assert_close(full.cpu(), box_iou_rotated(a[:500], b[:400]), rtol=0, atol=1e-5)
