"""Assignment of anchors and proposals to ground-truth boxes by IoU, and random sampling of them.

The two stages of Oriented R-CNN train as Faster R-CNN's do (Ren et al., NeurIPS 2015, §3.1.2–3.1.3):
every candidate box (an anchor of the RPN, a proposal of the RoI head) is matched to the
ground-truth box it overlaps most, labelled positive, negative or ignored by IoU thresholds,
and a fixed number of positives and negatives is drawn at random for the loss. The RPN
measures the horizontal IoU between its anchors and the ground truth's enclosing horizontal
boxes, the RoI head the rotated IoU between oriented proposals and oriented ground truth
(Xie et al., ICCV 2021, §3, as mmrotate configures it).

.. versionadded:: 0.3
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["IGNORED", "NEGATIVE", "assign_max_iou", "sample_random"]

#: assignment of a box labelled negative (background)
NEGATIVE = -1
#: assignment of a box that is neither positive nor negative (no loss)
IGNORED = -2


def assign_max_iou(
    ious: Tensor,
    pos_iou: float,
    neg_iou: float,
    min_pos_iou: float,
    low_quality: bool,
) -> Tensor:
    """Match boxes to ground truths by IoU (the max-IoU assigner of Faster R-CNN).

    A box whose best IoU is ``≥ pos_iou`` is positive for that ground truth, one whose best
    IoU is ``< neg_iou`` negative, any other ignored. With ``low_quality``, every ground truth
    whose best IoU is ``≥ min_pos_iou`` also claims the boxes that reach that best IoU (so an
    object no box covers well still gets one; where several claim a box, the last wins).

    Args:
        ious: ``(G, N)`` float IoU of ``G`` ground truths with ``N`` boxes.
        pos_iou: positive threshold (0.7 for the RPN, 0.5 for the RoI head).
        neg_iou: negative threshold (0.3, 0.5).
        min_pos_iou: least IoU of a low-quality match (0.3).
        low_quality: allow low-quality matches (the RPN does, the RoI head does not).

    Returns:
        ``(N,)`` int64: the index of the matched ground truth (``≥ 0``, positive),
        :data:`NEGATIVE` or :data:`IGNORED`. Without ground truth every box is negative.
    """
    g, n = ious.shape
    out = torch.full((n,), IGNORED, dtype=torch.int64, device=ious.device)
    if g == 0:
        out.fill_(NEGATIVE)
        return out
    if n == 0:
        return out
    ious = ious.float()
    best, best_gt = ious.max(dim=0)
    out[(best >= 0) & (best < neg_iou)] = NEGATIVE
    pos = best >= pos_iou
    out[pos] = best_gt[pos]
    if low_quality:
        gt_best = ious.max(dim=1, keepdim=True).values  # (G, 1)
        gt_idx, box_idx = torch.nonzero((ious == gt_best) & (gt_best >= min_pos_iou), as_tuple=True)
        last = torch.full((n,), -1, dtype=torch.int64, device=ious.device)
        last.scatter_reduce_(0, box_idx, gt_idx, reduce="amax")
        out = torch.where(last >= 0, last, out)
    return out


def sample_random(assigned: Tensor, num: int, pos_fraction: float) -> tuple[Tensor, Tensor]:
    """Draw at most ``num`` boxes at random, at most ``num · pos_fraction`` of them positive.

    Negatives fill what the positives leave (an image without objects gives ``num``
    negatives). Uses torch's global random generator (seeded per training step by rsfm).

    Args:
        assigned: ``(N,)`` int64 from :func:`assign_max_iou`.
        num: boxes per image (256 for the RPN, 512 for the RoI head).
        pos_fraction: largest share of positives (0.5, 0.25).

    Returns:
        ``(pos, neg)``: int64 indices into ``assigned`` of the sampled positives and negatives.
    """
    pos = torch.nonzero(assigned >= 0).flatten()
    neg = torch.nonzero(assigned == NEGATIVE).flatten()
    num_pos = min(len(pos), int(num * pos_fraction))
    pos = pos[torch.randperm(len(pos), device=pos.device)[:num_pos]]
    num_neg = min(len(neg), num - num_pos)
    neg = neg[torch.randperm(len(neg), device=neg.device)[:num_neg]]
    return pos, neg
