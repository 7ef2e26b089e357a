"""Reading image files of any common remote-sensing format into ``(C, H, W) uint8`` tensors.

One function, :func:`read_image`, turns a JPEG, PNG, BMP, WEBP, TIFF or GeoTIFF into an RGB
tensor (or, with :attr:`RasterRule.bands`, any chosen bands of a multispectral raster)
following a documented :class:`RasterRule` (which bands, how to scale to 8 bit). Files
that cannot be read raise :class:`BadImageError` with a machine-readable ``reason`` so that
datasets can skip and count them instead of crashing a training run.

.. versionadded:: 0.1
"""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import numpy.typing as npt
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

__all__ = [
    "IMAGE_EXTENSIONS",
    "MAX_IMAGE_PIXELS",
    "BadImageError",
    "RasterRule",
    "UnsupportedImageError",
    "decode_image",
    "raster_band_indexes",
    "read_image",
    "read_image_masked",
    "scale_to_uint8",
]

#: File extensions (lower case, with dot) treated as images; matching is case-insensitive.
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp"})

_JPEG_EXTENSIONS = frozenset({".jpg", ".jpeg"})
_TIFF_EXTENSIONS = frozenset({".tif", ".tiff"})
# libtiff messages when a header or directory ends before its declared size
_TRUNCATED_TIFF_HINTS = ("IO error", "directory", "Cannot read", "truncated", "Read error")

#: Largest PNG, in pixels (width x height), :func:`read_image` decodes: 2**32, a 65536 x 65536
#: scene (12 GiB as RGB uint8). Pillow's own bound (``PIL.Image.MAX_IMAGE_PIXELS``, about 89
#: megapixels; it warns above it and refuses a "decompression bomb" above twice it) is left as
#: it is: larger PNGs are decoded by GDAL instead, so that a large local scene can be read (and
#: sliced by ``rsfm curate``).
MAX_IMAGE_PIXELS = 2**32

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# IHDR colour types decoded at 16 bits per sample by GDAL (Pillow cuts RGB/RGBA/LA to 8)
_PNG16_COLOUR_TYPES = frozenset({2, 4, 6})

#: Values of :attr:`BadImageError.reason`.
BAD_IMAGE_REASONS = ("zero_byte", "truncated", "corrupt", "not_an_image", "unreadable", "unsupported_bands")

# libjpeg-turbo's warnings (its JWRN_* messages) are recoverable: the decoder goes on and returns an
# image. Those that start "Corrupt JPEG data" (a bad Huffman or arithmetic code, a marker found
# inside a data segment, extraneous bytes before a marker) and an inconsistent progression
# sequence mean that it resynchronised after damaged entropy-coded data, so blocks of the image are
# garbage; "Premature end of JPEG file" means the stream was cut. Strict decoding stops at the
# first warning, so a warning that does not concern the pixels is removed at its cause (an unknown
# JFIF revision: the APP0 segment; a bad ICC marker: the APP2 ICC segments; fill bytes before the
# end-of-image marker: those bytes) and the file decoded strictly again, so that damage reported
# after it is still found. Other metadata warnings (an Adobe transform code, SOS parameters of a
# sequential file) send the file to PIL, which decodes without checks.
_CORRUPT_JPEG_WARNINGS = ("Corrupt JPEG data", "Inconsistent progression sequence")
_TRUNCATED_JPEG_WARNING = "Premature end of JPEG file"
_EXTRANEOUS_BEFORE_EOI = re.compile(r"Corrupt JPEG data: (\d+) extraneous bytes before marker 0xd9")
# colour spaces (from the JPEG header) that libjpeg-turbo turns into RGB as PIL does; CMYK and
# YCCK files go through PIL
_TURBO_JPEG_COLORSPACES = frozenset({"YCbCr", "Gray", "RGB"})


class BadImageError(Exception):
    """An image file that cannot be turned into a ``(3, H, W) uint8`` tensor.

    Attributes:
        path: the offending file.
        reason: one of ``'zero_byte'`` (empty file), ``'truncated'`` (the encoded stream ends
            early), ``'corrupt'`` (a JPEG whose entropy-coded data is damaged although the
            stream ends properly: libjpeg-turbo warns "Corrupt JPEG data" and would return
            garbage blocks), ``'not_an_image'`` (the content is not an image format we can identify,
            e.g. a text file named ``x.jpg``), ``'unreadable'`` (an image that fails to decode
            for any other reason, or a file that vanished or cannot be opened) or
            ``'unsupported_bands'`` (see :class:`UnsupportedImageError`).

    .. versionadded:: 0.1

    """

    def __init__(self, path: str | os.PathLike[str], reason: str, message: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {message}")

    def __reduce__(self) -> tuple[type, tuple[str, str, str]]:
        # keep path/reason when the exception crosses a DataLoader worker boundary
        return (type(self), (self.path, self.reason, str(self).removeprefix(f"{self.path}: ")))


class UnsupportedImageError(BadImageError):
    """A readable image whose band layout has no RGB interpretation under the given rule.

    Raised for 2-band rasters without an explicit ``bands`` choice and for a ``bands`` index
    out of range. ``reason`` is always ``'unsupported_bands'``.

    .. versionadded:: 0.1
    """

    def __init__(self, path: str | os.PathLike[str], message: str) -> None:
        super().__init__(path, "unsupported_bands", message)

    def __reduce__(self) -> tuple[type, tuple[str, str]]:
        return (type(self), (self.path, str(self).removeprefix(f"{self.path}: ")))


@dataclass(frozen=True)
class RasterRule:
    """How a file's bands become RGB and how its values become 8-bit.

    Band rule (``bands=None``):

    * 1 band: grayscale, repeated to 3 channels.
    * 2 bands: gray + alpha (PIL mode ``LA``, or a GeoTIFF whose second band is alpha) keeps
      the gray band; any other 2-band raster raises :class:`UnsupportedImageError`.
    * 3 bands: used as is (R, G, B).
    * 4 bands with alpha (PIL ``RGBA``/``LA``/``P`` with transparency, or a GeoTIFF with an
      alpha band): alpha dropped.
    * 4+ bands (multispectral GeoTIFF): the first three, assumed R, G, B[, NIR, ...].

    ``bands`` (0-based indices into the file's bands, alpha included) overrides this and gives
    exactly those bands, in that order, as the channels: ``(2, 1, 0)`` for a B, G, R file,
    ``(0, 1, 2, 3)`` for R, G, B and NIR of a 4-band raster (4 channels), ``(3,)`` for the NIR
    band alone (1 channel). Encoders adapt their first layer to the number of channels
    (:func:`rsfm.models.export.adapt_input_channels`).

    Scaling to 8 bit: ``uint8`` data is used as is. With ``scale='auto'`` other dtypes
    (uint16, int16, float, ...) get a per-image, per-band percentile stretch: the
    ``percentiles`` of the valid pixels (not nodata, not NaN) map to 0 and 255. With a number,
    values are divided by it, clipped to [0, 1] and mapped to 0-255 (``scale=10000`` for
    Sentinel-2 L2A reflectance). Nodata and NaN pixels become 0.

    Args:
        bands: 0-based band indices to use, or None for the rule above.
        scale: ``'auto'`` or a positive number (see above).
        percentiles: (low, high) percentiles for ``scale='auto'``, 0 <= low < high <= 100.

    Raises:
        ValueError: if a field is out of range.

    .. versionadded:: 0.1

    """

    bands: tuple[int, ...] | None = None
    scale: str | float = "auto"
    percentiles: tuple[float, float] = (2.0, 98.0)

    def __post_init__(self) -> None:
        if self.bands is not None:
            bands = tuple(int(b) for b in self.bands)
            if not bands or any(b < 0 for b in bands) or len(set(bands)) != len(bands):
                raise ValueError(f"data.bands must be distinct non-negative band indices, got {list(self.bands)}")
            object.__setattr__(self, "bands", bands)
        if isinstance(self.scale, str):
            if self.scale != "auto":
                raise ValueError(f"RasterRule.scale must be 'auto' or a number, got {self.scale!r}")
        elif not float(self.scale) > 0:
            raise ValueError(f"RasterRule.scale must be positive, got {self.scale}")
        lo, hi = (float(p) for p in self.percentiles)
        if not 0.0 <= lo < hi <= 100.0:
            raise ValueError(f"RasterRule.percentiles must satisfy 0 <= low < high <= 100, got {self.percentiles}")
        object.__setattr__(self, "percentiles", (lo, hi))


def read_image(path: str | os.PathLike[str], rule: RasterRule = RasterRule()) -> Tensor:  # noqa: B008
    """Read an image file as an RGB ``uint8`` tensor.

    JPEGs are decoded by libjpeg-turbo through simplejpeg, strictly: a truncated stream raises
    ``reason='truncated'`` and damaged entropy-coded data (libjpeg-turbo's "Corrupt JPEG data"
    warnings, which PIL and torchvision only print to stderr while returning an image with
    garbage blocks) raises ``reason='corrupt'``. CMYK and YCCK JPEGs, and JPEGs libjpeg-turbo
    cannot decode, go through PIL like PNG, BMP and WEBP, with a forced full decode, so
    truncated files fail here rather than in a transform.
    PIL's ``ImageFile.LOAD_TRUNCATED_IMAGES`` must stay False for that. TIFF and GeoTIFF go
    through rasterio (any dtype, any number of bands, nodata masks); a 1-band raster with a
    colour map (palette TIFF) gives its colours, as a palette PNG does. 16-bit RGB, RGBA and
    grey+alpha PNGs (which PIL cuts to 8 bit) are decoded at full depth by GDAL's PNG driver
    and stretched like 16-bit TIFFs. PNGs over PIL's
    decompression-bomb bound (``PIL.Image.MAX_IMAGE_PIXELS``, about 89 megapixels) are decoded
    by GDAL; PNGs over :data:`MAX_IMAGE_PIXELS` (2**32 pixels) are refused
    (``reason='unreadable'``). EXIF orientation is not applied by any decoder: pixels are
    used in the order they are stored.

    A text file named ``x.jpg`` raises ``reason='not_an_image'``: its content is identified
    as not being an image. ``'unreadable'`` is kept for files that look like an image but fail
    to decode for another reason, and for files that cannot be opened at all.

    Args:
        path: image file.
        rule: band selection and 8-bit scaling rule, see :class:`RasterRule`.

    Returns:
        image: ``(3, H, W)`` uint8, channels R, G, B; with ``rule.bands``, ``(len(bands), H, W)``
        uint8 in the order of ``bands``.

    Raises:
        BadImageError: if the file is empty, truncated, corrupt (JPEG), not an image or cannot
            be decoded.
        UnsupportedImageError: if its bands have no RGB interpretation under ``rule``.

    .. versionadded:: 0.1

    .. versionchanged:: 0.3.1
        JPEGs with damaged data raise ``reason='corrupt'`` (they were decoded, garbage included).

    """
    path = Path(path)
    _check_size(path)
    suffix = path.suffix.lower()
    if suffix in _TIFF_EXTENSIONS:
        return _read_raster(path, rule)
    if suffix in _JPEG_EXTENSIONS:
        image = _read_jpeg(path, rule)
        if image is not None:
            return image
    return _read_pil(path, rule)


def _check_size(path: Path) -> None:
    """Raise for a file that cannot be stat'ed or is empty."""
    try:
        size = path.stat().st_size
    except OSError as err:
        raise BadImageError(path, "unreadable", f"cannot open file ({err})") from err
    if size == 0:
        raise BadImageError(path, "zero_byte", "file is empty (0 bytes), expected an image")


def read_image_masked(
    path: str | os.PathLike[str],
    rule: RasterRule = RasterRule(),  # noqa: B008
) -> tuple[Tensor, npt.NDArray[np.bool_] | None]:
    """Read an image as :func:`read_image` does, with the mask of its nodata pixels.

    Only TIFF/GeoTIFF files (read through rasterio) have nodata: a declared nodata value, an
    internal mask or NaN. Their nodata pixels are 0 in the image, like real zeros; the mask
    tells them apart (``rsfm stats`` leaves them out).

    Args:
        path: image file.
        rule: band selection and 8-bit scaling rule, see :class:`RasterRule`.

    Returns:
        image: as :func:`read_image`, ``(C, H, W)`` uint8.
        nodata: ``(C, H, W)`` bool, True where a pixel is nodata; None when no pixel is (and
            for every format other than TIFF).

    Raises:
        BadImageError: as :func:`read_image`.
        UnsupportedImageError: as :func:`read_image`.

    .. versionadded:: 0.3
    """
    path = Path(path)
    if path.suffix.lower() in _TIFF_EXTENSIONS:
        _check_size(path)
        return _read_raster_masked(path, rule)
    return read_image(path, rule), None


def decode_image(data: bytes, name: str, rule: RasterRule = RasterRule()) -> Tensor:  # noqa: B008
    """Decode an encoded image held in memory exactly as :func:`read_image` decodes the file.

    A JPEG (by ``name``'s extension) goes through libjpeg-turbo (strictly, as in
    :func:`read_image`), PNG and the other PIL formats through PIL, ``.npy`` (rsfm's lossless
    container for tiles that are not 3-band, written by :mod:`rsfm.data.shards`) through
    numpy, so the bytes of a file decode to the pixels :func:`read_image` gives for that file.
    TIFF bytes are not accepted (shards never hold them).

    Args:
        data: the encoded image.
        name: a file name or extension (``'x.jpg'``, ``'.png'``) naming the format; also the
            name errors give.
        rule: band selection and 8-bit scaling rule (``.npy`` arrays must already be uint8).

    Returns:
        ``(C, H, W)`` uint8, as :func:`read_image`.

    Raises:
        BadImageError: if the bytes are empty, truncated, corrupt (JPEG) or not an image of that
            format.

    .. versionadded:: 0.3
    """
    import io

    path = Path(name if "." in name else f"x.{name}")
    suffix = path.suffix.lower() if path.suffix else f".{name.lower().lstrip('.')}"
    if not data:
        raise BadImageError(name, "zero_byte", "encoded image is empty (0 bytes)")
    if suffix == ".npy":
        try:
            array = np.load(io.BytesIO(data), allow_pickle=False)
        except (ValueError, OSError, EOFError) as err:
            raise BadImageError(name, "truncated", f"cannot read .npy tile ({err})") from err
        if array.dtype != np.uint8 or array.ndim != 3:
            raise BadImageError(
                name, "unreadable", f".npy tile must be (C, H, W) uint8, got {array.dtype} {array.shape}"
            )
        return torch.from_numpy(np.ascontiguousarray(array))
    if suffix in _TIFF_EXTENSIONS:
        raise BadImageError(name, "unreadable", "decode_image does not take TIFF bytes; read the file with read_image")
    if suffix in _JPEG_EXTENSIONS:
        image = _decode_jpeg(data, path, rule)
        if image is not None:
            return image
    return _decode_pil(io.BytesIO(data), path, rule)


def _read_jpeg(path: Path, rule: RasterRule) -> Tensor | None:
    """Decode with libjpeg-turbo; None means "let PIL try" (not a JPEG, CMYK, 12-bit...)."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise BadImageError(path, "unreadable", f"cannot read file ({err})") from err
    return _decode_jpeg(data, path, rule)


def _decode_jpeg(data: bytes, path: Path, rule: RasterRule) -> Tensor | None:
    """Decode with libjpeg-turbo (simplejpeg); None means "let PIL try" (not a JPEG, CMYK, 12-bit...).

    The decode is strict: a libjpeg-turbo warning that the data is damaged raises
    :class:`BadImageError` (``'corrupt'``, or ``'truncated'`` for a stream cut short) instead of
    returning an image with garbage blocks, which PIL and torchvision would do (libjpeg only
    prints such warnings to stderr).
    """
    import simplejpeg  # imported here, as the other decoders are

    for _ in range(4):  # the header read stops at warnings too
        try:
            colorspace = simplejpeg.decode_jpeg_header(data)[2]
            break
        except ValueError as err:
            cleaned = _without_harmless_cause(data, str(err))
            if cleaned is None:
                return None
            data = cleaned
    else:
        return None
    if colorspace not in _TURBO_JPEG_COLORSPACES:
        return None
    for _ in range(4):  # each retry removes one warning's cause
        try:
            array = simplejpeg.decode_jpeg(data, colorspace="RGB", strict=True)
            break
        except ValueError as err:
            msg = str(err)
            if msg.startswith(_TRUNCATED_JPEG_WARNING):
                raise BadImageError(
                    path, "truncated", f"JPEG stream ends early (truncated file; libjpeg-turbo: {msg})"
                ) from err
            cleaned = _without_harmless_cause(data, msg)
            if cleaned is not None:
                data = cleaned
                continue
            if msg.startswith(_CORRUPT_JPEG_WARNINGS):
                raise BadImageError(
                    path, "corrupt", f"JPEG data is damaged, its pixels cannot be trusted (libjpeg-turbo: {msg})"
                ) from err
            return None  # a decoder error, or a metadata warning PIL decodes past
    else:
        return None
    image = np.ascontiguousarray(array.transpose(2, 0, 1))
    if rule.bands is not None:
        # a decoded JPEG always has 3 bands (grayscale is expanded by the decoder)
        image = _select_bands(image, rule.bands, path, has_alpha=False)
    return torch.from_numpy(image)


def _without_harmless_cause(data: bytes, warning: str) -> bytes | None:
    """``data`` without what caused a libjpeg-turbo ``warning`` that leaves the pixels intact; None otherwise.

    An unknown JFIF revision: the APP0 JFIF segments go. A bad ICC marker: the APP2 ICC segments
    go (the decoder does not apply ICC profiles). ``N`` extraneous bytes before the end-of-image
    marker that are all one value: fill an encoder wrote after the scan, removed. Extraneous
    bytes of varied values are the tail of entropy-coded data the decoder desynchronised on:
    damage, kept.
    """
    if warning.startswith("Warning: unknown JFIF revision"):
        return _drop_segments(data, 0xE0, (b"JFIF\x00", b"JFXX\x00"))
    if warning.startswith("Corrupt JPEG data: bad ICC marker"):
        return _drop_segments(data, 0xE2, (b"ICC_PROFILE\x00",))
    match = _EXTRANEOUS_BEFORE_EOI.match(warning)
    if match and data.endswith(b"\xff\xd9"):
        n = int(match.group(1))
        fill = data[-2 - n : -2]
        if 0 < n == len(fill) and fill.count(fill[:1]) == n:
            return data[: -2 - n] + b"\xff\xd9"
    return None


def _drop_segments(data: bytes, marker: int, prefixes: tuple[bytes, ...]) -> bytes | None:
    """``data`` without its ``0xFF marker`` segments whose payload starts with one of ``prefixes``.

    Only the header (the segments before the first start-of-scan) is searched. Returns None when
    nothing was dropped or the header cannot be parsed.
    """
    out, i, dropped = bytearray(data[:2]), 2, False
    while i + 4 <= len(data) and data[i] == 0xFF:
        kind = data[i + 1]
        if kind == 0xFF:  # fill byte before a marker
            i += 1
            continue
        if kind == 0xDA:  # start of scan: the rest is entropy-coded data and what follows it
            break
        end = i + 2 + int.from_bytes(data[i + 2 : i + 4], "big")
        if end > len(data):
            return None
        if kind == marker and data[i + 4 : end].startswith(prefixes):
            dropped = True
        else:
            out += data[i:end]
        i = end
    return bytes(out + data[i:]) if dropped else None


def _read_pil(path: Path, rule: RasterRule) -> Tensor:
    return _decode_pil(path, path, rule)


def _png_header(source: Path | BinaryIO, path: Path) -> tuple[int, int, int, int] | None:
    """``(width, height, bit depth, colour type)`` from a PNG's IHDR, or None if not a PNG."""
    try:
        if isinstance(source, Path):
            with open(source, "rb") as f:
                head = f.read(26)
        else:
            start = source.tell()
            head = source.read(26)
            source.seek(start)
    except OSError as err:
        raise BadImageError(path, "unreadable", f"cannot read file ({err})") from err
    if len(head) < 26 or not head.startswith(_PNG_SIGNATURE) or head[12:16] != b"IHDR":
        return None
    width, height = int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
    return width, height, head[24], head[25]


def _decode_pil(source: Path | BinaryIO, path: Path, rule: RasterRule) -> Tensor:
    header = _png_header(source, path)
    if header is not None:
        width, height, depth, colour = header
        if width * height > MAX_IMAGE_PIXELS:
            raise BadImageError(
                path,
                "unreadable",
                f"image is {width} x {height} = {width * height} pixels, over rsfm's bound of "
                f"{MAX_IMAGE_PIXELS} pixels (rsfm.data.io.MAX_IMAGE_PIXELS); cut it into smaller files first",
            )
        if depth == 16 and colour in _PNG16_COLOUR_TYPES:
            return _decode_png16(source, path, rule)
        if width * height > Image.MAX_IMAGE_PIXELS:
            # over Pillow's decompression-bomb bound: GDAL's PNG driver has none
            return _read_raster(source, rule, name=path)
    try:
        with Image.open(source) as img:
            img.load()
            array, has_alpha = _pil_to_array(img)
    except UnidentifiedImageError as err:
        raise BadImageError(
            path,
            "not_an_image",
            f"content is not a recognised image format (expected one of {', '.join(sorted(IMAGE_EXTENSIONS))})",
        ) from err
    except (OSError, EOFError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        msg = str(err)
        if isinstance(err, EOFError) or "truncated" in msg.lower():
            raise BadImageError(path, "truncated", f"image data ends early ({msg})") from err
        raise BadImageError(path, "unreadable", f"cannot decode image ({msg})") from err
    return _to_rgb_uint8(array, path, rule, has_alpha=has_alpha, mask=None)


def _pil_to_array(img: Image.Image) -> tuple[npt.NDArray[np.generic], bool]:
    """(C, H, W) array in the file's dtype and whether its last band is alpha."""
    mode = img.mode
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif mode == "PA":
        img = img.convert("RGBA")
    elif mode == "1":
        img = img.convert("L")
    elif mode in ("CMYK", "YCbCr", "LAB", "HSV"):
        img = img.convert("RGB")
    elif mode in ("RGBa", "La"):
        img = img.convert("RGBA" if mode == "RGBa" else "LA")
    elif mode == "RGBX":
        img = img.convert("RGB")
    has_alpha = img.mode in ("RGBA", "LA")
    array = np.asarray(img)
    if array.ndim == 2:
        array = array[None]
    else:
        array = array.transpose(2, 0, 1)
    return array, has_alpha


def _decode_png16(source: Path | BinaryIO, path: Path, rule: RasterRule) -> Tensor:
    """A 16-bit RGB, RGBA or grey+alpha PNG at full depth (GDAL's PNG driver, libpng), then scaled.

    Every band is read as stored, alpha included (it is dropped by the band rule, never used as a
    nodata mask), as torchvision's ``decode_png`` read them before its image decoders were
    deprecated (torchvision 0.29).
    """
    import rasterio
    import rasterio.errors

    try:
        data = source.read_bytes() if isinstance(source, Path) else source.read()
    except OSError as err:
        raise BadImageError(path, "unreadable", f"cannot read file ({err})") from err
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
            with rasterio.MemoryFile(data) as memory, memory.open(driver="PNG") as src:
                array = src.read()
    except rasterio.errors.RasterioError as err:
        cause: BaseException = err  # rasterio's message points to GDAL's, chained below it
        while cause.__cause__ is not None or cause.__context__ is not None:
            cause = cause.__cause__ or cause.__context__  # type: ignore[assignment]
        msg = str(cause)
        cut = any(k in msg.lower() for k in ("truncat", "end of", "eof", "read error"))
        raise BadImageError(path, "truncated" if cut else "unreadable", f"cannot decode 16-bit PNG ({msg})") from err
    return _to_rgb_uint8(array, path, rule, has_alpha=array.shape[0] in (2, 4), mask=None)


def _read_raster(source: Path | BinaryIO, rule: RasterRule, name: Path | None = None) -> Tensor:
    return _read_raster_masked(source, rule, name)[0]


def _read_raster_masked(
    source: Path | BinaryIO, rule: RasterRule, name: Path | None = None
) -> tuple[Tensor, npt.NDArray[np.bool_] | None]:
    """The image, and its ``(C, H, W)`` nodata mask (None when no pixel is nodata)."""
    path = Path(source) if name is None else name  # type: ignore[arg-type]
    # Imported here: GDAL is slow to load and only TIFF/GeoTIFF inputs need it.
    import rasterio
    import rasterio.errors
    from rasterio.enums import ColorInterp

    # EMPTY_DIR: don't list the folder looking for sidecar files on every open (slow on
    # folders with many thousands of tiles)
    try:
        with (
            rasterio.Env(GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR"),
            warnings.catch_warnings(),
        ):
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
            try:
                src = rasterio.open(source)
            except rasterio.errors.RasterioIOError as err:
                msg = str(err)
                if "not recognized" in msg or "not a supported" in msg.lower():
                    raise BadImageError(
                        path, "not_an_image", f"content is not a recognised raster format ({msg})"
                    ) from err
                if "TIFF" in msg and any(k in msg for k in _TRUNCATED_TIFF_HINTS):
                    raise BadImageError(path, "truncated", f"TIFF header is incomplete ({msg})") from err
                raise BadImageError(path, "unreadable", f"cannot open raster ({msg})") from err
            with src:
                count = src.count
                interp = list(src.colorinterp)
                if count == 1 and interp[0] == ColorInterp.palette:
                    image, nodata = _read_palette(src, path, rule)
                    return image, _mask_like(nodata[None], image)
                has_alpha = count in (2, 4) and interp[-1] == ColorInterp.alpha
                indexes = _raster_indexes(count, rule, path, has_alpha)
                try:
                    data = src.read([i + 1 for i in indexes], masked=True)
                except rasterio.errors.RasterioIOError as err:
                    raise BadImageError(
                        path,
                        "truncated",
                        f"raster data cannot be read, file likely truncated ({err})",
                    ) from err
    except BadImageError:
        raise
    except (rasterio.errors.RasterioError, OSError) as err:
        raise BadImageError(path, "unreadable", f"cannot read raster ({err})") from err

    mask = np.ma.getmaskarray(data)
    array = np.ma.getdata(data)
    # bands were already selected when reading (only those are read from disk)
    image = _to_rgb_uint8(array, path, rule, has_alpha=False, mask=mask, selected=True)
    return image, _mask_like(mask, image)


def _mask_like(mask: npt.NDArray[np.bool_], image: Tensor) -> npt.NDArray[np.bool_] | None:
    """A nodata mask of 1 or C bands as ``image``'s ``(C, H, W)``; None when nothing is masked."""
    if not mask.any():
        return None
    if mask.shape[0] != image.shape[0]:  # a grey band repeated to RGB, or one mask for all bands
        mask = mask.any(axis=0, keepdims=True)
    return np.ascontiguousarray(np.broadcast_to(mask, image.shape))


def _read_palette(src: Any, path: Path, rule: RasterRule) -> tuple[Tensor, npt.NDArray[np.bool_]]:
    """A 1-band raster with a colour map, as RGB (RGBA when the map has transparency) like PIL's ``P``.

    Returns the image and its ``(H, W)`` nodata mask.
    """
    import rasterio.errors

    try:
        data = src.read(1, masked=True)
        colormap = src.colormap(1)
    except (rasterio.errors.RasterioIOError, ValueError) as err:
        raise BadImageError(path, "truncated", f"raster data cannot be read, file likely truncated ({err})") from err
    table = np.zeros((max(256, int(np.ma.getdata(data).max()) + 1), 4), dtype=np.uint8)
    table[:, 3] = 255  # indices missing from the map: opaque black, as PIL
    for index, colour in colormap.items():
        if 0 <= index < len(table):
            table[index] = colour
    has_alpha = bool((table[:, 3] < 255).any())
    array = table[np.ma.getdata(data).astype(np.int64)].transpose(2, 0, 1)
    if not has_alpha:
        array = array[:3]
    nodata = np.ma.getmaskarray(data)
    array[:, nodata] = 0  # nodata pixels become 0
    return _to_rgb_uint8(array, path, rule, has_alpha=has_alpha, mask=None), nodata


def raster_band_indexes(count: int, rule: RasterRule, path: str | os.PathLike[str], has_alpha: bool) -> list[int]:
    """0-based bands :func:`read_image` reads from a raster with ``count`` bands under ``rule``.

    Args:
        count: bands in the file, alpha included.
        rule: the band rule.
        path: the file (named in errors).
        has_alpha: whether the last band is alpha.

    Raises:
        UnsupportedImageError: for a 2-band raster without alpha and no ``rule.bands``, or a
            ``rule.bands`` index out of range.

    .. versionadded:: 0.3
    """
    return _raster_indexes(count, rule, Path(path), has_alpha)


def scale_to_uint8(
    array: npt.NDArray[np.generic], rule: RasterRule, mask: npt.NDArray[np.bool_] | None = None
) -> npt.NDArray[np.uint8]:
    """Scale ``(C, H, W)`` pixels of any dtype to uint8 as :func:`read_image` does (see :class:`RasterRule`).

    Args:
        array: ``(C, H, W)`` pixels.
        rule: the scaling rule (uint8 passes through; ``'auto'``: per-band percentile stretch
            of the valid pixels; a number: divide, clip to [0, 1]).
        mask: ``(C, H, W)`` bool, True where nodata (set to 0).

    Returns:
        ``(C, H, W)`` uint8.

    .. versionadded:: 0.3
    """
    return _scale_to_uint8(array, rule, mask)


def _raster_indexes(count: int, rule: RasterRule, path: Path, has_alpha: bool) -> list[int]:
    """0-based band indices to read from a raster with ``count`` bands."""
    if rule.bands is not None:
        _check_bands(rule.bands, count, path)
        return list(rule.bands)
    if count == 1 or (count == 2 and has_alpha):
        return [0]
    if count == 2:
        raise UnsupportedImageError(
            path,
            "has 2 bands, expected 1 (gray), 3 (RGB) or 4+; choose the bands to use with data.bands "
            "(RasterRule(bands=...) in Python)",
        )
    return [0, 1, 2]


def _check_bands(bands: tuple[int, ...], count: int, path: Path) -> None:
    bad = [b for b in bands if b >= count]
    if bad:
        raise UnsupportedImageError(
            path,
            f"has {count} band(s) (indices 0-{count - 1}), but RasterRule.bands={bands} asks for band index {bad[0]}",
        )


def _select_bands(
    array: npt.NDArray[np.generic], bands: tuple[int, ...] | None, path: Path, has_alpha: bool
) -> npt.NDArray[np.generic]:
    """Apply the band rule to a (C, H, W) array; returns (1 or 3, H, W), or ``bands``' count."""
    count = array.shape[0]
    if bands is not None:
        _check_bands(bands, count, path)
        return array[list(bands)]
    return array[_raster_indexes(count, RasterRule(), path, has_alpha)]


def _to_rgb_uint8(
    array: npt.NDArray[np.generic],
    path: Path,
    rule: RasterRule,
    has_alpha: bool,
    mask: npt.NDArray[np.bool_] | None,
    selected: bool = False,
) -> Tensor:
    if not selected:
        array = _select_bands(array, rule.bands, path, has_alpha)
    array = _scale_to_uint8(array, rule, mask)
    if array.shape[0] == 1 and rule.bands is None:
        array = np.repeat(array, 3, axis=0)
    return torch.from_numpy(np.ascontiguousarray(array))


def _scale_to_uint8(
    array: npt.NDArray[np.generic], rule: RasterRule, mask: npt.NDArray[np.bool_] | None
) -> npt.NDArray[np.uint8]:
    """Scale a (C, H, W) array of any dtype to uint8 following ``rule``."""
    if array.dtype in (np.uint8, np.bool_):
        out8 = array if array.dtype == np.uint8 else array.astype(np.uint8) * np.uint8(255)
        if mask is not None and mask.any():
            out8 = np.where(mask, np.uint8(0), out8)  # nodata pixels become 0, as for other dtypes
        return out8  # type: ignore[return-value]
    data = array.astype(np.float32)
    invalid = ~np.isfinite(data)
    if mask is not None:
        invalid |= mask
    if isinstance(rule.scale, str):  # 'auto': per-band percentile stretch
        out = np.zeros(data.shape, dtype=np.float32)
        for c in range(data.shape[0]):
            valid = data[c][~invalid[c]]
            if valid.size == 0:
                continue
            lo, hi = np.percentile(valid, rule.percentiles)
            if hi > lo:
                out[c] = (data[c] - lo) / (hi - lo)
    else:
        out = data / float(rule.scale)
    out = np.clip(out, 0.0, 1.0) * 255.0
    out[invalid] = 0.0
    return np.rint(out).astype(np.uint8)
