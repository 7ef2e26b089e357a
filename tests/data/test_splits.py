"""Reproducible splits (rsfm.data.splits): stratified by class, seeded by item."""

from collections import Counter
from pathlib import Path

import pytest

from rsfm.data.folder import ImageFolder, LabeledImageFolder
from rsfm.data.splits import check_fraction, seeded_split, split_names, stratified_split


def test_stratified_split_basics() -> None:
    groups = [0] * 10 + [1] * 5 + [2]
    train, val = stratified_split(groups, 0.2, seed=0)
    assert sorted(train + val) == list(range(16)) and not set(train) & set(val)
    assert Counter(groups[i] for i in val) == {0: 2, 1: 1}
    assert stratified_split(groups, 0.2, seed=0) == (train, val)
    assert stratified_split(groups, 0.2, seed=1) != (train, val)
    assert stratified_split(groups, 0.0, seed=0) == (list(range(16)), [])
    assert 15 in stratified_split(groups, 0.9, seed=0)[0]  # singleton group stays in train
    with pytest.raises(ValueError, match="val_fraction"):
        stratified_split(groups, 1.0, seed=0)


def test_stratified_split_aid(datasets: Path) -> None:
    aid = datasets / "aid"
    train = ImageFolder(aid, split="train", val_fraction=0.2, split_seed=7)
    val = ImageFolder(aid, split="val", val_fraction=0.2, split_seed=7)
    everything = ImageFolder(aid)
    assert not set(train.samples) & set(val.samples)
    assert set(train.samples) | set(val.samples) == set(everything.samples)
    per_class = Counter(p.parent.name for p in everything.samples)
    val_per_class = Counter(p.parent.name for p in val.samples)
    assert len(per_class) == 30
    for name, n in per_class.items():
        assert val_per_class[name] == round(n * 0.2)
    labeled_val = LabeledImageFolder(aid, split="val", val_fraction=0.2, split_seed=7)
    assert labeled_val.samples == val.samples  # same split, labeled or not
    assert [labeled_val.classes[t] for t in labeled_val.targets] == [p.parent.name for p in val.samples]


def test_seeded_split_deterministic() -> None:
    a = seeded_split(120, 0.1, 0.1, seed=0)
    assert a == seeded_split(120, 0.1, 0.1, seed=0)
    assert a != seeded_split(120, 0.1, 0.1, seed=1)
    assert [len(a[k]) for k in ("train", "val", "test")] == [96, 12, 12]
    assert sorted(a["train"] + a["val"] + a["test"]) == list(range(120))
    assert all(a[k] == sorted(a[k]) for k in a)
    with pytest.raises(ValueError, match="no training item"):
        seeded_split(2, 0.4, 0.4)
    with pytest.raises(ValueError, match="test_fraction"):
        seeded_split(10, 0.2, 1.0)


def test_seeded_split_small_sets() -> None:
    # 11 LEVIR-CD pairs with the defaults: 7 / 2 / 2
    assert [len(v) for v in seeded_split(11).values()] == [7, 2, 2]
    # a positive fraction takes at least one item once there are 3 items (4 DOTA images: 2 / 1 / 1)
    assert [len(v) for v in seeded_split(4, 0.1, 0.1).values()] == [2, 1, 1]
    # below 3 items nothing is rounded up
    assert seeded_split(2, 0.1, 0.1) == {"train": [0, 1], "val": [], "test": []}
    assert seeded_split(5, 0.0, 0.0) == {"train": [0, 1, 2, 3, 4], "val": [], "test": []}


def test_split_names_ignores_the_listing_order(datasets: Path) -> None:
    names = [p.name for p in (datasets / "levir_cd" / "A").iterdir()]
    split = split_names(names, 0.2, 0.2, seed=0)
    assert split == split_names(sorted(names, reverse=True), 0.2, 0.2, seed=0)
    assert sorted(split["train"] + split["val"] + split["test"]) == sorted(names)
    assert [len(split[k]) for k in ("train", "val", "test")] == [7, 2, 2]
    assert split != split_names(names, 0.2, 0.2, seed=1)


def test_check_fraction_names_the_setting() -> None:
    check_fraction(0.0)
    with pytest.raises(ValueError, match="data.test_fraction"):
        check_fraction(-0.1, "data.test_fraction")
