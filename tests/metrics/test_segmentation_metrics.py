"""Segmentation metrics: the accumulated matrix, scores as fractions, reports in percent, scored subsets."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rsfm.metrics.isprs import ISPRS_CLASSES, ISPRS_SCORED_CLASSES, isprs_scores
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


def _hand_metric() -> SegmentationMetrics:
    m = SegmentationMetrics(num_classes=3, ignore_index=255)
    m.update(torch.tensor([PRED]), torch.tensor([TARGET]))
    return m


def test_compute_returns_the_matrix_skipping_ignore():
    m = _hand_metric()
    cm = m.compute()
    assert cm.shape == (3, 3) and not cm.is_floating_point()
    assert cm.tolist() == HAND_CM
    assert m.compute_matrix().tolist() == HAND_CM  # the alias
    m.reset()
    m.update(torch.zeros(1, 2, 2, dtype=torch.long), torch.full((1, 2, 2), 255))  # all ignored
    assert m.compute().sum() == 0


def test_scores_are_fractions_matching_hand_computed_values():
    s = _hand_metric().scores()
    assert s["IoU"].tolist() == pytest.approx(HAND_IOU)
    assert s["F1"].tolist() == pytest.approx(HAND_F1)
    assert s["precision"].tolist() == pytest.approx([2 / 3, 2 / 3, 1.0])
    assert s["recall"].tolist() == pytest.approx([2 / 3, 1.0, 1 / 2])
    assert float(s["mIoU"]) == pytest.approx(sum(HAND_IOU) / 3)
    assert float(s["mF1"]) == pytest.approx(sum(HAND_F1) / 3)
    assert float(s["OA"]) == pytest.approx(HAND_OA)
    assert s["IoU"].dtype == torch.float64 and s["mIoU"].ndim == 0


def test_report_is_percent_and_json_ready():
    import json

    r = _hand_metric().report(["a", "b", "c"])
    json.dumps(r)  # plain Python values only
    assert r["mIoU"] == pytest.approx(100 * sum(HAND_IOU) / 3)
    assert r["mF1"] == pytest.approx(100 * sum(HAND_F1) / 3)
    assert r["OA"] == pytest.approx(100 * HAND_OA)
    assert r["IoU"] == pytest.approx({"a": 50.0, "b": 200 / 3, "c": 50.0})
    assert r["precision"]["c"] == pytest.approx(100.0) and r["recall"]["c"] == pytest.approx(50.0)
    assert r["pixels"] == 7 and r["confusion_matrix"] == HAND_CM
    assert r["classes"] == r["scored_classes"] == ["a", "b", "c"]
    assert _hand_metric().report()["classes"] == ["0", "1", "2"]  # default names


def test_logits_and_batches_accumulate_like_one_update(datasets: Path):
    from rsfm.data.segmentation.loveda import LOVEDA_CLASSES, LoveDADataModule

    dm = LoveDADataModule(str(datasets / "loveda"), test_split=["2"])
    masks = [dm.read_mask(datasets / "loveda" / "masks_png" / f"{i}.png")[:48, :40] for i in range(3)]
    target = torch.from_numpy(np.stack(masks)).long()  # real LoveDA labels, 255 = no-data
    k = len(LOVEDA_CLASSES)
    # logits that favour the true class of a shifted map, plus noise
    shifted = torch.roll(target, shifts=(2, 3), dims=(1, 2)).clamp(max=k - 1)
    rng = np.random.default_rng(0)
    logits = F.one_hot(shifted, k).permute(0, 3, 1, 2).float() + torch.from_numpy(rng.normal(0, 0.6, (3, k, 48, 40)))
    whole = SegmentationMetrics(k)
    whole.update(logits.argmax(1), target)
    parts = SegmentationMetrics(k)
    for i in range(3):
        parts.update(logits[i : i + 1].float(), target[i : i + 1])  # logits are arg-maxed
    assert torch.equal(whole.compute(), parts.compute())
    # independent count with numpy
    t, p = target.numpy().ravel(), logits.argmax(1).numpy().ravel()
    keep = t != 255
    ref = np.bincount(t[keep] * k + p[keep], minlength=k * k).reshape(k, k)
    assert whole.compute().numpy().tolist() == ref.tolist()
    assert 0 < ref.trace() < ref.sum()


def test_absent_class_is_nan_and_left_out_of_means():
    cm = torch.tensor([[2, 1, 0, 0], [0, 2, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]])
    s = segmentation_scores(cm)
    assert math.isnan(float(s["IoU"][3])) and math.isnan(float(s["F1"][3]))
    assert float(s["mIoU"]) == pytest.approx(sum(HAND_IOU) / 3)
    report = segmentation_report(cm, ["a", "b", "c", "d"])
    assert report["IoU"]["d"] is None  # NaN → None (JSON)
    assert report["IoU"]["a"] == pytest.approx(50.0)
    assert report["mIoU"] == pytest.approx(100 * sum(HAND_IOU) / 3)
    assert report["OA"] == pytest.approx(100 * HAND_OA)
    assert report["pixels"] == 7 and report["confusion_matrix"][0] == [2, 1, 0, 0]
    empty = segmentation_report(torch.zeros(2, 2, dtype=torch.long))
    assert empty["mIoU"] is None and empty["OA"] is None and empty["pixels"] == 0


# --------------------------------------------------------------------------- score_classes


def test_score_classes_hand_computed():
    # classes 0, 1 scored, 2 not. Scored rows: [2, 1, 0] and [0, 2, 0]
    s = segmentation_scores(torch.tensor(HAND_CM), score_classes=[0, 1])
    # the true-2 pixel predicted 0 is left out: class 0 has TP 2, FP 0, FN 1
    assert s["IoU"][:2].tolist() == pytest.approx([2 / 3, 2 / 3])
    assert s["precision"][:2].tolist() == pytest.approx([1.0, 2 / 3])
    assert s["recall"][:2].tolist() == pytest.approx([2 / 3, 1.0])
    assert math.isnan(float(s["IoU"][2])) and math.isnan(float(s["F1"][2]))
    assert float(s["mIoU"]) == pytest.approx(2 / 3)
    assert float(s["OA"]) == pytest.approx(4 / 5)  # over the 5 scored pixels


def test_scored_pixel_predicted_as_unscored_class_is_a_miss():
    # 10 pixels of class 0, 4 of them predicted as class 2 (not scored)
    cm = torch.tensor([[6, 0, 4], [0, 5, 0], [3, 0, 7]])
    s = segmentation_scores(cm, [0, 1])
    assert float(s["recall"][0]) == pytest.approx(0.6)
    assert float(s["precision"][0]) == pytest.approx(1.0)  # the 3 true-2 → 0 pixels are not FPs
    assert float(s["OA"]) == pytest.approx(11 / 15)


def test_score_classes_all_equals_none_and_order_does_not_matter():
    cm = torch.tensor([[5, 1, 2], [0, 4, 1], [3, 0, 6]])
    a, b, c = segmentation_scores(cm), segmentation_scores(cm, [0, 1, 2]), segmentation_scores(cm, [2, 0, 1])
    for key in a:
        torch.testing.assert_close(a[key], b[key], equal_nan=True)
        torch.testing.assert_close(a[key], c[key], equal_nan=True)


def test_metric_scores_and_report_take_score_classes():
    m = _hand_metric()
    assert float(m.scores([0, 1])["mIoU"]) == pytest.approx(2 / 3)
    r = m.report(["a", "b", "c"], score_classes=[0, 1])
    assert r["mIoU"] == pytest.approx(200 / 3) and r["scored_classes"] == ["a", "b"]
    assert r["IoU"]["c"] is None and r["pixels"] == 7  # the matrix keeps every pixel


def _real_six_class_confmat(datasets: Path) -> torch.Tensor:
    """6 × 6 matrix of a real Dubai mask against itself shifted by 9 px (confusions at every boundary)."""
    from rsfm.data.segmentation.dubai import DubaiDataModule

    dm = DubaiDataModule(str(datasets / "dubai_seg"), test_split=[8])
    assert len(dm.classes()) == 6
    m = SegmentationMetrics(6)
    for name in ("image_part_001.png", "image_part_004.png"):
        mask = torch.from_numpy(dm.read_mask(datasets / "dubai_seg" / "Tile 1" / "masks" / name)).long()
        pred = torch.roll(mask, shifts=(9, -5), dims=(0, 1))
        pred[pred == 255] = 5  # an ignored target pixel shifted elsewhere is predicted as the last class
        m.update(pred[None], mask[None])
    cm = m.compute()
    assert (cm.sum(1) > 0).all() and cm.diagonal().sum() < cm.sum()
    return cm


def test_five_class_protocol_equals_isprs_scores(datasets: Path):
    cm = _real_six_class_confmat(datasets)
    ours = segmentation_report(cm, list(ISPRS_CLASSES), score_classes=range(5))
    ref = isprs_scores(cm)
    for key in ("F1", "IoU", "precision", "recall"):
        for name in ISPRS_SCORED_CLASSES:
            assert ours[key][name] == pytest.approx(ref[key][name], rel=1e-12), (key, name)
        assert ours[key]["clutter"] is None
    for key in ("mF1", "mIoU", "OA"):
        assert ours[key] == pytest.approx(ref[key], rel=1e-12), key
    assert ours["scored_classes"] == list(ISPRS_SCORED_CLASSES)


def test_all_classes_averaged_over_five_equals_isprs_with_clutter_rows(datasets: Path):
    cm = _real_six_class_confmat(datasets)
    s = segmentation_scores(cm)  # every row and column in
    ref = isprs_scores(cm, include_clutter_rows=True)
    for k, name in enumerate(ISPRS_SCORED_CLASSES):
        assert 100 * float(s["F1"][k]) == pytest.approx(ref["F1"][name], rel=1e-12)
        assert 100 * float(s["IoU"][k]) == pytest.approx(ref["IoU"][name], rel=1e-12)
    assert 100 * float(s["IoU"][:5].mean()) == pytest.approx(ref["mIoU"], rel=1e-12)
    assert 100 * float(s["OA"]) == pytest.approx(ref["OA"], rel=1e-12)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="K, K"):
        segmentation_scores(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="class names"):
        segmentation_report(torch.zeros(3, 3), ["a"])
    with pytest.raises(ValueError, match="outside"):
        segmentation_scores(torch.zeros(3, 3), [0, 3])
    with pytest.raises(ValueError, match="outside"):
        segmentation_scores(torch.zeros(3, 3), [-1])


@pytest.mark.parametrize("score_classes", [None, [0, 2]])
def test_scores_stay_on_the_matrix_device(score_classes):
    # torchmetrics keeps the matrix on the model's device (a GPU in training); the meta device
    # stands in for it here: a CPU tensor mixed in would raise a device mismatch
    cm = torch.randint(0, 50, (3, 3), device="meta")
    scores = segmentation_scores(cm, score_classes)
    assert {v.device.type for v in scores.values()} == {"meta"}


def test_f1_of_a_class_without_true_positives_is_zero_unlike_mmseg():
    """rsfm's F1 is 2TP / (2TP + FP + FN): 0 for a class with TP = 0 that is in the truth or the
    prediction, counted in mF1. MMSegmentation's mFscore leaves such classes out (NaN) and gives 0.8
    here; mIoU (and OA) are the same in both."""
    m = SegmentationMetrics(num_classes=3)
    m.update(torch.tensor([[[0, 0, 0, 2]]]), torch.tensor([[[0, 0, 1, 1]]]))
    # class 0: TP 2, FP 1, FN 0; class 1: TP 0, FN 2 (never predicted); class 2: TP 0, FP 1 (not in truth)
    s = m.scores()
    assert s["F1"].tolist() == pytest.approx([4 / 5, 0.0, 0.0])
    assert s["IoU"].tolist() == pytest.approx([2 / 3, 0.0, 0.0])
    assert float(s["mF1"]) == pytest.approx(4 / 15) and round(float(s["mF1"]), 4) == 0.2667
    assert float(s["mIoU"]) == pytest.approx(2 / 9) and round(float(s["mIoU"]), 4) == 0.2222
    assert float(s["OA"]) == pytest.approx(2 / 4)
    assert math.isnan(float(s["precision"][1])) and math.isnan(float(s["recall"][2]))  # 0/0: undefined


@pytest.mark.parametrize(
    ("pred", "target", "message"),
    [
        # a prediction label >= K was silently counted in another cell of the matrix
        ([[0, 3]], [[0, 2]], r"prediction holds label 3; expected labels in \[0, 3\) for K = 3"),
        ([[0, -1]], [[0, 2]], r"prediction holds label -1; expected labels in \[0, 3\) for K = 3"),
        # a target label >= K failed with "shape '[3, 3]' is invalid for input of size 10"
        ([[0, 1]], [[0, 3]], r"target holds label 3; expected labels in \[0, 3\) or the ignore index 255 for K = 3"),
        ([[0, 1]], [[-1, 1]], r"target holds label -1; expected labels in \[0, 3\) or the ignore index 255"),
    ],
)
def test_labels_out_of_range_raise_naming_the_tensor(pred, target, message):
    m = SegmentationMetrics(num_classes=3, ignore_index=255)
    with pytest.raises(ValueError, match=message):
        m.update(torch.tensor([pred]), torch.tensor([target]))
    assert int(m.compute().sum()) == 0  # nothing was counted
    m.update(torch.tensor([[[0, 2]]]), torch.tensor([[[0, 255]]]))  # the ignore index is no error
    assert m.compute().tolist() == [[1, 0, 0], [0, 0, 0], [0, 0, 0]]
    without_ignore = SegmentationMetrics(num_classes=3, ignore_index=None)
    with pytest.raises(ValueError, match=r"target holds label 255; expected labels in \[0, 3\) for K = 3"):
        without_ignore.update(torch.tensor([[[0, 2]]]), torch.tensor([[[0, 255]]]))


def test_pixels_of_the_report_and_of_isprs_scores_count_what_their_docs_say():
    """segmentation_report's pixels: the whole matrix; isprs_scores' pixels: those behind its OA."""
    cm = torch.zeros(6, 6, dtype=torch.int64)
    cm[0, 0], cm[1, 2], cm[5, 5], cm[5, 0] = 7, 3, 4, 2  # 10 pixels of scored classes, 6 of clutter
    report = segmentation_report(cm, list(ISPRS_CLASSES), score_classes=range(5))
    assert report["pixels"] == 16 and report["OA"] == pytest.approx(100 * 7 / 10)
    assert isprs_scores(cm)["pixels"] == 10 and isprs_scores(cm)["OA"] == pytest.approx(100 * 7 / 10)
    with_clutter = isprs_scores(cm, include_clutter_rows=True)
    assert with_clutter["pixels"] == 16 and with_clutter["OA"] == pytest.approx(100 * 11 / 16)


def test_a_normalised_matrix_scores_as_its_counts():
    """Ratios do not depend on the matrix's scale; a fractional denominator used to be clamped to 1
    (IoU 0.4 instead of 2/3 for torchmetrics' ``normalize="all"`` matrix)."""
    counts = torch.tensor(HAND_CM, dtype=torch.float64)
    for cm in (counts / counts.sum(), counts / 1000):
        s = segmentation_scores(cm)
        ref = segmentation_scores(counts)
        for key in ("IoU", "F1", "precision", "recall", "mIoU", "mF1", "OA"):
            assert torch.allclose(s[key], ref[key], equal_nan=True), key
    assert segmentation_scores(counts / counts.sum())["IoU"].tolist() == pytest.approx(HAND_IOU)
    assert isprs_scores(torch.eye(6) / 6)["mIoU"] == pytest.approx(100.0)
