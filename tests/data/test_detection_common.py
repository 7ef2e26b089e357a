"""What every detection layout shares (rsfm.data.detection.common): crops, flips, dataset, split rules."""

from pathlib import Path

import pytest
import torch
from data_helpers import voc_copy

from rsfm.data.detection import (
    DetectionDataset,
    TrainTransform,
    VOCDataModule,
    collate_lists,
    random_crop,
    random_flip,
    voc_records,
)
from rsfm.data.io import read_image
from rsfm.utils.errors import DataError


@pytest.fixture(scope="module")
def nepu(datasets: Path) -> Path:
    return datasets / "nepu_owod"


@pytest.fixture(scope="module")
def nepu_image(nepu: Path) -> torch.Tensor:
    """The first NEPU image as uint8 ``(3, H, W)``, as the training transform sees it."""
    records, _ = voc_records(nepu, "train")
    return read_image(records[0].image)


def test_dataset_sample_matches_the_image(nepu: Path) -> None:
    records, classes = voc_records(nepu, "train")
    ds = DetectionDataset(records[:2], classes)
    s = ds[0]
    assert set(s) == {"image", "boxes", "labels", "difficult", "id"} and s["id"] == records[0].id
    assert s["image"].dtype == torch.float32 and s["image"].shape[0] == 3
    assert 0.0 <= float(s["image"].min()) and float(s["image"].max()) <= 1.0
    w, h = records[0].meta["size"]
    assert tuple(s["image"].shape[1:]) == (h, w)
    assert s["boxes"].dtype == torch.float32 and s["labels"].dtype == torch.int64 and s["difficult"].dtype == torch.bool
    assert torch.equal(s["boxes"], torch.from_numpy(records[0].boxes))
    assert len(ds) == 2


def test_random_crop_clips_and_drops(nepu_image: torch.Tensor) -> None:
    image = nepu_image
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


def test_object_centred_crop_holds_the_object(nepu: Path) -> None:
    ds = DetectionDataset(*voc_records(nepu, "train"))
    sample = ds[0]
    g = torch.Generator().manual_seed(1)
    for _ in range(10):
        out = random_crop(sample, 256, object_prob=1.0, generator=g)
        assert len(out["boxes"]) >= 1
        sizes = (out["boxes"][:, 2:] - out["boxes"][:, :2]).round()
        original = (sample["boxes"][:, 2:] - sample["boxes"][:, :2]).round()
        assert any((sizes == o).all(1).any() for o in original)  # one object is whole


def test_random_flip_moves_boxes_with_pixels() -> None:
    image = torch.zeros(3, 20, 30, dtype=torch.uint8)
    image[:, 2:6, 3:10] = 255
    box = torch.tensor([[3.0, 2, 10, 6]])
    sample = {"image": image, "boxes": box, "labels": torch.tensor([0])}
    for seed in range(8):
        out = random_flip(sample, torch.Generator().manual_seed(seed))
        ys, xs = torch.nonzero(out["image"][0]).unbind(1)
        expect = torch.tensor([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], dtype=torch.float32)
        torch.testing.assert_close(out["boxes"], expect)
    # hflip / vflip off: never flipped that way
    for seed in range(8):
        fixed = random_flip(sample, torch.Generator().manual_seed(seed), hflip=False, vflip=False)
        assert torch.equal(fixed["boxes"], box) and torch.equal(fixed["image"], image)
        only_h = random_flip(sample, torch.Generator().manual_seed(seed), vflip=False)
        assert torch.equal(only_h["boxes"][:, 1::2], box[:, 1::2])  # y never changes


def test_train_transform_drops_difficult_and_flags_survive_in_samples(nepu: Path, tmp_path: Path) -> None:
    root = voc_copy(nepu, tmp_path / "voc", {"train": ["0_15", "0_24"]}, difficult={"0_24": 2})
    records, _ = voc_records(root, "train")
    assert records[1].difficult.tolist() == [False, False, True, False, False, False]
    # kept flagged in the sample, dropped from the training targets
    s = DetectionDataset(records, ["oilwell"])[1]
    assert s["difficult"].sum() == 1 and len(s["boxes"]) == 6
    t = TrainTransform(crop_size=2048, hflip=False, vflip=False)  # a crop larger than the image keeps everything
    out = DetectionDataset(records, ["oilwell"], t)[1]
    assert len(out["boxes"]) == 5 and not out["difficult"].any()
    assert torch.equal(out["image"], s["image"])  # the whole image, unflipped, scaled after the transform
    keep = TrainTransform(crop_size=2048, hflip=False, vflip=False, keep_difficult=True)
    assert len(DetectionDataset(records, ["oilwell"], keep)[1]["boxes"]) == 6
    with pytest.raises(ValueError, match="crop_size"):
        TrainTransform(crop_size=0)


def test_collate_lists() -> None:
    assert collate_lists([{"a": 1, "b": "x"}, {"a": 2, "b": "y"}]) == {"a": [1, 2], "b": ["x", "y"], "skipped": []}
    # unreadable images are left out and listed; a batch of only those has empty lists
    bad = {"skipped": ("x.jpg", "zero_byte"), "id": "x"}
    assert collate_lists([bad, {"a": 2, "b": "y"}]) == {"a": [2], "b": ["y"], "skipped": [("x.jpg", "zero_byte")]}
    empty = collate_lists([bad])
    assert empty == {
        "image": [],
        "boxes": [],
        "labels": [],
        "difficult": [],
        "id": [],
        "skipped": [("x.jpg", "zero_byte")],
    }


# ------------------------------------------------------------------------------ split rules


def test_named_splits_seeded_splits_and_their_checks(nepu: Path, tmp_path: Path) -> None:
    ids = ["0_15", "0_24", "0_31", "0_36"]
    sets = {"train": ids[:2], "val": ids[2:3], "test": ids[3:], "trainval": ids[:3], "all": ids}
    root = voc_copy(nepu, tmp_path / "voc", sets)
    named = VOCDataModule(str(root), val_split="val", test_split="test")
    assert {k: [r.id for r in v] for k, v in named.splits().items()} == {
        "train": ids[:2],
        "val": ids[2:3],
        "test": ids[3:],
    }
    # only the test split named: validation drawn from training by val_fraction (at least one of >= 3)
    drawn = VOCDataModule(str(root), train_split="trainval", test_split="test", val_fraction=0.34)
    splits = drawn.splits()
    assert [r.id for r in splits["test"]] == ids[3:] and len(splits["val"]) == 1 and len(splits["train"]) == 2
    assert {r.id for r in splits["train"] + splits["val"]} == set(ids[:3])
    # a training set that holds a test image is refused, naming both keys and the image
    with pytest.raises(DataError, match=r"data.train_split and data.test_split share 1 image, e.g. \['JPEGImages/0_36"):
        VOCDataModule(str(root), train_split="all", test_split="test", val_fraction=0.25).splits()
    with pytest.warns(UserWarning, match="data.test_split equals data.val_split"):
        VOCDataModule(str(root), val_split="test", test_split="test").splits()
    with pytest.raises(DataError, match="the test split is empty"):
        VOCDataModule(str(root), test_fraction=0.0).splits()
    with pytest.raises(DataError, match="data.val_split 'missing': image set not found"):
        VOCDataModule(str(root), val_split="missing", test_split="test").splits()
    with pytest.raises(ValueError, match="crops_per_image"):
        VOCDataModule(str(root), crops_per_image=0)
