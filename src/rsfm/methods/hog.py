"""Histograms of oriented gradients computed with convolutions, and per-patch richness scores.

SelectiveMAE ranks patches by the richness of their HOG features (Wang et al., arXiv 2406.11933,
following MaskFeat's convolutional HOG). Everything here runs under ``torch.no_grad`` in
float32, whatever autocast is active, because the scores only steer token selection.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

__all__ = [
    "gaussian_window",
    "gradient_energy",
    "hog_cell_histograms",
    "hog_features",
    "hog_score",
    "image_gradients",
]

_KERNELS = {
    # Sobel as MaskFeat / SelectiveMAE (Wang et al., arXiv 2406.11933); cross-correlation, so gx = left − right.
    "sobel": ([[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]]),
    # Central difference as skimage.feature.hog (right − left); used to test against it.
    "central": ([[0.0, 0.0, 0.0], [-1.0, 0.0, 1.0], [0.0, 0.0, 0.0]]),
}


def _cached_outside_compile(build):  # noqa: ANN001, ANN202
    """Cache ``build``'s constant tensors per arguments, except while ``torch.compile`` traces.

    Building them every step from Python lists would copy host-to-device synchronously and
    stall an asynchronous GPU pipeline; a compiled step builds them in its graph instead (a
    constant there), since the compiler does not trace through caches.
    """
    cached = functools.cache(build)

    @functools.wraps(build)
    def get(*args):  # noqa: ANN002, ANN202
        return build(*args) if torch.compiler.is_compiling() else cached(*args)

    return get


@_cached_outside_compile
def _gradient_weight(kernel: str, channels: int, device: torch.device) -> torch.Tensor:
    kx = torch.tensor(_KERNELS[kernel], dtype=torch.float32)
    return torch.stack([kx, kx.t()]).unsqueeze(1).repeat(channels, 1, 1, 1).to(device)  # (2C, 1, 3, 3)


def image_gradients(imgs: torch.Tensor, kernel: str = "sobel") -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel horizontal and vertical gradients with reflect padding of 1 pixel.

    Args:
        imgs: ``(B, C, H, W)`` float images (any normalisation).
        kernel: ``sobel`` (``Kx = [[1,0,-1],[2,0,-2],[1,0,-1]]``, ``Ky = Kxᵀ``) or
            ``central`` (``[-1, 0, 1]``).

    Returns:
        ``gx, gy``: each ``(B, C, H, W)`` float32.

    Raises:
        ValueError: on an unknown kernel name.
    """
    if kernel not in _KERNELS:
        raise ValueError(f"unknown gradient kernel {kernel!r}; expected one of {sorted(_KERNELS)}")
    x = imgs.float()
    c = x.shape[1]
    weight = _gradient_weight(kernel, c, x.device)
    padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
    g = F.conv2d(padded, weight, groups=c)  # (B, 2C, H, W): [gx_c0, gy_c0, gx_c1, ...]
    return g[:, 0::2], g[:, 1::2]


def gaussian_window(size: int, sigma: float, device: torch.device | None = None) -> torch.Tensor:
    """Un-normalised 2-D Gaussian window, peak ≈ 1 at the centre (as ``scipy.signal.gaussian``).

    Args:
        size: window side in pixels.
        sigma: standard deviation in pixels.
        device: device of the result.

    Returns:
        ``(size, size)`` float32.
    """
    n = torch.arange(size, dtype=torch.float32, device=device) - (size - 1) / 2.0
    w = torch.exp(-0.5 * (n / sigma) ** 2)
    return torch.outer(w, w)


@_cached_outside_compile
def _tiled_window(window: int, h: int, w: int, device: torch.device) -> torch.Tensor:
    # The Gaussian of one patch (σ = window/2) tiled over the image.
    return gaussian_window(window, window / 2.0, device=device).repeat(h // window, w // window)


def _weighted_magnitude(
    imgs: torch.Tensor, window: int | None, kernel: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gx, gy = image_gradients(imgs, kernel)
    mag = torch.sqrt(gx * gx + gy * gy)
    if window is not None:
        h, w = mag.shape[-2:]
        if h % window or w % window:
            raise ValueError(f"image size {h}x{w} is not a multiple of the Gaussian window {window}")
        mag = mag * _tiled_window(window, h, w, mag.device)
    return gx, gy, mag


@torch.no_grad()
def hog_cell_histograms(
    imgs: torch.Tensor,
    cell_size: int = 8,
    nbins: int = 9,
    window: int | None = None,
    kernel: str = "sobel",
) -> torch.Tensor:
    """Un-normalised HOG cell histograms (Wang et al., arXiv 2406.11933; MaskFeat, Wei et al. 2022, §3).

    Each pixel votes its gradient magnitude into one of ``nbins`` unsigned orientation bins
    over [0°, 180°) (hard assignment, bin ``i`` covers ``[i·180/nbins, (i+1)·180/nbins)``);
    votes are summed over ``cell_size × cell_size`` cells, per channel.

    Args:
        imgs: ``(B, C, H, W)`` float images; ``H``, ``W`` multiples of ``cell_size``.
        cell_size: cell side in pixels.
        nbins: orientation bins.
        window: if given, magnitudes are weighted by a Gaussian of this side (σ = window/2)
            tiled over the image, once per patch (use the patch size, as SelectiveMAE).
        kernel: gradient kernel, see :func:`image_gradients`.

    Returns:
        ``(B, C, nbins, H/cell_size, W/cell_size)`` float32 sums of (weighted) magnitudes.

    Raises:
        ValueError: if the image size is not a multiple of ``cell_size`` or ``window``.
    """
    b, c, h, w = imgs.shape
    if h % cell_size or w % cell_size:
        raise ValueError(f"image size {h}x{w} is not a multiple of cell_size {cell_size}")
    with torch.autocast(device_type=imgs.device.type, enabled=False):
        gx, gy, mag = _weighted_magnitude(imgs, window, kernel)
        phase = torch.remainder(torch.atan2(gy, gx), math.pi)  # unsigned, radians in [0, π)
        bins = torch.clamp((phase * (nbins / math.pi)).floor().long(), max=nbins - 1)
        votes = torch.zeros(b, c, nbins, h, w, dtype=torch.float32, device=imgs.device)
        votes.scatter_(2, bins.unsqueeze(2), mag.unsqueeze(2))
        return F.avg_pool2d(votes.view(b, c * nbins, h, w), cell_size).view(
            b, c, nbins, h // cell_size, w // cell_size
        ) * float(cell_size * cell_size)


@torch.no_grad()
def hog_features(
    imgs: torch.Tensor, patch_size: int, cell_size: int = 8, nbins: int = 9, kernel: str = "sobel"
) -> torch.Tensor:
    """Per-patch HOG descriptors, L2-normalised per cell and channel (Wang et al., arXiv 2406.11933).

    Args:
        imgs: ``(B, C, H, W)`` float images; ``H``, ``W`` multiples of ``patch_size``, which
            is a multiple of ``cell_size``.
        patch_size: patch side ``p`` in pixels; also the Gaussian window.
        cell_size: cell side in pixels.
        nbins: orientation bins.
        kernel: gradient kernel.

    Returns:
        ``(B, N, (p/cell_size)²·C·nbins)`` float32 (108 values for p = 16, RGB, 9 bins),
        patches in row-major order; within a patch the layout is (cell row, cell column,
        channel, bin).

    Raises:
        ValueError: if ``patch_size`` is not a multiple of ``cell_size``.
    """
    if patch_size % cell_size:
        raise ValueError(f"patch_size {patch_size} is not a multiple of cell_size {cell_size}")
    hist = hog_cell_histograms(imgs, cell_size, nbins, window=patch_size, kernel=kernel)
    hist = F.normalize(hist, p=2.0, dim=2)
    b, c, nb, hc, wc = hist.shape
    k = patch_size // cell_size
    x = hist.view(b, c, nb, hc // k, k, wc // k, k)
    x = x.permute(0, 3, 5, 4, 6, 1, 2)  # (B, gh, gw, k, k, C, nbins)
    return x.reshape(b, (hc // k) * (wc // k), k * k * c * nb)


@torch.no_grad()
def gradient_energy(imgs: torch.Tensor, patch_size: int, kernel: str = "sobel") -> torch.Tensor:
    """Total Gaussian-weighted gradient magnitude of each patch (rsfm's ``energy`` score).

    Equals the sum of a patch's un-normalised HOG histograms over cells, channels and bins
    (every pixel votes its magnitude into exactly one bin), at a fraction of the cost.

    Args:
        imgs: ``(B, C, H, W)`` float images.
        patch_size: patch side ``p`` in pixels; also the Gaussian window.
        kernel: gradient kernel.

    Returns:
        ``(B, N)`` float32, patches in row-major order.
    """
    with torch.autocast(device_type=imgs.device.type, enabled=False):
        _, _, mag = _weighted_magnitude(imgs, patch_size, kernel)
        energy = F.avg_pool2d(mag.sum(dim=1, keepdim=True), patch_size) * float(patch_size * patch_size)
        return energy.flatten(1)


@torch.no_grad()
def hog_score(imgs: torch.Tensor, patch_size: int, kind: str = "energy") -> torch.Tensor:
    """Semantic-richness score per patch (Wang et al., arXiv 2406.11933).

    Args:
        imgs: ``(B, C, H, W)`` float images.
        patch_size: patch side in pixels.
        kind: ``energy`` (rsfm default: total gradient energy, :func:`gradient_energy`) or
            ``official`` (the released SelectiveMAE code: the mean of the patch's HOG
            descriptor after standardising it to zero mean and unit variance, which is 0 up
            to rounding, so that any selection driven by it is uniform).

    Returns:
        ``(B, N)`` float32 scores; higher is richer.

    Raises:
        ValueError: on an unknown ``kind``.
    """
    if kind == "energy":
        return gradient_energy(imgs, patch_size)
    if kind == "official":
        feats = hog_features(imgs, patch_size)
        std = feats.std(dim=-1, keepdim=True)
        standardised = (feats - feats.mean(dim=-1, keepdim=True)) / (std + 1e-6)
        return standardised.mean(dim=-1)
    raise ValueError(f"unknown hog_score {kind!r}; expected 'energy' or 'official'")
