"""What every change-detection layout shares (rsfm.data.change.common), on the real LEVIR-CD pairs."""

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from data_helpers import copy_levir
from PIL import Image

from rsfm.data.change import ChangeDataset, ChangePairRecord, LEVIRCDDataModule, PairedAugment, find_pairs
from rsfm.data.change.common import read_change_mask
from rsfm.utils.errors import DataError


@pytest.fixture(scope="module")
def levir(datasets: Path) -> Path:
    return datasets / "levir_cd"


def _dataset(levir: Path, names: list[str] | None = None) -> ChangeDataset:
    names = names or find_pairs(levir)
    dm = LEVIRCDDataModule(str(levir))
    records = [ChangePairRecord(n, levir / "A" / n, levir / "B" / n, levir / "label" / n) for n in names]
    return ChangeDataset(records, dm.read_image, dm.read_mask)


def test_real_pairs_load_as_float_images_and_binary_masks(levir: Path) -> None:
    names = find_pairs(levir)
    assert len(names) == 11 and names == sorted(names)
    ds = _dataset(levir, names)
    s = ds[names.index("test_2_0000_0000.png")]
    assert set(s) == {"image_a", "image_b", "mask", "id"} and s["id"] == "test_2_0000_0000.png"
    assert s["image_a"].shape == s["image_b"].shape == (3, 256, 256)
    assert s["image_a"].dtype == torch.float32 and 0 <= s["image_a"].min() and s["image_a"].max() <= 1
    rgb = np.asarray(Image.open(levir / "A" / "test_2_0000_0000.png").convert("RGB"))
    assert torch.equal(s["image_a"], torch.from_numpy(rgb.copy()).permute(2, 0, 1).float() / 255)  # not normalised
    assert s["mask"].shape == (256, 256) and s["mask"].dtype == torch.int64
    assert set(s["mask"].unique().tolist()) == {0, 1}
    # 0/255 → 0/1: the change fraction matches the file's 255 pixels
    raw = np.asarray(Image.open(levir / "label" / "test_2_0000_0000.png"))
    assert s["mask"].sum().item() == int((raw == 255).sum())
    assert not torch.equal(s["image_a"], s["image_b"])


def test_label_without_change_is_valid(levir: Path) -> None:
    # quirk of the real set: train_386_0512_0768 has no changed pixel at all
    mask = read_change_mask(levir / "label" / "train_386_0512_0768.png")
    assert mask.sum() == 0 and mask.dtype == torch.int64


def test_mask_with_other_values_is_an_error_naming_the_file(levir: Path, tmp_path: Path) -> None:
    a = np.asarray(Image.open(levir / "label" / "test_2_0000_0000.png")).copy()
    a[0, :10] = 128  # e.g. a resampled or JPEG-saved mask
    bad = tmp_path / "bad.png"
    Image.fromarray(a).save(bad)
    with pytest.raises(ValueError, match=r"bad\.png.*\[128\]"):
        read_change_mask(bad)
    # masks stored as 0/1 are read with change_value=1
    Image.fromarray((a == 255).astype(np.uint8)).save(tmp_path / "01.png")
    assert read_change_mask(tmp_path / "01.png", change_value=1).sum() == int((a == 255).sum())
    # a grey mask re-saved as RGB is fine, a coloured one is not
    Image.fromarray(np.where(a == 128, 0, a).astype(np.uint8)).convert("RGB").save(tmp_path / "rgb.png")
    assert read_change_mask(tmp_path / "rgb.png").sum() == int((a == 255).sum())
    colour = np.stack([a, a, 255 - a], axis=-1).astype(np.uint8)
    Image.fromarray(colour).save(tmp_path / "colour.png")
    with pytest.raises(ValueError, match="3 differing colour bands; expected one band"):
        read_change_mask(tmp_path / "colour.png")
    # an alpha band is not a label band: grey + alpha reads as the grey mask, RGB + alpha as RGB
    clean = np.where(a == 128, 0, a).astype(np.uint8)
    Image.fromarray(clean).convert("LA").save(tmp_path / "la.png")
    Image.fromarray(clean).convert("RGBA").save(tmp_path / "rgba.png")
    for name in ("la.png", "rgba.png"):
        assert torch.equal(read_change_mask(tmp_path / name), read_change_mask(tmp_path / "rgb.png")), name
    Image.fromarray(colour).convert("RGBA").save(tmp_path / "colour_rgba.png")
    with pytest.raises(
        ValueError, match=r"colour_rgba\.png: change mask has 3 differing colour bands \(besides alpha\)"
    ):
        read_change_mask(tmp_path / "colour_rgba.png")


def test_unpaired_file_is_reported(levir: Path, tmp_path: Path) -> None:
    root = copy_levir(levir, tmp_path / "cd", ["test_2_0000_0000.png", "val_27_0000_0256.png"])
    (root / "B" / "val_27_0000_0256.png").unlink()
    with pytest.raises(DataError, match="B/val_27_0000_0256.png"):
        find_pairs(root)
    shutil.rmtree(root / "label")
    with pytest.raises(DataError, match="label"):
        find_pairs(root)
    for folder in ("A", "B", "label"):
        shutil.rmtree(root / folder, ignore_errors=True)
        (root / folder).mkdir()
    with pytest.raises(DataError, match="no images"):
        find_pairs(root)


def test_sizes_must_agree(levir: Path, tmp_path: Path) -> None:
    root = copy_levir(levir, tmp_path / "cd", ["test_2_0000_0000.png"])
    Image.open(root / "B" / "test_2_0000_0000.png").crop((0, 0, 128, 128)).save(root / "B" / "test_2_0000_0000.png")
    with pytest.raises(DataError, match=r"pair test_2_0000_0000.png: the after image is \(128, 128\)"):
        _dataset(root)[0]


def test_augmentation_moves_both_images_and_mask_together(levir: Path) -> None:
    s = _dataset(levir)[0]
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
        assert out["id"] == s["id"]
        seen.add(out["image_a"].sum().item())
    assert len(seen) > 6  # crops and turns do vary
    with pytest.raises(ValueError, match=rf"{s['id']}: data.crop_size 512 is larger than its \(\d+, \d+\) pixels"):
        PairedAugment(crop_size=512)(s)
    with pytest.raises(ValueError, match="crop_size"):
        PairedAugment(crop_size=0)
    still = PairedAugment(None, hflip=False, vflip=False, rot90=False)(s)
    assert torch.equal(still["image_a"], s["image_a"]) and torch.equal(still["mask"], s["mask"])


def test_hidden_files_are_not_pairs(levir: Path, tmp_path: Path) -> None:
    names = sorted(p.name for p in (levir / "A").glob("*.png"))[:2]
    root = copy_levir(levir, tmp_path / "levir", names)
    # macOS copies leave AppleDouble files beside each image; only some folders have them
    (root / "A" / f"._{names[0]}").write_bytes(b"\x00\x05\x16\x07" + bytes(78))
    shutil.copy(levir / "B" / names[1], root / "B" / f".{names[1]}")
    (root / "label" / ".DS_Store").write_bytes(bytes(64))
    assert find_pairs(root) == names
    dataset = _dataset(root, find_pairs(root))
    assert len(dataset) == 2 and all("skipped" not in dataset[i] for i in range(2))
