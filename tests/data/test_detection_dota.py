"""DOTA labelTxt layout and DOTADataModule (rsfm.data.detection.dota) on the 4 real DOTA images."""

from pathlib import Path

import pytest
import torch
from data_helpers import link
from PIL import Image

from rsfm.data.detection import DOTA_V1_CLASSES, DetectionDataset, DOTADataModule, dota_records, parse_dota_txt
from rsfm.utils.errors import DataError

IDS = ["P0003", "P0004", "P0005", "P1478__1__853___962"]


@pytest.fixture(scope="module")
def dota(datasets: Path) -> Path:
    return datasets / "dota"


def test_dota_header_lines(dota: Path) -> None:
    a = parse_dota_txt(dota / "labelTxt/P0003.txt")
    assert a["imagesource"] == "GoogleEarth"
    assert a["gsd"] == pytest.approx(0.115726939386)
    assert len(a["names"]) == 55 and a["num_degenerate"] == 0  # 57 lines - 2 header lines
    # first object: 937 913 921 912 923 874 940 875 small-vehicle 0 → min/max of the corners
    torch.testing.assert_close(torch.from_numpy(a["boxes"][0]), torch.tensor([921.0, 874, 940, 913]))
    assert a["polygons"].shape == (55, 4, 2) and a["polygons"][0, 0].tolist() == [937.0, 913.0]
    assert a["names"][0] == "small-vehicle" and not a["difficult"][0]
    assert a["difficult"].sum() == 13


def test_dota_without_header_and_degenerate(dota: Path) -> None:
    a = parse_dota_txt(dota / "labelTxt/P1478__1__853___962.txt")
    assert a["imagesource"] is None and a["gsd"] is None
    # 295 lines: 2 zero-area polygons (all corners at x = 1, difficulty 2) dropped and counted
    assert a["num_degenerate"] == 2 and len(a["names"]) == 293
    assert (a["boxes"][:, 2] > a["boxes"][:, 0]).all() and (a["boxes"][:, 3] > a["boxes"][:, 1]).all()
    # the other three difficulty-2 polygons are kept, flagged difficult: 3 + the 3 of difficulty 1
    assert a["difficult"].sum() == 6


def test_dota_malformed_lines(dota: Path, tmp_path: Path) -> None:
    lines = (dota / "labelTxt/P0003.txt").read_text().splitlines()
    (tmp_path / "short.txt").write_text("\n".join([*lines[:5], "1 2 3 4 small-vehicle 0"]))
    with pytest.raises(ValueError, match=r"short.txt:6: expected"):
        parse_dota_txt(tmp_path / "short.txt")
    (tmp_path / "nan.txt").write_text("a b c d e f g h small-vehicle 0\n")
    with pytest.raises(ValueError, match="non-numeric"):
        parse_dota_txt(tmp_path / "nan.txt")
    (tmp_path / "gsd.txt").write_text("imagesource:GoogleEarth\ngsd:null\n" + "\n".join(lines[2:4]) + "\n")
    parsed = parse_dota_txt(tmp_path / "gsd.txt")
    assert parsed["gsd"] is None and len(parsed["names"]) == 2


def test_dota_records(dota: Path) -> None:
    records, classes, dropped = dota_records(dota)
    assert classes == list(DOTA_V1_CLASSES)
    assert [r.id for r in records] == IDS
    assert dropped == 2 and sum(len(r.boxes) for r in records) == 55 + 107 + 130 + 293
    assert {classes[i] for r in records for i in r.labels} == {"small-vehicle", "large-vehicle"}
    assert records[0].meta["gsd"] == pytest.approx(0.115726939386)
    assert records[3].meta["num_degenerate"] == 2
    s = DetectionDataset(records[3:], classes)[0]
    _, h, w = s["image"].shape
    assert float(s["boxes"][:, 2].max()) <= w and float(s["boxes"][:, 3].max()) <= h
    found, names, _ = dota_records(dota, classes=None)
    assert names == ["large-vehicle", "small-vehicle"] and len(found) == 4


def test_dota_datamodule_seeded_split(dota: Path) -> None:
    dm = DOTADataModule(str(dota), seed=0)
    splits = dm.splits()
    assert [len(splits[k]) for k in ("train", "val", "test")] == [2, 1, 1]
    assert dm.num_degenerate == 2
    ids = [r.id for k in ("train", "val", "test") for r in splits[k]]
    assert sorted(ids) == IDS
    assert dm.info().classes == list(DOTA_V1_CLASSES)
    # the split is a function of the seed only
    again = DOTADataModule(str(dota), seed=5).splits()
    assert {k: [r.id for r in v] for k, v in again.items()} == {k: [r.id for r in v] for k, v in splits.items()}


def test_dota_datamodule_training_crops_drop_difficult_objects(dota: Path) -> None:
    dm = DOTADataModule(str(dota), crop_size=256, batch_size=2, crops_per_image=2, object_crop_prob=1.0)
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert len(loader.dataset) == 4  # 2 training images x 2 crops
    for batch in loader:
        assert [img.shape for img in batch["image"]] == [(3, 256, 256)] * 2
        for boxes, difficult in zip(batch["boxes"], batch["difficult"], strict=True):
            assert len(boxes) >= 1 and not difficult.any()  # object-centred crops, difficult dropped
            assert (boxes >= 0).all() and (boxes <= 256).all()
    test = dm.datasets["test"][0]  # a whole image
    width, height = Image.open(dota / "images" / f"{test['id']}.png").size
    assert test["image"].shape == (3, height, width)


def test_dota_split_folders(dota: Path, tmp_path: Path) -> None:
    root = tmp_path / "DOTA"
    for split, ids in (("train", IDS[:2]), ("val", IDS[2:3]), ("test", IDS[3:])):
        for rid in ids:
            link(dota / "images" / f"{rid}.png", root / split / "images" / f"{rid}.png")
            link(dota / "labelTxt" / f"{rid}.txt", root / split / "labelTxt" / f"{rid}.txt")
    dm = DOTADataModule(str(root), train_split="train", val_split="val", test_split="test")
    assert {k: [r.id for r in v] for k, v in dm.splits().items()} == {
        "train": IDS[:2],
        "val": IDS[2:3],
        "test": IDS[3:],
    }
    assert dm.num_degenerate == 2  # counted over every split read
    with pytest.raises(DataError, match="data.train_split '.': DOTA label folder not found"):
        DOTADataModule(str(root)).splits()
    (root / "val" / "images" / "P0005.png").unlink()
    with pytest.raises(DataError, match="data.val_split 'val': no image for P0005.txt"):
        DOTADataModule(str(root), train_split="train", val_split="val", test_split="test").splits()
