"""LEVIRCDDataModule (rsfm.data.change.levir_cd) on the 11 real LEVIR-CD pairs."""

import warnings
from pathlib import Path

import pytest
import torch
from data_helpers import copy_levir

from rsfm.data.base import IMAGENET_MEAN, IMAGENET_STD
from rsfm.data.change import LEVIRCDDataModule, find_pairs
from rsfm.data.splits import split_names
from rsfm.utils.errors import DataError

PUBLISHED = {
    "train": ["train_36_0512_0512.png", "train_412_0512_0768.png"],
    "val": ["val_27_0000_0256.png"],
    "test": ["test_2_0000_0000.png"],
}


@pytest.fixture(scope="module")
def levir(datasets: Path) -> Path:
    return datasets / "levir_cd"


def _names(dm: LEVIRCDDataModule) -> dict[str, list[str]]:
    return {k: [r.name for r in v] for k, v in dm.records().items()}


def test_seeded_split_is_7_2_2_disjoint_and_deterministic(levir: Path) -> None:
    dm = LEVIRCDDataModule(str(levir))
    names = _names(dm)
    assert [len(names[k]) for k in ("train", "val", "test")] == [7, 2, 2]
    assert sorted(names["train"] + names["val"] + names["test"]) == find_pairs(levir)
    assert names == split_names(find_pairs(levir), 0.2, 0.2, seed=0)
    assert names == _names(LEVIRCDDataModule(str(levir), seed=3))  # the split follows split_seed only
    assert names != _names(LEVIRCDDataModule(str(levir), split_seed=1))
    assert [len(v) for v in _names(LEVIRCDDataModule(str(levir), val_fraction=0.0)).values()] == [9, 0, 2]
    for records in dm.records().values():
        for r in records:
            assert (r.image_a, r.image_b, r.mask) == (
                levir / "A" / r.name,
                levir / "B" / r.name,
                levir / "label" / r.name,
            )


def test_info(levir: Path) -> None:
    info = LEVIRCDDataModule(str(levir), crop_size=128).info()
    assert info.classes == ["no_change", "change"] and info.num_channels == 3
    assert info.mean == list(IMAGENET_MEAN) and info.std == list(IMAGENET_STD)
    assert info.sample_keys == ("image_a", "image_b", "mask") and info.crop_size == 128
    assert info.palette == [(0, 0, 0), (255, 255, 255)]


def test_datamodule_batches(levir: Path) -> None:
    dm = LEVIRCDDataModule(str(levir), crop_size=64, batch_size=3, crops_per_image=2)
    dm.setup()
    assert [len(dm.datasets[k]) for k in ("train", "val", "test")] == [7, 2, 2]
    train = dm.train_dataloader()
    assert len(train) == 14 // 3  # 2 crops of 7 pairs, the incomplete batch dropped
    b = next(iter(train))
    assert b["image_a"].shape == (3, 3, 64, 64) and b["mask"].shape == (3, 64, 64)
    assert b["mask"].dtype == torch.int64 and set(b["mask"].unique().tolist()) <= {0, 1}
    assert all(i in {r.name for r in dm.records()["train"]} for i in b["id"])
    dm.eval_batch_size = 2
    v = next(iter(dm.test_dataloader()))
    assert v["image_a"].shape == (2, 3, 256, 256) and v["id"] == [r.name for r in dm.records()["test"]]
    assert 0.0 <= float(v["image_b"].min()) and float(v["image_b"].max()) <= 1.0


def test_full_images_without_a_crop(levir: Path) -> None:
    dm = LEVIRCDDataModule(str(levir), crop_size=None, batch_size=2)
    b = next(iter(dm.train_dataloader()))
    assert b["image_a"].shape == (2, 3, 256, 256) and dm.info().crop_size is None


def test_datamodule_uses_published_split_folders(levir: Path, tmp_path: Path) -> None:
    for split, names in PUBLISHED.items():
        copy_levir(levir, tmp_path / split, names)
    dm = LEVIRCDDataModule(str(tmp_path), crop_size=64, batch_size=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _names(dm) == PUBLISHED
    assert dm.records()["val"][0].image_a == tmp_path / "val" / "A" / "val_27_0000_0256.png"
    dm.setup()
    assert next(iter(dm.val_dataloader()))["id"] == ["val_27_0000_0256.png"]
    # named folders: the test split may double as validation, with a warning
    named = LEVIRCDDataModule(str(tmp_path), train_split="train", val_split="test", test_split="test")
    with pytest.warns(UserWarning, match="data.test_split equals data.val_split"):
        assert _names(named)["val"] == PUBLISHED["test"]
    no_val = LEVIRCDDataModule(str(tmp_path), train_split="train", test_split="test")
    assert _names(no_val)["val"] == []
    with pytest.raises(DataError, match="data.test_split is needed"):
        LEVIRCDDataModule(str(tmp_path), train_split="train", val_split="val").records()
    with pytest.raises(DataError, match="change-detection folder .*nowhere/A not found"):
        LEVIRCDDataModule(str(tmp_path), train_split="nowhere", test_split="test").records()


def test_partial_published_layout_falls_back_to_a_seeded_split(levir: Path, tmp_path: Path) -> None:
    # only train/ and test/: not the published layout, and the root holds no A/B/label
    copy_levir(levir, tmp_path / "train", PUBLISHED["train"])
    copy_levir(levir, tmp_path / "test", PUBLISHED["test"])
    with pytest.raises(DataError, match="A not found"):
        LEVIRCDDataModule(str(tmp_path)).records()
