"""PASCAL VOC-style detection average precision at one IoU threshold (AP50 by default).

Remote-sensing detection benchmarks (DIOR, DIOR-R, DOTA, NWPU VHR-10) report the PASCAL VOC
AP at IoU 0.5 rather than COCO's 101-point AP (:mod:`rsfm.metrics.coco`). This module
implements that protocol for horizontal boxes.

The protocol, per class (Everingham et al., "The PASCAL Visual Object Classes (VOC)
Challenge", IJCV 2010, §4.2; used unchanged by DOTA, Xia et al., "DOTA: A Large-scale Dataset
for Object Detection in Aerial Images", CVPR 2018, §6):

1. The detections of the class over all images are ranked by decreasing score. The sort is
   stable: equal scores keep the input order (images in the order they were added, then the
   order within an image), as the official MATLAB devkit's ``sort`` does.
2. In rank order, each detection is compared with the ground-truth boxes of its class in its
   own image and takes the one of highest IoU (the first one on ties). If that IoU is at least
   the threshold and the box is *difficult*, the detection is ignored (neither a true nor a
   false positive); if the box is not difficult and still unmatched, the detection is a true
   positive and the box becomes matched; if it is already matched, the detection is a false
   positive (a duplicate). An IoU below the threshold, or an image without ground truth of
   the class, makes a false positive.
3. Precision and recall follow the ranked true/false positives; the positives are the
   non-difficult ground-truth boxes (difficult boxes are neither required nor penalised).
4. AP is either VOC2007's 11-point interpolated AP or VOC2010+'s all-point AP (the area under
   the monotone precision envelope), see :func:`voc_ap`.

Coordinates are continuous pixel coordinates: a box ``(x1, y1, x2, y2)`` is ``x2 - x1`` pixels
wide and ``(0, 0, W, H)`` covers a ``W × H`` image. The legacy VOC devkit and its Python ports
(py-faster-rcnn's ``voc_eval.py``, the DOTA devkit) treat coordinates as inclusive pixel
indices and add 1 to every width and height; ``pixel_offset=1.0`` reproduces that.

Known differences from the common Python implementations (py-faster-rcnn's ``voc_eval.py``,
the DOTA devkit's ``dota_evaluation_task*.py``, MMDetection's ``eval_map``):

* A match needs IoU ``>=`` the threshold, as in the official MATLAB devkit (``VOCevaldet.m``),
  MMDetection and COCO; py-faster-rcnn and the DOTA devkit use ``>`` (differs only when an
  IoU equals the threshold exactly).
* The 11 recall points are exactly ``i / 10``. Those implementations build them with
  ``np.arange``, whose 4th, 7th and 8th values are 0.30000000000000004, 0.6000000000000001
  and 0.7000000000000001, so a curve point at a recall of exactly 0.3, 0.6 or 0.7 (e.g. 3
  of 5 objects found) does not count for that recall point there, and their 11-point AP can
  be lower (by at most 1/11 per affected point). Frequent with few objects per class, rare
  on full benchmarks; the all-point AP is unaffected.
* Equal scores keep the input order; ``np.argsort``'s default sort leaves their order
  unspecified.

Apart from these, results agree with the DOTA devkit's to float precision (with
``pixel_offset=1.0``); see ``tests/metrics/test_voc.py``.

Units: :func:`voc_ap` and :func:`voc_evaluate_class` work with fractions in ``[0, 1]`` like the
precision and recall they take; :meth:`VOCMeanAP.compute` reports percentages (0-100).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

__all__ = [
    "VOCClassResult",
    "VOCMeanAP",
    "box_iou",
    "distributed_gather",
    "voc_ap",
    "voc_evaluate_class",
]

ArrayLike = np.ndarray | torch.Tensor | Sequence[Any]


def _as_numpy(x: ArrayLike | None, dtype: type | np.dtype, what: str) -> np.ndarray:
    """``x`` (numpy array, tensor on any device, or nested sequence) as a numpy array of ``dtype``."""
    if x is None:
        raise ValueError(f"{what} is missing")
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def _boxes(x: ArrayLike, what: str, width: int = 4) -> np.ndarray:
    """``x`` as a ``(N, width)`` float64 array (xyxy boxes by default); ValueError on any other shape."""
    a = _as_numpy(x, np.float64, what)
    if a.size == 0:
        return np.zeros((0, width), dtype=np.float64)
    if a.ndim != 2 or a.shape[1] != width:
        raise ValueError(f"{what} must have shape (N, {width}), got {tuple(a.shape)}")
    return a


def _finite_boxes(x: ArrayLike, what: str, width: int = 4) -> np.ndarray:
    """:func:`_boxes`, and ValueError naming ``what`` and the first bad row if a coordinate is NaN or infinite."""
    a = _boxes(x, what, width)
    bad = ~np.isfinite(a).all(1)
    if bad.any():
        j = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{what} must hold finite coordinates; row {j} is {a[j].tolist()}")
    return a


def _vector(x: ArrayLike, dtype: type | np.dtype, n: int, what: str) -> np.ndarray:
    """``x`` as an ``(n,)`` array of ``dtype``; ValueError if its length is not ``n``."""
    a = _as_numpy(x, dtype, what).reshape(-1)
    if len(a) != n:
        raise ValueError(f"{what} has {len(a)} entries for {n} boxes")
    return a


# --------------------------------------------------------------------------- AP of a curve


def voc_ap(recall: ArrayLike, precision: ArrayLike, use_07_metric: bool) -> float:
    """Average precision of a precision/recall curve, VOC2007 11-point or VOC2010+ all-point.

    * 11-point (VOC2007): for each ``t`` in ``0, 0.1, ..., 1`` the interpolated precision is
      the highest precision at any recall ``>= t`` (0 if the curve never reaches ``t``); AP is
      the mean of these 11 values. The points are exactly ``i / 10`` (see the module
      docstring for the Python devkits' rounding).
    * All-point (VOC2010 onwards, DOTA, DIOR): the precision is replaced by its monotone
      envelope ``p_env(r) = max(precision at recall >= r)``, and AP is the area under this
      step curve, ``sum_k (r_k - r_{k-1}) * p_env(r_k)`` over the curve's points with
      ``r_0 = 0``. Recall beyond the last point contributes nothing.

    Computed in float64 (Everingham et al., IJCV 2010, §4.2; the all-point form is that of the
    VOC2010+ devkit).

    Args:
        recall: ``(D,)`` recall after each ranked detection, a fraction in ``[0, 1]``,
            non-decreasing; numpy array, tensor (any device) or sequence.
        precision: ``(D,)`` precision at the same points, fractions in ``[0, 1]``.
        use_07_metric: True for the 11-point AP, False for the all-point AP.

    Returns:
        AP as a fraction in ``[0, 1]`` (0.0 for an empty curve).

    Raises:
        ValueError: if the inputs are not 1-D arrays of one length, hold NaN, or ``recall``
            decreases.
    """
    rec = _as_numpy(recall, np.float64, "recall")
    prec = _as_numpy(precision, np.float64, "precision")
    if rec.ndim != 1 or rec.shape != prec.shape:
        raise ValueError(f"recall and precision must be 1-D of one length, got {rec.shape} and {prec.shape}")
    if np.isnan(rec).any() or np.isnan(prec).any():
        raise ValueError("recall and precision must not hold NaN")
    if len(rec) == 0:
        return 0.0
    if (np.diff(rec) < 0).any():
        raise ValueError("recall must be non-decreasing along the ranked detections")
    if use_07_metric:
        total = 0.0
        for t in np.arange(11, dtype=np.float64) / 10.0:
            reached = rec >= t
            total += float(prec[reached].max()) if reached.any() else 0.0
        return total / 11.0
    # envelope: the best precision at this recall or any later point
    envelope = np.maximum.accumulate(prec[::-1])[::-1]
    steps = np.diff(np.concatenate(([0.0], rec)))
    return float(np.sum(steps * envelope))


# --------------------------------------------------------------------------- IoU


def box_iou(boxes1: ArrayLike, boxes2: ArrayLike, pixel_offset: float = 0.0) -> np.ndarray:
    """Pairwise IoU of horizontal boxes in pixel coordinates.

    A box ``(x1, y1, x2, y2)`` measures ``(x2 - x1 + pixel_offset) × (y2 - y1 + pixel_offset)``
    pixels; the intersection width is ``max(0, min(x2) - max(x1) + pixel_offset)``, likewise
    its height. ``pixel_offset=0`` is the continuous convention (no "+1"); ``1`` is the legacy
    VOC/DOTA devkits' inclusive pixel indices.

    Args:
        boxes1: ``(N, 4)`` xyxy, pixels.
        boxes2: ``(M, 4)`` xyxy, pixels.
        pixel_offset: added to every width and height, see above.

    Returns:
        ``(N, M)`` float64 IoU in ``[0, 1]``; 0 where the union is empty.

    Raises:
        ValueError: if an input is not ``(K, 4)``.
    """
    a, b = _boxes(boxes1, "boxes1"), _boxes(boxes2, "boxes2")
    off = float(pixel_offset)
    iw = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]) + off
    ih = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]) + off
    inter = np.clip(iw, 0.0, None) * np.clip(ih, 0.0, None)
    area_a = (a[:, 2] - a[:, 0] + off) * (a[:, 3] - a[:, 1] + off)
    area_b = (b[:, 2] - b[:, 0] + off) * (b[:, 3] - b[:, 1] + off)
    union = area_a[:, None] + area_b[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)
    return iou


# --------------------------------------------------------------------------- one class


@dataclass
class VOCClassResult:
    """Evaluation of one class (see :func:`voc_evaluate_class`).

    The ranked arrays hold all ``D`` detections of the class in rank order; ``recall`` and
    ``precision`` hold one point per counted (true or false positive) detection, ignored ones
    left out (they would only repeat the previous point).

    Attributes:
        ap: AP as a fraction in ``[0, 1]``; None when the class has no non-difficult ground
            truth.
        num_positives: non-difficult ground-truth boxes.
        num_detections: ``D``, detections evaluated.
        scores: ``(D,)`` float64 scores in rank order.
        image_index: ``(D,)`` int64 image of each ranked detection.
        tp: ``(D,)`` bool, true positives.
        fp: ``(D,)`` bool, false positives (misses and duplicates).
        ignored: ``(D,)`` bool, detections matched to a difficult box.
        recall: ``(C,)`` float64 cumulative recall over the ``C`` counted detections (NaN when
            ``num_positives`` is 0).
        precision: ``(C,)`` float64 cumulative precision over the counted detections.
    """

    ap: float | None
    num_positives: int
    num_detections: int
    scores: np.ndarray
    image_index: np.ndarray
    tp: np.ndarray
    fp: np.ndarray
    ignored: np.ndarray
    recall: np.ndarray
    precision: np.ndarray


def voc_evaluate_class(
    det_boxes: Sequence[ArrayLike],
    det_scores: Sequence[ArrayLike],
    gt_boxes: Sequence[ArrayLike],
    gt_difficult: Sequence[ArrayLike | None] | None = None,
    iou_threshold: float = 0.5,
    use_07_metric: bool = False,
    pixel_offset: float = 0.0,
) -> VOCClassResult:
    """VOC evaluation of one class over a set of images (protocol in the module docstring).

    Each detection's best box depends only on its own image, so the IoU matrices are computed
    image by image; the greedy pass is then done on the ranked detections of all images at once
    (see :func:`_rank_and_match`).

    Args:
        det_boxes: per image, ``(M_i, 4)`` xyxy pixels, the detections of this class.
        det_scores: per image, ``(M_i,)`` scores (any real scale; higher is more confident).
        gt_boxes: per image, ``(N_i, 4)`` xyxy pixels, the ground truth of this class.
        gt_difficult: per image, ``(N_i,)`` bool flags or None (no difficult box); None for
            all images.
        iou_threshold: minimum IoU of a match, in ``(0, 1]`` (a match needs ``IoU >=`` it).
        use_07_metric: 11-point (VOC2007) instead of all-point AP.
        pixel_offset: see :func:`box_iou` (0: continuous coordinates; 1: legacy devkits).

    Returns:
        A :class:`VOCClassResult`, AP as a fraction.

    Raises:
        ValueError: if the per-image lists differ in length, an array has the wrong shape or
            length, a score is NaN, or ``iou_threshold`` is outside ``(0, 1]``.
    """
    if not 0.0 < float(iou_threshold) <= 1.0:
        raise ValueError(f"iou_threshold must lie in (0, 1], got {iou_threshold}")
    n_images = len(gt_boxes)
    if gt_difficult is None:
        gt_difficult = [None] * n_images
    if not len(det_boxes) == len(det_scores) == n_images == len(gt_difficult):
        raise ValueError(
            f"per-image lists differ in length: {len(det_boxes)} det_boxes, {len(det_scores)} det_scores, "
            f"{n_images} gt_boxes, {len(gt_difficult)} gt_difficult"
        )
    boxes_d = [_boxes(b, f"det_boxes[{i}]") for i, b in enumerate(det_boxes)]
    scores_d = [
        _vector(s, np.float64, len(b), f"det_scores[{i}]")
        for i, (s, b) in enumerate(zip(det_scores, boxes_d, strict=True))
    ]
    boxes_g = [_boxes(b, f"gt_boxes[{i}]") for i, b in enumerate(gt_boxes)]
    diff_g = [
        np.zeros(len(b), dtype=bool) if d is None else _vector(d, bool, len(b), f"gt_difficult[{i}]")
        for i, (d, b) in enumerate(zip(gt_difficult, boxes_g, strict=True))
    ]
    if any(np.isnan(s).any() for s in scores_d):
        raise ValueError("det_scores must not hold NaN")
    num_positives = int(sum(int((~d).sum()) for d in diff_g))

    matches = [
        _best_matches(boxes_d[i], boxes_g[i], diff_g[i], pixel_offset, offset)
        for i, offset in enumerate(np.cumsum([0] + [len(b) for b in boxes_g])[:-1])
    ]
    return _rank_and_match(
        np.concatenate([np.zeros(0), *scores_d]),
        np.concatenate([np.zeros(0, np.int64), *[np.full(len(s), i, np.int64) for i, s in enumerate(scores_d)]]),
        *_concat_matches(matches),
        num_positives=num_positives,
        iou_threshold=float(iou_threshold),
        use_07_metric=use_07_metric,
    )


#: Empty (best IoU, best ground-truth id, best is difficult) arrays, the start of concatenations.
_EMPTY_MATCH = (np.zeros(0), np.zeros(0, np.int64), np.zeros(0, bool))


def _concat_matches(matches: Sequence[tuple[np.ndarray, ...]]) -> tuple[np.ndarray, ...]:
    """Concatenate the per-image outputs of :func:`_best_matches` (correct dtypes when empty)."""
    return tuple(np.concatenate([empty, *[m[k] for m in matches]]) for k, empty in enumerate(_EMPTY_MATCH))


def _best_matches(
    det_boxes: np.ndarray,
    gt_boxes: np.ndarray,
    gt_difficult: np.ndarray,
    pixel_offset: float,
    gt_offset: int,
    allowed: np.ndarray | None = None,
    iou_fn: Callable[[np.ndarray, np.ndarray, np.ndarray | None], np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each detection's best ground-truth box in one image.

    Args:
        det_boxes: ``(M, 4)`` xyxy pixels (or whatever ``iou_fn`` takes).
        gt_boxes: ``(N, 4)`` xyxy pixels (likewise).
        gt_difficult: ``(N,)`` bool.
        pixel_offset: see :func:`box_iou`.
        gt_offset: added to the box index, so that ids are unique over images.
        allowed: optional ``(M, N)`` bool, the pairs that may match (same class).
        iou_fn: ``(det, gt, allowed) -> (M, N)`` IoU (it may skip pairs that ``allowed`` rules
            out); None: :func:`box_iou` with ``pixel_offset``.

    Returns:
        ``(M,)`` float64 best IoU (-1 where no box is allowed), ``(M,)`` int64 id of that box
        (``gt_offset`` + its index; the first on ties) and ``(M,)`` bool, whether it is difficult.
    """
    m = len(det_boxes)
    if m == 0 or len(gt_boxes) == 0:
        return np.full(m, -1.0), np.full(m, -1, np.int64), np.zeros(m, bool)
    iou = box_iou(det_boxes, gt_boxes, pixel_offset) if iou_fn is None else iou_fn(det_boxes, gt_boxes, allowed)
    if allowed is not None:
        iou = np.where(allowed, iou, -1.0)
    best = iou.argmax(axis=1)  # the first maximum on ties
    return iou[np.arange(m), best], best.astype(np.int64) + int(gt_offset), gt_difficult[best]


def _rank_and_match(
    scores: np.ndarray,
    image_index: np.ndarray,
    best_iou: np.ndarray,
    best_gt: np.ndarray,
    best_difficult: np.ndarray,
    num_positives: int,
    iou_threshold: float,
    use_07_metric: bool,
) -> VOCClassResult:
    """Rank one class's detections and assign TP / FP / ignored (greedy VOC matching).

    The greedy pass of the devkits (each detection in rank order takes its best box if that
    box is free) reduces to: among the ranked detections whose best box is a non-difficult one
    at IoU >= threshold, the first detection of each box is a true positive and the later ones
    are duplicates. A detection's best box does not depend on the other detections, so no
    sequential loop is needed.
    """
    order = np.argsort(-scores, kind="stable")
    hit = best_iou[order] >= iou_threshold
    ignored = hit & best_difficult[order]
    candidates = np.flatnonzero(hit & ~best_difficult[order])
    tp = np.zeros(len(order), dtype=bool)
    if len(candidates):
        _, first = np.unique(best_gt[order][candidates], return_index=True)
        tp[candidates[first]] = True
    fp = ~tp & ~ignored

    counted = ~ignored
    ctp = np.cumsum(tp[counted]).astype(np.float64)
    cfp = np.cumsum(fp[counted]).astype(np.float64)
    precision = ctp / np.maximum(ctp + cfp, 1.0)  # every counted point has tp + fp >= 1
    if num_positives > 0:
        recall = ctp / num_positives
        ap: float | None = voc_ap(recall, precision, use_07_metric)
    else:
        recall = np.full(len(ctp), np.nan)
        ap = None
    return VOCClassResult(
        ap=ap,
        num_positives=int(num_positives),
        num_detections=len(order),
        scores=scores[order],
        image_index=image_index[order],
        tp=tp,
        fp=fp,
        ignored=ignored,
        recall=recall,
        precision=precision,
    )


# --------------------------------------------------------------------------- DDP


def distributed_gather(state: Any) -> list[Any]:
    """Gather a picklable state (e.g. :meth:`VOCMeanAP.state`) from every process with ``torch.distributed``.

    Pass it as ``compute(world_gather=distributed_gather)`` of :class:`VOCMeanAP` or
    :class:`~rsfm.metrics.coco.DetectionMAP`. Without an initialised process group (a single
    process), returns ``[state]``.

    Args:
        state: this process's state.

    Returns:
        The states of all ranks, in rank order.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [state]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, state)
    return out


# --------------------------------------------------------------------------- accumulator


class VOCMeanAP:
    """Accumulate detections and ground truth over images; compute VOC AP per class and mAP.

    Per-image results are kept as numpy arrays in a Python list (no tensors, no device), so
    the metric can be pickled and merged across processes: under DDP either call
    ``compute(world_gather=distributed_gather)`` on every rank, or gather :meth:`state` with
    ``torch.distributed.all_gather_object`` and :meth:`merge` the others' states into one
    metric. Merged images are ranked after the local ones, so ties in score between images
    of different ranks may order differently than in a single process.

    Args:
        class_names: the ``K`` class names, in label order.
        iou_threshold: minimum IoU of a match, in ``(0, 1]`` (``IoU >= threshold``).
        use_07_metric: VOC2007 11-point AP (``protocol`` ``'voc07'``) instead of the
            all-point AP of VOC2010+, DOTA and DIOR (``'voc12'``).
        max_detections: None keeps every detection (DOTA scenes hold 1,000+ objects); an int
            keeps the highest-scoring ones of each image, over all classes together (a
            detector's per-image cap; COCO's cap is per image and class).
        pixel_offset: added to box widths and heights in the IoU (0: continuous pixel
            coordinates, no "+1"; 1: the legacy VOC and DOTA devkits).

    Raises:
        ValueError: on an empty class list, an ``iou_threshold`` outside ``(0, 1]`` or a
            negative ``max_detections``.

    Example:
        >>> m = VOCMeanAP(["oilwell"])
        >>> m.update([{"boxes": torch.tensor([[0.0, 0, 10, 10]]), "scores": torch.tensor([0.9]),
        ...            "labels": torch.tensor([0])}],
        ...          [{"boxes": torch.tensor([[0.0, 0, 10, 10]]), "labels": torch.tensor([0])}])
        >>> m.compute()["mAP50"]
        100.0
    """

    def __init__(
        self,
        class_names: Sequence[str],
        iou_threshold: float = 0.5,
        use_07_metric: bool = False,
        max_detections: int | None = None,
        pixel_offset: float = 0.0,
    ) -> None:
        self.class_names = list(class_names)
        if not self.class_names:
            raise ValueError("class_names must not be empty")
        if not 0.0 < float(iou_threshold) <= 1.0:
            raise ValueError(f"iou_threshold must lie in (0, 1], got {iou_threshold}")
        if max_detections is not None and int(max_detections) < 0:
            raise ValueError(f"max_detections must be None or >= 0, got {max_detections}")
        self.iou_threshold = float(iou_threshold)
        self.use_07_metric = bool(use_07_metric)
        self.max_detections = None if max_detections is None else int(max_detections)
        self.pixel_offset = float(pixel_offset)
        self.reset()

    def reset(self) -> None:
        """Forget the accumulated images."""
        self._images: list[dict[str, np.ndarray]] = []

    @property
    def num_images(self) -> int:
        """Images added (or merged) so far."""
        return len(self._images)

    def _labels(self, x: ArrayLike, n: int, what: str) -> np.ndarray:
        labels = _vector(x, np.float64, n, what)
        k = len(self.class_names)
        integral = bool((labels == np.round(labels)).all())
        if len(labels) and (not integral or int(labels.min()) < 0 or int(labels.max()) >= k):
            shown = labels.astype(np.int64).tolist() if integral else labels.tolist()
            raise ValueError(f"{what} must be integers in [0, {k}), got {shown}")
        return labels.astype(np.int64)

    def _read_boxes(self, d: dict[str, Any], what: str) -> np.ndarray:
        """The boxes of one image's predictions or targets: ``d['boxes']`` as ``(N, 4)`` float64.

        Raises:
            ValueError: naming ``what`` if the key is missing, the shape is wrong or a
                coordinate is NaN or infinite.
        """
        if "boxes" not in d:
            raise ValueError(f"{what} lacks ['boxes']")
        return _finite_boxes(d["boxes"], f"{what}['boxes']")

    def _iou(self, det: np.ndarray, gt: np.ndarray, allowed: np.ndarray | None) -> np.ndarray:
        """``(M, N)`` IoU of one image's detections and ground truth (:func:`box_iou`)."""
        return box_iou(det, gt, self.pixel_offset)

    def update(self, preds: Sequence[dict[str, Any]], targets: Sequence[dict[str, Any]]) -> None:
        """Add images.

        Args:
            preds: per image, ``boxes`` ``(M, 4)`` float xyxy pixels, ``scores`` ``(M,)``
                float and ``labels`` ``(M,)`` int64 in ``[0, K)``; tensors (any device) or
                numpy arrays.
            targets: per image, ``boxes`` ``(N, 4)`` float xyxy pixels, ``labels`` ``(N,)``
                int64 in ``[0, K)`` and optionally ``difficult`` ``(N,)`` bool (absent: none).

        Raises:
            ValueError: naming the image (``preds[i]`` / ``targets[i]``) and the field, if the
                lists differ in length, a key is missing, an array has the wrong shape or length,
                a box coordinate is NaN or infinite, a score is NaN, or a label is outside
                ``[0, K)``.
        """
        if len(preds) != len(targets):
            raise ValueError(f"got {len(preds)} predictions for {len(targets)} targets")
        added = []
        for i, (p, t) in enumerate(zip(preds, targets, strict=True)):
            for name, d, keys in (("preds", p, ("scores", "labels")), ("targets", t, ("labels",))):
                missing = [k for k in keys if k not in d]
                if missing:
                    raise ValueError(f"{name}[{i}] lacks {missing}")
            det_boxes = self._read_boxes(p, f"preds[{i}]")
            scores = _vector(p["scores"], np.float64, len(det_boxes), f"preds[{i}]['scores']")
            if np.isnan(scores).any():
                raise ValueError(f"preds[{i}]['scores'] must not hold NaN")
            det_labels = self._labels(p["labels"], len(det_boxes), f"preds[{i}]['labels']")
            gt_boxes = self._read_boxes(t, f"targets[{i}]")
            gt_labels = self._labels(t["labels"], len(gt_boxes), f"targets[{i}]['labels']")
            difficult = t.get("difficult")
            if difficult is None:
                difficult = np.zeros(len(gt_boxes), dtype=bool)
            else:
                difficult = _vector(difficult, bool, len(gt_boxes), f"targets[{i}]['difficult']")
            if self.max_detections is not None and len(scores) > self.max_detections:
                keep = np.sort(np.argsort(-scores, kind="stable")[: self.max_detections])
                det_boxes, scores, det_labels = det_boxes[keep], scores[keep], det_labels[keep]
            added.append(
                {
                    "det_boxes": det_boxes,
                    "det_scores": scores,
                    "det_labels": det_labels,
                    "gt_boxes": gt_boxes,
                    "gt_labels": gt_labels,
                    "gt_difficult": difficult,
                }
            )
        self._images.extend(added)  # all or nothing: a bad image adds none of the batch

    def state(self) -> list[dict[str, np.ndarray]]:
        """The accumulated images as a picklable list (for ``all_gather_object``).

        Returns:
            One dict per image: ``det_boxes`` ``(M, 4)`` float64, ``det_scores`` ``(M,)``
            float64, ``det_labels`` ``(M,)`` int64, ``gt_boxes`` ``(N, 4)`` float64,
            ``gt_labels`` ``(N,)`` int64, ``gt_difficult`` ``(N,)`` bool (detections already
            capped by ``max_detections``).
        """
        return list(self._images)

    def merge(self, states: Sequence[list[dict[str, np.ndarray]]]) -> None:
        """Append the images of other metrics' :meth:`state` (e.g. of the other DDP ranks).

        Do not pass this metric's own state, or its images count twice.

        Args:
            states: a list of states, each as returned by :meth:`state`.

        Raises:
            ValueError: if an entry is not a state of this class.
        """
        keys = {"det_boxes", "det_scores", "det_labels", "gt_boxes", "gt_labels", "gt_difficult"}
        for s in states:
            for entry in s:
                if not isinstance(entry, dict) or set(entry) != keys:
                    raise ValueError(f"not a VOCMeanAP state entry: {type(entry).__name__}")
            self._images.extend(s)

    def compute(
        self, world_gather: Callable[[list[dict[str, np.ndarray]]], Sequence[list[dict[str, np.ndarray]]]] | None = None
    ) -> dict[str, Any]:
        """The metrics of the images added so far.

        Args:
            world_gather: optional; maps this metric's :meth:`state` to the states of all
                processes (e.g. :func:`distributed_gather`); the metrics are then computed
                over all of them (on every process alike). The metric itself is unchanged.

        Returns:
            ``mAP50``: mean AP in percent (0-100) over the classes with at least one
            non-difficult ground-truth box, None if there is none; ``per_class``: ``{name:
            {'AP50': percent or None (no non-difficult ground truth), 'num_objects':
            non-difficult ground-truth boxes, 'num_detections': detections evaluated}}``;
            ``num_images``; ``protocol`` (``'voc07'`` 11-point or ``'voc12'`` all-point);
            ``iou_threshold`` (the keys say 50 whatever the threshold); ``max_detections``.
        """
        images = self._images
        if world_gather is not None:
            images = [entry for s in world_gather(self.state()) for entry in s]
        # one IoU matrix per image (pairs of different classes masked out), then per-class ranking
        gt_offsets = np.cumsum([0] + [len(im["gt_labels"]) for im in images])
        matches = [
            _best_matches(
                im["det_boxes"],
                im["gt_boxes"],
                im["gt_difficult"],
                self.pixel_offset,
                gt_offsets[i],
                im["det_labels"][:, None] == im["gt_labels"][None, :],
                self._iou,
            )
            for i, im in enumerate(images)
        ]
        best_iou, best_gt, best_difficult = _concat_matches(matches)
        scores = np.concatenate([np.zeros(0), *[im["det_scores"] for im in images]])
        det_labels = np.concatenate([np.zeros(0, np.int64), *[im["det_labels"] for im in images]])
        image_of = np.concatenate(
            [np.zeros(0, np.int64), *[np.full(len(im["det_scores"]), i, np.int64) for i, im in enumerate(images)]]
        )
        gt_labels = np.concatenate([np.zeros(0, np.int64), *[im["gt_labels"] for im in images]])
        gt_difficult = np.concatenate([np.zeros(0, bool), *[im["gt_difficult"] for im in images]])

        per_class: dict[str, dict[str, Any]] = {}
        aps = []
        for c, name in enumerate(self.class_names):
            sel = det_labels == c
            r = _rank_and_match(
                scores[sel],
                image_of[sel],
                best_iou[sel],
                best_gt[sel],
                best_difficult[sel],
                num_positives=int(((gt_labels == c) & ~gt_difficult).sum()),
                iou_threshold=self.iou_threshold,
                use_07_metric=self.use_07_metric,
            )
            ap = None if r.ap is None else 100.0 * r.ap
            if ap is not None:
                aps.append(ap)
            per_class[name] = {"AP50": ap, "num_objects": r.num_positives, "num_detections": r.num_detections}
        return {
            "mAP50": float(np.mean(aps)) if aps else None,
            "per_class": per_class,
            "num_images": len(images),
            "protocol": "voc07" if self.use_07_metric else "voc12",
            "iou_threshold": self.iou_threshold,
            "max_detections": self.max_detections,
        }
