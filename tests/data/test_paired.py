"""GeRSP's paired RS + natural data on real AID and CIFAR-10 files."""

import shutil
from pathlib import Path

import pytest
import torch

from rsfm.data.folder import ImageFolder, LabeledImageFolder
from rsfm.data.paired import PairedDataModule, PairedDataset, TwoViews, natural_classes
from rsfm.data.skips import collate_skipping
from rsfm.data.transforms import moco_v1_transform
from rsfm.utils.errors import DataError


def _natural_subset(datasets: Path, tmp_path: Path, classes=("airplane", "cat"), per_class: int = 2) -> Path:
    root = tmp_path / "natural"
    for name in classes:
        (root / name).mkdir(parents=True)
        for src in sorted((datasets / "cifar10" / "train" / name).glob("*.jpg"))[:per_class]:
            (root / name / src.name).symlink_to(src)
    return root


def test_paired_sampler_wraps_the_shorter_set(datasets: Path, aid_subset, tmp_path: Path) -> None:
    rs_root = aid_subset(["Airport", "Forest"], 3)  # 6 RS images
    nat_root = _natural_subset(datasets, tmp_path)  # 4 natural images
    t = moco_v1_transform(32)
    rs = ImageFolder(rs_root, transform=TwoViews(t))
    nat = LabeledImageFolder(nat_root, transform=t, seed=1)
    ds = PairedDataset(rs, nat)
    assert len(ds) == 6  # the longer set
    items = [ds[(i, 0)] for i in range(6)]
    for i, item in enumerate(items):
        assert item["index"] == i
        assert item["image"].shape == item["image_key"].shape == item["natural"].shape == (3, 32, 32)
        assert item["image"].dtype == torch.float32
        assert not torch.equal(item["image"], item["image_key"])  # two different views
    # natural image i mod 4: items 4 and 5 wrap around to natural images 0 and 1 ...
    assert [it["natural_label"] for it in items] == [nat.targets[i % 4] for i in range(6)]
    raw = LabeledImageFolder(nat_root)
    assert [it["natural_label"] for it in items] == [0, 0, 1, 1, 0, 0]
    # ... with fresh augmentation, and the same augmentation again for the same (index, epoch)
    assert not torch.equal(items[4]["natural"], items[0]["natural"])
    assert torch.equal(ds[(4, 0)]["natural"], items[4]["natural"])
    assert not torch.equal(ds[(4, 1)]["natural"], items[4]["natural"])
    assert len(raw) == 4
    # the other way round: the RS set wraps when it is the shorter one
    ds2 = PairedDataset(ImageFolder(aid_subset(["Port"], 3), transform=TwoViews(t)), nat)
    assert len(ds2) == 4 and ds2[(3, 0)]["natural_label"] == nat.targets[3]
    with pytest.raises(IndexError):
        ds[(6, 0)]


def test_paired_datamodule_batches_and_holdout(datasets: Path, aid_subset, tmp_path: Path) -> None:
    rs_root = aid_subset(["Airport", "Forest"], 10)
    nat_root = _natural_subset(datasets, tmp_path, per_class=3)
    dm = PairedDataModule(rs_root, nat_root, img_size=32, batch_size=4, num_workers=0, test_fraction=0.2)
    assert dm.classes == ["airplane", "cat"] and dm.num_classes == 2
    info = dm.info()
    assert info.classes == ["airplane", "cat"] and info.num_channels == 3 and info.img_size == 32
    assert info.sample_keys == ("image", "image_key", "natural", "natural_label")
    dm.setup("fit")
    train = dm.datasets["train"]
    assert len(train.rs) == 16  # 2 of each 10 held out, as PretrainDataModule
    held_out = ImageFolder(rs_root, split="val", val_fraction=0.2)
    assert not set(held_out.samples) & set(train.rs.samples)
    assert dm.val_dataloader() == []
    loader = dm.train_dataloader()
    assert type(loader).__name__ == "StatefulDataLoader"
    batches = list(loader)
    assert len(batches) == 4  # 16 pairs / 4
    b = batches[0]
    assert b["image"].shape == b["image_key"].shape == b["natural"].shape == (4, 3, 32, 32)
    assert 0.0 <= float(b["image"].min()) and float(b["natural"].max()) <= 1.0  # not normalised
    assert b["natural_label"].dtype == torch.int64 and b["skipped"] == []


def test_bad_natural_roots_are_named(datasets: Path, aid_subset, tmp_path: Path) -> None:
    rs_root = aid_subset(["Airport"], 2)
    with pytest.raises(DataError, match="data.natural_root: folder not found"):
        PairedDataModule(rs_root, tmp_path / "nope")
    with pytest.raises(DataError, match="data.root"):
        PairedDataModule(tmp_path / "no_rs", tmp_path / "nope")
    nat_root = _natural_subset(datasets, tmp_path)
    (nat_root / "empty_class").mkdir()
    with pytest.raises(DataError, match=r"class folders without images.*empty_class"):
        natural_classes(nat_root)
    (tmp_path / "flat").mkdir()
    with pytest.raises(DataError, match="no class folder"):
        natural_classes(tmp_path / "flat")
    four = dict(bands=[0, 1, 2, 3], mean=[0.5] * 4, std=[0.2] * 4)
    with pytest.raises(DataError, match="data.bands: GeRSP's .* got 4 bands, expected 3"):
        PairedDataModule(rs_root, nat_root, **four)


def test_corrupt_files_are_skipped_and_counted(datasets: Path, aid_subset, tmp_path: Path) -> None:
    rs_root = aid_subset(["Airport"], 3, copy=True)
    src = next((rs_root / "Airport").glob("*.jpg"))
    (rs_root / "Airport" / "truncated.jpg").write_bytes(src.read_bytes()[:300])
    nat_root = tmp_path / "natural"
    shutil.copytree(_natural_subset(datasets, tmp_path / "x"), nat_root, symlinks=False)
    (nat_root / "cat" / "empty.jpg").write_bytes(b"")
    dm = PairedDataModule(rs_root, nat_root, img_size=32, batch_size=4, num_workers=0, test_fraction=0.0)
    assert dm.scan_skipped == []  # nothing scanned before setup
    dm.setup("fit")
    ds = dm.datasets["train"]
    assert ("zero_byte" in {r for _, r in dm.scan_skipped}) and len(ds) == 4
    batch = collate_skipping([ds[(i, 0)] for i in range(4)])
    assert batch["image"].shape[0] == 3 and [r for _, r in batch["skipped"]] == ["truncated"]


@pytest.mark.parametrize("bands", [[3, 2, 1], [2, 1, 0]])
def test_the_rs_band_rule_does_not_touch_the_natural_images(datasets: Path, tmp_path: Path, bands) -> None:
    """4-band RS GeoTIFFs (a constant band, then AID's B, G, R) read with ``bands``; the natural
    CIFAR-10 JPEGs keep their stored RGB (a band rule for the RS files once skipped every
    natural image, or swapped its colours)."""
    import numpy as np
    import rasterio
    from PIL import Image

    from rsfm.data.io import read_image

    rs_root = tmp_path / "rs" / "scene"
    rs_root.mkdir(parents=True)
    for src in sorted((datasets / "aid" / "Airport").glob("*.jpg"))[:4]:
        rgb = np.asarray(Image.open(src).convert("RGB")).transpose(2, 0, 1)
        four = np.concatenate([np.full_like(rgb[:1], 100), rgb[::-1]])
        profile = {"driver": "GTiff", "width": rgb.shape[2], "height": rgb.shape[1], "count": 4, "dtype": "uint8"}
        with rasterio.open(rs_root / f"{src.stem}.tif", "w", **profile) as dst:
            dst.write(four)
    nat_root = _natural_subset(datasets, tmp_path)
    dm = PairedDataModule(
        str(rs_root.parent), str(nat_root), bands=bands, img_size=32, num_workers=0, test_fraction=0.0
    )
    dm.setup("fit")
    train = dm.datasets["train"]
    items = [train[(i, 0)] for i in range(len(train))]
    assert len(items) == 4 and not [it["skipped"] for it in items if "skipped" in it]
    assert train.natural.raster.bands is None and train.rs.raster.bands == tuple(bands)
    first = nat_root / "airplane" / sorted(p.name for p in (nat_root / "airplane").iterdir())[0]
    expected = np.asarray(Image.open(first).convert("RGB")).transpose(2, 0, 1)
    np.testing.assert_array_equal(read_image(first, train.natural.raster).numpy(), expected)
