"""Rotated detection records, clipping, augmentation, dataset and collate (rsfm.data.rotated.common).

Augmentation is checked on the real DOTA scene P0003 with two coordinate channels stacked on
its RGB bands: after a crop, flips and 90° turns, those channels say where every output pixel
came from, so image and polygons can be checked against the same map.
"""

import math
from pathlib import Path

import numpy as np
import pytest
import shapely
import torch
from rotated_helpers import corner_distance, dota_objects, link

from rsfm.data.io import read_image
from rsfm.data.rotated import (
    ROTATED_BATCH_KEYS,
    DOTARotatedDataModule,
    RotatedDetectionDataset,
    RotatedTrainTransform,
    clip_polygons,
    collate_rotated,
    dota_obb_records,
    make_rotated_record,
    polygons_to_obbs,
    random_flip_rotate,
)
from rsfm.data.rotated.common import min_area_rectangle, polygon_areas
from rsfm.utils.errors import DataError


@pytest.fixture(scope="module")
def dota(datasets: Path) -> Path:
    return datasets / "dota"


@pytest.fixture(scope="module")
def p0003(dota: Path) -> dict:
    ann = dota_objects(dota, "P0003")
    ann["image"] = read_image(dota / "images/P0003.png")
    return ann


def test_make_record_drops_and_counts_degenerate_polygons(dota: Path) -> None:
    real = dota_objects(dota, "P0003")["polygons"][:2]
    # a real zero-area line of P1478__1__853___962.txt (all corners at x = 1, difficulty 2)
    sliver = [1.0, 187.0, 1.0, 187.0, 1.0, 219.0, 1.0, 219.0]
    r = make_rotated_record(
        dota / "images/P0003.png", [*real, sliver], [4, 5, 4], [0, 0, 1], "x", {"num_degenerate": 2}
    )
    assert r.polygons.shape == (2, 8) and r.polygons.dtype == np.float32
    assert r.labels.tolist() == [4, 5] and r.difficult.tolist() == [False, False]
    assert r.meta["num_degenerate"] == 3  # 2 given + 1 dropped here
    # 937 913 921 912 923 874 940 875: shoelace area of P0003's first object
    assert polygon_areas(real[:1])[0] == pytest.approx(629.5)
    with pytest.raises(DataError, match="2 polygons, 1 labels"):
        make_rotated_record(Path("a.png"), real, [0], [0, 0], "a")
    with pytest.raises(DataError, match="non-finite"):
        make_rotated_record(Path("a.png"), [[0, 0, 1, 0, 1, float("nan"), 0, 1]], [0], [0], "a")


def test_clip_polygons_on_real_objects(p0003: dict) -> None:
    polys = p0003["polygons"]
    window = (400, 300, 912, 812)
    clipped, visible = clip_polygons(polys, window)
    lo, hi = polys.reshape(-1, 4, 2).min(1), polys.reshape(-1, 4, 2).max(1)
    inside = (lo >= window[:2]).all(1) & (hi <= window[2:]).all(1)
    outside = (hi <= window[:2]).any(1) | (lo >= window[2:]).any(1)
    cut = ~inside & ~outside
    assert inside.sum() > 5 and cut.sum() > 0 and outside.sum() > 5
    np.testing.assert_array_equal(clipped[inside], polys[inside])
    assert (visible[inside] == 1).all() and (visible[outside] == 0).all()
    assert ((visible[cut] > 0) & (visible[cut] < 1)).all()
    box = shapely.box(*window)
    for i in np.flatnonzero(cut):
        obj = shapely.convex_hull(shapely.multipoints(polys[i].reshape(4, 2)))
        part = obj.intersection(box)
        assert visible[i] == pytest.approx(part.area / obj.area)
        rect = shapely.Polygon(clipped[i].reshape(4, 2))
        # the new polygon is a rectangle enclosing the visible part, no larger than its axis-aligned box
        assert rect.buffer(1e-3).contains(part) and rect.area <= shapely.envelope(part).area + 1e-3
        assert rect.area <= shapely.oriented_envelope(part).area * (1 + 1e-5) + 1e-4
        obb = polygons_to_obbs(clipped[i : i + 1])
        assert float(obb[0, 2] * obb[0, 3]) == pytest.approx(rect.area, rel=1e-4)


def test_min_area_rectangle_of_a_clipped_octagon() -> None:
    # a square turned by 45 degrees (diagonal 2 * 10), its four tips cut off by a 16 x 16 window
    diamond = shapely.Polygon([(10, 0), (20, 10), (10, 20), (0, 10)])
    part = diamond.intersection(shapely.box(2, 2, 18, 18))
    rect = min_area_rectangle(shapely.get_coordinates(part)[:-1])
    assert len(shapely.get_coordinates(part)) == 9  # 8 corners, closed
    assert shapely.Polygon(rect).area == pytest.approx(200.0)  # the diamond itself (side 10 sqrt 2), not 16 x 16
    assert shapely.Polygon(rect).buffer(1e-9).contains(part)
    assert shapely.Polygon(rect).area == pytest.approx(shapely.oriented_envelope(part).area)


def test_clip_polygons_half_visible_rectangle() -> None:
    clipped, visible = clip_polygons(np.array([[10, 10, 30, 10, 30, 20, 10, 20]], np.float32), (20, 0, 100, 100))
    assert visible.tolist() == [0.5]
    assert corner_distance(clipped, [[20, 10, 30, 10, 30, 20, 20, 20]]) < 1e-5


def _pixel_map(marker: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """``A, t`` with ``source point = A @ output point + t`` from the coordinate channels of an output."""
    xs, ys = marker[0].double(), marker[1].double()
    at = lambda i, j: np.array([xs[i, j] + 0.5, ys[i, j] + 0.5])  # noqa: E731 (source pixel centre)
    origin = at(0, 0)
    ex, ey = at(0, 1) - at(0, 0), at(1, 0) - at(0, 0)  # one output pixel along x', y'
    a = np.stack([ex, ey], axis=1)
    return a, origin - a @ np.array([0.5, 0.5])


def test_train_transform_moves_image_and_polygons_together(p0003: dict) -> None:
    image = p0003["image"].to(torch.int32)
    h, w = image.shape[-2:]
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.int32), torch.arange(w, dtype=torch.int32), indexing="ij")
    sample = {
        "image": torch.cat([image, xs[None], ys[None]]),
        "polygons": torch.from_numpy(p0003["polygons"]),
        "labels": torch.arange(len(p0003["polygons"])),  # object index, to find each object's source
        "difficult": torch.from_numpy(p0003["difficult"]),
        "id": "P0003",
    }
    polys = p0003["polygons"].reshape(-1, 4, 2)
    transform = RotatedTrainTransform(300, min_visibility=0.6, object_prob=0.5, keep_difficult=False, rotate90=True)
    maps, counts = set(), {"whole": 0, "cut": 0}
    for seed in range(10):
        torch.manual_seed(seed)
        out = transform(sample)
        assert out["image"].shape[-2:] == (300, 300) and out["id"] == "P0003"
        a, t = _pixel_map(out["image"][3:])
        assert np.allclose(a, np.round(a)) and abs(abs(np.linalg.det(a)) - 1) < 1e-9  # flips and turns only
        maps.add(tuple(np.round(a).astype(int).flatten()))
        # every output pixel is the source pixel the map says
        grid = np.stack(np.meshgrid(np.arange(300) + 0.5, np.arange(300) + 0.5)).reshape(2, -1)
        sx, sy = (np.floor(v).astype(int) for v in a @ grid + t[:, None])
        assert torch.equal(out["image"][:3].reshape(3, -1), image[:, sy, sx])
        # the crop window in source pixels; objects wholly inside it come back with their own corners
        corners = a @ np.array([[0, 300, 0, 300], [0, 0, 300, 300]]) + t[:, None]
        x0, y0, x1, y1 = corners[0].min(), corners[1].min(), corners[0].max(), corners[1].max()
        whole = (polys.min(1) >= (x0, y0)).all(1) & (polys.max(1) <= (x1, y1)).all(1) & ~p0003["difficult"]
        assert not out["difficult"].any()
        out_polys = out["polygons"].double().numpy().reshape(-1, 4, 2)
        back = (a @ out_polys.transpose(0, 2, 1) + t[:, None]).transpose(0, 2, 1)
        found = out["labels"].tolist()
        assert set(np.flatnonzero(whole)) <= set(found)
        for k, i in enumerate(found):
            assert not p0003["difficult"][i]
            if whole[i]:
                counts["whole"] += 1
                assert corner_distance(back[k].reshape(1, 8), polys[i].reshape(1, 8)) < 1e-3
            else:  # cut by the window: a rectangle holding the visible part, >= min_visibility of it
                counts["cut"] += 1
                obj = shapely.convex_hull(shapely.multipoints(polys[i]))
                visible = obj.intersection(shapely.box(x0, y0, x1, y1))
                assert visible.area >= 0.6 * obj.area - 1e-3
                assert shapely.Polygon(back[k]).buffer(1e-2).contains(visible)
    assert counts["whole"] > 10 and counts["cut"] > 0 and len(maps) >= 4, (counts, maps)


def test_flip_rotate_keeps_real_boxes_on_their_pixels(p0003: dict) -> None:
    image = p0003["image"][:, :400, :300]  # a real 400 x 300 corner: odd turns change its shape
    polys = torch.tensor([[10.0, 20.0, 110.0, 20.0, 110.0, 60.0, 10.0, 60.0]])  # 100 x 40, axis-aligned
    sample = {"image": image, "polygons": polys, "labels": torch.tensor([0]), "difficult": torch.tensor([False])}
    seen = set()
    for seed in range(24):
        torch.manual_seed(seed)
        out = random_flip_rotate(sample)
        obb = polygons_to_obbs(out["polygons"])[0]
        hh, ww = out["image"].shape[-2:]
        seen.add((hh, ww, round(float(obb[4]) / (math.pi / 2)) % 2))
        # the box keeps its size, and its pixels are the source's 100 x 40 block, moved
        assert obb[2:4].tolist() == pytest.approx([100.0, 40.0], abs=1e-4)
        block = image[:, 20:60, 10:110]
        cx, cy = float(obb[0]), float(obb[1])
        if abs(float(obb[4])) < 0.1:  # long side along x
            got = out["image"][:, round(cy - 20) : round(cy + 20), round(cx - 50) : round(cx + 50)]
        else:
            got = out["image"][:, round(cy - 50) : round(cy + 50), round(cx - 20) : round(cx + 20)]
        assert sorted(got.flatten().tolist()) == sorted(block.flatten().tolist()), seed
    assert {(s[0], s[1]) for s in seen} == {(400, 300), (300, 400)}


def _dota_layout(dota: Path, root: Path, ids: list[str], broken: str | None = None) -> Path:
    for rid in ids:
        link(dota / "labelTxt" / f"{rid}.txt", root / "labelTxt" / f"{rid}.txt")
        if rid == broken:
            (root / "images").mkdir(parents=True, exist_ok=True)
            (root / "images" / f"{rid}.png").write_bytes(b"")
        else:
            link(dota / "images" / f"{rid}.png", root / "images" / f"{rid}.png")
    return root


def test_dataset_serves_obbs_in_each_angle_version(dota: Path) -> None:
    records, classes = dota_obb_records(dota)
    for version, (lo, hi) in {"le90": (-math.pi / 2, math.pi / 2), "le135": (-math.pi / 4, 3 * math.pi / 4)}.items():
        s = RotatedDetectionDataset(records[:1], classes, angle_version=version)[0]
        assert list(s) == list(ROTATED_BATCH_KEYS)
        assert s["image"].dtype == torch.float32 and 0 <= float(s["image"].min()) and float(s["image"].max()) <= 1
        assert s["obbs"].shape == (55, 5) and s["obbs"].dtype == torch.float32
        assert (s["obbs"][:, 2] >= s["obbs"][:, 3]).all()
        assert ((s["obbs"][:, 4] >= lo) & (s["obbs"][:, 4] < hi)).all()
        assert s["labels"].dtype == torch.int64 and s["difficult"].dtype == torch.bool
    oc = RotatedDetectionDataset(records[:1], classes, angle_version="oc")[0]["obbs"]
    assert ((oc[:, 4] > 0) & (oc[:, 4] <= math.pi / 2 + 1e-6)).all()
    # the same rectangles whatever the convention: each DOTA quadrilateral's min-area rectangle
    assert corner_distance(oc, polygons_to_obbs(records[0].polygons)) < 1e-3


def test_unreadable_image_is_skipped_and_listed(dota: Path, tmp_path: Path) -> None:
    root = _dota_layout(dota, tmp_path / "d", ["P0003", "P0005"], broken="P0005")
    records, classes = dota_obb_records(root)
    ds = RotatedDetectionDataset(records, classes)
    assert ds[1] == {"skipped": (str(root / "images/P0005.png"), "zero_byte"), "id": "P0005"}
    batch = collate_rotated([ds[0], ds[1]])
    assert len(batch["image"]) == 1 and batch["id"] == ["P0003"] and batch["skipped"][0][1] == "zero_byte"
    empty = collate_rotated([ds[1]])
    assert {k: empty[k] for k in ROTATED_BATCH_KEYS} == dict.fromkeys(ROTATED_BATCH_KEYS, [])
    assert len(empty["skipped"]) == 1


def test_datamodule_options(dota: Path) -> None:
    dm = DOTARotatedDataModule(str(dota), angle_version="le135", rotate90=False, crop_size=128, keep_difficult=True)
    assert dm.transform.rotate90 is False and dm.transform.keep_difficult and dm.transform.crop_size == 128
    with pytest.warns(UserWarning, match="2 object"):
        dm.splits()
    assert dm.info().sample_keys == ("image", "obbs", "labels") and dm.info().crop_size == 128
    with pytest.raises(ValueError, match="data.angle_version must be one of"):
        DOTARotatedDataModule(str(dota), angle_version="le45")
    with pytest.raises(DataError, match="data.root"):
        DOTARotatedDataModule(str(dota / "missing"))
