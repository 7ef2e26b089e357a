"""The default numeric precision of every rsfm trainer."""

from __future__ import annotations

import torch

__all__ = ["default_precision"]


def default_precision(accelerator: str = "auto") -> str:
    """Lightning precision for an accelerator setting when the recipe leaves it unset.

    bf16 autocast on a CUDA GPU that supports it (fp16 autocast on older ones), full fp32
    on the CPU.

    Args:
        accelerator: the trainer's ``accelerator`` (``auto``, ``gpu``, ``cuda``, ``cpu``...).

    Returns:
        ``bf16-mixed``, ``16-mixed`` or ``32-true``.
    """
    if accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "32-true"
