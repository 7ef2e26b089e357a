"""Weighted k-nearest-neighbour classification on frozen features.

The non-parametric classifier of Wu et al. 2018 (instance discrimination, §3.4), as used by
DINO (Caron et al. 2021, §4.1): features are L2-normalised, each query takes its ``k`` most
cosine-similar training features, and neighbour ``i`` votes for its class with weight
``exp(s_i / T)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from rsfm.tasks.probes.features import check_features

__all__ = ["knn_predict"]


@torch.no_grad()
def knn_predict(
    train_feats: Tensor,
    train_labels: Tensor,
    query_feats: Tensor,
    num_classes: int,
    k: int = 20,
    temperature: float = 0.07,
    chunk_size: int = 1024,
) -> Tensor:
    """Class scores of query features by temperature-weighted cosine kNN voting.

    Args:
        train_feats: ``(N, D)`` float features of the labelled (training) set.
        train_labels: ``(N,)`` int64 class indices in ``[0, num_classes)``.
        query_feats: ``(M, D)`` float features to classify.
        num_classes: number of classes ``C``.
        k: neighbours per query; must satisfy ``1 <= k <= N``.
        temperature: ``T`` in the vote weight ``exp(cos_sim / T)``.
        chunk_size: queries per similarity block; bounds memory at ``chunk_size × N``.

    Returns:
        ``(M, C)`` float32 scores, on ``train_feats``' device: for each query, the sum of
        ``exp(sim / T)`` over its ``k`` nearest training features of each class. The
        predicted class is ``scores.argmax(1)``.

    Raises:
        ValueError: on mismatched shapes, ``k`` outside ``[1, N]``, a non-positive
            temperature or chunk size, or labels outside ``[0, num_classes)``.

    """
    check_features(train_feats, train_labels, query_feats)
    n = train_feats.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"k={k} must be in [1, {n}] (the number of training features)")
    if temperature <= 0 or chunk_size <= 0:
        raise ValueError(f"temperature and chunk_size must be positive, got {temperature}, {chunk_size}")
    if n and (int(train_labels.min()) < 0 or int(train_labels.max()) >= num_classes):
        raise ValueError(f"train_labels must lie in [0, {num_classes})")

    device = train_feats.device
    bank = F.normalize(train_feats.float(), dim=1)
    labels = train_labels.to(device=device, dtype=torch.long)
    scores = torch.zeros(query_feats.shape[0], num_classes, device=device)
    for start in range(0, query_feats.shape[0], chunk_size):
        q = F.normalize(query_feats[start : start + chunk_size].to(device).float(), dim=1)
        sim, idx = (q @ bank.T).topk(k, dim=1)  # (m, k) each
        weight = (sim / temperature).exp()
        scores[start : start + q.shape[0]].scatter_add_(1, labels[idx], weight)
    return scores
