"""Exclusion rules of a curation run: what each measures, its threshold, and the hook for more.

Every tile of a corpus is measured once (:func:`measure_tile`) and the quality rules run in a
fixed order; the first that fires names the tile's exclusion in the manifest and the report.
Whole files are excluded before slicing by ``unreadable``, ``unsupported_bands`` and
``too_small``; after the quality rules, deduplication adds ``eval_overlap``,
``exact_duplicate``, ``near_duplicate`` and ``embedding_duplicate``
(:mod:`rsfm.curation.dedup`).

The built-in quality rules, in order:

``nodata``
    share of pixels that are nodata (the raster's mask: nodata value, alpha or internal mask)
    or zero in every band, above ``max_nodata_fraction``.
``saturated``
    share of pixels at or above 250 in every band, above ``max_saturated_fraction``.
``dark``
    mean grey level (0-255) of the valid pixels below ``min_brightness``.
``blank``
    standard deviation of the grey level (0-255) below ``blank_std``: a constant tile.
``low_information``
    gradient energy per pixel below ``min_energy`` (rsfm's HOG energy,
    :func:`rsfm.methods.hog.gradient_energy`, the score SelectiveMAE selects tokens with) or
    grey-level entropy below ``min_entropy`` bits: smooth or nearly flat tiles with no
    structure to learn from.
custom
    any :class:`CurationRule` subclass named in the recipe (``rules.custom``).

.. versionadded:: 0.3
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "DEDUP_RULES",
    "FILE_RULES",
    "QUALITY_RULES",
    "CurationRule",
    "QualityThresholds",
    "TileMeasures",
    "check_quality",
    "measure_tile",
]

#: rules that exclude a whole file before slicing
FILE_RULES = ("unreadable", "unsupported_bands", "too_small")
#: built-in quality rules, in the order they are tried
QUALITY_RULES = ("nodata", "saturated", "dark", "blank", "low_information")
#: deduplication rules, in the order they are applied
DEDUP_RULES = ("eval_overlap", "exact_duplicate", "near_duplicate", "embedding_duplicate")


@dataclass
class TileMeasures:
    """What the quality rules look at, measured once per tile.

    Attributes:
        height: tile height, pixels.
        width: tile width, pixels.
        nodata_fraction: share of pixels that are nodata or zero in every band, in [0, 1].
        saturated_fraction: share of pixels >= 250 in every band, in [0, 1].
        brightness: mean grey level of the valid pixels, 0-255 (0 when none is valid).
        grey_std: standard deviation of the grey level of the valid pixels, 0-255.
        energy: mean gradient energy per pixel of the grey tile in [0, 1] (HOG energy).
        entropy: Shannon entropy of the 8-bit grey histogram of the valid pixels, bits.
        band_mean: per-band mean, 0-255, of the valid pixels.
        band_std: per-band standard deviation, 0-255.
        band_min: per-band minimum.
        band_max: per-band maximum.
    """

    height: int
    width: int
    nodata_fraction: float
    saturated_fraction: float
    brightness: float
    grey_std: float
    energy: float
    entropy: float
    band_mean: list[float] = field(default_factory=list)
    band_std: list[float] = field(default_factory=list)
    band_min: list[int] = field(default_factory=list)
    band_max: list[int] = field(default_factory=list)


def _grey(tile: np.ndarray) -> np.ndarray:
    """``(C, H, W)`` uint8 → ``(H, W)`` float32 grey level 0-255 (ITU-R 601 luma for 3 bands, mean otherwise)."""
    x = tile.astype(np.float32)
    if x.shape[0] == 3:
        return 0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2]
    return x.mean(axis=0)


def measure_tile(tile: np.ndarray, invalid: np.ndarray | None = None, energy_patch: int = 16) -> TileMeasures:
    """Measure a tile for the quality rules.

    Args:
        tile: ``(C, H, W)`` uint8 pixels after the input's band rule.
        invalid: ``(H, W)`` bool, True where the raster says nodata (None: no mask).
        energy_patch: side of the Gaussian window of the gradient energy, pixels.

    Returns:
        The tile's :class:`TileMeasures`.

    Raises:
        ValueError: if ``tile`` is not ``(C, H, W)`` uint8.
    """
    import torch

    from rsfm.methods.hog import gradient_energy

    if tile.dtype != np.uint8 or tile.ndim != 3:
        raise ValueError(f"tiles are (C, H, W) uint8, got {tile.dtype} {tile.shape}")
    c, h, w = tile.shape
    bad = ~np.any(tile, axis=0)
    if invalid is not None:
        bad |= invalid
    grey = _grey(tile)
    flat = tile.reshape(c, -1)
    if bad.any():
        keep = np.flatnonzero(~bad.ravel())
        flat, g = flat[:, keep], grey.ravel()[keep]
    else:
        g = grey.ravel()
    n_valid = int(g.size)
    if n_valid:
        brightness, grey_std = float(g.mean()), float(g.std())
        hist = np.bincount(np.rint(g).astype(np.uint8).ravel(), minlength=256).astype(np.float64)
        p = hist[hist > 0] / n_valid
        entropy = float(-(p * np.log2(p)).sum())
        f = flat.astype(np.float32)
        mean = f.mean(axis=1, dtype=np.float64)
        band_mean = mean.tolist()
        band_std = np.sqrt(np.maximum((f * f).mean(axis=1, dtype=np.float64) - mean * mean, 0.0)).tolist()
        band_min = flat.min(axis=1).astype(int).tolist()
        band_max = flat.max(axis=1).astype(int).tolist()
    else:
        brightness = grey_std = entropy = 0.0
        band_mean = band_std = [0.0] * c
        band_min = band_max = [0] * c
    patch = max(2, min(energy_patch, h, w))
    hh, ww = (h // patch) * patch, (w // patch) * patch
    if hh * ww == 0:
        energy = 0.0  # a 1-pixel-wide tile has no 2x2 cell to take a gradient over
    else:
        with torch.no_grad():
            g = torch.from_numpy(np.ascontiguousarray(grey[:hh, :ww] / 255.0))[None, None]
            energy = float(gradient_energy(g, patch).sum()) / float(hh * ww)
    return TileMeasures(
        height=int(h),
        width=int(w),
        nodata_fraction=float(bad.mean()),
        saturated_fraction=float((tile.min(axis=0) >= 250).mean()),
        brightness=brightness,
        grey_std=grey_std,
        energy=energy,
        entropy=entropy,
        band_mean=[float(v) for v in band_mean],
        band_std=[float(v) for v in band_std],
        band_min=band_min,
        band_max=band_max,
    )


@dataclass
class QualityThresholds:
    """Thresholds of the built-in quality rules (the recipe's ``rules`` section).

    Attributes:
        max_nodata_fraction: ``nodata`` fires above this share, in [0, 1].
        blank_std: ``blank`` fires below this grey-level standard deviation (0-255).
        max_saturated_fraction: ``saturated`` fires above this share, in [0, 1].
        min_brightness: ``dark`` fires below this mean grey level (0-255).
        min_energy: ``low_information`` fires below this gradient energy per pixel.
        min_entropy: ``low_information`` fires below this grey-level entropy, bits (0-8).
        disable: names of built-in rules to switch off.
        custom: extra rules (:class:`CurationRule` subclasses), tried after the built-in ones.
    """

    max_nodata_fraction: float = 0.5
    blank_std: float = 2.0
    max_saturated_fraction: float = 0.5
    min_brightness: float = 12.0
    min_energy: float = 0.025
    min_entropy: float = 3.0
    disable: list[str] = field(default_factory=list)
    custom: list[CurationRule] = field(default_factory=list)

    def __post_init__(self) -> None:
        for name in ("max_nodata_fraction", "max_saturated_fraction"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"rules.{name} must be in [0, 1], got {value}")
        if not 0.0 <= self.min_entropy <= 8.0:
            raise ValueError(f"rules.min_entropy must be in [0, 8] bits, got {self.min_entropy}")
        for name in ("blank_std", "min_brightness", "min_energy"):
            if getattr(self, name) < 0:
                raise ValueError(f"rules.{name} must be >= 0, got {getattr(self, name)}")
        unknown = [r for r in self.disable if r not in QUALITY_RULES]
        if unknown:
            raise ValueError(f"rules.disable: unknown rule(s) {unknown}; built-in rules are {list(QUALITY_RULES)}")
        names = [r.name for r in self.custom]
        clash = [n for n in names if n in QUALITY_RULES + FILE_RULES + DEDUP_RULES or names.count(n) > 1]
        if clash:
            raise ValueError(f"rules.custom: rule names must be unique and not built-in, got {sorted(set(clash))}")


class CurationRule(abc.ABC):
    """A user rule: excludes a tile when :meth:`__call__` returns True.

    Subclass it, give it a ``name`` (the manifest's ``rule`` and the report's row) and name
    it in the recipe::

        rules:
          custom:
            - class_path: my_package.CloudyRule
              init_args: {max_white: 0.3}

    Rules run in the curation workers, so they must be picklable (plain attributes).

    .. versionadded:: 0.3
    """

    #: the rule's name in the manifest and the report
    name: str = "custom"

    @abc.abstractmethod
    def __call__(self, tile: np.ndarray, measures: TileMeasures, info: dict[str, Any]) -> bool:
        """Whether to exclude this tile.

        Args:
            tile: ``(C, H, W)`` uint8 pixels after the band rule.
            measures: the tile's :class:`TileMeasures`.
            info: ``{'source': str, 'input': str, 'window': (x, y, width, height) pixels,
                'crs': str | None, 'transform': list[float] | None}``.
        """


def check_quality(
    tile: np.ndarray, measures: TileMeasures, thresholds: QualityThresholds, info: dict[str, Any]
) -> str | None:
    """The first quality rule that excludes a tile, or None to keep it.

    Args:
        tile: ``(C, H, W)`` uint8 pixels.
        measures: its :class:`TileMeasures`.
        thresholds: the rules' settings.
        info: the tile's context, passed to custom rules (see :class:`CurationRule`).

    Returns:
        A rule name from :data:`QUALITY_RULES` or a custom rule's ``name``; None if none fires.
    """
    off = set(thresholds.disable)
    m, t = measures, thresholds
    checks = (
        ("nodata", m.nodata_fraction > t.max_nodata_fraction),
        ("saturated", m.saturated_fraction > t.max_saturated_fraction),
        ("dark", m.brightness < t.min_brightness),
        ("blank", m.grey_std < t.blank_std),
        ("low_information", m.energy < t.min_energy or m.entropy < t.min_entropy),
    )
    for name, fired in checks:
        if fired and name not in off:
            return name
    for rule in t.custom:
        if rule(tile, m, info):
            return rule.name
    return None
