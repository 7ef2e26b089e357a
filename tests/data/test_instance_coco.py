"""COCO instance JSON and COCOInstanceDataModule (rsfm.data.instance.coco), written for real iSAID masks.

The masks are the real instances of isaid_dota's P0005 and P0003 (id PNG decoded here with
numpy), written as compressed RLE (pycocotools.mask.encode), uncompressed RLE (run lengths
computed here) and rectangle polygons (the instance's tight box, whose mask is that box).
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from rsfm.data.instance import COCOInstanceDataModule, InstanceDataset, coco_instance_records
from rsfm.utils.errors import DataError

SCENES = {"P0005": "train", "P0003": "val", "P0004": "val"}
#: category ids (not contiguous, not in name order) of the two classes of these scenes
CATEGORIES = [{"id": 8, "name": "small-vehicle"}, {"id": 3, "name": "large-vehicle"}]
COLOUR_CATEGORY = {(0, 0, 127): 8, (0, 127, 127): 3}


def scene_dir(isaid: Path, rid: str) -> Path:
    return isaid / SCENES[rid] / "images"


def instances(isaid: Path, rid: str, limit: int) -> tuple[np.ndarray, list[int]]:
    """The first ``limit`` instances of a scene: masks ``(n, H, W)`` bool and category ids."""
    a = np.asarray(Image.open(scene_dir(isaid, rid) / f"{rid}_instance_id_RGB.png").convert("RGB")).astype(np.int64)
    ids = a[..., 0] + 256 * a[..., 1] + 65536 * a[..., 2]
    colours = np.asarray(Image.open(scene_dir(isaid, rid) / f"{rid}_instance_color_RGB.png").convert("RGB"))
    masks, cats = [], []
    for i in np.unique(ids)[1 : limit + 1]:
        m = ids == i
        masks.append(m)
        cats.append(COLOUR_CATEGORY[tuple(int(v) for v in colours[m][0])])
    return np.stack(masks), cats


def uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE: column-major run lengths, starting with a run of zeros."""
    flat = mask.ravel(order="F").astype(np.int8)
    edges = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.concatenate([[0], edges, [flat.size]])).tolist()
    return {"size": list(mask.shape), "counts": ([0] if flat[0] else []) + runs}


def box_of(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def write_coco(isaid: Path, root: Path, name: str, rids: list[str], first_id: int, limit: int = 9) -> dict:
    """``root/annotations/<name>`` for ``rids`` (images linked into ``root/images``).

    Instance ``j`` of a scene is written as compressed RLE (j % 3 == 0), uncompressed RLE (1)
    or the rectangle polygon of its tight box (2); the second instance is a crowd. P0004 gets
    no annotation. Returns ``{image id: (expected masks, category ids, crowd flags)}``.
    """
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(exist_ok=True)
    images, anns, expected = [], [], {}
    for k, rid in enumerate(rids):
        link = root / "images" / f"{rid}.png"
        if not link.exists():
            link.symlink_to(scene_dir(isaid, rid) / f"{rid}.png")
        w, h = Image.open(link).size
        image_id = first_id + k
        images.append({"id": image_id, "file_name": f"{rid}.png", "width": w, "height": h})
        if rid == "P0004":
            expected[str(image_id)] = (np.zeros((0, h, w), bool), [], [])
            continue
        masks, cats = instances(isaid, rid, limit)
        want, crowd = [], []
        for j, (m, cat) in enumerate(zip(masks, cats, strict=True)):
            if j % 3 == 0:
                rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
                seg = {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
                want.append(m)
            elif j % 3 == 1:
                seg = uncompressed_rle(m)
                want.append(m)
            else:
                x0, y0, x1, y1 = box_of(m)
                seg = [[x0, y0, x1, y0, x1, y1, x0, y1]]
                rect = np.zeros_like(m)
                rect[y0:y1, x0:x1] = True
                want.append(rect)
            crowd.append(j == 1)
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": image_id,
                    "category_id": cat,
                    "segmentation": seg,
                    "iscrowd": int(j == 1),
                    "bbox": list(box_of(m)),
                }
            )
        expected[str(image_id)] = (np.stack(want), cats, crowd)
    data = {"images": images, "annotations": anns, "categories": CATEGORIES}
    (root / "annotations" / name).write_text(json.dumps(data))
    return expected


@pytest.fixture(scope="module")
def isaid(datasets: Path) -> Path:
    return datasets / "isaid_dota"


def test_polygons_and_both_rles_decode_to_the_written_masks(isaid: Path, tmp_path: Path) -> None:
    expected = write_coco(isaid, tmp_path, "all.json", ["P0003", "P0004", "P0005"], first_id=20)
    records, classes = coco_instance_records(tmp_path / "annotations/all.json", tmp_path / "images")
    assert classes == ["large-vehicle", "small-vehicle"]  # category ids 3, 8 in increasing order
    assert [r.id for r in records] == ["20", "21", "22"]
    ds = InstanceDataset(records, classes)
    for i, r in enumerate(records):
        masks, cats, crowd = expected[r.id]
        s = ds[i]
        assert s["masks"].dtype == torch.uint8 and s["masks"].shape == masks.shape
        assert np.array_equal(s["masks"].numpy() > 0, masks)
        assert s["labels"].tolist() == [{3: 0, 8: 1}[c] for c in cats]
        assert s["difficult"].tolist() == crowd
        boxes = [box_of(m) for m in masks]
        assert s["boxes"].tolist() == [list(map(float, b)) for b in boxes]
    assert ds[1]["masks"].shape[0] == 0 and ds[1]["boxes"].shape == (0, 4)  # P0004: a negative image


def test_degenerate_and_bad_annotations(isaid: Path, tmp_path: Path) -> None:
    write_coco(isaid, tmp_path, "ok.json", ["P0003"], first_id=1, limit=3)
    data = json.loads((tmp_path / "annotations/ok.json").read_text())
    # a polygon of two points is dropped and counted
    data["annotations"].append({"id": 50, "image_id": 1, "category_id": 3, "segmentation": [[1, 1, 5, 5]]})
    (tmp_path / "annotations/deg.json").write_text(json.dumps(data))
    records, _ = coco_instance_records(tmp_path / "annotations/deg.json", tmp_path / "images")
    assert records[0].meta["num_degenerate"] == 1 and len(records[0].labels) == 3

    def broken(edit, name: str) -> Path:
        bad = json.loads((tmp_path / "annotations/ok.json").read_text())
        edit(bad)
        (tmp_path / "annotations" / name).write_text(json.dumps(bad))
        return tmp_path / "annotations" / name

    def no_segmentation(d: dict) -> None:
        del d["annotations"][0]["segmentation"]

    with pytest.raises(ValueError, match="annotation 1 has no 'segmentation'"):
        coco_instance_records(broken(no_segmentation, "noseg.json"), tmp_path / "images")

    def wrong_rle_size(d: dict) -> None:
        d["annotations"][0]["segmentation"]["size"] = [10, 10]

    with pytest.raises(ValueError, match=r"annotation 1: RLE size \[10, 10\] differs"):
        coco_instance_records(broken(wrong_rle_size, "size.json"), tmp_path / "images")

    def unknown_category(d: dict) -> None:
        d["annotations"][0]["category_id"] = 99

    with pytest.raises(ValueError, match="unknown category 99"):
        coco_instance_records(broken(unknown_category, "cat.json"), tmp_path / "images")

    def wrong_image_size(d: dict) -> None:
        d["images"][0]["height"] += 1  # (the RLEs, sized like the image, are refused when read)
        d["annotations"] = [a for a in d["annotations"] if isinstance(a["segmentation"], list)]

    records, classes = coco_instance_records(broken(wrong_image_size, "hw.json"), tmp_path / "images")
    with pytest.raises(DataError, match=r"hw.json: image 1 \(P0003.png\) is 1023x1147 .* file says 1024x1147"):
        InstanceDataset(records, classes)[0]
    with pytest.raises(FileNotFoundError, match="COCO annotation file not found"):
        coco_instance_records(tmp_path / "none.json", tmp_path / "images")


def test_datamodule_splits_are_annotation_files(isaid: Path, tmp_path: Path) -> None:
    write_coco(isaid, tmp_path, "train.json", ["P0005", "P0004"], first_id=1)
    write_coco(isaid, tmp_path, "val.json", ["P0003"], first_id=10, limit=4)
    dm = COCOInstanceDataModule(
        str(tmp_path),
        train_split="annotations/train.json",
        val_split="annotations/val.json",
        test_split="annotations/val.json",
        crop_size=96,
        batch_size=2,
        object_crop_prob=1.0,
        keep_difficult=True,
    )
    with pytest.warns(UserWarning, match="data.test_split equals data.val_split"):
        info = dm.info()  # reads the splits
    assert info.classes == ["large-vehicle", "small-vehicle"]
    assert info.sample_keys == ("image", "boxes", "labels", "masks")
    splits = dm.splits()
    assert {k: [r.id for r in v] for k, v in splits.items()} == {"train": ["1", "2"], "val": ["10"], "test": ["10"]}
    batch = next(iter(dm.train_dataloader()))
    assert len(batch["image"]) == 2 and sorted(batch["id"]) == ["1", "2"]
    for image, masks, boxes in zip(batch["image"], batch["masks"], batch["boxes"], strict=True):
        assert image.shape == (3, 96, 96) and masks.shape[1:] == (96, 96)
        assert all(tuple(b) == box_of(m.numpy() > 0) for b, m in zip(boxes.int().tolist(), masks, strict=True))
    assert len(batch["masks"][batch["id"].index("1")]) >= 1  # an object-centred crop of P0005
    val = next(iter(dm.val_dataloader()))
    assert val["id"] == ["10"] and val["masks"][0].shape == (4, 1023, 1147)
    # one file, validation and test drawn by fractions
    drawn = COCOInstanceDataModule(
        str(tmp_path), train_split="annotations/train.json", val_fraction=0.0, test_fraction=0.5, split_seed=3
    )
    parts = drawn.splits()
    assert sorted(r.id for v in parts.values() for r in v) == ["1", "2"] and len(parts["test"]) == 1
    with pytest.raises(DataError, match="data.classes .* differ from the categories"):
        COCOInstanceDataModule(str(tmp_path), train_split="annotations/train.json", classes=["a", "b"]).splits()
    with pytest.raises(DataError, match="data.train_split 'train': COCO annotation file not found"):
        COCOInstanceDataModule(str(tmp_path)).splits()
