"""Shared helpers of the tests/data modules: tiny layouts built from real files, loader checks.

Every folder built here holds real pixels from ``../shared/datasets`` (copies, crops or
symlinks), laid out as a dataset that is not shipped there (ISPRS, LoveDA's official
``Train``/``Val`` tree, published LEVIR-CD splits...). CDD and OSCD layouts are built by
:mod:`test_change_layouts`, whose builders are re-exported here.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from PIL import Image
from test_change_layouts import CITIES, build_cdd, build_oscd  # noqa: F401 (re-exported)

from rsfm.data.segmentation import DUBAI_COLOURS, IGNORE_INDEX, ISPRS_COLOURS

__all__ = [
    "CITIES",
    "FakeTrainer",
    "assert_same_batches",
    "build_cdd",
    "build_isprs",
    "build_oscd",
    "copy_levir",
    "dubai_subset",
    "loveda_tree",
    "resume_matches",
    "small_loveda",
    "voc_copy",
]


def FakeTrainer(world_size: int = 1, global_rank: int = 0) -> SimpleNamespace:  # noqa: N802
    """What a datamodule reads of a Lightning trainer: its world size and rank."""
    return SimpleNamespace(world_size=world_size, global_rank=global_rank)


# ------------------------------------------------------------------------------------ layouts


def link(src: Path, dst: Path) -> Path:
    """Symlink ``dst`` -> ``src`` (parents created)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.symlink_to(src)
    return dst


def loveda_tree(loveda: Path, root: Path, layout: dict[str, Sequence[str]]) -> Path:
    """LoveDA's official tree from the real tiles: ``root/<Split>/Urban/{images_png,masks_png}/<id>.png``.

    Args:
        loveda: the flat real set (``images_png``, ``masks_png``).
        root: folder to create.
        layout: split folder name (``"Train"``; ``"."`` for the flat root) -> tile ids.
    """
    for split, ids in layout.items():
        base = root if split == "." else root / split / "Urban"
        for rid in ids:
            for sub in ("images_png", "masks_png"):
                link(loveda / sub / f"{rid}.png", base / sub / f"{rid}.png")
    return root


def small_loveda(loveda: Path, root: Path, size: int = 256) -> Path:
    """The 3 real LoveDA tiles cut to their top-left ``size`` pixels (quicker to decode than 1024 px)."""
    for sub in ("images_png", "masks_png"):
        (root / sub).mkdir(parents=True)
        for rid in ("0", "1", "2"):
            Image.open(loveda / sub / f"{rid}.png").crop((0, 0, size, size)).save(root / sub / f"{rid}.png")
    return root


def dubai_subset(dubai: Path, root: Path, tiles: dict[int, int]) -> Path:
    """The first ``n`` image/mask pairs of some Dubai tiles, symlinked: ``{tile: n}``."""
    for tile, n in tiles.items():
        src = dubai / f"Tile {tile}"
        for image in sorted((src / "images").glob("*.jpg"))[:n]:
            link(image, root / f"Tile {tile}" / "images" / image.name)
            mask = src / "masks" / f"{image.stem}.png"
            link(mask, root / f"Tile {tile}" / "masks" / mask.name)
    return root


def build_isprs(
    dubai: Path,
    root: Path,
    layout: dict[str, Sequence[tuple[int, str]]],
    size: int = 160,
    images_dir: str = "2_Ortho_RGB",
    masks_dir: str = "5_Labels_all",
) -> dict[str, np.ndarray]:
    """An ISPRS-Potsdam-like folder from real Dubai imagery, masks recoloured to ISPRS colours.

    Each tile is the top-left ``size`` pixels of a real Dubai image and its mask, with Dubai
    class ``k`` painted in ISPRS colour ``k`` (both sets have six classes) and Dubai's black
    (no label) kept black (ISPRS' eroded-boundary colour). Files follow Potsdam's naming:
    ``<images_dir>/top_potsdam_<name>_RGB.tif`` and ``<masks_dir>/top_potsdam_<name>_label.tif``
    (plain RGB TIFFs, as the release; no georeferencing).

    Args:
        dubai: the real Dubai set.
        root: folder to create.
        layout: split folder (``"."`` for ``root`` itself) -> ``(tile, name)`` of each tile; the
            ``name`` is the Potsdam tile number such as ``"2_10"``.
        size: side of the crops, pixels.
        images_dir: image folder name (Potsdam's ``2_Ortho_RGB``).
        masks_dir: label folder name (Potsdam's ``5_Labels_all``).

    Returns:
        ``"top_potsdam_<name>"`` -> its labels ``(size, size)`` int64 (255 = no label).
    """
    isprs = np.zeros((256, 3), np.uint8)
    isprs[: len(ISPRS_COLOURS.colours)] = np.asarray(ISPRS_COLOURS.colours, np.uint8)
    labels: dict[str, np.ndarray] = {}
    used: dict[int, int] = {}
    for split, tiles in layout.items():
        base = root if split == "." else root / split
        (base / images_dir).mkdir(parents=True, exist_ok=True)
        (base / masks_dir).mkdir(parents=True, exist_ok=True)
        for tile, name in tiles:
            # a different real image for each tile taken from the same Dubai tile
            k = used.get(tile, 0)
            used[tile] = k + 1
            image_path = sorted((dubai / f"Tile {tile}" / "images").glob("*.jpg"))[k]
            mask_path = dubai / f"Tile {tile}" / "masks" / f"{image_path.stem}.png"
            rgb = np.asarray(Image.open(image_path).convert("RGB"))[:size, :size]
            dubai_rgb = np.asarray(Image.open(mask_path).convert("RGB"))[:size, :size]
            lab, unknown = DUBAI_COLOURS.to_labels(dubai_rgb)
            assert unknown == 0
            Image.fromarray(np.ascontiguousarray(rgb)).save(base / images_dir / f"top_potsdam_{name}_RGB.tif")
            Image.fromarray(isprs[lab]).save(base / masks_dir / f"top_potsdam_{name}_label.tif")
            assert np.array_equal(lab == IGNORE_INDEX, (isprs[lab] == 0).all(-1))  # black = no label only
            labels[f"top_potsdam_{name}"] = lab
    return labels


def copy_levir(levir: Path, root: Path, names: Iterable[str], folders: Sequence[str] = ("A", "B", "label")) -> Path:
    """Copy LEVIR-CD pairs into ``root/{A,B,label}`` (or other folder names)."""
    for src, dst in zip(("A", "B", "label"), folders, strict=True):
        (root / dst).mkdir(parents=True, exist_ok=True)
        for n in names:
            shutil.copy(levir / src / n, root / dst / n)
    return root


def voc_copy(nepu: Path, root: Path, sets: dict[str, Sequence[str]], difficult: dict[str, int] | None = None) -> Path:
    """A VOC layout with real NEPU files and image sets; ``difficult`` flags object ``i`` of an id."""
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    ids = sorted({rid for names in sets.values() for rid in names})
    for rid in ids:
        (root / "JPEGImages" / f"{rid}.jpg").symlink_to(nepu / "JPEGImages" / f"{rid}.jpg")
        text = (nepu / "Annotations" / f"{rid}.xml").read_text()
        if difficult and rid in difficult:
            parts = text.split("<difficult>0</difficult>")
            i = difficult[rid]
            text = "<difficult>0</difficult>".join(parts[: i + 1]) + "<difficult>1</difficult>"
            text += "<difficult>0</difficult>".join(parts[i + 1 :])
        (root / "Annotations" / f"{rid}.xml").write_text(text)
    for name, names in sets.items():
        (root / "ImageSets" / "Main" / f"{name}.txt").write_text("".join(f"{n}\n" for n in names))
    return root


# ------------------------------------------------------------------------------------ loaders


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def assert_same_batches(got: list[Any], expected: list[Any]) -> None:
    """Batches equal key by key, tensors exactly (values, dtypes), lists element-wise."""
    assert len(got) == len(expected)
    for i, (a, b) in enumerate(zip(got, expected, strict=True)):
        assert _same(a, b), f"batch {i} differs"


def resume_matches(make_loader: Callable[[], Any], stop_after: int = 2, epoch: int = 1) -> list[Any]:
    """Check that a loader stopped after ``stop_after`` batches resumes with exactly the rest.

    Three fresh loaders from ``make_loader``: one runs the whole epoch ``epoch``; one is
    stopped after ``stop_after`` batches and its ``state_dict`` taken; the third gets that
    state by ``load_state_dict`` (its epoch is restored from the state) and must yield the
    remaining batches, equal tensor for tensor.

    Returns:
        The batches of the whole epoch.
    """
    reference = make_loader()
    reference.sampler.set_epoch(epoch)
    full = list(reference)
    assert len(full) > stop_after, "too few batches to stop mid-epoch"

    interrupted = make_loader()
    interrupted.sampler.set_epoch(epoch)
    it = iter(interrupted)
    seen = [next(it) for _ in range(stop_after)]
    state = interrupted.state_dict()
    del it
    assert_same_batches(seen, full[:stop_after])

    resumed = make_loader()
    resumed.load_state_dict(state)
    assert_same_batches(list(resumed), full[stop_after:])
    return full
