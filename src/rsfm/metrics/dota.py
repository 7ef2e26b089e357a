"""DOTA-style detection AP of oriented boxes: VOC AP at a rotated (polygon) IoU of 0.5.

DOTA (Xia et al., "DOTA: A Large-scale Dataset for Object Detection in Aerial Images", CVPR
2018, §6), DIOR-R (Cheng et al., "Anchor-free Oriented Proposal Generator for Object Detection",
TGRS 2022) and FAIR1M report, for oriented boxes, the PASCAL VOC protocol of
:mod:`rsfm.metrics.voc` with the IoU of two boxes measured on their polygons: the area of the
intersection of the two quadrilaterals over the area of their union. Papers on DOTA v1.0 and
DIOR-R (and mmrotate's ``DOTAMetric`` by default) use VOC2007's 11-point AP; ``use_07_metric=
False`` gives the all-point AP.

Ground truth may be given as the dataset's own quadrilaterals (``polygons``, ``(N, 8)``: DOTA's
labels are four clicked corners, not always a rectangle), which is what the DOTA devkit scores
against, or as oriented boxes (``obbs``, ``(N, 5)`` ``(cx, cy, w, h, θ)``, pixels, radians).
Detections likewise. The IoU is exact (shapely's polygon intersection, double precision);
pairs whose enclosing horizontal boxes do not overlap are 0 without computing it, as the
devkit's pre-filter does. A self-intersecting quadrilateral (corners in "bow-tie" order) is
replaced by its convex hull. Here rsfm departs from the devkit, whose ``polyiou`` sums signed
areas: a square against its own corners in crossed order has IoU 1 in rsfm and 0 in the
devkit. A rotated box (``obbs``) is never self-intersecting, so this only concerns
quadrilaterals given as corners.

Difficult objects are handled as the DOTA devkit's ``dota_evaluation_task1.py`` does: a
detection whose best match is a difficult object is neither a true nor a false positive, and
difficult objects do not count among the positives. The differences from the devkit listed in
:mod:`rsfm.metrics.voc` (a match needs ``IoU >=`` the threshold, where the devkit uses ``>``;
exact 11 recall points ``i / 10``, where its ``np.arange`` makes 0.3, 0.6 and 0.7 slightly
larger; a stable sort of equal scores) apply here too. Apart from them, and for simple
(not self-intersecting) quadrilaterals, the AP equals the devkit's to 1e-6
(``tests/metrics/test_dota.py`` checks it against the real devkit's printed figures on real
DOTA and HIT-UAV annotations).

.. versionadded:: 0.3
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from rsfm.metrics.voc import ArrayLike, VOCMeanAP, _boxes, _finite_boxes

__all__ = ["DOTAMeanAP", "polygon_iou"]


def _convex_if_invalid(polys: Any) -> Any:
    """Shapely polygons, self-intersecting ones replaced by their convex hull."""
    import shapely

    bad = ~shapely.is_valid(polys)
    if bad.any():
        polys = polys.copy()
        polys[bad] = shapely.convex_hull(polys[bad])
    return polys


def _to_shapely(polys: np.ndarray) -> Any:
    """``(K, 8)`` float64 corner lists → array of ``K`` shapely polygons."""
    import shapely

    return _convex_if_invalid(shapely.polygons(polys.reshape(-1, 4, 2)))


def polygon_iou(polys1: ArrayLike, polys2: ArrayLike, allowed: np.ndarray | None = None) -> np.ndarray:
    """Pairwise IoU of quadrilaterals, exact (shapely, double precision).

    Args:
        polys1: ``(M, 8)`` corners ``x1 y1 ... x4 y4``, pixels.
        polys2: ``(N, 8)`` likewise.
        allowed: optional ``(M, N)`` bool; pairs that are False are not computed (IoU 0).

    Returns:
        ``(M, N)`` float64 IoU in ``[0, 1]``; 0 for pairs whose enclosing horizontal boxes
        do not overlap, and where the union has no area.

    Raises:
        ValueError: if an input is not ``(K, 8)``.
    """
    import shapely

    a, b = _boxes(polys1, "polys1", 8), _boxes(polys2, "polys2", 8)
    iou = np.zeros((len(a), len(b)), dtype=np.float64)
    if len(a) == 0 or len(b) == 0:
        return iou
    lo_a, hi_a = a.reshape(-1, 4, 2).min(1), a.reshape(-1, 4, 2).max(1)
    lo_b, hi_b = b.reshape(-1, 4, 2).min(1), b.reshape(-1, 4, 2).max(1)
    overlap = (np.minimum(hi_a[:, None], hi_b[None]) - np.maximum(lo_a[:, None], lo_b[None]) >= 0).all(-1)
    if allowed is not None:
        overlap &= np.asarray(allowed, dtype=bool)
    i, j = np.nonzero(overlap)
    if len(i) == 0:
        return iou
    pa, pb = _to_shapely(a), _to_shapely(b)
    inter = shapely.area(shapely.intersection(pa[i], pb[j]))
    union = shapely.area(pa)[i] + shapely.area(pb)[j] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        iou[i, j] = np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)
    return iou


class DOTAMeanAP(VOCMeanAP):
    """Accumulate oriented detections and ground truth over images; DOTA-style AP per class and mAP.

    Same interface and results layout as :class:`~rsfm.metrics.voc.VOCMeanAP` (``update``,
    ``compute(world_gather=...)``, ``state``/``merge`` for DDP, ``reset``; ``mAP50`` and
    ``per_class`` in percent), with oriented boxes and the polygon IoU of :func:`polygon_iou`.

    Each prediction and target dict gives its boxes as ``polygons`` ``(N, 8)`` (corners,
    pixels) or ``obbs`` ``(N, 5)`` ``(cx, cy, w, h, θ)`` (pixels, radians; any angle
    convention); ``polygons`` wins when both are present (the devkit scores against the
    annotated quadrilaterals).

    Args:
        class_names: the ``K`` class names, in label order.
        iou_threshold: minimum rotated IoU of a match, in ``(0, 1]``.
        use_07_metric: VOC2007 11-point AP (default, as DOTA v1.0 and DIOR-R papers and
            mmrotate's ``DOTAMetric`` report) instead of the all-point AP.
        max_detections: None keeps every detection (DOTA scenes hold 1,000+ objects); an int
            keeps the highest-scoring ones of each image over all classes.

    Raises:
        ValueError: as :class:`~rsfm.metrics.voc.VOCMeanAP`; from ``update``, naming the
            image and key, if an image gives neither ``polygons`` nor ``obbs`` or a wrong shape.
    """

    def __init__(
        self,
        class_names: Sequence[str],
        iou_threshold: float = 0.5,
        use_07_metric: bool = True,
        max_detections: int | None = None,
    ) -> None:
        super().__init__(class_names, iou_threshold, use_07_metric, max_detections, pixel_offset=0.0)

    def _read_boxes(self, d: dict[str, Any], what: str) -> np.ndarray:
        """``(N, 8)`` float64 polygons of one image, from ``polygons`` or converted from ``obbs``.

        Raises:
            ValueError: naming ``what`` and the field if both keys are missing, the shape is
                wrong or a value is NaN or infinite.
        """
        if d.get("polygons") is not None:
            return _finite_boxes(d["polygons"], f"{what}['polygons']", 8)
        if d.get("obbs") is None:
            raise ValueError(f"{what} lacks ['polygons'] or ['obbs']")
        import torch

        from rsfm.ops.obb import obb2poly

        obbs = _finite_boxes(d["obbs"], f"{what}['obbs']", 5)
        return obb2poly(torch.from_numpy(obbs)).numpy().reshape(-1, 8)

    def _iou(self, det: np.ndarray, gt: np.ndarray, allowed: np.ndarray | None) -> np.ndarray:
        """``(M, N)`` polygon IoU of one image's detections and ground truth."""
        return polygon_iou(det, gt, allowed)
