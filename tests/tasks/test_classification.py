"""Scene classification through the downstream runner, on real AID images."""

import json
from pathlib import Path

import pytest
import torch

from rsfm.cli import main
from rsfm.data.folder import ImageFolder
from rsfm.metrics.classification import classification_report
from rsfm.tasks.classification import (
    SceneClassificationDataModule,
    _as_fractions,
    build,
    build_classifier,
    prediction_grid,
)

REPO = Path(__file__).resolve().parents[2]
RECIPE = REPO / "configs" / "finetune" / "classification_aid.yaml"
CLASSES = ["Airport", "Beach", "Forest"]


@pytest.fixture(scope="module")
def aid3(aid_subset) -> Path:
    return aid_subset(CLASSES, 20)


def test_test_split_is_the_pretraining_holdout_and_val_is_disjoint(aid3: Path) -> None:
    dm = SceneClassificationDataModule(aid3, test_fraction=0.2, val_fraction=0.25, img_size=64, num_workers=0)
    dm.setup("fit")
    pretrain_holdout = ImageFolder(aid3, split="val", val_fraction=0.2, split_seed=0)
    test = set(dm.test_dataset.samples)
    assert test == set(pretrain_holdout.samples)  # never seen by an encoder pretrained on aid3
    train, val = set(dm.train_dataset.samples), set(dm.select_dataset.samples)
    assert not train & val and not train & test and not val & test
    assert len(train) + len(val) + len(test) == 60
    # stratified: 4 test, 4 val (25 % of 16), 12 train per class
    for part, n in ((dm.test_dataset, 4), (dm.select_dataset, 4), (dm.train_dataset, 12)):
        assert sorted(part.groups.count(c) for c in range(3)) == [n, n, n]
    assert dm.select_dataset.transform is not dm.train_dataset.transform  # val is not augmented
    assert len(dm.val_dataloader()) == 1 and len(dm.test_dataloader()) == 1


def test_no_validation_split(aid3: Path) -> None:
    dm = SceneClassificationDataModule(aid3, test_fraction=0.2, val_fraction=0.0, img_size=64, num_workers=0)
    assert dm.val_dataloader() == []
    assert len(dm.train_dataset) == 48 and len(dm.test_dataset) == 12


def test_fractions_are_checked(aid3: Path) -> None:
    with pytest.raises(ValueError, match="data.test_fraction"):
        SceneClassificationDataModule(aid3, test_fraction=0.0)
    with pytest.raises(ValueError, match="data.val_fraction"):
        SceneClassificationDataModule(aid3, val_fraction=1.0)


def test_build_checks_keys_and_builds_resnet(aid3: Path) -> None:
    cfg = {"task": "classification", "backbone": {"arch": "vit", "size": "tiny", "patch_size": 8}, "data": {}}
    with pytest.raises(ValueError, match="data.root is required"):
        build(cfg)
    with pytest.raises(ValueError, match="data.colour"):
        build({**cfg, "data": {"root": str(aid3), "colour": 1}})
    with pytest.raises(ValueError, match="backbone.frozen"):
        build_classifier({"arch": "vit", "size": "tiny", "patch_size": 8, "frozen": True}, 3)
    resnet = build_classifier({"arch": "resnet18"}, 3)
    assert resnet(torch.zeros(2, 3, 64, 64)).shape == (2, 3)


def test_report_as_fractions_matches_the_confusion_matrix() -> None:
    preds, labels = torch.tensor([0, 1, 1, 2, 2, 2]), torch.tensor([0, 1, 2, 2, 2, 0])
    report = _as_fractions(classification_report(preds, labels, CLASSES))
    cm = torch.tensor(report["confusion"])
    assert report["OA"] == pytest.approx(cm.trace().item() / cm.sum().item())
    assert report["per_class"]["Forest"]["accuracy"] == pytest.approx(2 / 3)
    assert report["mean_class_accuracy"] == pytest.approx((1 / 2 + 1 + 2 / 3) / 3)


def test_prediction_grid_frames_right_and_wrong() -> None:
    image = torch.zeros(3, 32, 32)
    grid = prediction_grid([(image, 0, 0), (image, 1, 2)], CLASSES, (0.5,) * 3, (0.5,) * 3, columns=2)
    assert grid.size == (2 * 102, 102 + 24)
    assert grid.getpixel((1, 1)) == (40, 160, 40) and grid.getpixel((103, 1)) == (210, 30, 30)


def test_cli_finetune_and_test(tmp_path: Path, aid3: Path, one_thread: None) -> None:
    common = [f"data.root={aid3}", f"output_dir={tmp_path}", "run_name=cls", "data.num_workers=0"]
    fast = [
        "data.batch_size=8", "data.img_size=64", "backbone.img_size=64", "trainer.max_epochs=2",
        "trainer.enable_progress_bar=false", "model.num_visualisations=6",
    ]  # fmt: skip
    assert main(["finetune", "--config", str(RECIPE), *common, *fast]) == 0
    run = tmp_path / "cls"
    tested = json.loads((run / "metrics.json").read_text())["metrics"]
    report = json.loads((run / "test" / "metrics.json").read_text())
    cm = torch.tensor(report["confusion"])
    assert cm.sum() == 12  # the 4 held-out images of each class
    assert tested["test/OA"] == pytest.approx(cm.trace().item() / 12, abs=1e-6) == pytest.approx(report["OA"])
    assert (run / "test" / "visualisations" / "predictions.png").is_file()
    assert (run / "checkpoints" / "best.ckpt").is_file()
    ckpt = str(run / "checkpoints" / "best.ckpt")
    assert main(["test", "--config", str(RECIPE), "--checkpoint", ckpt, *common, *fast]) == 0
    # a recipe that builds another model names the checkpoint and the mismatch
    assert main(["test", "--config", str(RECIPE), "--checkpoint", ckpt, *common, "backbone.size=small"]) != 0
