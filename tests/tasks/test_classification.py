"""Scene classification on real AID images: splits, the classification head's scores and pictures, labels."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from rsfm.data.pretrain import PretrainDataModule
from rsfm.data.scene import SceneClassificationDataModule
from rsfm.metrics.classification import classification_report
from rsfm.models.heads.classification import ClassificationMetricSet, prediction_grid
from rsfm.tasks.module import DownstreamTask
from rsfm.tasks.predict import predict_files
from rsfm.utils.errors import DataError

CLASSES = ["Airport", "Beach", "Forest"]


@pytest.fixture(scope="module")
def aid3(aid_subset) -> Path:
    return aid_subset(CLASSES, 20)


def scene_data(root: Path, **kwargs) -> SceneClassificationDataModule:
    kwargs = {"test_fraction": 0.2, "val_fraction": 0.25, "img_size": 64, "num_workers": 0, **kwargs}
    return SceneClassificationDataModule(str(root), **kwargs)


def test_test_split_is_the_pretraining_holdout_and_val_is_disjoint(aid3: Path) -> None:
    dm = scene_data(aid3)
    dm.setup("fit")
    pretrain = PretrainDataModule(str(aid3), test_fraction=0.2, split_seed=0, img_size=64, num_workers=0)
    pretrain.setup("fit")
    test = set(dm.datasets["test"].samples)
    assert test == set(pretrain.datasets["holdout"].samples)  # never seen by an encoder pretrained on aid3
    assert not test & set(pretrain.datasets["train"].samples)
    train, val = set(dm.datasets["train"].samples), set(dm.datasets["val"].samples)
    assert not train & val and not train & test and not val & test
    assert len(train) + len(val) + len(test) == 60
    # stratified: 4 test, 4 val (25 % of 16), 12 train per class
    for part, n in (("test", 4), ("val", 4), ("train", 12)):
        assert sorted(dm.datasets[part].groups.count(c) for c in range(3)) == [n, n, n]
    assert dm.datasets["val"].transform is not dm.datasets["train"].transform  # val is not augmented
    assert len(dm.val_dataloader()) == 1 and len(dm.test_dataloader()) == 1
    assert dm.info().classes == CLASSES and dm.info().img_size == 64


def test_no_validation_split(aid3: Path) -> None:
    dm = scene_data(aid3, val_fraction=0.0)
    assert dm.val_dataloader() == []
    assert len(dm.datasets["train"]) == 48 and len(dm.datasets["test"]) == 12


def test_fractions_are_checked(aid3: Path) -> None:
    with pytest.raises(DataError, match="data.test_fraction"):
        scene_data(aid3, test_fraction=0.0)
    with pytest.raises(ValueError, match="data.val_fraction"):
        scene_data(aid3, val_fraction=1.0)


def test_head_scores_equal_the_confusion_matrix_and_the_report() -> None:
    preds, labels = torch.tensor([0, 1, 1, 2, 2, 2]), torch.tensor([0, 1, 2, 2, 2, 0])
    metrics = ClassificationMetricSet(CLASSES + ["Desert"])
    metrics.update(preds[:3], {"label": labels[:3]})
    metrics.update(preds[3:], {"label": labels[3:]})
    metrics.update(torch.zeros(0, dtype=torch.int64), {"label": torch.zeros(0, dtype=torch.int64)})
    report = metrics.report()
    cm = torch.tensor(report["confusion"])
    assert cm.tolist() == [[1, 0, 1, 0], [0, 1, 0, 0], [0, 1, 2, 0], [0, 0, 0, 0]]
    assert report["n"] == 6
    assert report["OA"] == pytest.approx(100 * cm.trace().item() / cm.sum().item())
    assert report["per_class"]["Forest"] == {"accuracy": pytest.approx(100 * 2 / 3), "support": 3}
    assert report["per_class"]["Desert"] == {"accuracy": None, "support": 0}
    assert report["mean_class_accuracy"] == pytest.approx(100 * (1 / 2 + 1 + 2 / 3) / 3)
    reference = classification_report(preds, labels, CLASSES + ["Desert"])
    assert report["confusion"] == reference["confusion"] and report["n"] == reference["n"]
    for key in ("OA", "mean_class_accuracy"):
        assert report[key] == pytest.approx(reference[key])
    for name, entry in reference["per_class"].items():
        assert report["per_class"][name]["support"] == entry["support"]
        assert report["per_class"][name]["accuracy"] == pytest.approx(entry["accuracy"])


def test_prediction_grid_frames_right_and_wrong() -> None:
    image = np.zeros((32, 32, 3), np.uint8)
    grid = prediction_grid([(image, 0, 0), (image, 1, 2)], CLASSES, columns=2)
    assert grid.size == (2 * 102, 102 + 24)
    assert grid.getpixel((1, 1)) == (40, 160, 40) and grid.getpixel((103, 1)) == (210, 30, 30)
    with pytest.raises(ValueError):
        prediction_grid([], CLASSES)


def test_predict_label_resizes_as_the_test_split(aid3: Path, tmp_path: Path) -> None:
    dm = scene_data(aid3)
    dm.setup("test")
    torch.manual_seed(0)
    model = {
        "encoder": {"class_path": "ViT", "init_args": {"size": "tiny", "img_size": 64, "patch_size": 16}},
        "heads": {"classification": {"class_path": "ClassificationHead"}},
    }
    task = DownstreamTask(model=model, optim={"lr": 1e-3}, data=dm.info().to_dict()).eval()
    # a random head of std 2e-5 gives ~uniform probabilities: widen it so they differ
    torch.nn.init.normal_(task.heads["classification"].fc.weight, std=0.5)
    test = dm.datasets["test"]
    sample = test[0]
    path = test.samples[0]
    with torch.no_grad():
        head = task.heads["classification"]
        expected = head(task.model.features({"image": sample["image"][None]}, head))[0].softmax(0)
    out = predict_files(task, [path], tmp_path)
    assert out.name == f"{path.stem}_label.json"
    label = json.loads(out.read_text())
    assert label["image"] == str(path)
    assert list(label["probabilities"]) == CLASSES
    probs = torch.tensor(list(label["probabilities"].values()))
    torch.testing.assert_close(probs, expected, rtol=1e-4, atol=1e-5)
    assert label["label"] == int(expected.argmax()) and label["class"] == CLASSES[label["label"]]
