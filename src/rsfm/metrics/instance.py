"""COCO instance-segmentation metrics: mask and box mAP50 and mAP50:95, overall and per class.

The protocol is COCO's (Lin et al., "Microsoft COCO: Common Objects in Context", ECCV 2014,
and its detection evaluation; the metric of Mask R-CNN, He et al., ICCV 2017, and of iSAID,
Waqas Zamir et al., CVPRW 2019), computed with pycocotools' ``COCOeval`` run once with
``iouType="segm"`` (masks) and once with ``iouType="bbox"`` (boxes): average precision over
101 recall points, ``AP50`` at IoU 0.5 and ``AP50_95`` averaged over IoU 0.50:0.05:0.95, all
object sizes, at most ``max_detections`` detections per image and class (COCOeval's
``maxDets``), averaged over the classes that have ground truth.

Masks are run-length encoded (pycocotools' RLE) as soon as an image is added, so the
accumulated state is small and picklable (gathered across DDP ranks by ``world_gather``).
Difficult objects are passed as COCO ``iscrowd`` regions, COCO's ignore mechanism: they count
neither as misses nor, when a detection overlaps them, as false positives; COCO measures that
overlap as the intersection over the detection's area (of its mask for ``segm``, of its box for
``bbox``). The area of a ground-truth object (used only by COCO's size ranges, which are not
reported) is its mask's pixel count for ``segm`` and its box's area for ``bbox``, as
torchmetrics' ``MeanAveragePrecision`` sets them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from rsfm.metrics._cocoeval import check_max_detections, coco_precision, mean_valid, percent_or_none

__all__ = ["InstanceSegmentationMAP", "encode_masks"]


def _column_runs(mask: np.ndarray) -> list[int]:
    """Uncompressed COCO RLE counts of one ``(H, W)`` binary mask: alternating runs of 0s and 1s, column-major.

    Only the columns between the mask's first and last non-empty one are scanned (the rest are
    zeros), so a small object costs ``O(its width × H)``, not ``O(H × W)``.
    """
    h, w = mask.shape
    cols = np.flatnonzero(mask.any(0))
    if not len(cols):
        return [h * w]
    x0, x1 = int(cols[0]), int(cols[-1]) + 1
    seq = np.ascontiguousarray(mask[:, x0:x1].T != 0).ravel()  # column-major pixels of those columns
    edges = np.concatenate([[0], np.flatnonzero(seq[1:] != seq[:-1]) + 1, [len(seq)]])
    runs = np.diff(edges).tolist()  # alternating, starting with seq[0]'s value
    if seq[0]:
        runs = [0, *runs]
    runs[0] += x0 * h  # the empty columns before...
    after = (w - x1) * h  # ...and after them
    if len(runs) % 2:  # an odd number of runs ends with 0s
        runs[-1] += after
    elif after:
        runs.append(after)
    return runs


def encode_masks(masks: Tensor | np.ndarray) -> list[dict[str, Any]]:
    """COCO run-length encodings of binary masks, byte for byte as pycocotools' ``mask.encode`` makes them.

    The runs are counted over the columns a mask spans only (no transposed copy of the whole
    image per mask, which dominates ``mask.encode`` on large scenes with small objects), then
    compressed by pycocotools.

    Args:
        masks: ``(N, H, W)`` bool or integer ``{0, 1}`` (any non-zero value counts as inside).

    Returns:
        ``N`` RLE dicts ``{"size": [H, W], "counts": bytes}`` (pycocotools' compressed form).

    Raises:
        ValueError: if ``masks`` is not three-dimensional.
    """
    from pycocotools import mask as mask_utils

    if isinstance(masks, Tensor):
        masks = masks.detach().cpu().numpy()
    a = np.asarray(masks)
    if a.ndim != 3:
        raise ValueError(f"masks must have shape (N, H, W), got {tuple(a.shape)}")
    h, w = int(a.shape[1]), int(a.shape[2])
    out = []
    for m in a:
        out.append(mask_utils.frPyObjects({"size": [h, w], "counts": _column_runs(m)}, h, w))
    return out


class InstanceSegmentationMAP:
    """Accumulate instance masks and ground truth over images; compute COCO mask and box AP.

    Args:
        class_names: the ``K`` class names, in label order.
        max_detections: detections per image and class considered (COCO's 100).

    Raises:
        ValueError: if ``max_detections`` is less than 1.

    Example:
        >>> m = InstanceSegmentationMAP(["ship"])
        >>> mask = torch.zeros(1, 8, 8, dtype=torch.bool); mask[0, 2:6, 2:6] = True
        >>> box = torch.tensor([[2.0, 2, 6, 6]])
        >>> m.update([{"boxes": box, "scores": torch.tensor([0.9]), "labels": torch.tensor([0]),
        ...            "masks": mask}],
        ...          [{"boxes": box, "labels": torch.tensor([0]), "masks": mask}])
        >>> round(m.compute()["mask_mAP50"], 6)
        100.0
    """

    def __init__(self, class_names: Sequence[str], max_detections: int = 100) -> None:
        self.max_detections = check_max_detections(max_detections)
        self.class_names = list(class_names)
        self.reset()

    def reset(self) -> None:
        """Forget the accumulated images."""
        self._images: list[dict[str, Any]] = []

    @property
    def num_images(self) -> int:
        """Images added on this process since the last :meth:`reset`."""
        return len(self._images)

    def _check(self, what: str, item: dict[str, Tensor], with_scores: bool) -> tuple[int, int]:
        """Validate one image's fields (ValueError naming ``what`` and the field); returns the masks' ``(H, W)``."""
        k = len(self.class_names)
        labels = item["labels"].reshape(-1)
        n = len(labels)
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= k):
            raise ValueError(f"{what} labels must lie in [0, {k}), got {labels.tolist()}")
        if item["boxes"].reshape(-1, 4).shape[0] != n:
            raise ValueError(f"{what} has {item['boxes'].reshape(-1, 4).shape[0]} boxes for {n} labels")
        if with_scores and item["scores"].reshape(-1).shape[0] != n:
            raise ValueError(f"{what} has {item['scores'].reshape(-1).shape[0]} scores for {n} labels")
        masks = item.get("masks")
        if masks is None:
            raise ValueError(f"{what} has no 'masks' ((N, H, W) binary masks are required)")
        if masks.ndim != 3 or masks.shape[0] != n:
            raise ValueError(f"{what} masks must have shape ({n}, H, W), got {tuple(masks.shape)}")
        return int(masks.shape[-2]), int(masks.shape[-1])

    def update(self, preds: Sequence[dict[str, Tensor]], targets: Sequence[dict[str, Tensor]]) -> None:
        """Add images; their masks are run-length encoded at once (kept on the CPU).

        Args:
            preds: per image, ``boxes`` ``(M, 4)`` float32 xyxy pixels, ``scores`` ``(M,)``
                float32, ``labels`` ``(M,)`` int64 in ``[0, K)`` and ``masks`` ``(M, H, W)``
                bool (binary, already thresholded).
            targets: per image, ``boxes`` ``(N, 4)`` float32 xyxy pixels, ``labels`` ``(N,)``
                int64 in ``[0, K)``, ``masks`` ``(N, H, W)`` uint8 ``{0, 1}`` or bool, and
                optionally ``difficult`` ``(N,)`` bool.

        Raises:
            ValueError: if the lists differ in length, a label is outside ``[0, K)``, the
                fields of an image disagree in length, or predicted and true masks differ in size.
        """
        if len(preds) != len(targets):
            raise ValueError(f"got {len(preds)} predictions for {len(targets)} targets")
        for i, (p, t) in enumerate(zip(preds, targets, strict=True)):
            size_p = self._check(f"prediction {i}", p, with_scores=True)
            size_t = self._check(f"target {i}", t, with_scores=False)
            if size_p != size_t and len(p["labels"]) and len(t["labels"]):
                raise ValueError(f"image {i}: predicted masks are {size_p} but true masks are {size_t} (H, W)")
            difficult = t.get("difficult")
            if difficult is None:
                difficult = torch.zeros(len(t["labels"]), dtype=torch.bool)
            self._images.append(
                {
                    "size": list(size_t),
                    "pred": {
                        "boxes": p["boxes"].detach().double().cpu().reshape(-1, 4).numpy(),
                        "scores": p["scores"].detach().double().cpu().reshape(-1).numpy(),
                        "labels": p["labels"].detach().long().cpu().reshape(-1).numpy(),
                        "rles": encode_masks(p["masks"]),
                    },
                    "target": {
                        "boxes": t["boxes"].detach().double().cpu().reshape(-1, 4).numpy(),
                        "labels": t["labels"].detach().long().cpu().reshape(-1).numpy(),
                        "iscrowd": difficult.detach().bool().cpu().reshape(-1).numpy(),
                        "rles": encode_masks(t["masks"]),
                    },
                }
            )

    def state(self) -> list[dict[str, Any]]:
        """The images added on this process (picklable: numpy arrays and RLE bytes)."""
        return self._images

    def compute(self, world_gather: Callable[[Any], Sequence[Any]] | None = None) -> dict[str, Any]:
        """The metrics of the images added so far (on every process, with ``world_gather``).

        Args:
            world_gather: optional; maps this process's images to those of every process (e.g.
                :func:`rsfm.metrics.voc.distributed_gather` under DDP: every rank must call it,
                also one that saw no image). None: this process's images only.

        Returns:
            ``mask_mAP50``, ``mask_mAP50_95``, ``box_mAP50``, ``box_mAP50_95`` (percent; None
            when no ground truth was seen), ``per_class`` ``{name: {'mask_AP50',
            'mask_AP50_95', 'box_AP50', 'box_AP50_95' (None when the class has no
            non-difficult ground truth), 'num_objects' (its non-difficult objects)}}``,
            ``num_images`` and ``max_detections``.
        """
        parts = world_gather(self._images) if world_gather is not None else [self._images]
        images = [im for part in parts for im in part]
        k = len(self.class_names)
        num_objects = np.zeros(k, dtype=np.int64)
        for im in images:
            t = im["target"]
            num_objects += np.bincount(t["labels"][~t["iscrowd"]], minlength=k)
        per_class: dict[str, dict[str, Any]] = {
            n: {"mask_AP50": None, "mask_AP50_95": None, "box_AP50": None, "box_AP50_95": None, "num_objects": int(c)}
            for n, c in zip(self.class_names, num_objects.tolist(), strict=True)
        }
        out: dict[str, Any] = {"mask_mAP50": None, "mask_mAP50_95": None, "box_mAP50": None, "box_mAP50_95": None}
        if images and num_objects.sum() > 0:
            for iou_type, prefix in (("segm", "mask"), ("bbox", "box")):
                # (IoU thresholds, recall points, classes); IoU index 0 is 0.5
                precision = coco_precision(images, self.class_names, iou_type, self.max_detections)
                out[f"{prefix}_mAP50"] = percent_or_none(mean_valid(precision[0]))
                out[f"{prefix}_mAP50_95"] = percent_or_none(mean_valid(precision))
                for c, name in enumerate(self.class_names):
                    if per_class[name]["num_objects"] == 0:
                        continue  # COCO leaves a class without ground truth out of the mean
                    per_class[name][f"{prefix}_AP50"] = percent_or_none(mean_valid(precision[0, :, c]))
                    per_class[name][f"{prefix}_AP50_95"] = percent_or_none(mean_valid(precision[:, :, c]))
        return {**out, "per_class": per_class, "num_images": len(images), "max_detections": self.max_detections}
