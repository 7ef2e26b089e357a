"""Oriented R-CNN on real HIT-UAV and DOTA boxes: coders, anchors, the two stages, tiled prediction, metrics.

The decisive test is :func:`test_overfits_one_real_crop`: a tiny ViT with the head learns one
real HIT-UAV crop (eight rotated cars) in a few dozen steps and its polygons cover the cars;
a wrong sign in a coder, in the RoIAlign angle or in the tile offsets breaks it.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from rsfm.data.base import DataInfo
from rsfm.models.heads.rotated_detection import OrientedRCNNHead, RotatedDetectionMetricSet
from rsfm.models.inference import tile_windows
from rsfm.models.rotated.anchors import base_anchors, grid_anchors
from rsfm.models.rotated.coders import DeltaXYWHTCoder, MidpointOffsetCoder
from rsfm.models.rotated.postprocess import merge_rotated_detections
from rsfm.models.rotated.roi_head import RotatedRoIHead, roi_levels
from rsfm.models.rotated.rpn import OrientedRPN
from rsfm.models.rotated.sampling import IGNORED, NEGATIVE, assign_max_iou, sample_random
from rsfm.models.task_model import TaskModel
from rsfm.ops.obb import norm_angle, obb2hbb, obb2poly, poly2obb, regularize_obb
from rsfm.ops.rotated_iou import box_iou_rotated
from rsfm.utils.errors import ConfigError
from rsfm.utils.registry import HEADS

HIT_CLASSES = ["Person", "Car", "Bicycle", "OtherVehicle", "DontCare"]
#: 29 cars parked along a curve, most of them rotated (640 × 512 thermal image)
PARKING = "1_60_30_0_04086"
#: (y0, x0, side) of the training crop: eight rotated cars
CROP = (0, 320, 192)
STRIDES = [4, 8, 16, 32, 64]


# --------------------------------------------------------------------------- real data


def read_hit_uav(root: Path, stem: str, image: bool = True) -> dict[str, Any]:
    """One HIT-UAV image: ``image`` (3, H, W) float32 in [0, 1], ``obbs`` (N, 5) le90, ``labels``."""
    xml = ET.parse(root / "hit_uav" / "Annotations" / f"{stem}.xml").getroot()
    rows, labels = [], []
    for obj in xml.iter("object"):
        box = obj.find("robndbox")
        rows.append([float(box.findtext(k)) for k in ("cx", "cy", "w", "h", "angle")])
        labels.append(HIT_CLASSES.index(obj.findtext("name")))
    out: dict[str, Any] = {
        "obbs": regularize_obb(torch.tensor(rows, dtype=torch.float32).reshape(-1, 5), "le90"),
        "labels": torch.tensor(labels, dtype=torch.int64),
        "size": (int(xml.findtext("size/height")), int(xml.findtext("size/width"))),
    }
    if image:
        from PIL import Image

        path = root / "hit_uav" / "JPEGImages" / f"{stem}.jpg"
        array = np.array(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0
        out["image"] = torch.from_numpy(array).permute(2, 0, 1).contiguous()
    return out


def read_dota(root: Path, stem: str) -> dict[str, Any]:
    """One DOTA label file: ``obbs`` (N, 5) le90 of the polygons at least 2 px wide, ``classes``, image ``size``."""
    from PIL import Image

    rows = [line.split() for line in (root / "dota" / "labelTxt" / f"{stem}.txt").read_text().splitlines()]
    rows = [r for r in rows if len(r) == 10]
    obbs = poly2obb(torch.tensor([[float(v) for v in r[:8]] for r in rows]), "le90")
    keep = (obbs[:, 2] >= 2) & (obbs[:, 3] >= 2)  # as the DOTA loaders drop degenerate polygons
    names = [r[8] for r, k in zip(rows, keep.tolist(), strict=True) if k]
    width, height = Image.open(root / "dota" / "images" / f"{stem}.png").size
    return {"obbs": obbs[keep], "names": names, "size": (height, width)}


DOTA_STEMS = ["P0003", "P0004", "P0005", "P1478__1__853___962"]


@pytest.fixture(scope="module")
def real_boxes(datasets: Path) -> torch.Tensor:
    """le90 boxes of 60 HIT-UAV images and the 4 DOTA images, float64."""
    stems = sorted(p.stem for p in (datasets / "hit_uav" / "Annotations").glob("*.xml"))[::10]
    hit = [read_hit_uav(datasets, s, image=False)["obbs"] for s in stems]
    dota = [read_dota(datasets, s)["obbs"] for s in DOTA_STEMS]
    return torch.cat(hit + dota).double()


def edge_boxes() -> torch.Tensor:
    """Boxes at the angle convention's edges: ±π/2, 0, tiny angles, squares (float64)."""
    half = math.pi / 2
    rows = [
        [100, 100, 40, 20, 0.0],
        [100, 100, 40, 20, -half],
        [100, 100, 40, 20, -half + 1e-7],
        [100, 100, 40, 20, half - 1e-7],
        [100, 100, 40, 20, 1e-7],
        [100, 100, 40, 20, -1e-7],
        [50, 60, 30, 30, 0.3],
        [50, 60, 30, 30, -half],
        [50, 60, 30, 30, 0.0],
        [7, 9, 12.5, 4.0, 1.2],
    ]
    return regularize_obb(torch.tensor(rows, dtype=torch.float64), "le90")


def assert_same_boxes(decoded: torch.Tensor, truth: torch.Tensor, atol: float, rtol: float) -> None:
    """Centres and sides equal, angles equal modulo π (modulo π/2 for squares)."""
    torch.testing.assert_close(decoded[:, :4], truth[:, :4], atol=atol, rtol=rtol)
    turn = norm_angle(decoded[:, 4] - truth[:, 4], "le90")
    square = (truth[:, 2] - truth[:, 3]).abs() <= 1e-6 * truth[:, 2]
    turn = torch.where(square, torch.remainder(turn + math.pi / 4, math.pi / 2) - math.pi / 4, turn)
    assert float(turn.abs().max()) <= atol + rtol, float(turn.abs().max())


def jittered_anchors(obbs: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Horizontal boxes near the enclosing boxes of ``obbs`` (shifted, rescaled), as RPN anchors would be."""
    g = torch.Generator().manual_seed(seed)
    hbb = obb2hbb(obbs)
    centre = (hbb[:, :2] + hbb[:, 2:]) / 2
    size = (hbb[:, 2:] - hbb[:, :2]) * torch.exp(torch.randn(len(obbs), 2, generator=g, dtype=obbs.dtype) * 0.3)
    centre = centre + size * torch.randn(len(obbs), 2, generator=g, dtype=obbs.dtype) * 0.2
    return torch.cat([centre - size / 2, centre + size / 2], dim=1)


# --------------------------------------------------------------------------- coders


def test_midpoint_offset_coder_recovers_real_boxes(real_boxes: torch.Tensor) -> None:
    boxes = torch.cat([real_boxes, edge_boxes()])
    anchors = jittered_anchors(boxes)
    coder = MidpointOffsetCoder()
    deltas = coder.encode(anchors, boxes)
    assert deltas.shape == (len(boxes), 6) and deltas.dtype == torch.float64
    assert float(deltas[:, 4:].abs().max()) <= 0.5 / 0.5 + 1e-9  # |δα|, |δβ| <= 1/2, over std 0.5
    # a box tilted so little that two of its vertices tie for the top or the right one (the ends
    # of a side; the short side's come closest, h·|sin θ| or h·|cos θ| apart) is encoded from the
    # tie-break's vertex: recovered to TIE_PX
    t = boxes[:, 4]
    tied = torch.minimum(t.sin().abs(), t.cos().abs()) * boxes[:, 3] < MidpointOffsetCoder.TIE_PX
    assert 0 < int(tied.sum()) < len(boxes)
    decoded = coder.decode(anchors, deltas)
    assert_same_boxes(decoded[~tied], boxes[~tied], atol=1e-8, rtol=1e-8)
    assert_same_boxes(decoded[tied], boxes[tied], atol=MidpointOffsetCoder.TIE_PX, rtol=0)
    assert float(box_iou_rotated(decoded[tied].float(), boxes[tied].float(), aligned=True).min()) > 0.99
    # float32 (the training dtype): to 1e-4
    d32 = coder.encode(anchors.float(), boxes.float())
    assert d32.dtype == torch.float32
    decoded = coder.decode(anchors.float(), d32).double()
    assert_same_boxes(decoded[~tied], boxes[~tied], atol=1e-4, rtol=1e-4)
    assert_same_boxes(decoded[tied], boxes[tied], atol=MidpointOffsetCoder.TIE_PX, rtol=0)
    # bf16 deltas (autocast) decode in float32
    assert coder.decode(anchors.float(), d32.bfloat16()).dtype == torch.float32


def test_midpoint_offset_representation_of_simple_boxes() -> None:
    coder = MidpointOffsetCoder(stds=(1.0,) * 6)
    anchor = torch.tensor([[0.0, 0.0, 100.0, 60.0]])
    box = torch.tensor([[50.0, 30.0, 100.0, 60.0, 0.0]])  # the anchor itself
    torch.testing.assert_close(coder.encode(anchor, box), torch.tensor([[0.0, 0.0, 0.0, 0.0, 0.5, 0.5]]))
    # offsets 0: the vertices are the side midpoints (a rhombus), made a rectangle by lengthening
    # the shorter diagonal: a square turned by 45° in the 100 x 100 anchor
    square = coder.decode(torch.tensor([[0.0, 0.0, 100.0, 100.0]]), torch.zeros(1, 6))
    torch.testing.assert_close(square[0, :4], torch.tensor([50.0, 50.0, 50 * math.sqrt(2), 50 * math.sqrt(2)]))
    assert abs(abs(float(square[0, 4])) - math.pi / 4) < 1e-6
    # a box turned clockwise on screen (θ > 0): its top vertex lies left of the centre
    turned = torch.tensor([[50.0, 50.0, 80.0, 20.0, 0.5]])
    top = obb2poly(turned).reshape(4, 2)
    top = top[top[:, 1].argmin()]
    hbb = obb2hbb(turned)[0]
    delta = coder.encode(hbb[None], turned)[0]
    assert float(delta[4]) < 0 and abs(float(delta[4]) * float(hbb[2] - hbb[0]) - float(top[0] - 50)) < 1e-4


def test_axis_aligned_boxes_have_one_encoding_whichever_side_is_longer(datasets: Path) -> None:
    """Upright and lying boxes (θ = -π/2 and 0 in le90) and boxes within TIE_PX of them: δα = δβ = 0.5.

    Half of HIT-UAV's boxes are axis-aligned, split between the two angles. With a tie rule that
    followed θ (-0.5 at -π/2), a car standing and a car lying, and near-square people, got
    opposite targets, whose mean (0, 0) decodes to a square turned by 45°. The authors'
    coder breaks the tie by position (the rightmost top vertex, the lowest right vertex), as
    this one does now.
    """
    half = math.pi / 2
    boxes = torch.tensor(
        [
            [50.0, 50.0, 67.0, 38.0, -half],  # an upright car, as HIT-UAV annotates them
            [50.0, 50.0, 67.0, 38.0, 0.0],  # the same car lying
            [50.0, 50.0, 14.0, 13.0, -half],  # a person, near-square
            [50.0, 50.0, 14.0, 13.0, 0.0],
            [50.0, 50.0, 67.0, 38.0, -half + 1e-3],  # vertices 0.038 px apart: a tie
            [50.0, 50.0, 67.0, 38.0, half - 1e-3],
            [50.0, 50.0, 67.0, 38.0, 1e-3],  # 0.067 px
            [50.0, 50.0, 67.0, 38.0, -1e-3],
        ]
    )
    coder = MidpointOffsetCoder(stds=(1.0,) * 6)
    deltas = coder.encode(obb2hbb(boxes), boxes)
    torch.testing.assert_close(deltas[:4, 4:], torch.full((4, 2), 0.5), atol=1e-6, rtol=0)
    # the tied vertex lies within TIE_PX of the corner: δ within TIE_PX / 38 px of 0.5
    torch.testing.assert_close(deltas[4:, 4:], torch.full((4, 2), 0.5), atol=0.1 / 38, rtol=0)
    # and each decodes to its own box (the rectangle is the enclosing box)
    decoded = coder.decode(obb2hbb(boxes), deltas)
    assert float(box_iou_rotated(decoded, boxes, aligned=True).min()) > 0.99
    # past the tolerance the top vertex is a single corner again: tilted one way or the other, the
    # offsets have opposite signs (the representation's discontinuity, as in the paper)
    tilted = torch.tensor([[50.0, 50.0, 67.0, 38.0, 0.05], [50.0, 50.0, 67.0, 38.0, -0.05]])
    d = coder.encode(obb2hbb(tilted), tilted)
    assert float(d[0, 4]) < -0.3 and float(d[1, 4]) > 0.3
    # the real set: every axis-aligned HIT-UAV box gets (0.5, 0.5)
    stems = sorted(p.stem for p in (datasets / "hit_uav" / "Annotations").glob("*.xml"))[::10]
    real = torch.cat([read_hit_uav(datasets, s, image=False)["obbs"] for s in stems])
    t = real[:, 4]
    axis = (t.abs() < 1e-6) | ((t + half).abs() < 1e-6)
    assert int(((t + half).abs() < 1e-6).sum()) > 50 and int((t.abs() < 1e-6).sum()) > 50
    offsets = coder.encode(obb2hbb(real[axis]), real[axis])[:, 4:]
    torch.testing.assert_close(offsets, torch.full_like(offsets, 0.5), atol=1e-5, rtol=0)


def test_delta_xywht_coder_recovers_real_boxes(real_boxes: torch.Tensor) -> None:
    boxes = torch.cat([real_boxes, edge_boxes()])
    g = torch.Generator().manual_seed(1)
    noise = torch.randn(len(boxes), 5, generator=g, dtype=torch.float64)
    proposals = boxes.clone()
    proposals[:, :2] += noise[:, :2] * boxes[:, 2:4] * 0.2
    proposals[:, 2:4] *= torch.exp(noise[:, 2:4] * 0.2)
    proposals[:, 4] += noise[:, 4] * 0.6  # up to ~2 rad: across the ±π/2 wrap
    proposals = regularize_obb(proposals, "le90")
    coder = DeltaXYWHTCoder()
    deltas = coder.encode(proposals, boxes)
    assert deltas.shape == (len(boxes), 5)
    assert float((deltas[:, 4] * 0.1).abs().max()) <= math.pi / 4 + 1e-9  # the side naming that turns least
    assert_same_boxes(coder.decode(proposals, deltas), boxes, atol=1e-8, rtol=1e-8)
    d32 = coder.encode(proposals.float(), boxes.float())
    assert_same_boxes(coder.decode(proposals.float(), d32).double(), boxes, atol=1e-4, rtol=1e-4)


def test_delta_xywht_targets_do_not_depend_on_how_a_box_is_written(real_boxes: torch.Tensor) -> None:
    boxes = real_boxes[:200]
    coder = DeltaXYWHTCoder()
    torch.testing.assert_close(coder.encode(boxes, boxes), torch.zeros(len(boxes), 5, dtype=torch.float64))
    swapped = torch.stack(
        [boxes[:, 0], boxes[:, 1], boxes[:, 3], boxes[:, 2], boxes[:, 4] + math.pi / 2], dim=1
    )  # the same rectangles, sides named the other way
    torch.testing.assert_close(coder.encode(boxes, swapped), torch.zeros(len(boxes), 5, dtype=torch.float64))
    # the centre offset is measured along the proposal's own sides
    box = torch.tensor([[10.0, 20.0, 40.0, 10.0, math.pi / 2 - 0.5]], dtype=torch.float64)
    along = box.clone()
    along[0, 0] += 4 * math.cos(float(box[0, 4]))
    along[0, 1] += 4 * math.sin(float(box[0, 4]))
    torch.testing.assert_close(coder.encode(box, along)[0, :2], torch.tensor([0.1 / 0.1, 0.0], dtype=torch.float64))


# --------------------------------------------------------------------------- anchors, assignment


def test_anchors_follow_the_strides() -> None:
    base = base_anchors(4, [8.0], [0.5, 1.0, 2.0])
    wh = base[:, 2:] - base[:, :2]
    torch.testing.assert_close(wh.prod(1), torch.full((3,), 32.0**2))  # area (8 * stride)^2
    torch.testing.assert_close(wh[:, 1] / wh[:, 0], torch.tensor([0.5, 1.0, 2.0]))  # height / width
    (level,) = grid_anchors([(2, 3)], [16], [8.0], [1.0])
    centres = (level[:, :2] + level[:, 2:]) / 2
    assert centres.tolist() == [[x, y] for y in (0.0, 16.0) for x in (0.0, 16.0, 32.0)]  # row-major


def _positives(rpn: OrientedRPN, obbs: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Per object, whether the RPN gives it at least one positive anchor."""
    h, w = size
    maps = [torch.zeros(1, 1, -(-h // s), -(-w // s)) for s in STRIDES]
    _, assigned = rpn.assign(torch.cat(rpn.anchors(maps)), obbs, size)
    hit = torch.zeros(len(obbs), dtype=torch.bool)
    hit[assigned[assigned >= 0]] = True
    return hit


def test_rpn_assigns_every_real_object(datasets: Path) -> None:
    """Every object gets a positive anchor: DOTA's vehicles with mmrotate's 8 × stride anchors, HIT-UAV's with 2 and 4.

    31 HIT-UAV images (over all 605, 3 of 5,056 objects get none: their best anchor is claimed
    by a neighbour or reaches out of the image) and two DOTA scenes (P1478's 3 px wide
    vehicles need the smaller anchors too). mmrotate's 8 × stride anchors miss a third of
    HIT-UAV's 8 × 16 px people and bicycles.
    """
    small = OrientedRPN(16, STRIDES, scales=[2.0, 4.0])
    default = OrientedRPN(16, STRIDES)
    for stem in ("P0003", "P0005"):
        dota = read_dota(datasets, stem)
        assert bool(_positives(default, dota["obbs"], dota["size"]).all()), stem
    stems = sorted(p.stem for p in (datasets / "hit_uav" / "Annotations").glob("*.xml"))[::20]
    hits, misses_default, total = 0, 0, 0
    for stem in stems:
        hit = read_hit_uav(datasets, stem, image=False)
        if len(hit["obbs"]):
            hits += int(_positives(small, hit["obbs"], hit["size"]).sum())
            misses_default += int((~_positives(default, hit["obbs"], hit["size"])).sum())
            total += len(hit["obbs"])
    assert total > 200 and hits == total
    assert misses_default > 0.2 * total


@pytest.mark.parametrize("rotated_nms", [False, True])
def test_rpn_proposals_are_capped_sorted_le90(rotated_nms: bool) -> None:
    torch.manual_seed(0)
    rpn = OrientedRPN(
        8, STRIDES[:3], nms_pre=100, max_proposals_train=50, max_proposals_test=30, rotated_nms=rotated_nms
    )
    maps = [torch.randn(2, 8, 64 // s, 64 // s) for s in STRIDES[:3]]
    logits, deltas = rpn(maps)
    assert logits[0].shape == (2, 16 * 16 * 3) and deltas[0].shape == (2, 16 * 16 * 3, 6)
    anchors = rpn.anchors(maps)
    for training, cap in ((True, 50), (False, 30)):
        for obbs, scores in rpn.proposals(logits, deltas, anchors, training=training):
            assert 0 < len(obbs) <= cap and obbs.shape[1] == 5
            assert (scores[:-1] >= scores[1:]).all()
            assert (obbs[:, 2] >= obbs[:, 3]).all() and (obbs[:, 4] >= -math.pi / 2).all()
            assert (obbs[:, 4] < math.pi / 2).all()


def test_max_iou_assignment_and_sampling() -> None:
    ious = torch.tensor(
        [
            [0.80, 0.50, 0.20, 0.00, 0.35],
            [0.10, 0.60, 0.25, 0.00, 0.10],
        ]
    )
    out = assign_max_iou(ious, pos_iou=0.7, neg_iou=0.3, min_pos_iou=0.3, low_quality=True)
    # box 0 positive; box 1 the second object's best (low-quality match); 2, 3 negative; 4 ignored
    assert out.tolist() == [0, 1, NEGATIVE, NEGATIVE, IGNORED]
    strict = assign_max_iou(ious, pos_iou=0.5, neg_iou=0.5, min_pos_iou=0.5, low_quality=False)
    assert strict.tolist() == [0, 1, NEGATIVE, NEGATIVE, NEGATIVE]
    assert (assign_max_iou(torch.zeros(0, 4), 0.7, 0.3, 0.3, True) == NEGATIVE).all()  # no object
    torch.manual_seed(0)
    assigned = torch.tensor([0] * 10 + [NEGATIVE] * 100 + [IGNORED] * 5)
    pos, neg = sample_random(assigned, 16, 0.25)
    assert len(pos) == 4 and len(neg) == 12 and (assigned[pos] >= 0).all() and (assigned[neg] == NEGATIVE).all()
    pos, neg = sample_random(torch.full((50,), NEGATIVE), 16, 0.5)
    assert len(pos) == 0 and len(neg) == 16  # an image without objects: all negatives


# --------------------------------------------------------------------------- RoI head


def test_roi_levels_by_scale() -> None:
    sides = torch.tensor([20.0, 111.0, 112.0, 223.0, 224.0, 448.0, 2000.0])
    obbs = torch.stack([sides * 0, sides * 0, sides, sides, sides * 0], dim=1)
    assert roi_levels(obbs, 4).tolist() == [0, 0, 1, 1, 2, 3, 3]


def test_rotated_roi_align_follows_the_box_angle() -> None:
    """A bright rotated bar pooled with its own angle is uniformly bright; with the mirrored angle it is not."""
    from PIL import Image, ImageDraw

    box = torch.tensor([[48.0, 40.0, 60.0, 12.0, 0.6]])
    canvas = Image.new("L", (96, 80), 0)
    ImageDraw.Draw(canvas).polygon([tuple(p) for p in obb2poly(box).reshape(4, 2).tolist()], fill=255)
    feature = torch.from_numpy(np.array(canvas, dtype=np.float32) / 255.0)[None, None]
    head = RotatedRoIHead(1, [1], num_classes=1, roi_size=7, sampling_ratio=2)
    shrunk = box.clone()
    shrunk[:, 2:4] -= 4  # stay off the anti-aliased edge
    mirrored = shrunk.clone()
    mirrored[:, 4] *= -1
    rois = torch.cat([torch.zeros(2, 1), torch.cat([shrunk, mirrored])], dim=1)
    pooled = head.pool([feature], rois)
    assert pooled.shape == (2, 1, 7, 7)
    assert float(pooled[0].min()) > 0.95
    assert float(pooled[1].mean()) < 0.6


# --------------------------------------------------------------------------- the head on a real crop


def hit_info() -> DataInfo:
    return DataInfo(classes=list(HIT_CLASSES), sample_keys=("image", "obbs", "labels"))


def oriented_model(img_size: int, frozen: bool = True, **head: Any) -> TaskModel:
    """A tiny ViT + simple pyramid + a small Oriented R-CNN head."""
    torch.manual_seed(0)
    options = {
        "fpn_channels": 32,
        "fc_channels": 128,
        "anchor_scales": [2.0, 4.0],  # HIT-UAV's small objects
        "roi_num_samples": 64,
        "roi_pos_fraction": 0.5,
        "rpn_proposals_train": 200,
        "rpn_proposals_test": 200,
        **head,
    }
    encoder = {"class_path": "ViT", "init_args": {"size": "tiny", "img_size": img_size, "frozen": frozen}}
    heads = {"det": {"class_path": "OrientedRCNNHead", "init_args": options}}
    return TaskModel(encoder, heads, {"class_path": "SimpleFeaturePyramid"}, hit_info())


def crop_sample(sample: dict[str, Any], y0: int, x0: int, side: int) -> dict[str, Any]:
    """A crop of a sample with the boxes whose centre lies in it, in crop pixels (batch of one)."""
    obbs = sample["obbs"].clone()
    obbs[:, 0] -= x0
    obbs[:, 1] -= y0
    inside = (obbs[:, 0] > 0) & (obbs[:, 0] < side) & (obbs[:, 1] > 0) & (obbs[:, 1] < side)
    return {
        "image": [sample["image"][:, y0 : y0 + side, x0 : x0 + side]],
        "obbs": [obbs[inside]],
        "labels": [sample["labels"][inside]],
        "difficult": [torch.zeros(int(inside.sum()), dtype=torch.bool)],
    }


@pytest.fixture(scope="module")
def parking(datasets: Path) -> dict[str, Any]:
    return read_hit_uav(datasets, PARKING)


@pytest.fixture(scope="module")
def overfit(parking: dict[str, Any]) -> dict[str, Any]:
    """60 AdamW steps on one 192 px crop (8 cars); the model's tiles are the crop's size.

    At 40 steps one car of 8 was found at IoU 0.53 here and CI's machine found only 5 (in a run
    where terratorch's import could lower the float32 matmul precision of the tests after it); at
    60 steps all 8 are found at IoU >= 0.6, in float32 and under bf16 autocast.
    """
    y0, x0, side = CROP
    batch = crop_sample(parking, y0, x0, side)
    assert len(batch["obbs"][0]) == 8 and (batch["labels"][0] == HIT_CLASSES.index("Car")).all()
    model = oriented_model(side, tile_size=side, tile_overlap=32)
    head = model.heads["det"]
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-3)
    model.train()
    history = []
    for _ in range(60):
        terms = head.loss(model.features(batch), batch)
        loss = sum(terms.values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append({k: float(v.detach()) for k, v in terms.items()})
    model.eval()
    return {"model": model, "head": head, "batch": batch, "history": history}


def test_overfits_one_real_crop(overfit: dict[str, Any]) -> None:
    history = overfit["history"]
    assert set(history[0]) == {"rpn_cls", "rpn_bbox", "roi_cls", "roi_bbox"}
    first = sum(history[0].values())
    last = np.mean([sum(h.values()) for h in history[-5:]])
    assert last < 0.4 * first, (first, last)
    model, head, batch = overfit["model"], overfit["head"], overfit["batch"]
    (pred,) = head.predict(model, batch)
    assert pred["obbs"].dtype == torch.float32 and pred["labels"].dtype == torch.int64
    confident = pred["scores"] >= 0.3
    gts = batch["obbs"][0]
    iou = box_iou_rotated(gts, pred["obbs"][confident])
    best, which = iou.max(dim=1)
    assert int((best > 0.5).sum()) >= 6, best  # most of the 8 cars found, as oriented boxes
    assert (pred["labels"][confident][which[best > 0.5]] == HIT_CLASSES.index("Car")).all()
    assert int(confident.sum()) <= 12  # and few false positives


def test_tiled_prediction_of_the_whole_image(overfit: dict[str, Any], parking: dict[str, Any]) -> None:
    """192 px tiles overlapping by 32 px cover the 640 × 512 image; the crop is one of them (x0 = 320)."""
    model, head = overfit["model"], overfit["head"]
    (pred,) = head.predict(model, {"image": [parking["image"]]})
    h, w = parking["size"]
    assert len(pred["obbs"]) > 0
    assert float(pred["obbs"][:, 0].min()) >= 0 and float(pred["obbs"][:, 0].max()) <= w
    assert float(pred["obbs"][:, 1].min()) >= 0 and float(pred["obbs"][:, 1].max()) <= h
    assert float(pred["obbs"][:, 0].max()) > CROP[1]  # boxes from tiles right of the first
    y0, x0, side = CROP
    in_crop = crop_sample(parking, y0, x0, side)["obbs"][0]
    in_crop[:, 0] += x0  # back to image pixels
    in_crop[:, 1] += y0
    confident = pred["scores"] >= 0.3
    best = box_iou_rotated(in_crop, pred["obbs"][confident]).max(dim=1).values
    assert int((best > 0.5).sum()) >= 5, best  # found where they are in the image
    assert (pred["scores"][:-1] >= pred["scores"][1:]).all()


class OracleHead(OrientedRCNNHead):
    """Stand-in detector: in each tile, the ground-truth boxes lying wholly inside it (tile pixels).

    Band 0 of the image holds the x coordinate and band 1 the y coordinate, so a tile tells its
    offset.
    """

    def __init__(self, obbs: torch.Tensor, labels: torch.Tensor, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.gt_obbs, self.gt_labels, self.calls = obbs, labels, []

    def forward(self, tiles: Any, batch: Any = None) -> list[dict[str, torch.Tensor]]:
        out = []
        for t in tiles:
            x0, y0, th, tw = float(t[0, 0, 0]), float(t[1, 0, 0]), t.shape[1], t.shape[2]
            self.calls.append((y0, x0))
            poly = obb2poly(self.gt_obbs).reshape(-1, 4, 2)
            inside = (
                (poly[..., 0] >= x0).all(1)
                & (poly[..., 0] <= x0 + tw).all(1)
                & (poly[..., 1] >= y0).all(1)
                & (poly[..., 1] <= y0 + th).all(1)
            )
            obbs = self.gt_obbs[inside].clone()
            obbs[:, 0] -= x0
            obbs[:, 1] -= y0
            out.append({"obbs": obbs, "scores": torch.full((len(obbs),), 0.9), "labels": self.gt_labels[inside]})
        return out


def test_tiles_are_shifted_back_and_merged_once(datasets: Path) -> None:
    """DOTA scenes of ~1000 px by 512 px tiles overlapping by 200 px: every vehicle once, in image pixels."""

    class Model:  # features of a list batch: the tiles themselves
        def features(self, batch: dict[str, Any], *heads: Any) -> list[torch.Tensor]:
            return batch["image"]

    for stem in DOTA_STEMS[:3]:
        dota = read_dota(datasets, stem)
        h, w = dota["size"]
        poly = obb2poly(dota["obbs"]).reshape(-1, 4, 2)
        inside = (poly >= 0).all(2).all(1) & (poly[..., 0] <= w).all(1) & (poly[..., 1] <= h).all(1)
        obbs = dota["obbs"][inside]  # a few labels reach out of the image
        labels = torch.tensor([int(n == "large-vehicle") for n in dota["names"]])[inside]
        head = OracleHead(obbs, labels, tile_size=512, tile_overlap=200, batch_tiles=3)
        image = torch.stack([torch.arange(w).float().expand(h, w), torch.arange(h).float()[:, None].expand(h, w)])
        out = head.detect(Model(), image)
        assert len(head.calls) == len(tile_windows(h, w, 512, 200)) >= 6
        assert len(out["obbs"]) == len(obbs) > 50  # each object once although up to 4 tiles saw it
        order = torch.argsort(out["obbs"][:, 0] * 10000 + out["obbs"][:, 1])
        truth = torch.argsort(obbs[:, 0] * 10000 + obbs[:, 1])
        torch.testing.assert_close(out["obbs"][order], obbs[truth], atol=1e-3, rtol=0)
        assert out["labels"][order].tolist() == labels[truth].tolist()
        assert head.detect(Model(), image, score_thresh=0.95)["obbs"].shape == (0, 5)
    empty = merge_rotated_detections([], [])
    assert empty["obbs"].shape == (0, 5) and empty["labels"].dtype == torch.int64


# --------------------------------------------------------------------------- robustness


@pytest.fixture(scope="module")
def small_model() -> TaskModel:
    return oriented_model(128, frozen=False, roi_num_samples=32)


def test_crops_without_objects_train(small_model: TaskModel, parking: dict[str, Any]) -> None:
    """An empty crop, and a crop whose only objects are difficult, give finite losses (negatives only)."""
    head = small_model.heads["det"]
    empty = crop_sample(parking, 300, 0, 128)
    assert len(empty["obbs"][0]) == 0
    difficult = crop_sample(parking, 0, 400, 128)
    difficult["difficult"] = [torch.ones(len(difficult["obbs"][0]), dtype=torch.bool)]
    assert len(difficult["obbs"][0]) > 0
    small_model.train()
    for batch in (empty, difficult):
        torch.manual_seed(0)
        terms = head.loss(small_model.features(batch), batch)
        assert terms["rpn_bbox"].item() == 0.0 and terms["roi_bbox"].item() == 0.0
        assert all(math.isfinite(v.item()) for v in terms.values())
        small_model.zero_grad()
        sum(terms.values()).backward()
        grads = [p.grad for p in head.parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads)
    both = {k: empty[k] + difficult[k] for k in empty}  # a batch of two crops
    head.keep_difficult = True
    try:
        terms = head.loss(small_model.features(both), both)
    finally:
        head.keep_difficult = False
    assert terms["rpn_bbox"].item() > 0  # difficult objects kept as targets


def test_bf16_autocast(small_model: TaskModel, parking: dict[str, Any]) -> None:
    head = small_model.heads["det"]
    batch = crop_sample(parking, 0, 400, 128)
    small_model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        terms = head.loss(small_model.features(batch), batch)
    assert all(v.dtype == torch.float32 and math.isfinite(v.item()) for v in terms.values())
    sum(terms.values()).backward()
    small_model.eval()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        (pred,) = head.predict(small_model, {"image": batch["image"]})
    assert pred["obbs"].dtype == torch.float32 and pred["scores"].dtype == torch.float32


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_loss_and_prediction(parking: dict[str, Any]) -> None:
    model = oriented_model(128, frozen=False).cuda()
    head = model.heads["det"]
    batch = crop_sample(parking, 0, 400, 128)
    batch = {k: [v.cuda() for v in vs] for k, vs in batch.items()}
    model.train()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        terms = head.loss(model.features(batch), batch)
    sum(terms.values()).backward()
    assert all(math.isfinite(v.item()) for v in terms.values())
    model.eval()
    (pred,) = head.predict(model, {"image": [parking["image"].cuda()]})
    assert pred["obbs"].is_cuda and pred["obbs"].dtype == torch.float32


# --------------------------------------------------------------------------- options, metrics, pictures


def test_head_is_registered_and_checks_its_options() -> None:
    assert HEADS.get("OrientedRCNNHead") is OrientedRCNNHead
    assert OrientedRCNNHead.target_keys == ("obbs", "labels") and OrientedRCNNHead.output_kind == "obbs"
    with pytest.raises(ConfigError, match="metric"):
        OrientedRCNNHead(metric="coco")
    with pytest.raises(ConfigError, match="tile_overlap"):
        OrientedRCNNHead(tile_size=256, tile_overlap=256)
    with pytest.raises(ConfigError, match="anchor"):
        OrientedRCNNHead(anchor_scales=[])
    encoder = {"class_path": "ViT", "init_args": {"size": "tiny", "img_size": 64}}
    heads = {"det": {"class_path": "OrientedRCNNHead"}}
    with pytest.raises(ConfigError, match="obbs"):
        TaskModel(encoder, heads, {"class_path": "SimpleFeaturePyramid"}, DataInfo(classes=["a"]))
    model = oriented_model(64)
    head = model.heads["det"]
    assert head.strides == STRIDES and head.roi_head.strides == STRIDES[:4]
    assert head.rpn.num_anchors == 6 and head.roi_head.cls.out_features == len(HIT_CLASSES) + 1
    assert head.monitor in head.make_metrics().names


def test_downstream_task_validates_whole_scenes(parking: dict[str, Any]) -> None:
    """The task module predicts a 384 px scene by 4 tiles with the head and logs its ``mAP50``."""
    from rsfm.tasks.module import DownstreamTask

    torch.manual_seed(0)
    options = {"fpn_channels": 16, "fc_channels": 64, "rpn_proposals_test": 100, "tile_size": 256, "tile_overlap": 128}
    model = {
        "encoder": {"class_path": "ViT", "init_args": {"size": "tiny", "img_size": 128}},
        "neck": {"class_path": "SimpleFeaturePyramid"},
        "heads": {"det": {"class_path": "OrientedRCNNHead", "init_args": options}},
    }
    task = DownstreamTask(model=model, optim={"lr": 1e-4}, data=hit_info().to_dict())
    assert task.monitor == "val/mAP50"
    batch = crop_sample(parking, 0, 256, 384)
    task.eval()
    task.validation_step(batch, 0)
    scores = task.val_metrics["det"].compute()
    assert set(scores) == {"mAP50"} and 0.0 <= scores["mAP50"] <= 100.0
    assert task.val_metrics["det"].report()["num_images"] == 1


def test_metrics_score_oriented_boxes(parking: dict[str, Any]) -> None:
    obbs, labels = parking["obbs"], parking["labels"]
    batch = {"obbs": [obbs], "labels": [labels], "difficult": [torch.zeros(len(obbs), dtype=torch.bool)]}
    perfect = [{"obbs": obbs, "scores": torch.linspace(1, 0.5, len(obbs)), "labels": labels}]
    for metric in ("voc07", "voc12"):
        m = RotatedDetectionMetricSet(HIT_CLASSES, metric)
        m.update(perfect, batch)
        assert m.compute() == {"mAP50": pytest.approx(100.0)}
        assert list(m.compute()) == list(m.names)
        report = m.report()
        assert report["metric"] == metric and report["classes"] == HIT_CLASSES
        m.reset()
        shifted = [{**perfect[0], "obbs": obbs + torch.tensor([30.0, 0, 0, 0, 0])}]  # off by 30 px: misses
        m.update(shifted, batch)
        assert m.compute()["mAP50"] < 10.0


def test_render_draws_truth_and_predictions(parking: dict[str, Any]) -> None:
    head = OrientedRCNNHead(vis_score_thresh=0.3)
    head.classes = list(HIT_CLASSES)
    batch = {"image": [parking["image"]], "obbs": [parking["obbs"]], "labels": [parking["labels"]]}
    pred = {"obbs": parking["obbs"][:3], "scores": torch.tensor([0.9, 0.5, 0.1]), "labels": parking["labels"][:3]}
    panel = head.render(batch, 0, [pred])
    h, w = parking["size"]
    assert panel.size == (2 * w + 8, h)
    pixels = np.asarray(panel)
    red = (pixels[..., 0] > 200) & (pixels[..., 1] < 60) & (pixels[..., 2] < 60)
    green = (pixels[..., 1] > 200) & (pixels[..., 0] < 60) & (pixels[..., 2] < 60)
    assert red[:, w + 8 :].any() and not red[:, :w].any()
    assert green[:, :w].any() and not green[:, w + 8 :].any()
