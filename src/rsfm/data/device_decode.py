"""Pretraining images decoded and augmented on the accelerator (``data.decode: device``).

With ``data.decode: device`` the loader workers no longer decode JPEGs or resize crops. A
worker reads a file's bytes, reads the image size from the JPEG header, and draws the random
resized crop and flips exactly as :func:`~rsfm.data.transforms.pretrain_transform` would draw
them for that image (same seeded RNG, same order of draws); the batch carries the undecoded
bytes and the drawn parameters. When the batch reaches the device,
:func:`decode_and_augment` decodes its JPEGs there in one call
(:func:`torchvision.io.decode_jpeg` with ``device=``, nvJPEG on a CUDA device), then crops,
resizes (bicubic, antialiased), flips and scales each image to [0, 1] on the device.

On a CPU device the result is the worker pipeline's, bit for bit (same decoder, same resize
kernel, same parameters; tested). On a GPU the decoder and the resize kernel differ, so
pixels differ by rounding, not by content. nvJPEG does not report damaged entropy-coded data
as libjpeg-turbo does, so on a GPU a JPEG corrupt in its middle (but ending with its
end-of-image marker) is decoded, garbage blocks included, where the workers would skip it as
``'corrupt'``; curate a corpus (``rsfm curate``) to exclude such files before training.

What stays in the workers, decoded there as before (and still cropped on the device): files
that are not JPEG (PNG, TIFF, ...), a JPEG whose header is not 8-bit RGB or greyscale (CMYK,
12-bit), a JPEG that does not end with its end-of-image marker (truncated files are then
rejected by libjpeg in the worker, as they are without this option: nvJPEG may decode a
truncated stream without an error), and every file when ``data.bands`` selects bands. A JPEG
that the device cannot decode is decoded again on the CPU with
:func:`~rsfm.data.io.decode_image`; if that fails too it is skipped and counted with the
reason the worker pipeline would give, never silently dropped.

The option pays where JPEG decoding and bicubic resizing of large scenes limit the loader
while the accelerator has spare time: a GPU fed by few CPU cores. On a CPU device it moves
that work from the workers into the training process, which is slower (see
``benchmarks/loader.py``).

.. versionadded:: 0.3
"""

from __future__ import annotations

import io
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from rsfm.data.io import _JPEG_EXTENSIONS, BadImageError, RasterRule, decode_image
from rsfm.data.samplers import sample_seed
from rsfm.data.skips import split_skipped
from rsfm.data.transforms import check_scale

__all__ = ["DECODE_MODES", "DeferredAugment", "collate_deferred", "decode_and_augment", "deferred_item", "is_jpeg"]

log = logging.getLogger(__name__)

#: values of ``data.decode``
DECODE_MODES = ("workers", "device")


def is_jpeg(name: str | Path) -> bool:
    """Whether a file or tile name has a JPEG extension (``.jpg``, ``.jpeg``, any case)."""
    return Path(name).suffix.lower() in _JPEG_EXTENSIONS


class DeferredAugment:
    """The worker half of device-side augmentation: draw the random resized crop and flips, apply nothing.

    Called on a decoded ``(C, H, W)`` uint8 image (a file the workers decode), it returns
    ``{'raw': image, 'params': (6,) int64}``; :meth:`jpeg` does the same for undecoded JPEG
    bytes, reading the size from the header. ``params`` holds ``(top, left, height, width)``
    of the crop in pixels of the source image, then the horizontal and vertical flip flags
    (0/1). The draws are those of :func:`~rsfm.data.transforms.pretrain_transform` (or
    :func:`~rsfm.data.transforms.finetune_transform` with ``vflip``) in the same order from
    torch's global RNG, so under the same seed both pipelines crop and flip alike.

    Args:
        img_size: output side in pixels.
        scale: range of the crop area as a fraction of the image area.
        hflip: random horizontal flip with probability 0.5.
        vflip: random vertical flip with probability 0.5.

    Raises:
        ValueError: if ``scale`` is out of range.

    .. versionadded:: 0.3
    """

    def __init__(
        self, img_size: int, scale: tuple[float, float] = (0.2, 1.0), hflip: bool = True, vflip: bool = False
    ) -> None:
        from torchvision.transforms import v2

        self.img_size = int(img_size)
        self.scale = check_scale(scale)
        self.hflip = bool(hflip)
        self.vflip = bool(vflip)
        self._crop = v2.RandomResizedCrop(self.img_size, scale=self.scale, antialias=True)

    def draw(self, height: int, width: int) -> Tensor:
        """Draw the crop and flips for an image of ``height`` x ``width`` pixels.

        Returns:
            ``(6,)`` int64: top, left, height, width (pixels), horizontal flip, vertical flip.
        """
        # the crop's parameter draw needs only the size: a zero-stride tensor of that shape
        shape = torch.empty((), dtype=torch.uint8).expand(1, int(height), int(width))
        box = self._crop.make_params([shape])
        # v2.RandomHorizontalFlip / RandomVerticalFlip(p=0.5) flip when torch.rand(1) < 0.5
        hflip = bool(torch.rand(1) < 0.5) if self.hflip else False
        vflip = bool(torch.rand(1) < 0.5) if self.vflip else False
        return torch.tensor([box["top"], box["left"], box["height"], box["width"], hflip, vflip], dtype=torch.int64)

    def __call__(self, image: Tensor) -> dict[str, Tensor]:
        """Parameters for a decoded ``(C, H, W)`` uint8 image, which travels decoded."""
        return {"raw": image, "params": self.draw(image.shape[-2], image.shape[-1])}

    def jpeg(self, data: bytes) -> dict[str, Tensor] | None:
        """Parameters for undecoded JPEG bytes, or None when the workers must decode this file.

        None for bytes that are not an 8-bit RGB or greyscale JPEG by their header, and for a
        stream whose last two bytes are not the end-of-image marker (possibly truncated: the
        workers' decoder rejects those; a file with bytes after the marker is decoded there
        too). Nothing is drawn from the RNG then.

        Returns:
            ``{'raw': (N,) uint8 (the bytes), 'params': (6,) int64}`` or None.
        """
        from PIL import Image, UnidentifiedImageError

        if not data.endswith(b"\xff\xd9"):
            return None
        try:
            with Image.open(io.BytesIO(data)) as img:  # reads the header only
                if img.format != "JPEG" or img.mode not in ("RGB", "L"):
                    return None
                width, height = img.size
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
            return None
        raw = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        return {"raw": raw, "params": self.draw(height, width)}

    def __repr__(self) -> str:
        return f"DeferredAugment(img_size={self.img_size}, scale={self.scale}, hflip={self.hflip}, vflip={self.vflip})"


def deferred_item(
    transform: DeferredAugment, data: bytes, name: str, seed: int, epoch: int, index: int
) -> dict[str, Any] | None:
    """A dataset item with undecoded JPEG bytes, or None when the file must be decoded in the worker.

    The crop and flips are drawn under ``sample_seed(seed, epoch, index)``, the seed the
    dataset would give the worker-side transform, and the caller's RNG state is restored.

    Args:
        transform: the worker half of the augmentation.
        data: the file's bytes.
        name: the file (or tile) name, carried for the skip report.
        seed: the dataset's augmentation seed.
        epoch: the epoch of this draw.
        index: the sample's index in its dataset.

    Returns:
        ``{'raw', 'params', 'name'}`` (see :meth:`DeferredAugment.jpeg`), or None for a file
        that is not a JPEG by its name or header.
    """
    if not is_jpeg(name):
        return None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(sample_seed(seed, epoch, index))
        item = transform.jpeg(data)
    if item is None:
        return None
    item["name"] = name
    return item


def collate_deferred(batch: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Collate the items of a device-augmented dataset, setting aside the skipped ones.

    Args:
        batch: items ``{'raw', 'params', 'name', 'index'[, 'id', 'label']}`` (``'raw'`` is
            ``(N,)`` uint8 JPEG bytes or a ``(C, H, W)`` uint8 image), or skipped items
            ``{'skipped': (path, reason), ...}``.

    Returns:
        ``{'raw': list of B uint8 tensors, 'params': (B, 6) int64, 'name': list[str],
        'index': (B,) int64[, 'id': (B,) int64, 'label': (B,) int64], 'skipped': list[(path,
        reason)]}``; B counts the readable items (0 when every item was skipped).
    """
    good, skipped = split_skipped(batch)
    out: dict[str, Any] = {
        "raw": [item["raw"] for item in good],
        "params": torch.stack([item["params"] for item in good]) if good else torch.empty((0, 6), dtype=torch.int64),
        "name": [str(item.get("name", "")) for item in good],
        "index": torch.tensor([int(item["index"]) for item in good], dtype=torch.int64),
    }
    for key in ("id", "label"):
        if any(key in item for item in batch):
            out[key] = torch.tensor([int(item[key]) for item in good], dtype=torch.int64)
    out["skipped"] = skipped
    return out


def _decode_jpegs(raws: list[Tensor], names: list[str], device: torch.device) -> list[Tensor | BadImageError]:
    """Decode JPEG bytes on ``device`` in one call; on failure, image by image, then on the CPU.

    On a CPU device every image goes through :func:`~rsfm.data.io.decode_image`, the workers'
    strict decoder, so damaged files are skipped as they would be there.
    """
    from torchvision.io import ImageReadMode, decode_jpeg

    if not raws:
        return []
    if device.type != "cpu":
        try:
            return list(decode_jpeg(raws, mode=ImageReadMode.RGB, device=device))
        except (RuntimeError, ValueError):
            pass
    out: list[Tensor | BadImageError] = []
    for raw, name in zip(raws, names, strict=True):
        if device.type != "cpu":
            try:
                out.append(decode_jpeg(raw, mode=ImageReadMode.RGB, device=device))
                continue
            except (RuntimeError, ValueError):
                pass
        try:  # what the workers do: libjpeg-turbo, then PIL
            out.append(decode_image(raw.numpy().tobytes(), name, RasterRule()).to(device))
        except BadImageError as err:
            out.append(err)
        except Exception as err:  # a decoder bug must not stop a long run (as in the workers)
            log.warning("unexpected error decoding %s: %r", name, err)
            out.append(BadImageError(name, "unreadable", repr(err)))
    return out


def decode_and_augment(
    batch: dict[str, Any], device: torch.device | str, img_size: int, num_channels: int = 3
) -> dict[str, Any]:
    """The device half: decode a :func:`collate_deferred` batch's JPEGs on ``device``, crop, resize, flip, scale.

    Args:
        batch: a :func:`collate_deferred` batch, on the CPU (the decoder reads host memory).
        device: where to decode and augment (``cuda``: nvJPEG and CUDA kernels; ``cpu``:
            libjpeg-turbo and the workers' kernels).
        img_size: output side in pixels.
        num_channels: ``C`` of the empty image of a batch whose items were all skipped.

    Returns:
        the batch with ``'image'``: ``(B', C, img_size, img_size)`` float32 in [0, 1] on
        ``device`` in place of ``'raw'``, ``'params'`` and ``'name'``; the files that could
        not be decoded anywhere are dropped from ``'index'`` (``'id'``, ``'label'``) and added
        to ``'skipped'`` with the worker pipeline's reason, so ``B' <= B``.
    """
    from torchvision.transforms.v2 import InterpolationMode
    from torchvision.transforms.v2 import functional as F

    device = torch.device(device)
    raws: list[Tensor] = batch.pop("raw")
    params: list[list[int]] = batch.pop("params").tolist()
    names: list[str] = batch.pop("name")
    images: list[Tensor | BadImageError | None] = [None] * len(raws)
    jpeg = [i for i, raw in enumerate(raws) if raw.ndim == 1]
    for i, image in zip(jpeg, _decode_jpegs([raws[i] for i in jpeg], [names[i] for i in jpeg], device), strict=True):
        images[i] = image
    for i, raw in enumerate(raws):
        if raw.ndim != 1:
            images[i] = raw.to(device, non_blocking=True)
    keep: list[int] = []
    out: list[Tensor] = []
    skipped = list(batch.get("skipped", []))
    for i, image in enumerate(images):
        if isinstance(image, BadImageError):
            skipped.append((names[i], image.reason))
            continue
        assert image is not None
        top, left, height, width, hflip, vflip = params[i]
        image = F.resized_crop(
            image,
            top,
            left,
            height,
            width,
            [img_size, img_size],
            interpolation=InterpolationMode.BICUBIC,
            antialias=True,
        )
        if hflip:
            image = F.horizontal_flip(image)
        if vflip:
            image = F.vertical_flip(image)
        keep.append(i)
        out.append(image)
    if out:
        stacked = torch.stack(out)
    else:
        stacked = torch.empty((0, num_channels, img_size, img_size), dtype=torch.uint8, device=device)
    batch["image"] = F.to_dtype(stacked, torch.float32, scale=True)
    if len(keep) < len(raws):
        rows = torch.tensor(keep, dtype=torch.int64)
        for key in ("index", "id", "label"):
            if isinstance(batch.get(key), Tensor):
                batch[key] = batch[key][rows]
    batch["skipped"] = skipped
    return batch
