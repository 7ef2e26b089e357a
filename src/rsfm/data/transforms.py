"""Image transforms for pretraining, fine-tuning and evaluation.

All take a (3, H, W) uint8 tensor from :func:`~rsfm.data.io.read_image` and return a
(3, S, S) float32 tensor normalised with ``(x / 255 - mean) / std``. They are torchvision v2
transforms, whose randomness comes from torch's global RNG; the datasets seed it per sample.
Geometry runs on uint8 (faster, and values stay in range after bicubic overshoot).

.. versionadded:: 0.1
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor
from torchvision.transforms import v2

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "eval_transform",
    "finetune_transform",
    "pretrain_transform",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_BICUBIC = v2.InterpolationMode.BICUBIC


def _normalise(mean: Sequence[float], std: Sequence[float]) -> list[v2.Transform]:
    if len(mean) != 3 or len(std) != 3:
        raise ValueError(f"mean and std need 3 values (R, G, B), got mean={mean}, std={std}")
    if any(s <= 0 for s in std):
        raise ValueError(f"std must be positive, got {std}")
    return [
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean=[float(m) for m in mean], std=[float(s) for s in std]),
    ]


def _crop_flip(
    img_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    scale: tuple[float, float],
    hflip: bool,
    vflip: bool,
) -> Callable[[Tensor], Tensor]:
    """Random resized crop, optional flips, normalise: the body of the training transforms."""
    if not 0 < scale[0] <= scale[1] <= 1:
        raise ValueError(f"scale must satisfy 0 < min <= max <= 1, got {scale}")
    steps: list[v2.Transform] = [v2.RandomResizedCrop(img_size, scale=scale, interpolation=_BICUBIC, antialias=True)]
    if hflip:
        steps.append(v2.RandomHorizontalFlip())
    if vflip:
        steps.append(v2.RandomVerticalFlip())
    return v2.Compose(steps + _normalise(mean, std))


def pretrain_transform(
    img_size: int,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    scale: tuple[float, float] = (0.2, 1.0),
    hflip: bool = True,
) -> Callable[[Tensor], Tensor]:
    """MAE's pretraining augmentation: random resized crop, horizontal flip, normalise.

    Args:
        img_size: output side in pixels.
        mean: per-channel mean of images in [0, 1].
        std: per-channel std of images in [0, 1].
        scale: range of the crop area as a fraction of the image area (MAE: (0.2, 1.0)).
        hflip: random horizontal flip with probability 0.5.

    Returns:
        a callable mapping (3, H, W) uint8 to (3, img_size, img_size) float32, normalised.

    Raises:
        ValueError: if ``mean``/``std`` do not have 3 values or ``scale`` is out of range.

    .. versionadded:: 0.1

    """
    return _crop_flip(img_size, mean, std, scale, hflip, vflip=False)


def finetune_transform(
    img_size: int,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    scale: tuple[float, float] = (0.5, 1.0),
    hflip: bool = True,
    vflip: bool = True,
) -> Callable[[Tensor], Tensor]:
    """Supervised fine-tuning augmentation: random resized crop, flips, normalise.

    Overhead imagery has no canonical "up", so a vertical flip is as valid as a horizontal one.

    Args:
        img_size: output side in pixels.
        mean: per-channel mean of images in [0, 1].
        std: per-channel std of images in [0, 1].
        scale: range of the crop area as a fraction of the image area.
        hflip: random horizontal flip with probability 0.5.
        vflip: random vertical flip with probability 0.5.

    Returns:
        a callable mapping (3, H, W) uint8 to (3, img_size, img_size) float32, normalised.

    Raises:
        ValueError: if ``mean``/``std`` do not have 3 values or ``scale`` is out of range.

    .. versionadded:: 0.1

    """
    return _crop_flip(img_size, mean, std, scale, hflip, vflip)


def eval_transform(
    img_size: int,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    crop_pct: float = 1.0,
) -> Callable[[Tensor], Tensor]:
    """Deterministic evaluation transform: resize, center crop, normalise.

    The shorter side is resized to ``int(img_size / crop_pct)`` (bicubic, antialiased), then
    the central ``img_size`` square is kept; ``crop_pct=1`` keeps the whole of a square image.

    Args:
        img_size: output side in pixels.
        mean: per-channel mean of images in [0, 1].
        std: per-channel std of images in [0, 1].
        crop_pct: fraction of the resized image kept by the center crop, 0 < crop_pct <= 1.

    Returns:
        a callable mapping (3, H, W) uint8 to (3, img_size, img_size) float32, normalised.

    Raises:
        ValueError: if ``crop_pct`` is out of range or ``mean``/``std`` do not have 3 values.

    .. versionadded:: 0.1

    """
    if not 0 < crop_pct <= 1:
        raise ValueError(f"crop_pct must be in (0, 1], got {crop_pct}")
    steps: list[v2.Transform] = [
        v2.Resize(int(img_size / crop_pct), interpolation=_BICUBIC, antialias=True),
        v2.CenterCrop(img_size),
    ]
    return v2.Compose(steps + _normalise(mean, std))
