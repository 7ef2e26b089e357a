"""SceneClassificationDataModule (rsfm.data.scene) on the real AID folders."""

from collections import Counter
from pathlib import Path

import pytest
import torch

from rsfm.data.folder import LabeledImageFolder
from rsfm.data.pretrain import PretrainDataModule
from rsfm.data.scene import SceneClassificationDataModule
from rsfm.utils.errors import DataError


@pytest.fixture(scope="module")
def aid_scene(datasets: Path) -> SceneClassificationDataModule:
    dm = SceneClassificationDataModule(
        str(datasets / "aid"), img_size=32, batch_size=8, num_workers=0, val_fraction=0.2, pin_memory=False
    )
    assert dm.num_classes == 30 and dm.classes[0] == "Airport"  # known before setup
    dm.setup("fit")
    return dm


def test_three_disjoint_stratified_splits_on_aid(aid_scene: SceneClassificationDataModule) -> None:
    dm = aid_scene
    train, val, test = (set(dm.datasets[k].samples) for k in ("train", "val", "test"))
    assert not train & val and not train & test and not val & test
    assert len(train | val | test) == 7000
    total = Counter(p.parent.name for p in train | val | test)
    held = Counter(p.parent.name for p in test)
    rest = Counter(p.parent.name for p in train | val)
    validation = Counter(p.parent.name for p in val)
    for name, n in total.items():
        assert held[name] == round(n * 0.2)  # test_fraction of every class
        assert validation[name] == round(rest[name] * 0.2)  # val_fraction of the rest
    info = dm.info()
    assert info.classes == dm.classes and len(info.classes) == 30 and info.img_size == 32
    assert info.sample_keys == ("image", "label")


def test_test_split_is_the_pretraining_holdout(aid_scene: SceneClassificationDataModule, datasets: Path) -> None:
    # an encoder pretrained by rsfm on the same folder (same test_fraction, split_seed) never saw a test image
    pretrain = PretrainDataModule(str(datasets / "aid"), img_size=32, num_workers=0, test_fraction=0.2)
    pretrain.setup("fit")
    assert aid_scene.datasets["test"].samples == pretrain.datasets["holdout"].samples
    assert not set(pretrain.datasets["train"].samples) & set(aid_scene.datasets["test"].samples)


def test_batches_carry_the_right_labels(aid_scene: SceneClassificationDataModule) -> None:
    dm = aid_scene
    val = dm.datasets["val"]
    batch = next(iter(dm.val_dataloader()))
    assert batch["image"].shape == (8, 3, 32, 32) and batch["image"].dtype == torch.float32
    assert 0.0 <= float(batch["image"].min()) and float(batch["image"].max()) <= 1.0
    assert batch["label"].dtype == torch.int64 and batch["skipped"] == []
    assert [dm.classes[t] for t in batch["label"]] == [val.samples[i].parent.name for i in batch["index"]]
    test = next(iter(dm.test_dataloader()))
    assert [dm.classes[t] for t in test["label"]] == [dm.datasets["test"].samples[i].parent.name for i in test["index"]]
    train = next(iter(dm.train_dataloader()))
    assert train["image"].shape == (8, 3, 32, 32)


def test_feature_extraction_keeps_file_order(aid_subset) -> None:
    root = aid_subset(["Beach", "Forest", "Pond"], 10)
    probe = SceneClassificationDataModule(str(root), img_size=32, num_workers=0, val_fraction=0.0, augment=False)
    loader = probe.train_dataloader()
    order = [i for i, _ in loader.sampler]
    assert order == sorted(order)  # feature extraction: no shuffling
    assert "val" not in probe.datasets and probe.val_dataloader() == []
    assert len(probe.datasets["train"]) == 24  # 2 of each 10 held out for testing
    a = probe.datasets["train"][(0, 0)]["image"]
    assert torch.equal(a, probe.datasets["train"][(0, 3)]["image"])  # no augmentation


def test_bad_roots_and_settings(aid_subset, tmp_path: Path, datasets: Path) -> None:
    root = aid_subset(["Beach"], 3, copy=True)
    with pytest.raises(DataError, match="data.test_fraction must be positive"):
        SceneClassificationDataModule(str(root), test_fraction=0.0)
    with pytest.raises(ValueError, match="data.val_fraction"):
        SceneClassificationDataModule(str(root), val_fraction=1.0)
    (root / "stray.jpg").symlink_to(datasets / "aid" / "Airport" / "airport_10.jpg")
    with pytest.raises(DataError, match="stray.jpg lies directly in"):
        SceneClassificationDataModule(str(root))
    with pytest.raises(DataError, match="data.root: folder not found"):
        SceneClassificationDataModule(str(tmp_path / "missing"))


def test_corrupt_files_are_counted_not_fatal(aid_subset, datasets: Path) -> None:
    root = aid_subset(["Beach", "Forest"], 5, copy=True)
    real = datasets / "aid" / "Airport" / "airport_10.jpg"
    (root / "Beach" / "half.jpg").write_bytes(real.read_bytes()[:2000])
    (root / "Forest" / "empty.jpg").touch()
    dm = SceneClassificationDataModule(str(root), img_size=32, batch_size=16, num_workers=0, augment=False)
    assert dm.scan_skipped == []  # nothing scanned before setup
    dm.setup("fit")
    assert dm.scan_skipped == [(str(root / "Forest" / "empty.jpg"), "zero_byte")]
    skipped = [s for k in ("train", "val", "test") if k in dm.datasets for s in _skipped(dm, k)]
    assert skipped == [(str(root / "Beach" / "half.jpg"), "truncated")]
    assert LabeledImageFolder(root).classes == dm.classes == ["Beach", "Forest"]


def _skipped(dm: SceneClassificationDataModule, split: str) -> list:
    loader = {"train": dm.train_dataloader, "val": dm.val_dataloader, "test": dm.test_dataloader}[split]()
    return [s for batch in loader for s in batch["skipped"]]
