"""COCO JSON layout and COCODataModule (rsfm.data.detection.coco), annotations written for real NEPU images."""

import json
from pathlib import Path

import pytest
import torch

from rsfm.data.detection import COCODataModule, DetectionDataset, coco_records, parse_voc_xml
from rsfm.utils.errors import DataError


@pytest.fixture(scope="module")
def nepu(datasets: Path) -> Path:
    return datasets / "nepu_owod"


def _coco(nepu: Path, ids: list[str], first_id: int = 10, crowd: bool = True) -> dict:
    """A COCO file for real NEPU images: category id 7 (non-contiguous), one crowd box in the second image."""
    images, anns = [], []
    for k, rid in enumerate(ids):
        a = parse_voc_xml(nepu / f"Annotations/{rid}.xml")
        images.append({"id": first_id + k, "file_name": f"{rid}.jpg", "width": a["size"][0], "height": a["size"][1]})
        for j, (x0, y0, x1, y1) in enumerate(a["boxes"].tolist()):
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": first_id + k,
                    "category_id": 7,
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "iscrowd": int(crowd and k == 1 and j == 0),
                }
            )
    return {"images": images, "annotations": anns, "categories": [{"id": 7, "name": "oilwell"}, {"id": 3, "name": "a"}]}


def test_coco_json(nepu: Path, tmp_path: Path) -> None:
    coco = _coco(nepu, ["0_15", "0_24"])
    coco["annotations"].append({"id": 99, "image_id": 10, "category_id": 3, "bbox": [5, 5, 0, 10], "iscrowd": 0})
    (tmp_path / "ann.json").write_text(json.dumps(coco))
    records, classes = coco_records(tmp_path / "ann.json", nepu / "JPEGImages")
    assert classes == ["a", "oilwell"]
    assert [r.id for r in records] == ["10", "11"]
    torch.testing.assert_close(
        torch.from_numpy(records[0].boxes), torch.tensor([[178.0, 441, 254, 507], [598, 314, 657, 407]])
    )
    assert records[0].labels.tolist() == [1, 1]  # the box with no area is dropped
    assert records[1].difficult.tolist() == [True] + [False] * 5
    assert DetectionDataset(records, classes)[1]["image"].shape == (3, 1024, 1024)


def test_coco_errors(nepu: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="COCO annotation file not found"):
        coco_records(tmp_path / "none.json", nepu / "JPEGImages")
    (tmp_path / "bad.json").write_text(json.dumps({"images": []}))
    with pytest.raises(ValueError, match="needs 'images' and 'categories'"):
        coco_records(tmp_path / "bad.json", nepu / "JPEGImages")
    coco = _coco(nepu, ["0_15"])
    coco["annotations"][0]["image_id"] = 42
    (tmp_path / "orphan.json").write_text(json.dumps(coco))
    with pytest.raises(ValueError, match="unknown image 42"):
        coco_records(tmp_path / "orphan.json", nepu / "JPEGImages")


def test_coco_datamodule_splits_are_annotation_files(nepu: Path, tmp_path: Path) -> None:
    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    (root / "images").symlink_to(nepu / "JPEGImages")
    for name, ids, first in (("train", ["0_15", "0_24", "0_31"], 1), ("val", ["0_36"], 10), ("test", ["0_37"], 20)):
        (root / "annotations" / f"{name}.json").write_text(json.dumps(_coco(nepu, ids, first)))
    dm = COCODataModule(
        str(root),
        train_split="annotations/train.json",
        val_split="annotations/val.json",
        test_split="annotations/test.json",
        crop_size=128,
        batch_size=3,
    )
    assert dm.info().classes == ["a", "oilwell"]
    assert {k: [r.id for r in v] for k, v in dm.splits().items()} == {
        "train": ["1", "2", "3"],
        "val": ["10"],
        "test": ["20"],
    }
    batch = next(iter(dm.train_dataloader()))
    assert len(batch["image"]) == 3 and all(img.shape == (3, 128, 128) for img in batch["image"])
    assert next(iter(dm.test_dataloader()))["id"] == ["20"]
    with pytest.raises(DataError, match="data.train_split 'train': COCO annotation file not found"):
        COCODataModule(str(root)).splits()
    (root / "annotations" / "other.json").write_text(
        json.dumps({**_coco(nepu, ["0_37"]), "categories": [{"id": 7, "name": "oilwell"}]})
    )
    with pytest.raises(DataError, match="the test split's classes"):
        COCODataModule(str(root), train_split="annotations/train.json", test_split="annotations/other.json").splits()
