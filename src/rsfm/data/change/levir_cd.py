"""LEVIR-CD (Chen & Shi, Remote Sensing 2020): building change in 0.5 m Google Earth pairs.

Layout: ``root/A/<name>.png`` (before), ``root/B/<name>.png`` (after), ``root/label/<name>.png``
(0 = no change, 255 = change). The published release splits it into
``root/{train,val,test}/{A,B,label}``; with that layout the published split is used, otherwise
a seeded split by file (:func:`rsfm.data.splits.split_names`). WHU-CD and most CD sets cropped
for deep learning use the same layout.

.. versionadded:: 0.2
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rsfm.data.change.common import ChangeDetectionDataModule, ChangePairRecord, find_pairs
from rsfm.data.splits import check_fraction, split_names
from rsfm.utils.errors import DataError
from rsfm.utils.registry import DATASETS

__all__ = ["LEVIRCDDataModule"]


@DATASETS.register
class LEVIRCDDataModule(ChangeDetectionDataModule):
    """LEVIR-CD layout: ``A/``, ``B/``, ``label/`` (or published ``train/val/test`` sub-folders).

    Args:
        root: dataset folder.
        train_split: sub-folder of the training pairs (published layout), or None.
        val_split: sub-folder of the validation pairs, or None.
        test_split: sub-folder of the test pairs, or None.
        val_fraction: share of pairs for validation when the splits are drawn by seed.
        test_fraction: share of pairs for testing, likewise.
        split_seed: seed of that split.
        **kwargs: :class:`~rsfm.data.change.common.ChangeDetectionDataModule` options.

    With all three ``*_split`` None the published ``train``/``val``/``test`` sub-folders are
    used when present, else the seeded split of ``root``.

    Raises:
        DataError: if ``root`` is not a folder (see the base class).
        ValueError: naming ``data.val_fraction``/``data.test_fraction`` if one is outside [0, 1).
    """

    folders = ("A", "B", "label")

    def __init__(
        self,
        root: str,
        train_split: str | None = None,
        val_split: str | None = None,
        test_split: str | None = None,
        val_fraction: float = 0.2,
        test_fraction: float = 0.2,
        split_seed: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(root, **kwargs)
        check_fraction(float(val_fraction), "data.val_fraction")
        check_fraction(float(test_fraction), "data.test_fraction")
        self.splits = {"train": train_split, "val": val_split, "test": test_split}
        self.val_fraction, self.test_fraction = float(val_fraction), float(test_fraction)
        self.split_seed = int(split_seed)

    def _pair_records(self, folder: Path, names: list[str]) -> list[ChangePairRecord]:
        a, b, m = self.folders
        return [ChangePairRecord(n, folder / a / n, folder / b / n, folder / m / n) for n in names]

    def split_records(self) -> dict[str, list[ChangePairRecord]]:
        """The named (or published) splits, else a seeded split of ``root``.

        Raises:
            DataError: if a named split's folder is missing or incomplete, ``train_split`` or
                ``test_split`` is missing while another split is named, or the fractions leave
                no training pair (naming ``data.val_fraction`` and ``data.test_fraction``).
        """
        named = dict(self.splits)
        if all(v is None for v in named.values()) and all(
            (self.root / s / self.folders[0]).is_dir() for s in ("train", "val", "test")
        ):
            named = {s: s for s in ("train", "val", "test")}
        if any(v is not None for v in named.values()):
            missing = [k for k, v in named.items() if v is None and k != "val"]
            if missing:
                raise DataError(f"data.{missing[0]}_split is needed when the other splits are named")
            return {
                k: self._pair_records(self.root / v, find_pairs(self.root / v, self.folders)) if v is not None else []
                for k, v in named.items()
            }
        found = find_pairs(self.root, self.folders)
        try:
            names = split_names(found, self.val_fraction, self.test_fraction, self.split_seed)
        except ValueError as err:
            raise DataError(
                f"data.val_fraction and data.test_fraction cannot split the {len(found)} pairs of {self.root}: {err}"
            ) from None
        return {k: self._pair_records(self.root, v) for k, v in names.items()}
