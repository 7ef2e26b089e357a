"""ISPRSDataModule (rsfm.data.segmentation.isprs) on a small Potsdam-like folder built from real Dubai tiles.

No ISPRS tile is shipped in ../shared/datasets: :func:`data_helpers.build_isprs` crops real
Dubai images and paints their masks in the ISPRS colours (Dubai's six classes onto the six
ISPRS ones, Dubai's black onto the eroded-boundary black), named as Potsdam's tiles.
"""

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from data_helpers import build_isprs

from rsfm.data.segmentation import IGNORE_INDEX, ISPRS_COLOURS, ISPRSDataModule
from rsfm.data.segmentation.boundaries import erode_boundaries
from rsfm.utils.errors import DataError

TILES = {".": [(3, "2_10"), (3, "2_11"), (8, "3_10"), (8, "3_11")]}  # all six classes and black
FOLDERS = {"images_dir": "2_Ortho_RGB", "masks_dir": "5_Labels_all", "image_tag": "_RGB", "mask_tag": "_label"}


@pytest.fixture(scope="module")
def isprs(datasets: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, np.ndarray]]:
    root = tmp_path_factory.mktemp("isprs") / "potsdam"
    return root, build_isprs(datasets / "dubai_seg", root, TILES)


def _dm(root: Path, **kwargs) -> ISPRSDataModule:
    kwargs.setdefault("val_split", ["top_potsdam_2_11"])
    kwargs.setdefault("test_split", ["top_potsdam_3_11"])
    return ISPRSDataModule(str(root), **FOLDERS, crop_size=160, hflip=False, vflip=False, **kwargs)


def test_tiles_split_by_untagged_names(isprs) -> None:
    root, _ = isprs
    pairs = _dm(root).split_pairs()
    assert {k: [p[0].name for p in v] for k, v in pairs.items()} == {
        "val": ["top_potsdam_2_11_RGB.tif"],
        "test": ["top_potsdam_3_11_RGB.tif"],
        "train": ["top_potsdam_2_10_RGB.tif", "top_potsdam_3_10_RGB.tif"],
    }
    assert all(m.name == i.name.replace("_RGB", "_label") for v in pairs.values() for i, m in v)
    # the file stems with their tag select the same tiles
    tagged = _dm(root, val_split=["top_potsdam_2_11_RGB"], test_split=["top_potsdam_3_11_RGB"]).split_pairs()
    assert tagged == pairs
    with pytest.raises(DataError, match=r"data.test_split: no image named \['top_potsdam_9_9'\]"):
        _dm(root, test_split=["top_potsdam_9_9"]).split_pairs()


def test_colours_become_the_six_classes(isprs) -> None:
    root, labels = isprs
    dm = _dm(root)
    dm.setup("fit")
    for pair in dm.datasets["train"].pairs:
        name = pair[0].stem.removesuffix("_RGB")
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # black = eroded boundary, a known "no label" colour
            assert np.array_equal(dm.read_mask(pair[1]), labels[name])
    assert set(np.unique(np.concatenate([v.ravel() for v in labels.values()])).tolist()) == {0, 1, 2, 3, 4, 5, 255}
    info = dm.info()
    assert info.classes == list(ISPRS_COLOURS.names) and info.classes[-1] == "clutter"
    assert info.palette == [(255, 255, 255), (0, 0, 255), (0, 255, 255), (0, 255, 0), (255, 255, 0), (255, 0, 0)]
    assert info.ignore_index == IGNORE_INDEX


def test_score_classes_leave_out_clutter(isprs) -> None:
    root, _ = isprs
    assert _dm(root).info().score_classes == [0, 1, 2, 3, 4]
    assert _dm(root).score_classes() == [0, 1, 2, 3, 4]
    assert _dm(root, score_clutter=True).info().score_classes is None


def test_eroded_boundaries_on_val_and_test_only(isprs) -> None:
    root, labels = isprs
    dm = _dm(root, eroded_boundaries=True)
    dm.setup("fit")
    for split, name in (("val", "top_potsdam_2_11"), ("test", "top_potsdam_3_11")):
        sample = dm.datasets[split][0]
        raw = torch.from_numpy(labels[name])
        assert sample["mask"].shape == raw.shape == (160, 160)
        assert torch.equal(sample["mask"], erode_boundaries(raw, 3, IGNORE_INDEX))
        eroded = (sample["mask"] == IGNORE_INDEX) & (raw != IGNORE_INDEX)
        assert int(eroded.sum()) > 0  # real class boundaries were eroded
        assert torch.equal(sample["mask"][~eroded], raw[~eroded])  # nothing else changed
    # training masks keep their boundaries: a 160 px crop of a 160 px tile without flips is the tile
    train = dm.datasets["train"][0]
    assert torch.equal(train["mask"], torch.from_numpy(labels["top_potsdam_2_10"]))
    # a narrower disc erodes fewer pixels; without the option the masks are as read
    thin = _dm(root, eroded_boundaries=True, boundary_radius=1)
    thin.setup("test")
    raw = torch.from_numpy(labels["top_potsdam_3_11"])
    thin_mask = thin.datasets["test"][0]["mask"]
    assert torch.equal(thin_mask, erode_boundaries(raw, 1, IGNORE_INDEX))
    assert int((thin_mask == IGNORE_INDEX).sum()) < int((dm.datasets["test"][0]["mask"] == IGNORE_INDEX).sum())
    plain = _dm(root)
    plain.setup("test")
    assert torch.equal(plain.datasets["test"][0]["mask"], raw)
    assert plain.eval_mask_transform() is None


def test_split_sub_folders(datasets: Path, tmp_path: Path) -> None:
    root = tmp_path / "vaihingen"
    build_isprs(
        datasets / "dubai_seg",
        root,
        {"train": [(1, "1"), (3, "3")], "val": [(4, "5")], "test": [(5, "7")]},
        size=96,
        images_dir="images",
        masks_dir="masks",
    )
    dm = ISPRSDataModule(
        str(root), image_tag="_RGB", mask_tag="_label", train_split="train", val_split="val", test_split="test"
    )
    dm.setup("fit")
    assert [len(dm.datasets[k]) for k in ("train", "val", "test")] == [2, 1, 1]
    assert dm.datasets["test"][0]["id"] == "test/images/top_potsdam_7_RGB"
    batch = next(iter(dm.test_dataloader()))
    assert batch["image"].shape == (1, 3, 96, 96) and batch["mask"].shape == (1, 96, 96)
    # the root itself holds no images/ folder: training needs a sub-folder then
    with pytest.raises(DataError, match="folder not found"):
        ISPRSDataModule(str(root), image_tag="_RGB", mask_tag="_label", val_split="val", test_split="test").setup()
    with pytest.raises(DataError, match="no mask"):  # without the tags nothing pairs
        ISPRSDataModule(str(root), train_split="train", test_split="test").setup()
