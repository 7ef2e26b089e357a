"""What every instance-segmentation layout shares: records, augmentation, dataset, datamodule.

Every layout (:mod:`~rsfm.data.instance.coco`, :mod:`~rsfm.data.instance.isaid`) is read into
:class:`InstanceRecord` lists (one per image) whose :meth:`InstanceRecord.read_target` decodes
the image's instances, and served by :class:`InstanceDataset` as sample dicts::

    {'image': (C, H, W) float32 in [0, 1], 'boxes': (N, 4) float32 xyxy pixels,
     'labels': (N,) int64 in [0, K), 'masks': (N, H, W) uint8 in {0, 1},
     'difficult': (N,) bool, 'id': str}

``boxes`` are the tight boxes of the served masks, in continuous pixel edges: an instance
whose pixels span columns ``x0..x1`` and rows ``y0..y1`` (inclusive) has the box ``(x0, y0,
x1 + 1, y1 + 1)``. They are recomputed from the masks after every crop, resize and flip, so
box and mask always agree. ``difficult`` is COCO's ``iscrowd`` (iSAID has none); the training
transform drops those instances from the targets, as detection does.

Until the sample is served the instances stay in a compact form: either ``masks`` ``(N, H,
W)`` bool (COCO: instances may overlap) or ``instance_map`` ``(H, W)`` int32 holding ``i + 1``
on the pixels of instance ``i`` and 0 elsewhere (iSAID: instances never overlap), so that a
training crop of a large scene only builds the masks of the crop.

Large images are trained on random crops (:class:`InstanceTrainTransform`: object-centred with
probability ``object_prob`` as in detection, an optional random rescale, flips) and evaluated
whole, so validation and test samples are full images (``N·H·W`` bytes of masks: use
``eval_batch_size: 1`` for large scenes).

Splits, fractions, the disjointness checks, bands and normalisation are those of
:class:`~rsfm.data.detection.common.DetectionDataModule`, which
:class:`InstanceSegmentationDataModule` extends. An image (or annotation PNG) that cannot be
read never stops a run: the dataset returns ``{'skipped': (path, reason), 'id': str}`` and
:func:`collate_instances` leaves it out of the batch, listing it under ``batch['skipped']``.

.. versionadded:: 0.3
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor

from rsfm.data.detection.common import DetectionDataModule, DetectionDataset, TrainTransform, collate_lists, crop_window
from rsfm.data.io import UnsupportedImageError, read_image
from rsfm.data.skips import READ_ERRORS, skip_reason

__all__ = [
    "INSTANCE_BATCH_KEYS",
    "InstanceDataset",
    "InstanceRecord",
    "InstanceSegmentationDataModule",
    "InstanceTrainTransform",
    "collate_instances",
    "finalize_instances",
    "masks_to_boxes",
    "random_instance_crop",
    "random_instance_flip",
]

#: keys of an instance-segmentation sample and batch (:func:`collate_instances`), besides ``skipped``
INSTANCE_BATCH_KEYS = ("image", "boxes", "labels", "masks", "difficult", "id")


@dataclass
class InstanceRecord(abc.ABC):
    """One image of an instance-segmentation layout; subclasses decode its instances.

    Attributes:
        image: image file.
        id: image identifier (file stem for iSAID, the COCO image id as text).
        meta: layout-specific extras (``num_degenerate``: annotations dropped while reading).
    """

    image: Path
    id: str
    meta: dict[str, Any] = field(default_factory=dict)

    @abc.abstractmethod
    def read_target(self, height: int, width: int) -> dict[str, np.ndarray]:
        """The image's instances, for an image of ``height × width`` pixels.

        Returns:
            ``labels`` ``(N,)`` int64 in ``[0, K)``, ``difficult`` ``(N,)`` bool and either
            ``masks`` ``(N, H, W)`` bool or ``instance_map`` ``(H, W)`` int32 (``i + 1`` on
            instance ``i``, 0 elsewhere).

        Raises:
            DataError: naming the file if the annotations do not fit the image.
            OSError: if an annotation file cannot be decoded (the dataset skips the image).
        """


# ------------------------------------------------------------------------------ mask helpers


def masks_to_boxes(masks: Tensor) -> Tensor:
    """Tight boxes of binary masks, in continuous pixel edges.

    Args:
        masks: ``(N, H, W)`` bool or integer (non-zero = inside), on the CPU.

    Returns:
        ``(N, 4)`` float32 xyxy pixels: ``(x0, y0, x1 + 1, y1 + 1)`` for a mask spanning
        columns ``x0..x1`` and rows ``y0..y1``; ``(0, 0, 0, 0)`` for an empty mask.
    """
    n, h, w = masks.shape
    if n == 0:
        return torch.zeros(0, 4, dtype=torch.float32)
    m = masks.detach().cpu().numpy().astype(bool, copy=False)  # numpy's any() is ~10x torch's here
    rows, cols = m.any(2), m.any(1)
    boxes = np.stack(
        [cols.argmax(1), rows.argmax(1), w - cols[:, ::-1].argmax(1), h - rows[:, ::-1].argmax(1)], 1
    ).astype(np.float32)
    boxes[~rows.any(1)] = 0.0
    return torch.from_numpy(boxes)


def _pixel_counts(masks: Tensor) -> Tensor:
    """``(N,)`` int64 pixels of each mask of ``(N, H, W)``."""
    if len(masks) == 0:
        return torch.zeros(0, dtype=torch.int64)
    m = masks.detach().cpu().numpy().reshape(len(masks), -1)
    return torch.from_numpy(np.count_nonzero(m, axis=1).astype(np.int64))


def _map_boxes_areas(instance_map: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """Tight boxes ``(n, 4)`` and pixel counts ``(n,)`` of the instances of an instance map (O(H·W))."""
    if n == 0:
        return torch.zeros(0, 4, dtype=torch.float32), torch.zeros(0, dtype=torch.int64)
    m = instance_map.numpy() if isinstance(instance_map, Tensor) else np.asarray(instance_map)
    ys, xs = np.nonzero(m)
    lab = m[ys, xs].astype(np.int64) - 1
    areas = np.bincount(lab, minlength=n)
    order = np.argsort(lab, kind="stable")
    lab, ys, xs = lab[order], ys[order], xs[order]
    boxes = np.zeros((n, 4), dtype=np.float32)
    present = areas > 0
    starts = np.concatenate([[0], np.cumsum(areas)[:-1]])[present]
    boxes[present, 0] = np.minimum.reduceat(xs, starts)
    boxes[present, 1] = np.minimum.reduceat(ys, starts)
    boxes[present, 2] = np.maximum.reduceat(xs, starts) + 1
    boxes[present, 3] = np.maximum.reduceat(ys, starts) + 1
    return torch.from_numpy(boxes), torch.from_numpy(areas.astype(np.int64))


def _instance_count(sample: Mapping[str, Any]) -> int:
    return len(sample["labels"])


def _boxes_areas(sample: Mapping[str, Any]) -> tuple[Tensor, Tensor]:
    """Tight boxes and pixel counts of the instances of a sample in either compact form."""
    if "instance_map" in sample:
        return _map_boxes_areas(sample["instance_map"], _instance_count(sample))
    masks = sample["masks"]
    return masks_to_boxes(masks), _pixel_counts(masks)


def _select(sample: dict[str, Any], keep: Tensor) -> dict[str, Any]:
    """Keep the instances ``keep`` (``(N,)`` bool) of a sample in either compact form."""
    if bool(keep.all()):
        return sample
    out = dict(sample)
    for key in ("labels", "difficult", "boxes", "areas"):
        if key in out:
            out[key] = sample[key][keep]
    if "masks" in out:
        out["masks"] = sample["masks"][keep]
    if "instance_map" in out:
        lut = torch.zeros(len(keep) + 1, dtype=torch.int32)
        lut[1:][keep] = torch.arange(1, int(keep.sum()) + 1, dtype=torch.int32)
        out["instance_map"] = lut[sample["instance_map"].long()]
    return out


def _crop(sample: dict[str, Any], x0: int, y0: int, cw: int, ch: int) -> dict[str, Any]:
    out = dict(sample)
    out["image"] = sample["image"][:, y0 : y0 + ch, x0 : x0 + cw]
    if "masks" in out:
        out["masks"] = sample["masks"][:, y0 : y0 + ch, x0 : x0 + cw]
    if "instance_map" in out:
        out["instance_map"] = sample["instance_map"][y0 : y0 + ch, x0 : x0 + cw]
    return out


def _resize(sample: dict[str, Any], height: int, width: int) -> dict[str, Any]:
    """Resize image (bilinear, antialiased when shrinking) and masks (nearest) to ``height × width``."""
    image = sample["image"]
    _, h, w = image.shape
    if (h, w) == (height, width):
        return sample
    out = dict(sample)
    shrink = height < h or width < w
    resized = F.interpolate(
        image[None].float(), size=(height, width), mode="bilinear", align_corners=False, antialias=shrink
    )[0]
    out["image"] = resized.round_().clamp_(0, 255).to(image.dtype) if not image.is_floating_point() else resized
    if "masks" in out:
        m = sample["masks"]
        out["masks"] = F.interpolate(m[None].to(torch.uint8), size=(height, width), mode="nearest-exact")[0].bool()
    if "instance_map" in out:
        # instance indices below 2**24 are exact in float32
        m = sample["instance_map"][None, None].to(torch.float32)
        out["instance_map"] = F.interpolate(m, size=(height, width), mode="nearest-exact")[0, 0].to(torch.int32)
    if "areas" in out:
        out["areas"] = sample["areas"].to(torch.float64) * (height * width / (h * w))
    return out


# ------------------------------------------------------------------------------ augmentation


def random_instance_crop(
    sample: dict[str, Any],
    size: int,
    object_prob: float = 0.5,
    scale_range: tuple[float, float] | None = None,
    generator: torch.Generator | None = None,
) -> dict[str, Any]:
    """Random ``size × size`` crop of an instance sample, with an optional random rescale.

    The window is drawn by :func:`~rsfm.data.detection.common.crop_window`: with probability
    ``object_prob`` among those holding a randomly chosen non-difficult instance's box whole,
    otherwise uniformly. With ``scale_range = (lo, hi)``, a factor ``s`` is drawn uniformly in
    ``[lo, hi]`` and a window of side ``round(size / s)`` is cut and resized to ``size``
    (image bilinear, masks nearest), which equals rescaling the whole image by ``s`` and
    cutting ``size`` pixels, without resizing the whole scene. An image smaller than the
    window keeps its size on that axis (times the rescale).

    Args:
        sample: ``image`` ``(C, H, W)`` (any dtype), ``labels`` ``(N,)``, ``difficult`` ``(N,)``
            and ``masks`` ``(N, H, W)`` bool or ``instance_map`` ``(H, W)`` int32; ``boxes``
            (tight boxes) and ``areas`` (pixel counts) are computed when absent. Other keys
            pass through.
        size: crop side, pixels.
        object_prob: probability of an object-centred window.
        scale_range: ``(lo, hi)`` positive rescale factors, or None (no rescale).
        generator: random generator (default: torch's global one, seeded per sample by
            :class:`~rsfm.data.samplers.KeyedDataset`).

    Returns:
        The cropped sample, masks in the same compact form; ``areas`` (float64) holds each
        instance's whole area in pixels of the rescaled image, for the visibility rule of
        :func:`finalize_instances`. ``boxes`` are stale (recomputed there).
    """
    out = dict(sample)
    if "boxes" not in out or "areas" not in out:
        out["boxes"], out["areas"] = _boxes_areas(out)
    _, h, w = out["image"].shape
    side = int(size)
    if scale_range is not None:
        lo, hi = scale_range
        s = lo + (hi - lo) * float(torch.rand((), generator=generator))
        side = max(1, round(size / s))
    x0, y0, cw, ch = crop_window(out["boxes"], out["difficult"], side, h, w, object_prob, generator)
    out = _crop(out, x0, y0, cw, ch)
    if side != size:
        f = size / side
        out = _resize(out, max(1, round(ch * f)), max(1, round(cw * f)))
    return out


def random_instance_flip(
    sample: dict[str, Any], generator: torch.Generator | None = None, hflip: bool = True, vflip: bool = True
) -> dict[str, Any]:
    """Random horizontal and vertical flips (each with probability 0.5) of image and masks.

    Args:
        sample: ``image`` ``(C, H, W)`` and ``masks`` ``(N, H, W)`` or ``instance_map`` ``(H, W)``.
        generator: random generator.
        hflip: allow left-right flips.
        vflip: allow top-bottom flips.

    Returns:
        The flipped sample (``boxes`` are stale: :func:`finalize_instances` recomputes them).
    """
    out = dict(sample)
    flips = (torch.rand(2, generator=generator) < 0.5) & torch.tensor([hflip, vflip])
    for flip, dim in zip(flips.tolist(), (-1, -2), strict=True):
        if flip:
            for key in ("image", "masks", "instance_map"):
                if key in out:
                    out[key] = out[key].flip(dim)
    return out


def finalize_instances(sample: dict[str, Any], min_area: int = 0, min_visibility: float = 0.0) -> dict[str, Any]:
    """Turn a compact sample into the served form: ``masks`` uint8, tight ``boxes``.

    Builds ``(N, H, W)`` masks from an ``instance_map``, drops instances whose mask is empty
    or, when ``areas`` (whole areas before a crop) are present, smaller than both
    ``min_area`` pixels and ``min_visibility`` of their whole area, and recomputes ``boxes``
    as the tight boxes of the kept masks.

    Args:
        sample: ``image``, ``labels``, ``difficult``, ``id``, ``masks`` or ``instance_map``,
            optionally ``areas``.
        min_area: an instance with at least this many pixels left is kept.
        min_visibility: an instance with at least this share of its whole area left is kept.

    Returns:
        The sample with :data:`INSTANCE_BATCH_KEYS` (image unchanged in dtype).
    """
    n = _instance_count(sample)
    if "instance_map" in sample:
        boxes, pixels = _map_boxes_areas(sample["instance_map"], n)
    else:
        boxes, pixels = masks_to_boxes(sample["masks"]), _pixel_counts(sample["masks"])
    keep = pixels > 0
    if "areas" in sample:
        areas = sample["areas"].to(torch.float64)
        keep &= (pixels >= min_area) | (pixels >= min_visibility * areas)
    if "instance_map" in sample:
        m = sample["instance_map"]
        index = torch.arange(1, n + 1, dtype=m.dtype)[keep]
        masks = (m[None] == index[:, None, None]).to(torch.uint8)
    else:
        masks = sample["masks"][keep].to(torch.uint8)
    return {
        "image": sample["image"],
        "boxes": boxes[keep],
        "labels": sample["labels"][keep],
        "masks": masks,
        "difficult": sample["difficult"][keep],
        "id": sample["id"],
    }


class InstanceTrainTransform(TrainTransform):
    """Training augmentation: drop difficult instances, random (rescaled) crop, flips, filtering.

    The crop is :func:`random_instance_crop`, the flips :func:`random_instance_flip`; then
    :func:`finalize_instances` builds the masks of the crop, keeps an instance if at least
    ``min_area`` pixels or ``min_visibility`` of its (rescaled) area are left, and recomputes
    every box from its mask. Randomness comes from torch's global RNG, which
    :class:`~rsfm.data.samplers.KeyedDataset` seeds per sample.

    Args:
        crop_size: crop side, pixels.
        min_visibility: share of its area that keeps a cut instance however small.
        object_prob: probability of an object-centred crop.
        hflip: random left-right flips.
        vflip: random top-bottom flips.
        keep_difficult: keep difficult (crowd) instances as ordinary targets.
        scale_range: ``(lo, hi)`` random rescale factors, or None.
        min_area: pixels that keep a cut instance whatever its share.

    Raises:
        ValueError: naming ``data.crop_size``, ``data.scale_range`` or ``data.min_area`` if out
            of range.
    """

    def __init__(
        self,
        crop_size: int,
        min_visibility: float = 0.5,
        object_prob: float = 0.5,
        hflip: bool = True,
        vflip: bool = True,
        keep_difficult: bool = False,
        scale_range: Sequence[float] | None = None,
        min_area: int = 16,
    ) -> None:
        super().__init__(crop_size, min_visibility, object_prob, hflip, vflip, keep_difficult)
        if scale_range is not None:
            if len(scale_range) != 2 or not 0 < float(scale_range[0]) <= float(scale_range[1]):
                raise ValueError(f"data.scale_range must be [low, high] with 0 < low <= high, got {scale_range}")
            scale_range = (float(scale_range[0]), float(scale_range[1]))
        if min_area < 0:
            raise ValueError(f"data.min_area must be >= 0 pixels, got {min_area}")
        self.scale_range: tuple[float, float] | None = scale_range  # type: ignore[assignment]
        self.min_area = int(min_area)

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        """Augment one compact sample (image of any dtype); returns the served form."""
        if not self.keep_difficult:
            sample = _select(sample, ~sample["difficult"])
        sample = random_instance_crop(sample, self.crop_size, self.object_prob, self.scale_range)
        sample = random_instance_flip(sample, hflip=self.hflip, vflip=self.vflip)
        return finalize_instances(sample, self.min_area, self.min_visibility)


# ------------------------------------------------------------------------------ dataset


class InstanceDataset(DetectionDataset):
    """Serves :class:`InstanceRecord` s as sample dicts (see the module docstring); unreadable files are skipped.

    Args:
        records: the images and their annotations.
        classes: class names in index order.
        transform: applied to the compact sample while its image is still uint8 (crop first,
            so a large scene is neither converted to float nor expanded into masks whole);
            it must return the served form (:class:`InstanceTrainTransform` does). None:
            whole images.
        raster: how image files become bands (:class:`~rsfm.data.io.RasterRule`).
    """

    def __getitem__(self, index: int) -> dict[str, Any]:
        """Sample ``index`` with :data:`INSTANCE_BATCH_KEYS` (see the module docstring).

        When the image or an annotation file cannot be read (:data:`~rsfm.data.skips.READ_ERRORS`:
        empty, truncated, not an image, vanished), ``{'skipped': (path, reason), 'id': str}``
        instead; :func:`collate_instances` leaves it out of the batch and lists it.

        Raises:
            UnsupportedImageError: naming the file, if it lacks a band of ``data.bands``.
            DataError: naming the file if its annotations do not fit the image.
        """
        r = self.records[index]
        try:
            image = read_image(r.image, self.raster)
        except UnsupportedImageError:
            raise  # bands the file lacks (data.bands): a setting to fix, not a damaged file
        except READ_ERRORS as err:
            return {"skipped": (str(r.image), skip_reason(r.image, err)), "id": r.id}
        _, h, w = image.shape
        try:
            target = r.read_target(int(h), int(w))
        except READ_ERRORS as err:
            path = getattr(err, "path", None) or getattr(err, "filename", None) or r.image
            return {"skipped": (str(path), skip_reason(path, err)), "id": r.id}
        sample: dict[str, Any] = {
            "image": image,
            "labels": torch.from_numpy(np.asarray(target["labels"], dtype=np.int64).copy()),
            "difficult": torch.from_numpy(np.asarray(target["difficult"], dtype=bool).copy()),
            "id": r.id,
        }
        if "instance_map" in target:
            sample["instance_map"] = torch.from_numpy(np.ascontiguousarray(target["instance_map"], dtype=np.int32))
        else:
            sample["masks"] = torch.from_numpy(np.ascontiguousarray(target["masks"], dtype=bool))
        sample = self.transform(sample) if self.transform is not None else finalize_instances(sample)
        sample["image"] = sample["image"].float().div_(255.0)
        return {key: sample[key] for key in INSTANCE_BATCH_KEYS}


def collate_instances(samples: Sequence[Mapping[str, Any]]) -> dict[str, list[Any]]:
    """Collate instance samples key by key into lists, setting aside skipped items.

    Args:
        samples: dataset items (``{'skipped': (path, reason), ...}`` for an unreadable file).

    Returns:
        ``{key: [value of each readable sample]}`` for :data:`INSTANCE_BATCH_KEYS`, plus
        ``'skipped': list[(path, reason)]``. The batch size is ``len(batch['image'])``, 0 when
        every item was skipped (every key then holds an empty list).
    """
    return collate_lists(samples, INSTANCE_BATCH_KEYS)


# --------------------------------------------------------------------------- datamodule


class InstanceSegmentationDataModule(DetectionDataModule):
    """Loaders of an instance-segmentation layout: random crops for training, whole images for evaluation.

    Subclasses implement :meth:`load_split` (the :class:`InstanceRecord` s of one named split
    and the class names) and may set :attr:`default_train_split`. Training samples are
    ``crops_per_image`` random crops of every training image per epoch
    (:class:`InstanceTrainTransform`); validation and test samples are whole images. Batches
    are dicts of lists (:func:`collate_instances`) with the keys of :data:`INSTANCE_BATCH_KEYS`.

    Args:
        root: dataset folder.
        scale_range: ``[low, high]`` random rescale factors of the training crops (e.g.
            ``[0.5, 2.0]``), or None: no rescale.
        min_area: pixels that keep an instance cut by the crop (default 16); smaller
            remnants are kept only if they hold ``min_visibility`` of the instance's area.
        **kwargs: the options of :class:`~rsfm.data.detection.common.DetectionDataModule`:
            ``train_split``, ``val_split``, ``test_split``, ``classes``, ``val_fraction``,
            ``test_fraction``, ``split_seed``, ``crop_size``, ``crops_per_image``,
            ``min_visibility`` (default 0.5), ``object_crop_prob``, ``hflip``, ``vflip``,
            ``keep_difficult``, ``batch_size``, ``eval_batch_size``, ``num_workers``, ``bands``,
            ``raster_scale``, ``mean``, ``std``, ``seed``, ``pin_memory``.

    Raises:
        DataError: if ``root`` is not a folder or a split cannot be read.
        ValueError: naming ``data.scale_range``, ``data.min_area`` or the option of
            :class:`~rsfm.data.detection.common.DetectionDataModule` that is out of range.
    """

    sample_keys = ("image", "boxes", "labels", "masks")

    def __init__(
        self, root: str, scale_range: Sequence[float] | None = None, min_area: int = 16, **kwargs: Any
    ) -> None:
        super().__init__(root, **kwargs)
        t = self.transform
        self.transform = InstanceTrainTransform(
            t.crop_size, t.min_visibility, t.object_prob, t.hflip, t.vflip, t.keep_difficult, scale_range, min_area
        )

    def collate(self) -> Callable[[list[Any]], Any]:
        """Dicts of lists (images differ in size, instances in count), skipped items listed."""
        return collate_instances

    def make_dataset(self, records: Sequence[Any], transform: Callable[[dict[str, Any]], dict[str, Any]] | None) -> Any:
        """An :class:`InstanceDataset` (masks decoded per sample)."""
        return InstanceDataset(records, self.class_names, transform, self.raster)  # type: ignore[arg-type]
