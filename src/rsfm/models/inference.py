"""Inference on images larger than the training crops: sliding windows and tiles.

Dense heads are trained on crops; whole scenes are predicted by windows of the crop size.
:func:`slide_inference` averages the logits of overlapping windows (segmentation, change
detection); :func:`tile_windows` and :func:`merge_detections` cut a scene into overlapping
tiles and merge their boxes by class-wise non-maximum suppression (detection).

.. versionadded:: 0.2
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = ["detect_tiles", "merge_detections", "slide_inference", "tile_windows", "window_starts"]


def window_starts(size: int, crop: int, stride: int) -> list[int]:
    """Offsets of sliding windows along one axis of ``size`` pixels.

    Windows start every ``stride`` pixels; the last one is moved back to end at ``size`` so
    that all windows lie inside the image (a single window at 0 when ``size <= crop``).

    Args:
        size: image side, pixels.
        crop: window side, pixels.
        stride: step between windows, pixels.

    Returns:
        Sorted window offsets, pixels.

    Raises:
        ValueError: if ``crop`` or ``stride`` is not positive or ``stride > crop`` (gaps).

    """
    if crop < 1 or stride < 1 or stride > crop:
        raise ValueError(f"need 0 < stride <= crop, got crop={crop}, stride={stride}")
    if size <= crop:
        return [0]
    n = math.ceil((size - crop) / stride) + 1
    return sorted({min(i * stride, size - crop) for i in range(n)})


def slide_inference(
    fn: Callable[[Tensor], Tensor],
    image: Tensor,
    num_classes: int,
    crop: int,
    stride: int,
    batch_windows: int = 8,
    pad_value: Tensor | None = None,
) -> Tensor:
    """Predict an image of any size with overlapping ``crop × crop`` windows.

    Each window's output (logits, or probabilities) is added into a full-size map and
    divided by how many windows covered each pixel. An image smaller than the crop (in either
    side) is padded at the bottom/right with ``pad_value`` and the padding cropped off the
    result. A pixel covered by one window gets exactly that window's output.

    Args:
        fn: model mapping ``(N, C, crop, crop)`` to ``(N, K, crop, crop)`` outputs.
        image: ``(B, C, H, W)`` float32 (rsfm passes images in [0, 1]; ``fn`` normalises).
        num_classes: ``K``.
        crop: window side in pixels.
        stride: step between windows in pixels, ``<= crop``.
        batch_windows: windows per call of ``fn`` (times ``B`` images).
        pad_value: ``(C,)`` per-band fill of the padding, e.g. the data's mean so that the
            padding normalises to 0 as in training; None: zeros.

    Returns:
        ``(B, K, H, W)`` float32 averaged outputs on ``image``'s device.

    Raises:
        ValueError: on bad sizes or if ``fn`` returns the wrong shape.

    """
    if image.ndim != 4:
        raise ValueError(f"image must be (B, C, H, W), got {tuple(image.shape)}")
    b, c, h, w = image.shape
    pad_h, pad_w = max(crop - h, 0), max(crop - w, 0)
    if pad_h or pad_w:
        if pad_value is None:
            padded = image.new_zeros((b, c, h + pad_h, w + pad_w))
        else:
            padded = pad_value.to(image).reshape(1, c, 1, 1).expand(b, c, h + pad_h, w + pad_w).clone()
        padded[..., :h, :w] = image
        image = padded
    hp, wp = image.shape[-2:]
    boxes = [(y, x) for y in window_starts(hp, crop, stride) for x in window_starts(wp, crop, stride)]
    logits = image.new_zeros((b, num_classes, hp, wp), dtype=torch.float32)
    count = image.new_zeros((1, 1, hp, wp), dtype=torch.float32)
    for i in range(0, len(boxes), max(1, batch_windows)):
        chunk = boxes[i : i + max(1, batch_windows)]
        windows = torch.cat([image[..., y : y + crop, x : x + crop] for y, x in chunk])
        out = fn(windows)
        if tuple(out.shape) != (len(chunk) * b, num_classes, crop, crop):
            raise ValueError(
                f"fn returned {tuple(out.shape)} for windows {tuple(windows.shape)}; expected K={num_classes}"
            )
        for j, (y, x) in enumerate(chunk):
            logits[..., y : y + crop, x : x + crop] += out[j * b : (j + 1) * b].float()
            count[..., y : y + crop, x : x + crop] += 1
    return (logits / count)[..., :h, :w]


def tile_windows(height: int, width: int, tile: int, overlap: int) -> list[tuple[int, int, int, int]]:
    """Overlapping tiles covering an image; the last tile of a row/column ends at the border.

    Args:
        height: image height, pixels.
        width: image width, pixels.
        tile: tile side, pixels (a smaller image gives one tile of its own size).
        overlap: minimum overlap of neighbouring tiles, pixels, ``0 <= overlap < tile``.

    Returns:
        ``(y0, x0, y1, x1)`` windows, row-major.

    Raises:
        ValueError: on a bad ``tile``/``overlap``.
    """
    if tile <= 0 or not 0 <= overlap < tile:
        raise ValueError(f"need tile > 0 and 0 <= overlap < tile, got tile={tile}, overlap={overlap}")

    def starts(n: int) -> list[int]:
        if n <= tile:
            return [0]
        out = list(range(0, n - tile, tile - overlap))
        return [*out, n - tile]

    return [(y, x, min(y + tile, height), min(x + tile, width)) for y in starts(height) for x in starts(width)]


@torch.no_grad()
def detect_tiles(
    head: torch.nn.Module,
    model: Any,
    image: Tensor,
    tile: int,
    overlap: int,
    batch_tiles: int,
    merge: Callable[[list[dict[str, Tensor]], list[tuple[int, int]]], dict[str, Tensor]],
    score_thresh: float | None = None,
) -> dict[str, Tensor]:
    """Run a detection head over overlapping tiles of one image and merge the tiles' detections.

    The head runs in evaluation mode (its mode is restored afterwards) on ``batch_tiles`` tiles at
    a time, through ``model.features`` (normalisation, encoder, neck).

    Args:
        head: the detection head; ``head(features, None)`` returns one detection dict per tile.
        model: the task model (:class:`~rsfm.models.task_model.TaskModel`).
        image: ``(C, H, W)`` float32 in [0, 1], any size.
        tile: tile side, pixels (:func:`tile_windows`).
        overlap: overlap of neighbouring tiles, pixels.
        batch_tiles: tiles per forward pass (at least 1).
        merge: ``(per-tile detections, tile origins (y0, x0)) -> detections in image pixels``
            (:func:`merge_detections` for boxes; the rotated one for oriented boxes).
        score_thresh: drop merged detections scoring below it (None: keep all).

    Returns:
        What ``merge`` returns, filtered by ``score_thresh``.
    """
    was_training = head.training
    head.eval()
    step = max(1, int(batch_tiles))
    try:
        _, h, w = image.shape
        windows = tile_windows(h, w, tile, overlap)
        dets: list[dict[str, Tensor]] = []
        for i in range(0, len(windows), step):
            tiles = [image[:, y0:y1, x0:x1] for y0, x0, y1, x1 in windows[i : i + step]]
            dets += head(model.features({"image": tiles}, head), None)
    finally:
        head.train(was_training)
    out = merge(dets, [(y0, x0) for y0, x0, _, _ in windows])
    if score_thresh is not None:
        keep = out["scores"] >= score_thresh
        out = {k: v[keep] for k, v in out.items()}
    return out


def merge_detections(
    detections: Sequence[dict[str, Tensor]],
    offsets: Sequence[tuple[int, int]],
    iou_threshold: float = 0.5,
    max_detections: int | None = None,
) -> dict[str, Tensor]:
    """Shift per-tile detections to image pixels and merge them by class-wise NMS.

    Args:
        detections: per tile, ``boxes`` ``(n, 4)`` float32 xyxy tile pixels, ``scores``
            ``(n,)`` float32 and ``labels`` ``(n,)`` int64.
        offsets: per tile, its ``(y0, x0)`` in the image, pixels.
        iou_threshold: NMS IoU across tiles (objects seen by several overlapping tiles).
        max_detections: keep the best-scoring ones; ``None``: all.

    Returns:
        ``boxes`` ``(M, 4)`` float32 xyxy image pixels, ``scores`` ``(M,)``, ``labels`` ``(M,)``,
        sorted by decreasing score, on the detections' device (the CPU when there are no tiles).
    """
    boxes = [
        d["boxes"] + d["boxes"].new_tensor([x0, y0, x0, y0]) for d, (y0, x0) in zip(detections, offsets, strict=True)
    ]
    if not boxes:
        return {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64)}
    b = torch.cat(boxes)
    s = torch.cat([d["scores"] for d in detections])
    lab = torch.cat([d["labels"] for d in detections])
    from torchvision.ops import batched_nms

    keep = batched_nms(b, s, lab, iou_threshold)  # sorted by decreasing score
    if max_detections is not None:
        keep = keep[:max_detections]
    return {"boxes": b[keep], "scores": s[keep], "labels": lab[keep]}
