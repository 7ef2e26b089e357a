"""Split settings of the segmentation, detection and change-detection datamodules are checked.

Named splits must not train on an image they validate or test on; fractions are checked when
the datamodule is made; zero-area boxes dropped from annotations are reported. Layouts are
built from the real sets (LoveDA, Dubai, NEPU, DOTA, LEVIR-CD) in temporary folders.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
from data_helpers import build_cdd, build_oscd, copy_levir, dubai_subset, loveda_tree, voc_copy

from rsfm.data.change import CDDDataModule, LEVIRCDDataModule, OSCDDataModule, PairedAugment
from rsfm.data.detection import COCODataModule, DOTADataModule, VOCDataModule, parse_voc_xml
from rsfm.data.segmentation import DubaiDataModule, LoveDADataModule, SegmentationFolderDataModule
from rsfm.data.segmentation.common import resolve_splits
from rsfm.data.segmentation.loveda import loveda_pairs
from rsfm.data.splits import check_disjoint_splits
from rsfm.utils.errors import DataError

NEPU_IDS = ["0_15", "0_24", "0_31", "0_36"]


# ------------------------------------------------------------------------------- the rule


def test_check_disjoint_splits_errors_on_training_overlap_and_warns_on_evaluation_overlap(tmp_path: Path) -> None:
    files = [tmp_path / f"{i}.png" for i in range(6)]
    with pytest.raises(
        DataError, match=r"data.train_split and data.test_split share 2 images, e.g. \['1.png', '2.png'\]"
    ):
        check_disjoint_splits({"train": files[:3], "test": files[1:4]}, tmp_path)
    with pytest.raises(DataError, match=r"data.train_split and data.val_split share 1 pair, e.g. \['2.png'\]"):
        check_disjoint_splits({"train": files[:3], "val": files[2:4], "test": files[4:]}, tmp_path, noun="pair")
    # paths are compared normalised: a '.' component is the same file
    with pytest.raises(DataError, match="share 1 image"):
        check_disjoint_splits({"train": [tmp_path / "." / "0.png"], "test": [files[0]]})
    many = {"train": files, "test": files}
    with pytest.raises(DataError, match=r"share 6 images, e.g. \['0.png', '1.png', '2.png', '...'\]"):
        check_disjoint_splits(many, tmp_path)
    with pytest.warns(UserWarning, match="data.test_split equals data.val_split"):
        check_disjoint_splits({"train": files[:2], "val": files[2:4], "test": files[2:4]}, tmp_path)
    with pytest.warns(UserWarning, match=r"data.val_split and data.test_split share 1 image, e.g. \['3.png'\]"):
        check_disjoint_splits({"train": files[:2], "val": files[2:4], "test": files[3:]}, tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_disjoint_splits({"train": files[:2], "val": files[2:4], "test": files[4:]}, tmp_path)
        check_disjoint_splits({"train": files[:2], "test": files[4:]})  # no validation split


# ------------------------------------------------------------------------------- segmentation


def test_segmentation_lists_that_train_on_a_test_image_are_refused(datasets: Path) -> None:
    root = datasets / "loveda"
    with pytest.raises(
        DataError, match=r"data.train_split and data.test_split share 1 image, e.g. \['images_png/1.png'\]"
    ):
        LoveDADataModule(str(root), train_split=["0", "1"], test_split=["1"]).setup()
    with pytest.raises(DataError, match="data.train_split and data.val_split share 1 image"):
        resolve_splits(root, loveda_pairs, ["0", "2"], ["2"], ["1"])
    with pytest.warns(UserWarning, match="data.val_split and data.test_split share 1 image"):
        resolve_splits(root, loveda_pairs, None, ["1", "2"], ["2"])


def test_segmentation_folder_and_names_that_overlap_are_refused(datasets: Path, tmp_path: Path) -> None:
    root = loveda_tree(datasets / "loveda", tmp_path / "LoveDA", {"Train": ["0", "1"], "Val": ["2"]})
    # names are looked up in the whole tree (LoveDA's finder recurses), so they can reach into Train/
    with pytest.raises(
        DataError, match=r"data.train_split and data.val_split share 1 image, e.g. \['Train/Urban/images_png/0.png'\]"
    ):
        LoveDADataModule(str(root), train_split="Train", val_split=["0"], test_split="Val").setup()
    with pytest.raises(DataError, match="data.train_split and data.test_split share 2 images"):
        LoveDADataModule(str(root), train_split="Train", test_split="Train").setup()


def test_dubai_training_tiles_must_not_be_validated_or_tested_on(datasets: Path, tmp_path: Path) -> None:
    root = dubai_subset(datasets / "dubai_seg", tmp_path / "dubai", {1: 1, 2: 1, 3: 1})
    with pytest.raises(DataError, match=r"data.train_split and data.test_split share 1 image, e.g. \['Tile 2/images/"):
        DubaiDataModule(str(root), train_split=[1, 2], test_split=[2]).setup()
    with pytest.raises(DataError, match="data.train_split and data.val_split share 1 image"):
        DubaiDataModule(str(root), train_split=["Tile 1", "Tile 3"], val_split=3, test_split=[2]).setup()
    with pytest.warns(UserWarning, match="data.val_split and data.test_split share 1 image"):
        DubaiDataModule(str(root), val_split=[2, 3], test_split=[3]).setup()
    with pytest.warns(UserWarning, match="data.test_split equals data.val_split"):
        DubaiDataModule(str(root), val_split=[3], test_split=["Tile 3"]).setup()


def test_segmentation_folder_layout_checks_its_splits(datasets: Path) -> None:
    dm = SegmentationFolderDataModule(
        str(datasets / "loveda"),
        images_dir="images_png",
        masks_dir="masks_png",
        train_split=["0", "2"],
        test_split=["2"],
    )
    with pytest.raises(DataError, match="data.train_split and data.test_split share 1 image"):
        dm.setup()


# ------------------------------------------------------------------------------- detection


def test_detection_named_splits_that_overlap_training_are_refused(datasets: Path, tmp_path: Path) -> None:
    root = voc_copy(
        datasets / "nepu_owod", tmp_path / "voc", {"train": NEPU_IDS[:3], "val": NEPU_IDS[2:3], "test": NEPU_IDS[3:]}
    )
    with pytest.raises(
        DataError, match=r"data.train_split and data.val_split share 1 image, e.g. \['JPEGImages/0_31.jpg'\]"
    ):
        VOCDataModule(str(root), val_split="val", test_split="test").splits()
    with pytest.raises(DataError, match="data.train_split and data.test_split share 3 images"):
        VOCDataModule(str(root), test_split="train", val_fraction=0.0).splits()
    # the training split named as validation too: found, not trained and validated on silently
    with pytest.raises(DataError, match="data.train_split and data.val_split share 3 images"):
        VOCDataModule(str(root), val_split="train", test_split="test").splits()


def test_dota_folders_that_hold_the_same_image_are_refused(datasets: Path, tmp_path: Path) -> None:
    dota = datasets / "dota"
    for split, ids in (("train", ["P0003", "P0004"]), ("test", ["P0004", "P0005"])):
        for rid in ids:
            (tmp_path / split / "images").mkdir(parents=True, exist_ok=True)
            (tmp_path / split / "labelTxt").mkdir(parents=True, exist_ok=True)
            (tmp_path / split / "images" / f"{rid}.png").symlink_to(dota / "images" / f"{rid}.png")
            (tmp_path / split / "labelTxt" / f"{rid}.txt").symlink_to(dota / "labelTxt" / f"{rid}.txt")
    # two folders, two files: overlap is by path, so these are distinct (symbolic links are not followed)
    dm = DOTADataModule(str(tmp_path), train_split="train", test_split="test", val_fraction=0.0)
    assert [r.id for r in dm.splits()["test"]] == ["P0004", "P0005"]
    with pytest.raises(
        DataError, match=r"data.train_split and data.test_split share 2 images, e.g. \['train/images/P0003.png'"
    ):
        DOTADataModule(str(tmp_path), train_split="train", test_split="train", val_fraction=0.0).splits()


def test_detection_fractions_are_checked_when_the_datamodule_is_made(datasets: Path) -> None:
    dota = str(datasets / "dota")
    with pytest.raises(ValueError, match=r"data.val_fraction must be in \[0, 1\), got 1.5"):
        DOTADataModule(dota, val_fraction=1.5)
    with pytest.raises(ValueError, match=r"data.test_fraction must be in \[0, 1\), got -0.1"):
        VOCDataModule(str(datasets / "nepu_owod"), test_fraction=-0.1)
    # fractions that leave no training image are named with the split they cut
    with pytest.raises(
        DataError, match=r"data.val_fraction and data.test_fraction cannot split the 4 images of data.train_split '.'"
    ):
        DOTADataModule(dota, val_fraction=0.5, test_fraction=0.5).splits()


def test_zero_area_boxes_dropped_from_annotations_are_reported_once(datasets: Path, tmp_path: Path) -> None:
    dm = DOTADataModule(str(datasets / "dota"))
    with pytest.warns(UserWarning, match=r"2 object\(s\) of zero area .* dropped from the annotations of .*dota"):
        dm.splits()
    assert dm.num_degenerate == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dm.splits()  # read once, said once
        dm.setup()

    # COCO boxes without area are counted the same way
    nepu = datasets / "nepu_owod"
    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    (root / "images").symlink_to(nepu / "JPEGImages")
    for name, ids, first in (("train", NEPU_IDS[:3], 1), ("test", NEPU_IDS[3:], 10)):
        images, anns = [], []
        for k, rid in enumerate(ids):
            images.append({"id": first + k, "file_name": f"{rid}.jpg"})
            for x0, y0, x1, y1 in parse_voc_xml(nepu / "Annotations" / f"{rid}.xml")["boxes"].tolist():
                anns.append(
                    {"id": len(anns) + 1, "image_id": first + k, "category_id": 1, "bbox": [x0, y0, x1 - x0, y1 - y0]}
                )
        anns[0]["bbox"][2] = 0.0  # one zero-width box
        coco = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "oilwell"}]}
        (root / "annotations" / f"{name}.json").write_text(json.dumps(coco))
    coco_dm = COCODataModule(
        str(root), train_split="annotations/train.json", test_split="annotations/test.json", val_fraction=0.0
    )
    with pytest.warns(UserWarning, match=r"2 object\(s\) of zero area"):
        splits = coco_dm.splits()
    assert coco_dm.num_degenerate == 2 and splits["train"][0].meta["num_degenerate"] == 1


# ------------------------------------------------------------------------------- change detection


def test_levir_named_folders_that_overlap_training_are_refused(datasets: Path, tmp_path: Path) -> None:
    levir = datasets / "levir_cd"
    names = sorted(p.name for p in (levir / "A").iterdir())
    for split, chosen in (("train", names[:3]), ("val", names[3:4]), ("test", names[4:6])):
        copy_levir(levir, tmp_path / split, chosen)
    with pytest.raises(DataError, match=r"data.train_split and data.test_split share 3 pairs, e.g. \['train/A/"):
        LEVIRCDDataModule(str(tmp_path), train_split="train", val_split="val", test_split="train").records()
    with pytest.raises(DataError, match="data.train_split and data.val_split share 3 pairs"):
        LEVIRCDDataModule(str(tmp_path), train_split="train", val_split="train", test_split="test").records()


def test_cdd_and_oscd_splits_are_checked(datasets: Path, tmp_path: Path) -> None:
    levir = datasets / "levir_cd"
    cdd = build_cdd(levir, tmp_path / "cdd")
    with pytest.raises(DataError, match="data.train_split and data.test_split share 3 pairs"):
        CDDDataModule(str(cdd), test_split="train").records()
    oscd = build_oscd(levir, tmp_path / "oscd")
    # OSCD's validation cities are training cities held out: testing on them too is said
    with pytest.warns(UserWarning, match="data.test_split equals data.val_split"):
        records = OSCDDataModule(str(oscd), val_split=["bravo"], test_split=["bravo"]).records()
    assert [r.name for r in records["train"]] == ["alpha"]


def test_levir_fractions_and_crop_size_are_checked(datasets: Path) -> None:
    levir = str(datasets / "levir_cd")
    with pytest.raises(ValueError, match=r"data.val_fraction must be in \[0, 1\), got -1"):
        LEVIRCDDataModule(levir, val_fraction=-1)
    with pytest.raises(ValueError, match=r"data.test_fraction must be in \[0, 1\), got 1.0"):
        LEVIRCDDataModule(levir, test_fraction=1.0)
    with pytest.raises(DataError, match="data.val_fraction and data.test_fraction cannot split the 11 pairs"):
        LEVIRCDDataModule(levir, val_fraction=0.5, test_fraction=0.5).records()
    # crop_size: null means whole images; 0 or a negative size is an error, not a silent whole image
    assert LEVIRCDDataModule(levir, crop_size=None).info().crop_size is None
    for bad in (0, -3, 2.5):
        with pytest.raises(
            DataError, match=f"data.crop_size must be a positive number of pixels, or null for whole images; got {bad}"
        ):
            LEVIRCDDataModule(levir, crop_size=bad)
    with pytest.raises(ValueError, match="data.crop_size must be a positive number of pixels or None"):
        PairedAugment(crop_size=0)
