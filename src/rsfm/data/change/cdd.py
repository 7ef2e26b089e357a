"""CDD: season-varying change detection, the cropped "Real/subset" layout with ``OUT`` masks.

CDD (Lebedev et al., "Change detection in remote sensing images using conditional
adversarial networks", ISPRS Archives XLII-2, 2018), the widely used cropped "Real/subset"
part: 256×256 RGB patches of season-varying Google Earth pairs (0.03–1 m GSD), 10,000 train,
3,000 val and 3,000 test pairs. As published (``ChangeDetectionDataset/Real/subset``)::

    root/{train,val,test}/A/<name>.jpg     before image, RGB
    root/{train,val,test}/B/<name>.jpg     after image, RGB, same size
    root/{train,val,test}/OUT/<name>.jpg   change mask, 0 = no change, 255 = change

The masks are in ``OUT`` (not ``label`` as in LEVIR-CD) and, in the published archive, are
JPEG files, so their values scatter around 0 and 255 near change borders: read them with
:func:`read_cdd_mask` (a threshold), not with a strict 0/255 check. Re-saved copies in PNG
work the same way. A file is paired with its counterparts by its stem (``00000.jpg`` in ``A``
with ``00000.png`` in ``OUT`` is a pair).

.. versionadded:: 0.2
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from rsfm.data.change.common import ChangeDetectionDataModule, ChangePairRecord, complete_pairs
from rsfm.utils.errors import DataError
from rsfm.utils.registry import DATASETS

__all__ = ["CDD_FOLDERS", "CDD_SPLITS", "CDDDataModule", "cdd_pairs", "read_cdd_mask"]

#: CDD folder names: before, after, change mask.
CDD_FOLDERS = ("A", "B", "OUT")
#: CDD splits, one folder each under the root.
CDD_SPLITS = ("train", "val", "test")
#: File extensions (lower case) listed as CDD images; matching is case-insensitive.
CDD_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp"})


def _cdd_split_root(root: Path, split: str) -> Path:
    """``root/split``, or ``root/Real/subset/split`` when ``root`` is the unpacked archive."""
    direct = root / split
    if not direct.is_dir() and (root / "Real" / "subset" / split).is_dir():
        return root / "Real" / "subset" / split
    return direct


def _stems(folder: Path) -> dict[str, Path]:
    """Image files of ``folder`` by stem; hidden files (``.DS_Store``, ``._x.jpg``) are skipped."""
    found: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if not p.is_file() or p.name.startswith(".") or p.suffix.lower() not in CDD_EXTENSIONS:
            continue
        if p.stem in found:
            raise ValueError(f"{folder}: two images share the name {p.stem!r}: {found[p.stem].name}, {p.name}")
        found[p.stem] = p
    return found


def cdd_pairs(root: str | os.PathLike[str], split: str) -> list[ChangePairRecord]:
    """List the complete (before, after, mask) triplets of one CDD split, sorted by name.

    Args:
        root: folder holding ``train/``, ``val/`` and ``test/``, each with ``A/``, ``B/`` and
            ``OUT/`` (see the module docstring); the unpacked ``ChangeDetectionDataset`` folder
            is accepted too (its ``Real/subset`` is used).
        split: ``"train"``, ``"val"`` or ``"test"``.

    Returns:
        One :class:`ChangePairRecord` per pair, ``name`` = the shared file stem, ``image_a`` =
        ``A/<name>.*``, ``image_b`` = ``B/<name>.*``, ``mask`` = ``OUT/<name>.*``; sorted by name.

    Raises:
        ValueError: on an unknown ``split``; if two files of a folder share a stem.
        DataError: (a ValueError) naming the split folder, if files lack a counterpart in
            another folder (the first five are named) or the split holds no images.
        FileNotFoundError: naming the missing folder, if the split folder or one of its
            ``A``, ``B``, ``OUT`` folders does not exist.

    """
    if split not in CDD_SPLITS:
        raise ValueError(f"CDD split must be one of {CDD_SPLITS}, got {split!r}")
    root = Path(root)
    split_root = _cdd_split_root(root, split)
    if not split_root.is_dir():
        raise FileNotFoundError(f"CDD split folder {split_root} not found; expected {root}/{{train,val,test}}/")
    found: dict[str, dict[str, Path]] = {}
    for folder in CDD_FOLDERS:
        d = split_root / folder
        if not d.is_dir():
            raise FileNotFoundError(
                f"CDD folder {d} not found; expected {split_root}/{{A,B,OUT}} (change masks are in OUT)"
            )
        found[folder] = _stems(d)
    a, b, out = (found[f] for f in CDD_FOLDERS)
    return [ChangePairRecord(name, a[name], b[name], out[name]) for name in complete_pairs(split_root, found, ".*")]


def read_cdd_mask(path: str | os.PathLike[str], threshold: int = 128) -> Tensor:
    """Read a CDD change mask (``OUT/<name>.jpg``) as a binary mask.

    The published masks are 8-bit JPEGs of 0 (no change) and 255 (change); compression leaves
    values in between near change borders, so a pixel is change when its grey value is at least
    ``threshold``. RGB files are converted to grey first (ITU-R 601-2 luma, PIL's ``"L"``).

    Args:
        path: mask image (JPEG, PNG...).
        threshold: grey value in [1, 255] from which a pixel counts as change.

    Returns:
        ``(H, W)`` int64, 1 = change, 0 = no change.

    Raises:
        ValueError: if ``threshold`` is outside [1, 255].
        FileNotFoundError: if the file does not exist.

    """
    if not 1 <= threshold <= 255:
        raise ValueError(f"threshold must lie in [1, 255], got {threshold}")
    with Image.open(Path(path)) as img:
        a = np.asarray(img.convert("L"))
    return torch.from_numpy((a >= threshold).astype(np.int64))


@DATASETS.register
class CDDDataModule(ChangeDetectionDataModule):
    """CDD's season-varying subset: ``{train,val,test}/{A,B,OUT}``, JPEG masks read by threshold.

    Args:
        root: the ``subset`` folder (or the unpacked archive holding ``Real/subset``).
        train_split: training folder name.
        val_split: validation folder name, or None (no validation).
        test_split: test folder name.
        **kwargs: :class:`~rsfm.data.change.common.ChangeDetectionDataModule` options.
    """

    def __init__(
        self,
        root: str,
        train_split: str = "train",
        val_split: str | None = "val",
        test_split: str = "test",
        **kwargs: Any,
    ) -> None:
        super().__init__(root, **kwargs)
        self.splits = {"train": train_split, "val": val_split, "test": test_split}

    def split_records(self) -> dict[str, list[ChangePairRecord]]:
        """The pairs of the three folders."""
        out = {}
        for key, name in self.splits.items():
            try:
                out[key] = cdd_pairs(self.root, name) if name is not None else []
            except (FileNotFoundError, ValueError) as err:
                raise DataError(f"data.{key}_split: {err}") from None
        return out

    def read_mask(self, path: Path) -> Tensor:
        """JPEG-tolerant change mask (grey value >= 128 → change)."""
        return read_cdd_mask(path)
