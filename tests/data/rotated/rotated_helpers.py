"""Helpers of the tests/data/rotated modules: real DOTA annotations, layouts built from real files.

Every folder built here holds real pixels and real annotations from ``../shared/datasets``
(symlinks, copies or the same objects written in another published format).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from rsfm.data.detection.dota import parse_dota_txt
from rsfm.ops.obb import obb2poly

#: the real DOTA scenes with their sizes (height, width) in pixels
DOTA_SIZES = {"P0003": (1023, 1147), "P0004": (1464, 824), "P0005": (977, 884)}


def link(src: Path, dst: Path) -> Path:
    """Symlink ``dst`` -> ``src`` (parents created)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.symlink_to(src)
    return dst


def dota_objects(dota: Path, rid: str) -> dict:
    """The parsed real DOTA label file of ``rid`` (polygons ``(N, 8)`` float32 pixels)."""
    ann = parse_dota_txt(dota / "labelTxt" / f"{rid}.txt")
    ann["polygons"] = ann["polygons"].reshape(-1, 8)
    return ann


def corner_distance(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> float:
    """Largest distance from a corner of one quadrilateral to the nearest corner of the other, over rows.

    Zero when the rows describe the same 4 corners in any order (``(N, 8)`` polygons or
    ``(N, 5)`` oriented boxes, which are turned into polygons first).
    """
    a, b = (torch.as_tensor(np.asarray(x), dtype=torch.float64) for x in (a, b))
    a, b = (obb2poly(x) if x.shape[-1] == 5 else x for x in (a, b))
    if not len(a) and not len(b):
        return 0.0
    d = torch.cdist(a.reshape(-1, 4, 2), b.reshape(-1, 4, 2))
    return float(torch.maximum(d.amin(-1).amax(), d.amin(-2).amax()))


def assert_min_area_rects(obbs: torch.Tensor, polygons: np.ndarray, tol: float = 1e-2) -> None:
    """Each box encloses its quadrilateral (to ``tol`` pixels) with the least area (to 0.1 %).

    A quadrilateral whose two candidate rectangles have (nearly) equal areas may get either,
    so boxes are compared by this property rather than by their corners.
    """
    import shapely

    assert len(obbs) == len(polygons)
    for box, poly in zip(obbs.double(), polygons, strict=True):
        quad = shapely.convex_hull(shapely.multipoints(np.asarray(poly, np.float64).reshape(4, 2)))
        rect = shapely.Polygon(obb2poly(box[None])[0].reshape(4, 2).tolist())
        assert rect.buffer(tol).contains(quad)
        assert rect.area <= shapely.oriented_envelope(quad).area * 1.001 + tol
