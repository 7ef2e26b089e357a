"""DOTA (rsfm.data.rotated.dota) and DIOR-R (rsfm.data.rotated.dior_r) on the real files."""

import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import shapely
import torch
from PIL import Image
from rotated_helpers import corner_distance, dota_objects, link

from rsfm.data.rotated import (
    DOTA_CLASSES,
    DOTA_V1_CLASSES,
    DOTA_V2_CLASSES,
    DOTA_V15_CLASSES,
    DIORRDataModule,
    DOTARotatedDataModule,
    dior_r_records,
    dota_obb_records,
    polygons_to_obbs,
)
from rsfm.ops.obb import obb2poly
from rsfm.utils.errors import DataError

IDS = ["P0003", "P0004", "P0005", "P1478__1__853___962"]


@pytest.fixture(scope="module")
def dota(datasets: Path) -> Path:
    return datasets / "dota"


def test_class_lists_of_the_versions() -> None:
    assert len(DOTA_V1_CLASSES) == 15 and DOTA_V1_CLASSES[0] == "plane" and DOTA_V1_CLASSES[-1] == "helicopter"
    assert DOTA_V15_CLASSES == (*DOTA_V1_CLASSES, "container-crane")
    assert DOTA_V2_CLASSES == (*DOTA_V15_CLASSES, "airport", "helipad") and len(DOTA_V2_CLASSES) == 18
    assert DOTA_CLASSES == {"1.0": DOTA_V1_CLASSES, "1.5": DOTA_V15_CLASSES, "2.0": DOTA_V2_CLASSES}


def test_dota_records_keep_the_polygons_as_written(dota: Path) -> None:
    records, classes = dota_obb_records(dota)
    assert classes == list(DOTA_V1_CLASSES) and [r.id for r in records] == IDS
    assert [len(r) for r in records] == [55, 107, 130, 293]  # P1478: 295 lines, 2 zero-area dropped
    assert [r.meta["num_degenerate"] for r in records] == [0, 0, 0, 2]
    # first object of P0003.txt: 937.0 913.0 921.0 912.0 923.0 874.0 940.0 875.0 small-vehicle 0
    p = records[0]
    assert p.polygons[0].tolist() == [937, 913, 921, 912, 923, 874, 940, 875] and p.polygons.dtype == np.float32
    assert classes[p.labels[0]] == "small-vehicle" and not p.difficult[0] and p.difficult.sum() == 13
    assert p.meta["gsd"] == pytest.approx(0.115726939386) and p.meta["imagesource"] == "GoogleEarth"
    assert records[3].meta["gsd"] is None and records[3].difficult.sum() == 6  # no header lines
    np.testing.assert_array_equal(p.polygons, dota_objects(dota, "P0003")["polygons"])
    found, names = dota_obb_records(dota, classes=None)
    assert names == ["large-vehicle", "small-vehicle"] and len(found) == 4


def test_dota_boxes_are_the_min_area_rectangles_of_the_quadrilaterals(dota: Path) -> None:
    records, _ = dota_obb_records(dota)
    for r in records:
        obbs = polygons_to_obbs(r.polygons)
        assert obbs.shape == (len(r), 5) and (obbs[:, 2] >= obbs[:, 3]).all()
        assert ((obbs[:, 4] >= -math.pi / 2) & (obbs[:, 4] < math.pi / 2)).all()
        for poly, box in zip(r.polygons, obbs, strict=True):
            quad = shapely.convex_hull(shapely.multipoints(poly.reshape(4, 2)))
            rect = shapely.oriented_envelope(quad)
            assert float(box[2] * box[3]) == pytest.approx(rect.area, rel=1e-4, abs=1e-2)
            corners = obb2poly(box[None].double())[0].reshape(4, 2).tolist()
            assert shapely.Polygon(corners).buffer(1e-3).contains(quad)


def test_dota_datamodule(dota: Path) -> None:
    dm = DOTARotatedDataModule(str(dota), version=1.5, crop_size=256, seed=0)
    assert dm.version == "1.5"
    with pytest.warns(UserWarning, match="2 object"):
        splits = dm.splits()
    assert [len(splits[k]) for k in ("train", "val", "test")] == [2, 1, 1] and dm.num_degenerate == 2
    assert sorted(r.id for k in ("train", "val", "test") for r in splits[k]) == IDS
    assert dm.class_names == list(DOTA_V15_CLASSES)
    dm.setup()
    s = dm.datasets["train"][0]
    assert s["image"].shape[-2:] == (256, 256) and s["obbs"].shape[1] == 5 and not s["difficult"].any()
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"image", "obbs", "polygons", "labels", "difficult", "id", "skipped"}
    assert len(batch["image"]) == 2
    whole = dm.datasets["test"][0]
    rec = splits["test"][0]
    assert whole["image"].shape[-2:] == Image.open(rec.image).size[::-1]
    assert corner_distance(whole["obbs"], polygons_to_obbs(rec.polygons)) < 1e-4
    assert torch.equal(whole["polygons"], torch.from_numpy(rec.polygons))  # the annotated quadrilaterals
    assert whole["difficult"].sum() == rec.difficult.sum()  # evaluation keeps difficult objects, flagged
    for spelling in ("1", "v2.0", 2):
        assert DOTARotatedDataModule(str(dota), version=spelling).version in ("1.0", "2.0")
    with pytest.raises(DataError, match="data.version must be one of"):
        DOTARotatedDataModule(str(dota), version="3.0")


def test_dota_layout_errors(dota: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"data.train_split 'train'.*label folder not found"):
        DOTARotatedDataModule(str(dota), train_split="train").splits()
    root = tmp_path / "d"
    link(dota / "images/P0003.png", root / "images/P0003.png")
    (root / "labels").mkdir()
    lines = (dota / "labelTxt/P0003.txt").read_text().splitlines()
    (root / "labels/P0003.txt").write_text("\n".join([*lines[:4], "10 20 60 20 60 40 10 40 ship-ish 0"]) + "\n")
    with pytest.raises(ValueError, match=r"P0003.txt: class 'ship-ish' is not in the class list"):
        dota_obb_records(root, label_dir="labels")
    (root / "labels/P0004.txt").write_text(lines[2] + "\n")
    with pytest.raises(FileNotFoundError, match=r"no image P0004"):
        dota_obb_records(root, None, label_dir="labels")


def _dior_r_release(dior: Path, root: Path) -> Path:
    """DIOR-R as it ships, from the one real image: trainval ids 00001 (train), 00002 (val), test id 00003."""
    xml = dior / "Annotations/Oriented Bounding Boxes/00001.xml"
    jpg = dior / "JPEGImages/00001.jpg"
    for rid, folder in (
        ("00001", "JPEGImages-trainval"),
        ("00002", "JPEGImages-trainval"),
        ("00003", "JPEGImages-test"),
    ):
        link(jpg, root / folder / f"{rid}.jpg")
        dst = root / "Annotations/Oriented Bounding Boxes" / f"{rid}.xml"
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(xml, dst)
    sets = root / "ImageSets/Main"
    sets.mkdir(parents=True)
    for name, rid in (("train", "00001"), ("val", "00002"), ("test", "00003")):
        (sets / f"{name}.txt").write_bytes(f"{rid}\r\n".encode())
    return root


def test_dior_r_records_and_datamodule(datasets: Path, tmp_path: Path) -> None:
    root = _dior_r_release(datasets / "dior_r", tmp_path / "DIOR")
    (r,) = dior_r_records(root, "train")
    # golffield: x_left_top 133, y_left_top 237, x_right_top 684, ..., y_left_bottom 672
    assert r.polygons.tolist() == [[133, 237, 684, 237, 684, 672, 133, 672]] and r.labels.tolist() == [9]
    assert r.meta == {"size": (800, 800), "num_degenerate": 0} and r.image.parent.name == "JPEGImages-trainval"
    box = polygons_to_obbs(r.polygons)[0]
    assert box.tolist() == pytest.approx([408.5, 454.5, 551.0, 435.0, 0.0], abs=1e-4)
    dm = DIORRDataModule(str(root), angle_version="oc")
    splits = dm.splits()
    assert [[x.id for x in splits[k]] for k in ("train", "val", "test")] == [["00001"], ["00002"], ["00003"]]
    assert splits["test"][0].image.parent.name == "JPEGImages-test"
    dm.setup()
    s = dm.datasets["val"][0]
    assert s["image"].shape == (3, 800, 800) and s["labels"].tolist() == [9]
    # oc: the same rectangle with theta in (0, pi/2], here pi/2 with w and h swapped
    assert s["obbs"][0].tolist() == pytest.approx([408.5, 454.5, 435.0, 551.0, math.pi / 2], abs=1e-4)
    crop = dm.datasets["train"][0]
    assert crop["image"].shape[-2:] == (256, 256) and crop["obbs"].dtype == torch.float32
    with pytest.raises(DataError, match=r"data.test_split 'missing': DIOR image set not found"):
        DIORRDataModule(str(root), test_split="missing").splits()
