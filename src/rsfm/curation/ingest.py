"""Reading the inputs of a curation run: listing files, slicing them into windows, reading tiles.

TIFF and GeoTIFF files (and anything else GDAL opens through rasterio) are read window by
window, so a 30,000-pixel scene never sits in memory whole; other formats (JPEG, PNG, BMP,
WEBP) are decoded whole by :func:`rsfm.data.io.read_image`. The band rule and the 8-bit
scaling are those of ``rsfm pretrain`` (:class:`~rsfm.data.io.RasterRule`), with one
difference for sliced rasters that need a percentile stretch: the percentiles are taken
once over the whole scene (from a decimated read of at most ``STRETCH_SIDE`` pixels a side),
not per tile, so neighbouring tiles keep the same radiometry. The bounds are recorded in
the manifest (``stretch_low``/``stretch_high``), so :func:`read_tile` re-reads any tile from
its source exactly.

.. versionadded:: 0.3
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rsfm.data.io import (
    BadImageError,
    RasterRule,
    raster_band_indexes,
    read_image,
    scale_to_uint8,
)

__all__ = ["STRETCH_SIDE", "OpenedSource", "SourceFile", "Tiling", "read_tile", "tile_windows"]

#: longest side of the decimated read that scene-wide percentiles are taken from, pixels
STRETCH_SIDE = 1024
_TIFF = (".tif", ".tiff")


@dataclass(frozen=True)
class Tiling:
    """How images are cut into tiles (the recipe's ``tiling`` section).

    An image whose sides are both at most ``max_size`` is kept whole (one tile); a larger one
    is cut into ``tile_size`` windows: along each side, the fewest windows that cover it with
    at least ``overlap`` pixels shared by neighbours, spread evenly from edge to edge. Every
    pixel is covered, every tile has the full size (a side shorter than ``tile_size`` gives
    tiles of that side), and no thin strip at the edge yields a tile that nearly repeats its
    neighbour. Images with a side below ``min_size`` are excluded (``too_small``).

    Attributes:
        tile_size: tile side, pixels (OpticalRS-13M: tiles between 64 and 1024 px).
        overlap: pixels shared by neighbouring tiles, 0 <= overlap < tile_size.
        max_size: largest side of an image kept whole, pixels (>= tile_size).
        min_size: smallest side accepted, pixels.

    Raises:
        ValueError: on inconsistent sizes.
    """

    tile_size: int = 512
    overlap: int = 0
    max_size: int = 1024
    min_size: int = 64

    def __post_init__(self) -> None:
        if not 1 <= self.min_size <= self.tile_size:
            raise ValueError(f"tiling.min_size must be in [1, tile_size={self.tile_size}], got {self.min_size}")
        if not 0 <= self.overlap < self.tile_size:
            raise ValueError(f"tiling.overlap must be in [0, tile_size={self.tile_size}), got {self.overlap}")
        if self.max_size < self.tile_size:
            raise ValueError(f"tiling.max_size must be >= tile_size={self.tile_size}, got {self.max_size}")


def _starts(length: int, tile: int, overlap: int) -> list[int]:
    """Window starts along one side: the fewest windows sharing >= ``overlap`` pixels, spread evenly."""
    if length <= tile:
        return [0]
    n = math.ceil((length - overlap) / (tile - overlap))
    return [round(i * (length - tile) / (n - 1)) for i in range(n)]


def tile_windows(height: int, width: int, tiling: Tiling) -> list[tuple[int, int, int, int]]:
    """Windows ``(x, y, width, height)`` in pixels of an image, row-major.

    Args:
        height: image height, pixels.
        width: image width, pixels.
        tiling: the tiling rule.

    Returns:
        ``[(0, 0, width, height)]`` for an image kept whole, else the tiles' windows.
    """
    if max(height, width) <= tiling.max_size:
        return [(0, 0, width, height)]
    t = tiling.tile_size
    th, tw = min(t, height), min(t, width)
    return [(x, y, tw, th) for y in _starts(height, t, tiling.overlap) for x in _starts(width, t, tiling.overlap)]


@dataclass(frozen=True)
class SourceFile:
    """One input file.

    Attributes:
        input: name of the input (folder) it belongs to.
        path: absolute path.
        source: path relative to the input's root, posix style (the manifest's ``source``).
        group: split group: the first component of ``source`` ('' for a file directly in the
            root), prefixed by ``'<input>/'`` when the run has several inputs.
        size: file size, bytes (-1: unknown).
    """

    input: str
    path: str
    source: str
    group: str
    size: int = -1


def _stored_dtype(path: Path) -> str:
    """The sample type a non-TIFF image file stores (``'uint8'``, ``'uint16'``, ...), from its header.

    A PNG's bit depth is read from its IHDR chunk (PIL reports 16-bit RGB PNGs as 8-bit
    ``RGB``); other formats from PIL's mode. Anything unrecognised counts as ``'uint8'``, the
    only depth those formats store.
    """
    from PIL import Image

    with open(path, "rb") as f:
        head = f.read(33)
    if head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR":
        return "uint16" if head[24] == 16 else "uint8"
    try:
        with Image.open(path) as im:
            mode = im.mode
    except OSError:
        return "uint8"
    return {"I;16": "uint16", "I;16B": "uint16", "I;16L": "uint16", "I": "int32", "F": "float32"}.get(mode, "uint8")


class OpenedSource:
    """An input file opened for tiling: size, georeference, windowed reads, a thumbnail.

    Use as a context manager. Rasters stay open and are read per window; other formats are
    decoded once.

    Args:
        path: the file.
        rule: band and scaling rule.

    Raises:
        BadImageError: if the file cannot be read (``reason`` as :func:`~rsfm.data.io.read_image`).
        UnsupportedImageError: if its bands have no interpretation under ``rule``.
    """

    def __init__(self, path: str | os.PathLike[str], rule: RasterRule) -> None:
        self.path = Path(path)
        self.rule = rule
        self._src: Any = None
        self._array: np.ndarray | None = None
        #: CRS as WKT-free text (``EPSG:xxxx`` when it has a code, else WKT), None if not georeferenced
        self.crs: str | None = None
        #: the file's affine transform ``[a, b, c, d, e, f]`` (pixel → CRS), None if not georeferenced
        self.transform: list[float] | None = None
        self.dtype = "uint8"
        #: per selected band ``(low, high)`` of the scene-wide stretch, None when not stretched by percentiles
        self.stretch: list[tuple[float, float]] | None = None
        if self.path.suffix.lower() in _TIFF:
            self._open_raster()
        else:
            image = read_image(self.path, rule).numpy()
            self._array = image
            self.height, self.width = int(image.shape[1]), int(image.shape[2])
            self.channels = int(image.shape[0])
            self.dtype = _stored_dtype(self.path)

    # -- rasters ------------------------------------------------------------------------------

    def _open_raster(self) -> None:
        import rasterio
        import rasterio.errors
        from rasterio.enums import ColorInterp

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
                self._src = rasterio.open(self.path)
        except rasterio.errors.RasterioIOError as err:
            msg = str(err)
            reason = "not_an_image" if "not recognized" in msg or "not a supported" in msg.lower() else "unreadable"
            raise BadImageError(self.path, reason, f"cannot open raster ({msg})") from err
        src = self._src
        interp = list(src.colorinterp)
        if src.count == 1 and interp[0] == ColorInterp.palette:
            # a colour-mapped raster: decoded once with its colours, as read_image gives them
            if src.crs is not None:
                epsg = src.crs.to_epsg()
                self.crs = f"EPSG:{epsg}" if epsg else src.crs.to_wkt()
                self.transform = [float(v) for v in tuple(src.transform)[:6]]
            src.close()
            self._src = None
            image = read_image(self.path, self.rule).numpy()
            self._array = image
            self.height, self.width, self.channels = int(image.shape[1]), int(image.shape[2]), int(image.shape[0])
            return
        has_alpha = src.count in (2, 4) and interp[-1] == ColorInterp.alpha
        try:
            self.indexes = raster_band_indexes(src.count, self.rule, self.path, has_alpha)
        except BadImageError:
            src.close()
            raise
        self.height, self.width = int(src.height), int(src.width)
        self.dtype = str(src.dtypes[self.indexes[0]])
        self.gray_to_rgb = len(self.indexes) == 1 and self.rule.bands is None
        self.channels = 3 if self.gray_to_rgb else len(self.indexes)
        if src.crs is not None:
            epsg = src.crs.to_epsg()
            self.crs = f"EPSG:{epsg}" if epsg else src.crs.to_wkt()
            self.transform = [float(v) for v in tuple(src.transform)[:6]]
        if self.dtype != "uint8" and isinstance(self.rule.scale, str):
            self.stretch = self._scene_percentiles()

    def _masked(self, window: Any = None, out_shape: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        import rasterio.errors

        bands = [i + 1 for i in self.indexes]
        try:
            shape = None if out_shape is None else (len(bands), *out_shape)
            data = self._src.read(bands, window=window, out_shape=shape, masked=True)
        except rasterio.errors.RasterioIOError as err:
            raise BadImageError(self.path, "truncated", f"raster data cannot be read ({err})") from err
        return np.ma.getdata(data), np.ma.getmaskarray(data)

    def _scene_percentiles(self) -> list[tuple[float, float]]:
        scale = min(1.0, STRETCH_SIDE / max(self.height, self.width))
        shape = (max(1, round(self.height * scale)), max(1, round(self.width * scale)))
        data, mask = self._masked(out_shape=shape)
        bounds = []
        for c in range(data.shape[0]):
            band = data[c].astype(np.float64)
            valid = band[~mask[c] & np.isfinite(band)]
            if valid.size == 0:
                bounds.append((0.0, 0.0))
            else:
                lo, hi = np.percentile(valid, self.rule.percentiles)
                bounds.append((float(lo), float(hi)))
        return bounds

    def _to_uint8(self, data: np.ndarray, mask: np.ndarray) -> np.ndarray:
        if self.stretch is None:
            out = scale_to_uint8(data, self.rule, mask)
        else:
            x = data.astype(np.float32)
            out_f = np.zeros(x.shape, dtype=np.float32)
            for c, (lo, hi) in enumerate(self.stretch):
                if hi > lo:
                    out_f[c] = (x[c] - lo) / (hi - lo)
            out_f = np.clip(out_f, 0.0, 1.0) * 255.0
            out_f[mask | ~np.isfinite(x)] = 0.0
            out = np.rint(out_f).astype(np.uint8)
        if self.gray_to_rgb:
            out = np.repeat(out, 3, axis=0)
        return np.ascontiguousarray(out)

    # -- reading ------------------------------------------------------------------------------

    def read(self, window: tuple[int, int, int, int]) -> tuple[np.ndarray, np.ndarray | None]:
        """Pixels of a window.

        Args:
            window: ``(x, y, width, height)`` pixels.

        Returns:
            ``(C, h, w)`` uint8 after the band rule, and the ``(h, w)`` bool nodata mask
            (True where any selected band is nodata; None for formats without one).

        Raises:
            BadImageError: if the raster's data cannot be read.
        """
        x, y, w, h = window
        if self._array is not None:
            return np.ascontiguousarray(self._array[:, y : y + h, x : x + w]), None
        from rasterio.windows import Window

        data, mask = self._masked(window=Window(x, y, w, h))
        return self._to_uint8(data, mask), mask.any(axis=0)

    def window_transform(self, window: tuple[int, int, int, int]) -> list[float] | None:
        """Affine ``[a, b, c, d, e, f]`` of a window (pixel → CRS), None if not georeferenced."""
        if self.transform is None:
            return None
        from affine import Affine

        x, y, _, _ = window
        t = Affine(*self.transform) @ Affine.translation(x, y)
        return [float(v) for v in tuple(t)[:6]]

    def thumbnail(self, side: int = 256) -> np.ndarray:
        """The whole image at most ``side`` pixels a side: ``(C, h, w)`` uint8 (for image-level hashes)."""
        from PIL import Image

        scale = min(1.0, side / max(self.height, self.width))
        shape = (max(1, round(self.height * scale)), max(1, round(self.width * scale)))
        if self._array is not None:
            if scale == 1.0:
                return self._array
            bands = [
                np.asarray(Image.fromarray(b).resize((shape[1], shape[0]), Image.Resampling.BOX)) for b in self._array
            ]
            return np.stack(bands)
        from rasterio.enums import Resampling

        bands = [i + 1 for i in self.indexes]
        data = self._src.read(bands, out_shape=(len(bands), *shape), masked=True, resampling=Resampling.average)
        return self._to_uint8(np.ma.getdata(data), np.ma.getmaskarray(data))

    def close(self) -> None:
        """Close the raster (if any)."""
        if self._src is not None:
            self._src.close()
            self._src = None

    def __enter__(self) -> OpenedSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_tile(row: dict[str, Any], root: str | os.PathLike[str]) -> np.ndarray:
    """Re-read a manifest row's tile from its source file.

    Args:
        row: a manifest row (``source``, ``x``, ``y``, ``width``, ``height``, ``bands``,
            ``raster_scale``, ``percentiles``, ``stretch_low``, ``stretch_high``; a row
            without ``percentiles``, from a manifest written before 0.3.6, gets the default
            ``(2, 98)``).
        root: the root folder of the row's input.

    Returns:
        ``(C, h, w)`` uint8: the pixels the corpus holds for that tile (exactly, for tiles
        stored losslessly).

    Raises:
        BadImageError: if the source cannot be read.
    """
    scale = row.get("raster_scale") or "auto"
    percentiles = row.get("percentiles")
    rule = RasterRule(
        bands=tuple(row["bands"]) if row.get("bands") is not None else None,
        scale=scale if scale == "auto" else float(scale),
        percentiles=tuple(percentiles) if percentiles is not None else RasterRule().percentiles,
    )
    with OpenedSource(Path(root) / row["source"], rule) as src:
        if row.get("stretch_low") is not None:
            src.stretch = list(zip(row["stretch_low"], row["stretch_high"], strict=True))
        tile, _ = src.read((int(row["x"]), int(row["y"]), int(row["width"]), int(row["height"])))
    return tile


def iter_tiles(
    src: OpenedSource, tiling: Tiling
) -> Iterator[tuple[tuple[int, int, int, int], np.ndarray, np.ndarray | None]]:
    """``(window, pixels, nodata mask)`` of each tile of an opened source, row-major."""
    for window in tile_windows(src.height, src.width, tiling):
        tile, mask = src.read(window)
        yield window, tile, mask
