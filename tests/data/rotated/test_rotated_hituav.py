"""roLabelImg layout and HIT-UAV (rsfm.data.rotated.rolabelimg) on the 605 real HIT-UAV images."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from rotated_helpers import corner_distance, link

from rsfm.data.rotated import (
    HIT_UAV_CLASSES,
    HITUAVDataModule,
    RoLabelImgDataModule,
    parse_rolabelimg_xml,
    polygons_to_obbs,
    rolabelimg_records,
)
from rsfm.utils.errors import DataError


@pytest.fixture(scope="module")
def hit_uav(datasets: Path) -> Path:
    return datasets / "hit_uav"


def test_parse_rolabelimg_xml(hit_uav: Path) -> None:
    a = parse_rolabelimg_xml(hit_uav / "Annotations/0_100_30_0_03289.xml")
    assert a["filename"] == "0_100_30_0_03289" and a["size"] == (640, 512)
    assert a["names"] == ["Person", "Person", "Car"] and not a["difficult"].any()
    # <cx>394.9444</cx><cy>419.0556</cy><w>8.0</w><h>16.0</h><angle>0.0</angle>
    np.testing.assert_allclose(a["obbs"][0], [394.9444, 419.0556, 8.0, 16.0, 0.0], rtol=1e-6)
    np.testing.assert_allclose(
        a["polygons"][0], [390.9444, 411.0556, 398.9444, 411.0556, 398.9444, 427.0556, 390.9444, 427.0556], atol=1e-4
    )
    # the car, angle 2.444687 rad: w points along (cos, sin) in image axes (clockwise on screen)
    cx, cy, w, h, angle = a["obbs"][2]
    first_edge = a["polygons"][2][2:4] - a["polygons"][2][0:2]
    np.testing.assert_allclose(first_edge, [w * math.cos(angle), w * math.sin(angle)], atol=1e-3)
    # the same rectangle in le90: long side w, theta in [-pi/2, pi/2)
    le90 = polygons_to_obbs(a["polygons"])
    assert corner_distance(le90, a["obbs"]) < 1e-3 and (le90[:, 4].abs() <= math.pi / 2).all()


def test_hit_uav_records(hit_uav: Path) -> None:
    train, classes = rolabelimg_records(hit_uav, "train", HIT_UAV_CLASSES)
    val, _ = rolabelimg_records(hit_uav, "val", HIT_UAV_CLASSES)
    assert len(train) + len(val) == 605 and len(val) == 97
    assert all("\r" not in r.id and r.image.is_file() for r in train + val)  # CRLF image lists
    assert {r.id for r in train}.isdisjoint(r.id for r in val)
    labels = np.concatenate([r.labels for r in train + val])
    assert len(labels) == 5056 and sum(r.meta["num_degenerate"] for r in train + val) == 0
    counts = dict(zip(classes, np.bincount(labels, minlength=5).tolist(), strict=True))
    assert counts == {"Person": 2331, "Car": 1647, "Bicycle": 1015, "OtherVehicle": 45, "DontCare": 18}
    assert sum(int(r.difficult.sum()) for r in train + val) == 12
    obbs = torch.cat([polygons_to_obbs(r.polygons) for r in train + val])
    axis_aligned = (obbs[:, 4].abs() < 1e-4) | ((obbs[:, 4] + math.pi / 2).abs() < 1e-4)
    assert axis_aligned.float().mean() > 0.5  # over half of HIT-UAV's angles are 0
    found, names = rolabelimg_records(hit_uav, "val")
    assert names == sorted(HIT_UAV_CLASSES) and len(found) == 97  # classes=None: sorted names found


def test_hit_uav_datamodule_end_to_end(hit_uav: Path) -> None:
    dm = HITUAVDataModule(str(hit_uav), crop_size=256, batch_size=4, seed=0)
    splits = dm.splits()
    # no test list in this copy: the test images are held out of train (test_fraction 0.1 of 508)
    assert dm.test_split is None and [len(splits[k]) for k in ("train", "val", "test")] == [457, 97, 51]
    ids = {k: {r.id for r in v} for k, v in splits.items()}
    assert ids["train"].isdisjoint(ids["test"]) and ids["val"].isdisjoint(ids["train"] | ids["test"])
    assert dm.class_names == list(HIT_UAV_CLASSES) and dm.info().classes == list(HIT_UAV_CLASSES)
    batch = next(iter(dm.train_dataloader()))
    assert len(batch["image"]) == 4 and batch["skipped"] == []
    for image, obbs, labels in zip(batch["image"], batch["obbs"], batch["labels"], strict=True):
        assert image.shape == (3, 256, 256) and obbs.shape == (len(labels), 5) and obbs.dtype == torch.float32
        assert ((obbs[:, 4] >= -math.pi / 2) & (obbs[:, 4] < math.pi / 2)).all() and (labels < 5).all()
    val = next(iter(dm.val_dataloader()))
    assert val["image"][0].shape == (3, 512, 640) and val["id"][0] == splits["val"][0].id
    test = next(iter(dm.test_dataloader()))
    assert test["id"][0] in ids["test"]


def test_hit_uav_uses_a_test_list_when_there_is_one(hit_uav: Path, tmp_path: Path) -> None:
    root = tmp_path / "hit"
    (root / "ImageSets/Main").mkdir(parents=True)
    train = (hit_uav / "ImageSets/Main/train.txt").read_bytes().splitlines(keepends=True)
    val = (hit_uav / "ImageSets/Main/val.txt").read_bytes().splitlines(keepends=True)
    (root / "ImageSets/Main/train.txt").write_bytes(b"".join(train[:40]))
    (root / "ImageSets/Main/test.txt").write_bytes(b"".join(train[40:50]))
    (root / "ImageSets/Main/val.txt").write_bytes(b"".join(val[:20]))
    for rid in (line.decode().strip() for line in train[:50] + val[:20]):
        link(hit_uav / "JPEGImages" / f"{rid}.jpg", root / "JPEGImages" / f"{rid}.jpg")
        link(hit_uav / "Annotations" / f"{rid}.xml", root / "Annotations" / f"{rid}.xml")
    dm = HITUAVDataModule(str(root), angle_version="oc")
    splits = dm.splits()
    assert dm.test_split == "test" and [len(splits[k]) for k in ("train", "val", "test")] == [40, 20, 10]
    dm.setup()
    obbs = dm.datasets["test"][0]["obbs"]
    assert ((obbs[:, 4] > 0) & (obbs[:, 4] <= math.pi / 2 + 1e-6)).all()
    # the generic roLabelImg module: "." reads every annotation; classes default to the sorted names
    every = RoLabelImgDataModule(str(root), train_split=".", val_fraction=0.0, test_fraction=0.1)
    assert sum(len(v) for v in every.splits().values()) == 70
    assert every.class_names == sorted(every.class_names) and set(every.class_names) <= set(HIT_UAV_CLASSES)
    with pytest.raises(DataError, match=r"data.train_split 'missing'.*image set 'missing' not found"):
        HITUAVDataModule(str(root), train_split="missing").splits()


def test_rolabelimg_malformed_and_bndbox(hit_uav: Path, tmp_path: Path) -> None:
    text = (hit_uav / "Annotations/0_100_30_0_03289.xml").read_text()
    (tmp_path / "nan.xml").write_text(text.replace("<w>8.0</w>", "<w>eight</w>", 1))
    with pytest.raises(DataError, match=r"nan.xml: object 0 \('Person'\): expected a number in <w>, got 'eight'"):
        parse_rolabelimg_xml(tmp_path / "nan.xml")
    # roLabelImg saves boxes drawn without rotation as <bndbox>
    start, end = text.index("<robndbox>"), text.index("</robndbox>") + len("</robndbox>")
    bnd = "<bndbox><xmin>390.9444</xmin><ymin>411.0556</ymin><xmax>398.9444</xmax><ymax>427.0556</ymax></bndbox>"
    (tmp_path / "bnd.xml").write_text(text[:start] + bnd + text[end:])
    a = parse_rolabelimg_xml(tmp_path / "bnd.xml")
    np.testing.assert_allclose(a["obbs"][0], [394.9444, 419.0556, 8.0, 16.0, 0.0], rtol=1e-6)
    (tmp_path / "none.xml").write_text(text[:start] + text[end:])
    with pytest.raises(DataError, match=r"none.xml: object 0 .*expected <robndbox>"):
        parse_rolabelimg_xml(tmp_path / "none.xml")
