"""DIOR-R (Cheng et al., IEEE TGRS 2022) as oriented boxes, in the layout it ships.

Layout::

    <root>/JPEGImages-trainval/<id>.jpg
    <root>/JPEGImages-test/<id>.jpg
    <root>/Annotations/Oriented Bounding Boxes/<id>.xml   # <robndbox> x_left_top .. y_left_bottom
    <root>/ImageSets/Main/{train,val,test}.txt            # ids, one per line (CRLF or LF)

23,463 images of 800 × 800 pixels, DIOR's 20 classes (:data:`DIOR_CLASSES`). The files are
read by :func:`rsfm.data.detection.dior.dior_records` (``oriented=True``), whose corner
polygons become the records' polygons; the ``<angle>`` element of the XML is not used (the
corners define the box). Zero-area polygons are dropped and counted.

.. versionadded:: 0.3
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rsfm.data.detection.dior import DIOR_CLASSES, dior_records
from rsfm.data.rotated.common import RotatedDetectionDataModule, RotatedRecord, make_rotated_record
from rsfm.utils.registry import DATASETS

__all__ = ["DIOR_CLASSES", "DIORRDataModule", "dior_r_records"]


def dior_r_records(
    root: str | os.PathLike[str], image_set: str, classes: Sequence[str] = DIOR_CLASSES
) -> list[RotatedRecord]:
    """Oriented records of the ids of ``ImageSets/Main/<image_set>.txt`` in a DIOR-R folder.

    Args:
        root: the DIOR-R folder (see the module docstring).
        image_set: name of the id list: ``'train'``, ``'val'``, ``'test'`` (or ``'trainval'``
            where such a list exists).
        classes: class names in index order; default DIOR's 20, matched exactly, else
            case-insensitively.

    Returns:
        One record per id in the list's order: ``image`` (in ``JPEGImages-trainval`` or
        ``JPEGImages-test``), ``polygons`` ``(N, 8)`` float32 corners in the order left-top,
        right-top, right-bottom, left-bottom (pixels), ``labels``, ``difficult``, ``id`` and
        ``meta`` with ``size`` (``(width, height)`` from the XML, or None) and ``num_degenerate``.

    Raises:
        FileNotFoundError: if the image set, an annotation or an image is missing (named).
        ValueError: naming the file, on malformed XML, an incomplete ``<robndbox>`` or a class
            outside ``classes``.
    """
    out = []
    for r in dior_records(Path(root), image_set, classes, oriented=True):
        meta = {"size": r.meta.get("size"), "num_degenerate": r.meta.get("num_degenerate", 0)}
        out.append(make_rotated_record(r.image, r.meta["polygons"], r.labels, r.difficult, r.id, meta))
    return out


@DATASETS.register
class DIORRDataModule(RotatedDetectionDataModule):
    """DIOR-R as oriented boxes; splits are ``ImageSets/Main/<name>.txt`` names.

    The benchmark trains on ``train`` + ``val`` (a ``trainval`` list where one exists) and
    tests on ``test``; the defaults select checkpoints on ``val`` instead.

    Args:
        root: folder holding ``JPEGImages-trainval``, ``JPEGImages-test``, ``Annotations`` and
            ``ImageSets``.
        train_split: image-set name of the training split.
        val_split: image-set name of the validation split (None: drawn by ``val_fraction``).
        test_split: image-set name of the test split (None: drawn by ``test_fraction``).
        **kwargs: :class:`~rsfm.data.rotated.common.RotatedDetectionDataModule` options
            (``classes`` defaults to :data:`DIOR_CLASSES`).
    """

    def __init__(
        self,
        root: str,
        train_split: str | None = "train",
        val_split: str | None = "val",
        test_split: str | None = "test",
        **kwargs: Any,
    ) -> None:
        super().__init__(root, train_split=train_split, val_split=val_split, test_split=test_split, **kwargs)

    def load_split(self, name: str, classes: list[str] | None) -> tuple[list[RotatedRecord], list[str]]:
        """Records of ``ImageSets/Main/<name>.txt``."""
        names = list(classes) if classes is not None else list(DIOR_CLASSES)
        return dior_r_records(self.root, name, names), names
