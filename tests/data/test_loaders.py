"""The loaders every datamodule shares (rsfm.data.base.DataModule.loader), on real data.

Segmentation (LoveDA), detection (DOTA) and change detection (LEVIR-CD): resumable
StatefulDataLoaders over an EpochSampler, seeded per-sample augmentation, ``crops_per_image``
repeats, and disjoint rank shards under DDP (a fake trainer with world_size 2).
"""

from pathlib import Path

import pytest
import torch
from data_helpers import FakeTrainer, assert_same_batches, resume_matches, small_loveda
from torchdata.stateful_dataloader import StatefulDataLoader

from rsfm.data.base import DataModule
from rsfm.data.change import LEVIRCDDataModule
from rsfm.data.detection import DOTADataModule
from rsfm.data.samplers import EpochSampler, KeyedDataset
from rsfm.data.segmentation import LoveDADataModule
from rsfm.utils.errors import DataError


@pytest.fixture(scope="module")
def loveda_256(datasets: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return small_loveda(datasets / "loveda", tmp_path_factory.mktemp("loveda"))


def _segmentation(root: Path, **kwargs) -> LoveDADataModule:
    kwargs = {"crop_size": 64, "crops_per_image": 4, "batch_size": 2, "seed": 7, "pin_memory": False, **kwargs}
    return LoveDADataModule(str(root), test_split=["2"], **kwargs)


def _detection(datasets: Path, **kwargs) -> DOTADataModule:
    kwargs = {"crop_size": 128, "crops_per_image": 3, "batch_size": 2, "seed": 7, "pin_memory": False, **kwargs}
    return DOTADataModule(str(datasets / "dota"), **kwargs)


def _change(datasets: Path, **kwargs) -> LEVIRCDDataModule:
    kwargs = {"crop_size": 64, "crops_per_image": 2, "batch_size": 3, "seed": 7, "pin_memory": False, **kwargs}
    return LEVIRCDDataModule(str(datasets / "levir_cd"), **kwargs)


KINDS = {"segmentation": _segmentation, "detection": _detection, "change": _change}
#: (training items per epoch = items x crops_per_image, batches per epoch)
SIZES = {"segmentation": (2 * 4, 4), "detection": (2 * 3, 3), "change": (7 * 2, 4)}


@pytest.fixture
def data(datasets: Path, loveda_256: Path):
    """``make(kind, **kwargs)`` -> a datamodule of that kind on its real data."""

    def make(kind: str, **kwargs) -> DataModule:
        return KINDS[kind](loveda_256 if kind == "segmentation" else datasets, **kwargs)

    return make


def _images(batch: dict) -> torch.Tensor:
    """The (before) images of a batch, stacked (detection batches hold lists)."""
    images = batch["image_a"] if "image_a" in batch else batch["image"]
    return torch.stack(images) if isinstance(images, list) else images


@pytest.mark.parametrize("kind", KINDS)
def test_loaders_are_stateful_over_an_epoch_sampler(data, kind: str) -> None:
    dm: DataModule = data(kind)
    train = dm.train_dataloader()
    assert isinstance(train, StatefulDataLoader)
    assert isinstance(train.sampler, EpochSampler) and train.sampler.shuffle and train.sampler.drop_last
    assert isinstance(train.dataset, KeyedDataset) and train.dataset.repeats == dm.crops_per_image
    items, batches = SIZES[kind]
    assert len(train.dataset) == items and len(train) == batches
    test = dm.test_dataloader()
    assert isinstance(test, StatefulDataLoader) and not test.sampler.shuffle and test.dataset.repeats == 1
    assert [i for i, _ in test.sampler] == list(range(len(test.dataset)))  # file order


@pytest.mark.parametrize("kind", KINDS)
def test_mid_epoch_resume_gives_the_remaining_batches(data, kind: str) -> None:
    full = resume_matches(lambda: data(kind).train_dataloader(), stop_after=2, epoch=1)
    assert len(full) == SIZES[kind][1]
    # augmentation is a function of (seed, epoch, index): another epoch, other crops
    other = data(kind).train_dataloader()
    other.sampler.set_epoch(2)
    assert not torch.equal(_images(next(iter(other))), _images(full[0]))


@pytest.mark.slow
def test_mid_epoch_resume_with_worker_processes(datasets: Path) -> None:
    resume_matches(lambda: _change(datasets, num_workers=2).train_dataloader(), stop_after=2, epoch=1)
    single = _change(datasets).train_dataloader()
    multi = _change(datasets, num_workers=2).train_dataloader()
    single.sampler.set_epoch(3)
    multi.sampler.set_epoch(3)
    assert_same_batches(list(multi), list(single))  # workers do not change the samples


def _ids(loader) -> list[str]:
    return [i for batch in loader for i in batch["id"]]


@pytest.mark.parametrize("kind", KINDS)
def test_ranks_get_disjoint_shards(data, kind: str) -> None:
    shards, evals = [], []
    for rank in (0, 1):
        dm = data(kind, batch_size=1)
        dm.trainer = FakeTrainer(world_size=2, global_rank=rank)
        assert dm.world() == (2, rank)
        train = dm.train_dataloader()
        assert train.sampler.num_replicas == 2 and train.sampler.rank == rank
        shards.append([i for i, _ in train.sampler])
        evals.append(_ids(dm.test_dataloader()))
    items = SIZES[kind][0]
    assert len(shards[0]) == len(shards[1]) == items // 2
    assert not set(shards[0]) & set(shards[1])
    # evaluation: every test item on some rank, ranks padded to equal length
    single = _ids(data(kind).test_dataloader())
    assert len(evals[0]) == len(evals[1]) and set(evals[0]) | set(evals[1]) == set(single)
    assert evals[0] == single[0::2] and evals[1] == single[1::2] + single[: len(evals[0]) - len(single[1::2])]


def test_a_single_rank_without_a_trainer(datasets: Path) -> None:
    dm = _change(datasets)
    assert dm.trainer is None and dm.world() == (1, 0)
    sampler = dm.train_dataloader().sampler
    assert sampler.num_replicas == 1 and sorted(i for i, _ in sampler) == list(range(14))


def test_loader_settings_and_missing_splits(datasets: Path, data) -> None:
    with pytest.raises(ValueError, match="batch_size"):
        _change(datasets, batch_size=0)
    with pytest.raises(ValueError, match="num_workers"):
        _change(datasets, num_workers=-1)
    dm = data("segmentation")
    assert dm.val_dataloader() == []  # no validation split
    assert dm.state_dict() == {} and dm.load_state_dict({}) is None
    with pytest.raises(DataError, match="has no test split"):
        DataModule().test_dataloader()
    # fewer items than a batch: the one short batch is kept
    small = _change(datasets, batch_size=32).train_dataloader()
    assert len(small) == 1 and not small.drop_last
