"""Per-channel mean and std of an image folder, for the ``mean``/``std`` of a config.

.. versionadded:: 0.1
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import numpy as np

from .folder import ImageFolder
from .io import BadImageError, RasterRule, UnsupportedImageError, read_image_masked
from .skips import SkipReport

__all__ = ["compute_mean_std", "format_stats"]

log = logging.getLogger(__name__)


def compute_mean_std(
    root: str | os.PathLike[str],
    raster: RasterRule = RasterRule(),  # noqa: B008 (frozen, immutable)
    max_images: int | None = None,
    seed: int = 0,
    report: SkipReport | None = None,
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of the pixels, scaled to [0, 1], of the images in a folder.

    Images are read one at a time (as :class:`~rsfm.data.folder.ImageFolder` would, with
    ``raster``) and reduced to a per-channel histogram of their 8-bit values, from which the
    sums of values and of squares are exact integers: memory does not grow with the folder and
    the result does not depend on the order. Every
    pixel counts the same (larger images weigh more). The std is the population std. Nodata
    pixels of TIFF/GeoTIFF rasters (a declared nodata value, an internal mask, NaN) are left
    out (:func:`~rsfm.data.io.read_image_masked`): they are 0 in the images, not data.

    Args:
        root: folder of images, at any depth.
        raster: how files become uint8 images (3 bands, or the ``raster.bands`` selected).
        max_images: use a random subset of this many images (seeded by ``seed``); None = all.
        seed: seed of the subset.
        report: if given, receives the skipped files (scan-time and unreadable), which are
            also logged as a one-line summary.

    Returns:
        mean: one float per channel (R, G, B, or the selected bands).
        std: one float per channel.

    Raises:
        FileNotFoundError: if ``root`` is missing or holds no image.
        ValueError: if ``max_images`` < 1 or no image could be read.
        UnsupportedImageError: naming the file, if it lacks a band of ``raster.bands``
            (unreadable files are skipped and counted).

    .. versionadded:: 0.1

    """
    if max_images is not None and max_images < 1:
        raise ValueError(f"max_images must be >= 1 or None, got {max_images}")
    dataset = ImageFolder(root, raster=raster)
    skipped = SkipReport(dataset.scan_skipped)
    indices = np.arange(len(dataset))
    if max_images is not None and max_images < len(dataset):
        rng = np.random.default_rng(seed)
        indices = np.sort(rng.choice(len(dataset), size=max_images, replace=False))

    # numpy, not torch: torch's thread pool costs milliseconds per small image on a busy host
    channels = len(raster.bands) if raster.bands is not None else 3
    histogram = np.zeros((channels, 256), dtype=np.int64)
    for i in indices:
        path = dataset.samples[int(i)]
        try:
            image, nodata = read_image_masked(path, raster)
        except UnsupportedImageError:
            raise  # a band the setting asks for is missing: a setting to fix, as in training
        except BadImageError as err:
            skipped.add([(str(path), err.reason)])
            continue
        pixels = image.numpy().reshape(channels, -1)
        valid = None if nodata is None else ~nodata.reshape(channels, -1)
        for channel, values in enumerate(pixels):
            # nodata pixels (read as 0) are no data: left out, as NaN would be
            histogram[channel] += np.bincount(values if valid is None else values[valid[channel]], minlength=256)
    if skipped.total:
        log.warning("%s under %s", skipped.summary(), root)
    if report is not None:
        report.merge(skipped)
    pixels = histogram.sum(axis=1)  # per channel: nodata pixels may differ between bands
    if int(pixels.min()) == 0:
        raise ValueError(f"No readable image (or only nodata pixels) under {root} ({skipped.summary()})")

    levels = np.arange(256, dtype=np.int64)
    total = histogram @ levels  # exact integer sums
    total_sq = histogram @ (levels * levels)
    mean = total / (pixels * 255.0)
    mean_sq = total_sq / (pixels * 255.0**2)
    std = np.sqrt(np.maximum(mean_sq - mean * mean, 0.0))
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


def format_stats(mean: Sequence[float], std: Sequence[float]) -> str:
    """Format statistics as YAML lines, 4 decimals.

    Args:
        mean: per-channel mean.
        std: per-channel std.

    Returns:
        two lines, ``mean: [0.3977, 0.4093, 0.3689]`` and ``std: [0.2002, 0.1826, 0.1813]``.

    .. versionadded:: 0.1

    """

    def fmt(values: Sequence[float]) -> str:
        return "[" + ", ".join(f"{v:.4f}" for v in values) + "]"

    return f"mean: {fmt(mean)}\nstd: {fmt(std)}"
