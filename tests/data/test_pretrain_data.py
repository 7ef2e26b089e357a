"""PretrainDataModule (rsfm.data.pretrain) on real AID images with corrupt files mixed in."""

import json
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from data_helpers import resume_matches
from PIL import Image
from torchdata.stateful_dataloader import StatefulDataLoader

from rsfm.data.folder import ImageFolder
from rsfm.data.pretrain import PretrainDataModule
from rsfm.data.scene import SceneClassificationDataModule
from rsfm.engine.callbacks import SkipReportCallback
from rsfm.engine.data import LightningData
from rsfm.utils.errors import DataError


@pytest.fixture
def tree(aid_subset, datasets: Path) -> Path:
    """26 real AID images in two folders plus a truncated, a zero-byte and a text file."""
    root = aid_subset(("Beach", "Forest"), 12, copy=True)
    real = datasets / "aid" / "Airport" / "airport_10.jpg"
    Image.open(real).convert("L").save(root / "Beach" / "gray.png")
    (root / "Beach" / "half.jpg").write_bytes(real.read_bytes()[:3000])
    (root / "Forest" / "empty.jpg").touch()
    (root / "Forest" / "notes.txt").write_text("notes")
    return root


def _dm(root: Path, workers: int = 0, **kwargs) -> PretrainDataModule:
    kwargs = {"img_size": 32, "batch_size": 4, "num_workers": workers, "seed": 5, "pin_memory": False, **kwargs}
    return PretrainDataModule(str(root), test_fraction=0.0, **kwargs)


@pytest.mark.parametrize("workers", [0, pytest.param(2, marks=pytest.mark.slow)])
def test_mid_epoch_resume(tree: Path, workers: int) -> None:
    assert isinstance(_dm(tree, workers).train_dataloader(), StatefulDataLoader)
    full = resume_matches(lambda: _dm(tree, workers).train_dataloader(), stop_after=2, epoch=1)
    assert len(full) == 6  # 25 samples // batch 4, last incomplete batch dropped
    assert sum(len(b["skipped"]) for b in full) <= 1


def test_pretrain_datamodule(tree: Path) -> None:
    dm = PretrainDataModule(str(tree), img_size=48, batch_size=4, num_workers=0, test_fraction=0.2)
    info = dm.info()
    assert info.classes == [] and info.num_channels == 3 and info.img_size == 48 and info.sample_keys == ("image",)
    dm.setup("fit")
    train, held = dm.datasets["train"], dm.datasets["holdout"]
    assert not set(train.samples) & set(held.samples)
    assert len(train) + len(held) == 26
    viz = dm.viz_batch(4)
    assert viz.shape == (4, 3, 48, 48) and viz.dtype == torch.float32
    assert 0.0 <= float(viz.min()) and float(viz.max()) <= 1.0  # not normalised
    assert torch.equal(viz, dm.viz_batch(4))
    assert {r for _, r in dm.scan_skipped} == {"zero_byte", "not_an_image"}
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape[1:] == (3, 48, 48)
    assert dm.val_dataloader() == []

    no_holdout = _dm(tree)
    assert no_holdout.viz_batch(3).shape == (3, 3, 32, 32)
    assert "holdout" not in no_holdout.datasets


def test_holdout_is_the_stratified_split(tree: Path) -> None:
    dm = PretrainDataModule(str(tree), img_size=32, num_workers=0, test_fraction=0.25, split_seed=3)
    dm.setup("fit")
    reference = ImageFolder(tree, split="val", val_fraction=0.25, split_seed=3)
    assert dm.datasets["holdout"].samples == reference.samples


def test_viz_batch_spreads_over_classes(datasets: Path) -> None:
    # AID sorted by path starts with hundreds of Airport images: take one per class instead.
    dm = PretrainDataModule(str(datasets / "aid"), img_size=32, num_workers=0, test_fraction=0.2)
    viz = dm.viz_batch(8)
    assert viz.shape == (8, 3, 32, 32)
    held = dm.datasets["holdout"]
    first = {}  # class -> its first held-out image
    for index, path in enumerate(held.samples):
        first.setdefault(path.parent.name, index)
    candidates = {name: held[index]["image"] for name, index in list(first.items())[:8]}
    found = [[name for name, image in candidates.items() if torch.equal(image, v)] for v in viz]
    assert all(len(names) == 1 for names in found), found
    assert len({names[0] for names in found}) == 8


def test_fail_fast_on_bad_roots(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    with pytest.raises(DataError, match=f"data.root: folder not found: {missing}"):
        PretrainDataModule(str(missing))
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "a.txt").write_text("x")
    for cls in (PretrainDataModule, SceneClassificationDataModule):
        with pytest.raises(DataError, match=f"data.root: No image files found under {empty}"):
            cls(str(empty))
    (tmp_path / "file.jpg").write_text("x")
    with pytest.raises(DataError, match="is a file, expected a folder"):
        PretrainDataModule(str(tmp_path / "file.jpg"))


def test_settings_are_checked(tree: Path) -> None:
    with pytest.raises(ValueError, match="data.scale"):
        _dm(tree, scale=[0.0, 1.0])
    with pytest.raises(ValueError, match="data.test_fraction"):
        PretrainDataModule(str(tree), test_fraction=1.0)
    with pytest.raises(DataError, match="data.mean and data.std are required for 4-band input"):
        _dm(tree, bands=[0, 1, 2, 3])
    info = _dm(tree, bands=[2, 1, 0]).info()
    assert info.bands == [2, 1, 0] and info.num_channels == 3


class _TinyModule(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(3))

    def training_step(self, batch, batch_idx):
        return (batch["image"].mean(dim=(0, 2, 3)) * self.weight).sum() + self.weight.sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_fit_with_skip_report(tree: Path, tmp_path: Path, cpu_trainer) -> None:
    dm = _dm(tree, img_size=16, batch_size=13)
    callback = SkipReportCallback()
    trainer = cpu_trainer(
        max_epochs=1,
        enable_checkpointing=False,
        use_distributed_sampler=False,
        default_root_dir=tmp_path / "run",
        callbacks=[callback],
    )
    trainer.fit(_TinyModule(), datamodule=LightningData(dm))
    assert dm.trainer is trainer  # the adapter hands the trainer to the datamodule
    assert callback.report.counts() == {"not_an_image": 1, "truncated": 1, "zero_byte": 1}
    saved = json.loads((tmp_path / "run" / "skipped_files.json").read_text())
    assert saved["total"] == 3


class _RecordingModule(_TinyModule):
    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[int, list[int], float]] = []

    def training_step(self, batch, batch_idx):
        self.seen.append((self.current_epoch, batch["index"].tolist(), float(batch["image"].sum())))
        return super().training_step(batch, batch_idx)


@pytest.mark.parametrize("workers", [0, pytest.param(2, marks=pytest.mark.slow)])
def test_lightning_resume_mid_epoch(tree: Path, tmp_path: Path, workers: int, cpu_trainer) -> None:
    """Stop 3 batches into epoch 1, resume from the checkpoint: same batches as one run."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    def run(name: str, module: _RecordingModule, ckpt_path=None, **kwargs) -> None:
        dm = _dm(tree, workers, img_size=16)
        trainer = cpu_trainer(use_distributed_sampler=False, default_root_dir=tmp_path / name, **kwargs)
        trainer.fit(module, LightningData(dm), ckpt_path=ckpt_path)

    full = _RecordingModule()
    run("full", full, max_epochs=2, enable_checkpointing=False)
    first = _RecordingModule()
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=9)
    run("first", first, max_steps=9, callbacks=[checkpoint])
    second = _RecordingModule()
    run(
        "second",
        second,
        ckpt_path=checkpoint.last_model_path or checkpoint.best_model_path,
        max_epochs=2,
        enable_checkpointing=False,
    )
    assert len(full.seen) == 12
    assert first.seen + second.seen == full.seen
