"""What every segmentation layout shares: mask reading, pairing, augmentation, datamodule.

Samples are ``{"image": (C, H, W) float32 in [0, 1], "mask": (H, W) int64, "id": str}``;
mask labels are in ``[0, K)``, and :data:`IGNORE_INDEX` (255) marks pixels without a label
(no-data, unknown colours, padding, eroded boundaries). A layout (one module per dataset:
:mod:`~rsfm.data.segmentation.loveda`, ``dubai``, ``isprs``, ``folder``) subclasses
:class:`SegmentationDataModule` and says where the image/mask pairs of each split are, what
the classes are and how a mask file becomes labels.

Training samples are random crops (padded with ignore where the image is smaller) with
flips and, as options, MMSegmentation's random resize (ratio 0.5–2.0) and photometric
distortion; evaluation samples are whole images, predicted by sliding windows in the task.

Splits are named the same way in every layout: ``train_split``, ``val_split`` and
``test_split``, each either a sub-folder of ``root`` in the dataset's own layout (``"Val"``)
or a list of image names held out of ``root`` (file stems, Dubai tile numbers). The test
split must be given: a validation split never silently doubles as the test split. Splits that
share an image with the training split are an error (:func:`~rsfm.data.splits.check_disjoint_splits`).

Files that cannot be read (empty, truncated, not an image) never stop a run: the dataset
returns ``{"skipped": (path, reason), "id": str}`` for them, the loaders' collate
(:func:`~rsfm.data.skips.collate_skipping`) leaves them out of the batch and lists them under
``batch["skipped"]``, where the run's skip report counts them.

.. versionadded:: 0.2
"""

from __future__ import annotations

import abc
import os
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from rsfm.data.base import DataInfo, DataModule, check_folder
from rsfm.data.io import IMAGE_EXTENSIONS, RasterRule, UnsupportedImageError, read_image
from rsfm.data.skips import READ_ERRORS, collate_skipping, skip_reason
from rsfm.data.splits import check_disjoint_splits
from rsfm.utils.errors import DataError

__all__ = [
    "IGNORE_INDEX",
    "ColourTable",
    "SegmentationCrop",
    "SegmentationDataModule",
    "SegmentationDataset",
    "Split",
    "colourise",
    "index_mask_reader",
    "pair_by_stem",
    "read_single_band",
    "select_pairs",
]

#: label of pixels that carry no class (no-data, unknown colours, padding)
IGNORE_INDEX = 255

_TIFF = {".tif", ".tiff"}

#: a split selector: a sub-folder of the root (str) or names held out of the root (list)
Split = str | int | list[str | int] | None


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


def _default_palette(k: int) -> tuple[tuple[int, int, int], ...]:
    """``k`` distinct colours (a fixed pseudo-random sequence, seeded) for unnamed label sets."""
    rng = np.random.default_rng(0)
    return tuple(tuple(int(v) for v in rng.integers(40, 256, 3)) for _ in range(k))  # type: ignore[misc]


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


def read_single_band(path: Path) -> np.ndarray:
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


def _pair_name(image: Path, root: Path) -> str:
    try:
        return image.relative_to(root).with_suffix("").as_posix()
    except ValueError:
        return image.stem


def select_pairs(pairs: list[tuple[Path, Path]], names: Sequence[str] | None, root: Path) -> list[tuple[Path, Path]]:
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


def index_mask_reader(
    num_classes: int, label_map: Mapping[int, int] | None = None, ignore_index: int = IGNORE_INDEX
) -> Callable[[Path], np.ndarray]:
    """A mask reader for files that store integer labels in their first band.

    Args:
        num_classes: ``K``; labels are ``0..K-1``.
        label_map: raw mask value → label (or the ignore index); raw values not in the map
            become the ignore index. Without it raw values are labels, and values ``>= K``
            become the ignore index.
        ignore_index: label of unlabeled pixels.

    Returns:
        ``read(path) -> (H, W) int64`` labels.

    Raises:
        ValueError: if ``label_map`` has a key outside ``[0, 65535]`` or sends a value outside
            ``[0, K)`` other than the ignore index.
    """
    lut = np.full(65536, ignore_index, dtype=np.int64)
    if label_map is None:
        lut[:num_classes] = np.arange(num_classes)
    else:
        for raw, label in label_map.items():
            if not 0 <= int(raw) < len(lut):
                raise ValueError(
                    f"data.label_map has key {raw}: mask values are read as 8- or 16-bit integers, "
                    f"expected keys in [0, {len(lut) - 1}]"
                )
            if not (0 <= int(label) < num_classes or int(label) == ignore_index):
                raise ValueError(
                    f"data.label_map sends {raw} to {label}, outside [0, {num_classes}) and not the ignore index"
                )
            lut[int(raw)] = int(label)

    def read(path: Path) -> np.ndarray:
        raw = read_single_band(path)
        if raw.dtype.kind not in "ui" or (raw.size and (raw.min() < 0 or raw.max() >= len(lut))):
            raise DataError(f"mask {path} holds values outside 0-65535 (dtype {raw.dtype})")
        return lut[raw]

    return read


def colour_mask_reader(table: ColourTable, ignore_index: int = IGNORE_INDEX) -> Callable[[Path], np.ndarray]:
    """A mask reader for RGB colour-coded masks: colours outside ``table`` become ignore (warned once per file).

    Returns:
        ``read(path) -> (H, W) int64`` labels.
    """
    warned: set[str] = set()

    def read(path: Path) -> np.ndarray:
        labels, unknown = table.to_labels(read_image(path).numpy(), ignore_index)
        if unknown and str(path) not in warned:
            warned.add(str(path))
            warnings.warn(f"{path}: {unknown} pixels have colours outside the colour table; ignored", stacklevel=2)
        return labels

    return read


def infer_classes(pairs: Sequence[tuple[Path, Path]], ignore_index: int = IGNORE_INDEX) -> list[str]:
    """Names ``"0"``, ``"1"``... up to the largest label found in the masks (each read once).

    A mask that cannot be read is passed over here (its pair is skipped and reported when the
    loaders reach it).

    Args:
        pairs: ``(image, mask)`` paths.
        ignore_index: the mask value that is no class (not counted).

    Returns:
        ``K >= 2`` class names, ``"0"`` to ``"K-1"``.

    Raises:
        DataError: if fewer than 2 classes are found (e.g. binary 0/255 masks, whose 255 is the
            ignore index): naming the mask folder(s), the values found and how to set
            ``data.classes`` / ``data.label_map`` or re-encode the masks.
    """
    labels: list[int] = []
    values_found: set[int] = set()
    for _, mask in pairs:
        try:
            values = np.unique(read_single_band(mask))
        except READ_ERRORS:
            continue
        values_found.update(int(v) for v in values)
        labels += [int(v) for v in values if int(v) != ignore_index]
    classes = [str(i) for i in range(max(labels) + 1 if labels else 0)]
    if len(classes) < 2:
        folders = ", ".join(sorted({str(Path(mask).parent) for _, mask in pairs})) or "(no masks)"
        found = sorted(values_found)
        raise DataError(
            f"segmentation masks in {folders} hold the values {found} "
            f"({len(pairs)} masks read); {ignore_index} is the ignore index (not a class), so the classes "
            f"inferred from them are {classes}, and training needs at least 2. Binary 0/{ignore_index} masks: "
            f"set data.label_map: {{0: 0, {ignore_index}: 1}} and data.classes: [background, foreground] "
            f"(your names); otherwise set data.classes, or re-encode the masks as labels 0..K-1"
        )
    return classes


# --------------------------------------------------------------------------- augmentation


class SegmentationCrop:
    """Random crop of an image/mask pair with random flips (training augmentation).

    Where the image is smaller than the crop it is padded at the bottom/right (image with 0,
    mask with the ignore index). Randomness comes from torch's global RNG, which the loader
    seeds per sample (:class:`~rsfm.data.samplers.KeyedDataset`).

    Args:
        crop_size: crop side in pixels.
        hflip: flip left-right with probability 0.5.
        vflip: flip top-bottom with probability 0.5 (aerial views have no "up").
        ignore_index: mask value of padded pixels.

    Call with a sample ``{"image": (C, H, W), "mask": (H, W), ...}``; returns it with both
    cropped to ``(C, crop, crop)`` / ``(crop, crop)``, dtypes kept.

    Raises:
        ValueError: if ``crop_size`` is not positive.
    """

    def __init__(self, crop_size: int, hflip: bool = True, vflip: bool = True, ignore_index: int = IGNORE_INDEX):
        if crop_size < 1:
            raise ValueError(f"data.crop_size must be positive, got {crop_size}")
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


class Compose:
    """Apply sample transforms in order."""

    def __init__(self, steps: Sequence[Callable[[dict[str, Any]], dict[str, Any]]]) -> None:
        self.steps = list(steps)

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        """Run every step on ``sample``."""
        for step in self.steps:
            sample = step(sample)
        return sample

    def __repr__(self) -> str:
        return f"Compose({self.steps})"


# --------------------------------------------------------------------------- dataset


class SegmentationDataset(Dataset[dict[str, Any]]):
    """Image/mask pairs read from disk; pairs whose image or mask cannot be read are skipped.

    Args:
        pairs: ``(image, mask)`` paths.
        read_mask: ``path -> (H, W) int64`` labels (see :func:`index_mask_reader`).
        transform: applied to the sample (image in [0, 1]), e.g. :class:`SegmentationCrop`.
        raster: how image files become bands (:class:`~rsfm.data.io.RasterRule`).
        root: folder the sample ids are relative to.

    Raises:
        DataError: when there are no pairs.
    """

    def __init__(
        self,
        pairs: Sequence[tuple[str | os.PathLike[str], str | os.PathLike[str]]],
        read_mask: Callable[[Path], np.ndarray],
        transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        raster: RasterRule = RasterRule(),  # noqa: B008 (frozen)
        root: str | os.PathLike[str] | None = None,
    ) -> None:
        self.pairs = [(Path(i), Path(m)) for i, m in pairs]
        if not self.pairs:
            raise DataError("a segmentation split holds no image/mask pair")
        self.read_mask = read_mask
        self.transform = transform
        self.raster = raster
        self.root = Path(root) if root is not None else None

    def __len__(self) -> int:
        return len(self.pairs)

    def sample_id(self, image: Path) -> str:
        """The image's path relative to the root, without suffix (its stem without a root)."""
        if self.root is not None:
            try:
                return image.relative_to(self.root).with_suffix("").as_posix()
            except ValueError:
                pass
        return image.stem

    def __getitem__(self, index: int) -> dict[str, Any]:
        """Sample ``index``: ``{"image": (C, H, W) float32 in [0, 1], "mask": (H, W) int64, "id": str}``.

        When the image or the mask cannot be read (empty, truncated, not an image, vanished:
        :data:`~rsfm.data.skips.READ_ERRORS`), ``{"skipped": (path, reason), "id": str}``
        instead, naming the unreadable file (the image when both are); the loaders' collate
        leaves it out of the batch and lists it in ``batch["skipped"]``.

        Raises:
            DataError: if the image and its mask differ in size, or the mask's values are
                invalid (a wrong layout, not a damaged file).
            UnsupportedImageError: naming the file, if it lacks a band of ``data.bands``.
        """
        image_path, mask_path = self.pairs[index]
        try:
            image = read_image(image_path, self.raster).float().div_(255.0)
        except UnsupportedImageError:
            raise  # bands the file lacks (data.bands): a setting to fix, not a damaged file
        except READ_ERRORS as err:
            return {"skipped": (str(image_path), skip_reason(image_path, err)), "id": self.sample_id(image_path)}
        try:
            labels = self.read_mask(mask_path)
        except READ_ERRORS as err:
            return {"skipped": (str(mask_path), skip_reason(mask_path, err)), "id": self.sample_id(image_path)}
        mask = torch.from_numpy(np.ascontiguousarray(labels))
        if tuple(image.shape[-2:]) != tuple(mask.shape):
            raise DataError(
                f"image {image_path} is {tuple(image.shape[-2:])} but its mask {mask_path} is {tuple(mask.shape)}"
            )
        sample: dict[str, Any] = {"image": image, "mask": mask, "id": self.sample_id(image_path)}
        if self.transform is not None:
            sample = self.transform(sample)
        return sample

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self.pairs)} pairs)"


# --------------------------------------------------------------------------- splits


def _names(selector: Split) -> list[str]:
    items = selector if isinstance(selector, list | tuple) else [selector]
    return [str(s) for s in items]


def resolve_splits(
    root: Path,
    find: Callable[[Path], list[tuple[Path, Path]]],
    train_split: Split,
    val_split: Split,
    test_split: Split,
    select: Callable[[list[tuple[Path, Path]], list[str], Path], list[tuple[Path, Path]]] = select_pairs,
) -> dict[str, list[tuple[Path, Path]]]:
    """Image/mask pairs of the train, val and test splits of a layout.

    Each selector is a sub-folder of ``root`` in the layout's own format (str), or a list of
    names held out of the pairs ``find(root)`` finds (``select(pairs, names, root)`` picks
    them); training takes a sub-folder, or by default every pair of ``root`` that no list
    holds out.

    Args:
        root: the dataset folder.
        find: ``folder -> pairs`` of the layout.
        train_split: sub-folder, or None (the rest of ``root``).
        val_split: sub-folder, list of names, or None (no validation).
        test_split: sub-folder or list of names; required.
        select: ``(pairs, names, root) -> pairs`` for list selectors.

    Returns:
        ``{"train", "val", "test"}`` → pairs (``val`` may be empty).

    Raises:
        DataError: if ``test_split`` is missing, a split is empty, training is left with no
            pair, a named sub-folder or name does not exist, or the training split shares an
            image with the validation or test split.

    Warns:
        UserWarning: if the validation and test splits share images (see
            :func:`~rsfm.data.splits.check_disjoint_splits`).
    """
    if test_split is None:
        raise DataError(
            "data.test_split is required (a sub-folder of data.root or a list of image names): "
            "the validation split never doubles as the test split unless you set both to the same value"
        )
    root_pairs: list[tuple[Path, Path]] | None = None
    held_out: set[tuple[Path, Path]] = set()
    out: dict[str, list[tuple[Path, Path]]] = {}
    for name, selector in (("val", val_split), ("test", test_split)):
        if selector is None:
            out[name] = []
        elif isinstance(selector, str) and (root / selector).is_dir():
            out[name] = find(root / selector)
            held_out.update(out[name])  # a finder that recurses (LoveDA) finds them under root too
        else:
            if root_pairs is None:
                root_pairs = find(root)
            try:
                out[name] = select(root_pairs, _names(selector), root)
            except ValueError as err:
                raise DataError(f"data.{name}_split: {err}") from None
            held_out.update(out[name])
    if isinstance(train_split, str):
        folder = root / train_split
        if not folder.is_dir():
            raise DataError(f"data.train_split: folder not found: {folder}")
        out["train"] = find(folder)
    elif train_split is None:
        if root_pairs is None:
            root_pairs = find(root)
        out["train"] = [p for p in root_pairs if p not in held_out]
    else:
        if root_pairs is None:
            root_pairs = find(root)
        out["train"] = select(root_pairs, _names(train_split), root)
    if not out["train"]:
        raise DataError("data.val_split/test_split leave no image to train on")
    if not out["test"]:
        raise DataError(f"data.test_split {test_split!r} selects no image")
    check_disjoint_splits({k: [image for image, _ in v] for k, v in out.items()}, root)
    return out


# --------------------------------------------------------------------------- datamodule


class SegmentationDataModule(DataModule, abc.ABC):
    """Loaders of a segmentation layout: random crops for training, whole images for evaluation.

    Training batches stack ``crops_per_image`` random ``crop_size`` crops of every training
    image per epoch (padded with the ignore index where an image is smaller), optionally
    randomly resized first and photometrically distorted; validation and test batches hold
    ``eval_batch_size`` whole images (1 by default, since tiles differ in size).

    Subclasses implement :meth:`split_pairs`, :meth:`classes` and :meth:`read_mask` (and may
    override :meth:`palette`).

    Args:
        root: dataset folder.
        crop_size: training crop side, pixels.
        crops_per_image: random crops of each training image per epoch.
        batch_size: training crops per batch and device.
        eval_batch_size: whole images per validation/test batch.
        num_workers: loader processes.
        hflip: random left-right flips in training.
        vflip: random top-bottom flips in training.
        resize_ratio: ``[low, high]`` range of MMSegmentation's random resize before cropping
            (``[0.5, 2.0]`` in its UperNet recipes); None: off.
        photometric_distortion: MMSegmentation's photometric distortion (brightness,
            contrast; saturation and hue on RGB) in training.
        bands: 0-based bands of the image files to use (any number; see
            :class:`~rsfm.data.io.RasterRule`); None: RGB.
        raster_scale: ``"auto"`` (per-image percentile stretch of non-8-bit rasters) or a
            divisor such as 10000.
        mean: per-band mean of images in [0, 1] (None: ImageNet's, for RGB).
        std: per-band std, likewise.
        seed: seed of the training order and the augmentation (None: the run's ``seed``).
        pin_memory: pin batches when CUDA is available.

    Raises:
        DataError: if ``root`` is not a folder, or mean/std do not fit the bands.
        ValueError: on a bad crop size, ratio or loader setting.
    """

    sample_keys = ("image", "mask")
    ignore_index = IGNORE_INDEX

    def __init__(
        self,
        root: str,
        crop_size: int = 256,
        crops_per_image: int = 1,
        batch_size: int = 8,
        eval_batch_size: int = 1,
        num_workers: int = 0,
        hflip: bool = True,
        vflip: bool = True,
        resize_ratio: list[float] | None = None,
        photometric_distortion: bool = False,
        bands: list[int] | None = None,
        raster_scale: str | float = "auto",
        mean: list[float] | None = None,
        std: list[float] | None = None,
        seed: int | None = None,
        pin_memory: bool = True,
    ) -> None:
        super().__init__(batch_size, eval_batch_size, num_workers, seed, pin_memory)
        self.root = check_folder(root)
        if crop_size < 1:
            raise ValueError(f"data.crop_size must be positive, got {crop_size}")
        if crops_per_image < 1:
            raise ValueError(f"data.crops_per_image must be >= 1, got {crops_per_image}")
        if resize_ratio is not None and (len(resize_ratio) != 2 or not 0 < resize_ratio[0] <= resize_ratio[1]):
            raise ValueError(f"data.resize_ratio must be [low, high] with 0 < low <= high, got {resize_ratio}")
        self.crop_size = int(crop_size)
        self.crops_per_image = int(crops_per_image)
        self.hflip, self.vflip = bool(hflip), bool(vflip)
        self.resize_ratio = tuple(float(r) for r in resize_ratio) if resize_ratio is not None else None
        self.photometric_distortion = bool(photometric_distortion)
        self.set_bands(bands, raster_scale, mean, std)
        self._splits: dict[str, list[tuple[Path, Path]]] | None = None

    # -- layout ------------------------------------------------------------------------------

    @abc.abstractmethod
    def split_pairs(self) -> dict[str, list[tuple[Path, Path]]]:
        """``{"train", "val", "test"}`` → ``(image, mask)`` pairs (each layout implements it)."""

    @abc.abstractmethod
    def classes(self) -> list[str]:
        """Class names in label order (each layout implements it)."""

    def palette(self) -> list[tuple[int, int, int]]:
        """``(R, G, B)`` per class for visualisations (default: fixed pseudo-random colours)."""
        return [tuple(c) for c in _default_palette(len(self.classes()))]  # type: ignore[misc]

    @abc.abstractmethod
    def read_mask(self, path: Path) -> np.ndarray:
        """Labels of one mask file, ``(H, W)`` int64 (each layout implements it)."""

    def eval_mask_transform(self) -> Callable[[dict[str, Any]], dict[str, Any]] | None:
        """Transform of validation/test samples (None; ISPRS erodes class boundaries here)."""
        return None

    def score_classes(self) -> list[int] | None:
        """Label indices the metrics average over (None: all)."""
        return None

    # -- datasets ----------------------------------------------------------------------------

    def _pairs(self) -> dict[str, list[tuple[Path, Path]]]:
        if self._splits is None:
            self._splits = self.split_pairs()
        return self._splits

    def info(self) -> DataInfo:
        """Classes, bands, normalisation, palette and ignore index."""
        return DataInfo(
            classes=list(self.classes()),
            num_channels=self.num_channels,
            mean=self.mean,
            std=self.std,
            sample_keys=self.sample_keys,
            palette=[tuple(int(v) for v in c) for c in self.palette()],  # type: ignore[misc]
            ignore_index=self.ignore_index,
            score_classes=self.score_classes(),
            bands=list(self.raster.bands) if self.raster.bands is not None else None,
            raster_scale=self.raster.scale,
            crop_size=self.crop_size,
        )

    def train_transform(self) -> Callable[[dict[str, Any]], dict[str, Any]]:
        """Random resize (option), crop, flips, photometric distortion (option)."""
        steps: list[Callable[[dict[str, Any]], dict[str, Any]]] = []
        if self.resize_ratio is not None:
            from rsfm.data.segmentation.augment import RandomResize

            steps.append(RandomResize(self.resize_ratio))
        steps.append(SegmentationCrop(self.crop_size, self.hflip, self.vflip, self.ignore_index))
        if self.photometric_distortion:
            from rsfm.data.segmentation.augment import PhotometricDistortion

            steps.append(PhotometricDistortion())
        return Compose(steps)

    def collate(self) -> Callable[[list[Any]], dict[str, Any]]:
        """Stack the readable samples, list the skipped ones (:func:`~rsfm.data.skips.collate_skipping`).

        A batch whose files were all unreadable is ``{"image": (0, C, 0, 0) float32, "mask":
        (0, 0, 0) int64, "id": [], "skipped": [...]}``.
        """
        empty = {
            "image": torch.empty((0, self.num_channels, 0, 0), dtype=torch.float32),
            "mask": torch.empty((0, 0, 0), dtype=torch.int64),
            "id": [],
        }
        return partial(collate_skipping, empty=empty)

    def setup(self, stage: str | None = None) -> None:
        """Find the pairs of every split and build the datasets (once)."""
        if self.datasets:
            return
        pairs = self._pairs()
        self.datasets["train"] = SegmentationDataset(
            pairs["train"], self.read_mask, self.train_transform(), self.raster, self.root
        )
        for split in ("val", "test"):
            if pairs.get(split):
                self.datasets[split] = SegmentationDataset(
                    pairs[split], self.read_mask, self.eval_mask_transform(), self.raster, self.root
                )
