"""Image transforms of the folder datamodules: pretraining, fine-tuning and evaluation.

All take a ``(C, H, W)`` uint8 tensor from :func:`~rsfm.data.io.read_image` and return a
``(C, S, S)`` float32 tensor scaled to [0, 1]; normalisation with the data's mean/std happens
in the model, as for every rsfm sample. They are torchvision v2 transforms, whose randomness
comes from torch's global RNG; the datasets seed it per sample. Geometry runs on uint8
(faster, and values stay in range after bicubic overshoot). torchvision is imported when a
transform is built, not when this module is.

.. versionadded:: 0.1
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor

__all__ = ["check_scale", "eval_transform", "finetune_transform", "moco_v1_transform", "pretrain_transform"]


def check_scale(scale: Any) -> tuple[float, float]:
    """``data.scale``, the crop-area range of a random resized crop, as ``(min, max)``.

    Raises:
        ValueError: naming ``data.scale`` unless it is two numbers with 0 < min <= max <= 1.
    """
    if len(scale) != 2 or not 0 < scale[0] <= scale[1] <= 1:
        raise ValueError(f"data.scale must be [min, max] with 0 < min <= max <= 1, got {list(scale)}")
    return float(scale[0]), float(scale[1])


def _to_float() -> Any:
    import torch
    from torchvision.transforms import v2

    return v2.ToDtype(torch.float32, scale=True)


def _crop_flip(img_size: int, scale: tuple[float, float], hflip: bool, vflip: bool) -> Callable[[Tensor], Tensor]:
    """Random resized crop, optional flips, scale to [0, 1]: the body of the training transforms."""
    from torchvision.transforms import v2

    scale = check_scale(scale)
    steps: list[Any] = [
        v2.RandomResizedCrop(img_size, scale=scale, interpolation=v2.InterpolationMode.BICUBIC, antialias=True)
    ]
    if hflip:
        steps.append(v2.RandomHorizontalFlip())
    if vflip:
        steps.append(v2.RandomVerticalFlip())
    return v2.Compose([*steps, _to_float()])


def pretrain_transform(
    img_size: int, scale: tuple[float, float] = (0.2, 1.0), hflip: bool = True
) -> Callable[[Tensor], Tensor]:
    """MAE's pretraining augmentation: random resized crop (bicubic), horizontal flip.

    Args:
        img_size: output side in pixels.
        scale: range of the crop area as a fraction of the image area (MAE: (0.2, 1.0)).
        hflip: random horizontal flip with probability 0.5.

    Returns:
        a callable mapping ``(C, H, W)`` uint8 to ``(C, img_size, img_size)`` float32 in [0, 1].

    Raises:
        ValueError: if ``scale`` is out of range.

    .. versionadded:: 0.1
    """
    return _crop_flip(img_size, scale, hflip, vflip=False)


def finetune_transform(
    img_size: int, scale: tuple[float, float] = (0.5, 1.0), hflip: bool = True, vflip: bool = True
) -> Callable[[Tensor], Tensor]:
    """Supervised fine-tuning augmentation: random resized crop, flips.

    Overhead imagery has no canonical "up", so a vertical flip is as valid as a horizontal one.

    Args:
        img_size: output side in pixels.
        scale: range of the crop area as a fraction of the image area.
        hflip: random horizontal flip with probability 0.5.
        vflip: random vertical flip with probability 0.5.

    Returns:
        a callable mapping ``(C, H, W)`` uint8 to ``(C, img_size, img_size)`` float32 in [0, 1].

    Raises:
        ValueError: if ``scale`` is out of range.

    .. versionadded:: 0.1
    """
    return _crop_flip(img_size, scale, hflip, vflip)


def eval_transform(img_size: int, crop_pct: float = 1.0) -> Callable[[Tensor], Tensor]:
    """Deterministic evaluation transform: resize, center crop.

    The shorter side is resized to ``int(img_size / crop_pct)`` (bicubic, antialiased), then
    the central ``img_size`` square is kept; ``crop_pct=1`` keeps the whole of a square image.

    Args:
        img_size: output side in pixels.
        crop_pct: fraction of the resized image kept by the center crop, 0 < crop_pct <= 1.

    Returns:
        a callable mapping ``(C, H, W)`` uint8 to ``(C, img_size, img_size)`` float32 in [0, 1].

    Raises:
        ValueError: if ``crop_pct`` is out of range.

    .. versionadded:: 0.1
    """
    from torchvision.transforms import v2

    if not 0 < crop_pct <= 1:
        raise ValueError(f"crop_pct must be in (0, 1], got {crop_pct}")
    return v2.Compose(
        [
            v2.Resize(int(img_size / crop_pct), interpolation=v2.InterpolationMode.BICUBIC, antialias=True),
            v2.CenterCrop(img_size),
            _to_float(),
        ]
    )


def moco_v1_transform(img_size: int, scale: tuple[float, float] = (0.2, 1.0)) -> Callable[[Tensor], Tensor]:
    """MoCo v1's augmentation (He et al., CVPR 2020, §4.1), used by GeRSP for both domains.

    Random resized crop (area ``scale``), grayscale with p 0.2, colour jitter 0.4
    (brightness, contrast, saturation, hue), horizontal flip.

    Returns:
        a callable mapping ``(3, H, W)`` uint8 to ``(3, img_size, img_size)`` float32 in [0, 1].

    Raises:
        ValueError: if ``scale`` is out of range.
    """
    from torchvision.transforms import v2

    scale = check_scale(scale)
    return v2.Compose(
        [
            v2.RandomResizedCrop(img_size, scale=scale, antialias=True),
            v2.RandomGrayscale(p=0.2),
            v2.ColorJitter(0.4, 0.4, 0.4, 0.4),
            v2.RandomHorizontalFlip(),
            _to_float(),
        ]
    )
