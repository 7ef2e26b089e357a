"""COCO mAP50 / mAP50:95 (percent) checked against a hand computation and against pycocotools' COCOeval run directly."""

import contextlib
import io
import pickle

import numpy as np
import pytest
import torch

from rsfm.metrics.coco import DetectionMAP

pycocotools = pytest.importorskip("pycocotools")
from pycocotools.coco import COCO  # noqa: E402
from pycocotools.cocoeval import COCOeval  # noqa: E402


def _det(boxes, scores, labels):
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "scores": torch.tensor(scores, dtype=torch.float32),
        "labels": torch.tensor(labels, dtype=torch.int64),
    }


def _gt(boxes, labels, difficult=None):
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "labels": torch.tensor(labels, dtype=torch.int64),
        "difficult": torch.tensor(difficult if difficult is not None else [False] * len(labels)),
    }


def test_hand_computed_ap():
    # two objects; detections by score: hit, false positive, hit. Precision 1, 1/2, 2/3 at
    # recall 1/2, 1/2, 1. COCO's 101-point interpolated AP: 51 points (r <= 0.5) at 1 and
    # 50 points at 2/3 → (51 + 50 · 2/3) / 101.
    m = DetectionMAP(["a"])
    m.update(
        [_det([[0, 0, 10, 10], [50, 50, 60, 60], [20, 20, 30, 30]], [0.9, 0.8, 0.7], [0, 0, 0])],
        [_gt([[0, 0, 10, 10], [20, 20, 30, 30]], [0, 0])],
    )
    r = m.compute()
    expected = 100 * (51 + 50 * 2 / 3) / 101  # percent
    assert r["mAP50"] == pytest.approx(expected, abs=1e-4)
    assert r["mAP50_95"] == pytest.approx(expected, abs=1e-4)  # exact boxes: same at every IoU
    assert r["per_class"]["a"] == {
        "AP50": pytest.approx(expected, abs=1e-4),
        "AP50_95": pytest.approx(expected, abs=1e-4),
        "num_objects": 2,
    }
    assert r["num_images"] == 1 and r["max_detections"] == 100
    assert all(type(r[k]) is float for k in ("mAP50", "mAP50_95"))


def _scene(seed: int):
    """Random images: 2 classes, jittered detections, false positives, difficult objects."""
    g = np.random.default_rng(seed)
    preds, targets = [], []
    for _ in range(6):
        n = int(g.integers(1, 6))
        xy = g.uniform(0, 400, (n, 2))
        wh = g.uniform(10, 80, (n, 2))
        gt = np.concatenate([xy, xy + wh], 1)
        labels = g.integers(0, 2, n)
        difficult = g.uniform(size=n) < 0.2
        keep = g.uniform(size=n) < 0.8
        jitter = gt[keep] + g.normal(0, 4, (int(keep.sum()), 4))
        fp_xy = g.uniform(0, 400, (2, 2))
        fp = np.concatenate([fp_xy, fp_xy + g.uniform(10, 60, (2, 2))], 1)
        boxes = np.concatenate([jitter, fp])
        plabels = np.concatenate([labels[keep], g.integers(0, 2, 2)])
        scores = g.uniform(0.05, 1, len(boxes))
        preds.append(_det(boxes.tolist(), scores.tolist(), plabels.tolist()))
        targets.append(_gt(gt.tolist(), labels.tolist(), difficult.tolist()))
    return preds, targets


def _cocoeval(preds, targets, cat_ids=None):
    """Stats of pycocotools' COCOeval on the same boxes (difficult → iscrowd)."""
    images, anns, dets = [], [], []
    for i, (p, t) in enumerate(zip(preds, targets, strict=True)):
        images.append({"id": i, "width": 500, "height": 500})
        for b, lab, d in zip(t["boxes"].tolist(), t["labels"].tolist(), t["difficult"].tolist(), strict=True):
            w, h = b[2] - b[0], b[3] - b[1]
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": i,
                    "category_id": lab,
                    "bbox": [b[0], b[1], w, h],
                    "area": w * h,
                    "iscrowd": int(d),
                }
            )
        for b, s, lab in zip(p["boxes"].tolist(), p["scores"].tolist(), p["labels"].tolist(), strict=True):
            dets.append({"image_id": i, "category_id": lab, "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]], "score": s})
    gt = COCO()
    gt.dataset = {"images": images, "annotations": anns, "categories": [{"id": 0, "name": "a"}, {"id": 1, "name": "b"}]}
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
        dt = gt.loadRes(dets)
        ev = COCOeval(gt, dt, iouType="bbox")
        if cat_ids is not None:
            ev.params.catIds = cat_ids
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_against_pycocotools(seed):
    preds, targets = _scene(seed)
    m = DetectionMAP(["a", "b"])
    m.update(preds[:3], targets[:3])  # accumulated over two updates
    m.update(preds[3:], targets[3:])
    r = m.compute()
    stats = _cocoeval(preds, targets)
    assert r["mAP50"] == pytest.approx(100 * stats[1], abs=1e-4)
    assert r["mAP50_95"] == pytest.approx(100 * stats[0], abs=1e-4)
    assert 0.0 < r["mAP50"] < 100.0  # the scene has misses and false positives
    for k, name in enumerate(["a", "b"]):
        s = _cocoeval(preds, targets, cat_ids=[k])
        assert r["per_class"][name]["AP50"] == pytest.approx(100 * s[1], abs=1e-4)
        assert r["per_class"][name]["AP50_95"] == pytest.approx(100 * s[0], abs=1e-4)
        n = sum(int(((t["labels"] == k) & ~t["difficult"]).sum()) for t in targets)
        assert r["per_class"][name]["num_objects"] == n
    assert r["num_images"] == 6


def test_world_gather_scores_every_rank_and_an_empty_rank_takes_part():
    """Under DDP each rank passes its images through world_gather; all ranks get the whole-set figures."""
    preds, targets = _scene(0)
    whole = DetectionMAP(["a", "b"])
    whole.update(preds, targets)
    expected = whole.compute()

    rank0, rank1, empty = DetectionMAP(["a", "b"]), DetectionMAP(["a", "b"]), DetectionMAP(["a", "b"])
    rank0.update(preds[:2], targets[:2])
    rank1.update(preds[2:], targets[2:])
    state1 = pickle.loads(pickle.dumps((rank1._preds, rank1._targets)))  # what all_gather_object ships
    gathered = rank0.compute(world_gather=lambda mine: [mine, state1])
    assert gathered == expected and gathered["num_images"] == 6
    # a rank that saw no image still computes (no collective is skipped) and gets the same figures
    assert empty.compute(world_gather=lambda mine: [mine, (rank0._preds, rank0._targets), state1]) == expected
    assert rank0.num_images == 2  # gathering leaves the metric as it was
    assert empty.compute()["mAP50"] is None and empty.compute()["num_images"] == 0


def test_difficult_is_ignored():
    # a detection on a difficult object is neither a hit nor a false positive; the missed
    # difficult object is not a miss: AP stays 1.
    m = DetectionMAP(["a"])
    m.update(
        [_det([[0, 0, 10, 10], [20, 20, 30, 30]], [0.9, 0.95], [0, 0])],
        [_gt([[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]], [0, 0, 0], [False, True, True])],
    )
    r = m.compute()
    assert r["mAP50"] == pytest.approx(100.0)
    assert r["per_class"]["a"]["num_objects"] == 1
    # the same detection counts as a false positive when the object is not difficult
    m.reset()
    m.update(
        [_det([[0, 0, 10, 10], [20, 20, 30, 30]], [0.9, 0.95], [0, 0])],
        [_gt([[0, 0, 10, 10]], [0])],
    )
    assert m.compute()["mAP50"] < 100.0


def test_absent_class_and_empty():
    m = DetectionMAP(["a", "b"])
    empty = m.compute()
    assert empty["mAP50"] is None and empty["mAP50_95"] is None and empty["num_images"] == 0
    m.update([_det([[0, 0, 10, 10]], [0.9], [1])], [_gt([[0, 0, 10, 10]], [0])])
    r = m.compute()
    assert r["per_class"]["b"]["AP50"] is None  # no ground truth of class b
    assert r["per_class"]["a"]["AP50"] == pytest.approx(0.0)
    with pytest.raises(ValueError, match="labels"):
        m.update([_det([[0, 0, 1, 1]], [0.5], [2])], [_gt([], [])])


def test_docstring_example_is_percent():
    m = DetectionMAP(["oilwell"])
    m.update(
        [{"boxes": torch.tensor([[0.0, 0, 10, 10]]), "scores": torch.tensor([0.9]), "labels": torch.tensor([0])}],
        [{"boxes": torch.tensor([[0.0, 0, 10, 10]]), "labels": torch.tensor([0])}],  # no "difficult": none are
    )
    r = m.compute()
    assert r["mAP50"] == pytest.approx(100.0) and r["mAP50_95"] == pytest.approx(100.0)
    assert r["per_class"]["oilwell"] == {
        "AP50": pytest.approx(100.0),
        "AP50_95": pytest.approx(100.0),
        "num_objects": 1,
    }


HIT_UAV_CLASSES = ("Person", "Car", "Bicycle", "OtherVehicle", "DontCare")


def _hit_uav_scene(datasets, num_images: int = 60, seed: int = 0):
    """Real HIT-UAV val ground truth (horizontal hull of each oriented box; every 7th object difficult)
    and seeded detections: jittered objects, duplicates, wrong classes and 6 false positives per image,
    so every image holds more than 3 detections of some class (the small cap matters)."""
    import xml.etree.ElementTree as ET

    root = datasets / "hit_uav"
    ids = (root / "ImageSets" / "Main" / "val.txt").read_text().split()[:num_images]
    g = np.random.default_rng(seed)
    preds, targets, k = [], [], 0
    for image_id in ids:
        boxes, labels, difficult = [], [], []
        for obj in ET.parse(root / "Annotations" / f"{image_id}.xml").getroot().iter("object"):
            r = obj.find("robndbox")
            cx, cy, w, h, a = (float(r.findtext(t)) for t in ("cx", "cy", "w", "h", "angle"))
            corners = np.array([[-w, -h], [w, -h], [w, h], [-w, h]]) / 2
            xy = corners @ np.array([[np.cos(a), np.sin(a)], [-np.sin(a), np.cos(a)]]) + [cx, cy]
            boxes.append([*xy.min(0), *xy.max(0)])
            labels.append(HIT_UAV_CLASSES.index(obj.findtext("name").strip()))
            k += 1
            difficult.append(bool(int(obj.findtext("difficult") or 0)) or k % 7 == 0)
        pb, ps, pl = [], [], []
        for b, lab in zip(boxes, labels, strict=True):
            for copy in range(2):
                if g.random() > (0.85 if copy == 0 else 0.3):
                    continue
                w, h = b[2] - b[0], b[3] - b[1]
                pb.append(list(np.asarray(b) + g.normal(0, 0.1, 4) * [w, h, w, h]))
                ps.append(float(g.random()))
                pl.append(lab if g.random() > 0.1 else int(g.integers(len(HIT_UAV_CLASSES))))
        for _ in range(6):
            x, y = g.uniform(0, 600), g.uniform(0, 480)
            pb.append([x, y, x + g.uniform(5, 40), y + g.uniform(5, 40)])
            ps.append(float(g.random()))
            pl.append(int(g.integers(2)))  # Person or Car: more than 3 per image and class
        preds.append(_det(pb, ps, pl))
        targets.append(_gt(boxes, labels, difficult))
    return preds, targets


def _cocoeval_precision(preds, targets, num_classes: int, max_detections: int) -> np.ndarray:
    """pycocotools' own path (COCO.loadRes, default size ranges, maxDets [1, 10, cap] sorted as COCO
    sorts them); the precision table (T, R, K) for all sizes at the cap's entry."""
    images, anns, dets = [], [], []
    for i, (p, t) in enumerate(zip(preds, targets, strict=True)):
        images.append({"id": i + 1, "width": 640, "height": 512})
        for b, lab, d in zip(t["boxes"].double().tolist(), t["labels"].tolist(), t["difficult"].tolist(), strict=True):
            w, h = b[2] - b[0], b[3] - b[1]
            anns.append(
                {"id": len(anns) + 1, "image_id": i + 1, "category_id": lab + 1, "bbox": [b[0], b[1], w, h]}
                | {"area": w * h, "iscrowd": int(d)}
            )
        for b, s, lab in zip(p["boxes"].double().tolist(), p["scores"].tolist(), p["labels"].tolist(), strict=True):
            xywh = [b[0], b[1], b[2] - b[0], b[3] - b[1]]
            dets.append({"image_id": i + 1, "category_id": lab + 1, "bbox": xywh, "score": s})
    gt = COCO()
    gt.dataset = {"images": images, "annotations": anns, "categories": [{"id": c + 1} for c in range(num_classes)]}
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
        ev = COCOeval(gt, gt.loadRes(dets), iouType="bbox")
        ev.params.maxDets = sorted({1, 10, max_detections})
        ev.evaluate()
        ev.accumulate()
    return ev.eval["precision"][:, :, :, 0, ev.params.maxDets.index(max_detections)]


@pytest.mark.parametrize("max_detections", [3, 100, 1000])
def test_any_cap_matches_cocoeval_on_hit_uav(datasets, max_detections):
    """Every cap gives COCOeval's numbers at that cap (torchmetrics' summary gave None for
    mAP50_95 above 100 or at 10, and silently used 10 for a cap below 10)."""
    preds, targets = _hit_uav_scene(datasets)
    m = DetectionMAP(HIT_UAV_CLASSES, max_detections=max_detections)
    m.update(preds, targets)
    r = m.compute()
    p = _cocoeval_precision(preds, targets, len(HIT_UAV_CLASSES), max_detections)

    def mean(x):
        x = x[x > -1]
        return 100 * float(x.mean()) if x.size else None

    assert r["mAP50"] == pytest.approx(mean(p[0]), abs=1e-9)
    assert r["mAP50_95"] == pytest.approx(mean(p), abs=1e-9)
    assert 0.0 < r["mAP50_95"] < r["mAP50"] < 100.0
    for c, name in enumerate(HIT_UAV_CLASSES):
        assert r["per_class"][name]["AP50"] == pytest.approx(mean(p[0, :, c]), abs=1e-9)
        assert r["per_class"][name]["AP50_95"] == pytest.approx(mean(p[:, :, c]), abs=1e-9)
    assert r["max_detections"] == max_detections


def test_cap_keeps_the_best_scoring_detections_per_image_and_class():
    # three false positives outscore the hit: a cap of 3 keeps only them (AP 0), a cap of 4 the hit too
    pred = _det([[50, 50, 60, 60], [70, 70, 80, 80], [90, 90, 99, 99], [0, 0, 10, 10]], [0.9, 0.8, 0.7, 0.6], [0] * 4)
    gt = _gt([[0, 0, 10, 10]], [0])
    for cap, expected in ((3, 0.0), (4, 25.0), (1000, 25.0)):  # hit at rank 4: precision 1/4 at full recall
        m = DetectionMAP(["a"], max_detections=cap)
        m.update([pred], [gt])
        r = m.compute()
        assert r["mAP50"] == pytest.approx(expected) and r["mAP50_95"] == pytest.approx(expected), cap


@pytest.mark.parametrize("cap", [0, -1, 2.5])
def test_cap_below_one_or_fractional_is_rejected(cap):
    with pytest.raises(ValueError, match="max_detections"):
        DetectionMAP(["a"], max_detections=cap)
