import json
from collections import Counter
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from PIL import Image

from rsfm.data.datamodule import ClassificationDataModule, EpochSampler, PretrainDataModule
from rsfm.engine.callbacks import SkipReportCallback


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


def test_epoch_sampler_sharding() -> None:
    for n, drop_last, per_rank in ((10, True, 5), (11, True, 5), (11, False, 6)):
        shards = [list(EpochSampler(n, seed=1, num_replicas=2, rank=r, drop_last=drop_last)) for r in range(2)]
        assert [len(s) for s in shards] == [per_rank, per_rank]
        assert len(EpochSampler(n, num_replicas=2, rank=1, drop_last=drop_last)) == per_rank
        indices = [[i for i, _ in s] for s in shards]
        if drop_last:
            assert not set(indices[0]) & set(indices[1])
            assert len(set(indices[0] + indices[1])) == 2 * per_rank
        else:
            assert set(indices[0]) | set(indices[1]) == set(range(n))
    assert {e for _, e in EpochSampler(10)} == {0}


def test_epoch_sampler_order() -> None:
    sampler = EpochSampler(50, seed=3)
    first = list(sampler)
    assert first == list(EpochSampler(50, seed=3))
    assert sorted(i for i, _ in first) == list(range(50))
    sampler.set_epoch(1)
    second = list(sampler)
    assert all(e == 1 for _, e in second)
    assert [i for i, _ in second] != [i for i, _ in first]
    assert [i for i, _ in EpochSampler(50, seed=4)] != [i for i, _ in first]
    assert [i for i, _ in EpochSampler(5, shuffle=False)] == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="rank"):
        EpochSampler(10, num_replicas=2, rank=2)


def _dm(root: Path, workers: int) -> PretrainDataModule:
    return PretrainDataModule(root, img_size=32, batch_size=4, num_workers=workers, seed=5, pin_memory=False)


@pytest.mark.parametrize("workers", [0, 2])
def test_mid_epoch_resume(tree: Path, workers: int) -> None:
    reference = _dm(tree, workers).train_dataloader()
    reference.sampler.set_epoch(1)
    full = list(reference)
    assert len(full) == 6  # 25 samples // batch 4, last incomplete batch dropped
    assert sum(len(b["skipped"]) for b in full) <= 1

    k = 2
    interrupted = _dm(tree, workers).train_dataloader()
    interrupted.sampler.set_epoch(1)
    it = iter(interrupted)
    for _ in range(k):
        next(it)
    state = interrupted.state_dict()
    del it

    resumed = _dm(tree, workers).train_dataloader()  # epoch is restored from the state
    resumed.load_state_dict(state)
    rest = list(resumed)
    assert len(rest) == len(full) - k
    for a, b in zip(rest, full[k:], strict=True):
        assert torch.equal(a["image"], b["image"])
        assert torch.equal(a["index"], b["index"])
        assert a["skipped"] == b["skipped"]


def test_pretrain_datamodule(tree: Path) -> None:
    dm = PretrainDataModule(tree, img_size=48, batch_size=4, num_workers=0, holdout_fraction=0.2)
    dm.setup("fit")
    train, held = dm.train_dataset, dm.holdout_dataset
    assert not set(train.samples) & set(held.samples)
    assert len(train) + len(held) == 26
    viz = dm.viz_batch(4)
    assert viz.shape == (4, 3, 48, 48) and viz.dtype == torch.float32
    assert torch.equal(viz, dm.viz_batch(4))
    assert {r for _, r in dm.scan_skipped} == {"zero_byte", "not_an_image"}
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape[1:] == (3, 48, 48)

    no_holdout = PretrainDataModule(tree, img_size=32, num_workers=0)
    assert no_holdout.viz_batch(3).shape == (3, 3, 32, 32)


def test_viz_batch_spreads_over_classes(datasets: Path) -> None:
    # AID sorted by path starts with hundreds of Airport images: take one per class instead.
    dm = PretrainDataModule(datasets / "aid", img_size=32, num_workers=0, holdout_fraction=0.2)
    viz = dm.viz_batch(8)
    assert viz.shape == (8, 3, 32, 32)
    held = dm.holdout_dataset
    first = {}  # class -> its first held-out image
    for index, path in enumerate(held.samples):
        first.setdefault(path.parent.name, index)
    candidates = {name: held[index]["image"] for name, index in first.items()}
    found = [[name for name, image in candidates.items() if torch.equal(image, v)] for v in viz]
    assert all(len(names) == 1 for names in found), found
    assert len({names[0] for names in found}) == 8


def test_fail_fast_on_bad_roots(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        PretrainDataModule(missing)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "a.txt").write_text("x")
    with pytest.raises(FileNotFoundError, match=str(empty)):
        ClassificationDataModule(empty)


def test_classification_split_on_aid(datasets: Path) -> None:
    aid = datasets / "aid"
    dm = ClassificationDataModule(aid, img_size=32, batch_size=8, num_workers=0, val_fraction=0.2)
    assert dm.num_classes == 30 and dm.classes[0] == "Airport"  # known before setup
    dm.setup("fit")
    train, val = set(dm.train_dataset.samples), set(dm.val_dataset.samples)
    assert not train & val
    assert len(train | val) == 7000
    total = Counter(p.parent.name for p in train | val)
    held = Counter(p.parent.name for p in val)
    for name, n in total.items():
        assert abs(held[name] / n - 0.2) < 0.01
    batch = next(iter(dm.val_dataloader()))
    assert batch["image"].shape == (8, 3, 32, 32)
    assert batch["label"].dtype == torch.int64
    assert [dm.classes[t] for t in batch["label"]] == [dm.val_dataset.samples[i].parent.name for i in batch["index"]]

    probe = ClassificationDataModule(aid, img_size=32, num_workers=0, train_transform="eval")
    order = [i for i, _ in probe.train_dataloader().sampler]
    assert order == sorted(order)  # feature extraction: no shuffling


class _TinyModule(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(3))

    def training_step(self, batch, batch_idx):
        return (batch["image"].mean(dim=(0, 2, 3)) * self.weight).sum() + self.weight.sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_fit_with_skip_report(tree: Path, tmp_path: Path, cpu_trainer) -> None:
    dm = PretrainDataModule(tree, img_size=16, batch_size=13, num_workers=0, pin_memory=False)
    callback = SkipReportCallback()
    trainer = cpu_trainer(
        max_epochs=1,
        enable_checkpointing=False,
        use_distributed_sampler=False,
        default_root_dir=tmp_path / "run",
        callbacks=[callback],
    )
    trainer.fit(_TinyModule(), datamodule=dm)
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


@pytest.mark.parametrize("workers", [0, 2])
def test_lightning_resume_mid_epoch(tree: Path, tmp_path: Path, workers: int, cpu_trainer) -> None:
    """Stop 3 batches into epoch 1, resume from the checkpoint: same batches as one run."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    def run(name: str, module: _RecordingModule, ckpt_path=None, **kwargs) -> None:
        dm = PretrainDataModule(tree, img_size=16, batch_size=4, num_workers=workers, pin_memory=False)
        trainer = cpu_trainer(use_distributed_sampler=False, default_root_dir=tmp_path / name, **kwargs)
        trainer.fit(module, dm, ckpt_path=ckpt_path)

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
