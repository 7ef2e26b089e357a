"""Detection loaders on the real NEPU-OWOD (VOC) and DOTA files, COCO JSON, crops and splits."""

import json
from pathlib import Path

import pytest
import torch

from rsfm.data.detection import (
    DOTA_V1_CLASSES,
    DetectionDataModule,
    DetectionDataset,
    TrainTransform,
    coco_records,
    collate_lists,
    dota_records,
    parse_dota_txt,
    parse_voc_xml,
    random_crop,
    random_flip,
    seeded_split,
    voc_records,
)


@pytest.fixture(scope="module")
def nepu(datasets: Path) -> Path:
    return datasets / "nepu_owod"


def _voc_copy(nepu: Path, root: Path, ids: list[str], difficult: dict[str, int] | None = None) -> Path:
    """A VOC layout with real NEPU files; ``difficult`` sets the flag of object i of an id."""
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for rid in ids:
        (root / "JPEGImages" / f"{rid}.jpg").symlink_to(nepu / "JPEGImages" / f"{rid}.jpg")
        text = (nepu / "Annotations" / f"{rid}.xml").read_text()
        if difficult and rid in difficult:
            parts = text.split("<difficult>0</difficult>")
            i = difficult[rid]
            text = "<difficult>0</difficult>".join(parts[: i + 1]) + "<difficult>1</difficult>"
            text += "<difficult>0</difficult>".join(parts[i + 1 :])
        (root / "Annotations" / f"{rid}.xml").write_text(text)
    return root


# --------------------------------------------------------------------------- VOC


def test_voc_nepu_real(nepu):
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


def test_voc_sample_matches_image(nepu):
    records, classes = voc_records(nepu, "train")
    ds = DetectionDataset(records[:2], classes)
    s = ds[0]
    assert s["image"].dtype == torch.float32 and s["image"].shape[0] == 3
    assert 0.0 <= float(s["image"].min()) and float(s["image"].max()) <= 1.0
    w, h = records[0].meta["size"]
    assert tuple(s["image"].shape[1:]) == (h, w)
    assert s["boxes"].dtype == torch.float32 and s["labels"].dtype == torch.int64 and s["difficult"].dtype == torch.bool


def test_voc_difficult_flag(nepu, tmp_path):
    root = _voc_copy(nepu, tmp_path / "voc", ["0_15", "0_24"], difficult={"0_24": 2})
    (root / "ImageSets/Main/train.txt").write_text("0_15\n0_24\n")
    parsed = parse_voc_xml(root / "Annotations/0_24.xml")
    assert parsed["difficult"].tolist() == [False, False, True, False, False, False]
    records, _ = voc_records(root, "train")
    assert records[1].difficult.tolist() == [False, False, True, False, False, False]
    # kept flagged in the sample, dropped from the training targets
    s = DetectionDataset(records, ["oilwell"])[1]
    assert s["difficult"].sum() == 1 and len(s["boxes"]) == 6
    t = TrainTransform(crop_size=2048, flip=False)  # a crop larger than the image keeps everything
    out = DetectionDataset(records, ["oilwell"], t)[1]
    assert len(out["boxes"]) == 5 and not out["difficult"].any()
    keep = TrainTransform(crop_size=2048, flip=False, keep_difficult=True)
    assert len(DetectionDataset(records, ["oilwell"], keep)[1]["boxes"]) == 6


def test_voc_unknown_class_raises(nepu, tmp_path):
    root = _voc_copy(nepu, tmp_path / "voc", ["0_15"])
    (root / "ImageSets/Main/train.txt").write_text("0_15\n")
    with pytest.raises(ValueError, match="oilwell"):
        voc_records(root, "train", classes=["ship"])


def test_voc_three_set_files(nepu, tmp_path):
    root = _voc_copy(nepu, tmp_path / "voc", ["0_15", "0_24", "0_31"])
    for name, rid in (("train", "0_15"), ("val", "0_24"), ("test", "0_31")):
        (root / f"ImageSets/Main/{name}.txt").write_text(rid + "\n")
    dm = DetectionDataModule("voc", str(root))
    assert {k: [r.id for r in v] for k, v in dm.splits().items()} == {
        "train": ["0_15"],
        "val": ["0_24"],
        "test": ["0_31"],
    }
    assert dm.class_names == ["oilwell"]


# --------------------------------------------------------------------------- DOTA


def test_dota_header_lines(datasets):
    a = parse_dota_txt(datasets / "dota/labelTxt/P0003.txt")
    assert a["imagesource"] == "GoogleEarth"
    assert a["gsd"] == pytest.approx(0.115726939386)
    assert len(a["names"]) == 55 and a["num_degenerate"] == 0  # 57 lines - 2 header lines
    # first object: 937 913 921 912 923 874 940 875 small-vehicle 0 → min/max of the corners
    torch.testing.assert_close(torch.from_numpy(a["boxes"][0]), torch.tensor([921.0, 874, 940, 913]))
    assert a["names"][0] == "small-vehicle" and not a["difficult"][0]
    assert a["difficult"].sum() == 13


def test_dota_without_header_and_degenerate(datasets):
    a = parse_dota_txt(datasets / "dota/labelTxt/P1478__1__853___962.txt")
    assert a["imagesource"] is None and a["gsd"] is None
    # 295 lines: 2 zero-area polygons (all corners at x = 1, difficulty 2) dropped and counted
    assert a["num_degenerate"] == 2 and len(a["names"]) == 293
    assert (a["boxes"][:, 2] > a["boxes"][:, 0]).all() and (a["boxes"][:, 3] > a["boxes"][:, 1]).all()
    # the other three difficulty-2 polygons are kept, flagged difficult: 3 + the 3 of difficulty 1
    assert a["difficult"].sum() == 6


def test_dota_records(datasets):
    records, classes, dropped = dota_records(datasets / "dota")
    assert classes == list(DOTA_V1_CLASSES)
    assert [r.id for r in records] == ["P0003", "P0004", "P0005", "P1478__1__853___962"]
    assert dropped == 2 and sum(len(r.boxes) for r in records) == 55 + 107 + 130 + 293
    assert {classes[i] for r in records for i in r.labels} == {"small-vehicle", "large-vehicle"}
    assert records[0].meta["gsd"] == pytest.approx(0.115726939386)
    s = DetectionDataset(records[3:], classes)[0]
    _, h, w = s["image"].shape
    assert float(s["boxes"][:, 2].max()) <= w and float(s["boxes"][:, 3].max()) <= h


def test_dota_datamodule_seeded_split(datasets):
    dm = DetectionDataModule("dota", str(datasets / "dota"), seed=0)
    splits = dm.splits()
    assert [len(splits[k]) for k in ("train", "val", "test")] == [2, 1, 1]
    assert dm.num_degenerate == 2
    ids = [r.id for k in ("train", "val", "test") for r in splits[k]]
    assert sorted(ids) == ["P0003", "P0004", "P0005", "P1478__1__853___962"]


# --------------------------------------------------------------------------- COCO


def test_coco_json(nepu, tmp_path):
    # a COCO file for two real NEPU images, with a non-contiguous category id and a crowd box
    images, anns = [], []
    for k, rid in enumerate(["0_15", "0_24"]):
        a = parse_voc_xml(nepu / f"Annotations/{rid}.xml")
        images.append({"id": 10 + k, "file_name": f"{rid}.jpg", "width": a["size"][0], "height": a["size"][1]})
        for j, (x0, y0, x1, y1) in enumerate(a["boxes"].tolist()):
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": 10 + k,
                    "category_id": 7,
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "iscrowd": int(k == 1 and j == 0),
                }
            )
    anns.append({"id": 99, "image_id": 10, "category_id": 3, "bbox": [5, 5, 0, 10], "iscrowd": 0})  # no area
    coco = {"images": images, "annotations": anns, "categories": [{"id": 7, "name": "oilwell"}, {"id": 3, "name": "a"}]}
    (tmp_path / "ann.json").write_text(json.dumps(coco))
    records, classes = coco_records(tmp_path / "ann.json", nepu / "JPEGImages")
    assert classes == ["a", "oilwell"]
    assert [r.id for r in records] == ["10", "11"]
    torch.testing.assert_close(
        torch.from_numpy(records[0].boxes), torch.tensor([[178.0, 441, 254, 507], [598, 314, 657, 407]])
    )
    assert records[0].labels.tolist() == [1, 1]
    assert records[1].difficult.tolist() == [True] + [False] * 5
    assert DetectionDataset(records, classes)[1]["image"].shape == (3, 1024, 1024)


# --------------------------------------------------------------------------- splits and transforms


def test_seeded_split_deterministic():
    a = seeded_split(120, (0.8, 0.1, 0.1), seed=0)
    assert a == seeded_split(120, (0.8, 0.1, 0.1), seed=0)
    assert a != seeded_split(120, (0.8, 0.1, 0.1), seed=1)
    assert [len(a[k]) for k in ("train", "val", "test")] == [96, 12, 12]
    assert sorted(a["train"] + a["val"] + a["test"]) == list(range(120))
    with pytest.raises(ValueError):
        seeded_split(2, (0.2, 0.4, 0.4))


def test_random_crop_clips_and_drops(nepu):
    image = DetectionDataset(*voc_records(nepu, "train"))[0]["image"]
    _, h, w = image.shape
    sample = {
        "image": image,
        "boxes": torch.tensor([[10.0, 10, 50, 50], [w - 40.0, h - 40, w, h], [100, 0, 160, 60]]),
        "labels": torch.tensor([0, 0, 0]),
        "difficult": torch.tensor([False, False, False]),
    }
    g = torch.Generator().manual_seed(0)
    for _ in range(30):
        out = random_crop(sample, 128, min_visibility=0.5, object_prob=0.5, generator=g)
        assert out["image"].shape == (3, 128, 128)
        b = out["boxes"]
        assert (b >= 0).all() and (b <= 128).all()
        assert ((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) >= 0.5 * 40 * 40 - 1e-3).all()
    # a window wider than the 140 px image keeps the image; boxes are clipped at x = 140:
    # box 0 keeps 40/60 of its area, box 1 exactly half (kept), box 2 15/40 (dropped)
    cut = random_crop(
        {
            "image": image[:, :100, :140],
            "boxes": torch.tensor([[100.0, 0, 160, 60], [120.0, 0, 160, 40], [125.0, 0, 165, 40]]),
            "labels": torch.tensor([0, 1, 2]),
            "difficult": torch.tensor([False, False, True]),
        },
        2000,
        object_prob=0.0,
    )
    assert cut["image"].shape == (3, 100, 140)
    torch.testing.assert_close(cut["boxes"], torch.tensor([[100.0, 0, 140, 60], [120.0, 0, 140, 40]]))
    assert cut["labels"].tolist() == [0, 1] and cut["difficult"].tolist() == [False, False]


def test_object_centred_crop_holds_the_object(nepu):
    ds = DetectionDataset(*voc_records(nepu, "train"))
    sample = ds[0]
    g = torch.Generator().manual_seed(1)
    for _ in range(10):
        out = random_crop(sample, 256, object_prob=1.0, generator=g)
        assert len(out["boxes"]) >= 1
        sizes = (out["boxes"][:, 2:] - out["boxes"][:, :2]).round()
        original = (sample["boxes"][:, 2:] - sample["boxes"][:, :2]).round()
        assert any((sizes == o).all(1).any() for o in original)  # one object is whole


def test_random_flip_moves_boxes_with_pixels():
    image = torch.zeros(3, 20, 30, dtype=torch.uint8)
    image[:, 2:6, 3:10] = 255
    sample = {"image": image, "boxes": torch.tensor([[3.0, 2, 10, 6]]), "labels": torch.tensor([0])}
    for seed in range(8):
        out = random_flip(sample, torch.Generator().manual_seed(seed))
        ys, xs = torch.nonzero(out["image"][0]).unbind(1)
        expect = torch.tensor([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], dtype=torch.float32)
        torch.testing.assert_close(out["boxes"], expect)


def test_datamodule_nepu_batches(nepu):
    dm = DetectionDataModule(
        "voc", str(nepu), sets="train", split_fractions=(0.8, 0.1, 0.1), crop_size=256, batch_size=2
    )
    dm.setup("fit")
    assert [len(dm.splits()[k]) for k in ("train", "val", "test")] == [96, 12, 12]
    batch = next(iter(dm.train_dataloader()))
    assert isinstance(batch["image"], list) and len(batch["image"]) == 2
    assert all(img.shape == (3, 256, 256) for img in batch["image"])
    val = next(iter(dm.val_dataloader()))
    assert val["image"][0].shape[1] >= 768 and isinstance(val["id"][0], str)
    assert collate_lists([{"a": 1}, {"a": 2}]) == {"a": [1, 2]}


def test_datamodule_bad_format():
    with pytest.raises(ValueError, match="data.format"):
        DetectionDataModule("yolo", "x")


def test_missing_voc_set(tmp_path):
    with pytest.raises(FileNotFoundError):
        voc_records(tmp_path / "missing", "train")
