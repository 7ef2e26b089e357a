"""Semantic-segmentation datasets (LoveDA, colour-coded masks, image/mask folders) and datamodule.

Samples are dicts ``{"image": (3, H, W) float32, normalised, "mask": (H, W) int64, "path":
str}`` with mask labels in ``[0, K)`` and :data:`IGNORE_INDEX` (255) for pixels that carry no
label (no-data, unknown colours, padding). Layouts handled:

* **LoveDA** (Wang et al., NeurIPS 2021 D&B): ``images_png/*.png`` + ``masks_png/*.png``
  (mode ``L``), label 0 = no-data → ignore, 1–7 → classes 0–6. Directly under the root or
  in the official ``Train/Urban/...`` sub-folders.
* **Colour-coded RGB masks** with a :class:`ColourTable`: the Dubai aerial set
  (``Tile N/images/*.jpg`` + ``Tile N/masks/*.png``; its ``classes.json`` lists colours that
  do not occur in the masks, so :data:`DUBAI_COLOURS` holds the ones that do) and ISPRS
  Potsdam/Vaihingen (:data:`ISPRS_COLOURS`). Colours outside the table become ignore and are
  counted in :attr:`ColourMaskSegmentation.unknown_pixels`.
* **Image/mask folders** paired by file stem, masks holding integer labels, with an optional
  raw-value → label map.

Training samples are random crops (padded with ignore where the image is smaller) with
flips; evaluation samples are whole images, predicted by sliding windows in the task.

.. versionadded:: 0.1
"""

from __future__ import annotations

import abc
import os
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from .io import IMAGE_EXTENSIONS, read_image
from .transforms import IMAGENET_MEAN, IMAGENET_STD

__all__ = [
    "DUBAI_COLOURS",
    "IGNORE_INDEX",
    "ISPRS_COLOURS",
    "LOVEDA_CLASSES",
    "LOVEDA_PALETTE",
    "ColourMaskSegmentation",
    "ColourTable",
    "DubaiSegmentation",
    "ImageMaskFolder",
    "IndexMaskSegmentation",
    "LoveDA",
    "SegmentationCrop",
    "SegmentationDataModule",
    "SegmentationDataset",
    "colourise",
    "datamodule_from_config",
    "dubai_pairs",
    "loveda_pairs",
    "pair_by_stem",
]

#: label of pixels that carry no class (no-data, unknown colours, padding)
IGNORE_INDEX = 255

_TIFF = {".tif", ".tiff"}


def _hex_rgb(colour: str | Sequence[int]) -> tuple[int, int, int]:
    """``"#3C1098"`` or ``(60, 16, 152)`` → ``(60, 16, 152)``."""
    if isinstance(colour, str):
        text = colour.lstrip("#")
        if not re.fullmatch(r"[0-9a-fA-F]{6}", text):
            raise ValueError(f"colour {colour!r} is not of the form #RRGGBB")
        return int(text[0:2], 16), int(text[2:4], 16), int(text[4:6], 16)
    rgb = tuple(int(c) for c in colour)
    if len(rgb) != 3 or not all(0 <= c <= 255 for c in rgb):
        raise ValueError(f"colour {colour!r} is not an (R, G, B) triple of 0-255 values")
    return rgb  # type: ignore[return-value]


def _pack(rgb: tuple[int, int, int]) -> int:
    return (rgb[0] << 16) | (rgb[1] << 8) | rgb[2]


@dataclass(frozen=True)
class ColourTable:
    """Class colours of an RGB colour-coded mask.

    Args:
        names: class names, in label order.
        colours: one ``#RRGGBB`` string or ``(R, G, B)`` triple per class.
        ignore_colours: colours that mean "no label" (mapped to the ignore index silently).

    Raises:
        ValueError: on a malformed or repeated colour or a length mismatch.

    """

    names: tuple[str, ...]
    colours: tuple[tuple[int, int, int], ...]
    ignore_colours: tuple[tuple[int, int, int], ...] = ()

    def __post_init__(self) -> None:
        names = tuple(str(n) for n in self.names)
        colours = tuple(_hex_rgb(c) for c in self.colours)
        ignore = tuple(_hex_rgb(c) for c in self.ignore_colours)
        if len(names) != len(colours) or not names:
            raise ValueError(f"{len(names)} class names for {len(colours)} colours")
        packed = [_pack(c) for c in colours + ignore]
        if len(set(packed)) != len(packed):
            raise ValueError("a colour appears twice in the colour table")
        object.__setattr__(self, "names", names)
        object.__setattr__(self, "colours", colours)
        object.__setattr__(self, "ignore_colours", ignore)

    def to_labels(self, rgb: npt.NDArray[np.uint8], ignore_index: int = IGNORE_INDEX) -> tuple[np.ndarray, int]:
        """Map a colour-coded mask to labels by a vectorised table lookup.

        Args:
            rgb: ``(3, H, W)`` or ``(H, W, 3)`` uint8 colour mask (channel axis found by size 3;
                ``(3, H, W)`` wins when both fit).
            ignore_index: label of ignore colours and of colours not in the table.

        Returns:
            ``(labels, unknown)``: ``(H, W)`` int64 labels and the number of pixels whose
            colour is neither a class nor an ignore colour.

        Raises:
            ValueError: if ``rgb`` has no channel axis of size 3.

        """
        rgb = np.asarray(rgb)
        if rgb.ndim == 3 and rgb.shape[0] == 3:
            r, g, b = rgb[0], rgb[1], rgb[2]
        elif rgb.ndim == 3 and rgb.shape[2] == 3:
            r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
        else:
            raise ValueError(f"colour mask must be (3, H, W) or (H, W, 3), got {rgb.shape}")
        packed = (r.astype(np.int32) << 16) | (g.astype(np.int32) << 8) | b.astype(np.int32)
        keys = np.array([_pack(c) for c in self.colours + self.ignore_colours], dtype=np.int32)
        values = np.array(list(range(len(self.colours))) + [ignore_index] * len(self.ignore_colours), dtype=np.int64)
        order = np.argsort(keys)
        keys, values = keys[order], values[order]
        pos = np.searchsorted(keys, packed).clip(max=len(keys) - 1)
        known = keys[pos] == packed
        labels = np.where(known, values[pos], np.int64(ignore_index))
        return labels, int(known.size - np.count_nonzero(known))

    def to_rgb(self, labels: npt.NDArray[np.integer]) -> np.ndarray:
        """Colour-code labels: ``(H, W)`` ints → ``(H, W, 3)`` uint8; other labels black."""
        return colourise(labels, self.colours)


def colourise(labels: npt.NDArray[np.integer] | Tensor, palette: Sequence[Sequence[int]]) -> np.ndarray:
    """Colour-code a label map: ``(H, W)`` ints → ``(H, W, 3)`` uint8; labels outside the palette black."""
    labels = np.asarray(labels.cpu() if isinstance(labels, Tensor) else labels).astype(np.int64)
    lut = np.zeros((max(256, labels.max(initial=0) + 1), 3), dtype=np.uint8)
    lut[: len(palette)] = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
    return lut[labels.clip(min=0)]


#: Dubai aerial set ("Semantic segmentation of aerial imagery", MBRSC, Humans in the Loop):
#: the colours that occur in its masks; #000000 (~0.5% of pixels) carries no label.
DUBAI_COLOURS = ColourTable(
    names=("building", "land", "road", "vegetation", "water", "unlabeled"),
    colours=("#3C1098", "#8429F6", "#6EC1E4", "#FEDD3A", "#E2A929", "#9B9B9B"),
    ignore_colours=("#000000",),
)

#: ISPRS 2-D semantic labelling (Potsdam, Vaihingen); black marks the eroded class
#: boundaries of the ``*_noBoundary`` label files and is ignored.
ISPRS_COLOURS = ColourTable(
    names=("impervious_surfaces", "building", "low_vegetation", "tree", "car", "clutter"),
    colours=("#FFFFFF", "#0000FF", "#00FFFF", "#00FF00", "#FFFF00", "#FF0000"),
    ignore_colours=("#000000",),
)

#: LoveDA classes for labels 1–7 of its masks (here 0–6; raw 0 is no-data)
LOVEDA_CLASSES = ("background", "building", "road", "water", "barren", "forest", "agriculture")
#: LoveDA's own rendering colours, for visualisations
LOVEDA_PALETTE = (
    (255, 255, 255),
    (255, 0, 0),
    (255, 255, 0),
    (0, 0, 255),
    (159, 129, 183),
    (0, 255, 0),
    (255, 195, 128),
)


def _default_palette(k: int) -> tuple[tuple[int, int, int], ...]:
    """``k`` distinct colours (a fixed pseudo-random sequence, seeded) for unnamed label sets."""
    rng = np.random.default_rng(0)
    return tuple(tuple(int(v) for v in rng.integers(40, 256, 3)) for _ in range(k))  # type: ignore[misc]


# --------------------------------------------------------------------------- pair finders


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def _strip(stem: str, tag: str) -> str:
    return stem[: -len(tag)] if tag and stem.endswith(tag) else stem


def pair_by_stem(
    images_dir: str | os.PathLike[str],
    masks_dir: str | os.PathLike[str],
    image_tag: str = "",
    mask_tag: str = "",
) -> list[tuple[Path, Path]]:
    """Pair images and masks of two folders by file stem, sorted by name.

    Args:
        images_dir: folder of images.
        masks_dir: folder of masks.
        image_tag: suffix of image stems to drop before matching (``"_RGB"`` for Potsdam's
            ``top_potsdam_2_10_RGB.tif``).
        mask_tag: suffix of mask stems to drop (``"_label"`` for ``top_potsdam_2_10_label.tif``).

    Returns:
        ``(image, mask)`` path pairs.

    Raises:
        FileNotFoundError: if a folder does not exist.
        ValueError: if an image has no mask, or a stem is ambiguous.

    """
    images_dir, masks_dir = Path(images_dir), Path(masks_dir)
    for folder in (images_dir, masks_dir):
        if not folder.is_dir():
            raise FileNotFoundError(f"folder not found: {folder}")
    masks: dict[str, Path] = {}
    for m in sorted(masks_dir.iterdir()):
        if _is_image(m):
            key = _strip(m.stem, mask_tag)
            if key in masks:
                raise ValueError(f"two masks share the stem {key!r} in {masks_dir}: {masks[key].name}, {m.name}")
            masks[key] = m
    pairs, missing = [], []
    for img in sorted(images_dir.iterdir()):
        if not _is_image(img):
            continue
        key = _strip(img.stem, image_tag)
        if key in masks:
            pairs.append((img, masks[key]))
        else:
            missing.append(img.name)
    if missing:
        raise ValueError(f"{len(missing)} image(s) in {images_dir} have no mask in {masks_dir}, e.g. {missing[:3]}")
    return pairs


def _tile_key(path: Path) -> tuple[int, str]:
    match = re.search(r"(\d+)$", path.name)
    return (int(match.group(1)) if match else -1, path.name)


def _tile_name(tile: str | int) -> str:
    return f"Tile {tile}" if isinstance(tile, int) or str(tile).isdigit() else str(tile)


def dubai_pairs(root: str | os.PathLike[str], tiles: Sequence[str | int] | None = None) -> list[tuple[Path, Path]]:
    """Image/mask pairs of the Dubai aerial set: ``Tile N/images/x.jpg`` ↔ ``Tile N/masks/x.png``.

    Args:
        root: folder holding the ``Tile N`` folders.
        tiles: tiles to take (``"Tile 3"`` or ``3``); None for all, in tile order.

    Returns:
        ``(image, mask)`` path pairs, by tile number then file name.

    Raises:
        FileNotFoundError: if ``root`` or a named tile does not exist.
        ValueError: if the root holds no tile or an image has no mask.

    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"Dubai dataset root not found: {root}")
    if tiles is None:
        dirs = sorted((d for d in root.iterdir() if d.is_dir() and (d / "images").is_dir()), key=_tile_key)
        if not dirs:
            raise ValueError(f"no 'Tile N/images' folder under {root}")
    else:
        dirs = [root / _tile_name(t) for t in tiles]
        for d in dirs:
            if not d.is_dir():
                raise FileNotFoundError(f"tile folder not found: {d}")
    return [pair for d in dirs for pair in pair_by_stem(d / "images", d / "masks")]


def loveda_pairs(root: str | os.PathLike[str]) -> list[tuple[Path, Path]]:
    """Image/mask pairs of every ``images_png``/``masks_png`` folder pair under ``root``.

    Covers both the flat layout (``root/images_png``) and the official one
    (``root/Train/Urban/images_png`` ...).

    Raises:
        FileNotFoundError: if ``root`` does not exist.
        ValueError: if no ``images_png`` folder is found or an image has no mask.

    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"LoveDA root not found: {root}")
    dirs = sorted(p for p in [root / "images_png", *root.glob("**/images_png")] if p.is_dir())
    dirs = sorted(set(dirs))
    if not dirs:
        raise ValueError(f"no 'images_png' folder under {root}")
    return [pair for d in dirs for pair in pair_by_stem(d, d.parent / "masks_png")]


# --------------------------------------------------------------------------- transforms


class SegmentationCrop:
    """Random crop of an image/mask pair with random flips (training augmentation).

    Where the image is smaller than the crop it is padded at the bottom/right (image with 0,
    mask with the ignore index). Randomness comes from torch's global RNG, which Lightning
    seeds per worker.

    Args:
        crop_size: crop side in pixels.
        hflip: flip left-right with probability 0.5.
        vflip: flip top-bottom with probability 0.5 (aerial views have no "up").
        ignore_index: mask value of padded pixels.

    Call with a sample ``{"image": (3, H, W), "mask": (H, W), ...}``; returns it with both
    cropped to ``(3, crop, crop)`` / ``(crop, crop)``, dtypes kept.
    """

    def __init__(self, crop_size: int, hflip: bool = True, vflip: bool = True, ignore_index: int = IGNORE_INDEX):
        if crop_size < 1:
            raise ValueError(f"crop_size must be positive, got {crop_size}")
        self.crop_size, self.hflip, self.vflip, self.ignore_index = int(crop_size), hflip, vflip, ignore_index

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        """Crop, pad and flip ``sample['image']`` and ``sample['mask']`` together."""
        image, mask = sample["image"], sample["mask"]
        c = self.crop_size
        h, w = mask.shape[-2:]
        top = int(torch.randint(0, max(h - c, 0) + 1, ()))
        left = int(torch.randint(0, max(w - c, 0) + 1, ()))
        image = image[:, top : top + c, left : left + c]
        mask = mask[top : top + c, left : left + c]
        ph, pw = c - mask.shape[0], c - mask.shape[1]
        if ph or pw:
            image = F.pad(image, (0, pw, 0, ph), value=0)
            mask = F.pad(mask, (0, pw, 0, ph), value=self.ignore_index)
        if self.hflip and bool(torch.rand(()) < 0.5):
            image, mask = image.flip(-1), mask.flip(-1)
        if self.vflip and bool(torch.rand(()) < 0.5):
            image, mask = image.flip(-2), mask.flip(-2)
        return {**sample, "image": image.contiguous(), "mask": mask.contiguous()}


# --------------------------------------------------------------------------- datasets


class SegmentationDataset(Dataset[dict[str, Any]], abc.ABC):
    """Image/mask pairs read from disk; subclasses say how a mask file becomes labels.

    Args:
        pairs: ``(image, mask)`` paths.
        classes: class names, in label order.
        palette: ``(R, G, B)`` per class for visualisations (default: fixed random colours).
        transform: applied to ``{"image": (3, H, W) uint8, "mask": (H, W) int64}`` before
            normalisation, e.g. :class:`SegmentationCrop`.
        mean: per-channel mean of images scaled to [0, 1].
        std: per-channel std of images scaled to [0, 1].
        repeat: each pair appears this many times per epoch (several random crops of a large
            tile per epoch).
        ignore_index: label of pixels without a class.

    Raises:
        ValueError: on no pairs, a palette of the wrong length or ``repeat < 1``.

    """

    def __init__(
        self,
        pairs: Sequence[tuple[str | os.PathLike[str], str | os.PathLike[str]]],
        classes: Sequence[str],
        palette: Sequence[Sequence[int]] | None = None,
        transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        repeat: int = 1,
        ignore_index: int = IGNORE_INDEX,
    ) -> None:
        self.pairs = [(Path(i), Path(m)) for i, m in pairs]
        if not self.pairs:
            raise ValueError("a segmentation dataset needs at least one image/mask pair")
        self.classes = tuple(str(c) for c in classes)
        self.palette = tuple(_hex_rgb(c) for c in palette) if palette is not None else _default_palette(len(classes))
        if len(self.palette) != len(self.classes):
            raise ValueError(f"palette has {len(self.palette)} colours for {len(self.classes)} classes")
        if repeat < 1:
            raise ValueError(f"repeat must be >= 1, got {repeat}")
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(f"mean and std need 3 values and std > 0, got {mean=}, {std=}")
        self.transform = transform
        self.mean = torch.tensor([float(m) for m in mean]).view(3, 1, 1)
        self.std = torch.tensor([float(s) for s in std]).view(3, 1, 1)
        self.repeat = int(repeat)
        self.ignore_index = int(ignore_index)

    @property
    def num_classes(self) -> int:
        """Number of classes ``K``."""
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.pairs) * self.repeat

    @abc.abstractmethod
    def load_mask(self, path: Path) -> np.ndarray:
        """Labels of one mask file: ``(H, W)`` int64 in ``[0, K)`` or the ignore index."""

    def __getitem__(self, index: int) -> dict[str, Any]:
        """Sample ``index``: ``{"image": (3, H, W) float32 normalised, "mask": (H, W) int64, "path": str}``.

        Raises:
            ValueError: if the image and its mask differ in size.

        """
        image_path, mask_path = self.pairs[index % len(self.pairs)]
        image = read_image(image_path)
        mask = torch.from_numpy(self.load_mask(mask_path))
        if tuple(image.shape[-2:]) != tuple(mask.shape):
            raise ValueError(
                f"image {image_path} is {tuple(image.shape[-2:])} but its mask {mask_path} is {tuple(mask.shape)}"
            )
        sample: dict[str, Any] = {"image": image, "mask": mask}
        if self.transform is not None:
            sample = self.transform(sample)
        sample["image"] = (sample["image"].float() / 255.0 - self.mean) / self.std
        sample["path"] = str(image_path)
        return sample

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self.pairs)} pairs × {self.repeat}, {self.num_classes} classes)"


def _read_single_band(path: Path) -> np.ndarray:
    """First band of a mask file as an integer ``(H, W)`` array (palette PNGs give indices)."""
    if path.suffix.lower() in _TIFF:
        import rasterio

        with rasterio.open(path) as src:
            return src.read(1)
    with Image.open(path) as img:
        if img.mode not in ("L", "P", "I", "I;16", "1"):
            raise ValueError(f"mask {path} has mode {img.mode}; expected single-channel integer labels")
        array = np.asarray(img)
        return array.astype(np.uint8) if array.dtype == np.bool_ else array  # mode "1": labels 0/1


class IndexMaskSegmentation(SegmentationDataset):
    """Masks that store integer labels in their first band, optionally re-mapped.

    Args:
        pairs: ``(image, mask)`` paths.
        classes: class names for labels ``0..K-1`` (after ``label_map``).
        label_map: raw mask value → label (or the ignore index); raw values not in the map
            become the ignore index. Without it, raw values are labels, and values ``>= K``
            other than the ignore index become the ignore index.
        **kwargs: see :class:`SegmentationDataset`.

    Raises:
        ValueError: if ``label_map`` maps to a label outside ``[0, K)`` other than the ignore
            index.

    """

    def __init__(
        self,
        pairs: Sequence[tuple[str | os.PathLike[str], str | os.PathLike[str]]],
        classes: Sequence[str],
        label_map: Mapping[int, int] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(pairs, classes, **kwargs)
        k = self.num_classes
        lut = np.full(65536, self.ignore_index, dtype=np.int64)
        if label_map is None:
            lut[:k] = np.arange(k)
        else:
            for raw, label in label_map.items():
                if not (0 <= int(label) < k or int(label) == self.ignore_index):
                    raise ValueError(f"label_map sends {raw} to {label}, outside [0, {k}) and not the ignore index")
                lut[int(raw)] = int(label)
        self._lut = lut

    def load_mask(self, path: Path) -> np.ndarray:
        """Labels of one mask file, through the label map; see the class docstring."""
        raw = _read_single_band(path)
        if raw.dtype.kind not in "ui" or (raw.size and (raw.min() < 0 or raw.max() >= len(self._lut))):
            raise ValueError(f"mask {path} holds values outside 0-65535 (dtype {raw.dtype})")
        return self._lut[raw]


def _infer_classes(
    pairs: Sequence[tuple[Path, Path]], label_map: Mapping[int, int] | None, ignore_index: int
) -> list[str]:
    """Names ``"0"``, ``"1"``... for the labels of ``label_map`` or, without one, of every mask (read once)."""
    if label_map is not None:
        labels = [int(v) for v in label_map.values() if int(v) != ignore_index]
    else:
        labels = []
        for _, mask in pairs:
            values = np.unique(_read_single_band(mask))
            labels += [int(v) for v in values if int(v) != ignore_index]
    return [str(i) for i in range(max(labels) + 1 if labels else 0)]


class ImageMaskFolder(IndexMaskSegmentation):
    """A folder of images and a folder of integer masks, paired by file stem.

    Args:
        images_dir: folder of images.
        masks_dir: folder of masks (same stems, any image extension).
        ignore_index: label of pixels without a class.
        label_map: raw mask value → label, see :class:`IndexMaskSegmentation`.
        classes: class names; default: ``"0"``... for the labels of ``label_map`` or, without
            one, for the labels found by reading every mask once.
        names: keep only these pairs (image stems); None keeps all.
        **kwargs: see :class:`SegmentationDataset`.

    Raises:
        FileNotFoundError, ValueError: see :func:`pair_by_stem`; ValueError also when a name
            in ``names`` is not found.

    """

    def __init__(
        self,
        images_dir: str | os.PathLike[str],
        masks_dir: str | os.PathLike[str],
        ignore_index: int = IGNORE_INDEX,
        label_map: Mapping[int, int] | None = None,
        classes: Sequence[str] | None = None,
        names: Sequence[str] | None = None,
        **kwargs: Any,
    ) -> None:
        pairs = _select(pair_by_stem(images_dir, masks_dir), names, Path(images_dir))
        if classes is None:
            classes = _infer_classes(pairs, label_map, ignore_index)
        super().__init__(pairs, classes, label_map=label_map, ignore_index=ignore_index, **kwargs)


def _pair_name(image: Path, root: Path) -> str:
    try:
        return image.relative_to(root).with_suffix("").as_posix()
    except ValueError:
        return image.stem


def _select(pairs: list[tuple[Path, Path]], names: Sequence[str] | None, root: Path) -> list[tuple[Path, Path]]:
    """Pairs whose image stem (or path relative to ``root`` without suffix) is in ``names``."""
    if names is None:
        return pairs
    wanted = {str(n) for n in names}
    keep = [p for p in pairs if p[0].stem in wanted or _pair_name(p[0], root) in wanted]
    found = {p[0].stem for p in keep} | {_pair_name(p[0], root) for p in keep}
    missing = sorted(wanted - found)
    if missing:
        raise ValueError(f"no image named {missing[:3]} under {root}")
    return keep


def _loveda_label_map(ignore_index: int) -> dict[int, int]:
    """LoveDA's raw labels: 0 = no-data → ignore, 1–7 → 0–6."""
    return {0: ignore_index, **{i + 1: i for i in range(len(LOVEDA_CLASSES))}}


class LoveDA(IndexMaskSegmentation):
    """LoveDA land-cover segmentation: raw label 0 (no-data) → ignore, 1–7 → 0–6.

    Args:
        root: a folder with ``images_png``/``masks_png``, or one holding such folders
            (``Train`` with ``Urban``/``Rural``).
        names: keep only these pairs (image stems, or paths relative to ``root`` without
            suffix); None keeps all.
        **kwargs: see :class:`SegmentationDataset` (``palette`` defaults to LoveDA's).

    Raises:
        FileNotFoundError, ValueError: see :func:`loveda_pairs`.

    """

    def __init__(self, root: str | os.PathLike[str], names: Sequence[str] | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("palette", LOVEDA_PALETTE)
        label_map = _loveda_label_map(int(kwargs.get("ignore_index", IGNORE_INDEX)))
        super().__init__(_select(loveda_pairs(root), names, Path(root)), LOVEDA_CLASSES, label_map, **kwargs)


class ColourMaskSegmentation(SegmentationDataset):
    """RGB colour-coded masks mapped to labels with a :class:`ColourTable`.

    Mask files may be RGB or palette PNGs (or TIFFs); colours not in the table become the
    ignore index, and their pixel counts are kept in :attr:`unknown_pixels` (a warning is
    issued once per file).

    Args:
        pairs: ``(image, mask)`` paths.
        colour_table: class names and colours.
        **kwargs: see :class:`SegmentationDataset` (``palette`` defaults to the table's
            colours).

    """

    def __init__(
        self,
        pairs: Sequence[tuple[str | os.PathLike[str], str | os.PathLike[str]]],
        colour_table: ColourTable,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("palette", colour_table.colours)
        super().__init__(pairs, colour_table.names, **kwargs)
        self.colour_table = colour_table
        #: mask path → pixels of colours outside the table, for masks that have any (filled as
        #: masks are read, in the reading process)
        self.unknown_pixels: dict[str, int] = {}

    def load_mask(self, path: Path) -> np.ndarray:
        """Labels of one colour mask; unknown colours → ignore (counted)."""
        labels, unknown = self.colour_table.to_labels(read_image(path).numpy(), self.ignore_index)
        if unknown:
            if str(path) not in self.unknown_pixels:
                warnings.warn(f"{path}: {unknown} pixels have colours outside the colour table; ignored", stacklevel=2)
            self.unknown_pixels[str(path)] = unknown
        return labels


class DubaiSegmentation(ColourMaskSegmentation):
    """The Dubai aerial set (8 tiles of RGB colour-coded masks) with :data:`DUBAI_COLOURS`.

    Args:
        root: folder holding ``Tile 1`` ... ``Tile 8``.
        tiles: tiles to take (``"Tile 3"`` or ``3``); None for all.
        **kwargs: see :class:`SegmentationDataset`.

    """

    def __init__(self, root: str | os.PathLike[str], tiles: Sequence[str | int] | None = None, **kwargs: Any) -> None:
        super().__init__(dubai_pairs(root, tiles), DUBAI_COLOURS, **kwargs)


# --------------------------------------------------------------------------- datamodule


class SegmentationDataModule(pl.LightningDataModule):
    """Loaders over given train/val/test segmentation datasets.

    Training batches stack equal-size crops (the last incomplete batch is dropped when there
    is a full one, so BatchNorm never sees a batch of one); validation and test batches hold
    one whole image each, since tiles differ in size.

    Args:
        train: training dataset (random crops).
        val: validation dataset (whole images).
        test: test dataset (whole images); default: ``val``.
        batch_size: training batch size.
        num_workers: loader worker processes.
        pin_memory: pin host memory (GPU training).

    """

    def __init__(
        self,
        train: SegmentationDataset,
        val: SegmentationDataset,
        test: SegmentationDataset | None = None,
        batch_size: int = 8,
        num_workers: int = 0,
        pin_memory: bool = False,
    ) -> None:
        super().__init__()
        self.train_set, self.val_set = train, val
        self.test_set = test if test is not None else val
        self.batch_size, self.num_workers, self.pin_memory = int(batch_size), int(num_workers), bool(pin_memory)

    @property
    def classes(self) -> tuple[str, ...]:
        """Class names, in label order."""
        return self.train_set.classes

    @property
    def palette(self) -> tuple[tuple[int, int, int], ...]:
        """``(R, G, B)`` per class."""
        return self.train_set.palette

    @property
    def num_classes(self) -> int:
        """Number of classes ``K``."""
        return self.train_set.num_classes

    def _loader(self, dataset: SegmentationDataset, train: bool) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.batch_size if train else 1,
            shuffle=train,
            drop_last=train and len(dataset) > self.batch_size,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled random crops."""
        return self._loader(self.train_set, train=True)

    def val_dataloader(self) -> DataLoader:
        """Whole validation images, one per batch, in order."""
        return self._loader(self.val_set, train=False)

    def test_dataloader(self) -> DataLoader:
        """Whole test images, one per batch, in order."""
        return self._loader(self.test_set, train=False)


_COMMON_KEYS = {
    "dataset", "root", "crop_size", "batch_size", "num_workers", "pin_memory", "crops_per_image",
    "hflip", "vflip", "mean", "std",
}  # fmt: skip
_NAMED_SPLIT_KEYS = {"val_names", "test_names", "val_root", "test_root"}
DATA_KEYS: dict[str, set[str]] = {
    "dubai": _COMMON_KEYS | {"val_tiles", "test_tiles"},
    "loveda": _COMMON_KEYS | _NAMED_SPLIT_KEYS,
    "isprs": _COMMON_KEYS | _NAMED_SPLIT_KEYS | {"images_dir", "masks_dir", "image_tag", "mask_tag"},
    "folder": _COMMON_KEYS | _NAMED_SPLIT_KEYS | {"images_dir", "masks_dir", "classes", "label_map", "palette"},
}


def datamodule_from_config(data: Mapping[str, Any]) -> SegmentationDataModule:
    """Build the datamodule of a recipe's ``data`` section.

    Keys: ``dataset`` (``dubai`` | ``loveda`` | ``isprs`` | ``folder``), ``root``,
    ``crop_size`` (pixels, default 256), ``batch_size`` (8), ``num_workers`` (0),
    ``pin_memory``, ``crops_per_image`` (random crops per image per epoch, 1), ``hflip``,
    ``vflip`` (True), ``mean``/``std`` (ImageNet). Splits: for ``dubai``, ``val_tiles`` and
    ``test_tiles`` (default ``["Tile 2"]`` and ``["Tile 3"]``, the two smallest tiles, so that
    sliding-window evaluation stays cheap on a CPU; the rest train). For the others, either
    ``val_root``/``test_root`` (folders of the same layout) or ``val_names``/``test_names``
    (image stems held out of ``root``; test defaults to val). ``isprs`` and ``folder`` read
    ``images_dir``/``masks_dir`` (relative to each root; ``images``/``masks`` by default);
    ``isprs`` strips ``image_tag``/``mask_tag`` from stems before pairing; ``folder`` takes
    ``classes``, ``label_map`` and ``palette``.

    Raises:
        ValueError: naming ``data.<key>`` for unknown keys, a missing split or a bad value.
        FileNotFoundError: if a root or folder does not exist.

    """
    data = dict(data)
    kind = data.get("dataset")
    if kind not in DATA_KEYS:
        raise ValueError(f"data.dataset must be one of {sorted(DATA_KEYS)}, got {kind!r}")
    unknown = sorted(set(data) - DATA_KEYS[kind])
    if unknown:
        raise ValueError(
            f"data.{unknown[0]} is not an option of the {kind!r} dataset; expected {sorted(DATA_KEYS[kind])}"
        )
    if "root" not in data:
        raise ValueError("data.root is required")
    root = Path(data["root"])
    crop = int(data.get("crop_size", 256))
    common = {"mean": tuple(data.get("mean", IMAGENET_MEAN)), "std": tuple(data.get("std", IMAGENET_STD))}
    train_tf = SegmentationCrop(crop, hflip=bool(data.get("hflip", True)), vflip=bool(data.get("vflip", True)))
    train_kw = {**common, "transform": train_tf, "repeat": int(data.get("crops_per_image", 1))}

    if kind == "dubai":
        val_tiles = [_tile_name(t) for t in data.get("val_tiles", ["Tile 2"])]
        test_tiles = [_tile_name(t) for t in data.get("test_tiles", ["Tile 3"])]
        all_tiles = [p.parent.parent.name for p, _ in dubai_pairs(root)]
        train_tiles = [t for t in dict.fromkeys(all_tiles) if t not in set(val_tiles) | set(test_tiles)]
        if not train_tiles:
            raise ValueError("data.val_tiles and data.test_tiles leave no tile to train on")
        train = DubaiSegmentation(root, train_tiles, **train_kw)
        val = DubaiSegmentation(root, val_tiles, **common)
        test = DubaiSegmentation(root, test_tiles, **common)
    else:

        def find_pairs(split_root: Path) -> list[tuple[Path, Path]]:
            if kind == "loveda":
                return loveda_pairs(split_root)
            images = split_root / str(data.get("images_dir", "images"))
            masks = split_root / str(data.get("masks_dir", "masks"))
            return pair_by_stem(images, masks, str(data.get("image_tag", "")), str(data.get("mask_tag", "")))

        label_map = data.get("label_map")
        label_map = {int(k): int(v) for k, v in label_map.items()} if label_map else None

        def make(pairs: list[tuple[Path, Path]], **kw: Any) -> SegmentationDataset:
            if kind == "loveda":
                return IndexMaskSegmentation(
                    pairs, LOVEDA_CLASSES, _loveda_label_map(IGNORE_INDEX), palette=LOVEDA_PALETTE, **kw
                )
            if kind == "isprs":
                return ColourMaskSegmentation(pairs, ISPRS_COLOURS, **kw)
            return IndexMaskSegmentation(pairs, classes, label_map, palette=data.get("palette"), **kw)

        root_pairs = find_pairs(root)
        classes = data.get("classes") or (
            _infer_classes(root_pairs, label_map, IGNORE_INDEX) if kind == "folder" else []
        )
        held_out: set[tuple[Path, Path]] = set()
        split_pairs: dict[str, list[tuple[Path, Path]]] = {}
        for split in ("val", "test"):
            if data.get(f"{split}_root"):
                split_pairs[split] = find_pairs(Path(data[f"{split}_root"]))
            elif data.get(f"{split}_names"):
                split_pairs[split] = _select(root_pairs, [str(n) for n in data[f"{split}_names"]], root)
                held_out.update(split_pairs[split])
            elif split == "test":
                split_pairs["test"] = split_pairs["val"]
            else:
                raise ValueError("data.val_root or data.val_names is required to hold out a validation split")
        train_pairs = [p for p in root_pairs if p not in held_out]
        if not train_pairs:
            raise ValueError("data.val_names/test_names leave no image to train on")
        train = make(train_pairs, **train_kw)
        val, test = make(split_pairs["val"], **common), make(split_pairs["test"], **common)

    return SegmentationDataModule(
        train,
        val,
        test,
        batch_size=int(data.get("batch_size", 8)),
        num_workers=int(data.get("num_workers", 0)),
        pin_memory=bool(data.get("pin_memory", False)),
    )
