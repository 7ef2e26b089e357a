"""LP-FT: a classification head that starts from a linear probe on frozen features of real AID images."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from torch import nn

from rsfm.data.scene import SceneClassificationDataModule
from rsfm.data.segmentation import DubaiDataModule
from rsfm.engine.data import LightningData
from rsfm.models.heads.classification import ClassificationHead
from rsfm.tasks.module import DownstreamTask
from rsfm.tasks.probes.linear import linear_probe
from rsfm.utils.errors import ConfigError, DataError

CLASSES = ["Airport", "Beach", "Desert", "Forest"]
VIT = {"class_path": "ViT", "init_args": {"size": "tiny", "img_size": 64, "patch_size": 16}}
OPTIM = {"name": "adamw", "lr": 1e-3, "weight_decay": 0.05, "layer_decay": 0.75, "warmup_epochs": 0}


@pytest.fixture(scope="module")
def aid4(aid_subset) -> Path:
    return aid_subset(CLASSES, 20)


def scene_data(root: Path) -> SceneClassificationDataModule:
    return SceneClassificationDataModule(
        str(root), test_fraction=0.2, val_fraction=0.25, img_size=64, batch_size=8, num_workers=0
    )


def make_task(dm: SceneClassificationDataModule, **head: Any) -> DownstreamTask:
    torch.manual_seed(0)
    model = {"encoder": VIT, "heads": {"classification": {"class_path": "ClassificationHead", "init_args": head}}}
    return DownstreamTask(model=model, optim=OPTIM, data=dm.info().to_dict(), batch_size=dm.batch_size, seed=3)


@torch.no_grad()
def pooled(task: DownstreamTask, dataset: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled features and labels of a whole dataset, in one batch, by the task's own encoder (eval mode)."""
    head = task.heads["classification"]
    task.model.eval()
    samples = [dataset[i] for i in range(len(dataset))]
    batch = {"image": torch.stack([s["image"] for s in samples])}
    return task.model.features(batch, head).pooled["image"], torch.tensor([s["label"] for s in samples])


class FirstStep(L.Callback):
    """What the model is when training starts, after ``on_fit_start``: the head, and features of the splits."""

    def on_train_start(self, trainer: L.Trainer, task: DownstreamTask) -> None:
        dm = trainer.datamodule.data
        fc = task.heads["classification"].fc
        self.weight, self.bias = fc.weight.detach().clone(), fc.bias.detach().clone()
        self.train_mode = task.model.training
        self.train = pooled(task, dm.unaugmented_train())
        self.val = pooled(task, dm.datasets["val"])
        task.model.train(self.train_mode)


def test_the_head_starts_as_the_probe_of_the_unaugmented_split(aid4: Path, tmp_path: Path, cpu_trainer) -> None:
    dm = scene_data(aid4)
    task = make_task(dm, init="linear_probe", probe_epochs=30, probe_lr=[0.03, 0.3])
    before = task.heads["classification"].fc.weight.detach().clone()
    first = FirstStep()
    cpu_trainer(max_steps=1, limit_val_batches=0, callbacks=[first]).fit(task, datamodule=LightningData(dm))
    assert not torch.equal(first.weight, before) and first.train_mode

    # the same probe, fitted here on features of the training images without augmentation
    train = dm.unaugmented_train()
    assert train.samples == dm.datasets["train"].samples and train.transform is not dm.datasets["train"].transform
    (x, y), (xv, yv) = first.train, first.val
    probe = linear_probe(x, y, xv, yv, len(CLASSES), epochs=30, lr=[0.03, 0.3], seed=3)
    logits = xv @ first.weight.T + first.bias
    assert torch.allclose(logits, probe.logits, atol=1e-4, rtol=1e-4)

    report = json.loads((tmp_path / "probe_init.json").read_text())["heads"]["classification"]
    assert report["lr"] == probe.lr and report["epochs"] == 30
    assert report["train_samples"] == 48 and report["val_samples"] == 16 and report["skipped_files"] == 0
    assert report["seconds"] >= 0
    assert report["val_OA"] == pytest.approx(probe.accuracy)
    assert report["val_OA"] == pytest.approx(100.0 * float((logits.argmax(1) == yv).float().mean()))
    assert set(report["lr_search"]) == {"0.03", "0.3"}


def test_a_resumed_run_keeps_its_checkpoint_and_fits_no_probe(
    aid4: Path, tmp_path: Path, cpu_trainer, monkeypatch
) -> None:
    dm = scene_data(aid4)
    task = make_task(dm, init="linear_probe", probe_epochs=5, probe_lr=0.1)
    t = cpu_trainer(max_steps=1, limit_val_batches=0)
    t.fit(task, datamodule=LightningData(dm))
    ckpt = tmp_path / "one.ckpt"
    t.save_checkpoint(ckpt)
    trained = task.heads["classification"].fc.weight.detach().clone()

    def refuse(*args: Any) -> None:
        raise AssertionError("a resumed run fitted a probe")

    resumed = make_task(dm, init="linear_probe", probe_epochs=5, probe_lr=0.1)
    monkeypatch.setattr(DownstreamTask, "_fit_probe", refuse)
    cpu_trainer(default_root_dir=tmp_path / "resumed", max_steps=1, limit_val_batches=0).fit(
        resumed, datamodule=LightningData(scene_data(aid4)), ckpt_path=str(ckpt), weights_only=False
    )
    assert torch.equal(resumed.heads["classification"].fc.weight, trained)
    # the default init never fits one
    cpu_trainer(default_root_dir=tmp_path / "plain", max_steps=1, limit_val_batches=0).fit(
        make_task(dm), datamodule=LightningData(dm)
    )
    assert not (tmp_path / "plain" / "probe_init.json").exists()


class NoIndexData(SceneClassificationDataModule):
    """A datamodule whose batches carry no dataset ``index`` (as a user's own might)."""

    def collate(self) -> Any:
        from torch.utils.data import default_collate

        base = super().collate() or default_collate

        def without_index(samples: list[Any]) -> Any:
            batch = base(samples)
            batch.pop("index", None)
            return batch

        return without_index


def test_batches_without_an_index_give_the_same_probe_in_one_process(aid4: Path, tmp_path: Path, cpu_trainer) -> None:
    """One process reads a split in order, so the index is not needed there (under DDP it is)."""
    heads = []
    for i, cls in enumerate((SceneClassificationDataModule, NoIndexData)):
        dm = cls(str(aid4), test_fraction=0.2, val_fraction=0.25, img_size=64, batch_size=8, num_workers=0)
        first = FirstStep()
        cpu_trainer(default_root_dir=tmp_path / str(i), max_steps=1, limit_val_batches=0, callbacks=[first]).fit(
            make_task(dm, init="linear_probe", probe_epochs=10, probe_lr=0.1), datamodule=LightningData(dm)
        )
        heads.append((first.weight, first.bias))
    assert torch.equal(heads[0][0], heads[1][0]) and torch.equal(heads[0][1], heads[1][1])


def test_given_training_features_replace_the_extraction(aid4: Path, tmp_path: Path, cpu_trainer, monkeypatch) -> None:
    """``use_probe_features``: the probe is fitted on the given features, the training split is not read again."""
    dm = scene_data(aid4)
    probe = {"init": "linear_probe", "probe_epochs": 10, "probe_lr": 0.1}
    reference = FirstStep()
    cpu_trainer(default_root_dir=tmp_path / "ref", max_steps=1, limit_val_batches=0, callbacks=[reference]).fit(
        make_task(dm, **probe), datamodule=LightningData(dm)
    )
    read: list[str] = []
    real = DownstreamTask._pooled

    def recording(self: DownstreamTask, head: Any, loader: Any, split: str) -> Any:
        read.append(split)
        return real(self, head, loader, split)

    monkeypatch.setattr(DownstreamTask, "_pooled", recording)
    task = make_task(dm, **probe)
    x, y = reference.train  # the same encoder (seeded) before any step: the features it would extract
    task.use_probe_features("classification", x, y, skipped=2)
    given = FirstStep()
    cpu_trainer(default_root_dir=tmp_path / "given", max_steps=1, limit_val_batches=0, callbacks=[given]).fit(
        task, datamodule=LightningData(dm)
    )
    assert read == ["validation"]  # the training split's images were not read for the probe
    assert task._probe_features == {}  # and the features are not held for the rest of the run
    assert torch.allclose(given.weight, reference.weight, atol=1e-5)
    assert torch.allclose(given.bias, reference.bias, atol=1e-5)
    report = json.loads((tmp_path / "given" / "probe_init.json").read_text())["heads"]["classification"]
    extracted = json.loads((tmp_path / "ref" / "probe_init.json").read_text())["heads"]["classification"]
    assert report["training_features"] == "given" and extracted["training_features"] == "extracted"
    assert report["train_samples"] == 48 and report["skipped_files"] == 2
    assert report["val_OA"] == pytest.approx(extracted["val_OA"])

    with pytest.raises(ConfigError, match=r"model.heads.classification: use_probe_features needs a head with init"):
        make_task(dm).use_probe_features("classification", x, y)
    with pytest.raises(ConfigError, match=r"model.heads.segmentation"):
        task.use_probe_features("segmentation", x, y)
    with pytest.raises(ValueError, match=r"expected \(N, 192\) probe features, got \(48, 10\)"):
        task.use_probe_features("classification", x[:, :10], y)
    with pytest.raises(ValueError, match=r"expected 48 labels for the probe features, got \(47,\)"):
        task.use_probe_features("classification", x, y[:-1])


@pytest.mark.parametrize("affine", [False, True])
def test_load_probe_folds_the_norm_into_the_classifier(aid4: Path, affine: bool) -> None:
    dm = scene_data(aid4)
    dm.setup("fit")
    task = make_task(dm)
    x, _ = pooled(task, dm.datasets["val"])
    gen = torch.Generator().manual_seed(0)
    probe = nn.Sequential(nn.BatchNorm1d(x.shape[1], affine=affine, eps=1e-6), nn.Linear(x.shape[1], len(CLASSES)))
    probe.train()
    with torch.no_grad():
        probe(x)  # running statistics of real features
        if affine:
            probe[0].weight.copy_(torch.rand(x.shape[1], generator=gen) + 0.5)
            probe[0].bias.copy_(torch.randn(x.shape[1], generator=gen))
    probe.eval()
    head = task.heads["classification"]
    head.load_probe(probe)
    with torch.no_grad():
        assert torch.allclose(head.fc(x), probe(x), atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="BatchNorm1d, Linear"):
        head.load_probe(nn.Linear(x.shape[1], len(CLASSES)))
    with pytest.raises(ValueError, match="to 5 classes"):
        head.load_probe(nn.Sequential(nn.BatchNorm1d(x.shape[1]), nn.Linear(x.shape[1], 4 + 1)))


def test_bad_options_and_data_without_an_unaugmented_split_are_refused(datasets: Path) -> None:
    with pytest.raises(ConfigError, match="ClassificationHead.init: expected one of"):
        ClassificationHead(init="probe")
    with pytest.raises(ConfigError, match="ClassificationHead.probe_epochs"):
        ClassificationHead(init="linear_probe", probe_epochs=0)
    for bad in ([], [0.1, -1.0], 0.0):
        with pytest.raises(ConfigError, match="ClassificationHead.probe_lr"):
            ClassificationHead(init="linear_probe", probe_lr=bad)
    dubai = DubaiDataModule(str(datasets / "dubai_seg"), val_split=[2], test_split=[3], num_workers=0)
    with pytest.raises(DataError, match="DubaiDataModule cannot give its training split without augmentation"):
        dubai.unaugmented_train()
