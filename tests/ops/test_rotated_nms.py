"""Rotated NMS (rsfm.ops.rotated_nms) against a plain greedy loop over shapely IoU."""

from __future__ import annotations

import math

import numpy as np
import pytest
import shapely
import torch

from rsfm.ops import rotated_nms
from rsfm.ops.obb import obb2poly
from rsfm.ops.rotated_nms import batched_nms_rotated, nms_rotated


def clustered_boxes(n: int, seed: int, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` boxes around 20 object centres (jittered, as detector outputs), and their scores."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.cat(
        [
            torch.rand(20, 2, generator=g) * 300,
            torch.rand(20, 2, generator=g) * 40 + 8,
            torch.rand(20, 1, generator=g) * math.pi,
        ],
        1,
    )
    pick = torch.randint(20, (n,), generator=g)
    jitter = torch.randn(n, 5, generator=g) * torch.tensor([3.0, 3.0, 4.0, 4.0, 0.15])
    boxes = centres[pick] + jitter
    boxes[:, 2:4] = boxes[:, 2:4].abs() + 1
    return boxes.to(dtype), torch.rand(n, generator=g, dtype=dtype)


def reference_nms(boxes: torch.Tensor, scores: torch.Tensor, thr: float, idxs: torch.Tensor | None = None) -> list[int]:
    """Greedy NMS, one box at a time, IoU by shapely."""
    polys = shapely.polygons(obb2poly(boxes.double()).reshape(-1, 4, 2).numpy())
    areas = shapely.area(polys)
    order = sorted(range(len(boxes)), key=lambda i: (-float(scores[i]), i))
    kept: list[int] = []
    for i in order:
        others = [k for k in kept if idxs is None or int(idxs[k]) == int(idxs[i])]
        if others:
            inter = shapely.area(shapely.intersection(polys[i], polys[others]))
            iou = inter / (areas[i] + areas[others] - inter)
            if (iou > thr).any():
                continue
        kept.append(i)
    return kept


@pytest.mark.parametrize("block", [512, 16])
@pytest.mark.parametrize("thr", [0.1, 0.5, 0.7])
def test_nms_matches_the_greedy_reference(thr: float, block: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rotated_nms, "_BLOCK", block)
    boxes, scores = clustered_boxes(400, seed=int(thr * 10))
    keep = nms_rotated(boxes, scores, thr)
    assert keep.dtype == torch.int64
    ref = reference_nms(boxes, scores, thr)
    assert keep.tolist() == ref
    assert 20 <= len(ref) < 400  # the case suppresses, and keeps more than one box per object
    assert (scores[keep].diff() <= 0).all()


def test_ties_keep_the_input_order_and_duplicates_are_suppressed() -> None:
    box = torch.tensor([[50.0, 50.0, 20.0, 10.0, 0.3]])
    boxes = torch.cat([box, box, box + torch.tensor([[100.0, 0, 0, 0, 0]]), box])
    scores = torch.tensor([0.5, 0.5, 0.5, 0.9])
    assert nms_rotated(boxes, scores, 0.5).tolist() == [3, 2]
    assert nms_rotated(boxes, scores, 1.0).tolist() == [3, 0, 1, 2]  # IoU 1 is not > 1


def test_batched_nms_is_classwise(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rotated_nms, "_BLOCK", 32)
    boxes, scores = clustered_boxes(300, seed=9, dtype=torch.float64)
    idxs = torch.randint(3, (300,), generator=torch.Generator().manual_seed(1))
    keep = batched_nms_rotated(boxes, scores, idxs, 0.4)
    assert keep.tolist() == reference_nms(boxes, scores, 0.4, idxs)
    # the union of per-class NMS, by score
    parts = []
    for c in range(3):
        sel = (idxs == c).nonzero().flatten()
        parts.append(sel[nms_rotated(boxes[sel], scores[sel], 0.4)])
    merged = torch.cat(parts)
    merged = merged[torch.sort(scores[merged], descending=True, stable=True).indices]
    assert keep.tolist() == merged.tolist()
    # identical boxes of different classes never suppress each other
    same = boxes[:1].repeat(2, 1)
    assert batched_nms_rotated(
        same, torch.tensor([0.9, 0.8], dtype=torch.float64), torch.tensor([0, 1]), 0.1
    ).tolist() == [0, 1]


def test_empty_and_errors() -> None:
    assert nms_rotated(torch.zeros(0, 5), torch.zeros(0), 0.5).shape == (0,)
    assert batched_nms_rotated(torch.zeros(0, 5), torch.zeros(0), torch.zeros(0, dtype=torch.int64), 0.5).shape == (0,)
    with pytest.raises(ValueError, match="boxes"):
        nms_rotated(torch.zeros(3, 4), torch.zeros(3), 0.5)
    with pytest.raises(ValueError, match="scores"):
        nms_rotated(torch.zeros(3, 5), torch.zeros(2), 0.5)
    with pytest.raises(ValueError, match="idxs"):
        batched_nms_rotated(torch.zeros(3, 5), torch.zeros(3), torch.zeros(3, 1), 0.5)


def test_large_input_keeps_no_pair_above_the_threshold() -> None:
    boxes, scores = clustered_boxes(3000, seed=3)
    keep = nms_rotated(boxes, scores, 0.5)
    # spot check: no two kept boxes overlap above the threshold
    from rsfm.ops.rotated_iou import box_iou_rotated

    iou = box_iou_rotated(boxes[keep], boxes[keep])
    iou.fill_diagonal_(0)
    assert iou.max() <= 0.5
    assert np.isin(keep.numpy(), np.arange(3000)).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu() -> None:
    boxes, scores = clustered_boxes(2000, seed=5)
    idxs = torch.randint(4, (2000,), generator=torch.Generator().manual_seed(0))
    keep = nms_rotated(boxes.cuda(), scores.cuda(), 0.5)
    assert keep.is_cuda
    assert keep.cpu().tolist() == nms_rotated(boxes, scores, 0.5).tolist()
    keep = batched_nms_rotated(boxes.cuda(), scores.cuda(), idxs.cuda(), 0.5)
    assert keep.cpu().tolist() == batched_nms_rotated(boxes, scores, idxs, 0.5).tolist()
