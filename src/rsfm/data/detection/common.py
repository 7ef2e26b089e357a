"""What every detection layout shares: records, augmentation, dataset, datamodule.

Every layout (:mod:`~rsfm.data.detection.voc`, ``dior``, ``dota``, ``coco``) is read into
:class:`DetectionRecord` lists (one per image) and served by :class:`DetectionDataset` as
sample dicts::

    {'image': (C, H, W) float32 in [0, 1], 'boxes': (N, 4) float32 xyxy pixels,
     'labels': (N,) int64 in [0, K), 'difficult': (N,) bool, 'id': str}

Box coordinates are continuous pixel edges: ``(0, 0, W, H)`` covers the whole image.
``difficult`` objects (VOC's flag, DOTA's difficulty ≥ 1, COCO's ``iscrowd``) are kept and
flagged; the training transform drops them from the targets and the VOC evaluation ignores
detections that match them, as the VOC and DOTA devkits do.

Large images are trained on random crops (:class:`TrainTransform`) and evaluated whole by
tiled prediction in the detection head, so validation and test samples are full images.

Splits are named as in every rsfm datamodule: ``train_split``, ``val_split``, ``test_split``
(image-set names, files or folders of the layout). When only a training set exists, the
validation and test splits are drawn from it by ``val_fraction``, ``test_fraction`` and
``split_seed`` (:func:`rsfm.data.splits.seeded_split`). Named splits that share an image with
the training split are an error.

An image that cannot be read (empty, truncated, not an image) never stops a run: the dataset
returns ``{'skipped': (path, reason), 'id': str}`` for it and :func:`collate_lists` leaves it
out of the batch, listing it under ``batch['skipped']`` for the run's skip report.

.. versionadded:: 0.2
"""

from __future__ import annotations

import abc
import math
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from rsfm.data.base import DataInfo, DataModule, check_folder
from rsfm.data.io import RasterRule, UnsupportedImageError, read_image
from rsfm.data.skips import READ_ERRORS, skip_reason, split_skipped
from rsfm.data.splits import check_disjoint_splits, check_fraction, seeded_split
from rsfm.utils.errors import DataError

__all__ = [
    "DetectionDataModule",
    "DetectionDataset",
    "DetectionRecord",
    "TrainTransform",
    "class_index",
    "class_indices",
    "collate_lists",
    "crop_window",
    "make_record",
    "random_crop",
    "random_flip",
]


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")

#: keys of a detection batch (:func:`collate_lists`), besides ``skipped``
BATCH_KEYS = ("image", "boxes", "labels", "difficult", "id")


@dataclass
class DetectionRecord:
    """Annotation of one image.

    Attributes:
        image: image file.
        boxes: ``(N, 4)`` float32 xyxy, pixels.
        labels: ``(N,)`` int64 class indices in ``[0, K)``.
        difficult: ``(N,)`` bool, objects ignored by the evaluation.
        id: image identifier (file stem for VOC and DOTA, the COCO image id as text).
        meta: format-specific extras (DOTA: ``gsd`` in metres per pixel, ``imagesource``).
    """

    image: Path
    boxes: np.ndarray
    labels: np.ndarray
    difficult: np.ndarray
    id: str
    meta: dict[str, Any] = field(default_factory=dict)


def make_record(
    image: Path, boxes: Any, labels: Any, difficult: Any, rid: str, meta: dict[str, Any] | None = None
) -> DetectionRecord:
    """A :class:`DetectionRecord` from list or array annotations (boxes ``(N, 4)`` xyxy pixels)."""
    return DetectionRecord(
        image=image,
        boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
        labels=np.asarray(labels, dtype=np.int64).reshape(-1),
        difficult=np.asarray(difficult, dtype=bool).reshape(-1),
        id=rid,
        meta=meta or {},
    )


def class_indices(names: Sequence[str], classes: Sequence[str], where: os.PathLike[str] | str) -> list[int]:
    """Indices of ``names`` in ``classes``: exact spelling first, else a unique case-insensitive match.

    Raises:
        ValueError: naming the file ``where`` and the class list if a name is not in it.
    """
    exact = {c: i for i, c in enumerate(classes)}
    folded: dict[str, list[int]] = {}
    for i, c in enumerate(classes):
        folded.setdefault(c.lower(), []).append(i)
    out = []
    for name in names:
        if name in exact:
            out.append(exact[name])
        elif len(folded.get(name.lower(), [])) == 1:
            out.append(folded[name.lower()][0])
        else:
            raise ValueError(f"{where}: class {name!r} is not in the class list {list(classes)}")
    return out


def class_index(name: str, classes: Sequence[str], where: os.PathLike[str] | str) -> int:
    """Index of ``name`` in ``classes``.

    Raises:
        ValueError: naming the file ``where`` if the class is not in the list.
    """
    try:
        return list(classes).index(name)
    except ValueError:
        raise ValueError(f"{where}: class {name!r} is not in the class list {list(classes)}") from None


def _area(boxes: Tensor) -> Tensor:
    return (boxes[:, 2] - boxes[:, 0]).clamp(min=0) * (boxes[:, 3] - boxes[:, 1]).clamp(min=0)


def _select(sample: dict[str, Any], keep: Tensor) -> dict[str, Any]:
    out = dict(sample)
    for key in ("boxes", "labels", "difficult"):
        out[key] = sample[key][keep]
    return out


def _start(lo: int, hi: int, generator: torch.Generator | None) -> int:
    return lo if hi <= lo else int(torch.randint(lo, hi + 1, (1,), generator=generator))


def crop_window(
    hulls: Tensor,
    difficult: Tensor,
    size: int,
    height: int,
    width: int,
    object_prob: float = 0.5,
    generator: torch.Generator | None = None,
) -> tuple[int, int, int, int]:
    """A random crop window of an image, object-centred with probability ``object_prob``.

    The object-centred window is drawn uniformly among those that hold a randomly chosen
    non-difficult object's hull whole (centred on the object when it is larger than the crop);
    otherwise the window is uniform over the image. An image smaller than ``size`` keeps its
    size on that axis.

    Args:
        hulls: ``(N, 4)`` xyxy pixels, the objects' enclosing horizontal boxes.
        difficult: ``(N,)`` bool; difficult objects are never the centre.
        size: crop side, pixels.
        height: image height ``H``, pixels.
        width: image width ``W``, pixels.
        object_prob: probability of an object-centred window.
        generator: random generator (default: torch's global one).

    Returns:
        ``(x0, y0, cw, ch)``: the window's top-left corner and size, pixels.
    """
    ch, cw = min(size, height), min(size, width)
    pick = (~difficult).nonzero().flatten()
    if len(pick) and float(torch.rand((), generator=generator)) < object_prob:
        b = hulls[pick[int(torch.randint(len(pick), (1,), generator=generator))]].tolist()
        starts = []
        for lo_edge, hi_edge, c, full in ((b[0], b[2], cw, width), (b[1], b[3], ch, height)):
            lo, hi = max(0, math.ceil(hi_edge) - c), min(math.floor(lo_edge), full - c)
            if lo > hi:  # the object is larger than the crop: centre on it
                lo = hi = min(max(0, round((lo_edge + hi_edge - c) / 2)), full - c)
            starts.append(_start(lo, hi, generator))
        x0, y0 = starts
    else:
        x0, y0 = _start(0, width - cw, generator), _start(0, height - ch, generator)
    return x0, y0, cw, ch


def random_crop(
    sample: dict[str, Any],
    size: int,
    min_visibility: float = 0.5,
    object_prob: float = 0.5,
    generator: torch.Generator | None = None,
) -> dict[str, Any]:
    """Random ``size × size`` crop of a sample; boxes are shifted, clipped and filtered.

    With probability ``object_prob`` the window is drawn among those that hold a randomly
    chosen non-difficult object whole (so that crops of large, sparse scenes are not mostly
    empty); otherwise uniformly. An image smaller than ``size`` keeps its size on that axis.

    Args:
        sample: ``image`` ``(C, H, W)`` (any dtype), ``boxes`` ``(N, 4)`` xyxy pixels,
            ``labels`` ``(N,)``, ``difficult`` ``(N,)``; other keys are passed through.
        size: crop side, pixels.
        min_visibility: a clipped box is kept if it keeps at least this share of its area.
        object_prob: probability of an object-centred window.
        generator: random generator (default: torch's global one).

    Returns:
        The cropped sample.
    """
    image, boxes = sample["image"], sample["boxes"]
    _, h, w = image.shape
    x0, y0, cw, ch = crop_window(boxes, sample["difficult"], size, h, w, object_prob, generator)
    out = dict(sample)
    out["image"] = image[:, y0 : y0 + ch, x0 : x0 + cw]
    shifted = boxes - torch.tensor([x0, y0, x0, y0], dtype=boxes.dtype)
    clipped = torch.stack(
        [
            shifted[:, 0].clamp(0, cw),
            shifted[:, 1].clamp(0, ch),
            shifted[:, 2].clamp(0, cw),
            shifted[:, 3].clamp(0, ch),
        ],
        dim=1,
    )
    keep = (_area(clipped) >= min_visibility * _area(shifted)) & (_area(clipped) > 0)
    out = _select(out, keep)
    out["boxes"] = clipped[keep]
    return out


def random_flip(
    sample: dict[str, Any], generator: torch.Generator | None = None, hflip: bool = True, vflip: bool = True
) -> dict[str, Any]:
    """Random horizontal and vertical flips (each with probability 0.5) of image and boxes.

    Args:
        sample: ``image`` ``(C, H, W)`` and ``boxes`` ``(N, 4)`` xyxy pixels.
        generator: random generator.
        hflip: allow left-right flips.
        vflip: allow top-bottom flips.

    Returns:
        The flipped sample.
    """
    out = dict(sample)
    _, h, w = out["image"].shape
    flips = torch.rand(2, generator=generator) < 0.5
    flips = flips & torch.tensor([hflip, vflip])
    if flips[0]:
        out["image"] = out["image"].flip(-1)
        b = out["boxes"]
        out["boxes"] = torch.stack([w - b[:, 2], b[:, 1], w - b[:, 0], b[:, 3]], dim=1)
    if flips[1]:
        out["image"] = out["image"].flip(-2)
        b = out["boxes"]
        out["boxes"] = torch.stack([b[:, 0], h - b[:, 3], b[:, 2], h - b[:, 1]], dim=1)
    return out


class TrainTransform:
    """Training augmentation: drop difficult objects, random crop, random flips.

    Args:
        crop_size: crop side, pixels.
        min_visibility: share of its area a clipped box must keep (see :func:`random_crop`).
        object_prob: probability of an object-centred crop.
        hflip: random left-right flips.
        vflip: random top-bottom flips.
        keep_difficult: keep difficult objects as ordinary targets.
    """

    def __init__(
        self,
        crop_size: int,
        min_visibility: float = 0.5,
        object_prob: float = 0.5,
        hflip: bool = True,
        vflip: bool = True,
        keep_difficult: bool = False,
    ) -> None:
        if crop_size < 1:
            raise ValueError(f"data.crop_size must be positive, got {crop_size}")
        self.crop_size = int(crop_size)
        self.min_visibility = float(min_visibility)
        self.object_prob = float(object_prob)
        self.hflip, self.vflip = bool(hflip), bool(vflip)
        self.keep_difficult = bool(keep_difficult)

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        """Augment one sample (image of any dtype)."""
        if not self.keep_difficult:
            sample = _select(sample, ~sample["difficult"])
        sample = random_crop(sample, self.crop_size, self.min_visibility, self.object_prob)
        return random_flip(sample, hflip=self.hflip, vflip=self.vflip)


class DetectionDataset(Dataset):
    """Serves :class:`DetectionRecord` s as sample dicts (see the module docstring); unreadable images are skipped.

    Args:
        records: the images and their annotations.
        classes: class names in index order.
        transform: applied to the sample while its image is still uint8 (crop first, so a
            large scene is not converted to float whole).
        raster: how image files become bands (:class:`~rsfm.data.io.RasterRule`).
    """

    def __init__(
        self,
        records: Sequence[DetectionRecord],
        classes: Sequence[str],
        transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        raster: RasterRule = RasterRule(),  # noqa: B008 (frozen)
    ) -> None:
        self.records = list(records)
        self.classes = list(classes)
        self.transform = transform
        self.raster = raster

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        """Sample ``index``: ``image`` (C, H, W) float32 in [0, 1], ``boxes``, ``labels``, ``difficult``, ``id``.

        When the image cannot be read (:data:`~rsfm.data.skips.READ_ERRORS`: empty, truncated,
        not an image, vanished), ``{'skipped': (path, reason), 'id': str}`` instead; the
        collate (:func:`collate_lists`) leaves it out of the batch and lists it.

        Raises:
            UnsupportedImageError: naming the file, if it lacks a band of ``data.bands``.
        """
        r = self.records[index]
        try:
            image = read_image(r.image, self.raster)
        except UnsupportedImageError:
            raise  # bands the file lacks (data.bands): a setting to fix, not a damaged file
        except READ_ERRORS as err:
            return {"skipped": (str(r.image), skip_reason(r.image, err)), "id": r.id}
        sample = {
            "image": image,
            "boxes": torch.from_numpy(r.boxes.copy()),
            "labels": torch.from_numpy(r.labels.copy()),
            "difficult": torch.from_numpy(r.difficult.copy()),
            "id": r.id,
        }
        _, h, w = sample["image"].shape
        b = sample["boxes"]
        b[:, 0::2] = b[:, 0::2].clamp(0, w)
        b[:, 1::2] = b[:, 1::2].clamp(0, h)
        sample = _select(sample, _area(b) > 0)
        if self.transform is not None:
            sample = self.transform(sample)
        sample["image"] = sample["image"].float().div_(255.0)
        return sample


def collate_lists(samples: Sequence[Mapping[str, Any]], empty_keys: Sequence[str] = BATCH_KEYS) -> dict[str, list[Any]]:
    """Collate detection samples key by key into lists (images differ in size, boxes in count).

    Skipped items (``{'skipped': (path, reason), ...}``, an image that could not be read) are
    left out and listed under ``'skipped'``, which the run's skip report reads.

    Args:
        samples: dataset items.
        empty_keys: the keys of a batch in which no sample is readable (each an empty list).

    Returns:
        ``{key: [value of each readable sample]}`` for the keys of the first readable sample
        (``empty_keys`` when none is readable: empty lists), plus ``'skipped':
        list[(path, reason)]``. The batch size is ``len(batch['image'])``, 0 when every item
        was skipped.
    """
    good, skipped = split_skipped(samples)
    keys = list(good[0]) if good else list(empty_keys)
    out: dict[str, list[Any]] = {key: [s[key] for s in good] for key in keys}
    out["skipped"] = skipped
    return out


class DetectionDataModule(DataModule, abc.ABC):
    """Loaders of a detection layout: random crops for training, whole images for evaluation.

    Subclasses implement :meth:`load_split` (the records of one named split, and the class
    names found) and set :attr:`split_names`. Training samples are ``crops_per_image`` random
    crops of every training image per epoch (:class:`TrainTransform`); validation and test
    samples are whole images. Batches are dicts of lists (:func:`collate_lists`).

    Args:
        root: dataset folder.
        train_split: name of the training split in the layout (image set, file or folder).
        val_split: name of the validation split, or None: drawn from the training split by
            ``val_fraction``.
        test_split: name of the test split, or None: drawn from the training split by
            ``test_fraction``.
        classes: class names in index order; None: the layout's default.
        val_fraction: share of the training split's images held out for validation when
            ``val_split`` is None.
        test_fraction: likewise for testing.
        split_seed: seed of that split.
        crop_size: training crop side, pixels.
        crops_per_image: random crops of each training image per epoch.
        min_visibility: share of its area a cropped box must keep.
        object_crop_prob: probability of a crop centred on an object.
        hflip: random left-right flips in training.
        vflip: random top-bottom flips in training.
        keep_difficult: train on difficult objects too.
        batch_size: training crops per batch and device.
        eval_batch_size: whole images per validation/test batch.
        num_workers: loader processes.
        bands: 0-based bands of the image files (any number); None: RGB.
        raster_scale: ``"auto"`` or a divisor (see :class:`~rsfm.data.io.RasterRule`).
        mean: per-band mean of images in [0, 1] (None: ImageNet's, for RGB).
        std: per-band std, likewise.
        seed: seed of the training order and the augmentation (None: the run's ``seed``).
        pin_memory: pin batches when CUDA is available.

    Raises:
        DataError: if ``root`` is not a folder or a split cannot be read.
        ValueError: naming ``data.val_fraction``/``data.test_fraction`` if one is outside
            [0, 1), or ``data.crops_per_image``/``data.crop_size`` if not positive.
    """

    sample_keys = ("image", "boxes", "labels")
    #: name of the training split when the recipe gives none
    default_train_split: str = "train"

    def __init__(
        self,
        root: str,
        train_split: str | None = None,
        val_split: str | None = None,
        test_split: str | None = None,
        classes: list[str] | None = None,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        split_seed: int = 0,
        crop_size: int = 256,
        crops_per_image: int = 1,
        min_visibility: float = 0.5,
        object_crop_prob: float = 0.5,
        hflip: bool = True,
        vflip: bool = True,
        keep_difficult: bool = False,
        batch_size: int = 4,
        eval_batch_size: int = 1,
        num_workers: int = 0,
        bands: list[int] | None = None,
        raster_scale: str | float = "auto",
        mean: list[float] | None = None,
        std: list[float] | None = None,
        seed: int | None = None,
        pin_memory: bool = True,
    ) -> None:
        super().__init__(batch_size, eval_batch_size, num_workers, seed, pin_memory)
        self.root = check_folder(root)
        if crops_per_image < 1:
            raise ValueError(f"data.crops_per_image must be >= 1, got {crops_per_image}")
        check_fraction(float(val_fraction), "data.val_fraction")
        check_fraction(float(test_fraction), "data.test_fraction")
        self.train_split = train_split or self.default_train_split
        self.val_split, self.test_split = val_split, test_split
        self._classes = [str(c) for c in classes] if classes is not None else None
        self.val_fraction, self.test_fraction, self.split_seed = (
            float(val_fraction),
            float(test_fraction),
            int(split_seed),
        )
        self.crops_per_image = int(crops_per_image)
        self.transform = TrainTransform(crop_size, min_visibility, object_crop_prob, hflip, vflip, keep_difficult)
        self.set_bands(bands, raster_scale, mean, std)
        self._splits: dict[str, list[DetectionRecord]] | None = None
        #: degenerate (zero-area) objects dropped from the annotations of the splits read: the
        #: sum of the records' ``meta['num_degenerate']`` (DOTA, DIOR, COCO), set by :meth:`splits`
        self.num_degenerate = 0

    @abc.abstractmethod
    def load_split(self, name: str, classes: list[str] | None) -> tuple[list[DetectionRecord], list[str]]:
        """Records of the split ``name`` and the class names (each layout implements it)."""

    def _load(self, name: str, classes: list[str] | None, key: str) -> tuple[list[DetectionRecord], list[str]]:
        try:
            return self.load_split(name, classes)
        except FileNotFoundError as err:
            raise DataError(f"data.{key} {name!r}: {err}") from None
        except ValueError as err:
            if isinstance(err, DataError):
                raise
            raise DataError(f"data.{key} {name!r}: {err}") from None

    def splits(self) -> dict[str, list[DetectionRecord]]:
        """The train / val / test records (read once).

        A split named twice (``val_split`` equal to ``test_split``) is read once. Objects of
        zero area dropped from the annotations are totalled in :attr:`num_degenerate` and
        reported by one warning.

        Raises:
            DataError: if a split cannot be read, the splits' classes differ, the fractions
                leave no training image (naming ``data.val_fraction``/``data.test_fraction``),
                the test split is empty, or the training split shares an image with the
                validation or test split.

        Warns:
            UserWarning: if the validation and test splits share images; if degenerate
                objects were dropped.
        """
        if self._splits is not None:
            return self._splits
        records, classes = self._load(self.train_split, self._classes, "train_split")
        loaded = {self.train_split: records}
        out: dict[str, list[DetectionRecord]] = {}
        if self.val_split is None or self.test_split is None:
            fractions = {"val": 0.0 if self.val_split is not None else self.val_fraction}
            fractions["test"] = 0.0 if self.test_split is not None else self.test_fraction
            try:
                idx = seeded_split(len(records), fractions["val"], fractions["test"], self.split_seed)
            except ValueError as err:
                drawn = [k for k in ("val", "test") if getattr(self, f"{k}_split") is None]
                keys = " and ".join(f"data.{k}_fraction" for k in drawn)
                raise DataError(
                    f"{keys} cannot split the {len(records)} images of data.train_split {self.train_split!r}: {err}"
                ) from None
            out = {k: [records[i] for i in v] for k, v in idx.items()}
        else:
            out["train"] = records
        for key in ("val", "test"):
            name = getattr(self, f"{key}_split")
            if name is None:
                continue
            if name not in loaded:
                recs, found = self._load(name, classes, f"{key}_split")
                if list(found) != list(classes):
                    raise DataError(f"the {key} split's classes {found} differ from the training split's {classes}")
                loaded[name] = recs
            out[key] = loaded[name]
        if not out["test"]:
            raise DataError("the test split is empty; set data.test_split or a positive data.test_fraction")
        check_disjoint_splits({k: [r.image for r in v] for k, v in out.items()}, self.root)
        self.num_degenerate = sum(int(r.meta.get("num_degenerate", 0)) for recs in loaded.values() for r in recs)
        if self.num_degenerate:
            warnings.warn(
                f"{self.num_degenerate} object(s) of zero area (degenerate boxes or polygons) were dropped "
                f"from the annotations of {self.root}",
                stacklevel=2,
            )
        self._classes = list(classes)
        self._splits = out
        return out

    @property
    def class_names(self) -> list[str]:
        """Class names in index order (reads the annotations if needed)."""
        if self._classes is None:
            self.splits()
        return list(self._classes or [])

    def info(self) -> DataInfo:
        """Classes, bands and normalisation."""
        return DataInfo(
            classes=self.class_names,
            num_channels=self.num_channels,
            mean=self.mean,
            std=self.std,
            sample_keys=self.sample_keys,
            bands=list(self.raster.bands) if self.raster.bands is not None else None,
            raster_scale=self.raster.scale,
            crop_size=self.transform.crop_size,
        )

    def collate(self) -> Callable[[list[Any]], Any]:
        """Dicts of lists (images differ in size, boxes in count)."""
        return collate_lists

    def make_dataset(self, records: Sequence[Any], transform: Callable[[dict[str, Any]], dict[str, Any]] | None) -> Any:
        """The dataset serving ``records`` (a :class:`DetectionDataset`; layouts of other targets override it)."""
        return DetectionDataset(records, self.class_names, transform, self.raster)

    def setup(self, stage: str | None = None) -> None:
        """Build the datasets of the splits (once): the training transform on ``train`` only."""
        if self.datasets:
            return
        splits = self.splits()
        for key in ("train", "val", "test"):
            if splits.get(key) or key != "val":
                self.datasets[key] = self.make_dataset(splits[key], self.transform if key == "train" else None)
