"""iSAID's PNG layout and ISAIDDataModule (rsfm.data.instance.isaid) on the real isaid_dota subset.

Expected instances, classes and boxes are recomputed here from the PNGs with numpy alone:
instance id = R + 256·G + 65536·B of ``<id>_instance_id_RGB.png``, class = the README's
colour of ``<id>_instance_color_RGB.png``.
"""

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rsfm.data.detection import DOTA_V1_CLASSES
from rsfm.data.instance import (
    INSTANCE_BATCH_KEYS,
    ISAID_CLASSES,
    InstanceDataset,
    ISAIDDataModule,
    collate_instances,
    dota_class_name,
    isaid_records,
    read_isaid_annotations,
)
from rsfm.data.skips import SkipReport
from rsfm.utils.errors import DataError

#: the README's colour table (isaid_dota section), written out independently of the library
README_COLOURS = {
    (0, 0, 63): "ship",
    (0, 63, 63): "storage_tank",
    (0, 63, 0): "baseball_diamond",
    (0, 63, 127): "tennis_court",
    (0, 63, 191): "basketball_court",
    (0, 63, 255): "Ground_Track_Field",
    (0, 127, 63): "Bridge",
    (0, 127, 127): "Large_Vehicle",
    (0, 0, 127): "Small_Vehicle",
    (0, 0, 191): "Helicopter",
    (0, 0, 255): "Swimming_pool",
    (0, 191, 127): "Roundabout",
    (0, 127, 191): "Soccer_ball_field",
    (0, 127, 255): "plane",
    (0, 100, 155): "Harbor",
}
SCENES = {"P0005": "train", "P0003": "val", "P0004": "val"}


@pytest.fixture(scope="module")
def isaid(datasets: Path) -> Path:
    return datasets / "isaid_dota"


def image_of(isaid: Path, rid: str) -> Path:
    return isaid / SCENES[rid] / "images" / f"{rid}.png"


def id_map(isaid: Path, rid: str) -> np.ndarray:
    a = np.asarray(Image.open(image_of(isaid, rid).with_name(f"{rid}_instance_id_RGB.png")).convert("RGB"))
    a = a.astype(np.int64)
    return a[..., 0] + 256 * a[..., 1] + 65536 * a[..., 2]


def colour_png(isaid: Path, rid: str) -> np.ndarray:
    return np.asarray(Image.open(image_of(isaid, rid).with_name(f"{rid}_instance_color_RGB.png")).convert("RGB"))


def tight_box(mask: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(mask)
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]


def copy_scene(isaid: Path, root: Path, rid: str, split: str | None = None, link: bool = True) -> Path:
    """``root/<split>/images/`` holding the scene's three PNGs (symlinks, or copies to edit)."""
    dst = root / (split or SCENES[rid]) / "images"
    dst.mkdir(parents=True, exist_ok=True)
    for name in (f"{rid}.png", f"{rid}_instance_id_RGB.png", f"{rid}_instance_color_RGB.png"):
        src = image_of(isaid, rid).with_name(name)
        if link:
            (dst / name).symlink_to(src)
        else:
            shutil.copy(src, dst / name)
    return dst / f"{rid}.png"


# ------------------------------------------------------------------------------ reader


@pytest.mark.parametrize("rid", sorted(SCENES))
def test_instances_match_the_id_png(isaid: Path, rid: str) -> None:
    ids = id_map(isaid, rid)
    expected = np.unique(ids)
    expected = expected[expected != 0]
    if rid == "P0005":
        assert len(expected) == 131  # the count quoted for P0005
    ann = read_isaid_annotations(image_of(isaid, rid))
    assert set(ann) == {"masks", "labels", "semantic", "ids"}
    n, (h, w) = len(expected), ids.shape
    assert ann["masks"].shape == (n, h, w) and ann["masks"].dtype == bool
    assert ann["labels"].shape == (n,) and ann["labels"].dtype == np.int64
    assert ann["ids"].dtype == np.int64 and np.array_equal(ann["ids"], expected)
    assert ((ann["labels"] >= 0) & (ann["labels"] < len(ISAID_CLASSES))).all()
    # each mask is exactly the pixels of its id
    for k in range(0, n, 7):
        assert np.array_equal(ann["masks"][k], ids == expected[k])
    assert ann["masks"].sum() == (ids != 0).sum()  # no pixel in two masks, none left out
    # class of each instance: the README colour of its pixels
    colours = colour_png(isaid, rid).astype(np.int64)
    inside = ids != 0
    key = (colours[..., 0] << 16) | (colours[..., 1] << 8) | colours[..., 2]
    pairs = np.unique(np.stack([ids[inside], key[inside]]), axis=1)  # every (instance id, colour) seen
    assert np.array_equal(pairs[0], expected)  # these scenes have one colour per instance
    names = [README_COLOURS[(c >> 16, (c >> 8) & 255, c & 255)] for c in pairs[1].tolist()]
    assert [ISAID_CLASSES[i] for i in ann["labels"]] == names


def test_a_known_instance_and_the_semantic_map(isaid: Path) -> None:
    ids, colours = id_map(isaid, "P0003"), colour_png(isaid, "P0003")
    ann = read_isaid_annotations(image_of(isaid, "P0003"))
    # P0003 holds one storage tank: its instance is labelled storage_tank
    tank_ids = np.unique(ids[(colours == (0, 63, 63)).all(-1)])
    assert len(tank_ids) == 1
    k = int(np.flatnonzero(ann["ids"] == tank_ids[0])[0])
    assert ISAID_CLASSES[ann["labels"][k]] == "storage_tank"
    assert ann["masks"][k].sum() == (ids == tank_ids[0]).sum()
    # semantic: 255 exactly where the colour PNG is black, the class's README colour elsewhere
    sem = ann["semantic"]
    assert sem.shape == ids.shape and sem.dtype == np.uint8
    black = (colours == 0).all(-1)
    assert np.array_equal(sem == 255, black)
    names = np.array(ISAID_CLASSES)[sem[~black]]
    want = np.array([README_COLOURS[tuple(int(v) for v in c)] for c in np.unique(colours[~black], axis=0)])
    assert set(names.tolist()) == set(want.tolist())
    for name in set(want.tolist()):
        colour = next(c for c, n in README_COLOURS.items() if n == name)
        assert np.array_equal(sem == ISAID_CLASSES.index(name), (colours == colour).all(-1))


def test_class_lists_in_dota_order_and_subsets(isaid: Path) -> None:
    path = image_of(isaid, "P0003")
    base = read_isaid_annotations(path)
    dota = read_isaid_annotations(path, DOTA_V1_CLASSES)
    assert np.array_equal(dota["ids"], base["ids"])
    assert [DOTA_V1_CLASSES[i] for i in dota["labels"]] == [dota_class_name(ISAID_CLASSES[i]) for i in base["labels"]]
    small = read_isaid_annotations(path, ["Small_Vehicle"])
    is_small = np.array([ISAID_CLASSES[i] == "Small_Vehicle" for i in base["labels"]])
    assert np.array_equal(small["ids"], base["ids"][is_small]) and (small["labels"] == 0).all()
    assert np.array_equal(small["semantic"] == 0, base["semantic"] == ISAID_CLASSES.index("Small_Vehicle"))
    assert set(np.unique(small["semantic"]).tolist()) == {0, 255}
    with pytest.raises(DataError, match="'car' is not an iSAID class"):
        read_isaid_annotations(path, ["car"])


def test_dota_class_name() -> None:
    assert dota_class_name("Large_Vehicle") == "large-vehicle"
    assert dota_class_name("plane") == "plane"
    assert dota_class_name("Ground_Track_Field") == "ground-track-field"
    assert dota_class_name("storage-tank") == "storage-tank"
    assert sorted(dota_class_name(c) for c in ISAID_CLASSES) == sorted(DOTA_V1_CLASSES)
    with pytest.raises(DataError, match="'container-crane' is not an iSAID"):
        dota_class_name("container-crane")


def _edit_colour(path: Path, edit) -> None:
    png = path.with_name(f"{path.stem}_instance_color_RGB.png")
    a = np.array(Image.open(png).convert("RGB"))
    edit(a)
    Image.fromarray(a).save(png)


def test_bad_inputs_name_the_file(isaid: Path, tmp_path: Path) -> None:
    ids = id_map(isaid, "P0003")
    # a missing companion PNG
    image = copy_scene(isaid, tmp_path / "missing", "P0003")
    image.with_name("P0003_instance_color_RGB.png").unlink()
    with pytest.raises(DataError, match=r"P0003_instance_color_RGB.png: iSAID annotation PNG not found"):
        read_isaid_annotations(image)
    with pytest.raises(DataError, match="P0003_instance_color_RGB.png"):
        ISAIDDataModule(str(tmp_path / "missing"), train_split="val", val_split=None, test_fraction=0.0).splits()
    # an unknown colour: the file and the colour are named
    image = copy_scene(isaid, tmp_path / "unknown", "P0003", link=False)
    _edit_colour(image, lambda a: a.__setitem__((slice(0, 5), slice(0, 5)), (10, 20, 30)))
    with pytest.raises(DataError, match=r"P0003_instance_color_RGB.png: colour \(10, 20, 30\) \(25 pixels\)"):
        read_isaid_annotations(image)
    # a colour PNG of another size
    image = copy_scene(isaid, tmp_path / "size", "P0003", link=False)
    png = image.with_name("P0003_instance_color_RGB.png")
    Image.open(png).crop((0, 0, 100, 80)).save(png)
    with pytest.raises(DataError, match=r"P0003_instance_color_RGB.png: size 100x80 .* differs from the image"):
        read_isaid_annotations(image)
    # an instance whose pixels are all unlabeled
    first = int(np.unique(ids)[1])
    image = copy_scene(isaid, tmp_path / "black", "P0003", link=False)
    _edit_colour(image, lambda a: a.__setitem__(ids == first, 0))
    with pytest.raises(DataError, match=f"instance id {first} has no class colour"):
        read_isaid_annotations(image)


def test_an_instance_of_several_colours_takes_the_majority(isaid: Path, tmp_path: Path) -> None:
    ids = id_map(isaid, "P0003")
    base = read_isaid_annotations(image_of(isaid, "P0003"))
    k = 0
    pixels = np.argwhere(ids == base["ids"][k])
    old = ISAID_CLASSES[base["labels"][k]]
    new_colour = (0, 127, 255) if old != "plane" else (0, 0, 63)
    for share, expect in ((0.4, old), (0.6, README_COLOURS[new_colour])):
        part = pixels[: int(share * len(pixels))]
        image = copy_scene(isaid, tmp_path / f"maj{share}", "P0003", link=False)
        _edit_colour(image, lambda a, part=part: a.__setitem__((part[:, 0], part[:, 1]), new_colour))
        ann = read_isaid_annotations(image)
        assert ISAID_CLASSES[ann["labels"][k]] == expect
        assert np.array_equal(ann["labels"][1:], base["labels"][1:])


# ------------------------------------------------------------------------------ dataset, datamodule


def test_samples_have_tight_boxes(isaid: Path) -> None:
    records, classes = isaid_records(isaid / "val")
    assert [r.id for r in records] == ["P0003", "P0004"] and classes == list(ISAID_CLASSES)
    s = InstanceDataset(records, classes)[0]
    assert list(s) == list(INSTANCE_BATCH_KEYS) and s["id"] == "P0003"
    ids = id_map(isaid, "P0003")
    expected = np.unique(ids)[1:]
    n, (h, w) = len(expected), ids.shape
    assert s["image"].shape == (3, h, w) and s["image"].dtype == torch.float32
    assert s["masks"].shape == (n, h, w) and s["masks"].dtype == torch.uint8
    assert s["boxes"].dtype == torch.float32 and s["difficult"].dtype == torch.bool and not s["difficult"].any()
    want = torch.tensor([tight_box(ids == i) for i in expected])
    assert torch.equal(s["boxes"], want)
    assert all(torch.equal(s["masks"][k].bool(), torch.from_numpy(ids == expected[k])) for k in (0, n // 2, n - 1))


@pytest.mark.filterwarnings("ignore:data.test_split equals data.val_split")
def test_datamodule_batches(isaid: Path) -> None:
    dm = ISAIDDataModule(str(isaid), crop_size=128, batch_size=2, crops_per_image=2, scale_range=[0.75, 1.5])
    info = dm.info()
    assert info.classes == list(ISAID_CLASSES) and info.sample_keys == ("image", "boxes", "labels", "masks")
    assert info.crop_size == 128
    splits = dm.splits()  # iSAID's test labels are not public: test = val (a warning says so)
    assert {k: [r.id for r in v] for k, v in splits.items()} == {
        "train": ["P0005"],
        "val": ["P0003", "P0004"],
        "test": ["P0003", "P0004"],
    }
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {*INSTANCE_BATCH_KEYS, "skipped"} and batch["skipped"] == []
    assert len(batch["image"]) == 2 and batch["id"] == ["P0005", "P0005"]
    for image, masks, boxes, labels in zip(
        batch["image"], batch["masks"], batch["boxes"], batch["labels"], strict=True
    ):
        assert image.shape == (3, 128, 128) and masks.shape[1:] == (128, 128)
        assert len(masks) == len(boxes) == len(labels) >= 1
        assert (masks.flatten(1).sum(1) > 0).all()
        assert torch.equal(boxes, torch.tensor([tight_box(m.numpy() > 0) for m in masks]))
        names = {ISAID_CLASSES[i] for i in labels.tolist()}
        assert names <= {"Small_Vehicle", "Large_Vehicle"}  # P0005's classes
    # the same seed gives the same crops
    again = next(
        iter(
            ISAIDDataModule(
                str(isaid), crop_size=128, batch_size=2, crops_per_image=2, scale_range=[0.75, 1.5]
            ).train_dataloader()
        )
    )
    assert all(torch.equal(a, b) for a, b in zip(batch["masks"], again["masks"], strict=True))
    val = next(iter(dm.val_dataloader()))
    assert val["id"] == ["P0003"] and val["image"][0].shape == (3, 1023, 1147)
    assert len(val["masks"][0]) == len(np.unique(id_map(isaid, "P0003"))) - 1


def test_test_split_defaults_to_val_with_a_warning(isaid: Path) -> None:
    with pytest.warns(UserWarning, match="data.test_split equals data.val_split"):
        splits = ISAIDDataModule(str(isaid)).splits()
    assert splits["test"] is splits["val"]
    drawn = ISAIDDataModule(str(isaid), train_split="val", val_split=None, val_fraction=0.5, test_fraction=0.0)
    with pytest.raises(DataError, match="the test split is empty"):
        drawn.splits()


def test_unreadable_files_are_skipped_and_counted(isaid: Path, tmp_path: Path) -> None:
    root = tmp_path / "isaid"
    copy_scene(isaid, root, "P0005")
    copy_scene(isaid, root, "P0003")
    broken = copy_scene(isaid, root, "P0004", link=False)
    broken.write_bytes(b"")  # an empty image
    dm = ISAIDDataModule(str(root), val_split="val", test_split="val")
    with pytest.warns(UserWarning):
        dm.setup()
    report = SkipReport()
    ids = []
    for batch in dm.val_dataloader():
        report.add(batch["skipped"])
        ids += batch["id"]
    assert ids == ["P0003"] and report.counts() == {"zero_byte": 1}
    empty = collate_instances([dm.datasets["val"][1]])
    assert {k: empty[k] for k in INSTANCE_BATCH_KEYS} == dict.fromkeys(INSTANCE_BATCH_KEYS, [])
    assert empty["skipped"] == [(str(broken), "zero_byte")]
    # a damaged annotation PNG is skipped too, naming that PNG
    broken = copy_scene(isaid, tmp_path / "damaged", "P0003", link=False)
    png = broken.with_name("P0003_instance_id_RGB.png")
    png.write_bytes(png.read_bytes()[:2000])
    records, classes = isaid_records(broken.parents[1])
    assert InstanceDataset(records, classes)[0] == {"skipped": (str(png), "truncated"), "id": "P0003"}
