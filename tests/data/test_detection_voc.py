"""PASCAL VOC layout and VOCDataModule (rsfm.data.detection.voc) on the real NEPU-OWOD oil wells."""

from pathlib import Path

import pytest
import torch
from data_helpers import voc_copy

from rsfm.data.base import IMAGENET_MEAN
from rsfm.data.detection import VOCDataModule, parse_voc_xml, voc_records
from rsfm.data.detection.voc import read_image_set
from rsfm.utils.errors import DataError


@pytest.fixture(scope="module")
def nepu(datasets: Path) -> Path:
    return datasets / "nepu_owod"


def test_voc_nepu_real(nepu: Path) -> None:
    records, classes = voc_records(nepu, "train")
    assert classes == ["oilwell"]
    assert len(records) == 120
    r = next(r for r in records if r.id == "0_15")
    assert r.image == nepu / "JPEGImages" / "0_15.jpg"
    torch.testing.assert_close(torch.from_numpy(r.boxes), torch.tensor([[178.0, 441, 254, 507], [598, 314, 657, 407]]))
    assert r.labels.tolist() == [0, 0] and r.difficult.tolist() == [False, False]
    assert r.meta["size"] == (768, 1024)
    # every box lies inside its image's declared size; the set has no difficult object
    for rec in records:
        w, h = rec.meta["size"]
        assert (rec.boxes[:, 2] > rec.boxes[:, 0]).all() and (rec.boxes[:, 3] > rec.boxes[:, 1]).all()
        assert rec.boxes[:, 0].min() >= 0 and rec.boxes[:, 2].max() <= w and rec.boxes[:, 3].max() <= h
        assert not rec.difficult.any()


def test_voc_difficult_flag(nepu: Path, tmp_path: Path) -> None:
    root = voc_copy(nepu, tmp_path / "voc", {"train": ["0_15", "0_24"]}, difficult={"0_24": 2})
    parsed = parse_voc_xml(root / "Annotations/0_24.xml")
    assert parsed["difficult"].tolist() == [False, False, True, False, False, False]
    assert parsed["filename"] == "0_24.jpg" and parsed["names"] == ["oilwell"] * 6
    records, _ = voc_records(root, "train")
    assert records[1].difficult.tolist() == [False, False, True, False, False, False]


def test_voc_unknown_class_and_malformed_files(nepu: Path, tmp_path: Path) -> None:
    root = voc_copy(nepu, tmp_path / "voc", {"train": ["0_15"]})
    with pytest.raises(ValueError, match="oilwell"):
        voc_records(root, "train", classes=["ship"])
    with pytest.raises(DataError, match="data.train_split 'train'.*'oilwell' is not in the class list"):
        VOCDataModule(str(root), classes=["ship"]).splits()
    xml = root / "Annotations" / "0_15.xml"
    xml.write_text(xml.read_text().replace("<xmax>254</xmax>", "<xmax>178</xmax>"))
    with pytest.raises(ValueError, match="xmax <= xmin"):
        voc_records(root, "train")
    xml.write_text("<annotation><object>")
    with pytest.raises(ValueError, match="not a valid VOC XML"):
        voc_records(root, "train")
    (root / "ImageSets/Main/crlf.txt").write_bytes(b"0_15\r\n\r\n")
    assert read_image_set(root / "ImageSets/Main/crlf.txt") == ["0_15"]


def test_voc_three_set_files(nepu: Path, tmp_path: Path) -> None:
    root = voc_copy(nepu, tmp_path / "voc", {"train": ["0_15"], "val": ["0_24"], "test": ["0_31"]})
    dm = VOCDataModule(str(root), val_split="val", test_split="test")
    assert {k: [r.id for r in v] for k, v in dm.splits().items()} == {
        "train": ["0_15"],
        "val": ["0_24"],
        "test": ["0_31"],
    }
    assert dm.class_names == ["oilwell"]


def test_datamodule_nepu_batches(nepu: Path) -> None:
    dm = VOCDataModule(str(nepu), val_fraction=0.1, test_fraction=0.1, crop_size=256, batch_size=2)
    info = dm.info()
    assert info.classes == ["oilwell"] and info.crop_size == 256 and info.num_channels == 3
    assert info.sample_keys == ("image", "boxes", "labels") and info.mean == list(IMAGENET_MEAN)
    dm.setup("fit")
    splits = dm.splits()
    assert [len(splits[k]) for k in ("train", "val", "test")] == [96, 12, 12]
    ids = [r.id for k in ("train", "val", "test") for r in splits[k]]
    assert len(set(ids)) == 120
    # the same seed gives the same split, another seed another one
    assert [r.id for r in VOCDataModule(str(nepu)).splits()["test"]] == [r.id for r in splits["test"]]
    assert [r.id for r in VOCDataModule(str(nepu), split_seed=1).splits()["test"]] != [r.id for r in splits["test"]]
    batch = next(iter(dm.train_dataloader()))
    assert isinstance(batch["image"], list) and len(batch["image"]) == 2
    assert all(img.shape == (3, 256, 256) and img.dtype == torch.float32 for img in batch["image"])
    assert all(0.0 <= float(img.min()) and float(img.max()) <= 1.0 for img in batch["image"])
    assert all(len(b) == len(lab) for b, lab in zip(batch["boxes"], batch["labels"], strict=True))
    val = next(iter(dm.val_dataloader()))
    assert val["image"][0].shape[1] >= 768 and isinstance(val["id"][0], str)
    assert val["id"] == [splits["val"][0].id]


def test_missing_sets_and_roots_are_named(nepu: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        voc_records(tmp_path / "missing", "train")
    with pytest.raises(DataError, match="data.train_split 'trainval': image set not found"):
        VOCDataModule(str(nepu), train_split="trainval").splits()
    with pytest.raises(DataError, match="data.root: folder not found"):
        VOCDataModule(str(tmp_path / "missing"))
    root = voc_copy(nepu, tmp_path / "voc", {"train": ["0_15"]})
    (root / "JPEGImages" / "0_15.jpg").unlink()
    with pytest.raises(DataError, match="no image for '0_15'"):
        VOCDataModule(str(root)).splits()
