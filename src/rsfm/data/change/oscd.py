"""OSCD: Sentinel-2 urban change detection, 13 bands per date, one GeoTIFF per band.

OSCD (Daudt, Le Saux, Boulch & Gousseau, "Urban change detection for multispectral earth
observation using convolutional neural networks", IGARSS 2018; https://rcdaudt.github.io/oscd/):
24 Sentinel-2 L1C pairs (2015–2018) of 24 cities, 14 train and 10 test, pixel-level labels of
urban change. The public release (the three archives torchgeo's ``OSCD`` dataset downloads) is::

    root/Onera Satellite Change Detection dataset - Images/
        train.txt, test.txt              one line, comma-separated city names
        <city>/dates.txt                 "date_1: YYYYMMDD" and "date_2: YYYYMMDD" lines
        <city>/imgs_1_rect/B01.tif … B12.tif, B8A.tif   13 single-band uint16 GeoTIFFs, date 1
        <city>/imgs_2_rect/…                             the same for date 2
        <city>/imgs_1/, imgs_2/, pair/   raw bands at native 10/20/60 m, RGB previews (unused)
    root/Onera Satellite Change Detection dataset - Train Labels/<city>/cm/cm.png
    root/Onera Satellite Change Detection dataset - Test Labels/<city>/cm/cm.png

In the ``_rect`` folders every band is co-registered and resampled to the 10 m grid, so all 13
files of a city share one size (the size differs between cities). Band values are
top-of-atmosphere reflectance × 10,000 (Sentinel-2 L1C digital numbers), hence
:func:`read_multiband`'s default ``scale``. Labels: ``cm/cm.png`` holds 0 = no change and
255 = change (torchgeo documents "single-channel pngs where no change = 0, change = 255"; it
reads them with ``convert("L")`` and ``clamp(0, 1)``); the same folder also holds
``cm/<city>-cm.tif`` with 1 = no change and 2 = change. :func:`read_oscd_mask` reads both, and
copies re-saved with 0/1 or 0/2, or as grey RGB(A).

.. versionadded:: 0.2
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from PIL import Image
from torch import Tensor

from rsfm.data.change.common import ChangeDetectionDataModule, ChangePairRecord
from rsfm.utils.errors import DataError
from rsfm.utils.registry import DATASETS

__all__ = [
    "OSCD_BANDS",
    "OSCD_IMAGES_FOLDER",
    "OSCD_SPLITS",
    "OSCDDataModule",
    "oscd_labels_folder",
    "oscd_pairs",
    "read_multiband",
    "read_oscd_mask",
]

#: The 13 Sentinel-2 MSI bands in wavelength order (B8A, 865 nm, between B08 and B09), as
#: ``<band>.tif`` in OSCD's ``imgs_{1,2}_rect`` folders. Resolutions of the native bands:
#: 10 m B02, B03, B04, B08; 20 m B05, B06, B07, B8A, B11, B12; 60 m B01, B09, B10.
OSCD_BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12")
#: OSCD image folder under the root.
OSCD_IMAGES_FOLDER = "Onera Satellite Change Detection dataset - Images"
#: OSCD splits; each has a ``<split>.txt`` city list and a labels folder.
OSCD_SPLITS = ("train", "test")


def oscd_labels_folder(split: str) -> str:
    """Name of OSCD's labels folder of ``split``: ``"Onera Satellite Change Detection dataset - Train Labels"``.

    Raises:
        ValueError: on a split other than ``"train"`` and ``"test"``.

    """
    if split not in OSCD_SPLITS:
        raise ValueError(f"OSCD split must be one of {OSCD_SPLITS}, got {split!r}")
    return f"Onera Satellite Change Detection dataset - {split.capitalize()} Labels"


def _read_city_list(path: Path) -> list[str]:
    """Cities of an OSCD ``train.txt``/``test.txt``: comma- (or line-) separated, blanks dropped."""
    text = path.read_text(encoding="utf-8")
    return [c.strip() for c in text.replace("\n", ",").split(",") if c.strip()]


def _oscd_mask_path(labels_root: Path, city: str) -> Path | None:
    for p in (labels_root / city / "cm" / "cm.png", labels_root / city / "cm" / f"{city}-cm.tif"):
        if p.is_file():
            return p
    return None


def oscd_pairs(
    root: str | os.PathLike[str],
    split: str,
    cities: Sequence[str] | None = None,
    require_mask: bool = True,
) -> list[ChangePairRecord]:
    """List the pairs (one per city) of one OSCD split, sorted by city.

    The split's cities come from ``<Images>/<split>.txt`` (one line, comma-separated, as
    released); when that file is absent, from the city folders of the split's labels folder
    (as torchgeo does). Each city's mask is ``cm/cm.png`` in the split's labels folder, or
    ``cm/<city>-cm.tif`` when there is no PNG. ``dates.txt`` is not read.

    Args:
        root: folder holding ``Onera Satellite Change Detection dataset - Images`` and the
            ``… - Train Labels`` / ``… - Test Labels`` folders (see the module docstring).
        split: ``"train"`` (14 cities in the release) or ``"test"`` (10).
        cities: keep only these cities of the split (e.g. a validation subset of train);
            ``None``: all.
        require_mask: when False, a city without a label file gets ``mask=None`` instead of
            raising (e.g. before the test labels were released).

    Returns:
        One :class:`ChangePairRecord` per city: ``name`` = city, ``image_a`` / ``image_b`` =
        the 13 paths ``<city>/imgs_{1,2}_rect/<band>.tif`` in :data:`OSCD_BANDS` order,
        ``mask`` = the label file (or ``None``, see ``require_mask``).

    Raises:
        ValueError: on an unknown ``split``; naming them, if ``cities`` holds cities that are
            not in the split; if the split lists no city.
        FileNotFoundError: naming what is missing: the images folder; both the split file and
            the labels folder; a listed city's folder or ``imgs_{1,2}_rect`` folder; band files
            (all missing bands of the folder are named); a label file (with
            ``require_mask=True``).

    """
    root = Path(root)
    labels_root = root / oscd_labels_folder(split)
    images_root = root / OSCD_IMAGES_FOLDER
    if not images_root.is_dir():
        raise FileNotFoundError(f"OSCD images folder {images_root} not found under {root}")
    split_file = images_root / f"{split}.txt"
    if split_file.is_file():
        listed = _read_city_list(split_file)
        source = str(split_file)
    elif labels_root.is_dir():
        listed = [p.name for p in labels_root.iterdir() if p.is_dir() and not p.name.startswith(".")]
        source = str(labels_root)
    else:
        raise FileNotFoundError(f"OSCD {split} split: neither {split_file} nor {labels_root} found")
    listed = sorted(set(listed))
    if cities is not None:
        unknown = sorted(set(cities) - set(listed))
        if unknown:
            raise ValueError(f"OSCD {split} split has no cities {unknown} (its cities, from {source}: {listed})")
        listed = sorted(set(cities))
    if not listed:
        raise ValueError(f"OSCD {split} split lists no city ({source})")

    records = []
    for city in listed:
        city_dir = images_root / city
        if not city_dir.is_dir():
            raise FileNotFoundError(f"OSCD city {city!r} of the {split} split ({source}) has no folder {city_dir}")
        dates = []
        for date in (1, 2):
            d = city_dir / f"imgs_{date}_rect"
            if not d.is_dir():
                raise FileNotFoundError(f"OSCD folder {d} not found; expected the 13 bands of date {date} there")
            paths = tuple(d / f"{band}.tif" for band in OSCD_BANDS)
            missing = [p.name for p in paths if not p.is_file()]
            if missing:
                raise FileNotFoundError(f"{d}: missing band files {', '.join(missing)}")
            dates.append(paths)
        mask = _oscd_mask_path(labels_root, city)
        if mask is None and require_mask:
            raise FileNotFoundError(
                f"OSCD label of {city!r} not found: neither {labels_root / city / 'cm' / 'cm.png'} "
                f"nor {labels_root / city / 'cm' / f'{city}-cm.tif'}"
            )
        records.append(ChangePairRecord(city, dates[0], dates[1], mask))
    return records


def read_multiband(paths: Sequence[str | os.PathLike[str]], scale: float = 10000.0) -> Tensor:
    """Stack single-band rasters (one file per band) into one float image.

    Reads each file's first and only band with rasterio; missing georeferencing is accepted
    silently (it is irrelevant here). No nodata handling: values are returned as stored.

    Args:
        paths: one single-band raster per channel, in channel order (e.g. an OSCD record's
            ``image_a``).
        scale: divisor of the stored values; 10,000 turns Sentinel-2 L1C digital numbers into
            top-of-atmosphere reflectance (about [0, 1], bright clouds above 1).

    Returns:
        ``(C, H, W)`` float32, ``C = len(paths)``, values = stored value / ``scale``.

    Raises:
        ValueError: if ``paths`` is empty or ``scale`` is not positive; naming the file, if a
            file has more than one band or its size differs from the first file's.
        FileNotFoundError: naming the file, if one does not exist.

    """
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning

    if not paths:
        raise ValueError("read_multiband needs at least one band file")
    if not scale > 0:
        raise ValueError(f"scale must be positive, got {scale}")
    out: npt.NDArray[np.float32] | None = None
    first = Path(paths[0])
    for i, p in enumerate(map(Path, paths)):
        if not p.is_file():
            raise FileNotFoundError(f"band file {p} not found")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(p) as src:
                if src.count != 1:
                    raise ValueError(f"{p}: {src.count} bands, expected one band per file")
                band = src.read(1)
        if out is None:
            out = np.empty((len(paths), *band.shape), dtype=np.float32)
        elif band.shape != out.shape[1:]:
            raise ValueError(
                f"{p}: size {band.shape[0]}×{band.shape[1]} (H×W) differs from {first} {out.shape[1]}×{out.shape[2]}"
            )
        out[i] = band
    assert out is not None
    out /= np.float32(scale)
    return torch.from_numpy(out)


def _read_single_band(path: Path) -> npt.NDArray[np.generic]:
    """One band of a mask file: TIFF through rasterio, others through PIL; grey RGB(A) collapsed."""
    if path.suffix.lower() in (".tif", ".tiff"):
        import rasterio
        from rasterio.errors import NotGeoreferencedWarning

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path) as src:
                a = src.read()
        a = np.moveaxis(a, 0, -1) if a.shape[0] > 1 else a[0]
        return a
    with Image.open(path) as img:
        img.load()
        if img.mode == "1":
            img = img.convert("L")
        elif img.mode == "P":
            img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        elif img.mode == "LA":
            img = img.getchannel("L")
        return np.asarray(img)


def read_oscd_mask(path: str | os.PathLike[str]) -> Tensor:
    """Read an OSCD change mask (``cm/cm.png`` or ``cm/<city>-cm.tif``) as a binary mask.

    Value encodings, recognised from the values present:

    * 0 and 255 (``cm.png`` as released): 255 = change;
    * 1 and 2, no 0 (``<city>-cm.tif``): 1 = no change, 2 = change;
    * 0 and one other value, 1 or 2 (re-saved copies, e.g. a single-band PNG of 0/2): that
      value = change.

    A mask with a single value is read as all no change, except 2 or 255 alone (all change).
    RGB(A) masks must have identical R, G and B (alpha is ignored); a palette PNG is read by
    its colours.

    Args:
        path: mask file (PNG, TIFF...).

    Returns:
        ``(H, W)`` int64, 1 = change, 0 = no change.

    Raises:
        FileNotFoundError: if the file does not exist.
        ValueError: naming the file, if its colour bands differ or its values fit none of the
            encodings above (e.g. 0/128, or 0/1/2 mixed).

    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"OSCD change mask {path} not found")
    a = _read_single_band(path)
    if a.ndim == 3:
        if a.shape[-1] == 2:  # grey + alpha
            a = a[..., :1]
        bands = a[..., :3]
        if not all(np.array_equal(bands[..., 0], bands[..., c]) for c in range(1, bands.shape[-1])):
            raise ValueError(f"{path}: change mask has {a.shape[-1]} differing bands; expected one band")
        a = bands[..., 0]
    values = {int(v) for v in np.unique(a)}
    if values <= {0, 255}:
        change = 255
    elif values <= {1, 2}:
        change = 2
    elif values <= {0, 1}:
        change = 1
    elif values <= {0, 2}:
        change = 2
    else:
        raise ValueError(
            f"{path}: OSCD change mask values must be 0/255, 1/2 (no change/change), 0/1 or 0/2; "
            f"found {sorted(values)[:6]}"
        )
    return torch.from_numpy((a == change).astype(np.int64))


@DATASETS.register
class OSCDDataModule(ChangeDetectionDataModule):
    """OSCD: 13-band Sentinel-2 pairs of 24 cities (14 train, 10 test), reflectance in [0, ~1].

    Images are the 13 bands of :data:`OSCD_BANDS` divided by ``raster_scale`` (10,000: TOA
    reflectance); ``bands`` selects a subset by index into :data:`OSCD_BANDS` (e.g.
    ``[3, 2, 1]`` for R, G, B). Without ``mean``/``std`` they are computed per band over the
    training cities when first needed.

    Args:
        root: folder holding the release's ``… - Images`` and ``… - Train/Test Labels`` folders.
        val_split: training cities held out for validation (e.g. ``[paris]``); None: none.
        test_split: ``"test"`` (the release's test cities) or a list of cities.
        raster_scale: divisor of the digital numbers (10000: top-of-atmosphere reflectance).
        **kwargs: :class:`~rsfm.data.change.common.ChangeDetectionDataModule` options.
    """

    def __init__(
        self,
        root: str,
        val_split: list[str] | None = None,
        test_split: str | list[str] = "test",
        raster_scale: float = 10000.0,
        **kwargs: Any,
    ) -> None:
        kwargs["raster_scale"] = raster_scale
        self._auto_stats = kwargs.get("mean") is None or kwargs.get("std") is None
        if self._auto_stats:
            n = len(kwargs["bands"]) if kwargs.get("bands") is not None else len(OSCD_BANDS)
            kwargs["mean"], kwargs["std"] = [0.0] * n, [1.0] * n  # replaced from the data in info()
        super().__init__(root, **kwargs)
        if self.raster.scale == "auto":
            raise DataError("data.raster_scale must be a number for OSCD (10000: reflectance)")
        self.val_cities = [str(c) for c in val_split] if val_split else []
        self.test_split = test_split
        self.band_index = list(self.raster.bands) if self.raster.bands is not None else list(range(len(OSCD_BANDS)))
        bad = [b for b in self.band_index if b >= len(OSCD_BANDS)]
        if bad:
            raise DataError(f"data.bands: OSCD has {len(OSCD_BANDS)} bands (indices 0-12), got {bad[0]}")

    def default_channels(self) -> int:
        """OSCD's 13 bands."""
        return len(OSCD_BANDS)

    def split_records(self) -> dict[str, list[ChangePairRecord]]:
        """Training cities (minus the validation ones), validation cities, test cities."""
        try:
            train = oscd_pairs(self.root, "train")
            if isinstance(self.test_split, str):
                test = oscd_pairs(self.root, self.test_split)
            else:
                test = [r for r in train if r.name in set(self.test_split)]
        except (FileNotFoundError, ValueError) as err:
            raise DataError(str(err)) from None
        for key, cities in (
            ("val", self.val_cities),
            ("test", [] if isinstance(self.test_split, str) else self.test_split),
        ):
            unknown = sorted(set(cities) - {r.name for r in train})
            if unknown:
                raise DataError(f"data.{key}_split: {unknown} are not training cities of {self.root}")
        held = set(self.val_cities) | {r.name for r in test}
        return {
            "train": [r for r in train if r.name not in held],
            "val": [r for r in train if r.name in set(self.val_cities)],
            "test": test,
        }

    def read_image(self, path: Any) -> Tensor:
        """The selected bands of one date: ``(C, H, W)`` float32, values / ``raster_scale``."""
        paths = [path[i] for i in self.band_index]
        return read_multiband(paths, scale=float(self.raster.scale))

    def read_mask(self, path: Path) -> Tensor:
        """OSCD change mask, ``(H, W)`` int64 in {0, 1}."""
        return read_oscd_mask(path)

    def info(self) -> Any:
        """As the base class; statistics computed over the training cities when not given."""
        if self._auto_stats:
            self.mean, self.std = self.band_statistics()
            self._auto_stats = False
        return super().info()

    def band_statistics(self) -> tuple[list[float], list[float]]:
        """Per-band mean and std of both dates of the training cities (values / ``raster_scale``)."""
        total, total_sq, count = None, None, 0
        for record in self.records()["train"]:
            for date in (record.image_a, record.image_b):
                x = self.read_image(date).double().flatten(1)
                total = x.sum(1) if total is None else total + x.sum(1)
                total_sq = (x * x).sum(1) if total_sq is None else total_sq + (x * x).sum(1)
                count += x.shape[1]
        assert total is not None and total_sq is not None
        mean = total / count
        std = (total_sq / count - mean * mean).clamp(min=1e-12).sqrt()
        return [float(v) for v in mean], [float(v) for v in std]
