"""DubaiDataModule (rsfm.data.segmentation.dubai) on the real Dubai aerial set (8 tiles, RGB colour masks)."""

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from data_helpers import dubai_subset
from PIL import Image

from rsfm.data.segmentation import DUBAI_COLOURS, IGNORE_INDEX, DubaiDataModule
from rsfm.data.segmentation.dubai import dubai_pairs, tile_name
from rsfm.utils.errors import DataError


@pytest.fixture(scope="module")
def dubai(datasets: Path) -> Path:
    return datasets / "dubai_seg"


def _rgb(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def _hex(rgb) -> str:
    return "#" + "".join(f"{int(v):02X}" for v in rgb)


def test_dubai_pairs_by_tile(dubai: Path) -> None:
    pairs = dubai_pairs(dubai)
    assert len(pairs) == 72
    assert [p[0].parent.parent.name for p in pairs[::9]] == [f"Tile {i}" for i in range(1, 9)]
    for image, mask in pairs:
        assert image.suffix == ".jpg" and mask.suffix == ".png"
        assert image.stem == mask.stem and image.parent.parent == mask.parent.parent
    assert dubai_pairs(dubai, [3]) == dubai_pairs(dubai, ["Tile 3"]) == dubai_pairs(dubai, ["3"]) == pairs[18:27]
    assert tile_name(3) == "Tile 3" and tile_name("Tile 3") == "Tile 3"
    with pytest.raises(DataError, match="tile folder not found: .*Tile 9"):
        dubai_pairs(dubai, [9])


def test_dubai_colours_map_every_pixel_and_black_is_ignored(dubai: Path) -> None:
    # Tile 3 has all 6 class colours plus a few #000000 pixels
    dm = DubaiDataModule(str(dubai), test_split=3)
    pairs = dubai_pairs(dubai, [3])
    rgb = _rgb(pairs[0][1])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # black is a known "no label" colour, not an unknown one
        labels = dm.read_mask(pairs[0][1])
        n_black = 0
        for _, mask in pairs:
            m = dm.read_mask(mask)
            black = (_rgb(mask) == 0).all(-1)
            assert np.array_equal(m == IGNORE_INDEX, black)
            n_black += int(black.sum())
    assert labels.dtype == np.int64 and labels.shape == rgb.shape[:2]
    # independent reference: one colour at a time
    for k, colour in enumerate(DUBAI_COLOURS.colours):
        assert np.array_equal(labels == k, (rgb == colour).all(-1)), DUBAI_COLOURS.names[k]
    assert n_black == 306  # the tile's #000000 pixels, all ignored


def test_dubai_palette_masks_decode_like_rgb_ones(dubai: Path) -> None:
    # Tile 2's masks are palette ("P") PNGs, the others RGB
    dm = DubaiDataModule(str(dubai), test_split=2)
    mask_path = dubai_pairs(dubai, [2])[0][1]
    assert Image.open(mask_path).mode == "P"
    labels = dm.read_mask(mask_path)
    assert set(np.unique(labels)) <= set(range(6))
    ref, unknown = DUBAI_COLOURS.to_labels(_rgb(mask_path))
    assert unknown == 0 and np.array_equal(labels, ref)


def test_dubai_classes_json_colours_are_not_the_mask_colours(dubai: Path) -> None:
    listed = {c["color"].upper() for c in json.loads((dubai / "classes.json").read_text())["classes"]}
    used = set()
    for _, mask in dubai_pairs(dubai, ["Tile 2"]):
        rgb = _rgb(mask).reshape(-1, 3).astype(np.int64)
        packed = np.unique((rgb[:, 0] << 16) | (rgb[:, 1] << 8) | rgb[:, 2])
        used |= {_hex((c >> 16, (c >> 8) & 255, c & 255)) for c in packed}
    assert used <= {_hex(c) for c in DUBAI_COLOURS.colours + DUBAI_COLOURS.ignore_colours}
    assert listed & used == {"#9B9B9B"}  # only "Unlabeled" agrees with the masks


def test_unknown_colours_are_ignored_with_a_warning(dubai: Path, tmp_path: Path) -> None:
    root = dubai_subset(dubai, tmp_path / "dubai", {1: 1, 2: 1})
    mask = root / "Tile 2" / "masks" / "image_part_001.png"
    rgb = _rgb(mask).copy()
    rgb[10:12, 20:25] = (0x12, 0x34, 0x56)  # a colour outside the table
    mask.unlink()
    Image.fromarray(rgb).save(mask)
    dm = DubaiDataModule(str(root), test_split=2)
    dm.setup("test")
    with pytest.warns(UserWarning, match="10 pixels have colours outside the colour table"):
        sample = dm.datasets["test"][0]
    assert (sample["mask"][10:12, 20:25] == IGNORE_INDEX).all()
    assert int((sample["mask"] == IGNORE_INDEX).sum()) == 10


def test_datamodule_splits_dubai_by_tile(dubai: Path) -> None:
    dm = DubaiDataModule(str(dubai), val_split=2, test_split="Tile 3", crop_size=64, batch_size=2)
    pairs = dm.split_pairs()
    tiles = {name: {p[0].parent.parent.name for p in s} for name, s in pairs.items()}
    assert tiles == {"train": {f"Tile {i}" for i in (1, 4, 5, 6, 7, 8)}, "val": {"Tile 2"}, "test": {"Tile 3"}}
    assert [len(pairs[k]) for k in ("train", "val", "test")] == [54, 9, 9]
    info = dm.info()
    assert info.classes == list(DUBAI_COLOURS.names) and info.classes[0] == "building"
    assert info.palette == list(DUBAI_COLOURS.colours) and info.ignore_index == IGNORE_INDEX
    assert info.crop_size == 64 and info.num_channels == 3
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (2, 3, 64, 64) and batch["mask"].shape == (2, 64, 64)
    assert 0.0 <= float(batch["image"].min()) and float(batch["image"].max()) <= 1.0
    assert all(i.split("/")[0] in tiles["train"] for i in batch["id"])
    val = next(iter(dm.val_dataloader()))
    assert val["image"].shape[0] == 1 and val["image"].shape[-2:] == val["mask"].shape[-2:]
    assert val["image"].shape[-2:] == (544, 509)  # whole image
    assert val["id"] == ["Tile 2/images/image_part_001"]


def test_explicit_training_tiles_and_split_errors(dubai: Path) -> None:
    dm = DubaiDataModule(str(dubai), val_split=[2, 4], test_split=[3], train_split=1)
    assert {k: sorted({p[0].parent.parent.name for p in v}) for k, v in dm.split_pairs().items()} == {
        "train": ["Tile 1"],
        "val": ["Tile 2", "Tile 4"],
        "test": ["Tile 3"],
    }
    with pytest.raises(DataError, match=r"data.test_split is required.*\[3\]"):
        DubaiDataModule(str(dubai), val_split=2)
    with pytest.warns(UserWarning, match="data.test_split equals data.val_split"):
        DubaiDataModule(str(dubai), val_split=3, test_split=["Tile 3"]).split_pairs()
    with pytest.raises(DataError, match="leave no tile to train on"):
        DubaiDataModule(str(dubai), val_split=[1, 2, 3, 4], test_split=[5, 6, 7, 8]).split_pairs()
    with pytest.raises(DataError, match="Tile 12"):
        DubaiDataModule(str(dubai), test_split=12).split_pairs()


def test_a_tile_without_masks_is_named(dubai: Path, tmp_path: Path) -> None:
    root = dubai_subset(dubai, tmp_path / "dubai", {1: 2, 3: 1})
    (root / "Tile 1" / "masks" / "image_part_002.png").unlink()
    dm = DubaiDataModule(str(root), test_split=3)
    with pytest.raises(DataError, match=r"have no mask.*image_part_002.jpg"):
        dm.setup()
    (tmp_path / "no_tiles").mkdir()
    with pytest.raises(DataError, match="no 'Tile N/images' folder"):
        DubaiDataModule(str(tmp_path / "no_tiles"), test_split=3).setup()
