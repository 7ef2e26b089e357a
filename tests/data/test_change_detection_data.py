import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rsfm.data.change_detection import (
    LEVIRCD,
    ChangeDetectionDataModule,
    PairedAugment,
    find_pairs,
    read_change_mask,
    split_pairs,
)


@pytest.fixture(scope="module")
def levir(datasets: Path) -> Path:
    return datasets / "levir_cd"


def _copy_pairs(levir: Path, dst: Path, names) -> Path:
    for folder in ("A", "B", "label"):
        (dst / folder).mkdir(parents=True)
        for n in names:
            shutil.copy(levir / folder / n, dst / folder / n)
    return dst


def test_real_pairs_load_as_float_images_and_binary_masks(levir):
    names = find_pairs(levir)
    assert len(names) == 11 and names == sorted(names)
    ds = LEVIRCD(levir)
    s = ds[names.index("test_2_0000_0000.png")]
    assert s["image_a"].shape == s["image_b"].shape == (3, 256, 256)
    assert s["image_a"].dtype == torch.float32 and 0 <= s["image_a"].min() and s["image_a"].max() <= 1
    assert s["mask"].shape == (256, 256) and s["mask"].dtype == torch.int64
    assert set(s["mask"].unique().tolist()) == {0, 1}
    # 0/255 → 0/1: the change fraction matches the file's 255 pixels
    raw = np.asarray(Image.open(levir / "label" / "test_2_0000_0000.png"))
    assert s["mask"].sum().item() == int((raw == 255).sum())
    assert not torch.equal(s["image_a"], s["image_b"])


def test_label_without_change_is_valid(levir):
    # quirk of the real set: train_386_0512_0768 has no changed pixel at all
    mask = read_change_mask(levir / "label" / "train_386_0512_0768.png")
    assert mask.sum() == 0 and mask.dtype == torch.int64


def test_mask_with_other_values_is_an_error_naming_the_file(levir, tmp_path):
    a = np.asarray(Image.open(levir / "label" / "test_2_0000_0000.png")).copy()
    a[0, :10] = 128  # e.g. a resampled or JPEG-saved mask
    bad = tmp_path / "bad.png"
    Image.fromarray(a).save(bad)
    with pytest.raises(ValueError, match=r"bad\.png.*\[128\]"):
        read_change_mask(bad)
    # masks stored as 0/1 are read with change_value=1
    Image.fromarray((a == 255).astype(np.uint8)).save(tmp_path / "01.png")
    assert read_change_mask(tmp_path / "01.png", change_value=1).sum() == int((a == 255).sum())


def test_unpaired_file_is_reported(levir, tmp_path):
    root = _copy_pairs(levir, tmp_path / "cd", ["test_2_0000_0000.png", "val_27_0000_0256.png"])
    (root / "B" / "val_27_0000_0256.png").unlink()
    with pytest.raises(ValueError, match="B/val_27_0000_0256.png"):
        find_pairs(root)
    shutil.rmtree(root / "label")
    with pytest.raises(FileNotFoundError, match="label"):
        find_pairs(root)


def test_split_is_seeded_disjoint_and_7_2_2(levir):
    names = find_pairs(levir)
    s = split_pairs(names, 0.2, 0.2, seed=0)
    assert [len(s[k]) for k in ("train", "val", "test")] == [7, 2, 2]
    assert sorted(s["train"] + s["val"] + s["test"]) == names
    assert split_pairs(list(reversed(names)), 0.2, 0.2, seed=0) == s
    assert split_pairs(names, 0.2, 0.2, seed=1) != s


def test_augmentation_moves_both_images_and_mask_together(levir):
    s = LEVIRCD(levir)[0]
    # make image_b and the mask functions of image_a: any unshared transform breaks these identities
    s["image_b"] = s["image_a"].clone()
    s["mask"] = (s["image_a"][0] > 0.5).long()
    aug = PairedAugment(crop_size=96, generator=torch.Generator().manual_seed(0))
    seen = set()
    for _ in range(12):
        out = aug(s)
        assert out["image_a"].shape == (3, 96, 96) and out["mask"].shape == (96, 96)
        assert torch.equal(out["image_a"], out["image_b"])
        assert torch.equal(out["mask"], (out["image_a"][0] > 0.5).long())
        seen.add(out["image_a"].sum().item())
    assert len(seen) > 6  # crops and turns do vary
    with pytest.raises(ValueError, match="smaller than crop_size"):
        PairedAugment(crop_size=512)(s)


def test_datamodule_batches(levir):
    dm = ChangeDetectionDataModule(levir, crop_size=64, batch_size=3, train_repeats=2)
    dm.setup()
    assert [len(dm.datasets[k]) for k in ("train", "val", "test")] == [7, 2, 2]
    train = dm.train_dataloader()
    assert len(train) == 14 // 3
    b = next(iter(train))
    assert b["image_a"].shape == (3, 3, 64, 64) and b["mask"].shape == (3, 64, 64)
    v = next(iter(dm.test_dataloader()))
    assert v["image_a"].shape == (2, 3, 256, 256) and v["name"] == dm.datasets["test"].names


def test_datamodule_uses_published_split_folders(levir, tmp_path):
    _copy_pairs(levir, tmp_path / "train", ["train_36_0512_0512.png", "train_412_0512_0768.png"])
    _copy_pairs(levir, tmp_path / "val", ["val_27_0000_0256.png"])
    _copy_pairs(levir, tmp_path / "test", ["test_2_0000_0000.png"])
    dm = ChangeDetectionDataModule(tmp_path, crop_size=64, batch_size=2)
    assert dm.split_names() == {
        "train": ["train_36_0512_0512.png", "train_412_0512_0768.png"],
        "val": ["val_27_0000_0256.png"],
        "test": ["test_2_0000_0000.png"],
    }
    dm.setup()
    assert next(iter(dm.val_dataloader()))["name"] == ["val_27_0000_0256.png"]
