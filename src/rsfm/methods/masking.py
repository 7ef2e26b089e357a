"""Token-level building blocks shared by the masked-image-modeling methods.

Small pure functions in the order MAE's algorithm uses them (He et al. 2022, §3):
patchify the image, draw a random mask, gather the kept tokens, and normalise the
per-patch pixel targets.
"""

from __future__ import annotations

import torch

__all__ = [
    "gather_tokens",
    "normalize_patch_targets",
    "patchify",
    "random_token_mask",
    "unpatchify",
]


def patchify(imgs: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Split images into flattened non-overlapping patches.

    Args:
        imgs: ``(B, C, H, W)``, any float dtype; ``H`` and ``W`` multiples of ``patch_size``.
        patch_size: patch side ``p`` in pixels.

    Returns:
        ``(B, N, p·p·C)`` with ``N = (H/p)·(W/p)`` patches in row-major order; each patch is
        flattened as ``(p, p, C)`` (rows, columns, channels), as in the MAE reference.

    Raises:
        ValueError: if ``H`` or ``W`` is not a multiple of ``patch_size``.
    """
    b, c, h, w = imgs.shape
    if h % patch_size or w % patch_size:
        raise ValueError(f"image size {h}x{w} is not a multiple of patch_size {patch_size}")
    gh, gw = h // patch_size, w // patch_size
    x = imgs.reshape(b, c, gh, patch_size, gw, patch_size)
    x = torch.einsum("bchpwq->bhwpqc", x)
    return x.reshape(b, gh * gw, patch_size * patch_size * c)


def unpatchify(patches: torch.Tensor, patch_size: int, grid: tuple[int, int], channels: int = 3) -> torch.Tensor:
    """Inverse of :func:`patchify`.

    Args:
        patches: ``(B, N, p·p·C)`` with ``N = grid[0]·grid[1]``.
        patch_size: patch side ``p`` in pixels.
        grid: patches per column and per row, ``(H/p, W/p)``.
        channels: ``C``.

    Returns:
        ``(B, C, H, W)`` images.
    """
    b = patches.shape[0]
    gh, gw = grid
    x = patches.reshape(b, gh, gw, patch_size, patch_size, channels)
    x = torch.einsum("bhwpqc->bchpwq", x)
    return x.reshape(b, channels, gh * patch_size, gw * patch_size)


def random_token_mask(
    batch_size: int,
    num_tokens: int,
    mask_ratio: float,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    noise: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw MAE's per-sample uniform random mask (He et al. 2022, §3 "Masking").

    ``int(N·(1 − mask_ratio))`` tokens are kept, chosen by the argsort of uniform noise.

    Args:
        batch_size: ``B``.
        num_tokens: ``N`` patches per image.
        mask_ratio: fraction ``m`` of masked tokens, ``0 ≤ m < 1``.
        generator: optional RNG for reproducibility (must live on ``device``).
        device: device of the returned indices.
        noise: ``(B, N)`` float32 uniform draws made beforehand (a compiled step's input);
            None: drawn from ``generator``.

    Returns:
        ``ids_keep`` ``(B, n_keep)`` int64 (kept token indices, in random order) and
        ``ids_masked`` ``(B, N − n_keep)`` int64 (the others).

    Raises:
        ValueError: if ``mask_ratio`` is outside ``[0, 1)``.
    """
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
    n_keep = int(num_tokens * (1 - mask_ratio))
    if noise is None:
        noise = torch.rand(batch_size, num_tokens, generator=generator, device=device)
    order = torch.argsort(noise, dim=1)
    return order[:, :n_keep], order[:, n_keep:]


def gather_tokens(x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Select tokens per sample.

    Args:
        x: ``(B, N, D)`` tokens.
        ids: ``(B, K)`` int64 token indices into ``N``.

    Returns:
        ``(B, K, D)``, ``out[b, k] = x[b, ids[b, k]]``.
    """
    return torch.gather(x, 1, ids.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def normalize_patch_targets(patches: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Normalise each patch by its own mean and variance (MAE's ``norm_pix_loss``, §A.1).

    Args:
        patches: ``(..., p·p·C)`` pixel values.
        eps: added to the variance.

    Returns:
        Same shape: ``(x − mean) / sqrt(var + eps)`` over the last dimension (unbiased var,
        as the MAE reference).
    """
    mean = patches.mean(dim=-1, keepdim=True)
    var = patches.var(dim=-1, keepdim=True)
    return (patches - mean) / (var + eps) ** 0.5
