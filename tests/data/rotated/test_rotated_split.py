"""Scene splitting (rsfm.data.rotated.split) on the real 1616 x 1565 scene and the real DOTA scenes."""

from pathlib import Path

import numpy as np
import pytest
import shapely
import torch
from rotated_helpers import DOTA_SIZES, corner_distance, dota_objects, link

from rsfm.data.io import read_image
from rsfm.data.rotated import (
    DOTARotatedDataModule,
    dota_obb_records,
    parse_patch_name,
    patch_name,
    patch_to_source,
    patch_windows,
    polygons_to_obbs,
    split_dataset,
    split_record,
)
from rsfm.data.rotated.split import main
from rsfm.utils.errors import DataError


@pytest.fixture(scope="module")
def dota(datasets: Path) -> Path:
    return datasets / "dota"


def _covered(windows: list, height: int, width: int) -> np.ndarray:
    hits = np.zeros((height, width), dtype=np.int32)
    for x0, y0, x1, y1 in windows:
        hits[y0:y1, x0:x1] += 1
    return hits


def test_patch_windows() -> None:
    # DOTA P0003 (1023 x 1147) in 512-pixel patches with 200 pixels overlap: step 312, last shifted back
    windows = patch_windows(1023, 1147, 512, 200)
    assert sorted({w[0] for w in windows}) == [0, 312, 624, 635] and sorted({w[1] for w in windows}) == [0, 312, 511]
    assert len(windows) == 12 and all(x1 - x0 == 512 and y1 - y0 == 512 for x0, y0, x1, y1 in windows)
    assert (_covered(windows, 1023, 1147) >= 1).all()
    assert windows[:2] == [(0, 0, 512, 512), (312, 0, 824, 512)]  # row-major
    # the 1616 x 1565 scene with DOTA's 1024 / 200: two windows per axis
    assert patch_windows(1565, 1616) == [
        (0, 0, 1024, 1024),
        (592, 0, 1616, 1024),
        (0, 541, 1024, 1565),
        (592, 541, 1616, 1565),
    ]
    assert patch_windows(500, 300, 1024, 200) == [(0, 0, 300, 500)]  # smaller than a patch: one window
    assert patch_windows(824, 824, 512, 200) == [
        (0, 0, 512, 512),
        (312, 0, 824, 512),
        (0, 312, 512, 824),
        (312, 312, 824, 824),
    ]
    for size, gap in ((512, 512), (512, -1), (0, 0)):
        with pytest.raises(ValueError, match="patch_size|gap"):
            patch_windows(100, 100, size, gap)


def test_patch_names() -> None:
    assert parse_patch_name("P1478__1__853___962") == ("P1478", 1.0, 853, 962)  # a real devkit patch of DOTA
    assert parse_patch_name(Path("/x/images/P1478__1__853___962.png")) == ("P1478", 1.0, 853, 962)
    assert parse_patch_name("P0003__0.5__312___0.txt") == ("P0003", 0.5, 312, 0)
    assert parse_patch_name("a__b__1.5__10___20") == ("a__b", 1.5, 10, 20)
    assert (
        patch_name("P0003", 1.0, 0, 312) == "P0003__1__0___312"
        and patch_name("P0003", 0.5, 3, 4) == "P0003__0.5__3___4"
    )
    with pytest.raises(DataError, match="P0003.png: not a patch name"):
        parse_patch_name("P0003.png")
    boxes = torch.tensor([[10.0, 20.0, 8.0, 4.0, 0.3]])
    assert patch_to_source(boxes, 100, 50, 0.5).tolist() == [pytest.approx([220.0, 140.0, 16.0, 8.0, 0.3])]
    poly = torch.tensor([[0.0, 0.0, 2.0, 0.0, 2.0, 1.0, 0.0, 1.0]])
    assert patch_to_source(poly, 4, 6).tolist() == [[4.0, 6.0, 6.0, 6.0, 6.0, 7.0, 4.0, 7.0]]


def test_split_unlabelled_scene_tiles_its_pixels(datasets: Path, tmp_path: Path) -> None:
    scene = datasets / "scenes/dota_demo.jpg"
    src = tmp_path / "src"
    link(scene, src / "images/dota_demo.jpg")
    (src / "images/broken.png").write_bytes(b"")  # an unreadable scene is skipped, not fatal
    summary = split_dataset(src, tmp_path / "out", patch_size=1024, gap=200)
    assert summary["scenes"] == 1 and summary["patches"] == 4 and summary["objects"] == 0
    assert summary["skipped"] == [(str(src / "images/broken.png"), "zero_byte")]
    assert not (tmp_path / "out/labelTxt").exists()
    pixels = read_image(scene)
    assert pixels.shape == (3, 1565, 1616)
    windows = []
    for png in sorted((tmp_path / "out/images").glob("*.png")):
        rid, rate, x0, y0 = parse_patch_name(png)
        patch = read_image(png)
        assert rid == "dota_demo" and rate == 1.0 and patch.shape == (3, 1024, 1024)
        assert torch.equal(patch, pixels[:, y0 : y0 + 1024, x0 : x0 + 1024])
        windows.append((x0, y0, x0 + 1024, y0 + 1024))
    assert (_covered(windows, 1565, 1616) >= 1).all()


def test_split_record_follows_the_devkit_rule(dota: Path) -> None:
    (record,) = [r for r in dota_obb_records(dota)[0] if r.id == "P0003"]
    windows = patch_windows(1023, 1147, 512, 200)
    patches = split_record(record, windows, iof_threshold=0.7)
    polys = record.polygons.reshape(-1, 4, 2).astype(np.float64)
    hulls = shapely.convex_hull(shapely.multipoints(polys))
    for patch, (x0, y0, x1, y1) in zip(patches, windows, strict=True):
        assert patch.id == patch_name("P0003", 1, x0, y0) and patch.meta["window"] == (x0, y0, x1, y1)
        iof = shapely.area(shapely.intersection(hulls, shapely.box(x0, y0, x1, y1))) / shapely.area(hulls)
        # every object with a part in the window is there; below the threshold flagged difficult
        assert len(patch) == int((iof > 0).sum())
        low = patch.meta["below_threshold"]
        assert low.sum() == int(((iof > 0) & (iof < 0.7)).sum()) and patch.difficult[low].all()
        back = patch_to_source(torch.from_numpy(patch.polygons), x0, y0).numpy()
        inside = np.flatnonzero(iof >= 1 - 1e-9)
        for i in inside:  # whole objects keep their corners exactly, in patch coordinates
            assert (np.abs(back - record.polygons[i]).max(axis=1) < 1e-4).any()
    dropped = split_record(record, windows, 0.7, keep_below=False)
    assert all(not p.meta["below_threshold"].any() for p in dropped)
    assert sum(len(p) for p in dropped) < sum(len(p) for p in patches)


def test_split_labelled_scenes_map_back(dota: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    for rid in ("P0003", "P0005"):
        link(dota / f"images/{rid}.png", src / f"images/{rid}.png")
        link(dota / f"labelTxt/{rid}.txt", src / f"labelTxt/{rid}.txt")
    dst = tmp_path / "split"
    summary = split_dataset(src, dst, patch_size=512, gap=200, rates=(1.0, 0.5))
    # P0003: 12 windows at 1.0, 2 at 0.5 (574 x 512); P0005 (977 x 884): 3 x 3 at 1.0, 1 at 0.5 (442 x 489)
    assert summary["scenes"] == 2 and summary["patches"] == 12 + 2 + 9 + 1 and not summary["skipped"]
    records, classes = dota_obb_records(dst, None)
    assert len(records) == 24 and sum(len(r) for r in records) == summary["objects"]
    assert set(classes) == {"small-vehicle", "large-vehicle"}
    scenes = {rid: read_image(dota / f"images/{rid}.png") for rid in ("P0003", "P0005")}
    originals = {rid: dota_objects(dota, rid) for rid in scenes}
    for r in records:
        rid, rate, x0, y0 = parse_patch_name(r.id)
        lines = (dst / "labelTxt" / f"{r.id}.txt").read_text().splitlines()
        assert lines[0] == "imagesource:GoogleEarth" and lines[1].startswith("gsd:")
        assert r.meta["gsd"] == pytest.approx(originals[rid]["gsd"] / rate, rel=1e-9)
        patch = read_image(r.image)
        if rate == 1.0:  # pixels are the scene's
            h, w = patch.shape[-2:]
            assert torch.equal(patch, scenes[rid][:, y0 : y0 + h, x0 : x0 + w])
        back = patch_to_source(torch.from_numpy(r.polygons).double(), x0, y0, rate).numpy()
        real = originals[rid]["polygons"].astype(np.float64)
        hulls = shapely.convex_hull(shapely.multipoints(real.reshape(-1, 4, 2)))
        h, w = patch.shape[-2:]
        window = shapely.box(x0 / rate, y0 / rate, (x0 + w) / rate, (y0 + h) / rate)
        # each patch object is a real object: whole (the same corners, to the 0.1-pixel writing),
        # or clipped: a rectangle holding the object's part inside the window
        for poly in back:
            if np.abs(real - poly).max(axis=1).min() < 0.06 / rate:
                continue
            rect = shapely.Polygon(poly.reshape(4, 2)).buffer(0.1 / rate)
            assert shapely.contains(rect, shapely.intersection(hulls, window)).any()
    # every real object of P0003 wholly inside a window appears there with its own corners
    h, w = DOTA_SIZES["P0003"]
    whole = 0
    for x0, y0, x1, y1 in patch_windows(h, w, 512, 200):
        (r,) = [r for r in records if r.id == patch_name("P0003", 1, x0, y0)]
        back = patch_to_source(torch.from_numpy(r.polygons), x0, y0).numpy()
        for poly in originals["P0003"]["polygons"].reshape(-1, 4, 2):
            if (poly.min(0) >= (x0, y0)).all() and (poly.max(0) <= (x1, y1)).all():
                whole += 1
                assert (
                    corner_distance(back[np.abs(back - poly.reshape(8)).max(1).argmin()][None], poly.reshape(1, 8))
                    < 1e-4
                )
    assert whole > 55  # objects counted once per window holding them
    # the output is a DOTA layout the rotated datamodule reads
    dm = DOTARotatedDataModule(str(dst), classes=["large-vehicle", "small-vehicle"], crop_size=256)
    assert sum(len(v) for v in dm.splits().values()) == 24
    dm.setup()
    s = dm.datasets["test"][0]
    assert (
        s["obbs"].shape[1] == 5 and corner_distance(s["obbs"], polygons_to_obbs(dm.splits()["test"][0].polygons)) < 1e-4
    )


def test_split_command_line(datasets: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    link(datasets / "dota/images/P0005.png", tmp_path / "src/images/P0005.png")
    link(datasets / "dota/labelTxt/P0005.txt", tmp_path / "src/labelTxt/P0005.txt")
    assert main([str(tmp_path / "src"), str(tmp_path / "dst"), "--patch-size", "1024", "--pad", "--drop-empty"]) == 0
    assert "1 scene(s) -> 1 patch(es), 130 object(s)" in capsys.readouterr().out
    (png,) = (tmp_path / "dst/images").glob("*.png")
    assert png.name == "P0005__1__0___0.png" and read_image(png).shape == (3, 1024, 1024)  # padded
    assert torch.equal(read_image(png)[:, :977, :884], read_image(datasets / "dota/images/P0005.png"))
    assert read_image(png)[:, 977:].eq(0).all()
