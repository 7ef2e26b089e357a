"""COCO-style horizontal-box detection metrics: mAP50 and mAP50:95, overall and per class.

The field's own protocol (VOC-style AP at IoU 0.5, as DIOR, DOTA and DIOR-R report) is
:mod:`rsfm.metrics.voc`; this module is the COCO option. The numbers are COCO's
(torchmetrics' :class:`~torchmetrics.detection.MeanAveragePrecision`
on the pycocotools backend): average precision over 101 recall points, ``mAP50`` at IoU
0.5 and ``mAP50_95`` averaged over IoU 0.50:0.05:0.95, both for all object sizes and up to
``max_detections`` detections per image and class (COCOeval's cap). Per-class AP50 is read from COCOeval's precision
table at IoU 0.5.

Difficult objects are passed as COCO ``iscrowd`` regions, COCO's ignore mechanism: they
count neither as misses nor, when a detection overlaps them, as false positives, which is
VOC's treatment of its ``difficult`` flag. Unlike VOC, COCO measures that overlap as the
intersection over the detection's area.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor
from torchmetrics.detection import MeanAveragePrecision

__all__ = ["DetectionMAP"]


def _score(value: float) -> float | None:
    """COCO's -1 (nothing to evaluate) → None; else the value in percent."""
    return None if value < 0 or math.isnan(value) else 100.0 * float(value)


class DetectionMAP:
    """Accumulate detections and ground truth over images; compute mAP50 and mAP50:95.

    Args:
        class_names: the ``K`` class names, in label order.
        max_detections: detections per image and class considered (COCO's 100; raise it for dense
            scenes such as DOTA's).

    Example:
        >>> m = DetectionMAP(["oilwell"])
        >>> m.update([{"boxes": torch.tensor([[0.0, 0, 10, 10]]), "scores": torch.tensor([0.9]),
        ...            "labels": torch.tensor([0])}],
        ...          [{"boxes": torch.tensor([[0.0, 0, 10, 10]]), "labels": torch.tensor([0])}])
        >>> m.compute()["mAP50"]
        100.0
    """

    def __init__(self, class_names: Sequence[str], max_detections: int = 100) -> None:
        self.class_names = list(class_names)
        self.max_detections = int(max_detections)
        self.reset()

    def reset(self) -> None:
        """Forget the accumulated images."""
        self._preds: list[dict[str, Tensor]] = []
        self._targets: list[dict[str, Tensor]] = []

    @property
    def num_images(self) -> int:
        """Images added on this process since the last :meth:`reset`."""
        return len(self._preds)

    def update(self, preds: Sequence[dict[str, Tensor]], targets: Sequence[dict[str, Tensor]]) -> None:
        """Add images (kept on the CPU until :meth:`compute`).

        Args:
            preds: per image, ``boxes`` ``(M, 4)`` float32 xyxy pixels, ``scores`` ``(M,)``
                float32 and ``labels`` ``(M,)`` int64 in ``[0, K)``.
            targets: per image, ``boxes`` ``(N, 4)`` float32 xyxy pixels, ``labels`` ``(N,)``
                int64 in ``[0, K)`` and optionally ``difficult`` ``(N,)`` bool.

        Raises:
            ValueError: if the lists differ in length or a label is outside ``[0, K)``.
        """
        if len(preds) != len(targets):
            raise ValueError(f"got {len(preds)} predictions for {len(targets)} targets")
        k = len(self.class_names)
        for p, t in zip(preds, targets, strict=True):
            for name, labels in (("prediction", p["labels"]), ("target", t["labels"])):
                if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= k):
                    raise ValueError(f"{name} labels must lie in [0, {k}), got {labels.tolist()}")
            difficult = t.get("difficult")
            if difficult is None:
                difficult = torch.zeros_like(t["labels"], dtype=torch.bool)
            self._preds.append(
                {
                    "boxes": p["boxes"].detach().float().cpu().reshape(-1, 4),
                    "scores": p["scores"].detach().float().cpu().reshape(-1),
                    "labels": p["labels"].detach().long().cpu().reshape(-1),
                }
            )
            self._targets.append(
                {
                    "boxes": t["boxes"].detach().float().cpu().reshape(-1, 4),
                    "labels": t["labels"].detach().long().cpu().reshape(-1),
                    "iscrowd": difficult.detach().long().cpu().reshape(-1),
                }
            )

    def compute(self, world_gather: Callable[[Any], Sequence[Any]] | None = None) -> dict[str, Any]:
        """The metrics of the images added so far (on every process, with ``world_gather``).

        Args:
            world_gather: optional; maps this process's images to those of every process
                (e.g. :func:`rsfm.metrics.voc.distributed_gather` under DDP: every rank must
                call it, also one that saw no image). None: this process's images only.

        Returns:
            ``mAP50`` and ``mAP50_95`` (percent; None when no ground truth was seen),
            ``per_class`` ``{name: {'AP50', 'AP50_95' (None when the class has no
            ground truth), 'num_objects' (non-difficult ground-truth boxes)}}``,
            ``num_images`` and ``max_detections``.
        """
        mine = (self._preds, self._targets)
        parts = world_gather(mine) if world_gather is not None else [mine]
        preds = [p for part in parts for p in part[0]]
        targets = [t for part in parts for t in part[1]]
        num_objects = torch.zeros(len(self.class_names), dtype=torch.int64)
        for t in targets:
            num_objects += torch.bincount(t["labels"][t["iscrowd"] == 0], minlength=len(self.class_names))
        r: dict[str, Any] = {}
        if preds:
            coco = MeanAveragePrecision(
                box_format="xyxy",
                iou_type="bbox",
                class_metrics=True,
                extended_summary=True,
                max_detection_thresholds=[1, 10, self.max_detections],
                sync_on_compute=False,  # the images of every rank are already here
            )
            coco.update(preds, targets)
            r = coco.compute()
        per_class: dict[str, dict[str, Any]] = {
            n: {"AP50": None, "AP50_95": None, "num_objects": int(c)}
            for n, c in zip(self.class_names, num_objects.tolist(), strict=True)
        }
        if r:
            classes = r["classes"].reshape(-1).tolist()
            per_class_map = r["map_per_class"].reshape(-1).tolist()
            # COCOeval precision: (IoU thresholds, recall points, classes, areas, max dets);
            # IoU index 0 is 0.5, area 0 is "all", the last max-dets entry is max_detections
            precision = r["precision"]
            for k, cls in enumerate(classes):
                entry = per_class[self.class_names[cls]]
                if entry["num_objects"] == 0:
                    continue  # COCO would report 0 from its false positives alone; VOC has no AP here
                p = precision[0, :, k, 0, -1]
                p = p[p > -1]
                entry["AP50"] = _score(float(p.mean())) if p.numel() else None
                entry["AP50_95"] = _score(per_class_map[k])
        return {
            "mAP50": _score(float(r["map_50"])) if r else None,
            "mAP50_95": _score(float(r["map"])) if r else None,
            "per_class": per_class,
            "num_images": len(preds),
            "max_detections": self.max_detections,
        }
