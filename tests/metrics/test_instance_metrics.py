"""COCO mask and box AP (percent) against a hand computation and against pycocotools' COCOeval run directly.

The parity test scores the real iSAID masks of ``../shared/datasets/isaid_dota/val`` (P0003,
P0004) against predictions made from them: masks moved, grown, shrunk or missed, duplicates,
false alarms of the wrong class, some objects marked difficult, random scores.
"""

from __future__ import annotations

import contextlib
import io
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from rsfm.metrics.instance import InstanceSegmentationMAP, encode_masks
from rsfm.models.heads.instance_segmentation import InstanceSegmentationMetricSet

pytest.importorskip("pycocotools")
from pycocotools import mask as mask_utils  # noqa: E402
from pycocotools.coco import COCO  # noqa: E402
from pycocotools.cocoeval import COCOeval  # noqa: E402


def _square(size: int, y0: int, x0: int, side: int) -> torch.Tensor:
    m = torch.zeros(size, size, dtype=torch.bool)
    m[y0 : y0 + side, x0 : x0 + side] = True
    return m


def _box(mask) -> list[float]:
    """Tight xyxy box (pixels) of a non-empty (H, W) mask."""
    m = np.asarray(mask)
    ys, xs = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
    return [float(xs[0]), float(ys[0]), float(xs[-1]) + 1, float(ys[-1]) + 1]


def _instances(masks: list[torch.Tensor], labels: list[int], scores: list[float] | None = None, difficult=None):
    out = {
        "boxes": torch.tensor([_box(m) for m in masks], dtype=torch.float32).reshape(-1, 4),
        "labels": torch.tensor(labels, dtype=torch.int64),
        "masks": torch.stack(masks) if masks else torch.zeros(0, 64, 64, dtype=torch.bool),
    }
    if scores is not None:
        out["scores"] = torch.tensor(scores, dtype=torch.float32)
    if difficult is not None:
        out["difficult"] = torch.tensor(difficult)
    return out


# --------------------------------------------------------------------------- by hand


def test_hand_computed_mask_ap_and_crowd_regions() -> None:
    # two objects and a difficult one; by score: a hit, a false alarm, a detection on the
    # difficult object (ignored), a hit. Precision 1, 1/2, -, 2/3 at recall 1/2, 1/2, -, 1:
    # COCO's 101-point AP = (51 · 1 + 50 · 2/3) / 101.
    a, b, hard = _square(64, 0, 0, 10), _square(64, 20, 20, 10), _square(64, 40, 40, 12)
    target = _instances([a, b, hard], [0, 0, 0], difficult=[False, False, True])
    miss = _square(64, 50, 0, 10)
    pred = _instances([a, miss, hard.clone(), b], [0, 0, 0, 0], [0.9, 0.8, 0.7, 0.6])
    m = InstanceSegmentationMAP(["ship", "plane"])
    m.update([pred], [target])
    r = m.compute()
    expected = 100 * (51 + 50 * 2 / 3) / 101
    for key in ("mask_mAP50", "mask_mAP50_95", "box_mAP50", "box_mAP50_95"):  # exact masks and boxes
        assert r[key] == pytest.approx(expected, abs=1e-6), key
    assert r["per_class"]["ship"]["num_objects"] == 2 and r["per_class"]["ship"]["mask_AP50"] == pytest.approx(expected)
    assert r["per_class"]["plane"] == {
        "mask_AP50": None, "mask_AP50_95": None, "box_AP50": None, "box_AP50_95": None, "num_objects": 0,
    }  # fmt: skip
    assert r["num_images"] == 1 and r["max_detections"] == 100

    # a mask that covers half its object (IoU 0.5) counts at IoU 0.5 only; its box is exact
    half = a.clone()
    half[:, 5:] = False
    m.reset()
    m.update([_instances([half], [0], [0.9])], [_instances([a], [0])])
    r = m.compute()
    assert r["mask_mAP50"] == pytest.approx(100.0, abs=1e-6)
    assert r["mask_mAP50_95"] == pytest.approx(10.0, abs=1e-6)  # 1 of the 10 IoU thresholds
    assert r["box_mAP50"] == pytest.approx(100.0, abs=1e-6) and r["box_mAP50_95"] == pytest.approx(10.0, abs=1e-6)


def test_no_detection_scores_zero_and_no_truth_scores_none() -> None:
    m = InstanceSegmentationMAP(["ship"])
    empty = _instances([], [], [])
    m.update([empty], [_instances([_square(64, 0, 0, 8)], [0])])
    assert m.compute()["mask_mAP50"] == 0.0 and m.compute()["box_mAP50_95"] == 0.0
    m.reset()
    m.update([_instances([_square(64, 0, 0, 8)], [0], [0.5])], [empty])
    r = m.compute()
    assert r["mask_mAP50"] is None and r["per_class"]["ship"]["mask_AP50"] is None
    metric_set = InstanceSegmentationMetricSet(["ship"])
    assert metric_set.compute() == dict.fromkeys(metric_set.names, 0.0)  # logged as 0, never None


def test_bad_input_is_refused() -> None:
    m = InstanceSegmentationMAP(["ship"])
    good = _instances([_square(64, 0, 0, 8)], [0], [0.5])
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 1\)"):
        m.update([{**good, "labels": torch.tensor([1])}], [_instances([_square(64, 0, 0, 8)], [0])])
    with pytest.raises(ValueError, match="masks must have shape"):
        m.update([{**good, "masks": good["masks"][0]}], [_instances([_square(64, 0, 0, 8)], [0])])
    with pytest.raises(ValueError, match="true masks are"):
        m.update([good], [{**good, "masks": torch.zeros(1, 32, 64, dtype=torch.bool)}])
    with pytest.raises(ValueError, match="no 'masks'"):
        m.update([{k: v for k, v in good.items() if k != "masks"}], [good])
    with pytest.raises(ValueError, match="predictions for"):
        m.update([good, good], [good])
    assert m.num_images == 0


# --------------------------------------------------------------------------- parity with COCOeval


@pytest.fixture(scope="module")
def isaid_val(datasets: Path) -> list[dict[str, np.ndarray]]:
    """The real iSAID instances of P0003 and P0004: masks (N, H, W) bool, labels, boxes (N, 4) xyxy.

    Each mask is laid out column-major (a transposed view), the order pycocotools encodes, so
    that the reference encodings below cost no transposing copy of every full-image mask.
    """
    from PIL import Image

    from rsfm.data.instance.isaid import decode_isaid

    out = []
    for name in ("P0003", "P0004"):
        path = datasets / "isaid_dota" / "val" / "images" / f"{name}.png"
        with Image.open(path) as img:
            w, h = img.size
        ann = decode_isaid(path, h, w)
        n = len(ann["labels"])
        masks = (ann["instance_map"].T[None] == np.arange(1, n + 1)[:, None, None]).transpose(0, 2, 1)
        boxes = np.array([_box(m) for m in masks], dtype=np.float32)
        out.append({"masks": masks, "labels": ann["labels"], "boxes": boxes})
    return out


def _shift(mask: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """``mask`` moved by ``(dy, dx)`` pixels (what leaves the image is lost)."""
    h, w = mask.shape
    out = np.zeros_like(mask)
    out[max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = mask[
        max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)
    ]
    return out


def _predictions(truth: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Imperfect instance predictions of one image's true masks (see the module docstring)."""
    masks, labels = [], []
    h, w = truth["masks"].shape[1:]
    for m, lab in zip(truth["masks"], truth["labels"], strict=True):
        r = rng.uniform()
        if r < 0.15:
            continue  # missed
        moved = _shift(m, *(int(v) for v in rng.integers(-6, 7, 2)))
        if r < 0.35:  # grown or shrunk by a pixel along one axis
            moved = moved | _shift(moved, 0, 1) if rng.uniform() < 0.5 else moved & _shift(moved, 1, 0)
        masks.append(moved)
        labels.append(int(lab))
        if rng.uniform() < 0.1:  # a duplicate
            masks.append(_shift(moved, 0, 2))
            labels.append(int(lab))
    for _ in range(6):  # false alarms: a true object's shape elsewhere, of any class
        k = int(rng.integers(len(truth["masks"])))
        x0, y0, x1, y1 = (int(v) for v in truth["boxes"][k])
        y, x = int(rng.integers(h - (y1 - y0))), int(rng.integers(w - (x1 - x0)))
        alarm = np.zeros_like(truth["masks"][k])
        alarm[y : y + y1 - y0, x : x + x1 - x0] = truth["masks"][k][y0:y1, x0:x1]
        masks.append(alarm)
        labels.append(int(rng.integers(15)))
    keep = [i for i, m in enumerate(masks) if m.any()]
    masks_np = np.stack([masks[i].T for i in keep]).transpose(0, 2, 1)  # column-major masks, as the truth's
    labels_np = np.array(labels)[keep]
    boxes = np.array([_box(m) for m in masks_np], dtype=np.float32)
    boxes += rng.normal(0, 1.5, boxes.shape).astype(np.float32)  # boxes are scored on their own
    return {"masks": masks_np, "labels": labels_np, "boxes": boxes, "scores": rng.uniform(0.05, 1, len(masks_np))}


def _rles(masks: np.ndarray) -> list[dict]:
    """pycocotools' RLEs of (N, H, W) binary masks, one mask at a time (Fortran-order uint8, as it documents)."""
    return [mask_utils.encode(np.asfortranarray(m.astype(np.uint8))) for m in masks]


def _cocoeval(truths, preds, difficult, iou_type: str, cat_ids=None) -> np.ndarray:
    """COCOeval's stats on the same instances, built the documented COCO way (RLE ground truth, loadRes)."""
    images, gts, dts = [], [], []
    for i, (t, p, d) in enumerate(zip(truths, preds, difficult, strict=True)):
        h, w = t["masks"].shape[1:]
        images.append({"id": i + 1, "height": h, "width": w})
        for rle, box, lab, crowd in zip(t["rles"], t["boxes"], t["labels"], d, strict=True):
            x0, y0, x1, y1 = (float(v) for v in box)
            area = float(mask_utils.area(rle)) if iou_type == "segm" else (x1 - x0) * (y1 - y0)
            gts.append({"id": len(gts) + 1, "image_id": i + 1, "category_id": int(lab) + 1, "iscrowd": int(crowd),
                        "area": area, "bbox": [x0, y0, x1 - x0, y1 - y0], "segmentation": rle})  # fmt: skip
        for rle, box, lab, score in zip(p["rles"], p["boxes"], p["labels"], p["scores"], strict=True):
            ann = {"image_id": i + 1, "category_id": int(lab) + 1, "score": float(score)}
            if iou_type == "segm":
                ann["segmentation"] = rle
            else:
                x0, y0, x1, y1 = (float(v) for v in box)
                ann["bbox"] = [x0, y0, x1 - x0, y1 - y0]
            dts.append(ann)
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = {"images": images, "annotations": gts, "categories": [{"id": k + 1} for k in range(15)]}
        gt.createIndex()
        ev = COCOeval(gt, gt.loadRes(dts), iouType=iou_type)
        if cat_ids is not None:
            ev.params.catIds = cat_ids
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats


def test_mask_and_box_ap_equal_cocoeval_on_real_isaid_masks(isaid_val) -> None:
    from rsfm.data.instance.isaid import ISAID_CLASSES

    rng = np.random.default_rng(0)
    preds = [_predictions(t, rng) for t in isaid_val]
    difficult = [rng.uniform(size=len(t["labels"])) < 0.1 for t in isaid_val]
    assert [len(t["labels"]) for t in isaid_val] == [59, 116]  # every instance of the id PNGs
    metric = InstanceSegmentationMAP(ISAID_CLASSES)
    for t, p, d in zip(isaid_val, preds, difficult, strict=True):
        metric.update(
            [{k: torch.from_numpy(np.asarray(v)) for k, v in p.items()}],
            [{**{k: torch.from_numpy(v) for k, v in t.items()}, "difficult": torch.from_numpy(d)}],
        )
    r = metric.compute()
    truths = [{**t, "rles": _rles(t["masks"])} for t in isaid_val]
    preds = [{**p, "rles": _rles(p["masks"])} for p in preds]
    segm = _cocoeval(truths, preds, difficult, "segm")
    bbox = _cocoeval(truths, preds, difficult, "bbox")
    assert r["mask_mAP50"] == pytest.approx(100 * segm[1], abs=1e-6)
    assert r["mask_mAP50_95"] == pytest.approx(100 * segm[0], abs=1e-6)
    assert r["box_mAP50"] == pytest.approx(100 * bbox[1], abs=1e-6)
    assert r["box_mAP50_95"] == pytest.approx(100 * bbox[0], abs=1e-6)
    # imperfect predictions: neither 0 nor 100, and masks scored apart from boxes
    assert 30 < r["mask_mAP50"] < 95 and r["mask_mAP50_95"] < r["mask_mAP50"]
    assert r["mask_mAP50_95"] != pytest.approx(r["box_mAP50_95"], abs=0.1)
    # per class: COCOeval restricted to that class
    k = ISAID_CLASSES.index("Small_Vehicle")
    alone = _cocoeval(truths, preds, difficult, "segm", cat_ids=[k + 1])
    per_class = r["per_class"]["Small_Vehicle"]
    assert per_class["mask_AP50"] == pytest.approx(100 * alone[1], abs=1e-6)
    assert per_class["mask_AP50_95"] == pytest.approx(100 * alone[0], abs=1e-6)
    n = sum(int(((t["labels"] == k) & ~d).sum()) for t, d in zip(isaid_val, difficult, strict=True))
    assert per_class["num_objects"] == n > 0
    assert r["per_class"]["plane"]["num_objects"] == 0 and r["per_class"]["plane"]["mask_AP50"] is None


def test_detection_cap_is_cocoevals_max_dets() -> None:
    # one image, one class: 3 objects found in decreasing score order; with 2 detections
    # considered per image and class, recall stops at 2/3 (precision 1 up to it)
    squares = [_square(64, 0, 0, 10), _square(64, 20, 20, 10), _square(64, 40, 40, 10)]
    pred, target = _instances(squares, [0, 0, 0], [0.9, 0.8, 0.7]), _instances(squares, [0, 0, 0])
    m = InstanceSegmentationMAP(["ship"], max_detections=2)
    m.update([pred], [target])
    assert m.compute()["mask_mAP50"] == pytest.approx(100 * 67 / 101, abs=1e-6)  # recall points 0, 0.01 … 0.66
    with pytest.raises(ValueError, match="max_detections"):
        InstanceSegmentationMAP(["ship"], max_detections=0)


def test_images_of_several_ranks_are_scored_together() -> None:
    rng = np.random.default_rng(1)
    whole, ranks = InstanceSegmentationMAP(["a", "b"]), [InstanceSegmentationMAP(["a", "b"]) for _ in range(2)]
    for i in range(4):
        truth = [_square(64, *rng.integers(0, 44, 2), int(rng.integers(6, 20))) for _ in range(3)]
        found = [torch.roll(m, int(rng.integers(-3, 4)), 1) for m in truth[:2]] + [_square(64, 0, 0, 9)]
        labels = rng.integers(0, 2, 3).tolist()
        args = [_instances(found, labels, rng.uniform(size=3).tolist())], [_instances(truth, labels)]
        whole.update(*args)
        ranks[i % 2].update(*args)
    # what torch.distributed.all_gather_object hands every rank: the pickled states in rank order
    states = [pickle.loads(pickle.dumps(m.state())) for m in ranks]
    gathered = ranks[0].compute(world_gather=lambda mine: states)
    assert gathered["num_images"] == 4 and ranks[0].compute()["num_images"] == 2
    expected = whole.compute()
    assert 0 < expected["mask_mAP50"] < 100
    for key in ("mask_mAP50", "mask_mAP50_95", "box_mAP50", "box_mAP50_95"):
        assert gathered[key] == pytest.approx(expected[key], abs=1e-9)


def test_masks_are_kept_run_length_encoded() -> None:
    masks = torch.zeros(2, 300, 400, dtype=torch.uint8)
    masks[0, 10:50, 20:90] = 1
    rles = encode_masks(masks)
    assert [r["size"] for r in rles] == [[300, 400], [300, 400]]
    assert mask_utils.area(rles).tolist() == [40 * 70, 0]
    assert len(pickle.dumps(rles)) < 400  # not the 240,000 bytes of the dense masks
    assert encode_masks(torch.zeros(0, 5, 5)) == []
    # the same bytes as pycocotools' own encoder, for masks touching any border, empty or full
    g = np.random.default_rng(0)
    for _ in range(50):
        h, w = (int(v) for v in g.integers(1, 20, 2))
        m = g.uniform(size=(3, h, w)) < g.uniform()
        m[1] = False
        m[2, :, : w // 2] = False
        if g.uniform() < 0.2:
            m[0] = True
        assert encode_masks(m) == _rles(m) == encode_masks(torch.from_numpy(m.astype(np.uint8)))


def test_metric_set_names_match_compute_and_report_per_class() -> None:
    m = InstanceSegmentationMetricSet(["ship", "plane"], max_detections=50)
    a = _square(64, 4, 4, 20)
    batch = {"boxes": [torch.tensor([_box(a)])], "labels": [torch.tensor([1])], "masks": [a[None].to(torch.uint8)],
             "difficult": [torch.tensor([False])]}  # fmt: skip
    m.update([_instances([a], [1], [0.8])], batch)
    scores = m.compute()
    assert list(scores) == list(m.names) == ["mask_mAP50", "mask_mAP50_95", "box_mAP50", "box_mAP50_95"]
    assert scores["mask_mAP50"] == pytest.approx(100.0, abs=1e-6)
    report = m.report()
    assert report["metric"] == "coco" and report["classes"] == ["ship", "plane"] and report["max_detections"] == 50
    assert (
        report["per_class"]["plane"]["mask_AP50"] == pytest.approx(100.0)
        and report["per_class"]["plane"]["num_objects"] == 1
    )
    m.reset()
    assert m.compute()["mask_mAP50"] == 0.0
