"""COCO-style horizontal-box detection metrics: mAP50 and mAP50:95, overall and per class.

The field's own protocol (VOC-style AP at IoU 0.5, as DIOR, DOTA and DIOR-R report) is
:mod:`rsfm.metrics.voc`; this module is the COCO option. The numbers are pycocotools'
``COCOeval`` (``iouType="bbox"``) run with ``params.maxDets = [max_detections]``: average
precision over 101 recall points, ``mAP50`` at IoU 0.5 and ``mAP50_95`` averaged over IoU
0.50:0.05:0.95, both for all object sizes and up to ``max_detections`` detections per image and
class, averaged over the classes that have ground truth. Overall and per-class AP are read
from COCOeval's precision table at that cap (``COCOeval.summarize()`` would read its headline
AP at 100 detections whatever the cap), so any cap of at least 1 gives COCOeval's numbers.

Difficult objects are passed as COCO ``iscrowd`` regions, COCO's ignore mechanism: they
count neither as misses nor, when a detection overlaps them, as false positives, which is
VOC's treatment of its ``difficult`` flag. Unlike VOC, COCO measures that overlap as the
intersection over the detection's area.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from rsfm.metrics._cocoeval import check_max_detections, coco_precision, mean_valid, percent_or_none

__all__ = ["DetectionMAP"]


class DetectionMAP:
    """Accumulate detections and ground truth over images; compute mAP50 and mAP50:95.

    Args:
        class_names: the ``K`` class names, in label order.
        max_detections: detections per image and class considered, the best-scoring ones
            (COCOeval's ``maxDets``; COCO's 100, raise it for dense scenes such as DOTA's).

    Raises:
        ValueError: if ``max_detections`` is not an integer of at least 1.

    Example:
        >>> m = DetectionMAP(["oilwell"])
        >>> m.update([{"boxes": torch.tensor([[0.0, 0, 10, 10]]), "scores": torch.tensor([0.9]),
        ...            "labels": torch.tensor([0])}],
        ...          [{"boxes": torch.tensor([[0.0, 0, 10, 10]]), "labels": torch.tensor([0])}])
        >>> round(m.compute()["mAP50"], 6)  # COCOeval's precision is tp / (tp + fp + eps)
        100.0
    """

    def __init__(self, class_names: Sequence[str], max_detections: int = 100) -> None:
        self.max_detections = check_max_detections(max_detections)
        self.class_names = list(class_names)
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
        per_class: dict[str, dict[str, Any]] = {
            n: {"AP50": None, "AP50_95": None, "num_objects": int(c)}
            for n, c in zip(self.class_names, num_objects.tolist(), strict=True)
        }
        out: dict[str, Any] = {"mAP50": None, "mAP50_95": None}
        if preds and int(num_objects.sum()) > 0:
            images = [
                {
                    "pred": {
                        "boxes": p["boxes"].double().numpy(),
                        "scores": p["scores"].double().numpy(),
                        "labels": p["labels"].numpy(),
                    },
                    "target": {
                        "boxes": t["boxes"].double().numpy(),
                        "labels": t["labels"].numpy(),
                        "iscrowd": t["iscrowd"].bool().numpy(),
                    },
                }
                for p, t in zip(preds, targets, strict=True)
            ]
            # (IoU thresholds, recall points, classes) at the cap; IoU index 0 is 0.5
            precision = coco_precision(images, self.class_names, "bbox", self.max_detections)
            out["mAP50"] = percent_or_none(mean_valid(precision[0]))
            out["mAP50_95"] = percent_or_none(mean_valid(precision))
            for c, name in enumerate(self.class_names):
                if per_class[name]["num_objects"] == 0:
                    continue  # COCO leaves a class without ground truth out of the mean
                per_class[name]["AP50"] = percent_or_none(mean_valid(precision[0, :, c]))
                per_class[name]["AP50_95"] = percent_or_none(mean_valid(precision[:, :, c]))
        return {**out, "per_class": per_class, "num_images": len(preds), "max_detections": self.max_detections}
