"""Linear probing on cached frozen features.

The head follows MAE's linear-probe recipe (He et al. 2022, §A.2): a ``BatchNorm1d`` without
affine parameters whitens the features, then one ``Linear`` layer (weights trunc-normal,
std 0.01) is trained with cross-entropy, no weight decay by default, and a cosine learning
rate. Features sit in memory, so training is a plain, seeded torch loop (SGD with momentum
replaces MAE's LARS, which only matters for MAE's 16k batches).

The learning rate is chosen on a stratified split of the *training* features only; the
held-out features are seen once, by the final model, for prediction.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rsfm.optim import warmup_cosine
from rsfm.tasks.probes.features import check_features

__all__ = ["DEFAULT_LR_GRID", "LinearProbeResult", "linear_probe", "train_linear_head"]

DEFAULT_LR_GRID: tuple[float, ...] = (0.01, 0.03, 0.1, 0.3, 1.0)


@dataclass
class LinearProbeResult:
    """Outcome of :func:`linear_probe`.

    Attributes:
        preds: ``(M,)`` int64 predicted classes of the held-out features, on CPU.
        logits: ``(M, C)`` float32 head outputs for the held-out features, on CPU.
        lr: the learning rate of the final head.
        grid: ``{lr: accuracy %}`` on the split of the training features used for the
            search (empty when a single lr was given or nothing could be held out).
        accuracy: OA (%) on the held-out features, or ``None`` without held-out labels.
        head: the trained head (``BatchNorm1d`` + ``Linear``), on CPU, in eval mode.

    """

    preds: Tensor
    logits: Tensor
    lr: float
    grid: dict[float, float] = field(default_factory=dict)
    accuracy: float | None = None
    head: nn.Module | None = None


def _make_head(dim: int, num_classes: int, generator: torch.Generator) -> nn.Sequential:
    linear = nn.Linear(dim, num_classes)
    nn.init.trunc_normal_(linear.weight, std=0.01, generator=generator)
    nn.init.zeros_(linear.bias)
    return nn.Sequential(nn.BatchNorm1d(dim, affine=False, eps=1e-6), linear)


def train_linear_head(
    feats: Tensor,
    labels: Tensor,
    num_classes: int,
    lr: float,
    epochs: int = 100,
    weight_decay: float = 0.0,
    batch_size: int = 256,
    seed: int = 0,
    momentum: float = 0.9,
) -> nn.Module:
    """Train a ``BatchNorm1d(affine=False) + Linear`` head on in-memory features.

    Deterministic for a given seed, device and thread count: the initialisation and the
    per-epoch shuffles come from one seeded ``torch.Generator``; the global RNG is untouched.

    Args:
        feats: ``(N, D)`` float features.
        labels: ``(N,)`` int64 classes in ``[0, num_classes)``.
        num_classes: number of classes ``C``.
        lr: peak learning rate of SGD (momentum 0.9), cosine-annealed per step to 0.
        epochs: passes over the features.
        weight_decay: L2 penalty on the head.
        batch_size: features per step; a last batch of one sample is dropped (BatchNorm).
        seed: seed of the initialisation and shuffles.
        momentum: SGD momentum.

    Returns:
        The trained head, on ``feats``' device, in eval mode.

    """
    device = feats.device
    gen = torch.Generator().manual_seed(seed)
    head = _make_head(feats.shape[1], num_classes, gen).to(device)
    opt = torch.optim.SGD(head.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    n = feats.shape[0]
    steps_per_epoch = max(1, math.ceil(n / batch_size))
    total = epochs * steps_per_epoch
    feats = feats.float()
    labels = labels.to(device=device, dtype=torch.long)
    head.train()
    step = 0
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen).to(device)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            step += 1
            if idx.numel() < 2:
                continue
            for group in opt.param_groups:
                group["lr"] = lr * warmup_cosine(step - 1, 0, total)
            loss = F.cross_entropy(head(feats[idx]), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return head.eval()


def _stratified_split(labels: Tensor, fraction: float, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """Split indices into ``(fit, check)``, ``fraction`` of each class (≥2 samples) to check."""
    fit, check = [], []
    for c in labels.unique():
        idx = (labels == c).nonzero().flatten()
        idx = idx[torch.randperm(idx.numel(), generator=gen)]
        n_check = round(fraction * idx.numel()) if idx.numel() >= 2 else 0
        n_check = min(max(n_check, 1 if idx.numel() >= 2 else 0), idx.numel() - 1)
        check.append(idx[:n_check])
        fit.append(idx[n_check:])
    return torch.cat(fit).sort().values, torch.cat(check).sort().values


@torch.no_grad()
def _accuracy(head: nn.Module, feats: Tensor, labels: Tensor) -> float:
    preds = head(feats.float()).argmax(1).cpu()
    return 100.0 * float((preds == labels.cpu()).float().mean())


def linear_probe(
    train_feats: Tensor,
    train_labels: Tensor,
    val_feats: Tensor,
    val_labels: Tensor | None,
    num_classes: int,
    epochs: int = 100,
    lr: float | Sequence[float] = DEFAULT_LR_GRID,
    weight_decay: float = 0.0,
    batch_size: int = 256,
    seed: int = 0,
    search_fraction: float = 0.2,
) -> LinearProbeResult:
    """Train a linear probe on frozen training features and predict held-out features.

    With several learning rates, each is trained on ``1 - search_fraction`` of the training
    features (stratified, seeded; a class of one sample stays in the fit) and scored on the
    rest; the best (the smallest on ties) is then retrained on all training features. When no
    sample can be held out (one per class: a one-shot probe), the grid's middle rate is used
    without a search, with a warning, and ``grid`` is empty. ``val_feats``/``val_labels`` take no part in
    the choice: ``val_labels`` only feeds the reported accuracy.

    Args:
        train_feats: ``(N, D)`` float32 frozen training features.
        train_labels: ``(N,)`` int64 classes in ``[0, num_classes)``.
        val_feats: ``(M, D)`` float32 held-out features to predict.
        val_labels: ``(M,)`` int64 held-out classes, or ``None``.
        num_classes: number of classes ``C``.
        epochs: passes over the (search or full) training features.
        lr: a learning rate, or a grid of them to search.
        weight_decay: L2 penalty on the head.
        batch_size: features per SGD step.
        seed: seed of the search split, initialisation and shuffles.
        search_fraction: share of the training features held back to score each lr.

    Returns:
        A :class:`LinearProbeResult` with held-out predictions, the chosen lr and the grid.

    Raises:
        ValueError: on mismatched shapes or an empty lr grid.

    .. versionchanged:: 0.3.7
        A one-shot training set (nothing to hold out) trains at the grid's middle rate, with a
        warning, instead of raising ``ValueError: min() arg is an empty sequence``.

    """
    check_features(train_feats, train_labels, val_feats)
    if val_labels is not None and val_labels.shape != (val_feats.shape[0],):
        raise ValueError("val_labels must have one entry per held-out feature")
    grid = [float(lr)] if isinstance(lr, int | float) else [float(v) for v in lr]
    if not grid:
        raise ValueError("the learning-rate grid is empty")

    train_labels = train_labels.long()
    scores: dict[float, float] = {}
    if len(grid) > 1:
        fit, check = _stratified_split(train_labels.cpu(), search_fraction, torch.Generator().manual_seed(seed))
        fit, check = fit.to(train_feats.device), check.to(train_feats.device)
    if len(grid) > 1 and check.numel() == 0:
        # every class has one training sample (a one-shot probe): none can be held out without
        # removing its class from the fit, so no rate can be scored
        chosen = sorted(grid)[(len(grid) - 1) // 2]
        warnings.warn(
            f"linear_probe: no class has 2 training samples, so none is held out to choose the "
            f"learning rate among {grid}; using the grid's middle rate {chosen:g} without a search",
            stacklevel=2,
        )
    elif len(grid) > 1:
        for value in grid:
            head = train_linear_head(
                train_feats[fit], train_labels[fit], num_classes, value, epochs, weight_decay, batch_size, seed
            )
            scores[value] = _accuracy(head, train_feats[check], train_labels[check])
        best = max(scores.values())
        chosen = min(v for v, s in scores.items() if s == best)
    else:
        chosen = grid[0]

    head = train_linear_head(train_feats, train_labels, num_classes, chosen, epochs, weight_decay, batch_size, seed)
    with torch.no_grad():
        logits = head(val_feats.to(train_feats.device).float()).float().cpu()
    preds = logits.argmax(1)
    accuracy = None
    if val_labels is not None:
        accuracy = 100.0 * float((preds == val_labels.cpu().long()).float().mean())
    return LinearProbeResult(preds=preds, logits=logits, lr=chosen, grid=scores, accuracy=accuracy, head=head.cpu())
