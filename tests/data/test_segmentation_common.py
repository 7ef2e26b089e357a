"""What every segmentation layout shares (rsfm.data.segmentation.common), on real tiles."""

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from data_helpers import dubai_subset, loveda_tree
from PIL import Image

from rsfm.data.segmentation import DUBAI_COLOURS, IGNORE_INDEX, ISPRS_COLOURS, ColourTable, colourise
from rsfm.data.segmentation.common import (
    SegmentationCrop,
    SegmentationDataset,
    colour_mask_reader,
    index_mask_reader,
    infer_classes,
    pair_by_stem,
    read_single_band,
    resolve_splits,
    select_pairs,
)
from rsfm.data.segmentation.loveda import loveda_pairs
from rsfm.utils.errors import DataError


def _rgb(path: Path) -> np.ndarray:
    return np.array(Image.open(path).convert("RGB"))


# ------------------------------------------------------------------------------- colour tables


def test_colour_table_round_trip_on_a_real_dubai_mask(datasets: Path) -> None:
    mask = datasets / "dubai_seg" / "Tile 3" / "masks" / "image_part_001.png"
    rgb = _rgb(mask)
    labels, unknown = DUBAI_COLOURS.to_labels(rgb)
    assert unknown == 0 and labels.dtype == np.int64 and labels.shape == rgb.shape[:2]
    # (3, H, W) input gives the same labels as (H, W, 3)
    assert np.array_equal(DUBAI_COLOURS.to_labels(rgb.transpose(2, 0, 1).copy())[0], labels)
    # labels back to colours: the mask again, where it is not black (ignore is drawn black too)
    back = DUBAI_COLOURS.to_rgb(labels)
    assert np.array_equal(back, rgb)
    assert np.array_equal(colourise(torch.from_numpy(labels), DUBAI_COLOURS.colours), back)


def test_colour_table_validation() -> None:
    table = ColourTable(names=("a", "b"), colours=("#FF0000", (0, 255, 0)), ignore_colours=("#000000",))
    assert table.colours == ((255, 0, 0), (0, 255, 0)) and table.ignore_colours == ((0, 0, 0),)
    with pytest.raises(ValueError, match="twice"):
        ColourTable(names=("a", "b"), colours=("#FF0000", "#ff0000"))
    with pytest.raises(ValueError, match="#RRGGBB"):
        ColourTable(names=("a",), colours=("red",))
    with pytest.raises(ValueError, match="class names"):
        ColourTable(names=("a", "b"), colours=("#FF0000",))
    with pytest.raises(ValueError, match=r"must be \(3, H, W\) or \(H, W, 3\)"):
        table.to_labels(np.zeros((4, 4), np.uint8))


def test_isprs_colour_code_and_tagged_stems(datasets: Path, tmp_path: Path) -> None:
    # Potsdam's naming (top_potsdam_2_10_RGB.tif <-> top_potsdam_2_10_label.tif) on a real
    # Dubai image, its mask a strip of the six ISPRS colours and black (eroded boundary)
    (tmp_path / "img").mkdir()
    (tmp_path / "lbl").mkdir()
    image = _rgb(datasets / "dubai_seg" / "Tile 2" / "images" / "image_part_001.jpg")[:3, :7]
    colours = np.array(ISPRS_COLOURS.colours + ((0, 0, 0),), dtype=np.uint8)  # 6 classes + boundary
    Image.fromarray(np.ascontiguousarray(image)).save(tmp_path / "img" / "top_potsdam_2_10_RGB.png")
    Image.fromarray(np.repeat(colours[None], 3, axis=0)).save(tmp_path / "lbl" / "top_potsdam_2_10_label.png")
    pairs = pair_by_stem(tmp_path / "img", tmp_path / "lbl", "_RGB", "_label")
    assert pairs == [(tmp_path / "img" / "top_potsdam_2_10_RGB.png", tmp_path / "lbl" / "top_potsdam_2_10_label.png")]
    sample = SegmentationDataset(pairs, colour_mask_reader(ISPRS_COLOURS))[0]
    assert sample["mask"][0].tolist() == [0, 1, 2, 3, 4, 5, IGNORE_INDEX]
    assert sample["id"] == "top_potsdam_2_10_RGB"
    assert torch.equal(sample["image"], torch.from_numpy(image.copy()).permute(2, 0, 1).float() / 255)
    with pytest.raises(ValueError, match="no mask"):
        pair_by_stem(tmp_path / "img", tmp_path / "lbl")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        pair_by_stem(tmp_path / "nowhere", tmp_path / "lbl")


def test_unknown_colours_are_ignored_and_warned_once(datasets: Path, tmp_path: Path) -> None:
    mask = datasets / "dubai_seg" / "Tile 2" / "masks" / "image_part_001.png"
    rgb = _rgb(mask).copy()
    rgb[10:12, 20:25] = (0x12, 0x34, 0x56)  # a colour outside the table
    Image.fromarray(rgb).save(tmp_path / "m.png")
    read = colour_mask_reader(DUBAI_COLOURS)
    with pytest.warns(UserWarning, match="10 pixels have colours outside"):
        labels = read(tmp_path / "m.png")
    assert (labels[10:12, 20:25] == IGNORE_INDEX).all()
    assert int((labels == IGNORE_INDEX).sum()) == 10  # Tile 2 has no black pixel
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read(tmp_path / "m.png")  # the same file warns once


# --------------------------------------------------------------------------------- index masks


def test_index_mask_reader_with_and_without_a_label_map(datasets: Path, tmp_path: Path) -> None:
    mask = datasets / "loveda" / "masks_png" / "1.png"
    raw = np.asarray(Image.open(mask)).astype(np.int64)
    assert np.array_equal(read_single_band(mask), raw)
    # raw values are labels; values >= K become ignore
    plain = index_mask_reader(5)(mask)
    assert np.array_equal(plain, np.where(raw < 5, raw, IGNORE_INDEX))
    shifted = index_mask_reader(7, {0: IGNORE_INDEX, **{i: i - 1 for i in range(1, 8)}})(mask)
    assert np.array_equal(shifted, np.where(raw == 0, IGNORE_INDEX, raw - 1))
    only_two = index_mask_reader(2, {2: 0, 3: 1})(mask)  # raw values not in the map: ignore
    assert np.array_equal(only_two, np.select([raw == 2, raw == 3], [0, 1], IGNORE_INDEX))
    with pytest.raises(ValueError, match="data.label_map sends 1 to 9"):
        index_mask_reader(7, {1: 9})
    for key in (65536, -1):
        with pytest.raises(ValueError, match=rf"data.label_map has key {key}: .* expected keys in \[0, 65535\]"):
            index_mask_reader(7, {key: 0})
    Image.fromarray(_rgb(datasets / "loveda" / "images_png" / "1.png")).save(tmp_path / "rgb.png")
    with pytest.raises(ValueError, match="mode RGB"):
        read_single_band(tmp_path / "rgb.png")
    assert infer_classes([(mask, mask)]) == [str(i) for i in range(int(raw.max()) + 1)]


# ----------------------------------------------------------------------------- dataset, crops


def test_dataset_samples_and_size_mismatch(datasets: Path, tmp_path: Path) -> None:
    loveda = datasets / "loveda"
    pairs = loveda_pairs(loveda)
    ds = SegmentationDataset(pairs, index_mask_reader(8), root=loveda)
    s = ds[0]
    assert s["image"].shape == (3, 1024, 1024) and s["image"].dtype == torch.float32
    assert 0.0 <= float(s["image"].min()) and float(s["image"].max()) <= 1.0
    assert s["mask"].shape == (1024, 1024) and s["mask"].dtype == torch.int64
    assert s["id"] == "images_png/0" and len(ds) == 3
    Image.open(loveda / "masks_png" / "0.png").crop((0, 0, 512, 512)).save(tmp_path / "small.png")
    bad = SegmentationDataset([(loveda / "images_png" / "0.png", tmp_path / "small.png")], index_mask_reader(8))
    with pytest.raises(DataError, match=r"\(1024, 1024\) but its mask .*small.png is \(512, 512\)"):
        bad[0]
    with pytest.raises(DataError, match="no image/mask pair"):
        SegmentationDataset([], index_mask_reader(8))


def test_crop_pads_with_ignore_and_flips_image_and_mask_together(datasets: Path) -> None:
    tile = torch.from_numpy(_rgb(datasets / "loveda" / "images_png" / "2.png")).permute(2, 0, 1)
    torch.manual_seed(0)
    image = tile[:, :5, :7].clone()
    mask = image[0].long()
    out = SegmentationCrop(8)({"image": image, "mask": mask, "id": "x"})
    assert out["image"].shape == (3, 8, 8) and out["mask"].shape == (8, 8) and out["id"] == "x"
    valid = out["mask"] != IGNORE_INDEX
    assert int(valid.sum()) == 5 * 7  # padded, nothing lost
    assert torch.equal(out["image"][0].long()[valid], out["mask"][valid])  # still aligned
    for seed in range(5):
        torch.manual_seed(seed)
        big = tile[:, 100:140, 200:250]
        out = SegmentationCrop(16)({"image": big, "mask": big[1].long()})
        assert out["image"].shape == (3, 16, 16)
        assert torch.equal(out["image"][1].long(), out["mask"])
    with pytest.raises(ValueError, match="crop_size"):
        SegmentationCrop(0)


# --------------------------------------------------------------------------------- split rules


@pytest.fixture
def loveda_official(datasets: Path, tmp_path: Path) -> Path:
    """LoveDA's official tree from the 3 real tiles: Train (0, 1), Val (2), Test (0)."""
    return loveda_tree(datasets / "loveda", tmp_path / "LoveDA", {"Train": ["0", "1"], "Val": ["2"], "Test": ["0"]})


def _ids(pairs: list[tuple[Path, Path]], root: Path) -> list[str]:
    return [p[0].relative_to(root).with_suffix("").as_posix() for p in pairs]


def test_resolve_splits_requires_a_test_split(loveda_official: Path) -> None:
    with pytest.raises(DataError, match="data.test_split is required"):
        resolve_splits(loveda_official, loveda_pairs, "Train", "Val", None)


def test_resolve_splits_named_sub_folders(loveda_official: Path) -> None:
    root = loveda_official
    splits = resolve_splits(root, loveda_pairs, "Train", "Val", "Test")
    assert {k: _ids(v, root) for k, v in splits.items()} == {
        "train": ["Train/Urban/images_png/0", "Train/Urban/images_png/1"],
        "val": ["Val/Urban/images_png/2"],
        "test": ["Test/Urban/images_png/0"],
    }
    # without a training folder, training is every pair of the root that no split holds,
    # sub-folder splits included (LoveDA's finder searches the whole tree)
    rest = resolve_splits(root, loveda_pairs, None, "Val", "Test")
    assert _ids(rest["train"], root) == ["Train/Urban/images_png/0", "Train/Urban/images_png/1"]
    with pytest.raises(DataError, match="data.train_split: folder not found"):
        resolve_splits(root, loveda_pairs, "Training", "Val", "Test")


def test_resolve_splits_name_lists(datasets: Path) -> None:
    root = datasets / "loveda"
    splits = resolve_splits(root, loveda_pairs, None, ["2"], ["1"])
    assert {k: [p[0].stem for p in v] for k, v in splits.items()} == {"val": ["2"], "test": ["1"], "train": ["0"]}
    # relative paths without suffix are names too; a training list selects explicitly
    explicit = resolve_splits(root, loveda_pairs, ["0", "2"], None, ["images_png/1"])
    assert [p[0].stem for p in explicit["train"]] == ["0", "2"] and explicit["val"] == []
    assert [p[0].stem for p in explicit["test"]] == ["1"]
    # a name that is neither a sub-folder nor an image
    with pytest.raises(DataError, match=r"data.val_split: no image named \['7'\]"):
        resolve_splits(root, loveda_pairs, None, ["7"], ["1"])
    with pytest.raises(DataError, match="data.test_split: no image named"):
        resolve_splits(root, loveda_pairs, None, None, "Test")  # no such folder: read as a name
    with pytest.raises(DataError, match="leave no image to train on"):
        resolve_splits(root, loveda_pairs, None, ["0", "1"], ["2"])


def test_resolve_splits_warns_when_test_equals_val(datasets: Path, loveda_official: Path) -> None:
    with pytest.warns(UserWarning, match="data.test_split equals data.val_split"):
        resolve_splits(datasets / "loveda", loveda_pairs, None, ["2"], ["2"])
    with pytest.warns(UserWarning, match="not independent"):
        same = resolve_splits(loveda_official, loveda_pairs, "Train", "Val", "Val")
    assert same["val"] == same["test"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        resolve_splits(loveda_official, loveda_pairs, "Train", "Val", "Test")


def test_select_pairs_by_stem_or_relative_path(datasets: Path, tmp_path: Path) -> None:
    root = dubai_subset(datasets / "dubai_seg", tmp_path / "dubai", {1: 2, 2: 1})
    pairs = [(i, m) for t in ("Tile 1", "Tile 2") for i, m in pair_by_stem(root / t / "images", root / t / "masks")]
    assert len(pairs) == 3
    # a stem shared by two tiles selects both; a relative path selects one
    assert len(select_pairs(pairs, ["image_part_001"], root)) == 2
    one = select_pairs(pairs, ["Tile 2/images/image_part_001"], root)
    assert one == [pairs[2]]
    assert select_pairs(pairs, None, root) == pairs
    with pytest.raises(ValueError, match="no image named"):
        select_pairs(pairs, ["image_part_009"], root)
