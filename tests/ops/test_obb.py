"""Oriented box representation (rsfm.ops.obb): conventions, polygons on real DOTA labels, flips and 90° turns."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from rsfm.ops.obb import (
    ANGLE_VERSIONS,
    convert_angle_version,
    hbb2obb,
    norm_angle,
    obb2hbb,
    obb2poly,
    obb_flip,
    obb_rot90,
    poly2obb,
    poly_flip,
    poly_rot90,
    regularize_obb,
)

PI = math.pi
RANGES = {"le90": (-PI / 2, PI / 2), "le135": (-PI / 4, 3 * PI / 4)}


def random_obbs(n: int, seed: int = 0, dtype=torch.float64, span: float = 100.0) -> torch.Tensor:
    """Random boxes with sides in [2, 40] (never squares), any angle in [-2π, 2π)."""
    g = torch.Generator().manual_seed(seed)
    c = torch.rand(n, 2, generator=g, dtype=dtype) * span
    w = torch.rand(n, generator=g, dtype=dtype) * 38 + 2
    h = w * (0.2 + 0.7 * torch.rand(n, generator=g, dtype=dtype))  # h < 0.9 w
    swap = torch.rand(n, generator=g) < 0.5
    w, h = torch.where(swap, h, w), torch.where(swap, w, h)
    t = (torch.rand(n, generator=g, dtype=dtype) - 0.5) * 4 * PI
    return torch.stack([c[:, 0], c[:, 1], w, h, t], dim=1)


def same_rectangles(a: torch.Tensor, b: torch.Tensor, atol: float = 1e-6) -> None:
    """Boxes ``a`` and ``b`` describe the same rectangles: each corner of one is a corner of the other."""
    pa, pb = obb2poly(a).reshape(-1, 4, 1, 2), obb2poly(b).reshape(-1, 1, 4, 2)
    d = (pa - pb).norm(dim=-1)  # (N, 4, 4)
    assert d.amin(dim=2).max() <= atol and d.amin(dim=1).max() <= atol


def check_canonical(obbs: torch.Tensor, version: str) -> None:
    w, h, t = obbs[:, 2], obbs[:, 3], obbs[:, 4]
    if version == "oc":
        assert ((t > 0) & (t <= PI / 2)).all()
    else:
        lo, hi = RANGES[version]
        assert (w >= h).all()
        assert ((t >= lo) & (t < hi)).all()


def read_dota(root: Path) -> torch.Tensor:
    """All polygons of the DOTA label files under ``root`` as ``(N, 8)`` float64 (header lines skipped)."""
    rows = []
    for path in sorted(root.glob("*.txt")):
        for line in path.read_text().splitlines():
            parts = line.split()
            if len(parts) < 9 or ":" in parts[0]:
                continue
            rows.append([float(v) for v in parts[:8]])
    return torch.tensor(rows, dtype=torch.float64)


def shoelace(polys: torch.Tensor) -> torch.Tensor:
    x, y = polys[:, 0::2], polys[:, 1::2]
    return (x * y.roll(-1, 1) - y * x.roll(-1, 1)).sum(1) / 2


# --------------------------------------------------------------------------- conventions


@pytest.mark.parametrize("version", ANGLE_VERSIONS)
def test_regularize_is_canonical_idempotent_and_keeps_the_rectangle(version: str) -> None:
    boxes = random_obbs(500)
    r = regularize_obb(boxes, version)
    check_canonical(r, version)
    same_rectangles(r, boxes)
    torch.testing.assert_close(regularize_obb(r, version), r, rtol=0, atol=1e-12)
    torch.testing.assert_close(r[:, :2], boxes[:, :2])
    torch.testing.assert_close(r[:, 2] * r[:, 3], boxes[:, 2] * boxes[:, 3])  # area


def test_regularize_known_values() -> None:
    b = torch.tensor([[0.0, 0.0, 2.0, 4.0, 0.0], [0.0, 0.0, 4.0, 2.0, PI / 2], [0.0, 0.0, 4.0, 2.0, -PI / 2]])
    le90 = regularize_obb(b, "le90")
    torch.testing.assert_close(
        le90[:, 2:], torch.tensor([[4.0, 2.0, -PI / 2], [4.0, 2.0, -PI / 2], [4.0, 2.0, -PI / 2]])
    )
    le135 = regularize_obb(b, "le135")
    torch.testing.assert_close(le135[:, 2:], torch.tensor([[4.0, 2.0, PI / 2], [4.0, 2.0, PI / 2], [4.0, 2.0, PI / 2]]))
    oc = regularize_obb(b, "oc")
    torch.testing.assert_close(oc[:, 2:], torch.tensor([[4.0, 2.0, PI / 2], [4.0, 2.0, PI / 2], [4.0, 2.0, PI / 2]]))
    # oc: θ = 0 is a quarter turn away from (0, π/2]
    torch.testing.assert_close(
        regularize_obb(torch.tensor([[1.0, 2.0, 4.0, 2.0, 0.0]]), "oc"), torch.tensor([[1.0, 2.0, 2.0, 4.0, PI / 2]])
    )
    # squares keep their angle under le90 (no swap)
    torch.testing.assert_close(
        regularize_obb(torch.tensor([[0.0, 0.0, 3.0, 3.0, 0.25]])), torch.tensor([[0.0, 0.0, 3.0, 3.0, 0.25]])
    )


def test_norm_angle() -> None:
    t = torch.tensor([-PI / 2, PI / 2, 0.1 + PI, -PI / 4, 3 * PI / 4, 7.0], dtype=torch.float64)
    torch.testing.assert_close(
        norm_angle(t, "le90"),
        torch.tensor([-PI / 2, -PI / 2, 0.1, -PI / 4, -PI / 4, 7.0 - 2 * PI], dtype=torch.float64),
    )
    torch.testing.assert_close(
        norm_angle(t, "le135"), torch.tensor([PI / 2, PI / 2, 0.1, -PI / 4, -PI / 4, 7.0 - 2 * PI], dtype=torch.float64)
    )
    torch.testing.assert_close(norm_angle(t, "oc"), t)  # as MMRotate: oc angles need a w/h swap, see regularize_obb
    # float32 values just below a multiple of π never round up to the open end of the range
    tiny = torch.tensor([-1e-9, PI / 2 - 1e-9, -PI / 2 - 1e-9], dtype=torch.float32)
    out = norm_angle(tiny, "le90")
    assert ((out >= -PI / 2) & (out < PI / 2)).all()


@pytest.mark.parametrize("src", ANGLE_VERSIONS)
@pytest.mark.parametrize("dst", ANGLE_VERSIONS)
def test_convert_angle_version(src: str, dst: str) -> None:
    boxes = regularize_obb(random_obbs(200, seed=3), src)
    out = convert_angle_version(boxes, src, dst)
    check_canonical(out, dst)
    same_rectangles(out, boxes)
    same_rectangles(convert_angle_version(out, dst, src), boxes)


def test_le90_to_le135_differs_only_in_the_angle_range() -> None:
    b = torch.tensor([[5.0, 5.0, 10.0, 4.0, -1.0], [5.0, 5.0, 10.0, 4.0, 1.0]], dtype=torch.float64)
    out = convert_angle_version(b, "le90", "le135")
    torch.testing.assert_close(out[:, 4], torch.tensor([PI - 1.0, 1.0], dtype=torch.float64))
    torch.testing.assert_close(out[:, :4], b[:, :4])


# --------------------------------------------------------------------------- polygons and horizontal boxes


def test_obb2poly_corner_order_and_orientation() -> None:
    b = torch.tensor([[10.0, 20.0, 4.0, 2.0, 0.0], [0.0, 0.0, 4.0, 2.0, PI / 2]], dtype=torch.float64)
    p = obb2poly(b)
    torch.testing.assert_close(p[0], torch.tensor([8.0, 19.0, 12.0, 19.0, 12.0, 21.0, 8.0, 21.0], dtype=torch.float64))
    # θ = π/2: the w side points down the image (x turned toward y)
    torch.testing.assert_close(p[1], torch.tensor([1.0, -2.0, 1.0, 2.0, -1.0, 2.0, -1.0, -2.0], dtype=torch.float64))
    boxes = random_obbs(100)
    torch.testing.assert_close(shoelace(obb2poly(boxes)), boxes[:, 2] * boxes[:, 3])  # +w·h, y down


@pytest.mark.parametrize("version", ANGLE_VERSIONS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_poly2obb_round_trip_on_random_boxes(version: str, dtype: torch.dtype) -> None:
    boxes = regularize_obb(random_obbs(1000, seed=1, dtype=dtype), version)
    polys = obb2poly(boxes)
    # any starting corner and either orientation of the polygon gives the same box
    for p in (polys, polys.roll(2, dims=1), polys.reshape(-1, 4, 2).flip(1).reshape(-1, 8)):
        back = poly2obb(p, version)
        assert back.dtype == dtype
        check_canonical(back, version)
        atol = 1e-9 if dtype == torch.float64 else 2e-4
        same_rectangles(back, boxes, atol=atol)
        torch.testing.assert_close(back[:, 2] * back[:, 3], boxes[:, 2] * boxes[:, 3], rtol=1e-5, atol=atol)
        # away from the ends of the angle range the parameters themselves come back
        lo, hi = RANGES.get(version, (0.0, PI / 2))
        inner = (boxes[:, 4] - lo > 1e-3) & (hi - boxes[:, 4] > 1e-3)
        torch.testing.assert_close(back[inner], boxes[inner], rtol=0, atol=atol * 10)


def test_poly2obb_is_the_minimum_area_rectangle_on_real_dota_labels(datasets: Path) -> None:
    root = datasets / "dota" / "labelTxt"
    if not root.is_dir():
        pytest.skip(f"no DOTA labels at {root}")
    polys = read_dota(root)
    assert len(polys) > 100
    polys = polys[shoelace(polys).abs() > 0]
    pts = polys.reshape(-1, 4, 2)
    # brute force: the enclosing rectangle's area along 1800 directions of [0, π/2)
    angles = torch.arange(1800, dtype=torch.float64) * (PI / 2 / 1800)
    u = torch.stack([angles.cos(), angles.sin()], 1)
    v = torch.stack([-angles.sin(), angles.cos()], 1)
    pu, pv = torch.einsum("npk,ak->nap", pts, u), torch.einsum("npk,ak->nap", pts, v)
    brute = ((pu.amax(2) - pu.amin(2)) * (pv.amax(2) - pv.amin(2))).amin(1)
    for version in ANGLE_VERSIONS:
        obbs = poly2obb(polys, version)
        check_canonical(obbs, version)
        area = obbs[:, 2] * obbs[:, 3]
        assert (area <= brute + 1e-9).all()  # never worse than any sampled direction
        assert (area >= brute * 0.99).all()  # and close to the best sampled one (0.05° steps)
        # every labelled corner lies in the box (box frame coordinates within the half sides)
        c, s = obbs[:, 4].cos()[:, None], obbs[:, 4].sin()[:, None]
        d = pts - obbs[:, None, :2]
        xu, yv = d[..., 0] * c + d[..., 1] * s, -d[..., 0] * s + d[..., 1] * c
        assert (xu.abs() <= obbs[:, 2:3] / 2 + 1e-6).all() and (yv.abs() <= obbs[:, 3:4] / 2 + 1e-6).all()
        # the box covers the polygon: at least its area (a rectangle's label: exactly)
        assert (area >= shoelace(polys).abs() - 1e-6).all()
        # round trip obb -> poly -> obb keeps the rectangle
        same_rectangles(poly2obb(obb2poly(obbs), version), obbs, atol=1e-6)


def test_poly2obb_degenerate_polygons() -> None:
    p = torch.tensor([[3.0, 4.0] * 4, [0.0, 0.0, 2.0, 0.0, 4.0, 0.0, 1.0, 0.0]], dtype=torch.float64)
    out = poly2obb(p, "le90")
    torch.testing.assert_close(out[0], torch.tensor([3.0, 4.0, 0.0, 0.0, 0.0], dtype=torch.float64))
    torch.testing.assert_close(out[1, :4], torch.tensor([2.0, 0.0, 4.0, 0.0], dtype=torch.float64))
    assert out.isfinite().all()


def test_poly2obb_of_a_non_rectangular_quadrilateral() -> None:
    # a trapezoid: its minimum-area rectangle lies along its long base, 4 x 2 at (2, 1)
    p = torch.tensor([[0.0, 0.0, 4.0, 0.0, 3.0, 2.0, 1.0, 2.0]], dtype=torch.float64)
    torch.testing.assert_close(poly2obb(p, "le90"), torch.tensor([[2.0, 1.0, 4.0, 2.0, 0.0]], dtype=torch.float64))
    torch.testing.assert_close(poly2obb(p, "oc"), torch.tensor([[2.0, 1.0, 2.0, 4.0, PI / 2]], dtype=torch.float64))


def test_obb2hbb_and_hbb2obb() -> None:
    boxes = random_obbs(300, seed=5)
    hbb = obb2hbb(boxes)
    p = obb2poly(boxes)
    torch.testing.assert_close(hbb[:, 0], p[:, 0::2].amin(1))
    torch.testing.assert_close(hbb[:, 1], p[:, 1::2].amin(1))
    torch.testing.assert_close(hbb[:, 2], p[:, 0::2].amax(1))
    torch.testing.assert_close(hbb[:, 3], p[:, 1::2].amax(1))
    xyxy = torch.tensor([[0.0, 0.0, 4.0, 2.0], [0.0, 0.0, 2.0, 4.0]], dtype=torch.float64)
    torch.testing.assert_close(
        hbb2obb(xyxy, "le90"),
        torch.tensor([[2.0, 1.0, 4.0, 2.0, 0.0], [1.0, 2.0, 4.0, 2.0, -PI / 2]], dtype=torch.float64),
    )
    torch.testing.assert_close(
        hbb2obb(xyxy, "oc"),
        torch.tensor([[2.0, 1.0, 2.0, 4.0, PI / 2], [1.0, 2.0, 4.0, 2.0, PI / 2]], dtype=torch.float64),
    )
    for version in ANGLE_VERSIONS:
        torch.testing.assert_close(obb2hbb(hbb2obb(xyxy, version)), xyxy)


# --------------------------------------------------------------------------- flips and 90° turns


def raster_obbs(obbs: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``(N, H, W)`` bool: pixel centres inside each box."""
    h, w = size
    ys, xs = torch.meshgrid(
        torch.arange(h, dtype=torch.float64) + 0.5, torch.arange(w, dtype=torch.float64) + 0.5, indexing="ij"
    )
    b = obbs.to(torch.float64)[:, :, None, None]
    dx, dy = xs - b[:, 0], ys - b[:, 1]
    c, s = b[:, 4].cos(), b[:, 4].sin()
    return ((dx * c + dy * s).abs() <= b[:, 2] / 2) & ((-dx * s + dy * c).abs() <= b[:, 3] / 2)


def raster_polys(polys: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``(N, H, W)`` bool: pixel centres inside each convex polygon (either orientation)."""
    h, w = size
    ys, xs = torch.meshgrid(
        torch.arange(h, dtype=torch.float64) + 0.5, torch.arange(w, dtype=torch.float64) + 0.5, indexing="ij"
    )
    p = polys.to(torch.float64).reshape(-1, 4, 2)
    a, b = p[:, :, None, None, :], p.roll(-1, 1)[:, :, None, None, :]
    cross = (b[..., 0] - a[..., 0]) * (ys - a[..., 1]) - (b[..., 1] - a[..., 1]) * (xs - a[..., 0])
    return (cross >= 0).all(1) | (cross <= 0).all(1)


SIZE = (24, 32)  # H, W: not square, so that swapped sizes show


def boxes_in_image(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    c = torch.rand(n, 2, generator=g, dtype=torch.float64) * torch.tensor(
        [20.0, 12.0], dtype=torch.float64
    ) + torch.tensor([6.0, 6.0], dtype=torch.float64)
    wh = torch.rand(n, 2, generator=g, dtype=torch.float64) * 8 + 3
    t = (torch.rand(n, 1, generator=g, dtype=torch.float64) - 0.5) * 2 * PI
    return torch.cat([c, wh, t], dim=1)


@pytest.mark.parametrize("direction,dims", [("horizontal", (-1,)), ("vertical", (-2,)), ("diagonal", (-2, -1))])
def test_flips_follow_the_flipped_image(direction: str, dims: tuple[int, ...]) -> None:
    boxes = boxes_in_image(40, seed=7)
    masks = raster_obbs(boxes, SIZE)
    assert masks.flatten(1).any(1).all()
    for version in ANGLE_VERSIONS:
        flipped = obb_flip(boxes, SIZE, direction, version)
        check_canonical(flipped, version)
        assert torch.equal(raster_obbs(flipped, SIZE), masks.flip(dims))
    polys = obb2poly(boxes)
    assert torch.equal(raster_polys(polys, SIZE), masks)
    assert torch.equal(raster_polys(poly_flip(polys, SIZE, direction), SIZE), masks.flip(dims))
    same_rectangles(poly2obb(poly_flip(polys, SIZE, direction)), obb_flip(boxes, SIZE, direction))
    torch.testing.assert_close(poly_flip(poly_flip(polys, SIZE, direction), SIZE, direction), polys)


@pytest.mark.parametrize("k", [-1, 0, 1, 2, 3, 5])
def test_rot90_follows_torch_rot90(k: int) -> None:
    boxes = boxes_in_image(40, seed=11)
    masks = raster_obbs(boxes, SIZE)
    turned = torch.rot90(masks, k, dims=(-2, -1))
    new_size = tuple(turned.shape[-2:])
    for version in ANGLE_VERSIONS:
        out = obb_rot90(boxes, SIZE, k, version)
        check_canonical(out, version)
        assert torch.equal(raster_obbs(out, new_size), turned)
    polys = poly_rot90(obb2poly(boxes), SIZE, k)
    assert torch.equal(raster_polys(polys, new_size), turned)
    torch.testing.assert_close(poly_rot90(polys, new_size, -k), obb2poly(boxes))


def test_rot90_direction_is_counter_clockwise_on_screen() -> None:
    # a point near the top-left corner of a 24 x 32 image ends near the bottom-left corner
    p = torch.tensor([[1.0, 2.0] * 4])
    out = poly_rot90(p, SIZE, 1)
    torch.testing.assert_close(out[0, :2], torch.tensor([2.0, 31.0]))
    mask = torch.zeros(SIZE, dtype=torch.bool)
    mask[2, 1] = True  # pixel centre (1.5, 2.5) goes to (2.5, 30.5): row 30, column 2
    assert torch.rot90(mask, 1, dims=(0, 1)).nonzero().tolist() == [[30, 2]]


# --------------------------------------------------------------------------- empties, dtypes, errors


def test_empty_inputs_and_dtypes() -> None:
    e5, e8, e4 = torch.zeros(0, 5), torch.zeros(0, 8), torch.zeros(0, 4)
    assert poly2obb(e8).shape == (0, 5) and obb2poly(e5).shape == (0, 8)
    assert obb2hbb(e5).shape == (0, 4) and hbb2obb(e4).shape == (0, 5)
    assert regularize_obb(e5, "oc").shape == (0, 5) and convert_angle_version(e5, "oc", "le135").shape == (0, 5)
    assert obb_flip(e5, SIZE, "diagonal").shape == (0, 5) and poly_flip(e8, SIZE, "vertical").shape == (0, 8)
    assert obb_rot90(e5, SIZE, 1).shape == (0, 5) and poly_rot90(e8, SIZE, 3).shape == (0, 8)
    assert poly2obb(torch.zeros(0)).shape == (0, 5)
    b = random_obbs(4)
    assert obb2poly(b).dtype == torch.float64 and poly2obb(obb2poly(b.float())).dtype == torch.float32
    assert poly2obb(torch.tensor([[0, 0, 4, 0, 4, 2, 0, 2]])).dtype == torch.get_default_dtype()


def test_errors_name_the_argument() -> None:
    with pytest.raises(ValueError, match="obbs"):
        obb2poly(torch.zeros(3, 4))
    with pytest.raises(ValueError, match="polys"):
        poly2obb(torch.zeros(3, 5))
    with pytest.raises(ValueError, match="boxes"):
        hbb2obb(torch.zeros(3))
    with pytest.raises(ValueError, match="version"):
        regularize_obb(torch.zeros(1, 5), "le45")
    with pytest.raises(ValueError, match="version"):
        norm_angle(torch.zeros(1), "cv2")
    with pytest.raises(ValueError, match="src"):
        convert_angle_version(torch.zeros(1, 5), "x", "le90")
    with pytest.raises(ValueError, match="dst"):
        convert_angle_version(torch.zeros(1, 5), "le90", "x")
    with pytest.raises(ValueError, match="direction"):
        obb_flip(torch.zeros(1, 5), SIZE, "sideways")
    with pytest.raises(ValueError, match="size"):
        poly_rot90(torch.zeros(1, 8), 24, 1)
    with pytest.raises(ValueError, match="obbs"):
        obb2hbb(np.zeros((1, 5)))
