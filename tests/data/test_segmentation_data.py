import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from rsfm.data.segmentation import (
    DUBAI_COLOURS,
    IGNORE_INDEX,
    ISPRS_COLOURS,
    LOVEDA_CLASSES,
    ColourMaskSegmentation,
    DubaiSegmentation,
    ImageMaskFolder,
    LoveDA,
    SegmentationCrop,
    datamodule_from_config,
    dubai_pairs,
    pair_by_stem,
)


@pytest.fixture(scope="module")
def dubai(datasets):
    return datasets / "dubai_seg"


def _rgb(path):
    return np.asarray(Image.open(path).convert("RGB"))


def _hex(rgb):
    return "#" + "".join(f"{int(v):02X}" for v in rgb)


def test_dubai_pairs_by_tile(dubai):
    pairs = dubai_pairs(dubai)
    assert len(pairs) == 72
    assert [p[0].parent.parent.name for p in pairs[::9]] == [f"Tile {i}" for i in range(1, 9)]
    for image, mask in pairs:
        assert image.suffix == ".jpg" and mask.suffix == ".png"
        assert image.stem == mask.stem and image.parent.parent == mask.parent.parent
    assert dubai_pairs(dubai, [3]) == dubai_pairs(dubai, ["Tile 3"]) == pairs[18:27]


def test_dubai_colours_map_every_pixel_and_black_is_ignored(dubai):
    # Tile 3 has all 6 class colours plus a few #000000 pixels
    ds = DubaiSegmentation(dubai, ["Tile 3"])
    image_path, mask_path = ds.pairs[0]
    rgb = _rgb(mask_path)
    labels = ds.load_mask(mask_path)
    assert labels.dtype == np.int64 and labels.shape == rgb.shape[:2]
    # independent reference: one colour at a time
    for k, colour in enumerate(DUBAI_COLOURS.colours):
        assert np.array_equal(labels == k, (rgb == colour).all(-1)), DUBAI_COLOURS.names[k]
    black = (rgb == 0).all(-1)
    assert np.array_equal(labels == IGNORE_INDEX, black)
    n_black = sum(int((_rgb(m) == 0).all(-1).sum()) for _, m in ds.pairs)
    assert n_black == 306  # the tile's #000000 pixels, all ignored
    assert ds.unknown_pixels == {}  # black is a known "no label" colour, not an unknown one


def test_dubai_palette_masks_decode_like_rgb_ones(dubai):
    # Tile 2's masks are palette ("P") PNGs, the others RGB
    ds = DubaiSegmentation(dubai, ["Tile 2"])
    mask_path = ds.pairs[0][1]
    assert Image.open(mask_path).mode == "P"
    labels = ds.load_mask(mask_path)
    assert set(np.unique(labels)) <= set(range(6))
    ref, unknown = DUBAI_COLOURS.to_labels(_rgb(mask_path))
    assert unknown == 0 and np.array_equal(labels, ref)


def test_dubai_classes_json_colours_are_not_the_mask_colours(dubai):
    listed = {c["color"].upper() for c in json.loads((dubai / "classes.json").read_text())["classes"]}
    used = set()
    for _, mask in dubai_pairs(dubai, ["Tile 2"]):
        rgb = _rgb(mask).reshape(-1, 3)
        used |= {_hex(c) for c in np.unique(rgb, axis=0)}
    assert used <= {_hex(c) for c in DUBAI_COLOURS.colours + DUBAI_COLOURS.ignore_colours}
    assert listed & used == {"#9B9B9B"}  # only "Unlabeled" agrees with the masks


def test_unknown_colours_are_ignored_and_counted(dubai, tmp_path):
    image, mask = dubai_pairs(dubai, ["Tile 2"])[0]
    rgb = _rgb(mask).copy()
    rgb[10:12, 20:25] = (0x12, 0x34, 0x56)  # a colour outside the table
    Image.fromarray(rgb).save(tmp_path / "m.png")
    ds = ColourMaskSegmentation([(image, tmp_path / "m.png")], DUBAI_COLOURS)
    with pytest.warns(UserWarning, match="10 pixels"):
        sample = ds[0]
    assert (sample["mask"][10:12, 20:25] == IGNORE_INDEX).all()
    assert ds.unknown_pixels == {str(tmp_path / "m.png"): 10}
    assert int((sample["mask"] == IGNORE_INDEX).sum()) == 10


def test_loveda_shifts_labels_and_ignores_zero(datasets, tmp_path):
    ds = LoveDA(datasets / "loveda")
    assert ds.classes == LOVEDA_CLASSES and len(ds) == 3
    raw = np.asarray(Image.open(ds.pairs[0][1]))
    assert Image.open(ds.pairs[0][1]).mode == "L"
    sample = ds[0]
    assert sample["image"].shape == (3, 1024, 1024) and sample["image"].dtype == torch.float32
    assert sample["mask"].dtype == torch.int64
    assert np.array_equal(sample["mask"].numpy(), raw.astype(np.int64) - 1)  # these tiles have no 0s
    # the no-data label 0: the real tiles lack it, so put some into a copy of one
    root = tmp_path / "loveda"
    (root / "images_png").mkdir(parents=True)
    (root / "masks_png").mkdir()
    shutil.copy(ds.pairs[0][0], root / "images_png" / "0.png")
    zeroed = raw.copy()
    zeroed[:4] = 0
    Image.fromarray(zeroed, mode="L").save(root / "masks_png" / "0.png")
    mask = LoveDA(root)[0]["mask"].numpy()
    assert (mask[:4] == IGNORE_INDEX).all()
    assert np.array_equal(mask[4:], raw[4:].astype(np.int64) - 1)


def test_image_mask_folder_with_label_map_reads_loveda_like_loveda(datasets):
    root = datasets / "loveda"
    label_map = {0: 255, **{i: i - 1 for i in range(1, 8)}}
    folder = ImageMaskFolder(root / "images_png", root / "masks_png", 255, label_map=label_map, names=["1"])
    assert folder.classes == tuple(str(i) for i in range(7))
    assert torch.equal(folder[0]["mask"], LoveDA(root, names=["1"])[0]["mask"])
    # without a map, raw values are labels; the classes are found by reading the masks
    raw = ImageMaskFolder(root / "images_png", root / "masks_png", names=["1"])
    assert raw.classes == tuple(str(i) for i in range(8))
    assert torch.equal(raw[0]["mask"], folder[0]["mask"] + 1)


def test_isprs_colour_code_and_tagged_stems(tmp_path):
    # No ISPRS tile is shipped in ../shared/datasets; a tiny generated pair checks the table and
    # Potsdam's naming (top_potsdam_2_10_RGB.tif ↔ top_potsdam_2_10_label.tif).
    (tmp_path / "img").mkdir()
    (tmp_path / "lbl").mkdir()
    colours = np.array(ISPRS_COLOURS.colours + ((0, 0, 0),), dtype=np.uint8)  # 6 classes + boundary
    rgb = np.repeat(colours[None], 3, axis=0)  # (3, 7, 3)
    Image.fromarray(np.zeros((3, 7, 3), np.uint8)).save(tmp_path / "img" / "top_potsdam_2_10_RGB.png")
    Image.fromarray(rgb).save(tmp_path / "lbl" / "top_potsdam_2_10_label.png")
    pairs = pair_by_stem(tmp_path / "img", tmp_path / "lbl", "_RGB", "_label")
    assert len(pairs) == 1
    mask = ColourMaskSegmentation(pairs, ISPRS_COLOURS)[0]["mask"]
    assert mask[0].tolist() == [0, 1, 2, 3, 4, 5, IGNORE_INDEX]
    with pytest.raises(ValueError, match="no mask"):
        pair_by_stem(tmp_path / "img", tmp_path / "lbl")


def test_crop_pads_with_ignore_and_flips_image_and_mask_together():
    torch.manual_seed(0)
    image = torch.arange(3 * 5 * 7, dtype=torch.uint8).view(3, 5, 7)
    mask = image[0].long()
    out = SegmentationCrop(8)({"image": image, "mask": mask})
    assert out["image"].shape == (3, 8, 8) and out["mask"].shape == (8, 8)
    valid = out["mask"] != IGNORE_INDEX
    assert int(valid.sum()) == 5 * 7  # padded, nothing lost
    assert torch.equal(out["image"][0].long()[valid], out["mask"][valid])  # still aligned
    for seed in range(5):
        torch.manual_seed(seed)
        big = torch.randint(0, 200, (3, 40, 50), dtype=torch.uint8)
        out = SegmentationCrop(16)({"image": big, "mask": big[1].long()})
        assert out["image"].shape == (3, 16, 16)
        assert torch.equal(out["image"][1].long(), out["mask"])


def test_datamodule_splits_dubai_by_tile(dubai):
    dm = datamodule_from_config({"dataset": "dubai", "root": str(dubai), "crop_size": 64, "batch_size": 2})
    tiles = {name: {p[0].parent.parent.name for p in s.pairs} for name, s in
             (("train", dm.train_set), ("val", dm.val_set), ("test", dm.test_set))}  # fmt: skip
    assert tiles == {"train": {f"Tile {i}" for i in (1, 4, 5, 6, 7, 8)}, "val": {"Tile 2"}, "test": {"Tile 3"}}
    assert dm.num_classes == 6 and dm.classes[0] == "building"
    torch.manual_seed(0)
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (2, 3, 64, 64) and batch["mask"].shape == (2, 64, 64)
    val = next(iter(dm.val_dataloader()))
    assert val["image"].shape[0] == 1 and val["image"].shape[-2:] == val["mask"].shape[-2:]
    assert val["image"].shape[-2:] == (544, 509)  # whole image


def test_datamodule_loveda_names_and_unknown_keys(datasets):
    root = str(datasets / "loveda")
    dm = datamodule_from_config({"dataset": "loveda", "root": root, "val_names": ["2"], "crops_per_image": 3})
    assert [p[0].stem for p in dm.train_set.pairs] == ["0", "1"] and len(dm.train_set) == 6
    assert [p[0].stem for p in dm.val_set.pairs] == [p[0].stem for p in dm.test_set.pairs] == ["2"]
    with pytest.raises(ValueError, match="data.val_tiles"):
        datamodule_from_config({"dataset": "loveda", "root": root, "val_tiles": [1]})
    with pytest.raises(ValueError, match="data.val_root or data.val_names"):
        datamodule_from_config({"dataset": "loveda", "root": root})
    with pytest.raises(ValueError, match="data.dataset"):
        datamodule_from_config({"dataset": "voc", "root": root})
