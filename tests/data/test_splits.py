"""Reproducible splits (rsfm.data.splits): stratified by class, seeded by item."""

from collections import Counter
from pathlib import Path

import pytest

from rsfm.data.folder import ImageFolder, LabeledImageFolder
from rsfm.data.splits import check_fraction, group_seed, seeded_split, split_names, stratified_split


def test_stratified_split_basics() -> None:
    groups = ["a"] * 10 + ["b"] * 5 + ["c"]
    train, val = stratified_split(groups, 0.2, seed=0)
    assert sorted(train + val) == list(range(16)) and not set(train) & set(val)
    assert Counter(groups[i] for i in val) == {"a": 2, "b": 1}
    assert stratified_split(groups, 0.2, seed=0) == (train, val)
    assert stratified_split(groups, 0.2, seed=1) != (train, val)
    assert stratified_split(groups, 0.0, seed=0) == (list(range(16)), [])
    assert 15 in stratified_split(groups, 0.9, seed=0)[0]  # singleton group stays in train
    with pytest.raises(ValueError, match="val_fraction"):
        stratified_split(groups, 1.0, seed=0)
    with pytest.raises(TypeError, match="names"):
        stratified_split([0] * 10 + [1] * 5, 0.2, seed=0)  # positional ids are refused


def test_stratified_split_seeds_each_group_by_its_name() -> None:
    def held_out(groups: list[str], seed: int = 0) -> dict[str, list[int]]:
        """Held-out ranks within each group."""
        _, val = stratified_split(groups, 0.25, seed)
        return {g: [i - groups.index(g) for i in val if groups[i] == g] for g in dict.fromkeys(groups)}

    two = held_out(["b"] * 20 + ["c"] * 20)
    # a group added before them, or one removed, leaves the others' held-out items alone
    assert {g: v for g, v in held_out(["a"] * 20 + ["b"] * 20 + ["c"] * 20).items() if g != "a"} == two
    assert held_out(["c"] * 20)["c"] == two["c"]
    assert held_out(["b"] * 20 + ["c"] * 20, seed=1) != two
    assert held_out(["x"] * 20 + ["c"] * 20)["x"] != two["b"]  # a group's name, not its place, seeds it
    # stable across processes and machines: CRC-32, not the per-process salted hash()
    assert group_seed("Beach") == 0xAC458B1C and group_seed("") == 0


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
