"""LoveDADataModule (rsfm.data.segmentation.loveda) on the 3 real LoveDA tiles."""

import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from data_helpers import loveda_tree, small_loveda
from PIL import Image

from rsfm.data.base import IMAGENET_MEAN, IMAGENET_STD
from rsfm.data.segmentation import IGNORE_INDEX, LOVEDA_CLASSES, LoveDADataModule
from rsfm.data.segmentation.augment import PhotometricDistortion, RandomResize
from rsfm.data.segmentation.common import SegmentationCrop
from rsfm.data.segmentation.loveda import LOVEDA_PALETTE, loveda_pairs
from rsfm.utils.errors import DataError


@pytest.fixture(scope="module")
def loveda(datasets: Path) -> Path:
    return datasets / "loveda"


def test_loveda_shifts_labels_and_ignores_zero(loveda: Path, tmp_path: Path) -> None:
    dm = LoveDADataModule(str(loveda), val_split=["1"], test_split=["2"])
    dm.setup("test")
    test = dm.datasets["test"]
    assert len(test) == 1 and test.transform is None  # whole images, no augmentation
    raw = np.asarray(Image.open(loveda / "masks_png" / "2.png"))
    assert Image.open(loveda / "masks_png" / "2.png").mode == "L"
    sample = test[0]
    assert sample["id"] == "images_png/2"
    assert sample["image"].shape == (3, 1024, 1024) and sample["image"].dtype == torch.float32
    assert 0.0 <= float(sample["image"].min()) and float(sample["image"].max()) <= 1.0  # not normalised
    assert sample["mask"].dtype == torch.int64
    assert np.array_equal(sample["mask"].numpy(), raw.astype(np.int64) - 1)  # these tiles have no 0s
    # the no-data label 0: the real tiles lack it, so put some into a copy of one
    zeroed = raw.copy()
    zeroed[:4] = 0
    Image.fromarray(zeroed, mode="L").save(tmp_path / "2.png")
    mask = dm.read_mask(tmp_path / "2.png")
    assert (mask[:4] == IGNORE_INDEX).all()
    assert np.array_equal(mask[4:], raw[4:].astype(np.int64) - 1)


def test_info_describes_the_samples(loveda: Path) -> None:
    dm = LoveDADataModule(str(loveda), test_split=["2"], crop_size=128)
    info = dm.info()
    assert info.classes == list(LOVEDA_CLASSES) and len(info.classes) == 7
    assert info.palette == list(LOVEDA_PALETTE) and info.ignore_index == IGNORE_INDEX
    assert info.num_channels == 3 and info.mean == list(IMAGENET_MEAN) and info.std == list(IMAGENET_STD)
    assert info.sample_keys == ("image", "mask") and info.crop_size == 128 and info.score_classes is None
    assert info.to_dict()["palette"][1] == [255, 0, 0]


def test_names_crops_per_image_and_test_equal_to_val(loveda: Path) -> None:
    dm = LoveDADataModule(str(loveda), val_split=["2"], test_split=["2"], crops_per_image=3, crop_size=64, batch_size=4)
    with pytest.warns(UserWarning, match="data.test_split equals data.val_split"):
        dm.setup("fit")
    assert [p[0].stem for p in dm.datasets["train"].pairs] == ["0", "1"]
    assert [p[0].stem for p in dm.datasets["val"].pairs] == [p[0].stem for p in dm.datasets["test"].pairs] == ["2"]
    loader = dm.train_dataloader()
    assert len(loader.dataset) == 6  # 3 crops of each of the 2 training tiles per epoch
    assert len(loader) == 1  # 6 // 4, the incomplete batch dropped
    ids = [i for i, _ in loader.sampler]
    assert sorted(ids) == list(range(6))


def test_batches(loveda: Path) -> None:
    dm = LoveDADataModule(str(loveda), val_split=["1"], test_split=["2"], crop_size=64, batch_size=2, crops_per_image=2)
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (2, 3, 64, 64) and batch["image"].dtype == torch.float32
    assert batch["mask"].shape == (2, 64, 64) and batch["mask"].dtype == torch.int64
    assert batch["id"] == ["images_png/0", "images_png/0"]  # two crops of the one training tile
    assert not torch.equal(batch["image"][0], batch["image"][1])
    val = next(iter(dm.val_dataloader()))
    assert val["image"].shape == (1, 3, 1024, 1024) and val["id"] == ["images_png/1"]
    test = list(dm.test_dataloader())
    assert len(test) == 1 and test[0]["id"] == ["images_png/2"]


def test_official_layout_with_train_and_val_folders(loveda: Path, tmp_path: Path) -> None:
    root = loveda_tree(loveda, tmp_path / "LoveDA", {"Train": ["0", "1"], "Val": ["2"]})
    assert len(loveda_pairs(root)) == 3
    dm = LoveDADataModule(str(root), train_split="Train", val_split="Val", test_split="Val")
    with pytest.warns(UserWarning, match="equals"):
        pairs = dm.split_pairs()
    assert [p[0].relative_to(root).as_posix() for p in pairs["train"]] == [
        "Train/Urban/images_png/0.png",
        "Train/Urban/images_png/1.png",
    ]
    assert [p[0].relative_to(root).as_posix() for p in pairs["test"]] == ["Val/Urban/images_png/2.png"]
    # without train_split the rest of the tree trains, never the Val folder
    rest = LoveDADataModule(str(root), val_split="Val", test_split="Val")
    with pytest.warns(UserWarning, match="equals"):
        rest.setup("fit")
    assert [p[0].stem for p in rest.datasets["train"].pairs] == ["0", "1"]
    assert rest.datasets["train"][0]["id"] == "Train/Urban/images_png/0"


def test_test_split_is_required_and_bad_layouts_are_named(loveda: Path, tmp_path: Path) -> None:
    dm = LoveDADataModule(str(loveda))
    with pytest.raises(DataError, match="data.test_split is required"):
        dm.setup("fit")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no 'images_png' folder"):
        LoveDADataModule(str(tmp_path / "empty"), test_split=["1"]).setup()
    broken = tmp_path / "broken"
    shutil.copytree(loveda, broken)
    (broken / "masks_png" / "1.png").unlink()
    with pytest.raises(DataError, match="have no mask"):
        LoveDADataModule(str(broken), test_split=["2"]).setup()
    with pytest.raises(DataError, match="data.root: folder not found"):
        LoveDADataModule(str(tmp_path / "missing"), test_split=["2"])


def test_training_augmentation_options(loveda: Path, tmp_path: Path) -> None:
    small = small_loveda(loveda, tmp_path / "loveda")
    dm = LoveDADataModule(
        str(small), test_split=["2"], crop_size=96, resize_ratio=[0.5, 2.0], photometric_distortion=True
    )
    steps = [type(s) for s in dm.train_transform().steps]
    assert steps == [RandomResize, SegmentationCrop, PhotometricDistortion]
    dm.setup("fit")
    for key in ((0, 0), (1, 0), (0, 1)):
        s = dm.loader(dm.datasets["train"], train=True).dataset[key]
        assert s["image"].shape == (3, 96, 96) and s["mask"].shape == (96, 96)
        assert 0.0 <= float(s["image"].min()) and float(s["image"].max()) <= 1.0
        labels = set(s["mask"].unique().tolist())
        assert labels <= set(range(7)) | {IGNORE_INDEX}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert [type(s) for s in LoveDADataModule(str(loveda), test_split=["2"]).train_transform().steps] == [
            SegmentationCrop
        ]
    with pytest.raises(ValueError, match="resize_ratio"):
        LoveDADataModule(str(loveda), test_split=["2"], resize_ratio=[2.0, 0.5])
    with pytest.raises(ValueError, match="crops_per_image"):
        LoveDADataModule(str(loveda), test_split=["2"], crops_per_image=0)
    with pytest.raises(ValueError, match="crop_size"):
        LoveDADataModule(str(loveda), test_split=["2"], crop_size=0)
