"""Speed of the rotated-box operators of :mod:`rsfm.ops`, each beside a reference, in one run.

* Rotated IoU: aligned pairs per second of :func:`rsfm.ops.rotated_iou.box_iou_rotated`
  (batched tensors) against a Python loop over shapely polygons (``Polygon.intersection``
  pair by pair, on a subset), and the dense ``N × N`` matrix of boxes scattered over a
  DOTA-sized 1024 × 1024 image (pairs per second, all ``N²`` pairs counted).
* Rotated NMS: boxes per second of :func:`rsfm.ops.rotated_nms.nms_rotated` for 1k and 5k
  detector-like boxes (jittered around objects), against the greedy loop over shapely IoU
  and, as the speed of a compiled kernel, ``torchvision.ops.nms`` on the enclosing
  horizontal boxes (a different result, shown for scale only).
* RoIAlignRotated: rois per second of :func:`rsfm.ops.roi_align_rotated.roi_align_rotated`
  (7 × 7 bins, 2 × 2 samples per bin, as MMRotate's Oriented R-CNN) on a 256-channel map of
  an FPN's finest level (stride 4 of a 1024-pixel image: 256 × 256), forward and forward +
  backward, against torchvision's compiled ``roi_align`` on the enclosing horizontal boxes
  (the same number of samples; scale only).

The ratio column is ours / reference (above 1: ours faster). Times are medians over
``--repeats`` after one warm-up; on CUDA every timing is synchronised. No assertion is made
on the timings.

    python benchmarks/rotated_ops.py                        # CPU, default sizes
    python benchmarks/rotated_ops.py --device cuda
    python benchmarks/rotated_ops.py --pairs 20000 --shapely-pairs 500 --nms-sizes 1000 --rois 64 --repeats 1  # smoke
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable

import torch

from rsfm.ops.obb import obb2hbb, obb2poly
from rsfm.ops.roi_align_rotated import roi_align_rotated
from rsfm.ops.rotated_iou import box_iou_rotated
from rsfm.ops.rotated_nms import nms_rotated

IMAGE = 1024  # pixels, the side of a DOTA training patch


def timed(fn: Callable[[], object], device: str, repeats: int) -> float:
    """Median seconds of ``fn()`` over ``repeats`` runs after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def scattered_boxes(n: int, g: torch.Generator, span: float = IMAGE) -> torch.Tensor:
    """``(n, 5)`` float32 boxes: centres uniform over the image, sides 8-128 px, any angle."""
    return torch.cat(
        [
            torch.rand(n, 2, generator=g) * span,
            torch.rand(n, 2, generator=g) * 120 + 8,
            (torch.rand(n, 1, generator=g) - 0.5) * math.pi,
        ],
        1,
    )


def overlapping_pairs(n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` aligned pairs that overlap (the second box jittered from the first)."""
    a = scattered_boxes(n, g)
    b = a + torch.randn(n, 5, generator=g) * torch.tensor([10.0, 10.0, 8.0, 8.0, 0.3])
    b[:, 2:4] = b[:, 2:4].abs() + 1
    return a, b


def detections(n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` detector-like boxes: about 5 per object, jittered, with random scores."""
    objects = scattered_boxes(max(1, n // 5), g)
    pick = torch.randint(len(objects), (n,), generator=g)
    boxes = objects[pick] + torch.randn(n, 5, generator=g) * torch.tensor([4.0, 4.0, 6.0, 6.0, 0.1])
    boxes[:, 2:4] = boxes[:, 2:4].abs() + 1
    return boxes, torch.rand(n, generator=g)


def shapely_iou_loop(a: torch.Tensor, b: torch.Tensor) -> list[float]:
    """IoU of aligned pairs, one shapely intersection at a time."""
    from shapely.geometry import Polygon

    pa, pb = obb2poly(a.double()).reshape(-1, 4, 2).tolist(), obb2poly(b.double()).reshape(-1, 4, 2).tolist()
    out = []
    for p, q in zip(pa, pb, strict=True):
        p, q = Polygon(p), Polygon(q)
        inter = p.intersection(q).area
        union = p.area + q.area - inter
        out.append(inter / union if union > 0 else 0.0)
    return out


def shapely_nms(boxes: torch.Tensor, scores: torch.Tensor, thr: float) -> list[int]:
    """Greedy NMS in Python, IoU of each candidate against the kept boxes by (vectorised) shapely."""
    import shapely

    polys = shapely.polygons(obb2poly(boxes.double()).reshape(-1, 4, 2).numpy())
    areas = shapely.area(polys)
    kept: list[int] = []
    for i in torch.sort(scores, descending=True, stable=True).indices.tolist():
        if kept:
            inter = shapely.area(shapely.intersection(polys[i], polys[kept]))
            if (inter / (areas[i] + areas[kept] - inter) > thr).any():
                continue
        kept.append(i)
    return kept


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--pairs", type=int, default=1_000_000, help="aligned IoU pairs (ours)")
    p.add_argument("--shapely-pairs", type=int, default=5_000, help="aligned IoU pairs of the shapely loop")
    p.add_argument("--matrix", type=int, default=2_000, help="boxes N of the dense N x N IoU matrix")
    p.add_argument("--nms-sizes", type=int, nargs="+", default=[1_000, 5_000])
    p.add_argument("--nms-iou", type=float, default=0.1, help="NMS threshold (MMRotate's DOTA test setting)")
    p.add_argument("--rois", type=int, default=512)
    p.add_argument("--channels", type=int, default=256)
    p.add_argument("--map-size", type=int, default=256, help="side of the feature map (stride-4 level of 1024 px)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = p.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available")
    if args.threads:
        torch.set_num_threads(args.threads)
    dev, reps = args.device, args.repeats
    g = torch.Generator().manual_seed(0)
    rows: list[tuple[str, str, float, float | None, str]] = []

    # rotated IoU, aligned pairs
    a, b = overlapping_pairs(args.pairs, g)
    ad, bd = a.to(dev), b.to(dev)
    t_ours = timed(lambda: box_iou_rotated(ad, bd, aligned=True), dev, reps)
    n_ref = min(args.shapely_pairs, args.pairs)
    t_ref = timed(lambda: shapely_iou_loop(a[:n_ref], b[:n_ref]), "cpu", 1)
    rows.append(
        ("IoU, aligned overlapping pairs", f"{args.pairs:,} pairs", args.pairs / t_ours, n_ref / t_ref, "shapely loop")
    )
    # dense matrix
    m = scattered_boxes(args.matrix, g).to(dev)
    t_ours = timed(lambda: box_iou_rotated(m, m), dev, reps)
    rows.append(("IoU, dense N x N matrix", f"{args.matrix:,}² pairs", args.matrix**2 / t_ours, None, ""))

    # NMS
    from torchvision.ops import nms

    for n in args.nms_sizes:
        boxes, scores = detections(n, g)
        bd, sd = boxes.to(dev), scores.to(dev)
        t_ours = timed(lambda bd=bd, sd=sd: nms_rotated(bd, sd, args.nms_iou), dev, reps)
        t_ref = timed(lambda boxes=boxes, scores=scores: shapely_nms(boxes, scores, args.nms_iou), "cpu", 1)
        rows.append(("NMS rotated", f"{n:,} boxes", n / t_ours, n / t_ref, "shapely greedy loop"))
        hb = obb2hbb(bd)
        t_tv = timed(lambda hb=hb, sd=sd: nms(hb, sd, args.nms_iou), dev, reps)
        rows.append(("", "", n / t_ours, n / t_tv, "torchvision nms (horizontal)"))

    # RoIAlignRotated
    from torchvision.ops import roi_align

    c, s = args.channels, args.map_size
    feat = torch.randn(1, c, s, s, generator=g).to(dev)
    rb = detections(args.rois, g)[0].clamp(min=0)
    rb[:, 2:4] = rb[:, 2:4].clamp(min=8)
    rois = torch.cat([torch.zeros(args.rois, 1), rb], 1).to(dev)
    hrois = torch.cat([torch.zeros(args.rois, 1), obb2hbb(rb)], 1).to(dev)
    scale = s / IMAGE
    t_ours = timed(lambda: roi_align_rotated(feat, rois, 7, scale, 2, True, True), dev, reps)
    t_tv = timed(lambda: roi_align(feat, hrois, 7, scale, 2, True), dev, reps)
    size = f"{args.rois} rois, {c}x{s}x{s}"
    rows.append(("RoIAlignRotated forward", size, args.rois / t_ours, args.rois / t_tv, "torchvision roi_align"))
    fg = feat.clone().requires_grad_()

    def fwd_bwd(op: Callable[[], torch.Tensor]) -> None:
        fg.grad = None
        op().sum().backward()

    t_ours = timed(lambda: fwd_bwd(lambda: roi_align_rotated(fg, rois, 7, scale, 2, True, True)), dev, reps)
    t_tv = timed(lambda: fwd_bwd(lambda: roi_align(fg, hrois, 7, scale, 2, True)), dev, reps)
    rows.append(("RoIAlignRotated fwd+bwd", size, args.rois / t_ours, args.rois / t_tv, "torchvision roi_align"))

    print(f"device: {dev}  torch {torch.__version__}  threads {torch.get_num_threads()}")
    header = f"{'operation':<32} {'size':<26} {'ours /s':>12} {'reference /s':>13} {'ratio':>8}  reference"
    print(header)
    print("-" * len(header))
    for op, size, ours, ref, name in rows:
        ref_s = f"{ref:13,.0f}" if ref is not None else f"{'-':>13}"
        ratio = f"{ours / ref:7.2f}x" if ref else f"{'-':>8}"
        print(f"{op:<32} {size:<26} {ours:12,.0f} {ref_s} {ratio}  {name}")


if __name__ == "__main__":
    main()
