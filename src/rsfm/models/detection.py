"""Faster R-CNN with FPN on an rsfm backbone, and tiled detection of large images.

The detector is torchvision's :class:`~torchvision.models.detection.FasterRCNN` (Ren et al.,
NeurIPS 2015) with a feature pyramid network (Lin et al., CVPR 2017) built on the four maps
of :func:`rsfm.models.adapters.build_backbone` (the ViTDet simple pyramid of a ViT, or the
stages of a ResNet), plus a max-pooled fifth level. Anchors are sized to the strides (four
times each level's stride by default: 16–256 pixels for a patch-16 ViT, 8–128 for patch 8),
which suits the small objects of remote-sensing imagery better than torchvision's COCO
default of 32–512.

Unlike torchvision's default, images are never resized: the network sees crops and tiles at
their native ground sampling distance. Large images are detected by
:func:`detect_tiled`: overlapping tiles, boxes shifted back to image pixels and merged across
tiles by class-wise non-maximum suppression.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import FeaturePyramidNetwork, MultiScaleRoIAlign, batched_nms
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from rsfm.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from rsfm.models.adapters import build_backbone

__all__ = [
    "FPNBackbone",
    "build_faster_rcnn",
    "default_anchor_sizes",
    "detect_tiled",
    "merge_detections",
    "tile_windows",
]


class FPNBackbone(nn.Module):
    """An rsfm multi-scale backbone followed by an FPN, in torchvision's detection interface.

    Args:
        body: a module returning four maps ``(B, C_i, H/s_i, W/s_i)`` with ``out_channels``
            and ``strides`` attributes (:class:`~rsfm.models.adapters.ViTFeaturePyramid` or
            :class:`~rsfm.models.adapters.ResNetFeatures`).
        out_channels: common FPN width.

    ``forward((B, 3, H, W))`` returns an ``OrderedDict`` ``'0'``–``'3'`` of the four levels
    and ``'pool'`` (stride doubled), each ``(B, out_channels, H/s, W/s)``; ``strides`` lists
    the five strides in pixels.
    """

    def __init__(self, body: nn.Module, out_channels: int = 256) -> None:
        super().__init__()
        self.body = body
        self.fpn = FeaturePyramidNetwork(list(body.out_channels), out_channels, extra_blocks=LastLevelMaxPool())
        self.out_channels = out_channels
        self.strides = [*body.strides, 2 * body.strides[-1]]

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        """``(B, 3, H, W)`` normalised → the five FPN maps (see the class docstring)."""
        feats = self.body(x)
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(feats)))


class _NativeSizeTransform(GeneralizedRCNNTransform):
    """Normalise and batch (pad) images, but never resize them or their boxes."""

    def resize(self, image: Tensor, target: dict[str, Tensor] | None = None) -> tuple[Tensor, Any]:
        return image, target


def default_anchor_sizes(strides: Sequence[int]) -> tuple[tuple[int], ...]:
    """One anchor size per pyramid level, four times its stride (pixels)."""
    return tuple((4 * int(s),) for s in strides)


def build_faster_rcnn(
    backbone: dict[str, Any],
    num_classes: int,
    fpn_channels: int = 256,
    anchor_sizes: Sequence[Sequence[int]] | None = None,
    aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
    image_mean: Sequence[float] | None = None,
    image_std: Sequence[float] | None = None,
    size: int = 512,
    box_score_thresh: float = 0.05,
    box_nms_thresh: float = 0.5,
    detections_per_img: int = 100,
    box_batch_size_per_image: int = 512,
    rpn_post_nms_top_n_test: int = 1000,
) -> FasterRCNN:
    """Faster R-CNN + FPN on ``build_backbone(backbone)``.

    Args:
        backbone: the :func:`~rsfm.models.adapters.build_backbone` spec.
        num_classes: foreground classes ``K``; the model predicts labels ``1..K`` (0 is
            torchvision's background).
        fpn_channels: FPN width.
        anchor_sizes: one tuple of sizes (pixels) per level, five levels; default
            :func:`default_anchor_sizes` of the strides.
        aspect_ratios: anchor height/width ratios, the same at every level.
        image_mean: per-channel mean for inputs in [0, 1]; an encoder's ``rsfm_meta`` takes
            precedence, ImageNet's is the fallback.
        image_std: per-channel std, likewise.
        size: nominal input side (pixels), recorded as torchvision's ``min_size``/``max_size``;
            images are not resized whatever their size.
        box_score_thresh: minimum score of a returned detection.
        box_nms_thresh: class-wise NMS IoU within an image (tile).
        detections_per_img: detections kept per image (tile).
        box_batch_size_per_image: proposals sampled per training image for the box head
            (torchvision's 512; fewer makes CPU training much faster, RoIAlign's backward
            dominating).
        rpn_post_nms_top_n_test: proposals per image (tile) scored by the box head at
            inference (torchvision's 1000; the Faster R-CNN paper used 300).

    Returns:
        The detector; ``model.backbone`` is an :class:`FPNBackbone`.

    Raises:
        ValueError: if ``anchor_sizes`` does not have five levels.
    """
    body = build_backbone(backbone)
    meta = getattr(body, "rsfm_meta", None) or {}
    mean = list(meta.get("mean") or image_mean or IMAGENET_MEAN)
    std = list(meta.get("std") or image_std or IMAGENET_STD)
    fpn = FPNBackbone(body, fpn_channels)
    sizes = tuple(tuple(int(v) for v in s) for s in anchor_sizes) if anchor_sizes else default_anchor_sizes(fpn.strides)
    if len(sizes) != len(fpn.strides):
        raise ValueError(f"model.anchor_sizes needs {len(fpn.strides)} levels (strides {fpn.strides}), got {sizes}")
    anchors = AnchorGenerator(sizes, (tuple(float(a) for a in aspect_ratios),) * len(sizes))
    roi_pool = MultiScaleRoIAlign(featmap_names=["0", "1", "2", "3"], output_size=7, sampling_ratio=2)
    model = FasterRCNN(
        fpn,
        num_classes=num_classes + 1,
        min_size=size,
        max_size=size,
        image_mean=mean,
        image_std=std,
        rpn_anchor_generator=anchors,
        box_roi_pool=roi_pool,
        box_score_thresh=box_score_thresh,
        box_nms_thresh=box_nms_thresh,
        box_detections_per_img=detections_per_img,
        box_batch_size_per_image=box_batch_size_per_image,
        rpn_post_nms_top_n_test=rpn_post_nms_top_n_test,
    )
    # pad batches to a multiple of 32 and of the coarsest backbone stride (2× a ViT's patch)
    model.transform = _NativeSizeTransform(size, size, mean, std, size_divisible=math.lcm(32, int(body.strides[-1])))
    return model


def tile_windows(height: int, width: int, tile: int, overlap: int) -> list[tuple[int, int, int, int]]:
    """Overlapping tiles covering an image; the last tile of a row/column ends at the border.

    Args:
        height: image height, pixels.
        width: image width, pixels.
        tile: tile side, pixels (a smaller image gives one tile of its own size).
        overlap: minimum overlap of neighbouring tiles, pixels, ``0 <= overlap < tile``.

    Returns:
        ``(y0, x0, y1, x1)`` windows, row-major.

    Raises:
        ValueError: on a bad ``tile``/``overlap``.
    """
    if tile <= 0 or not 0 <= overlap < tile:
        raise ValueError(f"need tile > 0 and 0 <= overlap < tile, got tile={tile}, overlap={overlap}")

    def starts(n: int) -> list[int]:
        if n <= tile:
            return [0]
        out = list(range(0, n - tile, tile - overlap))
        return [*out, n - tile]

    return [(y, x, min(y + tile, height), min(x + tile, width)) for y in starts(height) for x in starts(width)]


def merge_detections(
    detections: Sequence[dict[str, Tensor]],
    offsets: Sequence[tuple[int, int]],
    iou_threshold: float = 0.5,
    max_detections: int | None = None,
) -> dict[str, Tensor]:
    """Shift per-tile detections to image pixels and merge them by class-wise NMS.

    Args:
        detections: per tile, ``boxes`` ``(n, 4)`` float32 xyxy tile pixels, ``scores``
            ``(n,)`` float32 and ``labels`` ``(n,)`` int64.
        offsets: per tile, its ``(y0, x0)`` in the image, pixels.
        iou_threshold: NMS IoU across tiles (objects seen by several overlapping tiles).
        max_detections: keep the best-scoring ones; ``None``: all.

    Returns:
        ``boxes`` ``(M, 4)`` float32 xyxy image pixels, ``scores`` ``(M,)``, ``labels`` ``(M,)``,
        sorted by decreasing score.
    """
    boxes = [
        d["boxes"] + d["boxes"].new_tensor([x0, y0, x0, y0]) for d, (y0, x0) in zip(detections, offsets, strict=True)
    ]
    if not boxes:
        return {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64)}
    b = torch.cat(boxes)
    s = torch.cat([d["scores"] for d in detections])
    lab = torch.cat([d["labels"] for d in detections])
    keep = batched_nms(b, s, lab, iou_threshold)  # sorted by decreasing score
    if max_detections is not None:
        keep = keep[:max_detections]
    return {"boxes": b[keep], "scores": s[keep], "labels": lab[keep]}


@torch.no_grad()
def detect_tiled(
    model: nn.Module,
    image: Tensor,
    tile: int,
    overlap: int,
    iou_threshold: float = 0.5,
    max_detections: int | None = None,
    batch_size: int = 4,
) -> dict[str, Tensor]:
    """Detect objects in an image of any size by overlapping tiles.

    Args:
        model: a torchvision detector in eval mode (images in [0, 1], list input).
        image: ``(3, H, W)`` float32 in [0, 1].
        tile: tile side, pixels.
        overlap: tile overlap, pixels; objects up to this size are seen whole by some tile.
        iou_threshold: NMS IoU of the cross-tile merge.
        max_detections: cap of the merged detections; ``None``: no cap.
        batch_size: tiles per forward pass.

    Returns:
        ``boxes`` ``(M, 4)`` float32 xyxy image pixels, ``scores`` ``(M,)`` float32 and
        ``labels`` ``(M,)`` int64 (the model's labels, 1-based for torchvision detectors).
    """
    _, h, w = image.shape
    windows = tile_windows(h, w, tile, overlap)
    dets: list[dict[str, Tensor]] = []
    for i in range(0, len(windows), batch_size):
        chunk = windows[i : i + batch_size]
        dets += model([image[:, y0:y1, x0:x1] for y0, x0, y1, x1 in chunk])
    return merge_detections(dets, [(y0, x0) for y0, x0, _, _ in windows], iou_threshold, max_detections)
