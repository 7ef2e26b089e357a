"""Reproducible train / val / test splits: stratified by class, or seeded by item.

Splits depend only on their arguments (items are passed in a canonical order, e.g. sorted by
path), never on the file system's listing order, so the same folder and seed give the same
split on every machine. The held-out split of pretraining, classification fine-tuning and
``rsfm evaluate`` is one and the same :func:`stratified_split` of a folder's files, grouped by
their first-level folder and seeded by its name (see :class:`rsfm.data.folder.ImageFolder`).

.. versionadded:: 0.1
"""

from __future__ import annotations

import os
import warnings
import zlib
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import torch

from rsfm.utils.errors import DataError

__all__ = ["check_disjoint_splits", "check_fraction", "group_seed", "seeded_split", "split_names", "stratified_split"]


def check_fraction(fraction: float, name: str = "val_fraction") -> None:
    """Raise ValueError naming ``name`` unless ``0 <= fraction < 1``."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {fraction}")


def group_seed(name: str) -> int:
    """Stable 32-bit seed of a group name: CRC-32 of its UTF-8 bytes.

    Unlike :func:`hash`, which is salted per process for strings, this is the same in every
    process and on every machine. The empty name (files directly in a folder's root) gives 0.
    """
    return zlib.crc32(name.encode("utf-8"))


def stratified_split(groups: Sequence[str], val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Split item positions into train and val, the same fraction from every group.

    Each group of ``n`` items sends ``round(n * val_fraction)`` of them (at most ``n - 1``, so
    every group keeps at least one training item) to val. Which of its items go is chosen by a
    random generator seeded with ``(seed, group_seed(name))``: from the group's name, not its
    position among the groups, so adding or removing a group does not change the split of the
    others. Within a group, items are taken in the order given; callers pass them in a
    canonical order (sorted by relative path), which makes the split independent of the file
    system. The result depends only on the arguments, in any process.

    Args:
        groups: group name (e.g. class folder name) of each item.
        val_fraction: fraction of each group to hold out, 0 <= val_fraction < 1.
        seed: split seed.

    Returns:
        train: sorted positions into ``groups``.
        val: sorted positions into ``groups``; disjoint from train, together all positions.

    Raises:
        ValueError: if ``val_fraction`` is outside [0, 1).
        TypeError: if a group is not a ``str`` (a positional id would tie the split to the
            other groups).

    .. versionadded:: 0.1
    .. versionchanged:: 0.2
       Groups are names, and each group's split is seeded from its name (it was seeded from
       an integer group id, in practice the group's position among the sorted groups).

    """
    check_fraction(val_fraction)
    members: dict[str, list[int]] = {}
    for position, group in enumerate(groups):
        if not isinstance(group, str):
            raise TypeError(f"stratified_split: groups must be names (str), got {type(group).__name__} {group!r}")
        members.setdefault(group, []).append(position)
    val: list[int] = []
    if val_fraction > 0:
        for group, items in members.items():
            n_val = min(round(len(items) * val_fraction), len(items) - 1)
            if n_val <= 0:
                continue
            entropy = [seed & 0xFFFFFFFFFFFFFFFF, group_seed(group)]
            rng = np.random.default_rng(np.random.SeedSequence(entropy))
            chosen = rng.choice(len(items), size=n_val, replace=False)
            val.extend(items[i] for i in chosen)
    val.sort()
    val_set = set(val)
    train = [i for i in range(len(groups)) if i not in val_set]
    return train, val


def seeded_split(n: int, val_fraction: float = 0.2, test_fraction: float = 0.2, seed: int = 0) -> dict[str, list[int]]:
    """Seeded train / val / test split of ``n`` items (item level, not stratified).

    The positions ``0..n-1`` are permuted by a generator seeded with ``seed``; the first
    ``round(n · test_fraction)`` go to test, the next ``round(n · val_fraction)`` to val (each at
    least one when its fraction is positive and ``n >= 3``), the rest to train. Callers pass
    items in a canonical order (sorted names), so the split depends only on the names and the
    seed. 11 LEVIR-CD pairs with the defaults: 7 / 2 / 2.

    Args:
        n: number of items.
        val_fraction: share for validation, in [0, 1).
        test_fraction: share for testing, in [0, 1).
        seed: permutation seed.

    Returns:
        ``{"train": [...], "val": [...], "test": [...]}``: sorted positions.

    Raises:
        ValueError: on fractions out of range or a split that leaves no training item.
    """
    check_fraction(val_fraction, "val_fraction")
    check_fraction(test_fraction, "test_fraction")
    counts = []
    for fraction in (test_fraction, val_fraction):
        c = round(n * fraction)
        counts.append(max(c, 1) if fraction > 0 and n >= 3 else c)
    n_test, n_val = counts
    if n - n_test - n_val < 1:
        raise ValueError(
            f"{n} items leave no training item with val_fraction={val_fraction}, test_fraction={test_fraction}"
        )
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    return {
        "train": sorted(order[n_test + n_val :]),
        "val": sorted(order[n_test : n_test + n_val]),
        "test": sorted(order[:n_test]),
    }


def split_names(
    names: Sequence[str], val_fraction: float = 0.2, test_fraction: float = 0.2, seed: int = 0
) -> dict[str, list[str]]:
    """:func:`seeded_split` of names, sorted first (so the listing order never matters).

    Returns:
        ``{"train", "val", "test"}`` → sorted names.

    Raises:
        ValueError: see :func:`seeded_split`.
    """
    names = sorted(names)
    idx = seeded_split(len(names), val_fraction, test_fraction, seed)
    return {k: [names[i] for i in v] for k, v in idx.items()}


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def check_disjoint_splits(
    files: Mapping[str, Iterable[str | os.PathLike[str]]],
    root: str | os.PathLike[str] | None = None,
    noun: str = "image",
) -> None:
    """Check that no file of the training split is validated or tested on.

    Files are compared by absolute, normalised path (symbolic links are not followed: two
    links to one file are two files).

    Args:
        files: split (``"train"``, ``"val"``, ``"test"``; missing ones are empty) -> the files
            that identify its samples (image paths, before-image paths of change pairs).
        root: folder the example paths of the messages are shown relative to.
        noun: what a file is, singular, for the messages (``"image"``, ``"pair"``).

    Raises:
        DataError: if the training split shares files with the validation or the test split,
            naming both keys, the count and up to three files, e.g. ``data.train_split and
            data.test_split share 9 images, e.g. ['Tile 3/images/image_part_001.jpg', ...]``.

    Warns:
        UserWarning: if the validation and the test split are the same files (``data.test_split
            equals data.val_split``; allowed, e.g. LoveDA tests on its ``Val`` set) or share
            some of them: the test scores are then not independent of checkpoint selection.
    """
    base = os.path.abspath(os.fspath(root)) if root is not None else None

    def normalised(items: Iterable[str | os.PathLike[str]]) -> set[str]:
        return {os.path.normpath(os.path.abspath(os.fspath(p))) for p in items}

    def examples(paths: set[str]) -> list[str]:
        shown = sorted(paths)[:3]
        if base is not None:
            shown = [os.path.relpath(p, base) if p.startswith(base + os.sep) else p for p in shown]
        return shown + (["..."] if len(paths) > 3 else [])

    sets = {key: normalised(files.get(key, ())) for key in ("train", "val", "test")}
    for key in ("val", "test"):
        shared = sets["train"] & sets[key]
        if shared:
            raise DataError(
                f"data.train_split and data.{key}_split share {_plural(len(shared), noun)}, "
                f"e.g. {examples(shared)}: nothing trained on may be {'validated' if key == 'val' else 'tested'} on"
            )
    shared = sets["val"] & sets["test"]
    if shared and sets["val"] == sets["test"]:
        warnings.warn(
            "data.test_split equals data.val_split: the test scores are not independent of checkpoint selection",
            stacklevel=3,
        )
    elif shared:
        warnings.warn(
            f"data.val_split and data.test_split share {_plural(len(shared), noun)}, e.g. {examples(shared)}: "
            "their test scores are not independent of checkpoint selection",
            stacklevel=3,
        )
