"""Horizontal object detection: a Faster R-CNN head (RPN + RoI heads) with an FPN on the neck's pyramid.

The detector is torchvision's Faster R-CNN (Ren et al., NeurIPS 2015) with a feature pyramid
network (Lin et al., CVPR 2017) on the maps of the task's encoder and neck (the ViTDet simple
pyramid of a ViT, or a ResNet's stages), plus a max-pooled fifth level. Anchors are sized to
the strides (four times each level's stride by default: 16–256 pixels for a patch-16 ViT),
which suits the small objects of remote-sensing imagery better than COCO's 32–512. Images
are never resized: the network sees crops and tiles at their native ground sampling distance.

Whole evaluation scenes are detected by overlapping tiles, boxes shifted back to image pixels
and merged across tiles by class-wise NMS. Metrics: VOC-style AP at IoU 0.5 (``metric:
voc12``, all-point, as DIOR, DIOR-R and DOTA report; ``voc07``, 11-point) with difficult
objects handled as the VOC and DOTA devkits do, or COCO's AP (``metric: coco``). No cap on
the detections scored per image unless ``max_detections`` is set (DOTA scenes hold 1,000+
objects).

.. versionadded:: 0.2
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from rsfm.models.heads.base import Features, Head, HeadMetrics
from rsfm.models.heads.segmentation import to_uint8_rgb
from rsfm.models.inference import detect_tiles, merge_detections
from rsfm.utils.errors import ConfigError
from rsfm.utils.registry import HEADS

if TYPE_CHECKING:
    from PIL import Image

    from rsfm.data.base import DataInfo
    from rsfm.models.task_model import TaskModel

__all__ = ["DetectionMetricSet", "FasterRCNNHead", "default_anchor_sizes", "render_boxes"]

METRICS = ("voc12", "voc07", "coco")


def default_anchor_sizes(strides: Sequence[int]) -> list[list[int]]:
    """One anchor size per pyramid level, four times its stride (pixels)."""
    return [[4 * int(s)] for s in strides]


class DetectionMetricSet(HeadMetrics):
    """mAP50 (percent) of a split: VOC all-point or 11-point AP, or COCO's.

    Under DDP the per-image results of all ranks are gathered before scoring.

    Args:
        classes: class names.
        metric: ``voc12``, ``voc07`` or ``coco``.
        max_detections: detections per image scored (None: all; COCO needs a number, uses 1000
            and caps per image and class).

    Raises:
        ValueError: with ``metric="coco"``, if ``max_detections`` is less than 1.
    """

    def __init__(self, classes: list[str], metric: str = "voc12", max_detections: int | None = None) -> None:
        super().__init__()
        self.classes, self.metric, self.max_detections = list(classes), metric, max_detections
        self.names = ("mAP50", "mAP50_95") if metric == "coco" else ("mAP50",)
        if metric == "coco":
            from rsfm.metrics.coco import DetectionMAP

            self.coco = DetectionMAP(self.classes, 1000 if max_detections is None else max_detections)
        else:
            from rsfm.metrics.voc import VOCMeanAP

            self.voc = VOCMeanAP(self.classes, use_07_metric=metric == "voc07", max_detections=max_detections)
        self._result: dict[str, Any] | None = None

    @staticmethod
    def _targets(batch: Mapping[str, Any]) -> list[dict[str, Tensor]]:
        return [
            {"boxes": b, "labels": lab, "difficult": d}
            for b, lab, d in zip(batch["boxes"], batch["labels"], batch["difficult"], strict=True)
        ]

    def update(self, preds: list[dict[str, Tensor]], batch: Mapping[str, Any]) -> None:
        """Add per-image detections (``boxes`` xyxy pixels, ``scores``, ``labels``) against the batch's boxes."""
        self._result = None
        if self.metric == "coco":
            self.coco.update(preds, self._targets(batch))
        else:
            cpu = [{k: v.detach().cpu() for k, v in p.items()} for p in preds]
            self.voc.update(cpu, [{k: v.cpu() for k, v in t.items()} for t in self._targets(batch)])

    def _compute(self) -> dict[str, Any]:
        if self._result is None:
            import torch.distributed as dist

            from rsfm.metrics.voc import distributed_gather

            distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
            metric = self.coco if self.metric == "coco" else self.voc
            self._result = metric.compute(world_gather=distributed_gather if distributed else None)
        return self._result

    def compute(self) -> dict[str, float]:
        """``mAP50`` (and ``mAP50_95`` with COCO), percent; 0 when no ground-truth object was seen.

        Raises:
            RuntimeError: if a score is undefined although ground truth was seen (a metric
                defect: it is not logged as 0).
        """
        r = self._compute()
        seen = sum(c["num_objects"] for c in r["per_class"].values()) > 0
        out = {}
        for name in self.names:
            if r[name] is None and seen:
                raise RuntimeError(f"{name} is undefined although {self.metric} metrics saw ground-truth objects")
            out[name] = 0.0 if r[name] is None else float(r[name])
        return out

    def report(self) -> dict[str, Any]:
        """Overall and per-class AP with object counts, the protocol and the detection cap."""
        return {**self._compute(), "classes": self.classes, "metric": self.metric}

    def reset(self) -> None:
        """Forget the accumulated images."""
        self._result = None
        if self.metric == "coco":
            self.coco.reset()
        else:
            self.voc.reset()


@HEADS.register
class FasterRCNNHead(Head):
    """Faster R-CNN + FPN on the task's pyramid, with tiled inference on whole scenes.

    Args:
        fpn_channels: FPN width.
        anchor_sizes: anchor sizes (pixels) per level, five levels (the pyramid's four plus
            the pooled one); default four times each level's stride.
        aspect_ratios: anchor height/width ratios.
        box_score_thresh: minimum score of a detection.
        box_nms_thresh: class-wise NMS IoU within a tile.
        detections_per_tile: detections kept per tile (torchvision's ``box_detections_per_img``).
        box_batch_size_per_image: proposals sampled per crop for the box head's loss
            (torchvision's 512; fewer makes CPU training much faster).
        rpn_post_nms_top_n_test: proposals per tile scored by the box head at inference.
        tile: inference tile side, pixels.
        overlap: inference tile overlap, pixels (at least the largest object's size).
        merge_iou: class-wise NMS IoU of the merge across tiles.
        batch_tiles: tiles per forward pass at inference.
        max_detections: detections kept per image after merging and scored; None: all.
        metric: ``voc12`` (all-point VOC AP50, default), ``voc07`` (11-point) or ``coco``.
        vis_score_thresh: minimum score of a drawn or written detection.
        loss_weight: weight of this head's loss (the sum of the RPN and box-head terms).
        evaluate: score this head.

    Raises:
        ConfigError: on an unknown metric, or anchor sizes that do not have one entry per level.
    """

    target_keys = ("boxes", "labels")
    monitor = "mAP50"
    output_kind = "boxes"

    def __init__(
        self,
        fpn_channels: int = 256,
        anchor_sizes: list[list[int]] | None = None,
        aspect_ratios: list[float] = [0.5, 1.0, 2.0],  # noqa: B006
        box_score_thresh: float = 0.05,
        box_nms_thresh: float = 0.5,
        detections_per_tile: int = 1000,
        box_batch_size_per_image: int = 512,
        rpn_post_nms_top_n_test: int = 1000,
        tile: int = 512,
        overlap: int = 128,
        merge_iou: float = 0.5,
        batch_tiles: int = 4,
        max_detections: int | None = None,
        metric: str = "voc12",
        vis_score_thresh: float = 0.5,
        loss_weight: float = 1.0,
        evaluate: bool = True,
    ) -> None:
        super().__init__(loss_weight, evaluate)
        if metric not in METRICS:
            raise ConfigError(f"model.heads: metric must be one of {METRICS}, got {metric!r}")
        if not 0 <= overlap < tile:
            raise ConfigError(f"model.heads: need 0 <= overlap < tile, got overlap={overlap}, tile={tile}")
        self.fpn_channels = int(fpn_channels)
        self.anchor_sizes = anchor_sizes
        self.aspect_ratios = [float(a) for a in aspect_ratios]
        self.box_score_thresh, self.box_nms_thresh = float(box_score_thresh), float(box_nms_thresh)
        self.detections_per_tile = int(detections_per_tile)
        self.box_batch_size_per_image = int(box_batch_size_per_image)
        self.rpn_post_nms_top_n_test = int(rpn_post_nms_top_n_test)
        self.tile, self.overlap, self.merge_iou, self.batch_tiles = (
            int(tile),
            int(overlap),
            float(merge_iou),
            int(batch_tiles),
        )
        self.max_detections = max_detections
        self.metric = metric
        self.vis_score_thresh = float(vis_score_thresh)

    def _build_rpn(
        self,
        in_channels: list[int],
        strides: list[int],
        batch_size_per_image: int = 256,
        pre_nms_top_n: Mapping[str, int] | None = None,
        post_nms_top_n: Mapping[str, int] | None = None,
    ) -> None:
        """The FPN (plus a max-pooled level), its anchors and the RPN (Ren et al. 2015, §3.1).

        Args:
            in_channels: channels of the neck's maps, finest first.
            strides: their strides, pixels (the FPN adds twice the last).
            batch_size_per_image: anchors sampled per image for the RPN loss.
            pre_nms_top_n: proposals per level before NMS, ``training``/``testing``.
            post_nms_top_n: proposals kept after NMS, ``training``/``testing``.

        Raises:
            ConfigError: if ``anchor_sizes`` has not one entry per level.
        """
        from torchvision.models.detection.rpn import AnchorGenerator, RegionProposalNetwork, RPNHead
        from torchvision.ops import FeaturePyramidNetwork
        from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

        self.strides = [*(int(s) for s in strides), 2 * int(strides[-1])]
        self.fpn = FeaturePyramidNetwork(list(in_channels), self.fpn_channels, extra_blocks=LastLevelMaxPool())
        sizes = self.anchor_sizes or default_anchor_sizes(self.strides)
        if len(sizes) != len(self.strides):
            raise ConfigError(
                f"model.heads: anchor_sizes needs {len(self.strides)} levels (strides {self.strides}), got {sizes}"
            )
        anchors = AnchorGenerator(
            tuple(tuple(int(v) for v in s) for s in sizes), (tuple(self.aspect_ratios),) * len(sizes)
        )
        self.rpn = RegionProposalNetwork(
            anchors,
            RPNHead(self.fpn_channels, anchors.num_anchors_per_location()[0]),
            fg_iou_thresh=0.7,
            bg_iou_thresh=0.3,
            batch_size_per_image=int(batch_size_per_image),
            positive_fraction=0.5,
            pre_nms_top_n=dict(pre_nms_top_n or {"training": 2000, "testing": 1000}),
            post_nms_top_n=dict(post_nms_top_n or {"training": 2000, "testing": self.rpn_post_nms_top_n_test}),
            nms_thresh=0.7,
        )

    def build(self, in_channels: list[int], strides: list[int], info: DataInfo) -> None:
        """FPN, anchors, RPN and RoI heads for the pyramid and the classes (+ background)."""
        from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
        from torchvision.models.detection.roi_heads import RoIHeads
        from torchvision.ops import MultiScaleRoIAlign

        super().build(in_channels, strides, info)
        self._build_rpn(in_channels, strides)
        names = [str(i) for i in range(len(in_channels))]
        roi_pool = MultiScaleRoIAlign(featmap_names=names, output_size=7, sampling_ratio=2)
        resolution = roi_pool.output_size[0]
        self.roi_heads = RoIHeads(
            roi_pool,
            TwoMLPHead(self.fpn_channels * resolution**2, 1024),
            FastRCNNPredictor(1024, self.num_classes + 1),
            fg_iou_thresh=0.5,
            bg_iou_thresh=0.5,
            batch_size_per_image=self.box_batch_size_per_image,
            positive_fraction=0.25,
            bbox_reg_weights=None,
            score_thresh=self.box_score_thresh,
            nms_thresh=self.box_nms_thresh,
            detections_per_img=self.detections_per_tile,
        )

    def _fpn(self, features: Features) -> OrderedDict[str, Tensor]:
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(features.maps["image"])))

    def _image_list(self, features: Features) -> Any:
        from torchvision.models.detection.image_list import ImageList

        ref = features.maps["image"][0]
        shape = (ref.shape[0], 1, *features.shape)
        return ImageList(ref.new_zeros(1).expand(shape), [tuple(s) for s in features.sizes])

    def forward(self, features: Features, batch: Mapping[str, Any] | None = None) -> Any:
        """Training (with a batch): the four loss terms; evaluation: per-image detections (labels 0-based).

        The FPN follows the autocast dtype; the RPN and RoI heads run in float32, so boxes are
        decoded and encoded in float32 pixels (bf16 keeps 8 significant bits: steps of 4 px at
        512 to 1024 px) and evaluation returns float32 ``boxes`` and ``scores``.
        """
        fpn = self._fpn(features)
        images = self._image_list(features)
        device = fpn["0"].device
        with torch.autocast(device.type, enabled=False):
            fpn = type(fpn)((k, v.float()) for k, v in fpn.items())
            if self.training and batch is not None:
                targets = self._targets(batch, device)
                proposals, rpn_losses = self.rpn(images, fpn, targets)
                _, roi_losses = self.roi_heads(fpn, proposals, images.image_sizes, targets)
                return {**rpn_losses, **roi_losses}
            proposals, _ = self.rpn(images, fpn)
            detections, _ = self.roi_heads(fpn, proposals, images.image_sizes)
        return [self._output(d) for d in detections]

    @staticmethod
    def _targets(batch: Mapping[str, Any], device: torch.device) -> list[dict[str, Tensor]]:
        """Targets as torchvision takes them: 1-based labels (0 is background)."""
        return [{"boxes": b, "labels": lab + 1} for b, lab in zip(batch["boxes"], batch["labels"], strict=True)]

    @staticmethod
    def _output(detection: dict[str, Tensor]) -> dict[str, Tensor]:
        """One image's torchvision detections with 0-based labels."""
        return {**detection, "labels": detection["labels"] - 1}

    def loss(self, features: Features, batch: Mapping[str, Any]) -> dict[str, Tensor]:
        """RPN objectness and box regression, box-head classification and regression."""
        return self(features, batch)

    @torch.no_grad()
    def detect(self, model: TaskModel, image: Tensor, score_thresh: float | None = None) -> dict[str, Tensor]:
        """Detect objects in one ``(C, H, W)`` image in [0, 1] of any size by overlapping tiles.

        Returns:
            ``boxes`` ``(M, 4)`` float32 xyxy image pixels, ``scores`` ``(M,)``, ``labels``
            ``(M,)`` int64 in ``[0, K)``, by decreasing score.
        """

        def merge(dets: list[dict[str, Tensor]], origins: list[tuple[int, int]]) -> dict[str, Tensor]:
            return merge_detections(dets, origins, self.merge_iou, self.max_detections)

        return detect_tiles(self, model, image, self.tile, self.overlap, self.batch_tiles, merge, score_thresh)

    def predict(self, model: TaskModel, batch: Mapping[str, Any]) -> list[dict[str, Tensor]]:
        """Detections of every whole image of the batch (tiled)."""
        return [self.detect(model, image) for image in batch["image"]]

    def make_metrics(self) -> DetectionMetricSet:
        """VOC or COCO mAP50, per :attr:`metric`."""
        return DetectionMetricSet(self.classes, self.metric, self.max_detections)

    def render(self, batch: Mapping[str, Any], index: int, preds: list[dict[str, Tensor]]) -> Image.Image:
        """Ground truth (green; difficult in yellow) beside the detections (red)."""
        target = {k: batch[k][index] for k in ("boxes", "labels", "difficult")}
        return render_boxes(batch["image"][index], target, preds[index], self.classes, self.vis_score_thresh)


def render_boxes(
    image: Tensor,
    target: Mapping[str, Tensor],
    pred: Mapping[str, Tensor],
    class_names: Sequence[str],
    score_thresh: float = 0.5,
) -> Image.Image:
    """Ground truth (green; difficult in yellow) beside predictions (red), as one RGB image.

    Args:
        image: ``(C, H, W)`` float32 in [0, 1] (the first three bands are drawn).
        target: ``boxes`` ``(N, 4)`` xyxy pixels, ``labels`` ``(N,)``, optional ``difficult``.
        pred: ``boxes`` ``(M, 4)`` xyxy pixels, ``scores`` ``(M,)``, ``labels`` ``(M,)``.
        class_names: names for the box captions.
        score_thresh: predictions below this score are not drawn.

    Returns:
        A ``(2W + 8) × H`` PIL image.
    """
    from torchvision.utils import draw_bounding_boxes

    img = torch.from_numpy(to_uint8_rgb(image)).permute(2, 0, 1).contiguous()
    difficult = target.get("difficult")
    if difficult is None:
        difficult = torch.zeros(len(target["labels"]), dtype=torch.bool)
    t_colors = ["yellow" if d else "lime" for d in difficult.tolist()]
    t_labels = [class_names[int(c)] for c in target["labels"]]
    left = draw_bounding_boxes(img, target["boxes"].cpu(), t_labels, colors=t_colors, width=2) if t_labels else img
    keep = pred["scores"].cpu() >= score_thresh
    p_boxes, p_scores, p_cls = pred["boxes"].cpu()[keep], pred["scores"].cpu()[keep], pred["labels"].cpu()[keep]
    p_labels = [f"{class_names[int(c)]} {float(s):.2f}" for c, s in zip(p_cls, p_scores, strict=True)]
    right = draw_bounding_boxes(img, p_boxes, p_labels, colors="red", width=2) if p_labels else img
    gap = torch.full((3, img.shape[1], 8), 255, dtype=torch.uint8)
    panel = torch.cat([left, gap, right], dim=2)
    from PIL import Image

    return Image.fromarray(panel.permute(1, 2, 0).numpy())
