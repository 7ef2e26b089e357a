"""Instance segmentation: a Mask R-CNN head (RPN, box and mask RoI heads) with an FPN on the neck's pyramid.

The model is torchvision's Mask R-CNN (He et al., "Mask R-CNN", ICCV 2017): Faster R-CNN (Ren
et al., NeurIPS 2015) on a feature pyramid network (Lin et al., CVPR 2017) with a max-pooled
fifth level, built on the task's maps (the ViTDet simple pyramid of a ViT, or a ResNet's
stages) as :class:`~rsfm.models.heads.detection.FasterRCNNHead` is, plus the mask branch: RoIAlign
of 14 × 14 on the pyramid's own levels, four 3 × 3 convolutions of 256 channels, a 2× transposed
convolution and one 1 × 1 logit map per class, 28 × 28 over each box (§3 of the paper; its
binary cross-entropy on the ground-truth class's map only, §3 "Mask Representation").

Defaults are MMDetection's ``mask-rcnn_r50_fpn_1x_coco`` training and test settings: RPN
positives at IoU ≥ 0.7, negatives < 0.3, 256 anchors sampled per image half positive, 2,000
proposals per level before NMS (0.7) and 1,000 after in training, 1,000 and 1,000 at test; box
head of two 1,024-wide fully connected layers on 7 × 7 RoIAlign, 512 RoIs sampled per image a
quarter positive (IoU ≥ 0.5); test: score ≥ 0.05, class-wise NMS at 0.5, 100 detections,
masks thresholded at 0.5. Anchors are four times each level's stride (as FasterRCNNHead's), and
images are never resized: training sees crops, evaluation whole scenes cut into overlapping tiles.

Tiled prediction keeps each tile detection's 28 × 28 mask probabilities, shifts its box to
image pixels, merges the tiles by class-wise NMS on the boxes (objects seen by several tiles)
and only then pastes the survivors' masks into the image (as torchvision's
``paste_masks_in_image``, but each on a canvas of its box's size), thresholded to bool.
Memory: the output masks are full-image ``(M, H, W)`` bool with ``M ≤ max_detections``, i.e.
``M·H·W`` bytes (100 masks of a 1,000 × 1,500 scene: 150 MB), which is why the number kept per
image is capped; per tile only the 28 × 28 maps are kept, and the metric run-length encodes
the masks as soon as it receives them. Pasting a shifted box in the image equals pasting it
in its tile and shifting (tile origins are whole pixels) except where the paste's one-pixel
padding ring reaches past the tile's border.

Metrics: COCO mask and box AP (:class:`~rsfm.metrics.instance.InstanceSegmentationMAP`;
``mask_mAP50`` selects checkpoints). Difficult objects are COCO ``iscrowd`` regions in the
metric and trained on like any other object (as FasterRCNNHead does).

.. versionadded:: 0.3
"""

from __future__ import annotations

import colorsys
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor

from rsfm.models.heads.base import Features, Head, HeadMetrics
from rsfm.models.heads.detection import FasterRCNNHead
from rsfm.models.heads.segmentation import to_uint8_rgb
from rsfm.models.inference import detect_tiles
from rsfm.utils.errors import ConfigError
from rsfm.utils.registry import HEADS

if TYPE_CHECKING:
    from PIL import Image

    from rsfm.data.base import DataInfo
    from rsfm.models.task_model import TaskModel

__all__ = [
    "InstanceSegmentationMetricSet",
    "MaskRCNNHead",
    "class_colours",
    "merge_instances",
    "paste_masks",
    "render_instances",
]

#: ground truth thinner than this (pixels) is left out of training (its box regression target is undefined)
MIN_GT_SIDE = 1e-2


class InstanceSegmentationMetricSet(HeadMetrics):
    """COCO mask and box mAP (percent) of a split, gathered over DDP ranks.

    Args:
        classes: class names.
        max_detections: detections per image and class scored (COCO's ``maxDets``, 100).
    """

    names = ("mask_mAP50", "mask_mAP50_95", "box_mAP50", "box_mAP50_95")

    def __init__(self, classes: list[str], max_detections: int = 100) -> None:
        super().__init__()
        from rsfm.metrics.instance import InstanceSegmentationMAP

        self.classes = list(classes)
        self.coco = InstanceSegmentationMAP(self.classes, max_detections)
        self._result: dict[str, Any] | None = None

    @staticmethod
    def _targets(batch: Mapping[str, Any]) -> list[dict[str, Tensor]]:
        out = []
        for i, (boxes, labels, masks) in enumerate(zip(batch["boxes"], batch["labels"], batch["masks"], strict=True)):
            t = {"boxes": boxes, "labels": labels, "masks": masks}
            if batch.get("difficult") is not None:
                t["difficult"] = batch["difficult"][i]
            out.append(t)
        return out

    def update(self, preds: list[dict[str, Tensor]], batch: Mapping[str, Any]) -> None:
        """Add per-image instances (``boxes``, ``scores``, ``labels``, ``masks`` ``(M, H, W)`` bool) and the truth."""
        self._result = None
        self.coco.update(preds, self._targets(batch))

    def _compute(self) -> dict[str, Any]:
        if self._result is None:
            import torch.distributed as dist

            from rsfm.metrics.voc import distributed_gather

            distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
            self._result = self.coco.compute(world_gather=distributed_gather if distributed else None)
        return self._result

    def compute(self) -> dict[str, float]:
        """Mask and box mAP50 and mAP50:95, percent; 0 when no object was seen."""
        r = self._compute()
        return {name: float(r[name] or 0.0) for name in self.names}

    def report(self) -> dict[str, Any]:
        """Overall and per-class mask and box AP with object counts, the protocol and the detection cap."""
        return {**self._compute(), "classes": self.classes, "metric": "coco"}

    def reset(self) -> None:
        """Forget the accumulated images."""
        self._result = None
        self.coco.reset()


def paste_masks(mask_probs: Tensor, boxes: Tensor, size: tuple[int, int], threshold: float = 0.5) -> Tensor:
    """Paste per-box mask probabilities into full-image binary masks.

    Each ``S × S`` map is resized bilinearly onto its box as torchvision's
    ``paste_masks_in_image`` does (with its one-pixel padding ring, the box widened to match),
    then thresholded. Each map is pasted on a canvas of its own box's size and copied into the
    image (clipped at its borders), so no full-image float map is ever made: the result equals
    ``paste_masks_in_image(...) >= threshold`` at a fraction of its memory.

    Args:
        mask_probs: ``(M, S, S)`` float probabilities over each box (Mask R-CNN: ``S = 28``).
        boxes: ``(M, 4)`` float32 xyxy image pixels.
        size: ``(H, W)`` of the image, pixels.
        threshold: a pixel is inside when its probability is ``>=`` it (0.5, as MMDetection).

    Returns:
        ``(M, H, W)`` bool on ``mask_probs``' device.
    """
    from torchvision.models.detection.roi_heads import expand_boxes, expand_masks, paste_mask_in_image

    h, w = int(size[0]), int(size[1])
    out = torch.zeros((len(mask_probs), h, w), dtype=torch.bool, device=mask_probs.device)
    if not len(mask_probs):
        return out
    padded, scale = expand_masks(mask_probs[:, None].float(), padding=1)
    for i, (x0, y0, x1, y1) in enumerate(expand_boxes(boxes.float(), scale).to(torch.int64).tolist()):
        bw, bh = max(x1 - x0 + 1, 1), max(y1 - y0 + 1, 1)
        local = torch.tensor([0, 0, bw - 1, bh - 1])
        canvas = paste_mask_in_image(padded[i, 0], local, bh, bw)  # the box's pixels only
        cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x0 + bw, w), min(y0 + bh, h)
        if cx1 > cx0 and cy1 > cy0:
            out[i, cy0:cy1, cx0:cx1] = canvas[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0] >= threshold
    return out


def merge_instances(
    detections: Sequence[dict[str, Tensor]],
    offsets: Sequence[tuple[int, int]],
    size: tuple[int, int],
    iou_threshold: float = 0.5,
    max_detections: int = 100,
    mask_threshold: float = 0.5,
    score_thresh: float | None = None,
) -> dict[str, Tensor]:
    """Shift per-tile instances to image pixels, merge them by class-wise NMS on the boxes, paste the masks.

    Args:
        detections: per tile, ``boxes`` ``(n, 4)`` float32 xyxy tile pixels, ``scores``
            ``(n,)``, ``labels`` ``(n,)`` int64 and ``mask_probs`` ``(n, S, S)`` float32
            probabilities over each box.
        offsets: per tile, its ``(y0, x0)`` in the image, pixels.
        size: ``(H, W)`` of the image, pixels.
        iou_threshold: box IoU of the NMS across tiles (objects seen by several overlapping tiles).
        max_detections: the best-scoring instances kept (and pasted).
        mask_threshold: probability from which a pixel is inside a mask.
        score_thresh: drop instances scoring below it before pasting (None: keep all).

    Returns:
        ``boxes`` ``(M, 4)`` float32 xyxy image pixels, ``scores`` ``(M,)`` float32, ``labels``
        ``(M,)`` int64, ``masks`` ``(M, H, W)`` bool, by decreasing score, on the detections'
        device (the CPU when there are no tiles).
    """
    from torchvision.ops import batched_nms

    h, w = int(size[0]), int(size[1])
    if not detections:
        return {
            "boxes": torch.zeros(0, 4),
            "scores": torch.zeros(0),
            "labels": torch.zeros(0, dtype=torch.int64),
            "masks": torch.zeros(0, h, w, dtype=torch.bool),
        }
    b = torch.cat(
        [d["boxes"] + d["boxes"].new_tensor([x0, y0, x0, y0]) for d, (y0, x0) in zip(detections, offsets, strict=True)]
    )
    s = torch.cat([d["scores"] for d in detections])
    lab = torch.cat([d["labels"] for d in detections])
    probs = torch.cat([d["mask_probs"] for d in detections])
    keep = batched_nms(b, s, lab, iou_threshold)  # by decreasing score
    if score_thresh is not None:
        keep = keep[s[keep] >= score_thresh]
    keep = keep[:max_detections]
    return {
        "boxes": b[keep],
        "scores": s[keep],
        "labels": lab[keep],
        "masks": paste_masks(probs[keep], b[keep], (h, w), mask_threshold),
    }


@HEADS.register
class MaskRCNNHead(FasterRCNNHead):
    """Mask R-CNN + FPN on the task's pyramid, with tiled inference on whole scenes.

    Args:
        fpn_channels: FPN width (256).
        anchor_sizes: anchor sizes (pixels) per level, five levels (the pyramid's four plus
            the pooled one); default four times each level's stride.
        aspect_ratios: anchor height/width ratios.
        fc_channels: width of the box head's two fully connected layers (1024).
        mask_channels: width of the mask head's convolutions and transposed convolution (256).
        mask_convs: 3 × 3 convolutions of the mask head (4).
        rpn_batch_size_per_image: anchors sampled per crop for the RPN loss (256, half positive).
        rpn_pre_nms_top_n_train: proposals per level before the RPN's NMS in training (2000).
        rpn_post_nms_top_n_train: proposals per crop after it, sampled by the RoI heads (1000).
        rpn_pre_nms_top_n_test: proposals per level before NMS at inference (1000).
        rpn_post_nms_top_n_test: proposals per tile scored by the RoI heads at inference (1000).
        box_batch_size_per_image: proposals sampled per crop for the box and mask losses (512,
            a quarter positive; fewer makes CPU training much faster).
        box_score_thresh: least score of a detection (0.05).
        box_nms_thresh: class-wise NMS IoU within a tile (0.5).
        detections_per_tile: detections (with masks) kept per tile (100).
        mask_thresh: probability from which a pixel is in a mask (0.5).
        tile: inference tile side, pixels.
        overlap: inference tile overlap, pixels (at least the largest object's size).
        merge_iou: class-wise box NMS IoU of the merge across tiles.
        batch_tiles: tiles per forward pass at inference.
        max_detections: instances kept per image after merging, pasted and scored (COCO's 100;
            each takes ``H·W`` bytes of the output, see the module's notes).
        vis_score_thresh: least score of a drawn instance.
        loss_weight: weight of this head's loss (the sum of the RPN, box and mask terms).
        evaluate: score this head.

    Raises:
        ConfigError: on a bad tile or overlap, or non-positive sizes or counts.
    """

    target_keys = ("boxes", "labels", "masks")
    monitor = "mask_mAP50"
    output_kind = "masks"
    #: the class-dependent layers: box classifier and regressor, the per-class mask logits
    predictors: ClassVar[tuple[str, ...]] = ("roi_heads.box_predictor", "roi_heads.mask_predictor.mask_fcn_logits")

    def __init__(
        self,
        fpn_channels: int = 256,
        anchor_sizes: list[list[int]] | None = None,
        aspect_ratios: list[float] = [0.5, 1.0, 2.0],  # noqa: B006
        fc_channels: int = 1024,
        mask_channels: int = 256,
        mask_convs: int = 4,
        rpn_batch_size_per_image: int = 256,
        rpn_pre_nms_top_n_train: int = 2000,
        rpn_post_nms_top_n_train: int = 1000,
        rpn_pre_nms_top_n_test: int = 1000,
        rpn_post_nms_top_n_test: int = 1000,
        box_batch_size_per_image: int = 512,
        box_score_thresh: float = 0.05,
        box_nms_thresh: float = 0.5,
        detections_per_tile: int = 100,
        mask_thresh: float = 0.5,
        tile: int = 512,
        overlap: int = 128,
        merge_iou: float = 0.5,
        batch_tiles: int = 4,
        max_detections: int = 100,
        vis_score_thresh: float = 0.5,
        loss_weight: float = 1.0,
        evaluate: bool = True,
    ) -> None:
        super().__init__(
            fpn_channels=fpn_channels,
            anchor_sizes=anchor_sizes,
            aspect_ratios=aspect_ratios,
            box_score_thresh=box_score_thresh,
            box_nms_thresh=box_nms_thresh,
            detections_per_tile=detections_per_tile,
            box_batch_size_per_image=box_batch_size_per_image,
            rpn_post_nms_top_n_test=rpn_post_nms_top_n_test,
            tile=tile,
            overlap=overlap,
            merge_iou=merge_iou,
            batch_tiles=batch_tiles,
            max_detections=max_detections,
            metric="coco",
            vis_score_thresh=vis_score_thresh,
            loss_weight=loss_weight,
            evaluate=evaluate,
        )
        counts = {
            "fpn_channels": fpn_channels,
            "fc_channels": fc_channels,
            "mask_channels": mask_channels,
            "mask_convs": mask_convs,
            "rpn_batch_size_per_image": rpn_batch_size_per_image,
            "rpn_pre_nms_top_n_train": rpn_pre_nms_top_n_train,
            "rpn_post_nms_top_n_train": rpn_post_nms_top_n_train,
            "rpn_pre_nms_top_n_test": rpn_pre_nms_top_n_test,
            "rpn_post_nms_top_n_test": rpn_post_nms_top_n_test,
            "box_batch_size_per_image": box_batch_size_per_image,
            "detections_per_tile": detections_per_tile,
            "batch_tiles": batch_tiles,
            "max_detections": max_detections,
        }
        bad = {k: v for k, v in counts.items() if int(v) < 1}
        if bad:
            raise ConfigError(f"model.heads: these MaskRCNNHead options must be at least 1: {bad}")
        if not 0.0 < float(mask_thresh) < 1.0:
            raise ConfigError(f"model.heads: mask_thresh must lie in (0, 1), got {mask_thresh}")
        self.fc_channels, self.mask_channels, self.mask_convs = int(fc_channels), int(mask_channels), int(mask_convs)
        self.rpn_batch_size_per_image = int(rpn_batch_size_per_image)
        self.rpn_pre_nms_top_n = {"training": int(rpn_pre_nms_top_n_train), "testing": int(rpn_pre_nms_top_n_test)}
        self.rpn_post_nms_top_n = {
            "training": int(rpn_post_nms_top_n_train),
            "testing": int(rpn_post_nms_top_n_test),
        }
        self.mask_thresh = float(mask_thresh)
        self.max_detections = int(max_detections)

    def build(self, in_channels: list[int], strides: list[int], info: DataInfo) -> None:
        """FPN (plus a max-pooled level), anchors and RPN on all its levels, box and mask RoI heads on the pyramid's.

        Args:
            in_channels: channels of the neck's maps, finest first.
            strides: their strides, pixels (e.g. 4, 8, 16, 32; the FPN adds twice the last).
            info: the data's classes (``K``; the predictors have ``K + 1`` outputs with background).

        Raises:
            ConfigError: if the data has no classes or ``anchor_sizes`` has not one entry per level.
        """
        from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
        from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
        from torchvision.models.detection.roi_heads import RoIHeads
        from torchvision.ops import MultiScaleRoIAlign

        Head.build(self, in_channels, strides, info)
        if not self.classes:
            raise ConfigError("model.heads: MaskRCNNHead needs the data's classes (none given)")
        self._build_rpn(
            in_channels, strides, self.rpn_batch_size_per_image, self.rpn_pre_nms_top_n, self.rpn_post_nms_top_n
        )
        names = [str(i) for i in range(len(in_channels))]  # RoIs on the pyramid's levels, not the pooled one
        box_pool = MultiScaleRoIAlign(featmap_names=names, output_size=7, sampling_ratio=2)
        mask_pool = MultiScaleRoIAlign(featmap_names=names, output_size=14, sampling_ratio=2)
        k = self.num_classes + 1
        self.roi_heads = RoIHeads(
            box_pool,
            TwoMLPHead(self.fpn_channels * 7 * 7, self.fc_channels),
            FastRCNNPredictor(self.fc_channels, k),
            fg_iou_thresh=0.5,
            bg_iou_thresh=0.5,
            batch_size_per_image=self.box_batch_size_per_image,
            positive_fraction=0.25,
            bbox_reg_weights=None,
            score_thresh=self.box_score_thresh,
            nms_thresh=self.box_nms_thresh,
            detections_per_img=self.detections_per_tile,
            mask_roi_pool=mask_pool,
            mask_head=MaskRCNNHeads(self.fpn_channels, [self.mask_channels] * self.mask_convs, 1),
            mask_predictor=MaskRCNNPredictor(self.mask_channels, self.mask_channels, k),
        )

    # -- forward ----------------------------------------------------------------------------

    @staticmethod
    def _targets(batch: Mapping[str, Any], device: torch.device) -> list[dict[str, Tensor]]:
        """Targets as torchvision takes them: 1-based labels (0 is background), no degenerate boxes."""
        out = []
        for boxes, labels, masks in zip(batch["boxes"], batch["labels"], batch["masks"], strict=True):
            boxes = boxes.to(device).float().reshape(-1, 4)
            keep = ((boxes[:, 2:] - boxes[:, :2]) >= MIN_GT_SIDE).all(1)
            out.append(
                {
                    "boxes": boxes[keep],
                    "labels": labels.to(device).long().reshape(-1)[keep] + 1,
                    "masks": masks.to(device)[keep],
                }
            )
        return out

    def forward(self, features: Features, batch: Mapping[str, Any] | None = None) -> Any:
        """Training (with a batch): the five loss terms; evaluation: per-image detections with mask probabilities.

        Args:
            features: the task's features (``maps["image"]``: the pyramid, finest first).
            batch: in training, the batch with per image ``boxes`` ``(N_i, 4)`` float32 xyxy
                pixels, ``labels`` ``(N_i,)`` int64 in ``[0, K)`` and ``masks`` ``(N_i, H_i,
                W_i)`` uint8 ``{0, 1}``.

        Returns:
            Training: ``loss_objectness``, ``loss_rpn_box_reg``, ``loss_classifier``,
            ``loss_box_reg``, ``loss_mask`` scalar float32 losses. Evaluation: per image
            ``boxes`` ``(M, 4)`` float32 xyxy pixels of the (unpadded) input, ``scores``
            ``(M,)`` float32, ``labels`` ``(M,)`` int64 in ``[0, K)`` and ``mask_probs``
            ``(M, 28, 28)`` float32 probabilities over each box (:func:`paste_masks` makes image masks).
            The FPN follows the autocast dtype; the RPN and RoI heads run in float32 (as
            :meth:`FasterRCNNHead.forward`, which this is with the masks added).
        """
        return super().forward(features, batch)

    @staticmethod
    def _output(detection: dict[str, Tensor]) -> dict[str, Tensor]:
        """One image's torchvision detections: 0-based labels, the box's 28 x 28 mask probabilities."""
        d = detection
        return {"boxes": d["boxes"], "scores": d["scores"], "labels": d["labels"] - 1, "mask_probs": d["masks"][:, 0]}

    def loss(self, features: Features, batch: Mapping[str, Any]) -> dict[str, Tensor]:
        """RPN objectness and box regression, box-head classification and regression, mask BCE (unweighted)."""
        return self(features, batch)

    # -- evaluation -------------------------------------------------------------------------

    @torch.no_grad()
    def detect(self, model: TaskModel, image: Tensor, score_thresh: float | None = None) -> dict[str, Tensor]:
        """Segment the instances of one ``(C, H, W)`` image in [0, 1] of any size by overlapping tiles.

        Args:
            model: the task model (normalises, runs the encoder and neck on each tile batch).
            image: ``(C, H, W)`` float32 in [0, 1].
            score_thresh: drop instances scoring below it (None: keep all).

        Returns:
            ``boxes`` ``(M, 4)`` float32 xyxy image pixels, ``scores`` ``(M,)`` float32,
            ``labels`` ``(M,)`` int64 in ``[0, K)``, ``masks`` ``(M, H, W)`` bool, by decreasing
            score, ``M ≤ max_detections``.
        """
        size = (int(image.shape[-2]), int(image.shape[-1]))

        def merge(dets: list[dict[str, Tensor]], origins: list[tuple[int, int]]) -> dict[str, Tensor]:
            return merge_instances(
                dets, origins, size, self.merge_iou, self.max_detections, self.mask_thresh, score_thresh
            )

        return detect_tiles(self, model, image, self.tile, self.overlap, self.batch_tiles, merge)

    def make_metrics(self) -> InstanceSegmentationMetricSet:
        """COCO mask and box mAP, up to :attr:`max_detections` per image and class."""
        return InstanceSegmentationMetricSet(self.classes, self.max_detections)

    def render(self, batch: Mapping[str, Any], index: int, preds: list[dict[str, Tensor]]) -> Image.Image:
        """The image, the ground truth (difficult boxes in yellow) and the instances scoring ``≥ vis_score_thresh``."""
        target = {k: batch[k][index] for k in ("boxes", "labels", "masks")}
        if batch.get("difficult") is not None:
            target["difficult"] = batch["difficult"][index]
        palette = self.info.palette if self.info is not None and self.info.palette else None
        return render_instances(
            batch["image"][index], target, preds[index], self.classes, self.vis_score_thresh, palette
        )


def class_colours(num_classes: int) -> list[tuple[int, int, int]]:
    """``num_classes`` distinct bright RGB colours (hues spread evenly around the colour wheel)."""
    out = []
    for k in range(num_classes):
        r, g, b = colorsys.hsv_to_rgb((k * 0.618033988749895) % 1.0, 0.85, 1.0)
        out.append((int(255 * r), int(255 * g), int(255 * b)))
    return out


def render_instances(
    image: Tensor,
    target: Mapping[str, Tensor],
    pred: Mapping[str, Tensor],
    class_names: Sequence[str],
    score_thresh: float = 0.5,
    palette: Sequence[Sequence[int]] | None = None,
) -> Image.Image:
    """The image | ground-truth masks and boxes | predicted masks and boxes, as one RGB image.

    Masks are filled (half transparent) in their class's colour; boxes are outlined in it with
    the class name (and the score for predictions); difficult ground truth is outlined in yellow.

    Args:
        image: ``(C, H, W)`` float32 in [0, 1] (the first three bands are drawn; one band as grey).
        target: ``boxes`` ``(N, 4)`` xyxy pixels, ``labels`` ``(N,)``, ``masks`` ``(N, H, W)``
            binary, optional ``difficult`` ``(N,)`` bool.
        pred: ``boxes`` ``(M, 4)``, ``scores`` ``(M,)``, ``labels`` ``(M,)``, ``masks`` ``(M, H, W)`` bool.
        class_names: names for the captions.
        score_thresh: predictions below this score are not drawn.
        palette: ``(R, G, B)`` per class; default :func:`class_colours`.

    Returns:
        A ``(3W + 16) × H`` PIL image.
    """
    from PIL import Image
    from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

    colours = [tuple(int(v) for v in c) for c in palette] if palette else class_colours(len(class_names))
    img = torch.from_numpy(to_uint8_rgb(image)).permute(2, 0, 1).contiguous()

    def draw(masks: Tensor, boxes: Tensor, labels: list[int], captions: list[str], outline: list[Any]) -> Tensor:
        out = img
        if labels:
            fill = [colours[c % len(colours)] for c in labels]
            out = draw_segmentation_masks(out, masks.detach().cpu().bool(), alpha=0.5, colors=fill)
            out = draw_bounding_boxes(out, boxes.detach().cpu().float(), captions, colors=outline, width=2)
        return out

    t_labels = [int(c) for c in target["labels"].cpu().tolist()]
    difficult = target.get("difficult")
    flags = difficult.cpu().tolist() if difficult is not None else [False] * len(t_labels)
    truth = draw(
        target["masks"],
        target["boxes"],
        t_labels,
        [class_names[c] for c in t_labels],
        ["yellow" if d else colours[c % len(colours)] for c, d in zip(t_labels, flags, strict=True)],
    )
    keep = pred["scores"].detach().cpu() >= score_thresh
    p_labels = [int(c) for c in pred["labels"].detach().cpu()[keep].tolist()]
    p_scores = pred["scores"].detach().cpu()[keep].tolist()
    predicted = draw(
        pred["masks"].detach().cpu()[keep],
        pred["boxes"].detach().cpu()[keep],
        p_labels,
        [f"{class_names[c]} {s:.2f}" for c, s in zip(p_labels, p_scores, strict=True)],
        [colours[c % len(colours)] for c in p_labels],
    )
    gap = torch.full((3, img.shape[1], 8), 255, dtype=torch.uint8)
    panel = torch.cat([img, gap, truth, gap, predicted], dim=2)
    return Image.fromarray(panel.permute(1, 2, 0).numpy())
