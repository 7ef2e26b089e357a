"""DOTA ``labelTxt`` layout (Xia et al., CVPR 2018): ``images/<id>.png`` + ``labelTxt/<id>.txt``.

Read here as horizontal boxes (the hull of each oriented polygon, kept in
``meta["polygons"]``). Splits are folders under the root holding ``images/`` and
``labelTxt/`` (``"."``: the root itself), DOTA's ``train``/``val`` release layout.

.. versionadded:: 0.2
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rsfm.data.detection.common import IMAGE_SUFFIXES, DetectionDataModule, DetectionRecord, class_index, make_record
from rsfm.utils.registry import DATASETS

__all__ = ["DOTADataModule", "DOTA_V1_CLASSES", "dota_records", "parse_dota_txt"]

DOTA_V1_CLASSES = (
    "plane",
    "baseball-diamond",
    "bridge",
    "ground-track-field",
    "small-vehicle",
    "large-vehicle",
    "ship",
    "tennis-court",
    "basketball-court",
    "storage-tank",
    "soccer-ball-field",
    "roundabout",
    "harbor",
    "swimming-pool",
    "helicopter",
)


def _polygon_area(xy: np.ndarray) -> float:
    """Shoelace area (pixels²) of a ``(4, 2)`` polygon."""
    x, y = xy[:, 0], xy[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def parse_dota_txt(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read one DOTA v1 ``labelTxt`` file as horizontal boxes.

    Lines are ``x1 y1 x2 y2 x3 y3 x4 y4 class difficulty``, optionally preceded by the
    ``imagesource:<name>`` and ``gsd:<metres per pixel>`` header lines of DOTA v1.0 (v1.5
    files have none). The horizontal box is the min/max of the four corners. Degenerate
    polygons (zero area, e.g. all four corners on one line, written with difficulty 2 in the
    DOTA devkit) are dropped and counted.

    Args:
        path: a ``labelTxt/<id>.txt`` file.

    Returns:
        ``names`` (list of N class names), ``boxes`` ``(N, 4)`` float32 xyxy pixels,
        ``polygons`` ``(N, 4, 2)`` float32, ``difficult`` ``(N,)`` bool (difficulty ≥ 1),
        ``gsd`` (float metres per pixel, or None), ``imagesource`` (str or None) and
        ``num_degenerate`` (int, polygons dropped).

    Raises:
        ValueError: on a line that is neither a header nor a 10-field object line.
    """
    path = Path(path)
    names, polys, difficult = [], [], []
    gsd, source, degenerate = None, None, 0
    for n, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line:
            continue
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() == "imagesource":
            source = value.strip()
            continue
        if sep and key.strip().lower() == "gsd":
            v = value.strip()
            gsd = float(v) if v and v.lower() not in ("none", "null") else None
            continue
        parts = line.split()
        if len(parts) not in (9, 10):
            raise ValueError(f"{path}:{n}: expected 'x1 y1 ... x4 y4 class [difficult]', got {line!r}")
        try:
            xy = np.asarray([float(v) for v in parts[:8]], dtype=np.float32).reshape(4, 2)
            diff = int(parts[9]) if len(parts) == 10 else 0
        except ValueError:
            raise ValueError(f"{path}:{n}: non-numeric coordinates or difficulty in {line!r}") from None
        if _polygon_area(xy) <= 0.0:
            degenerate += 1
            continue
        names.append(parts[8])
        polys.append(xy)
        difficult.append(diff >= 1)
    polygons = np.asarray(polys, dtype=np.float32).reshape(-1, 4, 2)
    boxes = np.concatenate([polygons.min(1), polygons.max(1)], axis=1) if len(polys) else np.zeros((0, 4), np.float32)
    return {
        "names": names,
        "boxes": boxes.astype(np.float32),
        "polygons": polygons,
        "difficult": np.asarray(difficult, dtype=bool),
        "gsd": gsd,
        "imagesource": source,
        "num_degenerate": degenerate,
    }


def dota_records(
    root: str | os.PathLike[str], classes: Sequence[str] | None = DOTA_V1_CLASSES
) -> tuple[list[DetectionRecord], list[str], int]:
    """Records of a DOTA folder (``images/<id>.png``, ``labelTxt/<id>.txt``), horizontal boxes.

    Args:
        root: folder holding ``images/`` and ``labelTxt/``.
        classes: class names in index order; default DOTA v1.0's 15; ``None``: the sorted
            names found.

    Returns:
        The records sorted by id, the class names and the number of degenerate polygons
        dropped (see :func:`parse_dota_txt`).

    Raises:
        FileNotFoundError: if a folder or an image is missing.
        ValueError: on a malformed line or a class outside ``classes``.
    """
    root = Path(root)
    labels_dir = root / "labelTxt"
    if not labels_dir.is_dir():
        raise FileNotFoundError(f"DOTA label folder not found: {labels_dir}")
    parsed = [(p, parse_dota_txt(p)) for p in sorted(labels_dir.glob("*.txt"))]
    if classes is None:
        classes = sorted({n for _, a in parsed for n in a["names"]})
    classes = list(classes)
    records, dropped = [], 0
    for txt, ann in parsed:
        candidates = [root / "images" / f"{txt.stem}{s}" for s in IMAGE_SUFFIXES]
        image = next((p for p in candidates if p.is_file()), None)
        if image is None:
            raise FileNotFoundError(f"no image for {txt.name} in {root / 'images'}")
        labels = [class_index(n, classes, txt) for n in ann["names"]]
        meta = {"gsd": ann["gsd"], "imagesource": ann["imagesource"], "num_degenerate": ann["num_degenerate"]}
        records.append(make_record(image, ann["boxes"], labels, ann["difficult"], txt.stem, meta))
        dropped += ann["num_degenerate"]
    return records, classes, dropped


@DATASETS.register
class DOTADataModule(DetectionDataModule):
    """A DOTA-layout set read as horizontal boxes; splits are folders (``"."``: the root).

    Args:
        root: dataset folder.

    The other options are those of :class:`~rsfm.data.detection.common.DetectionDataModule`
    (``train_split`` defaults to ``"."``; ``classes`` to DOTA v1.0's 15).
    """

    default_train_split = "."

    def load_split(self, name: str, classes: list[str] | None) -> tuple[list[DetectionRecord], list[str]]:
        """Records of the folder ``root/<name>``.

        Degenerate polygons are counted in each record's ``meta['num_degenerate']`` (totalled
        in :attr:`num_degenerate` by :meth:`splits`).
        """
        records, found, _ = dota_records(self.root / name, DOTA_V1_CLASSES if classes is None else classes)
        return records, found
