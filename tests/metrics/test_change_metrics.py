import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rsfm.metrics.change_detection import ChangeDetectionMetrics, change_scores


def test_scores_against_hand_computed_example():
    # 2 images of 2×3 pixels; counted by hand:
    # image 1: target 1 1 0 / 0 0 1, pred 1 0 0 / 1 0 1 → TP 2, FN 1, FP 1, TN 2
    # image 2: target 0 0 0 / 0 1 1, pred 1 1 0 / 0 1 0 → TP 1, FN 1, FP 2, TN 2
    target = torch.tensor([[[1, 1, 0], [0, 0, 1]], [[0, 0, 0], [0, 1, 1]]])
    pred = torch.tensor([[[1, 0, 0], [1, 0, 1]], [[1, 1, 0], [0, 1, 0]]])
    tp, fp, fn, tn = 3, 3, 2, 4
    m = ChangeDetectionMetrics()
    m.update(pred, target)
    assert m.compute().tolist() == [[tn, fp], [fn, tp]]  # compute() is the matrix
    s = m.scores()  # fractions
    assert s["precision"] == pytest.approx(3 / 6)
    assert s["recall"] == pytest.approx(3 / 5)
    assert s["F1"] == pytest.approx(2 * 0.5 * 0.6 / (0.5 + 0.6))  # = 6 / 11
    assert s["IoU"] == pytest.approx(3 / 8)
    assert s["OA"] == pytest.approx(7 / 12)
    r = m.report()  # percent, with the counts
    assert (r["TP"], r["FP"], r["FN"], r["TN"]) == (tp, fp, fn, tn)
    assert r["confusion"] == [[tn, fp], [fn, tp]]
    assert r["precision"] == pytest.approx(50.0) and r["F1"] == pytest.approx(600 / 11)
    assert r["IoU"] == pytest.approx(37.5) and r["OA"] == pytest.approx(700 / 12)
    assert all(type(r[k]) is float for k in ("precision", "recall", "F1", "IoU", "OA"))
    assert all(type(r[k]) is int for k in ("TP", "FP", "FN", "TN"))


def _levir_labels(datasets: Path, n: int = 4) -> torch.Tensor:
    """``(n, 256, 256)`` int64 change masks of real LEVIR-CD pairs (255 → 1)."""
    files = sorted((datasets / "levir_cd" / "label").glob("*.png"))[:n]
    return torch.stack(
        [torch.from_numpy((np.asarray(Image.open(f).convert("L")) > 127).astype(np.int64)) for f in files]
    )


def test_accumulates_over_batches_like_one_update(datasets: Path):
    target = _levir_labels(datasets)
    assert 0 < int(target.sum()) < target.numel()
    pred = torch.roll(target, shifts=(3, -4), dims=(1, 2))  # a prediction off by a few pixels
    pred[1] = target[0]  # and one of another pair
    whole, parts = ChangeDetectionMetrics(), ChangeDetectionMetrics()
    whole.update(pred, target)
    parts.update(pred[:1], target[:1])
    parts.update(pred[1:], target[1:])
    assert torch.equal(whole.compute(), parts.compute())
    assert whole.scores() == parts.scores()
    # independent reference: counts straight from boolean masks
    t, p = target.bool(), pred.bool()
    tp, fp, fn = (t & p).sum().item(), (~t & p).sum().item(), (t & ~p).sum().item()
    assert whole.scores()["F1"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert whole.report()["F1"] == pytest.approx(100 * 2 * tp / (2 * tp + fp + fn))


def test_probabilities_are_thresholded_and_ignore_index_skipped():
    target = torch.tensor([[1, 0, 255, 1]])
    prob = torch.tensor([[0.9, 0.6, 0.9, 0.2]])
    m = ChangeDetectionMetrics(ignore_index=255)
    m.update(prob, target)
    assert m.compute().tolist() == [[0, 1], [1, 1]]


def test_zero_division_gives_zero():
    s = change_scores(torch.tensor([[10, 0], [0, 0]]))
    assert s["precision"] == s["recall"] == s["F1"] == s["IoU"] == 0.0
    assert s["OA"] == 1.0
    assert not any(math.isnan(v) for v in s.values())
    m = ChangeDetectionMetrics()
    m.update(torch.zeros(1, 2, 5, dtype=torch.long), torch.zeros(1, 2, 5, dtype=torch.long))
    r = m.report()
    assert r["F1"] == 0.0 and r["OA"] == 100.0 and r["TN"] == 10
    with pytest.raises(ValueError, match="2, 2"):
        change_scores(torch.zeros(3, 3))
