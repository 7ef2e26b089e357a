"""The rotated RoI head of Oriented R-CNN: rotated RoIAlign, two shared FC layers, classes and deltas.

Xie et al., "Oriented R-CNN for Object Detection", ICCV 2021, §3 ("Oriented R-CNN Head"):
each oriented proposal is pooled into a ``7 × 7`` grid aligned with the box by rotated
RoIAlign on one pyramid level, flattened, passed through two fully connected layers (1024,
ReLU) and two sibling layers: ``K + 1`` class logits (softmax, background last) and five
class-agnostic deltas (:class:`~rsfm.models.rotated.coders.DeltaXYWHTCoder`).

A proposal's level is chosen by its scale ``√(w h)`` as in FPN (Lin et al., CVPR 2017, Eq. 1)
written as mmdet's RoI extractors write it: level ``⌊log2(√(w h) / 56)⌋`` clamped to the
levels given (``< 112`` px: the finest, ``[112, 224)``: the next...). The levels are the
pyramid's own (strides 4–32), without the RPN's extra pooled level, as mmrotate's
configuration has it.

Training (mmrotate's configuration): ground-truth boxes are added to the proposals, which are
matched to the ground truth by rotated IoU (positive ``≥ 0.5``, negative ``< 0.5``, no
low-quality matches); 512 per image are sampled with at most a quarter positives; losses:
softmax cross-entropy and smooth L1 (β = 1) on the deltas of the positives. Inference: per
class, boxes scoring ``> 0.05`` are kept, suppressed by rotated NMS at IoU 0.1 within their
class, and the 2000 best of the image returned.

.. versionadded:: 0.3
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from rsfm.models.rotated.coders import DeltaXYWHTCoder
from rsfm.models.rotated.losses import roi_losses
from rsfm.models.rotated.postprocess import multiclass_nms_rotated
from rsfm.models.rotated.sampling import assign_max_iou, sample_random

__all__ = ["RotatedRoIHead", "roi_levels"]


def roi_levels(obbs: Tensor, num_levels: int, finest_scale: float = 56.0) -> Tensor:
    """The pyramid level each oriented RoI is pooled from, by its scale.

    Level ``⌊log2(√(w h) / finest_scale)⌋`` clamped to ``[0, num_levels - 1]``: with the
    default 56, RoIs under 112 px go to the finest level, 112–224 px to the next, and so on
    (mmdet's ``finest_scale`` rule, FPN's Eq. 1 with ``k0 = 4`` for 224 px on level 2).

    Args:
        obbs: ``(K, 5)`` boxes ``(cx, cy, w, h, θ)``, pixels.
        num_levels: the levels RoIs are pooled from.
        finest_scale: the scale (pixels) whose double is the first level boundary.

    Returns:
        ``(K,)`` int64 level indices.
    """
    scale = (obbs[:, 2].float() * obbs[:, 3].float()).clamp_min(0).sqrt()
    lvl = torch.floor(torch.log2(scale / finest_scale + 1e-6))
    return lvl.clamp(0, num_levels - 1).long()


class RotatedRoIHead(nn.Module):
    """Rotated RoI head: pooled features of oriented proposals → class scores and refined boxes.

    Args:
        channels: channels of the pyramid maps (the FPN's width).
        strides: strides of the levels RoIs are pooled from, pixels (finest first).
        num_classes: ``K`` object classes (the background is class ``K``).
        roi_size: side of the pooled grid (7).
        sampling_ratio: bilinear samples per grid cell and axis (2; 0: adaptive).
        finest_scale: level mapping scale, pixels (56; see :func:`roi_levels`).
        fc_channels: width of the two shared fully connected layers (1024).
        pos_iou: rotated IoU of a positive proposal (0.5).
        neg_iou: IoU below which a proposal is negative (0.5).
        num_samples: proposals sampled per image for the loss (512).
        pos_fraction: largest share of positives among them (0.25).
        add_gt: add the ground-truth boxes to the proposals in training.
        beta: smooth L1 transition point of the box loss (1.0).
        score_threshold: least class score of a detection (0.05).
        nms_iou: rotated IoU of the class-wise NMS (0.1).
        max_per_image: detections kept per image (2000).

    Raises:
        ValueError: on an empty ``strides`` or ``num_classes < 1``.
    """

    def __init__(
        self,
        channels: int,
        strides: Sequence[int],
        num_classes: int,
        roi_size: int = 7,
        sampling_ratio: int = 2,
        finest_scale: float = 56.0,
        fc_channels: int = 1024,
        pos_iou: float = 0.5,
        neg_iou: float = 0.5,
        num_samples: int = 512,
        pos_fraction: float = 0.25,
        add_gt: bool = True,
        beta: float = 1.0,
        score_threshold: float = 0.05,
        nms_iou: float = 0.1,
        max_per_image: int = 2000,
    ) -> None:
        super().__init__()
        if not strides:
            raise ValueError("RotatedRoIHead needs at least one pyramid level")
        if num_classes < 1:
            raise ValueError(f"RotatedRoIHead needs at least one class, got {num_classes}")
        self.strides = [int(s) for s in strides]
        self.num_classes = int(num_classes)
        self.roi_size, self.sampling_ratio, self.finest_scale = int(roi_size), int(sampling_ratio), float(finest_scale)
        self.pos_iou, self.neg_iou = float(pos_iou), float(neg_iou)
        self.num_samples, self.pos_fraction, self.add_gt = int(num_samples), float(pos_fraction), bool(add_gt)
        self.beta = float(beta)
        self.score_threshold, self.nms_iou = float(score_threshold), float(nms_iou)
        self.max_per_image = int(max_per_image)
        self.coder = DeltaXYWHTCoder()
        self.fc1 = nn.Linear(channels * self.roi_size**2, fc_channels)
        self.fc2 = nn.Linear(fc_channels, fc_channels)
        self.cls = nn.Linear(fc_channels, self.num_classes + 1)
        self.reg = nn.Linear(fc_channels, 5)
        for fc in (self.fc1, self.fc2):  # Xavier-uniform shared layers, as mmdet's box heads
            nn.init.xavier_uniform_(fc.weight)
            nn.init.zeros_(fc.bias)
        nn.init.normal_(self.cls.weight, std=0.01)
        nn.init.normal_(self.reg.weight, std=0.001)
        nn.init.zeros_(self.cls.bias)
        nn.init.zeros_(self.reg.bias)

    # -- features ---------------------------------------------------------------------------

    def pool(self, maps: Sequence[Tensor], rois: Tensor) -> Tensor:
        """Rotated RoIAlign of each RoI on its level.

        Args:
            maps: per level ``(B, C, H_l, W_l)`` (at least ``len(strides)`` levels; extra ones
                are not used), any float dtype.
            rois: ``(K, 6)`` ``(batch index, cx, cy, w, h, θ)``, pixels and radians.

        Returns:
            ``(K, C, roi_size, roi_size)`` float32.
        """
        from rsfm.ops.roi_align_rotated import roi_align_rotated

        n = len(self.strides)
        c = maps[0].shape[1]
        out = rois.new_zeros((len(rois), c, self.roi_size, self.roi_size), dtype=torch.float32)
        if len(rois) == 0:
            return out + sum(m.float().sum() * 0.0 for m in maps[:n])
        levels = roi_levels(rois[:, 1:], n, self.finest_scale)
        for lvl in range(n):
            idx = torch.nonzero(levels == lvl).flatten()
            if len(idx) == 0:
                out = out + maps[lvl].float().sum() * 0.0  # every level in the graph (DDP)
                continue
            with torch.autocast(maps[lvl].device.type, enabled=False):  # float32 pooling, as mmrotate's extractor
                pooled = roi_align_rotated(
                    maps[lvl].float(),
                    rois[idx].float(),
                    self.roi_size,
                    1.0 / self.strides[lvl],
                    self.sampling_ratio,
                    aligned=True,
                    clockwise=True,  # rsfm.ops.obb angles turn x toward y
                )
            out = out.index_copy(0, idx, pooled)
        return out

    def forward(self, pooled: Tensor) -> tuple[Tensor, Tensor]:
        """Class logits and deltas of pooled RoIs.

        Args:
            pooled: ``(K, C, roi_size, roi_size)``.

        Returns:
            ``(K, num_classes + 1)`` logits (background last) and ``(K, 5)`` deltas, in the
            layers' compute dtype (bf16 under autocast).
        """
        x = torch.relu(self.fc1(pooled.flatten(1)))
        x = torch.relu(self.fc2(x))
        return self.cls(x), self.reg(x)

    # -- training ---------------------------------------------------------------------------

    def loss(
        self,
        maps: Sequence[Tensor],
        proposals: Sequence[Tensor],
        gt_obbs: Sequence[Tensor],
        gt_labels: Sequence[Tensor],
    ) -> tuple[Tensor, Tensor]:
        """Classification and box losses of a batch (sampled RoIs of all images together).

        Args:
            maps: per level ``(B, C, H_l, W_l)``.
            proposals: per image ``(P_i, 5)`` ``le90`` proposals (no gradient).
            gt_obbs: per image ``(G_i, 5)`` ``le90`` ground truth, pixels.
            gt_labels: per image ``(G_i,)`` int64 in ``[0, K)``.

        Returns:
            ``(cls, bbox)`` scalar float32 losses, each a sum over the sampled RoIs divided by
            their number.
        """
        from rsfm.ops.rotated_iou import box_iou_rotated

        rois, labels, targets = [], [], []
        for i, (props, gts, labs) in enumerate(zip(proposals, gt_obbs, gt_labels, strict=True)):
            props, gts = props.detach().float(), gts.float()
            if self.add_gt and len(gts):
                props = torch.cat([gts, props])
            ious = box_iou_rotated(gts, props) if len(gts) else props.new_zeros((0, len(props)))
            assigned = assign_max_iou(ious, self.pos_iou, self.neg_iou, self.pos_iou, low_quality=False)
            pos, neg = sample_random(assigned, self.num_samples, self.pos_fraction)
            idx = torch.cat([pos, neg])
            boxes = props[idx]
            rois.append(torch.cat([boxes.new_full((len(idx), 1), float(i)), boxes], dim=1))
            lab = torch.full((len(idx),), self.num_classes, dtype=torch.int64, device=boxes.device)
            tgt = boxes.new_zeros((len(idx), 5))
            if len(pos):
                matched = assigned[pos]
                lab[: len(pos)] = labs.to(boxes.device)[matched]
                tgt[: len(pos)] = self.coder.encode(props[pos], gts[matched])
            labels.append(lab)
            targets.append(tgt)
        all_rois = torch.cat(rois)
        cls_logits, deltas = self(self.pool(maps, all_rois))
        return roi_losses(cls_logits, deltas, torch.cat(labels), torch.cat(targets), self.num_classes, self.beta)

    # -- inference --------------------------------------------------------------------------

    @torch.no_grad()
    def predict(
        self,
        maps: Sequence[Tensor],
        proposals: Sequence[Tensor],
        sizes: Sequence[tuple[int, int]],
    ) -> list[dict[str, Tensor]]:
        """Detections of every image: class scores, refined boxes, class-wise rotated NMS.

        Args:
            maps: per level ``(B, C, H_l, W_l)``.
            proposals: per image ``(P_i, 5)`` ``le90`` proposals.
            sizes: per image ``(H, W)`` before padding: box centres are clamped into it.

        Returns:
            Per image ``obbs`` ``(M, 5)`` float32 ``le90`` pixels, ``scores`` ``(M,)`` float32,
            ``labels`` ``(M,)`` int64 in ``[0, K)``, by decreasing score, ``M ≤ max_per_image``.
        """
        rois = torch.cat(
            [torch.cat([p.new_full((len(p), 1), float(i)), p.float()], dim=1) for i, p in enumerate(proposals)]
        )
        cls_logits, deltas = self(self.pool(maps, rois))
        scores = cls_logits.float().softmax(dim=-1)
        boxes = self.coder.decode(rois[:, 1:], deltas)
        out = []
        start = 0
        for p, (h, w) in zip(proposals, sizes, strict=True):
            end = start + len(p)
            b = boxes[start:end].clone()
            b[:, 0] = b[:, 0].clamp(0, w)
            b[:, 1] = b[:, 1].clamp(0, h)
            out.append(
                multiclass_nms_rotated(
                    b, scores[start:end, : self.num_classes], self.score_threshold, self.nms_iou, self.max_per_image
                )
            )
            start = end
        return out
