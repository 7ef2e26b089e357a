import math

import pytest
import torch

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
    assert m.confmat.tolist() == [[tn, fp], [fn, tp]]
    s = m.compute()
    assert s["precision"] == pytest.approx(3 / 6)
    assert s["recall"] == pytest.approx(3 / 5)
    assert s["F1"] == pytest.approx(2 * 0.5 * 0.6 / (0.5 + 0.6))  # = 6 / 11
    assert s["IoU"] == pytest.approx(3 / 8)
    assert s["OA"] == pytest.approx(7 / 12)
    r = m.report()
    assert (r["TP"], r["FP"], r["FN"], r["TN"]) == (tp, fp, fn, tn)


def test_accumulates_over_batches_like_one_update():
    g = torch.Generator().manual_seed(0)
    target = torch.randint(2, (4, 16, 16), generator=g)
    pred = torch.randint(2, (4, 16, 16), generator=g)
    whole, parts = ChangeDetectionMetrics(), ChangeDetectionMetrics()
    whole.update(pred, target)
    parts.update(pred[:1], target[:1])
    parts.update(pred[1:], target[1:])
    assert whole.compute() == parts.compute()
    # independent reference: counts straight from boolean masks
    t, p = target.bool(), pred.bool()
    tp, fp, fn = (t & p).sum().item(), (~t & p).sum().item(), (t & ~p).sum().item()
    assert whole.compute()["F1"] == pytest.approx(2 * tp / (2 * tp + fp + fn))


def test_probabilities_are_thresholded_and_ignore_index_skipped():
    target = torch.tensor([[1, 0, 255, 1]])
    prob = torch.tensor([[0.9, 0.6, 0.9, 0.2]])
    m = ChangeDetectionMetrics(ignore_index=255)
    m.update(prob, target)
    assert m.confmat.tolist() == [[0, 1], [1, 1]]


def test_zero_division_gives_zero():
    s = change_scores(torch.tensor([[10, 0], [0, 0]]))
    assert s["precision"] == s["recall"] == s["F1"] == s["IoU"] == 0.0
    assert s["OA"] == 1.0
    assert not any(math.isnan(v) for v in s.values())
    with pytest.raises(ValueError, match="2, 2"):
        change_scores(torch.zeros(3, 3))
