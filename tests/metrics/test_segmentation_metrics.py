import math

import numpy as np
import pytest
import torch

from rsfm.metrics.segmentation import SegmentationMetrics, segmentation_report, segmentation_scores

# Hand-made 2×4 label maps, K = 3, 255 = ignore.
TARGET = [[0, 0, 1, 1], [2, 2, 255, 0]]
PRED = [[0, 1, 1, 1], [2, 0, 2, 0]]
# (true, pred) pairs: (0,0) (0,1) (1,1) (1,1) (2,2) (2,0) [ignored] (0,0)
HAND_CM = [[2, 1, 0], [0, 2, 0], [1, 0, 1]]
# TP = [2, 2, 1], FP = [1, 1, 0], FN = [1, 0, 1]
HAND_IOU = [2 / 4, 2 / 3, 1 / 2]
HAND_F1 = [4 / 6, 4 / 5, 2 / 3]
HAND_OA = 5 / 7


def test_confusion_matrix_skips_ignore_and_matches_hand_count():
    m = SegmentationMetrics(num_classes=3, ignore_index=255)
    m.update(torch.tensor([PRED]), torch.tensor([TARGET]))
    assert m.confmat.tolist() == HAND_CM


def test_scores_match_hand_computed_values():
    m = SegmentationMetrics(num_classes=3, ignore_index=255)
    m.update(torch.tensor([PRED]), torch.tensor([TARGET]))
    s = m.compute()
    assert s["IoU"].tolist() == pytest.approx(HAND_IOU)
    assert s["F1"].tolist() == pytest.approx(HAND_F1)
    assert float(s["mIoU"]) == pytest.approx(sum(HAND_IOU) / 3)
    assert float(s["mF1"]) == pytest.approx(sum(HAND_F1) / 3)
    assert float(s["OA"]) == pytest.approx(HAND_OA)
    assert s["precision"].tolist() == pytest.approx([2 / 3, 2 / 3, 1.0])
    assert s["recall"].tolist() == pytest.approx([2 / 3, 1.0, 1 / 2])


def test_logits_and_batches_accumulate_like_one_update():
    rng = np.random.default_rng(0)
    target = torch.from_numpy(rng.integers(0, 4, (3, 9, 7)))
    target[0, :2] = 255
    logits = torch.from_numpy(rng.normal(size=(3, 4, 9, 7))).float()
    whole = SegmentationMetrics(4)
    whole.update(logits.argmax(1), target)
    parts = SegmentationMetrics(4)
    for i in range(3):
        parts.update(logits[i : i + 1], target[i : i + 1])  # logits are arg-maxed
    assert torch.equal(whole.confmat, parts.confmat)
    # independent count with numpy
    t, p = target.numpy().ravel(), logits.argmax(1).numpy().ravel()
    keep = t != 255
    ref = np.bincount(t[keep] * 4 + p[keep], minlength=16).reshape(4, 4)
    assert whole.confmat.numpy().tolist() == ref.tolist()


def test_absent_class_is_nan_and_left_out_of_means():
    cm = torch.tensor([[2, 1, 0, 0], [0, 2, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]])
    s = segmentation_scores(cm)
    assert math.isnan(float(s["IoU"][3])) and math.isnan(float(s["F1"][3]))
    assert float(s["mIoU"]) == pytest.approx(sum(HAND_IOU) / 3)
    report = segmentation_report(cm, ["a", "b", "c", "d"])
    assert report["IoU"]["d"] is None
    assert report["IoU"]["a"] == pytest.approx(0.5)
    assert report["mIoU"] == pytest.approx(sum(HAND_IOU) / 3)
    assert report["OA"] == pytest.approx(HAND_OA)
    assert report["pixels"] == 7 and report["confusion_matrix"][0] == [2, 1, 0, 0]


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="K, K"):
        segmentation_scores(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="class names"):
        segmentation_report(torch.zeros(3, 3), ["a"])
