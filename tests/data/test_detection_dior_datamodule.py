"""DIORDataModule (rsfm.data.detection.dior) on a DIOR-shaped folder around the real DIOR-R sample.

The layout trick of test_dior.py: the one real DIOR-R image (800 × 800, one golffield) and its
oriented annotation, linked under several ids with the horizontal file derived from it, in the
folders and image-set lists DIOR ships (``train``, ``val``, ``test``; CRLF line ends).
"""

import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import torch
from test_dior import HBB, OBB, write_hbb_from_obb

from rsfm.data.detection import DIOR_CLASSES, DIORDataModule
from rsfm.utils.errors import DataError

GOLF = DIOR_CLASSES.index("golffield")


@pytest.fixture
def dior(datasets: Path, tmp_path: Path) -> Path:
    """``train``: 00001, 00002; ``val``: 00003 (JPEGImages-trainval); ``test``: 00004 (JPEGImages-test).

    00004's oriented file adds a rotated, lower-case ``expressway-service-area`` to the real object.
    """
    src = datasets / "dior_r"
    root = tmp_path / "DIOR"
    for d in ("JPEGImages-trainval", "JPEGImages-test", OBB, Path("ImageSets") / "Main"):
        (root / d).mkdir(parents=True)
    for rid, folder in (("00001", "trainval"), ("00002", "trainval"), ("00003", "trainval"), ("00004", "test")):
        (root / f"JPEGImages-{folder}" / f"{rid}.jpg").symlink_to(src / "JPEGImages" / "00001.jpg")
        tree = ET.parse(src / OBB / "00001.xml")
        tree.getroot().find("filename").text = f"{rid}.jpg"
        if rid == "00004":
            obj = ET.fromstring(ET.tostring(tree.getroot().find("object")))
            obj.find("name").text = "expressway-service-area"
            corners = ("x_left_top", "y_left_top", "x_right_top", "y_right_top")
            corners += ("x_right_bottom", "y_right_bottom", "x_left_bottom", "y_left_bottom")
            for k, v in zip(corners, (100, 50, 150, 100, 100, 150, 50, 100), strict=True):
                obj.find("robndbox").find(k).text = str(v)
            tree.getroot().append(obj)
        tree.write(root / OBB / f"{rid}.xml", encoding="utf-8", xml_declaration=True)
        write_hbb_from_obb(root / OBB / f"{rid}.xml", root / HBB / f"{rid}.xml")
    for name, ids in (("train", ["00001", "00002"]), ("val", ["00003"]), ("test", ["00004"])):
        (root / "ImageSets" / "Main" / f"{name}.txt").write_bytes("".join(f"{i}\r\n" for i in ids).encode())
    return root


def test_default_splits_are_the_shipped_lists(dior: Path) -> None:
    dm = DIORDataModule(str(dior))
    assert {k: [r.id for r in v] for k, v in dm.splits().items()} == {
        "train": ["00001", "00002"],
        "val": ["00003"],
        "test": ["00004"],
    }
    info = dm.info()
    assert info.classes == list(DIOR_CLASSES) and len(info.classes) == 20
    test = dm.splits()["test"][0]
    assert test.image == dior / "JPEGImages-test" / "00004.jpg"
    assert test.labels.tolist() == [GOLF, DIOR_CLASSES.index("Expressway-Service-area")]
    assert test.boxes.tolist() == [[133, 237, 684, 672], [50, 50, 150, 150]]
    assert "polygons" not in test.meta


def test_oriented_records_keep_their_polygons(dior: Path) -> None:
    dm = DIORDataModule(str(dior), oriented=True)
    test = dm.splits()["test"][0]
    assert test.boxes.tolist() == [[133, 237, 684, 672], [50, 50, 150, 150]]  # the hulls
    assert test.meta["polygons"][1].tolist() == [[100, 50], [150, 100], [100, 150], [50, 100]]


def test_loaders(dior: Path) -> None:
    # the 551 × 435 golf course is larger than a 256 crop: the window is centred on it and the box
    # clipped to the window, 27 % of its area; kept with min_visibility 0.2, dropped with the default 0.5
    dm = DIORDataModule(str(dior), crop_size=256, batch_size=2, object_crop_prob=1.0, min_visibility=0.2)
    batch = next(iter(dm.train_dataloader()))
    assert sorted(batch["id"]) == ["00001", "00002"]
    for img, boxes, labels in zip(batch["image"], batch["boxes"], batch["labels"], strict=True):
        assert img.shape == (3, 256, 256) and labels.tolist() == [GOLF]
        assert boxes.tolist() == [[0.0, 0.0, 256.0, 256.0]]
    strict = next(iter(DIORDataModule(str(dior), crop_size=256, batch_size=2).train_dataloader()))
    assert [len(b) for b in strict["boxes"]] == [0, 0]
    test = next(iter(dm.test_dataloader()))
    assert test["image"][0].shape == (3, 800, 800) and test["id"] == ["00004"]
    assert torch.equal(test["labels"][0], torch.tensor([GOLF, DIOR_CLASSES.index("Expressway-Service-area")]))


def test_trainval_and_missing_lists(dior: Path) -> None:
    shutil.copy(dior / "ImageSets" / "Main" / "train.txt", dior / "ImageSets" / "Main" / "trainval.txt")
    with (dior / "ImageSets" / "Main" / "trainval.txt").open("ab") as f:
        f.write(b"00003\r\n")
    # train on trainval, test on test, validate on a seeded share of trainval (1 of 3 items)
    dm = DIORDataModule(str(dior), train_split="trainval", val_split=None, val_fraction=0.3)
    splits = dm.splits()
    assert len(splits["train"]) == 2 and len(splits["val"]) == 1 and [r.id for r in splits["test"]] == ["00004"]
    with pytest.warns(UserWarning, match="data.test_split equals data.val_split"):
        DIORDataModule(str(dior), val_split="test").splits()
    (dior / "ImageSets" / "Main" / "val.txt").unlink()
    with pytest.raises(DataError, match="data.val_split 'val': DIOR image set not found"):
        DIORDataModule(str(dior)).splits()
    with pytest.raises(DataError, match="data.train_split 'train'.*'golffield' is not in the class list"):
        DIORDataModule(str(dior), classes=["airplane"], val_split=None).splits()
