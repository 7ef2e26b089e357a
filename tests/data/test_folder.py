import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import rasterio
import torch
from PIL import Image
from rasterio.transform import Affine
from torch.utils.data import DataLoader

from rsfm.data.folder import ImageFolder, LabeledImageFolder, check_image_root, scan_folder
from rsfm.data.skips import SkipReport, collate_skipping
from rsfm.data.transforms import eval_transform, pretrain_transform
from rsfm.engine.callbacks import SkipReportCallback


def make_bad_tree(root: Path, aid: Path, damaged: bytes) -> Path:
    """Two class folders of real AID images plus every kind of bad file.

    Samples (11): class_a: 3 JPEGs, gray.png, four.tif, half.jpg (truncated), damaged.jpg
    (``damaged``: a JPEG corrupt in its middle), fake.jpg (text); class_b: 3 JPEGs. Not
    samples: class_a/empty.jpg (zero_byte), class_b/notes.txt (not_an_image),
    class_b/.hidden.jpg (ignored).
    """
    a, b = root / "class_a", root / "class_b"
    a.mkdir(parents=True)
    b.mkdir()
    for i, src in enumerate(sorted((aid / "Beach").glob("*.jpg"))[:3]):
        shutil.copy(src, a / f"good_{i}.jpg")
    for i, src in enumerate(sorted((aid / "Forest").glob("*.jpg"))[:3]):
        shutil.copy(src, b / f"good_{i}.jpg")
    real = aid / "Airport" / "airport_10.jpg"
    Image.open(real).convert("L").save(a / "gray.png")
    rgb = np.asarray(Image.open(real).convert("RGB")).transpose(2, 0, 1)
    four = np.concatenate([rgb, rgb[:1]])
    with rasterio.open(
        a / "four.tif",
        "w",
        driver="GTiff",
        height=150,
        width=150,
        count=4,
        dtype="uint8",
        crs="EPSG:32618",
        transform=Affine(30.0, 0.0, 500000.0, 0.0, -30.0, 4000000.0),
    ) as dst:
        dst.write(four)
    data = real.read_bytes()
    (a / "half.jpg").write_bytes(data[: len(data) // 2])
    (a / "damaged.jpg").write_bytes(damaged)
    (a / "fake.jpg").write_text("not an image at all\n")
    (a / "empty.jpg").touch()
    (b / "notes.txt").write_text("field notes\n")
    shutil.copy(real, b / ".hidden.jpg")
    return root


EXPECTED = {"corrupt": 1, "not_an_image": 2, "truncated": 1, "zero_byte": 1}


@pytest.fixture
def bad_tree(tmp_path: Path, datasets: Path, damaged_jpeg) -> Path:
    damaged = damaged_jpeg(datasets / "aid" / "Forest" / "forest_10.jpg")
    return make_bad_tree(tmp_path / "tree", datasets / "aid", damaged)


def test_scan(bad_tree: Path) -> None:
    ds = ImageFolder(bad_tree)
    names = [p.relative_to(bad_tree).as_posix() for p in ds.samples]
    assert names == sorted(names)
    assert len(ds) == 11
    assert ".hidden.jpg" not in " ".join(names)
    skipped = {Path(p).name: r for p, r in ds.scan_skipped}
    assert skipped == {"empty.jpg": "zero_byte", "notes.txt": "not_an_image"}
    assert ds.groups == [0] * 8 + [1] * 3 and ds.group_names == ["class_a", "class_b"]


@pytest.mark.parametrize("labeled", [False, True])
def test_loader_skips_bad_files(bad_tree: Path, labeled: bool) -> None:
    cls = LabeledImageFolder if labeled else ImageFolder
    ds = cls(bad_tree, transform=eval_transform(32))
    loader = DataLoader(ds, batch_size=3, num_workers=2, collate_fn=collate_skipping)
    report = SkipReport(ds.scan_skipped)
    seen = []
    for batch in loader:
        b = batch["image"].shape[0]
        assert batch["image"].shape == (b, 3, 32, 32)
        assert batch["image"].dtype == torch.float32
        assert batch["index"].dtype == torch.int64 and batch["index"].shape == (b,)
        if labeled:
            assert batch["label"].dtype == torch.int64 and batch["label"].shape == (b,)
        report.add(batch["skipped"])
        seen += batch["index"].tolist()
    assert report.counts() == EXPECTED
    assert report.total == 5
    good = {ds.samples[i].name for i in seen}
    assert {"gray.png", "four.tif"} <= good
    assert len(seen) == 8
    if labeled:
        assert ds.classes == ["class_a", "class_b"]


def test_gray_and_four_band_items(bad_tree: Path) -> None:
    ds = ImageFolder(bad_tree)
    by_name = {p.name: i for i, p in enumerate(ds.samples)}
    gray = ds[by_name["gray.png"]]["image"]
    assert gray.shape == (3, 150, 150) and torch.equal(gray[0], gray[2])
    four = ds[by_name["four.tif"]]["image"]
    assert four.shape == (3, 150, 150) and four.dtype == torch.float32
    assert 0 <= four.min() and four.max() <= 1
    assert ds[by_name["half.jpg"]] == {
        "skipped": (str(bad_tree / "class_a" / "half.jpg"), "truncated"),
        "index": by_name["half.jpg"],
    }


def test_skip_report_callback(bad_tree: Path, tmp_path: Path, capsys) -> None:
    ds = ImageFolder(bad_tree)
    cb = SkipReportCallback()
    trainer = SimpleNamespace(
        datamodule=SimpleNamespace(scan_skipped=ds.scan_skipped),
        log_dir=str(tmp_path / "logs"),
        default_root_dir=str(tmp_path),
        is_global_zero=True,
    )
    cb.setup(trainer, None, "fit")
    for batch in DataLoader(ds, batch_size=4, collate_fn=collate_skipping):
        cb.on_train_batch_end(trainer, None, None, batch, 0)
    cb.on_fit_end(trainer, None)
    assert cb.report.counts() == EXPECTED
    assert "5 files skipped: 2 not_an_image, 1 corrupt, 1 truncated, 1 zero_byte" in capsys.readouterr().out
    saved = json.loads((tmp_path / "logs" / "skipped_files.json").read_text())
    assert saved["counts"] == EXPECTED
    restored = SkipReportCallback()
    restored.load_state_dict(cb.state_dict())
    assert restored.report.counts() == EXPECTED


def test_missing_and_empty_roots(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        ImageFolder(missing)
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "sub" / "readme.txt").write_text("no images here")
    (empty / "sub" / "zero.jpg").touch()
    with pytest.raises(FileNotFoundError, match=str(empty)) as info:
        LabeledImageFolder(empty)
    assert ".jpg" in str(info.value) and ".tif" in str(info.value)


def test_labeled_rejects_root_files(bad_tree: Path, datasets: Path) -> None:
    shutil.copy(datasets / "aid" / "Airport" / "airport_10.jpg", bad_tree / "stray.jpg")
    with pytest.raises(ValueError, match="stray.jpg"):
        LabeledImageFolder(bad_tree)
    unlabeled = ImageFolder(bad_tree)  # fine for an unlabeled folder: root files form the group ''
    assert len(unlabeled) == 12 and unlabeled.group_names == ["", "class_a", "class_b"]
    assert unlabeled.groups[unlabeled.samples.index(bad_tree / "stray.jpg")] == 0


def test_argument_validation(bad_tree: Path) -> None:
    with pytest.raises(ValueError, match="split"):
        ImageFolder(bad_tree, split="test")
    with pytest.raises(ValueError, match="val_fraction"):
        ImageFolder(bad_tree, split="val")
    with pytest.raises(ValueError, match="val_fraction"):
        ImageFolder(bad_tree, split="train", val_fraction=1.0)


def test_deterministic_augmentation(bad_tree: Path) -> None:
    ds = ImageFolder(bad_tree, transform=pretrain_transform(48), seed=3)
    i = next(i for i, p in enumerate(ds.samples) if p.name == "good_1.jpg")
    state = torch.get_rng_state()
    a = ds[(i, 0)]["image"]
    assert torch.equal(torch.get_rng_state(), state)  # global RNG untouched
    torch.rand(100)  # whatever ran before must not matter
    assert torch.equal(ds[(i, 0)]["image"], a)
    assert torch.equal(ds[i]["image"], a)  # int key = epoch 0
    assert not torch.equal(ds[(i, 1)]["image"], a)
    other = ImageFolder(bad_tree, transform=pretrain_transform(48), seed=4)
    assert not torch.equal(other[(i, 0)]["image"], a)
    assert a.shape == (3, 48, 48) and a.dtype == torch.float32

    keys = [(j, 5) for j in range(len(ds))]
    batches = {}
    for workers in (0, 2):
        loader = DataLoader(
            keys,
            batch_size=4,
            num_workers=workers,
            collate_fn=lambda ks: collate_skipping([ds[k] for k in ks]),
        )
        batches[workers] = torch.cat([b["image"] for b in loader])
    assert torch.equal(batches[0], batches[2])


def test_scan_folder_and_check_image_root(bad_tree: Path, tmp_path: Path) -> None:
    samples, relative, skipped = scan_folder(bad_tree)
    assert relative == sorted(relative) and len(samples) == len(relative) == 11
    assert [p.relative_to(bad_tree).as_posix() for p in samples] == relative
    assert sorted((Path(p).name, r) for p, r in skipped) == [("empty.jpg", "zero_byte"), ("notes.txt", "not_an_image")]
    assert check_image_root(bad_tree) == bad_tree
    (tmp_path / "only_text").mkdir()
    (tmp_path / "only_text" / "a.txt").write_text("x")
    with pytest.raises(FileNotFoundError, match="No image files found"):
        check_image_root(tmp_path / "only_text")
    with pytest.raises(FileNotFoundError, match="not found"):
        scan_folder(tmp_path / "nowhere")


def test_broken_symlink_is_counted_unreadable(bad_tree: Path) -> None:
    (bad_tree / "class_b" / "gone.jpg").symlink_to(bad_tree / "class_b" / "deleted.jpg")
    (bad_tree / "class_b" / "gone_folder").symlink_to(bad_tree / "no_such_folder")
    for dataset in (ImageFolder(bad_tree), LabeledImageFolder(bad_tree)):
        skipped = {Path(p).name: r for p, r in dataset.scan_skipped}
        assert skipped["gone.jpg"] == "unreadable" and skipped["gone_folder"] == "unreadable"
        assert str(bad_tree / "class_b" / "gone.jpg") in dict(dataset.scan_skipped)
        assert len(dataset) == 11


def test_class_folder_alias_is_refused_naming_both(bad_tree: Path) -> None:
    from rsfm.data.folder_base import list_classes
    from rsfm.data.scene import SceneClassificationDataModule
    from rsfm.utils.errors import DataError

    (bad_tree / "class_a_alias").symlink_to(bad_tree / "class_a", target_is_directory=True)
    pattern = r"class folders .*class_a and .*class_a_alias are the same directory"
    with pytest.raises(DataError, match=pattern):
        list_classes(bad_tree)
    with pytest.raises(DataError, match=pattern):
        LabeledImageFolder(bad_tree)
    with pytest.raises(DataError, match=pattern):
        SceneClassificationDataModule(str(bad_tree))
    ImageFolder(bad_tree)  # unlabeled: the alias is read once, no class names to shift
