"""Losses of Oriented R-CNN's two stages, normalised as mmdet/mmrotate normalise them.

Both stages use a classification loss over their sampled boxes and a smooth L1 loss on the
deltas of the positive ones (Xie et al., ICCV 2021, §3; smooth L1: Girshick, ICCV 2015, Eq. 3),
each summed and divided by the number of sampled boxes of the batch (positives and
negatives): a batch with few positives has a small regression loss, as in the reference
implementation. Computed in float32 whatever the dtype of the inputs (autocast).

.. versionadded:: 0.3
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

__all__ = ["rpn_losses", "roi_losses"]


def rpn_losses(
    logits: Tensor,
    deltas: Tensor,
    labels: Tensor,
    targets: Tensor,
    beta: float = 1.0 / 9.0,
) -> tuple[Tensor, Tensor]:
    """Objectness (binary cross-entropy) and box (smooth L1) losses of the sampled anchors.

    Args:
        logits: ``(S,)`` objectness logits of the sampled anchors.
        deltas: ``(S, 6)`` predicted deltas of the sampled anchors.
        labels: ``(S,)`` float, 1 for positives, 0 for negatives.
        targets: ``(S, 6)`` target deltas (rows of negatives are not used).
        beta: smooth L1 transition point (1/9 in mmrotate's Oriented R-CNN).

    Returns:
        ``(cls, bbox)``: scalar float32 losses, sums divided by ``max(S, 1)``; zeros that keep
        the graph when nothing was sampled.
    """
    n = max(int(labels.numel()), 1)
    cls = F.binary_cross_entropy_with_logits(logits.float(), labels.float(), reduction="sum") / n
    pos = labels > 0.5
    bbox = F.smooth_l1_loss(deltas.float()[pos], targets.float()[pos], beta=beta, reduction="sum") / n
    return cls, bbox + 0.0 * deltas.float().sum()


def roi_losses(
    cls_logits: Tensor,
    deltas: Tensor,
    labels: Tensor,
    targets: Tensor,
    num_classes: int,
    beta: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """Classification (softmax cross-entropy over ``K + 1``) and box (smooth L1) losses of the sampled RoIs.

    Args:
        cls_logits: ``(S, K + 1)`` class logits, background last.
        deltas: ``(S, 5)`` predicted class-agnostic deltas.
        labels: ``(S,)`` int64 in ``[0, K]`` (``K``: background).
        targets: ``(S, 5)`` target deltas (rows of negatives are not used).
        num_classes: ``K``.
        beta: smooth L1 transition point (1.0).

    Returns:
        ``(cls, bbox)``: scalar float32 losses, sums divided by ``max(S, 1)``.
    """
    n = max(int(labels.numel()), 1)
    cls = F.cross_entropy(cls_logits.float(), labels, reduction="sum") / n
    pos = labels < num_classes
    bbox = F.smooth_l1_loss(deltas.float()[pos], targets.float()[pos], beta=beta, reduction="sum") / n
    return cls, bbox + 0.0 * deltas.float().sum()
