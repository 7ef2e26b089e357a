"""Resumable, rank-sharded order and per-sample seeding (rsfm.data.samplers), on real tiles."""

from pathlib import Path

import pytest
import torch
from data_helpers import small_loveda

from rsfm.data.samplers import EpochSampler, KeyedDataset, parse_key, sample_seed
from rsfm.data.segmentation import LoveDADataModule


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
    # unshuffled and padded: rank r takes r, r + R, ... and the first indices fill the tail
    assert [i for i, _ in EpochSampler(5, shuffle=False, num_replicas=2, rank=1, drop_last=False)] == [1, 3, 0]


def test_evaluation_shards_hold_every_sample_once() -> None:
    """Without padding (evaluation) the ranks partition the indices; fewer samples than ranks:
    a rank repeats one rather than having none (it would skip the loop the others wait in)."""
    for n, world in ((11, 2), (3, 2), (10, 4), (7, 3)):
        shards = [[i for i, _ in EpochSampler(n, False, num_replicas=world, rank=r, drop_last=False, pad=False)]
                  for r in range(world)]  # fmt: skip
        assert sorted(i for s in shards for i in s) == list(range(n))
        assert max(map(len, shards)) - min(map(len, shards)) <= 1
        assert [len(EpochSampler(n, num_replicas=world, rank=r, drop_last=False, pad=False)) for r in range(world)] == [
            len(s) for s in shards
        ]
    few = [[i for i, _ in EpochSampler(1, False, num_replicas=2, rank=r, drop_last=False, pad=False)] for r in (0, 1)]
    assert few == [[0], [0]]
    none = EpochSampler(0, False, num_replicas=2, rank=1, drop_last=False, pad=False)
    assert list(none) == [] and len(none) == 0


def test_evaluation_loaders_of_two_ranks_score_each_test_image_once(aid_subset) -> None:
    """A test split of 3 images on 2 ranks: ranks take 2 and 1 (it was 2 and 2, one image twice)."""
    from rsfm.data.scene import SceneClassificationDataModule

    root = aid_subset(["Beach", "Forest", "Port"], 5)
    dm = SceneClassificationDataModule(str(root), img_size=32, test_fraction=0.2, val_fraction=0.0, num_workers=0)
    dm.setup("test")
    single = [i for b in dm.test_dataloader() for i in b["index"].tolist()]
    assert len(single) == 3
    ranks = []
    for rank in (0, 1):
        dm.world = lambda rank=rank: (2, rank)
        ranks.append([i for b in dm.test_dataloader() for i in b["index"].tolist()])
    assert sorted(ranks[0] + ranks[1]) == sorted(single) and [len(r) for r in ranks] == [2, 1]


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
    with pytest.raises(ValueError, match="num_samples"):
        EpochSampler(-1)


def test_epoch_sampler_iterator_state() -> None:
    sampler = EpochSampler(20, seed=2)
    sampler.set_epoch(4)
    it = iter(sampler)
    head = [next(it) for _ in range(7)]
    state = it.state_dict()
    assert state == {"epoch": 4, "yielded": 7}
    fresh = EpochSampler(20, seed=2)  # epoch 0: the state restores epoch 4
    resumed = iter(fresh)
    resumed.load_state_dict(state)
    assert head + list(resumed) == list(sampler) and fresh.epoch == 4


def test_a_state_saved_after_the_last_batch_resumes_with_the_next_epoch() -> None:
    """A checkpoint every N steps can fall on an epoch's last batch; the next epoch must still run whole."""
    sampler = EpochSampler(10, seed=3)
    it = iter(sampler)
    assert len(list(it)) == 10
    saved = it.state_dict()
    # as Lightning resumes: set the next epoch, then the loader restores the iterator's state
    resumed = EpochSampler(10, seed=3)
    resumed.set_epoch(1)
    again = iter(resumed)
    again.load_state_dict(saved)
    assert [e for _, e in again] == [1] * 10
    # without set_epoch (another trainer), it continues with the epoch after the saved one
    other = iter(EpochSampler(10, seed=3))
    other.load_state_dict(saved)
    assert [i for i, _ in other] == EpochSampler(10, seed=3).indices(1)
    # a state saved mid-epoch still resumes inside that epoch
    mid = iter(EpochSampler(10, seed=3))
    mid.load_state_dict({"epoch": 0, "yielded": 4})
    assert [i for i, _ in mid] == EpochSampler(10, seed=3).indices(0)[4:]


def test_parse_key_and_sample_seed() -> None:
    assert parse_key(3, 5) == (3, 0) and parse_key((3, 2), 5) == (3, 2) and parse_key(-1, 5) == (4, 0)
    assert parse_key(torch.tensor(2), 5) == (2, 0)
    with pytest.raises(IndexError, match="out of range"):
        parse_key(5, 5)
    assert sample_seed(0, 1, 2) == sample_seed(0, 1, 2) != sample_seed(0, 2, 1)
    assert 0 <= sample_seed(7, 0, 0) < 2**64


@pytest.fixture(scope="module")
def loveda_train(datasets: Path, tmp_path_factory: pytest.TempPathFactory):
    """The training set of LoveDA (2 real tiles, 256 px of each) with random 64 px crops and flips."""
    root = small_loveda(datasets / "loveda", tmp_path_factory.mktemp("loveda"))
    dm = LoveDADataModule(str(root), test_split=["2"], crop_size=64)
    dm.setup("fit")
    return dm.datasets["train"]


def test_keyed_dataset_same_key_same_sample(loveda_train) -> None:
    ds = KeyedDataset(loveda_train, seed=3)
    state = torch.get_rng_state()
    a = ds[(0, 0)]
    assert torch.equal(torch.get_rng_state(), state)  # the caller's RNG is left alone
    torch.rand(100)  # whatever ran before must not matter
    b = ds[(0, 0)]
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"]) and a["id"] == b["id"]
    assert torch.equal(ds[0]["image"], a["image"])  # a bare index is epoch 0
    # another epoch or another seed: another crop of the same tile
    assert not torch.equal(ds[(0, 1)]["image"], a["image"]) and ds[(0, 1)]["id"] == a["id"]
    assert not torch.equal(KeyedDataset(loveda_train, seed=4)[(0, 0)]["image"], a["image"])


def test_keyed_dataset_repeats_draw_new_crops(loveda_train) -> None:
    ds = KeyedDataset(loveda_train, seed=0, repeats=3)
    assert len(ds) == 3 * len(loveda_train) == 6
    ids = [ds[(i, 0)]["id"] for i in range(6)]
    assert ids == [loveda_train[i % 2]["id"] for i in range(6)]
    crops = [ds[(i, 0)]["image"] for i in (0, 2, 4)]  # three crops of tile 0
    assert not torch.equal(crops[0], crops[1]) and not torch.equal(crops[1], crops[2])
    with pytest.raises(ValueError, match="repeats"):
        KeyedDataset(loveda_train, repeats=0)
    with pytest.raises(IndexError):
        ds[(6, 0)]
