"""The oriented region proposal network of Oriented R-CNN.

Xie et al., "Oriented R-CNN for Object Detection", ICCV 2021, §3 ("Oriented RPN"): on every
level of the feature pyramid, a 3×3 convolution and two sibling 1×1 convolutions predict, for
each of the ``A`` horizontal anchors of a location (:mod:`~rsfm.models.rotated.anchors`), an
objectness logit and six midpoint-offset deltas
(:class:`~rsfm.models.rotated.coders.MidpointOffsetCoder`) that turn the anchor into an
oriented proposal. The weights are shared across levels.

Training: anchors inside the image are matched to the ground truth's enclosing horizontal
boxes by horizontal IoU (positive ``≥ 0.7``, negative ``< 0.3``, and each object claims its
best anchors if their IoU is ``≥ 0.3``), 256 anchors per image are sampled with at most half
positives; losses: binary cross-entropy and smooth L1 (β = 1/9) on the deltas.

Proposals: on each level the 2000 best-scoring anchors are decoded, suppressed by NMS at IoU
0.8 within their level and the 2000 best of the image kept (train and test). As mmrotate's
``OrientedRPNHead`` does, the NMS compares the proposals' enclosing horizontal boxes by default
(torchvision's NMS: far cheaper than a rotated NMS over thousands of boxes); ``rotated_nms``
compares the oriented boxes instead.

.. versionadded:: 0.3
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from rsfm.models.rotated.anchors import grid_anchors, inside_image
from rsfm.models.rotated.coders import MidpointOffsetCoder
from rsfm.models.rotated.losses import rpn_losses
from rsfm.models.rotated.sampling import assign_max_iou, sample_random
from rsfm.ops.obb import obb2hbb

__all__ = ["OrientedRPN"]


class OrientedRPN(nn.Module):
    """Oriented RPN: objectness and midpoint-offset deltas of horizontal anchors, proposals, losses.

    Args:
        channels: channels of the pyramid maps (the FPN's width).
        strides: each level's stride, pixels (e.g. 4, 8, 16, 32, 64).
        scales: anchor sizes in units of the level's stride (8: 32–512 px).
        ratios: anchor height/width ratios.
        pos_iou: horizontal IoU of a positive anchor.
        neg_iou: IoU below which an anchor is negative.
        min_pos_iou: least IoU of the best anchor an object claims (low-quality match).
        num_samples: anchors sampled per image for the loss.
        pos_fraction: largest share of positives among them.
        allowed_border: how far a trained anchor may reach outside the image, pixels
            (negative: all anchors train).
        nms_pre: best-scoring anchors per level decoded into proposals.
        nms_iou: IoU of the NMS among a level's proposals.
        max_proposals_train: proposals kept per image in training.
        max_proposals_test: proposals kept per image in evaluation.
        min_size: proposals with a side below this (pixels) are dropped.
        rotated_nms: NMS on the oriented proposals (rotated IoU) instead of their enclosing
            horizontal boxes.
        beta: smooth L1 transition point of the box loss.

    Raises:
        ValueError: on an empty ``strides`` or bad anchor scales or ratios.
    """

    def __init__(
        self,
        channels: int,
        strides: Sequence[int],
        scales: Sequence[float] = (8.0,),
        ratios: Sequence[float] = (0.5, 1.0, 2.0),
        pos_iou: float = 0.7,
        neg_iou: float = 0.3,
        min_pos_iou: float = 0.3,
        num_samples: int = 256,
        pos_fraction: float = 0.5,
        allowed_border: int = 0,
        nms_pre: int = 2000,
        nms_iou: float = 0.8,
        max_proposals_train: int = 2000,
        max_proposals_test: int = 2000,
        min_size: float = 0.0,
        rotated_nms: bool = False,
        beta: float = 1.0 / 9.0,
    ) -> None:
        super().__init__()
        if not strides:
            raise ValueError("OrientedRPN needs at least one pyramid level")
        if not scales or not ratios or min(scales) <= 0 or min(ratios) <= 0:
            raise ValueError(f"anchor scales and ratios must be positive, got {list(scales)} and {list(ratios)}")
        self.strides = [int(s) for s in strides]
        self.scales, self.ratios = [float(s) for s in scales], [float(r) for r in ratios]
        self.num_anchors = len(self.scales) * len(self.ratios)
        self.pos_iou, self.neg_iou, self.min_pos_iou = float(pos_iou), float(neg_iou), float(min_pos_iou)
        self.num_samples, self.pos_fraction = int(num_samples), float(pos_fraction)
        self.allowed_border = int(allowed_border)
        self.nms_pre, self.nms_iou = int(nms_pre), float(nms_iou)
        self.max_proposals_train, self.max_proposals_test = int(max_proposals_train), int(max_proposals_test)
        self.min_size, self.rotated_nms, self.beta = float(min_size), bool(rotated_nms), float(beta)
        self.coder = MidpointOffsetCoder()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.cls = nn.Conv2d(channels, self.num_anchors, 1)
        self.reg = nn.Conv2d(channels, self.num_anchors * 6, 1)
        for layer in (self.conv, self.cls, self.reg):  # N(0, 0.01), as mmdet's RPN head
            nn.init.normal_(layer.weight, std=0.01)
            nn.init.zeros_(layer.bias)

    def forward(self, maps: Sequence[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """Objectness logits and deltas of every anchor of every level.

        Args:
            maps: per level ``(B, C, H_l, W_l)`` (any float dtype).

        Returns:
            ``(logits, deltas)``: per level ``(B, H_l · W_l · A)`` and ``(B, H_l · W_l · A, 6)``,
            in the anchors' order (:func:`~rsfm.models.rotated.anchors.grid_anchors`), the
            maps' dtype.
        """
        logits, deltas = [], []
        for x in maps:
            t = torch.relu(self.conv(x))
            b = t.shape[0]
            logits.append(self.cls(t).permute(0, 2, 3, 1).reshape(b, -1))
            deltas.append(self.reg(t).permute(0, 2, 3, 1).reshape(b, -1, 6))
        return logits, deltas

    def anchors(self, maps: Sequence[Tensor]) -> list[Tensor]:
        """Per level, the ``(H_l · W_l · A, 4)`` float32 xyxy anchors of the maps' grid, pixels."""
        shapes = [(int(m.shape[-2]), int(m.shape[-1])) for m in maps]
        return grid_anchors(shapes, self.strides[: len(maps)], self.scales, self.ratios, maps[0].device)

    def assign(self, anchors: Tensor, gt_obbs: Tensor, size: tuple[int, int]) -> tuple[Tensor, Tensor]:
        """Match the anchors inside an image to its ground truth by horizontal IoU.

        Args:
            anchors: ``(N, 4)`` xyxy pixels (all levels).
            gt_obbs: ``(G, 5)`` oriented ground truth, pixels; compared through their enclosing
                horizontal boxes.
            size: the image's ``(H, W)`` before padding.

        Returns:
            ``(valid, assigned)``: int64 indices of the anchors that train (inside the image)
            and, for each of them, the matched ground truth (``≥ 0``), ``-1`` (negative) or
            ``-2`` (ignored), see :func:`~rsfm.models.rotated.sampling.assign_max_iou`.
        """
        from torchvision.ops import box_iou

        valid = torch.nonzero(inside_image(anchors, size, self.allowed_border)).flatten()
        cand = anchors[valid]
        if len(gt_obbs):
            ious = box_iou(obb2hbb(gt_obbs.float()), cand)
        else:
            ious = cand.new_zeros((0, len(cand)))
        return valid, assign_max_iou(ious, self.pos_iou, self.neg_iou, self.min_pos_iou, low_quality=True)

    def loss(
        self,
        logits: Sequence[Tensor],
        deltas: Sequence[Tensor],
        anchors: Sequence[Tensor],
        gt_obbs: Sequence[Tensor],
        sizes: Sequence[tuple[int, int]],
    ) -> tuple[Tensor, Tensor]:
        """Objectness and box losses of a batch (sampled anchors of all images together).

        Args:
            logits: per level ``(B, N_l)`` from :meth:`forward`.
            deltas: per level ``(B, N_l, 6)``.
            anchors: per level ``(N_l, 4)`` xyxy pixels from :meth:`anchors`.
            gt_obbs: per image ``(G_i, 5)`` ``le90`` ground truth, pixels (may be empty).
            sizes: per image ``(H, W)`` before padding (anchors outside do not train).

        Returns:
            ``(cls, bbox)`` scalar float32 losses, each a sum over the sampled anchors divided
            by their number.
        """
        flat_anchors = torch.cat(list(anchors))
        all_logits = torch.cat(list(logits), dim=1)
        all_deltas = torch.cat(list(deltas), dim=1)
        picked_logits, picked_deltas, labels, targets = [], [], [], []
        for i, (gts, size) in enumerate(zip(gt_obbs, sizes, strict=True)):
            gts = gts.float()
            valid, assigned = self.assign(flat_anchors, gts, size)
            cand = flat_anchors[valid]
            pos, neg = sample_random(assigned, self.num_samples, self.pos_fraction)
            idx = torch.cat([pos, neg])
            picked_logits.append(all_logits[i, valid[idx]])
            picked_deltas.append(all_deltas[i, valid[idx]])
            lab = torch.zeros(len(idx), device=cand.device)
            lab[: len(pos)] = 1.0
            labels.append(lab)
            tgt = cand.new_zeros((len(idx), 6))
            if len(pos):
                tgt[: len(pos)] = self.coder.encode(cand[pos], gts[assigned[pos]])
            targets.append(tgt)
        return rpn_losses(
            torch.cat(picked_logits), torch.cat(picked_deltas), torch.cat(labels), torch.cat(targets), self.beta
        )

    @torch.no_grad()
    def proposals(
        self,
        logits: Sequence[Tensor],
        deltas: Sequence[Tensor],
        anchors: Sequence[Tensor],
        training: bool,
    ) -> list[tuple[Tensor, Tensor]]:
        """Oriented proposals of every image: best anchors per level, decoded, NMS per level.

        Args:
            logits: per level ``(B, N_l)`` from :meth:`forward`.
            deltas: per level ``(B, N_l, 6)``.
            anchors: per level ``(N_l, 4)`` xyxy pixels.
            training: keep :attr:`max_proposals_train` proposals (else :attr:`max_proposals_test`).

        Returns:
            Per image ``(obbs, scores)``: ``(P, 5)`` float32 ``le90`` boxes (pixels, radians)
            and ``(P,)`` float32 objectness in [0, 1], by decreasing score, ``P ≤`` the maximum.
        """
        from torchvision.ops import batched_nms

        keep_max = self.max_proposals_train if training else self.max_proposals_test
        out = []
        for i in range(logits[0].shape[0]):
            boxes, scores, levels = [], [], []
            for lvl, (lg, dl, an) in enumerate(zip(logits, deltas, anchors, strict=True)):
                s = lg[i].float().sigmoid()
                if self.nms_pre > 0 and len(s) > self.nms_pre:
                    s, top = s.topk(self.nms_pre)
                else:
                    top = torch.arange(len(s), device=s.device)
                boxes.append(self.coder.decode(an[top], dl[i, top]))
                scores.append(s)
                levels.append(torch.full_like(top, lvl))
            b, s, lv = torch.cat(boxes), torch.cat(scores), torch.cat(levels)
            ok = (b[:, 2] > self.min_size) & (b[:, 3] > self.min_size) & torch.isfinite(b).all(dim=1)
            b, s, lv = b[ok], s[ok], lv[ok]
            if self.rotated_nms:
                from rsfm.ops.rotated_nms import batched_nms_rotated

                keep = batched_nms_rotated(b, s, lv, self.nms_iou)
            else:
                keep = batched_nms(obb2hbb(b), s, lv, self.nms_iou)
            keep = keep[:keep_max]
            out.append((b[keep], s[keep]))
        return out
