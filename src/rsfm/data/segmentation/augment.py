"""Segmentation augmentations of MMSegmentation's UperNet recipes: random resize, photometric distortion.

The UperNet fine-tuning recipes of MAE, RVSA, MTP and SelectiveMAE (ADE20K, LoveDA, ISPRS Potsdam...) train with
``RandomResize(ratio_range=(0.5, 2.0))`` → ``RandomCrop`` → ``RandomFlip`` → ``PhotoMetricDistortion``. This module
re-implements the two that rsfm lacked, in torch, on float images, following the behaviour of MMSegmentation 1.x
(``mmseg/datasets/transforms/transforms.py``, ``PhotoMetricDistortion``) and MMCV 2.x
(``mmcv/transforms/processing.py``, ``RandomResize`` + ``Resize(keep_ratio=True)``); crop and flip are
:class:`rsfm.data.segmentation.SegmentationCrop`.

Samples are dicts ``{"image": (C, H, W) float in [0, 1], "mask": (H, W) int64 labels (255 = ignore), ...}``; ``C``
may be any number of bands. Keys other than ``"image"`` and ``"mask"`` are passed through untouched; the input dict
is not modified (a new dict is returned).

Randomness: every function takes an optional :class:`torch.Generator`; with ``None`` it draws from torch's global
RNG, which rsfm's data pipeline seeds per sample, so results are reproducible either way. Each call consumes a fixed
number of draws whatever branches are taken.

Differences from MMSegmentation, on purpose:

* Images stay float in [0, 1] (mmseg works on uint8 and truncates to integers after every step), so the 8-bit
  parameters are divided by 255: brightness ``32`` → ``32 / 255``.
* mmseg's ``hue_delta=18`` is in OpenCV's 8-bit hue unit (2°), i.e. ±36°; here ``hue_delta`` is in degrees and
  defaults to ``36.0`` so that the defaults reproduce mmseg. mmseg draws the hue shift as an integer, here it is
  uniform in ``[-hue_delta, hue_delta]``.
* Images are resized with torch's bilinear interpolation, antialiased when shrinking (OpenCV's is not); masks with
  nearest neighbour on pixel centres (torch's ``"nearest-exact"``), which keeps labels aligned with the bilinear
  image (OpenCV's nearest samples at pixel corners, half an output pixel off).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = ["PhotometricDistortion", "RandomResize", "photometric_distortion", "random_resize"]


# --------------------------------------------------------------------------- checks and helpers


def _range(name: str, value: Sequence[float], low: float, strict: bool) -> tuple[float, float]:
    """``value`` as a ``(lo, hi)`` pair of finite floats with ``low (<|<=) lo <= hi``.

    Raises:
        ValueError: if ``value`` is not such a pair.

    """
    bound = f"{low:g} {'<' if strict else '<='} {name}[0]"
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a (min, max) pair of numbers, got {value!r}") from None
    ok = math.isfinite(lo) and math.isfinite(hi) and lo <= hi and (lo > low if strict else lo >= low)
    if not ok:
        raise ValueError(f"{name} must satisfy {bound} <= {name}[1] (finite), got {value!r}")
    return lo, hi


def _check_image(sample: dict[str, Any]) -> Tensor:
    """``sample["image"]``, checked to be a ``(C, H, W)`` floating-point tensor.

    Raises:
        KeyError: if the sample has no ``"image"``.
        TypeError: if it is not a floating-point tensor.
        ValueError: if it is not 3-D.

    """
    image = sample["image"]
    if not isinstance(image, Tensor) or not image.is_floating_point():
        kind = image.dtype if isinstance(image, Tensor) else type(image).__name__
        raise TypeError(f"sample['image'] must be a floating-point tensor in [0, 1], got {kind}")
    if image.ndim != 3:
        raise ValueError(f"sample['image'] must be (C, H, W), got shape {tuple(image.shape)}")
    return image


def _device(generator: torch.Generator | None) -> torch.device | None:
    """Device to draw on: the generator's (a CUDA generator draws on its GPU), else torch's default."""
    return generator.device if generator is not None else None


def _uniform(u: Tensor | float, lo: float, hi: float) -> float:
    """Map ``u`` in [0, 1) to ``[lo, hi)``."""
    return lo + (hi - lo) * float(u)


# --------------------------------------------------------------------------- random resize


def _target_size(h: int, w: int, ratio: float, scale: int | Sequence[int] | None) -> tuple[int, int]:
    """Output ``(H', W')`` for a drawn ``ratio``; see :func:`random_resize`."""
    if scale is None:
        factor = ratio
    else:
        # MMCV's Resize(keep_ratio=True) on the scale (long, short) × ratio, truncated to ints
        pair = (scale, scale) if isinstance(scale, int) else tuple(scale)
        long_t, short_t = int(max(pair) * ratio), int(min(pair) * ratio)
        factor = min(long_t / max(h, w), short_t / min(h, w))
    # MMCV rounds sizes half up
    return max(1, int(h * factor + 0.5)), max(1, int(w * factor + 0.5))


def _nearest_indices(size_in: int, size_out: int, device: torch.device) -> Tensor:
    """Source index of each output pixel for nearest resampling on pixel centres (``"nearest-exact"``).

    Output pixel ``i`` has its centre at ``(i + ½) · size_in / size_out`` in input pixels; the source is the input
    pixel holding it, ``⌊(2i + 1) · size_in / (2 · size_out)⌋``, in exact integer arithmetic (a centre exactly on a
    pixel edge goes to the pixel after it; torch's float version may round either way).
    """
    i = torch.arange(size_out, device=device, dtype=torch.int64)
    return ((2 * i + 1) * size_in).div(2 * size_out, rounding_mode="floor").clamp_(0, size_in - 1)


def _check_scale(scale: int | Sequence[int] | None) -> int | tuple[int, int] | None:
    """``scale`` as None, a positive int or a pair of positive ints.

    Raises:
        ValueError: otherwise.

    """
    if scale is None:
        return None
    values = [scale] if isinstance(scale, int) else list(scale)
    if len(values) not in (1, 2) or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values):
        raise ValueError(f"scale must be None, a positive int or a pair of positive ints, got {scale!r}")
    return values[0] if len(values) == 1 else (values[0], values[1])


def random_resize(
    sample: dict[str, Any],
    ratio_range: Sequence[float] = (0.5, 2.0),
    generator: torch.Generator | None = None,
    scale: int | Sequence[int] | None = None,
) -> dict[str, Any]:
    """Resize image and mask by one random factor (MMSegmentation's ``RandomResize`` with ``ratio_range``).

    A ratio ``r`` is drawn uniformly from ``ratio_range`` (one draw from ``generator``), then:

    * ``scale=None`` (the simple form): the image is scaled by ``r``, ``(H, W) → (⌊r·H + ½⌋, ⌊r·W + ½⌋)``.
    * ``scale=s`` (int) or ``(a, b)``: as MMCV's ``RandomResize(scale, ratio_range, keep_ratio=True)``: the target
      scale is ``(⌊r·max(a, b)⌋, ⌊r·min(a, b)⌋)`` and the image is rescaled, aspect ratio kept, by the largest factor
      that makes its long side ``≤`` the first and its short side ``≤`` the second. With a square scale ``s`` the
      long side becomes ``≈ r·s``; with mmseg's ADE20K ``(2048, 512)`` the short side becomes ``≈ r·512`` (unless
      the long side hits ``r·2048`` first).

    The image is resampled bilinearly (``align_corners=False``), antialiased when either side shrinks, and clamped
    to its input value range (so [0, 1] stays [0, 1]); the mask with nearest neighbour on pixel centres, so its
    values are a subset of the input's. Sizes are at least 1 pixel.

    Args:
        sample: ``{"image": (C, H, W) float, "mask": (H, W) integer (optional), ...}``; other keys pass through.
        ratio_range: ``(min, max)`` of the ratio, ``0 < min <= max``; mmseg's recipes use ``(0.5, 2.0)``.
        generator: source of randomness; None for torch's global RNG.
        scale: None (ratio × current size), or the base scale in pixels as above: an int or a ``(long, short)``
            pair, in either order.

    Returns:
        a new dict with ``"image"`` ``(C, H', W')`` (same dtype and device) and ``"mask"`` ``(H', W')`` (same dtype)
        resized; the other entries are the input's.

    Raises:
        ValueError: if ``ratio_range`` or ``scale`` is invalid, the image is not 3-D, or the mask's shape is not the
            image's ``(H, W)``.
        TypeError: if the image is not a floating-point tensor.

    Source:
        MMCV 2.x ``mmcv/transforms/processing.py`` (``RandomResize._random_sample_ratio``, ``Resize``,
        ``mmcv.imrescale``), used by MMSegmentation 1.x's UperNet configs.

    """
    lo, hi = _range("ratio_range", ratio_range, 0.0, strict=True)
    scale = _check_scale(scale)
    image = _check_image(sample)
    mask = sample.get("mask")
    h, w = image.shape[-2:]
    if mask is not None and tuple(mask.shape) != (h, w):
        raise ValueError(f"sample['mask'] must be (H, W) = {(h, w)} like the image, got {tuple(mask.shape)}")

    ratio = _uniform(torch.rand((), generator=generator, device=_device(generator)), lo, hi)
    new_h, new_w = _target_size(h, w, ratio, scale)
    out = dict(sample)
    if (new_h, new_w) == (h, w):
        return out

    import torch.nn.functional as F

    work = image if image.dtype in (torch.float32, torch.float64) else image.float()
    resized = F.interpolate(
        work[None], size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=new_h < h or new_w < w
    )[0]
    # bilinear (and its antialiased form) is a convex combination: clamp away float rounding only
    resized = resized.clamp(min=work.amin(), max=work.amax()) if work.numel() else resized
    out["image"] = resized.to(image.dtype)
    if mask is not None:
        rows = _nearest_indices(h, new_h, mask.device)
        cols = _nearest_indices(w, new_w, mask.device)
        out["mask"] = mask[rows[:, None], cols[None, :]]
    return out


class RandomResize:
    """Callable form of :func:`random_resize` for sample pipelines.

    Args:
        ratio_range: ``(min, max)`` of the random ratio, ``0 < min <= max``.
        scale: None (ratio × current size), or an int / ``(long, short)`` base scale in pixels (MMCV's
            ``keep_ratio=True`` rule); see :func:`random_resize`.

    Raises:
        ValueError: if ``ratio_range`` or ``scale`` is invalid.

    Call with ``(sample, generator=None)``; returns the resized sample.

    """

    def __init__(self, ratio_range: Sequence[float] = (0.5, 2.0), scale: int | Sequence[int] | None = None) -> None:
        self.ratio_range = _range("ratio_range", ratio_range, 0.0, strict=True)
        self.scale = _check_scale(scale)

    def __call__(self, sample: dict[str, Any], generator: torch.Generator | None = None) -> dict[str, Any]:
        """Resize ``sample``; see :func:`random_resize`."""
        return random_resize(sample, self.ratio_range, generator=generator, scale=self.scale)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(ratio_range={self.ratio_range}, scale={self.scale})"


# --------------------------------------------------------------------------- photometric distortion


def _rgb_to_hsv(rgb: Tensor) -> Tensor:
    """``(3, H, W)`` RGB in [0, 1] → HSV, all three in [0, 1] (hue as a fraction of a turn; 0 for greys)."""
    r, g, b = rgb.unbind(0)
    maxc, _ = rgb.max(0)
    minc, _ = rgb.min(0)
    delta = maxc - minc
    grey = delta <= 0
    safe = torch.where(grey, torch.ones_like(delta), delta)
    s = torch.where(maxc > 0, delta / torch.where(maxc > 0, maxc, torch.ones_like(maxc)), torch.zeros_like(maxc))
    h = torch.where(
        maxc == r,
        ((g - b) / safe) % 6.0,
        torch.where(maxc == g, (b - r) / safe + 2.0, (r - g) / safe + 4.0),
    )
    h = torch.where(grey, torch.zeros_like(h), h / 6.0) % 1.0
    return torch.stack((h, s, maxc))


def _hsv_to_rgb(hsv: Tensor) -> Tensor:
    """Inverse of :func:`_rgb_to_hsv`: ``(3, H, W)`` HSV in [0, 1] → RGB in [0, 1]."""
    h, s, v = hsv.unbind(0)
    h6 = (h % 1.0) * 6.0
    sector = h6.floor()
    f = h6 - sector
    sector = sector.long() % 6
    p = v * (1.0 - s)
    q = v * (1.0 - s * f)
    t = v * (1.0 - s * (1.0 - f))
    # per sector (0..5): which of v, q, p, t is R, G and B
    table = torch.stack(
        (
            torch.stack((v, q, p, p, t, v)),
            torch.stack((t, v, v, q, p, p)),
            torch.stack((p, p, t, v, v, q)),
        )
    )  # (3, 6, H, W)
    index = sector[None, None].expand(3, 1, *sector.shape)
    return table.gather(1, index)[:, 0]


def photometric_distortion(
    sample: dict[str, Any],
    brightness_delta: float = 32 / 255,
    contrast_range: Sequence[float] = (0.5, 1.5),
    saturation_range: Sequence[float] = (0.5, 1.5),
    hue_delta: float = 36.0,
    generator: torch.Generator | None = None,
) -> dict[str, Any]:
    """Random brightness, contrast, saturation and hue (MMSegmentation's ``PhotoMetricDistortion``).

    In mmseg's order, each step applied with probability 0.5 and clamped to [0, 1] after it:

    1. brightness: ``x + β``, ``β ~ U(-brightness_delta, brightness_delta)``;
    2. with probability 0.5, contrast here: ``x · α``, ``α ~ U(contrast_range)`` (mmseg's "contrast" is a plain
       gain, not a blend with the mean);
    3. saturation (RGB only): HSV saturation ``· σ``, ``σ ~ U(saturation_range)``, clamped to [0, 1];
    4. hue (RGB only): HSV hue ``+ θ`` (cyclic), ``θ ~ U(-hue_delta, hue_delta)`` degrees;
    5. otherwise contrast here.

    Images with ``C != 3`` bands (multispectral, RGB + NIR...) get steps 1, 2/5 only, with the same ``β`` and ``α``
    for every band; saturation and hue are defined for RGB only. The mask and the other keys are untouched. Every
    call draws the same 9 numbers from ``generator`` whatever is applied.

    Args:
        sample: ``{"image": (C, H, W) float in [0, 1], ...}``.
        brightness_delta: largest brightness shift, in image units ([0, 1] scale; mmseg: 32 of 255).
        contrast_range: ``(min, max)`` gain, ``0 <= min <= max``.
        saturation_range: ``(min, max)`` saturation factor, ``0 <= min <= max``.
        hue_delta: largest hue rotation in degrees, ``0 <= hue_delta <= 180``. The default 36° reproduces mmseg's
            ``hue_delta=18``, which is in OpenCV's 8-bit hue unit of 2°.
        generator: source of randomness; None for torch's global RNG.

    Returns:
        a new dict whose ``"image"`` is the distorted ``(C, H, W)`` image (same dtype and device), in [0, 1].

    Raises:
        ValueError: if a range or delta is invalid or the image is not 3-D.
        TypeError: if the image is not a floating-point tensor.

    Source:
        MMSegmentation 1.x ``mmseg/datasets/transforms/transforms.py`` (``PhotoMetricDistortion``); its defaults
        ``brightness_delta=32``, ``contrast_range=saturation_range=(0.5, 1.5)``, ``hue_delta=18`` (uint8 units).

    """
    delta = float(brightness_delta)
    if not (math.isfinite(delta) and delta >= 0):
        raise ValueError(f"brightness_delta must be a finite number >= 0, got {brightness_delta!r}")
    c_lo, c_hi = _range("contrast_range", contrast_range, 0.0, strict=False)
    s_lo, s_hi = _range("saturation_range", saturation_range, 0.0, strict=False)
    hue = float(hue_delta)
    if not (math.isfinite(hue) and 0 <= hue <= 180):
        raise ValueError(f"hue_delta must be in [0, 180] degrees, got {hue_delta!r}")
    image = _check_image(sample)

    # coins: brightness, contrast-first mode, contrast, saturation, hue; then the four magnitudes
    draws = torch.rand(9, generator=generator, dtype=torch.float64, device=_device(generator)).tolist()
    do_bright, contrast_first, do_contrast, do_sat, do_hue = (u < 0.5 for u in draws[:5])
    beta = _uniform(draws[5], -delta, delta)
    alpha = _uniform(draws[6], c_lo, c_hi)
    sigma = _uniform(draws[7], s_lo, s_hi)
    theta = _uniform(draws[8], -hue, hue) / 360.0

    x = image if image.dtype in (torch.float32, torch.float64) else image.float()
    if do_bright:
        x = (x + beta).clamp(0.0, 1.0)
    if contrast_first and do_contrast:
        x = (x * alpha).clamp(0.0, 1.0)
    if x.shape[0] == 3 and (do_sat or do_hue):
        hsv = _rgb_to_hsv(x.clamp(0.0, 1.0))
        h, s, v = hsv.unbind(0)
        if do_sat:
            s = (s * sigma).clamp(0.0, 1.0)
        if do_hue:
            h = (h + theta) % 1.0
        x = _hsv_to_rgb(torch.stack((h, s, v))).clamp(0.0, 1.0)
    if not contrast_first and do_contrast:
        x = (x * alpha).clamp(0.0, 1.0)
    return {**sample, "image": x.to(image.dtype)}


class PhotometricDistortion:
    """Callable form of :func:`photometric_distortion` for sample pipelines.

    Args:
        brightness_delta: largest brightness shift in [0, 1] image units (mmseg: 32/255).
        contrast_range: ``(min, max)`` gain.
        saturation_range: ``(min, max)`` saturation factor (RGB only).
        hue_delta: largest hue rotation in degrees (RGB only; 36° = mmseg's ``hue_delta=18``).

    Raises:
        ValueError: if a range or delta is invalid.

    Call with ``(sample, generator=None)``; returns the sample with its image distorted.

    """

    def __init__(
        self,
        brightness_delta: float = 32 / 255,
        contrast_range: Sequence[float] = (0.5, 1.5),
        saturation_range: Sequence[float] = (0.5, 1.5),
        hue_delta: float = 36.0,
    ) -> None:
        self.brightness_delta = float(brightness_delta)
        if not (math.isfinite(self.brightness_delta) and self.brightness_delta >= 0):
            raise ValueError(f"brightness_delta must be a finite number >= 0, got {brightness_delta!r}")
        self.contrast_range = _range("contrast_range", contrast_range, 0.0, strict=False)
        self.saturation_range = _range("saturation_range", saturation_range, 0.0, strict=False)
        self.hue_delta = float(hue_delta)
        if not (math.isfinite(self.hue_delta) and 0 <= self.hue_delta <= 180):
            raise ValueError(f"hue_delta must be in [0, 180] degrees, got {hue_delta!r}")

    def __call__(self, sample: dict[str, Any], generator: torch.Generator | None = None) -> dict[str, Any]:
        """Distort ``sample['image']``; see :func:`photometric_distortion`."""
        return photometric_distortion(
            sample,
            self.brightness_delta,
            self.contrast_range,
            self.saturation_range,
            self.hue_delta,
            generator=generator,
        )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(brightness_delta={self.brightness_delta:.6g}, "
            f"contrast_range={self.contrast_range}, saturation_range={self.saturation_range}, "
            f"hue_delta={self.hue_delta:g})"
        )
