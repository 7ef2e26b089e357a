"""VOC-style AP (rsfm.metrics.voc): hand-computed cases, DOTA-devkit figures and real DOTA labels."""

from __future__ import annotations

import pickle
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

from rsfm.metrics.voc import VOCMeanAP, box_iou, distributed_gather, voc_ap, voc_evaluate_class


def _pred(boxes, scores, labels=None):
    boxes = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    labels = torch.zeros(len(boxes), dtype=torch.int64) if labels is None else torch.tensor(labels)
    return {"boxes": boxes, "scores": torch.tensor(scores, dtype=torch.float32), "labels": labels}


def _target(boxes, labels=None, difficult=None):
    boxes = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    t = {"boxes": boxes}
    t["labels"] = torch.zeros(len(boxes), dtype=torch.int64) if labels is None else torch.tensor(labels)
    if difficult is not None:
        t["difficult"] = torch.tensor(difficult, dtype=torch.bool)
    return t


def _ap(preds, targets, use_07_metric=False, **kwargs):
    m = VOCMeanAP(["thing"], use_07_metric=use_07_metric, **kwargs)
    m.update(preds, targets)
    return m.compute()["per_class"]["thing"]["AP50"]


def pct(f: Fraction) -> float:
    return float(100 * f)


# --------------------------------------------------------------------------- voc_ap on given curves

# Case A. 3 ground-truth boxes, 5 detections ranked by score:
#   rank  score  outcome          cum TP  cum FP  precision  recall
#   1     0.9    TP (G1)          1       0       1          1/3
#   2     0.8    FP (dup of G1)   1       1       1/2        1/3
#   3     0.7    TP (G3)          2       1       2/3        2/3
#   4     0.6    FP (no overlap)  2       2       1/2        2/3
#   5     0.5    TP (G2)          3       2       3/5        1
# All-point: envelope = 1 on (0, 1/3], 2/3 on (1/3, 2/3], 3/5 on (2/3, 1]
#   AP = 1/3 * 1 + 1/3 * 2/3 + 1/3 * 3/5 = 15/45 + 10/45 + 9/45 = 34/45
# 11-point: t = 0, .1, .2, .3 -> max precision at recall >= t = 1           (4 points)
#           t = .4, .5, .6    -> max of {2/3, 1/2, 3/5} = 2/3                (3 points)
#           t = .7, .8, .9, 1 -> 3/5                                         (4 points)
#   AP = (4 + 3 * 2/3 + 4 * 3/5) / 11 = (4 + 2 + 12/5) / 11 = 42/55
CASE_A_RECALL = [Fraction(1, 3), Fraction(1, 3), Fraction(2, 3), Fraction(2, 3), Fraction(1)]
CASE_A_PRECISION = [Fraction(1), Fraction(1, 2), Fraction(2, 3), Fraction(1, 2), Fraction(3, 5)]
CASE_A_ALL_POINT = Fraction(34, 45)
CASE_A_11_POINT = Fraction(42, 55)


def test_voc_ap_case_a_from_curve():
    rec = np.array([float(f) for f in CASE_A_RECALL])
    prec = np.array([float(f) for f in CASE_A_PRECISION])
    assert voc_ap(rec, prec, use_07_metric=False) == pytest.approx(float(CASE_A_ALL_POINT), abs=1e-15)
    assert voc_ap(rec, prec, use_07_metric=True) == pytest.approx(float(CASE_A_11_POINT), abs=1e-15)
    # tensors, float32 or on any device, give the same float64 result
    t = voc_ap(torch.tensor(rec), torch.tensor(prec), use_07_metric=False)
    assert isinstance(t, float) and t == pytest.approx(float(CASE_A_ALL_POINT), abs=1e-15)


def test_voc_ap_recall_never_reaches_one():
    # one detection, a TP, of 2 positives: recall 1/2 at precision 1
    # all-point: 1/2 * 1 = 1/2; 11-point: t = 0 .. 0.5 reached (6 points of 1), the rest 0 -> 6/11
    assert voc_ap([0.5], [1.0], use_07_metric=False) == pytest.approx(0.5, abs=1e-15)
    assert voc_ap([0.5], [1.0], use_07_metric=True) == pytest.approx(6 / 11, abs=1e-15)


def test_voc_ap_eleven_points_are_exact_tenths():
    # 10 positives, the first 3 detections TPs: recall 0.1, 0.2, 0.3 at precision 1.
    # Points t = 0, .1, .2, .3 are reached -> 4/11. (The Python devkits' np.arange(0, 1.1, 0.1)
    # holds 0.30000000000000004 > 3/10 and would give 3/11.)
    rec = np.arange(1, 4) / 10
    assert voc_ap(rec, np.ones(3), use_07_metric=True) == pytest.approx(4 / 11, abs=1e-15)
    # 3 of 5 objects: recall 1/5, 2/5, 3/5 -> t = 0 .. 0.6 reached -> 7/11 (the devkits: 6/11)
    assert voc_ap([1 / 5, 2 / 5, 3 / 5], [1.0, 1.0, 1.0], use_07_metric=True) == pytest.approx(7 / 11, abs=1e-15)


def test_voc_ap_empty_and_invalid():
    assert voc_ap([], [], use_07_metric=False) == 0.0
    assert voc_ap(np.zeros(0), np.zeros(0), use_07_metric=True) == 0.0
    with pytest.raises(ValueError, match="one length"):
        voc_ap([0.1, 0.2], [1.0], use_07_metric=False)
    with pytest.raises(ValueError, match="non-decreasing"):
        voc_ap([0.5, 0.2], [1.0, 1.0], use_07_metric=False)
    with pytest.raises(ValueError, match="NaN"):
        voc_ap([0.5, float("nan")], [1.0, 1.0], use_07_metric=False)


# --------------------------------------------------------------------------- matching, hand-computed


def _case_a():
    # image 0: G1 [0,0,10,10], G2 [20,0,30,10]; image 1: G3 [0,0,10,10] (see Case A above)
    targets = [_target([[0, 0, 10, 10], [20, 0, 30, 10]]), _target([[0, 0, 10, 10]])]
    preds = [
        _pred([[0, 0, 10, 10], [0, 0, 10, 10], [50, 50, 60, 60], [20, 0, 30, 10]], [0.9, 0.8, 0.6, 0.5]),
        _pred([[0, 0, 10, 10]], [0.7]),
    ]
    return preds, targets


def test_case_a_matching_all_point_and_11_point():
    preds, targets = _case_a()
    assert _ap(preds, targets) == pytest.approx(pct(CASE_A_ALL_POINT), abs=1e-12)
    assert _ap(preds, targets, use_07_metric=True) == pytest.approx(pct(CASE_A_11_POINT), abs=1e-12)

    r = voc_evaluate_class([p["boxes"] for p in preds], [p["scores"] for p in preds], [t["boxes"] for t in targets])
    assert r.tp.tolist() == [True, False, True, False, True]
    assert r.fp.tolist() == [False, True, False, True, False]
    assert r.image_index.tolist() == [0, 0, 1, 0, 0]
    assert r.recall == pytest.approx([float(f) for f in CASE_A_RECALL])
    assert r.precision == pytest.approx([float(f) for f in CASE_A_PRECISION])
    assert r.num_positives == 3 and r.num_detections == 5


def test_report_structure_and_units():
    preds, targets = _case_a()
    m = VOCMeanAP(["thing", "other"])
    m.update(preds, targets)
    out = m.compute()
    assert out["protocol"] == "voc12" and out["iou_threshold"] == 0.5 and out["num_images"] == 2
    assert out["max_detections"] is None
    assert out["per_class"]["thing"] == {"AP50": pytest.approx(75.5555555555), "num_objects": 3, "num_detections": 5}
    assert out["per_class"]["other"] == {"AP50": None, "num_objects": 0, "num_detections": 0}
    assert out["mAP50"] == pytest.approx(pct(CASE_A_ALL_POINT))  # percent, "other" has no GT
    assert VOCMeanAP(["thing"], use_07_metric=True).compute()["protocol"] == "voc07"


def test_difficult_ground_truth_matched_is_ignored():
    # G1 [0,0,10,10] normal, G2 [20,0,30,10] difficult; positives = 1
    #   a 0.9 on G2  -> ignored
    #   b 0.8 on G2  -> ignored again (difficult boxes are never "taken", so no duplicate FP)
    #   c 0.7 on G1  -> TP   precision 1,   recall 1
    #   d 0.6 far    -> FP   precision 1/2, recall 1
    # AP = 1 (both variants). Counting a and b as FPs would give 1/3 instead.
    targets = [_target([[0, 0, 10, 10], [20, 0, 30, 10]], difficult=[False, True])]
    preds = [_pred([[20, 0, 30, 10], [20, 0, 30, 10], [0, 0, 10, 10], [50, 50, 60, 60]], [0.9, 0.8, 0.7, 0.6])]
    m = VOCMeanAP(["thing"])
    m.update(preds, targets)
    out = m.compute()["per_class"]["thing"]
    assert out == {"AP50": pytest.approx(100.0), "num_objects": 1, "num_detections": 4}
    assert _ap(preds, targets, use_07_metric=True) == pytest.approx(100.0)
    r = voc_evaluate_class([preds[0]["boxes"]], [preds[0]["scores"]], [targets[0]["boxes"]], [targets[0]["difficult"]])
    assert r.ignored.tolist() == [True, True, False, False]
    assert r.tp.tolist() == [False, False, True, False] and r.fp.tolist() == [False, False, False, True]
    assert r.precision.tolist() == [1.0, 0.5]


def test_difficult_ground_truth_below_threshold_is_a_false_positive():
    # a detection whose best IoU (with the difficult box) is 1/4 < 0.5 is an ordinary FP:
    #   0.9 [20,0,25,5] vs difficult [20,0,30,10]: IoU 25/100 -> FP
    #   0.8 on G1 -> TP: precision 1/2 at recall 1 -> AP 1/2
    targets = [_target([[0, 0, 10, 10], [20, 0, 30, 10]], difficult=[False, True])]
    preds = [_pred([[20, 0, 25, 5], [0, 0, 10, 10]], [0.9, 0.8])]
    assert _ap(preds, targets) == pytest.approx(50.0)


def test_duplicate_detection_is_a_false_positive():
    # GT A [0,0,10,10], B [30,0,40,10]
    #   0.9 on A -> TP  P 1,   R 1/2
    #   0.8 on A -> FP (A already matched)  P 1/2, R 1/2
    #   0.7 on B -> TP  P 2/3, R 1
    # all-point: 1/2 * 1 + 1/2 * 2/3 = 5/6
    # 11-point: t = 0..0.5 -> 1 (6 points), t = 0.6..1 -> 2/3 (5 points): (6 + 10/3) / 11 = 28/33
    targets = [_target([[0, 0, 10, 10], [30, 0, 40, 10]])]
    preds = [_pred([[0, 0, 10, 10], [1, 0, 10, 10], [30, 0, 40, 10]], [0.9, 0.8, 0.7])]
    assert _ap(preds, targets) == pytest.approx(pct(Fraction(5, 6)), abs=1e-12)
    assert _ap(preds, targets, use_07_metric=True) == pytest.approx(pct(Fraction(28, 33)), abs=1e-12)


def test_equal_scores_keep_input_order():
    # one GT; two detections of equal score, a miss and a hit. Ranked as given:
    #   miss then hit: P 0, 1/2 at R 0, 1 -> all-point AP = 1 * 1/2 = 1/2
    #   hit then miss: P 1, 1/2 at R 1, 1 -> AP = 1
    gt = [_target([[0, 0, 10, 10]])]
    assert _ap([_pred([[50, 50, 60, 60], [0, 0, 10, 10]], [0.5, 0.5])], gt) == pytest.approx(50.0)
    assert _ap([_pred([[0, 0, 10, 10], [50, 50, 60, 60]], [0.5, 0.5])], gt) == pytest.approx(100.0)
    # across images: image order decides (image 0's miss first)
    gts = [_target([[0, 0, 10, 10]]), _target([[0, 0, 10, 10]])]
    preds = [_pred([[50, 50, 60, 60]], [0.5]), _pred([[0, 0, 10, 10]], [0.5])]
    # miss (P 0, R 0), hit (P 1/2, R 1/2) -> 1/2 * 1/2 = 1/4
    assert _ap(preds, gts) == pytest.approx(25.0)


def test_iou_threshold_is_inclusive():
    # det [0,0,10,5] vs GT [0,0,10,10]: IoU = 50/100 = 0.5 exactly -> a match (VOCevaldet.m's >=)
    gt, det = [_target([[0, 0, 10, 10]])], [_pred([[0, 0, 10, 5]], [0.9])]
    assert _ap(det, gt) == pytest.approx(100.0)
    m = VOCMeanAP(["thing"], iou_threshold=0.75)
    m.update(det, gt)
    out = m.compute()
    assert out["iou_threshold"] == 0.75 and out["mAP50"] == 0.0


def test_legacy_pixel_offset():
    # GT [0,0,2,2], det [0,0,2,4.5]
    #   continuous: inter 2*2 = 4, union 4 + 9 - 4 = 9       -> IoU 4/9 < 0.5 -> FP -> AP 0
    #   +1 legacy:  inter 3*3 = 9, union 9 + 3*5.5 - 9 = 16.5 -> IoU 6/11 >= 0.5 -> TP -> AP 100
    gt_box, det_box = [[0.0, 0, 2, 2]], [[0.0, 0, 2, 4.5]]
    assert box_iou(det_box, gt_box)[0, 0] == pytest.approx(4 / 9, abs=1e-15)
    assert box_iou(det_box, gt_box, pixel_offset=1.0)[0, 0] == pytest.approx(6 / 11, abs=1e-15)
    gt, det = [_target(gt_box)], [_pred(det_box, [0.9])]
    assert _ap(det, gt) == 0.0
    assert _ap(det, gt, pixel_offset=1.0) == pytest.approx(100.0)


def test_box_iou_disjoint_touching_and_empty():
    iou = box_iou([[0, 0, 10, 10]], [[10, 0, 20, 10], [0, 0, 10, 10], [5, 0, 15, 10]])
    assert iou.dtype == np.float64 and iou.tolist() == [[0.0, 1.0, pytest.approx(1 / 3)]]
    assert box_iou(np.zeros((0, 4)), [[0, 0, 1, 1]]).shape == (0, 1)
    assert box_iou([[0, 0, 0, 0]], [[0, 0, 0, 0]]).tolist() == [[0.0]]  # empty union


def test_empty_predictions_and_no_ground_truth():
    # class 0 has 2 GT boxes and no detection -> AP 0; class 1 has neither -> None
    m = VOCMeanAP(["a", "b"])
    m.update([_pred([], [])], [_target([[0, 0, 5, 5], [10, 10, 20, 20]])])
    out = m.compute()
    assert out["per_class"]["a"] == {"AP50": 0.0, "num_objects": 2, "num_detections": 0}
    assert out["per_class"]["b"]["AP50"] is None and out["mAP50"] == 0.0
    # no ground truth at all (only detections, of an image without objects)
    m = VOCMeanAP(["a", "b"])
    m.update([_pred([[0, 0, 5, 5]], [0.9], [1])], [_target([])])
    out = m.compute()
    assert out["mAP50"] is None and out["per_class"]["b"] == {"AP50": None, "num_objects": 0, "num_detections": 1}
    # nothing added
    assert VOCMeanAP(["a"]).compute()["mAP50"] is None


def test_class_without_ground_truth_is_left_out_of_the_mean():
    # class a: one perfect detection (AP 100); class b: only false positives, no GT (AP None);
    # class c: one difficult GT and nothing else (no positives -> None)
    m = VOCMeanAP(["a", "b", "c"])
    m.update(
        [_pred([[0, 0, 10, 10], [40, 40, 50, 50]], [0.9, 0.95], [0, 1])],
        [_target([[0, 0, 10, 10], [60, 60, 70, 70]], [0, 2], difficult=[False, True])],
    )
    out = m.compute()
    assert out["per_class"]["a"]["AP50"] == pytest.approx(100.0)
    assert out["per_class"]["b"] == {"AP50": None, "num_objects": 0, "num_detections": 1}
    assert out["per_class"]["c"] == {"AP50": None, "num_objects": 0, "num_detections": 0}
    assert out["mAP50"] == pytest.approx(100.0)


def _grid(n: int, step: float = 20.0, size: float = 10.0) -> np.ndarray:
    xy = np.array([[(i % 15) * step, (i // 15) * step] for i in range(n)], dtype=np.float32)
    return np.concatenate([xy, xy + size], axis=1)


def test_max_detections_none_keeps_dense_scenes_whole():
    # 150 objects, 150 exact detections with decreasing scores (a dense DOTA-like scene).
    # No cap: AP 100. Cap 100: the top 100 kept -> precision 1 up to recall 100/150 = 2/3:
    #   all-point 2/3; 11-point: t = 0 .. 0.6 reached (7 points) -> 7/11
    boxes = _grid(150)
    pred = {
        "boxes": torch.from_numpy(boxes),
        "scores": torch.linspace(1.0, 0.01, 150),
        "labels": torch.zeros(150, dtype=torch.int64),
    }
    target = {"boxes": torch.from_numpy(boxes), "labels": torch.zeros(150, dtype=torch.int64)}
    assert VOCMeanAP(["x"]).max_detections is None
    assert _ap([pred], [target]) == pytest.approx(100.0)
    m = VOCMeanAP(["x"], max_detections=100)
    m.update([pred], [target])
    out = m.compute()
    assert out["per_class"]["x"]["num_detections"] == 100 and out["max_detections"] == 100
    assert out["mAP50"] == pytest.approx(pct(Fraction(2, 3)), abs=1e-12)
    assert _ap([pred], [target], use_07_metric=True, max_detections=100) == pytest.approx(
        pct(Fraction(7, 11)), abs=1e-12
    )


def test_max_detections_caps_over_all_classes_of_an_image():
    # 3 detections (classes 0, 1, 0 with scores 0.5, 0.9, 0.7); cap 2 keeps 0.9 (class 1) and 0.7 (class 0)
    m = VOCMeanAP(["a", "b"], max_detections=2)
    m.update(
        [_pred([[0, 0, 10, 10], [20, 20, 30, 30], [0, 0, 10, 10]], [0.5, 0.9, 0.7], [0, 1, 0])],
        [_target([[0, 0, 10, 10], [20, 20, 30, 30]], [0, 1])],
    )
    out = m.compute()
    assert out["per_class"]["a"]["num_detections"] == 1 and out["per_class"]["b"]["num_detections"] == 1
    assert out["mAP50"] == pytest.approx(100.0)


# --------------------------------------------------------------------------- against the DOTA devkit

# A case with integer coordinates, distinct scores, one difficult object and no IoU or recall
# on a tie. The expected figures were printed by the DOTA devkit's own evaluation
# (CAPTAIN-WHU/DOTA_devkit, dota_evaluation_task2.py, voc_eval, run outside this project on
# this case written as labelTxt and Task2 detection files), which adds 1 to widths, hence
# pixel_offset=1:
#   use_07_metric=True:  car 0.2545454545454546, ship 0.6363636363636366, mAP 0.44545454545454555
#   use_07_metric=False: car 0.26666666666666666, ship 0.6363636363636364, mAP 0.45151515151515154
DEVKIT_CASE = {
    "img_a": {
        "gt": [
            [125, 136, 161, 163, "ship", 0],
            [11, 60, 29, 96, "ship", 0],
            [1, 26, 34, 39, "car", 0],
            [68, 55, 99, 72, "ship", 0],
            [89, 116, 115, 141, "ship", 0],
        ],
        "det": [
            [127, 134, 167, 163, "ship", 0.3695],
            [121, 140, 157, 168, "ship", 0.0037],
            [6, 54, 28, 90, "ship", 0.83],
            [74, 55, 103, 77, "ship", 0.1545],
            [91, 115, 115, 138, "ship", 0.2676],
            [89, 114, 112, 147, "ship", 0.8803],
            [2, 19, 22, 34, "car", 0.5098],
            [193, 138, 213, 153, "ship", 0.8472],
        ],
    },
    "img_b": {
        "gt": [[141, 127, 152, 159, "car", 0], [18, 145, 43, 173, "ship", 0], [128, 119, 141, 130, "ship", 0]],
        "det": [
            [137, 122, 150, 163, "car", 0.2396],
            [16, 146, 49, 172, "ship", 0.4025],
            [127, 120, 140, 132, "ship", 0.0967],
            [109, 135, 129, 150, "ship", 0.9678],
            [30, 112, 50, 127, "car", 0.215],
        ],
    },
    "img_c": {
        "gt": [[134, 2, 153, 26, "ship", 0], [106, 26, 141, 61, "car", 0], [188, 192, 215, 210, "car", 1]],
        "det": [
            [140, -1, 154, 20, "ship", 0.0252],
            [130, 0, 158, 32, "ship", 0.3722],
            [107, 27, 135, 59, "car", 0.0304],
            [187, 188, 212, 213, "car", 0.1229],
            [182, 198, 220, 211, "car", 0.9671],
            [93, 152, 113, 167, "ship", 0.6578],
            [95, 64, 115, 79, "car", 0.4282],
        ],
    },
}


def _devkit_inputs():
    classes = ["car", "ship"]
    preds, targets = [], []
    for case in DEVKIT_CASE.values():
        preds.append(
            {
                "boxes": np.array([d[:4] for d in case["det"]], dtype=np.float32),
                "scores": np.array([d[5] for d in case["det"]], dtype=np.float64),
                "labels": np.array([classes.index(d[4]) for d in case["det"]], dtype=np.int64),
            }
        )
        targets.append(
            {
                "boxes": np.array([g[:4] for g in case["gt"]], dtype=np.float32),
                "labels": np.array([classes.index(g[4]) for g in case["gt"]], dtype=np.int64),
                "difficult": np.array([bool(g[5]) for g in case["gt"]]),
            }
        )
    return classes, preds, targets


@pytest.mark.parametrize(
    "use_07_metric, car, ship, mean",
    [
        (True, 0.2545454545454546, 0.6363636363636366, 0.44545454545454555),
        (False, 0.26666666666666666, 0.6363636363636364, 0.45151515151515154),
    ],
)
def test_matches_dota_devkit(use_07_metric, car, ship, mean):
    classes, preds, targets = _devkit_inputs()
    m = VOCMeanAP(classes, use_07_metric=use_07_metric, pixel_offset=1.0)
    m.update(preds, targets)
    out = m.compute()
    assert out["per_class"]["car"]["AP50"] == pytest.approx(100 * car, rel=1e-12)
    assert out["per_class"]["ship"]["AP50"] == pytest.approx(100 * ship, rel=1e-12)
    assert out["mAP50"] == pytest.approx(100 * mean, rel=1e-12)
    assert out["per_class"]["car"]["num_objects"] == 3  # the difficult car is not a positive
    assert out["per_class"]["ship"]["num_detections"] == 13


# --------------------------------------------------------------------------- against a plain sequential loop


def _sequential_ap(preds, targets, cls, use_07_metric):
    """The protocol written as the devkits' sequential greedy loop (plain Python), AP as a fraction."""
    dets = []  # (score, input position, image, box)
    for i, p in enumerate(preds):
        for b, s, lab in zip(p["boxes"].tolist(), p["scores"].tolist(), p["labels"].tolist(), strict=True):
            if lab == cls:
                dets.append((s, len(dets), i, b))
    dets.sort(key=lambda d: (-d[0], d[1]))
    gts = [
        [
            (b, d)
            for b, lab, d in zip(t["boxes"].tolist(), t["labels"].tolist(), t["difficult"].tolist(), strict=True)
            if lab == cls
        ]
        for t in targets
    ]
    npos = sum(not d for g in gts for _, d in g)
    taken = [[False] * len(g) for g in gts]
    tp, fp = [], []
    for _, _, i, b in dets:
        best, jbest = -1.0, -1
        for j, (g, _) in enumerate(gts[i]):
            w = max(0.0, min(b[2], g[2]) - max(b[0], g[0]))
            h = max(0.0, min(b[3], g[3]) - max(b[1], g[1]))
            union = (b[2] - b[0]) * (b[3] - b[1]) + (g[2] - g[0]) * (g[3] - g[1]) - w * h
            iou = w * h / union if union > 0 else 0.0
            if iou > best:
                best, jbest = iou, j
        if best >= 0.5 and gts[i][jbest][1]:
            continue  # difficult: ignored
        hit = best >= 0.5 and not taken[i][jbest]
        if hit:
            taken[i][jbest] = True
        tp.append(hit)
        fp.append(not hit)
    ctp, cfp = np.cumsum(tp, dtype=float), np.cumsum(fp, dtype=float)
    return voc_ap(ctp / npos, ctp / np.maximum(ctp + cfp, 1), use_07_metric) if npos else None


def test_vectorised_matching_equals_a_sequential_loop():
    # random scenes with duplicates, equal scores (one decimal), difficult boxes and cross-class overlaps
    rng = np.random.default_rng(1)
    for _ in range(40):
        preds, targets = [], []
        for _ in range(int(rng.integers(1, 5))):
            n, m = int(rng.integers(0, 10)), int(rng.integers(0, 25))
            xy = rng.integers(0, 50, (n, 2)).astype(float)
            g = np.concatenate([xy, xy + rng.integers(4, 20, (n, 2))], 1)
            src = rng.integers(0, max(n, 1), m)
            d = (g[src] if n else np.zeros((m, 4))) + rng.normal(0, 2, (m, 4))
            d[:, 2:] = np.maximum(d[:, 2:], d[:, :2] + 1)
            targets.append(
                {
                    "boxes": torch.tensor(g).reshape(-1, 4),
                    "labels": torch.tensor(rng.integers(0, 2, n)),
                    "difficult": torch.tensor(rng.random(n) < 0.2),
                }
            )
            preds.append(
                {
                    "boxes": torch.tensor(d).reshape(-1, 4),
                    "scores": torch.tensor(np.round(rng.random(m), 1)),
                    "labels": torch.tensor(rng.integers(0, 2, m)),
                }
            )
        for use_07_metric in (False, True):
            m = VOCMeanAP(["a", "b"], use_07_metric=use_07_metric)
            m.update(preds, targets)
            out = m.compute()
            for c, name in enumerate(["a", "b"]):
                expected = _sequential_ap(preds, targets, c, use_07_metric)
                got = out["per_class"][name]["AP50"]
                assert (got is None and expected is None) or got == pytest.approx(100 * expected, abs=1e-9)


# --------------------------------------------------------------------------- DDP state


def test_state_merge_and_world_gather_equal_one_process():
    classes, preds, targets = _devkit_inputs()
    whole = VOCMeanAP(classes)
    whole.update(preds, targets)
    expected = whole.compute()

    rank0, rank1 = VOCMeanAP(classes), VOCMeanAP(classes)
    rank0.update(preds[:2], targets[:2])
    rank1.update(preds[2:], targets[2:])
    state1 = pickle.loads(pickle.dumps(rank1.state()))  # what all_gather_object ships

    gathered = rank0.compute(world_gather=lambda s: [s, state1])
    assert gathered == expected
    assert rank0.num_images == 2  # compute(world_gather=...) leaves the metric as it was

    rank0.merge([state1])
    assert rank0.compute() == expected
    # single process: distributed_gather is the identity
    assert distributed_gather(rank1.state()) == [rank1.state()]
    assert rank1.compute(world_gather=distributed_gather) == rank1.compute()
    with pytest.raises(ValueError, match="state"):
        rank0.merge([[{"boxes": 1}]])
    rank0.reset()
    assert rank0.num_images == 0 and rank0.compute()["mAP50"] is None


# --------------------------------------------------------------------------- errors


def test_errors():
    m = VOCMeanAP(["a", "b"])
    good_p, good_t = _pred([[0, 0, 1, 1]], [0.5], [1]), _target([[0, 0, 1, 1]], [1])
    with pytest.raises(ValueError, match="predictions for"):
        m.update([good_p], [])
    with pytest.raises(ValueError, match=r"labels'\] must be integers in \[0, 2\), got \[2\]"):
        m.update([_pred([[0, 0, 1, 1]], [0.5], [2])], [good_t])
    with pytest.raises(ValueError, match=r"targets\[0\]\['labels'\] must be integers in \[0, 2\)"):
        m.update([good_p], [_target([[0, 0, 1, 1]], [-1])])
    with pytest.raises(ValueError, match="scores"):
        m.update(
            [{"boxes": torch.zeros(2, 4), "scores": torch.zeros(3), "labels": torch.zeros(2, dtype=torch.int64)}],
            [good_t],
        )
    with pytest.raises(ValueError, match=r"shape \(N, 4\)"):
        m.update(
            [{"boxes": torch.zeros(2, 5), "scores": torch.zeros(2), "labels": torch.zeros(2, dtype=torch.int64)}],
            [good_t],
        )
    with pytest.raises(ValueError, match="difficult"):
        m.update([good_p], [{**good_t, "difficult": torch.zeros(3, dtype=torch.bool)}])
    with pytest.raises(ValueError, match="lacks"):
        m.update([{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}], [good_t])
    # a failing batch adds nothing
    with pytest.raises(ValueError):
        m.update([good_p, _pred([[0, 0, 1, 1]], [0.5], [7])], [good_t, good_t])
    assert m.num_images == 0
    with pytest.raises(ValueError, match="iou_threshold"):
        VOCMeanAP(["a"], iou_threshold=0.0)
    with pytest.raises(ValueError, match="max_detections"):
        VOCMeanAP(["a"], max_detections=-1)
    with pytest.raises(ValueError, match="empty"):
        VOCMeanAP([])
    with pytest.raises(ValueError, match="differ in length"):
        voc_evaluate_class([np.zeros((0, 4))], [np.zeros(0)], [])


# --------------------------------------------------------------------------- real DOTA labels


def _iou_reference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Plain IoU (continuous coordinates) for checking the test's own preconditions."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area_a = np.prod(a[:, 2:] - a[:, :2], axis=1)
    area_b = np.prod(b[:, 2:] - b[:, :2], axis=1)
    return inter / (area_a[:, None] + area_b[None, :] - inter)


def _shrink(boxes: np.ndarray, s: float) -> np.ndarray:
    """Boxes scaled by ``s`` about their centres (IoU with the original: s²)."""
    c = (boxes[:, :2] + boxes[:, 2:]) / 2
    half = (boxes[:, 2:] - boxes[:, :2]) * s / 2
    return np.concatenate([c - half, c + half], axis=1)


def test_real_dota_labels_against_themselves_and_a_jittered_copy(datasets: Path):
    from rsfm.data.detection import DOTA_V1_CLASSES, parse_dota_txt

    files = sorted((datasets / "dota" / "labelTxt").glob("*.txt"))
    assert len(files) == 4
    classes = list(DOTA_V1_CLASSES)
    rng = np.random.default_rng(0)
    targets, exact, jittered = [], [], []
    good_positives = dict.fromkeys(classes, 0)
    for f in files:
        ann = parse_dota_txt(f)
        boxes = ann["boxes"].astype(np.float64)
        labels = np.array([classes.index(n) for n in ann["names"]], dtype=np.int64)
        targets.append(
            {
                "boxes": torch.from_numpy(boxes).float(),
                "labels": torch.from_numpy(labels),
                "difficult": torch.from_numpy(ann["difficult"]),
            }
        )
        n = len(boxes)
        # exact copy: every object found, scores arbitrary
        exact.append(
            {
                "boxes": torch.from_numpy(boxes).float(),
                "scores": torch.from_numpy(rng.random(n)).float(),
                "labels": torch.from_numpy(labels),
            }
        )
        # jittered copy: 2 of 3 boxes shrunk to 0.9 (IoU 0.81, a hit), every third to 0.5 (IoU 0.25,
        # a miss); hits score above 0.5, misses below, so precision is 1 up to the hits' recall
        good = np.arange(n) % 3 != 0
        det = np.where(good[:, None], _shrink(boxes, 0.9), _shrink(boxes, 0.5))
        scores = np.where(good, 0.5 + rng.random(n) / 2, rng.random(n) / 2)
        jittered.append(
            {
                "boxes": torch.from_numpy(det).float(),
                "scores": torch.from_numpy(scores).float(),
                "labels": torch.from_numpy(labels),
            }
        )
        # preconditions, checked with a plain IoU: a hit's best same-class GT is its own box;
        # a miss overlaps no same-class GT by 0.5
        for c in np.unique(labels):
            idx = np.flatnonzero(labels == c)
            iou = _iou_reference(det[idx], boxes[idx])
            for k, i in enumerate(idx):
                if good[i]:
                    assert iou[k].argmax() == k and iou[k, k] >= 0.5
                else:
                    assert iou[k].max() < 0.5
            good_positives[classes[c]] += int((good[idx] & ~ann["difficult"][idx]).sum())

    m = VOCMeanAP(classes)
    m.update(exact, targets)
    out = m.compute()
    present = {"large-vehicle", "small-vehicle"}
    assert {n for n, v in out["per_class"].items() if v["num_objects"]} == present
    for name in present:
        assert out["per_class"][name]["AP50"] == pytest.approx(100.0)
    assert out["mAP50"] == pytest.approx(100.0)
    total = sum(v["num_objects"] for v in out["per_class"].values())
    assert total == sum(int((~t["difficult"]).sum()) for t in targets)

    for use_07_metric in (False, True):
        m = VOCMeanAP(classes, use_07_metric=use_07_metric)
        m.update(jittered, targets)
        out = m.compute()
        aps = []
        for name in present:
            npos = out["per_class"][name]["num_objects"]
            recall = Fraction(good_positives[name], npos)
            # precision 1 up to `recall`, then only false positives:
            # all-point AP = recall; 11-point AP = (#{t = i/10 <= recall}) / 11
            expected = recall if not use_07_metric else Fraction(sum(Fraction(i, 10) <= recall for i in range(11)), 11)
            assert out["per_class"][name]["AP50"] == pytest.approx(pct(expected), abs=1e-9)
            aps.append(pct(expected))
        assert out["mAP50"] == pytest.approx(sum(aps) / 2, abs=1e-9)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("side", ["preds", "targets"])
def test_non_finite_box_coordinates_raise_naming_image_and_field(bad, side):
    """NaN or infinite coordinates were accepted silently (a NaN box matches nothing)."""
    good = [[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]]
    broken = [good[0], [20.0, bad, 30.0, 30.0]]
    pred = {"boxes": broken if side == "preds" else good, "scores": [0.9, 0.8], "labels": [0, 0]}
    target = {"boxes": broken if side == "targets" else good, "labels": [0, 0]}
    m = VOCMeanAP(["a"])
    ok = {"boxes": good, "scores": [0.9, 0.8], "labels": [0, 0]}
    with pytest.raises(ValueError, match=rf"{side}\[1\]\['boxes'\] must hold finite coordinates; row 1"):
        m.update([ok, pred], [{"boxes": good, "labels": [0, 0]}, target])
    assert m.num_images == 0  # all or nothing
