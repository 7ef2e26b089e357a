"""DOTA-style rotated AP (rsfm.metrics.dota) against the DOTA devkit, on real annotations.

The detections are the real ground-truth polygons of ``../shared/datasets/dota`` (four scenes)
and of 80 HIT-UAV validation images (``hit_uav``, oriented boxes as polygons) perturbed by a
seeded generator (corner jitter, missed objects, wrong classes, duplicates, false positives).
A jittered quadrilateral whose corners come out in self-intersecting ("bow-tie") order is
written in its convex hull's order, so every detection is a simple polygon, as every rotated
box is: on those rsfm's IoU is the devkit's (on a bow-tie they differ, see
``test_self_intersecting_quadrilateral_is_scored_by_its_convex_hull``). Two references:

* ``devkit_reference``: the per-detection loop of the DOTA devkit's ``dota_evaluation_task1.py``
  (horizontal-box pre-filter with its "+1", polygon IoU, a match needs ``IoU > 0.5``, difficult
  matches neither true nor false positives, ``np.arange`` 11 recall points), written here from
  the algorithm with shapely for the polygon IoU;
* ``DEVKIT_AP``: the figures printed by the real DOTA devkit (CAPTAIN-WHU/DOTA_devkit,
  ``dota_evaluation_task1.voc_eval`` with its own C++ ``polyiou``, compiled, and ``np.bool`` read
  as ``bool``) on ``make_detections(seed=0)`` written as ``Task1_<class>.txt`` files (corners
  with 6 decimals) against the same annotations written as labelTxt files.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from rsfm.data.detection.dota import DOTA_V1_CLASSES
from rsfm.metrics.dota import DOTAMeanAP, polygon_iou

DATA = (Path(__file__).resolve().parents[2] / ".." / "shared" / "datasets" / "dota").resolve()
CLASSES = DOTA_V1_CLASSES

# AP (fractions) printed by the real DOTA devkit's voc_eval, C++ polyiou included, on
# make_detections(seed=0) (module docstring); classes without positives or detections left out
# (the devkit cannot score them)
DEVKIT_AP = {
    "dota": {
        "voc07": {"small-vehicle": 0.5382021961625085, "large-vehicle": 0.33015009612280183},
        "voc12": {"small-vehicle": 0.5734456321304684, "large-vehicle": 0.2835508482393443},
    },
    "hit_uav": {
        "voc07": {
            "Person": 0.4128311529705434,
            "Car": 0.35005171256780293,
            "Bicycle": 0.38998200802687816,
            "OtherVehicle": 0.026974551002010957,
            "DontCare": 0.0,
        },
        "voc12": {
            "Person": 0.3904281782761677,
            "Car": 0.34097468563037236,
            "Bicycle": 0.38384563700648455,
            "OtherVehicle": 0.02618866005593694,
            "DontCare": 0.0,
        },
    },
}


HIT_UAV = DATA.parent / "hit_uav"
HIT_UAV_CLASSES = ("Person", "Car", "Bicycle", "OtherVehicle", "DontCare")


def read_labels(path: Path) -> list[tuple[np.ndarray, str, int]]:
    """Every object line of a labelTxt file as (8 corners float64, class, difficulty), degenerate ones too."""
    out = []
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 9 and ":" not in line:
            out.append((np.asarray(parts[:8], dtype=np.float64), parts[8], int(parts[9]) if len(parts) > 9 else 0))
    return out


def _rectangle(cx: float, cy: float, w: float, h: float, t: float) -> np.ndarray:
    corners = np.array([[-w, -h], [w, -h], [w, h], [-w, h]]) / 2
    rot = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    return (corners @ rot.T + [cx, cy]).reshape(-1)


def read_hit_uav(path: Path) -> list[tuple[np.ndarray, str, int]]:
    """The robndbox objects of a HIT-UAV xml as (8 corners, class, difficult)."""
    import xml.etree.ElementTree as ET

    out = []
    for obj in ET.parse(path).getroot().iter("object"):
        r = obj.find("robndbox")
        v = [float(r.findtext(k)) for k in ("cx", "cy", "w", "h", "angle")]
        out.append((_rectangle(*v), obj.findtext("name").strip(), int(obj.findtext("difficult") or 0)))
    return out


def ground_truth(name: str) -> tuple[tuple[str, ...], dict[str, list[tuple[np.ndarray, str, int]]]]:
    """Classes and real annotations per image: the four DOTA scenes, or 80 HIT-UAV val images."""
    if name == "dota":
        return CLASSES, {p.stem: read_labels(p) for p in sorted((DATA / "labelTxt").glob("*.txt"))}
    ids = (HIT_UAV / "ImageSets" / "Main" / "val.txt").read_text().split()[:80]
    return HIT_UAV_CLASSES, {i: read_hit_uav(HIT_UAV / "Annotations" / f"{i}.xml") for i in ids}


def _simple(xy: np.ndarray) -> np.ndarray:
    """8 corners of a ``(4, 2)`` quadrilateral, a self-intersecting one in its convex hull's order.

    Four corners in bow-tie order are in convex position, so the hull keeps all four.
    """
    from shapely.geometry import Polygon

    poly = Polygon(xy)
    if poly.is_valid:
        return xy.reshape(-1)
    hull = np.asarray(poly.convex_hull.exterior.coords)[:-1]
    assert hull.shape == (4, 2), hull
    return hull.reshape(-1)


def make_detections(gts, classes, seed: int = 0) -> dict[str, list[tuple[str, float, np.ndarray]]]:
    """Perturbed detections per class, [(image id, score, 8 corners)], from real annotations ``gts``."""
    rng = np.random.default_rng(seed)
    dets: dict[str, list[tuple[str, float, np.ndarray]]] = {c: [] for c in classes}
    for image_id, objects in gts.items():
        for poly, name, _ in objects:
            xy = poly.reshape(4, 2)
            size = max(float(np.ptp(xy[:, 0])), float(np.ptp(xy[:, 1])), 2.0)
            for copy in range(2):
                if rng.random() > (0.85 if copy == 0 else 0.15):  # a miss, or no duplicate
                    continue
                jitter = rng.normal(0.0, 0.12 * size, size=(4, 2))
                cls = name if rng.random() > 0.1 else classes[int(rng.integers(len(classes)))]
                dets[cls].append((image_id, float(rng.random()), _simple(xy + jitter)))
        corners = np.array([p for p, _, _ in objects]).reshape(-1, 2)
        lo, hi = (corners.min(0), corners.max(0)) if len(corners) else (np.zeros(2), np.full(2, 512.0))
        for _ in range(10):  # false positives anywhere in the annotated extent
            w, h = rng.uniform(4, 60, size=2)
            box = _rectangle(*rng.uniform(lo, hi), w, h, rng.uniform(-np.pi / 2, np.pi / 2))
            dets[classes[int(rng.integers(len(classes)))]].append((image_id, float(rng.random()), box))
    return dets


def _devkit_ap(rec: np.ndarray, prec: np.ndarray, use_07_metric: bool) -> float:
    if use_07_metric:
        ap = 0.0
        for t in np.arange(0.0, 1.1, 0.1):  # the devkit's points, 0.30000000000000004 and all
            ap += (np.max(prec[rec >= t]) if np.sum(rec >= t) else 0.0) / 11.0
        return float(ap)
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    for i in range(mpre.size - 1, 0, -1):
        mpre[i - 1] = max(mpre[i - 1], mpre[i])
    i = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def devkit_reference(dets, gts, classname: str, use_07_metric: bool, ovthresh: float = 0.5):
    """The devkit's per-class loop; returns (AP, recall, precision) or None without positives."""
    from shapely.geometry import Polygon

    recs = {}
    npos = 0
    for image_id, objects in gts.items():
        r = [(p, d) for p, n, d in objects if n == classname]
        bbox = np.array([p for p, _ in r]).reshape(-1, 8)
        difficult = np.array([d for _, d in r], dtype=bool)
        npos += int((~difficult).sum())
        recs[image_id] = {"bbox": bbox, "difficult": difficult, "det": [False] * len(r)}
    lines = dets[classname]
    if not lines:
        return None if npos == 0 else (0.0, None, None)
    conf = np.array([s for _, s, _ in lines])
    bb_all = np.array([p for _, _, p in lines])
    order = np.argsort(-conf)
    tp, fp = np.zeros(len(order)), np.zeros(len(order))
    for d, k in enumerate(order):
        r = recs[lines[k][0]]
        bb = bb_all[k]
        ovmax, jmax = -np.inf, -1
        gt = r["bbox"]
        if gt.size:
            ixmin = np.maximum(gt[:, 0::2].min(1), bb[0::2].min())
            iymin = np.maximum(gt[:, 1::2].min(1), bb[1::2].min())
            ixmax = np.minimum(gt[:, 0::2].max(1), bb[0::2].max())
            iymax = np.minimum(gt[:, 1::2].max(1), bb[1::2].max())
            inters = np.maximum(ixmax - ixmin + 1.0, 0.0) * np.maximum(iymax - iymin + 1.0, 0.0)
            keep = np.where(inters > 0)[0]
            if len(keep):
                pd = Polygon(bb.reshape(4, 2))
                pd = pd if pd.is_valid else pd.convex_hull
                ious = []
                for j in keep:
                    pg = Polygon(gt[j].reshape(4, 2))
                    pg = pg if pg.is_valid else pg.convex_hull
                    inter = pd.intersection(pg).area
                    union = pd.area + pg.area - inter
                    ious.append(inter / union if union > 0 else 0.0)
                ovmax, jmax = float(np.max(ious)), int(keep[int(np.argmax(ious))])
        if ovmax > ovthresh:
            if not r["difficult"][jmax]:
                if not r["det"][jmax]:
                    tp[d], r["det"][jmax] = 1.0, True
                else:
                    fp[d] = 1.0
        else:
            fp[d] = 1.0
    if npos == 0:
        return None
    fp, tp = np.cumsum(fp), np.cumsum(tp)
    rec = tp / float(npos)
    prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    return _devkit_ap(rec, prec, use_07_metric), rec, prec


def _ours(dets, gts, classes, use_07_metric: bool) -> dict:
    metric = DOTAMeanAP(list(classes), use_07_metric=use_07_metric)
    index = {c: i for i, c in enumerate(classes)}
    for image_id, objects in gts.items():
        mine = [(c, s, p) for c in classes for i, s, p in dets[c] if i == image_id]
        metric.update(
            [
                {
                    "polygons": torch.tensor(np.array([p for _, _, p in mine]).reshape(-1, 8)),
                    "scores": torch.tensor([s for _, s, _ in mine], dtype=torch.float64),
                    "labels": torch.tensor([index[c] for c, _, _ in mine], dtype=torch.int64),
                }
            ],
            [
                {
                    "polygons": np.array([p for p, _, _ in objects]).reshape(-1, 8),
                    "labels": np.array([index[n] for _, n, _ in objects], dtype=np.int64),
                    "difficult": np.array([d >= 1 for _, _, d in objects], dtype=bool),
                }
            ],
        )
    return metric.compute()


def _hits_rounded_point(rec) -> bool:
    """Whether a recall equals 0.3, 0.6 or 0.7 exactly, where the devkit's np.arange points differ from i/10."""
    return rec is not None and any(np.isclose(rec, v, rtol=0, atol=1e-12).any() for v in (0.3, 0.6, 0.7))


@pytest.mark.parametrize("use_07_metric", [True, False], ids=["voc07", "voc12"])
@pytest.mark.parametrize("dataset", ["dota", "hit_uav"])
def test_dota_ap_equals_the_devkit_algorithm_on_real_annotations(dataset: str, use_07_metric: bool) -> None:
    classes, gts = ground_truth(dataset)
    dets = make_detections(gts, classes, seed=0)
    ours = _ours(dets, gts, classes, use_07_metric)
    compared = 0
    for c in classes:
        ref = devkit_reference(dets, gts, c, use_07_metric)
        got = ours["per_class"][c]["AP50"]
        if ref is None:
            assert got is None, c
            continue
        ap, rec, _ = ref
        if use_07_metric and _hits_rounded_point(rec):
            assert got / 100 >= ap - 1e-12, c  # the devkit's np.arange points can only lose points
            continue
        assert got / 100 == pytest.approx(ap, abs=1e-6), c
        compared += 1
    assert compared >= 2  # real classes scored: DOTA's two vehicle classes, HIT-UAV's persons, cars...
    aps = [v["AP50"] for v in ours["per_class"].values() if v["AP50"] is not None]
    assert ours["mAP50"] == pytest.approx(float(np.mean(aps)))
    assert 5.0 < ours["mAP50"] < 95.0  # neither trivial nor empty: the perturbation matters


@pytest.mark.parametrize("dataset", ["dota", "hit_uav"])
def test_dota_ap_matches_the_devkit_printed_figures(dataset: str) -> None:
    classes, gts = ground_truth(dataset)
    dets = make_detections(gts, classes, seed=0)
    from shapely.geometry import Polygon

    # the devkit's figures hold for exactly these inputs: simple quadrilaterals only
    assert all(Polygon(p.reshape(4, 2)).is_valid for c in classes for _, _, p in dets[c])
    for key, use_07 in (("voc07", True), ("voc12", False)):
        ours = _ours(dets, gts, classes, use_07)
        expected = DEVKIT_AP[dataset][key]
        assert expected
        for c, ap in expected.items():
            assert ours["per_class"][c]["AP50"] / 100 == pytest.approx(ap, abs=1e-6), (key, c)


def test_difficult_matches_are_ignored_and_obbs_equal_their_polygons() -> None:
    # one real large-vehicle of P0004 with difficulty 1 and one with 0
    objects = [o for o in read_labels(DATA / "labelTxt" / "P0004.txt") if o[1] == "large-vehicle"][:3]
    polys = np.array([p for p, _, _ in objects])
    difficult = np.array([True, False, False])
    target = {"polygons": polys, "labels": np.zeros(3, np.int64), "difficult": difficult}
    metric = DOTAMeanAP(["large-vehicle"], use_07_metric=False)
    # exact hits on the difficult box (ignored) and on box 1 (TP); box 2 missed
    metric.update([{"polygons": polys[:2], "scores": np.array([0.9, 0.8]), "labels": np.zeros(2, np.int64)}], [target])
    r = metric.compute()
    assert r["per_class"]["large-vehicle"]["num_objects"] == 2
    assert r["mAP50"] == pytest.approx(50.0)  # precision 1 up to recall 1/2

    # a rectangle given as obbs scores as its polygon
    from rsfm.ops.obb import obb2poly, poly2obb

    obbs = poly2obb(torch.tensor(polys, dtype=torch.float64))
    rect = obb2poly(obbs).numpy()
    a = DOTAMeanAP(["large-vehicle"])
    a.update(
        [{"obbs": obbs, "scores": torch.tensor([0.9, 0.8, 0.7]), "labels": torch.zeros(3, dtype=torch.int64)}],
        [{"polygons": rect, "labels": np.zeros(3, np.int64)}],
    )
    assert a.compute()["mAP50"] == pytest.approx(100.0)


def test_self_intersecting_quadrilateral_is_scored_by_its_convex_hull() -> None:
    """rsfm's documented rule, where it departs from the devkit: the devkit's polyiou sums signed
    areas, so a bow-tie (the square's corners in crossed order) has IoU 0 with the square there;
    rsfm scores it as its convex hull, the square itself. A rotated box is never a bow-tie."""
    square = [0, 0, 10, 0, 10, 10, 0, 10]
    bowtie = [0, 0, 10, 10, 10, 0, 0, 10]
    assert polygon_iou([bowtie], [square])[0, 0] == pytest.approx(1.0, abs=1e-12)
    assert polygon_iou([square], [bowtie])[0, 0] == pytest.approx(1.0, abs=1e-12)
    half = [0, 0, 5, 10, 5, 0, 0, 10]  # bow-tie over the left half: its hull is the 5 × 10 rectangle
    assert polygon_iou([half], [square])[0, 0] == pytest.approx(0.5, abs=1e-12)
    m = DOTAMeanAP(["a"])
    m.update(
        [{"polygons": [bowtie], "scores": [0.9], "labels": [0]}],
        [{"polygons": [square], "labels": [0]}],
    )
    assert m.compute()["per_class"]["a"]["AP50"] == pytest.approx(100.0)  # a hit; the devkit: a false positive


def test_polygon_iou_against_hand_computed_cases() -> None:
    square = [0, 0, 2, 0, 2, 2, 0, 2]
    shifted = [1, 0, 3, 0, 3, 2, 1, 2]  # overlap 2 of union 6
    diamond = [1, 0, 2, 1, 1, 2, 0, 1]  # inside the square, area 2
    far = [10, 10, 11, 10, 11, 11, 10, 11]
    iou = polygon_iou([square], [shifted, diamond, far, square])
    assert iou[0].tolist() == pytest.approx([1 / 3, 0.5, 0.0, 1.0], abs=1e-12)
    bowtie = [0, 0, 2, 2, 2, 0, 0, 2]  # self-intersecting: scored as its hull, the square
    assert polygon_iou([bowtie], [square])[0, 0] == pytest.approx(1.0)
    assert polygon_iou(np.zeros((0, 8)), [square]).shape == (0, 1)
    with pytest.raises(ValueError, match=r"polys1 must have shape \(N, 8\)"):
        polygon_iou([[0, 0, 1, 1]], [square])
    with pytest.raises(ValueError, match=r"lacks \['polygons'\] or \['obbs'\]"):
        DOTAMeanAP(["a"]).update([{"scores": [1.0], "labels": [0]}], [{"labels": []}])


@pytest.mark.parametrize("field", ["polygons", "obbs"])
@pytest.mark.parametrize("side", ["preds", "targets"])
def test_non_finite_coordinates_raise_naming_image_and_field(field: str, side: str) -> None:
    """NaN or infinite corners were accepted silently (scored as an empty polygon)."""
    good = {"polygons": [[0.0, 0, 10, 0, 10, 10, 0, 10]], "obbs": [[5.0, 5.0, 10.0, 10.0, 0.0]]}[field]
    broken = [[*good[0][:-1], float("nan") if side == "preds" else float("inf")]]
    pred = {field: broken if side == "preds" else good, "scores": [0.9], "labels": [0]}
    target = {field: broken if side == "targets" else good, "labels": [0]}
    with pytest.raises(ValueError, match=rf"{side}\[0\]\['{field}'\] must hold finite coordinates; row 0"):
        DOTAMeanAP(["a"]).update([pred], [target])
