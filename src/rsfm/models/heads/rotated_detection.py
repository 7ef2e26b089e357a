"""Rotated (oriented) object detection: an Oriented R-CNN head with an FPN on the neck's pyramid.

Oriented R-CNN (Xie et al., "Oriented R-CNN for Object Detection", ICCV 2021), the rotated
detector MTP (Wang et al., "MTP: Advancing Remote Sensing Foundation Model via Multi-Task
Pretraining", 2024) fine-tunes on DOTA, DIOR-R and FAIR1M: a feature pyramid network (Lin et
al., CVPR 2017; torchvision's, 256 channels, plus a max-pooled level) on the task's maps (the
ViTDet simple pyramid of a ViT, or a ResNet's stages), an oriented RPN that turns horizontal
anchors into oriented proposals by the midpoint offset representation
(:class:`~rsfm.models.rotated.rpn.OrientedRPN`), and a rotated RoI head that classifies and
refines them (:class:`~rsfm.models.rotated.roi_head.RotatedRoIHead`). Defaults are mmrotate's
``oriented-rcnn-le90_r50_fpn_1x_dota`` training and test settings; boxes are ``(cx, cy, w, h,
θ)`` pixels and radians, ``le90`` (:mod:`rsfm.ops.obb`).

Images are never resized: training sees crops, evaluation whole scenes cut into overlapping
tiles (1024 px overlapping by 200 px by default, DOTA's split), whose detections are shifted
back to image pixels and merged by class-wise rotated NMS at IoU 0.1, as the DOTA devkit
merges patches. Metric: DOTA-style mAP at rotated IoU 0.5 (:class:`~rsfm.metrics.dota.DOTAMeanAP`;
``voc07``, 11-point as DOTA v1.0 and DIOR-R papers report, or ``voc12`` all-point).

Difficult ground truth (DOTA's ``difficult`` flag) is left out of the training targets unless
``keep_difficult``; the metric ignores detections matching it, as the devkit does.

.. versionadded:: 0.3
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from rsfm.models.heads.base import Features, Head, HeadMetrics
from rsfm.models.heads.segmentation import to_uint8_rgb
from rsfm.models.inference import detect_tiles
from rsfm.utils.errors import ConfigError
from rsfm.utils.registry import HEADS

if TYPE_CHECKING:
    from PIL import Image

    from rsfm.data.base import DataInfo
    from rsfm.models.task_model import TaskModel

__all__ = ["OrientedRCNNHead", "RotatedDetectionMetricSet", "render_obbs"]

METRICS = ("voc07", "voc12")
#: ground truth thinner than this (pixels) is left out of training (its IoU is undefined)
MIN_GT_SIDE = 1e-2


class RotatedDetectionMetricSet(HeadMetrics):
    """mAP50 (percent) of oriented detections, DOTA-style, gathered over DDP ranks.

    Args:
        classes: class names.
        metric: ``voc07`` (11-point AP, DOTA v1.0 and DIOR-R as mmrotate's ``DOTAMetric``) or
            ``voc12`` (all-point).
        max_detections: detections per image scored (None: all).

    Raises:
        ConfigError: on an unknown metric.
    """

    names = ("mAP50",)

    def __init__(self, classes: list[str], metric: str = "voc07", max_detections: int | None = None) -> None:
        super().__init__()
        if metric not in METRICS:
            raise ConfigError(f"model.heads: metric must be one of {METRICS}, got {metric!r}")
        from rsfm.metrics.dota import DOTAMeanAP

        self.classes, self.metric = list(classes), metric
        self.dota = DOTAMeanAP(self.classes, use_07_metric=metric == "voc07", max_detections=max_detections)
        self._result: dict[str, Any] | None = None

    @staticmethod
    def _targets(batch: Mapping[str, Any]) -> list[dict[str, Tensor]]:
        out = []
        for i, (obbs, labels) in enumerate(zip(batch["obbs"], batch["labels"], strict=True)):
            t = {"obbs": obbs.detach().cpu(), "labels": labels.detach().cpu()}
            if batch.get("difficult") is not None:
                t["difficult"] = batch["difficult"][i].detach().cpu()
            if batch.get("polygons") is not None:  # the annotated quadrilaterals, as the devkit scores
                t["polygons"] = batch["polygons"][i].detach().cpu()
            out.append(t)
        return out

    def update(self, preds: list[dict[str, Tensor]], batch: Mapping[str, Any]) -> None:
        """Add per-image detections (``obbs`` ``(M, 5)`` pixels, ``scores``, ``labels``) against the batch's boxes."""
        self._result = None
        cpu = [{k: v.detach().cpu() for k, v in p.items()} for p in preds]
        self.dota.update(cpu, self._targets(batch))

    def _compute(self) -> dict[str, Any]:
        if self._result is None:
            import torch.distributed as dist

            from rsfm.metrics.voc import distributed_gather

            distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
            self._result = self.dota.compute(world_gather=distributed_gather if distributed else None)
        return self._result

    def compute(self) -> dict[str, float]:
        """``mAP50``, percent; 0 when no object was seen."""
        return {"mAP50": float(self._compute()["mAP50"] or 0.0)}

    def report(self) -> dict[str, Any]:
        """Overall and per-class AP with object counts and the protocol."""
        return {**self._compute(), "classes": self.classes, "metric": self.metric}

    def reset(self) -> None:
        """Forget the accumulated images."""
        self._result = None
        self.dota.reset()


@HEADS.register
class OrientedRCNNHead(Head):
    """Oriented R-CNN + FPN on the task's pyramid, with tiled inference on whole scenes.

    Args:
        fpn_channels: FPN width (256).
        anchor_scales: anchor sizes in units of each level's stride (``[8]``: 32 px at stride
            4 to 512 px at stride 64). Objects whose best anchor IoU stays under
            ``rpn_min_pos_iou`` get no positive anchor: with ``[8]`` a third of HIT-UAV's
            objects (8 × 16 px people) get none, with ``[2, 4]`` all but 3 of 5,056.
        anchor_ratios: anchor height/width ratios.
        rpn_pos_iou: horizontal IoU of a positive anchor (0.7).
        rpn_neg_iou: IoU below which an anchor is negative (0.3).
        rpn_min_pos_iou: least IoU of the best anchor an object claims (0.3).
        rpn_num_samples: anchors sampled per image for the RPN loss (256).
        rpn_pos_fraction: largest share of positives among them (0.5).
        rpn_allowed_border: how far a trained anchor may reach outside the image, pixels (0;
            negative: every anchor trains).
        rpn_nms_pre: best anchors per level decoded into proposals (2000).
        rpn_nms_iou: IoU of the NMS among a level's proposals (0.8).
        rpn_proposals_train: proposals per crop passed to the RoI head in training (2000).
        rpn_proposals_test: proposals per tile at inference (2000).
        rpn_rotated_nms: rotated NMS among proposals instead of mmrotate's NMS of their
            enclosing horizontal boxes.
        roi_size: side of the rotated RoIAlign grid (7).
        roi_sampling_ratio: bilinear samples per grid cell and axis (2).
        roi_finest_scale: scale (pixels) of the RoI level mapping (56).
        fc_channels: width of the RoI head's two shared fully connected layers (1024).
        roi_pos_iou: rotated IoU of a positive proposal (0.5).
        roi_neg_iou: IoU below which a proposal is negative (0.5).
        roi_num_samples: proposals sampled per crop for the RoI loss (512).
        roi_pos_fraction: largest share of positives among them (0.25).
        score_threshold: least class score of a detection (0.05).
        nms_iou: rotated IoU of the class-wise NMS within a tile (0.1).
        detections_per_tile: detections kept per tile (2000).
        tile_size: inference tile side, pixels (1024).
        tile_overlap: inference tile overlap, pixels (200; at least the largest object).
        merge_iou: rotated IoU of the class-wise NMS merging tiles (0.1).
        batch_tiles: tiles per forward pass at inference.
        max_detections: detections kept per image after merging and scored; None: all.
        metric: ``voc07`` (11-point, default) or ``voc12`` (all-point).
        keep_difficult: train on difficult objects too.
        vis_score_thresh: least score of a drawn (or ``rsfm predict`` written) detection.
        loss_weight: weight of this head's loss (the sum of its four terms).
        evaluate: score this head.

    Raises:
        ConfigError: on an unknown metric, a bad tile or overlap, or non-positive anchors.
    """

    target_keys = ("obbs", "labels")
    monitor = "mAP50"
    output_kind = "obbs"
    predictors = ("roi_head.cls", "roi_head.reg")

    def __init__(
        self,
        fpn_channels: int = 256,
        anchor_scales: list[float] = [8.0],  # noqa: B006
        anchor_ratios: list[float] = [0.5, 1.0, 2.0],  # noqa: B006
        rpn_pos_iou: float = 0.7,
        rpn_neg_iou: float = 0.3,
        rpn_min_pos_iou: float = 0.3,
        rpn_num_samples: int = 256,
        rpn_pos_fraction: float = 0.5,
        rpn_allowed_border: int = 0,
        rpn_nms_pre: int = 2000,
        rpn_nms_iou: float = 0.8,
        rpn_proposals_train: int = 2000,
        rpn_proposals_test: int = 2000,
        rpn_rotated_nms: bool = False,
        roi_size: int = 7,
        roi_sampling_ratio: int = 2,
        roi_finest_scale: float = 56.0,
        fc_channels: int = 1024,
        roi_pos_iou: float = 0.5,
        roi_neg_iou: float = 0.5,
        roi_num_samples: int = 512,
        roi_pos_fraction: float = 0.25,
        score_threshold: float = 0.05,
        nms_iou: float = 0.1,
        detections_per_tile: int = 2000,
        tile_size: int = 1024,
        tile_overlap: int = 200,
        merge_iou: float = 0.1,
        batch_tiles: int = 2,
        max_detections: int | None = None,
        metric: str = "voc07",
        keep_difficult: bool = False,
        vis_score_thresh: float = 0.3,
        loss_weight: float = 1.0,
        evaluate: bool = True,
    ) -> None:
        super().__init__(loss_weight, evaluate)
        if metric not in METRICS:
            raise ConfigError(f"model.heads: metric must be one of {METRICS}, got {metric!r}")
        if not 0 <= tile_overlap < tile_size:
            raise ConfigError(
                f"model.heads: need 0 <= tile_overlap < tile_size, got tile_overlap={tile_overlap}, "
                f"tile_size={tile_size}"
            )
        if not anchor_scales or not anchor_ratios or min(anchor_scales) <= 0 or min(anchor_ratios) <= 0:
            raise ConfigError(
                f"model.heads: anchor_scales and anchor_ratios must be non-empty and positive, got "
                f"{anchor_scales} and {anchor_ratios}"
            )
        self.fpn_channels = int(fpn_channels)
        self.rpn_options: dict[str, Any] = {
            "scales": [float(s) for s in anchor_scales],
            "ratios": [float(r) for r in anchor_ratios],
            "pos_iou": float(rpn_pos_iou),
            "neg_iou": float(rpn_neg_iou),
            "min_pos_iou": float(rpn_min_pos_iou),
            "num_samples": int(rpn_num_samples),
            "pos_fraction": float(rpn_pos_fraction),
            "allowed_border": int(rpn_allowed_border),
            "nms_pre": int(rpn_nms_pre),
            "nms_iou": float(rpn_nms_iou),
            "max_proposals_train": int(rpn_proposals_train),
            "max_proposals_test": int(rpn_proposals_test),
            "rotated_nms": bool(rpn_rotated_nms),
        }
        self.roi_options: dict[str, Any] = {
            "roi_size": int(roi_size),
            "sampling_ratio": int(roi_sampling_ratio),
            "finest_scale": float(roi_finest_scale),
            "fc_channels": int(fc_channels),
            "pos_iou": float(roi_pos_iou),
            "neg_iou": float(roi_neg_iou),
            "num_samples": int(roi_num_samples),
            "pos_fraction": float(roi_pos_fraction),
            "score_threshold": float(score_threshold),
            "nms_iou": float(nms_iou),
            "max_per_image": int(detections_per_tile),
        }
        self.tile_size, self.tile_overlap = int(tile_size), int(tile_overlap)
        self.merge_iou, self.batch_tiles = float(merge_iou), max(1, int(batch_tiles))
        self.max_detections = None if max_detections is None else int(max_detections)
        self.metric = metric
        self.keep_difficult = bool(keep_difficult)
        self.vis_score_thresh = float(vis_score_thresh)

    def build(self, in_channels: list[int], strides: list[int], info: DataInfo) -> None:
        """FPN (plus a max-pooled level), oriented RPN on all its levels, RoI head on the pyramid's own levels.

        Args:
            in_channels: channels of the neck's maps, finest first.
            strides: their strides, pixels (e.g. 4, 8, 16, 32; the RPN adds twice the last).
            info: the data's classes (``K``; the RoI head predicts ``K + 1`` with background).

        Raises:
            ConfigError: if the data has no classes.
        """
        from torchvision.ops import FeaturePyramidNetwork
        from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

        from rsfm.models.rotated.roi_head import RotatedRoIHead
        from rsfm.models.rotated.rpn import OrientedRPN

        super().build(in_channels, strides, info)
        if not self.classes:
            raise ConfigError("model.heads: OrientedRCNNHead needs the data's classes (none given)")
        self.strides = [int(s) for s in strides] + [2 * int(strides[-1])]
        self.fpn = FeaturePyramidNetwork(list(in_channels), self.fpn_channels, extra_blocks=LastLevelMaxPool())
        self.rpn = OrientedRPN(self.fpn_channels, self.strides, **self.rpn_options)
        self.roi_head = RotatedRoIHead(self.fpn_channels, self.strides[:-1], self.num_classes, **self.roi_options)

    # -- forward ----------------------------------------------------------------------------

    def _fpn(self, features: Features) -> list[Tensor]:
        maps = self.fpn(OrderedDict((str(i), f) for i, f in enumerate(features.maps["image"])))
        return list(maps.values())

    def _targets(self, batch: Mapping[str, Any], device: torch.device) -> tuple[list[Tensor], list[Tensor]]:
        """Per image the ``le90`` ground truth and labels trained on (no difficult or degenerate boxes)."""
        from rsfm.ops.obb import regularize_obb

        obbs_out, labels_out = [], []
        difficult = batch.get("difficult")
        for i, (obbs, labels) in enumerate(zip(batch["obbs"], batch["labels"], strict=True)):
            obbs = regularize_obb(obbs.to(device).float().reshape(-1, 5), "le90")
            labels = labels.to(device).long().reshape(-1)
            keep = (obbs[:, 2] >= MIN_GT_SIDE) & (obbs[:, 3] >= MIN_GT_SIDE)
            if difficult is not None and not self.keep_difficult:
                keep &= ~difficult[i].to(device).bool().reshape(-1)
            obbs_out.append(obbs[keep])
            labels_out.append(labels[keep])
        return obbs_out, labels_out

    def forward(self, features: Features, batch: Mapping[str, Any] | None = None) -> Any:
        """Training (with a batch): the four loss terms; evaluation: per-image detections.

        Args:
            features: the task's features (``maps["image"]``: the pyramid, finest first).
            batch: in training, the batch with ``obbs`` (per image ``(N_i, 5)`` ``le90``
                pixels), ``labels`` (``(N_i,)`` int64) and optionally ``difficult``
                (``(N_i,)`` bool).

        Returns:
            Training: ``rpn_cls``, ``rpn_bbox``, ``roi_cls``, ``roi_bbox`` scalar float32
            losses. Evaluation: per image ``obbs`` ``(M, 5)`` float32 pixels of the (unpadded)
            input, ``scores`` ``(M,)`` float32, ``labels`` ``(M,)`` int64 in ``[0, K)``.
        """
        maps = self._fpn(features)
        sizes = [tuple(int(v) for v in s) for s in features.sizes]
        logits, deltas = self.rpn(maps)
        anchors = self.rpn.anchors(maps)
        training = self.training and batch is not None
        proposals = self.rpn.proposals(logits, deltas, anchors, training=training)
        if training:
            assert batch is not None
            gt_obbs, gt_labels = self._targets(batch, maps[0].device)
            rpn_cls, rpn_bbox = self.rpn.loss(logits, deltas, anchors, gt_obbs, sizes)
            roi_cls, roi_bbox = self.roi_head.loss(maps, [p for p, _ in proposals], gt_obbs, gt_labels)
            return {"rpn_cls": rpn_cls, "rpn_bbox": rpn_bbox, "roi_cls": roi_cls, "roi_bbox": roi_bbox}
        return self.roi_head.predict(maps, [p for p, _ in proposals], sizes)

    def loss(self, features: Features, batch: Mapping[str, Any]) -> dict[str, Tensor]:
        """RPN objectness and box losses, RoI classification and box losses (unweighted)."""
        return self(features, batch)

    # -- evaluation -------------------------------------------------------------------------

    @torch.no_grad()
    def detect(self, model: TaskModel, image: Tensor, score_thresh: float | None = None) -> dict[str, Tensor]:
        """Detect oriented objects in one ``(C, H, W)`` image in [0, 1] of any size by overlapping tiles.

        Args:
            model: the task model (normalises, runs the encoder and neck on each tile batch).
            image: ``(C, H, W)`` float32 in [0, 1].
            score_thresh: drop detections scoring below it (None: keep all).

        Returns:
            ``obbs`` ``(M, 5)`` float32 ``le90`` image pixels and radians, ``scores`` ``(M,)``
            float32, ``labels`` ``(M,)`` int64 in ``[0, K)``, by decreasing score.
        """
        from rsfm.models.rotated.postprocess import merge_rotated_detections

        def merge(dets: list[dict[str, Tensor]], origins: list[tuple[int, int]]) -> dict[str, Tensor]:
            return merge_rotated_detections(dets, origins, self.merge_iou, self.max_detections)

        return detect_tiles(
            self, model, image, self.tile_size, self.tile_overlap, self.batch_tiles, merge, score_thresh
        )

    def predict(self, model: TaskModel, batch: Mapping[str, Any]) -> list[dict[str, Tensor]]:
        """Detections of every whole image of the batch (tiled; see :meth:`detect`)."""
        return [self.detect(model, image) for image in batch["image"]]

    def make_metrics(self) -> RotatedDetectionMetricSet:
        """DOTA-style mAP50 (:attr:`metric`: 11-point or all-point)."""
        return RotatedDetectionMetricSet(self.classes, self.metric, self.max_detections)

    def render(self, batch: Mapping[str, Any], index: int, preds: list[dict[str, Tensor]]) -> Image.Image:
        """Ground truth (green; difficult in yellow) beside the detections scoring ``≥ vis_score_thresh`` (red)."""
        target = {"obbs": batch["obbs"][index], "labels": batch["labels"][index]}
        if batch.get("difficult") is not None:
            target["difficult"] = batch["difficult"][index]
        return render_obbs(batch["image"][index], target, preds[index], self.classes, self.vis_score_thresh)


def render_obbs(
    image: Tensor,
    target: Mapping[str, Tensor],
    pred: Mapping[str, Tensor],
    class_names: Sequence[str],
    score_thresh: float = 0.3,
) -> Image.Image:
    """Ground-truth polygons (green; difficult in yellow) beside predicted ones (red), as one RGB image.

    Args:
        image: ``(C, H, W)`` float32 in [0, 1] (the first three bands are drawn; one band as grey).
        target: ``obbs`` ``(N, 5)`` pixels and radians, ``labels`` ``(N,)``, optional
            ``difficult`` ``(N,)`` bool.
        pred: ``obbs`` ``(M, 5)``, ``scores`` ``(M,)``, ``labels`` ``(M,)``.
        class_names: names for the captions.
        score_thresh: predictions below this score are not drawn.

    Returns:
        A ``(2W + 8) × H`` PIL image: ground truth left, predictions right.
    """
    from PIL import Image, ImageDraw

    from rsfm.ops.obb import obb2poly

    base = Image.fromarray(to_uint8_rgb(image))

    def draw(obbs: Tensor, colours: list[str], captions: list[str]) -> Image.Image:
        panel = base.copy()
        pen = ImageDraw.Draw(panel)
        polys = obb2poly(obbs.detach().float().cpu().reshape(-1, 5)).reshape(-1, 4, 2).tolist()
        for poly, colour, caption in zip(polys, colours, captions, strict=True):
            pts = [(float(x), float(y)) for x, y in poly]
            pen.line([*pts, pts[0]], fill=colour, width=2)
            top = min(pts, key=lambda p: p[1])
            pen.text((top[0], max(0.0, top[1] - 10)), caption, fill=colour)
        return panel

    labels = target["labels"].cpu().tolist()
    difficult = target.get("difficult")
    flags = difficult.cpu().tolist() if difficult is not None else [False] * len(labels)
    left = draw(target["obbs"], ["yellow" if d else "lime" for d in flags], [class_names[int(c)] for c in labels])
    keep = pred["scores"].detach().cpu() >= score_thresh
    p_scores, p_labels = pred["scores"].detach().cpu()[keep].tolist(), pred["labels"].cpu()[keep].tolist()
    right = draw(
        pred["obbs"].detach().cpu()[keep],
        ["red"] * len(p_scores),
        [f"{class_names[int(c)]} {s:.2f}" for c, s in zip(p_labels, p_scores, strict=True)],
    )
    out = Image.new("RGB", (2 * base.width + 8, base.height), (255, 255, 255))
    out.paste(left, (0, 0))
    out.paste(right, (base.width + 8, 0))
    return out
