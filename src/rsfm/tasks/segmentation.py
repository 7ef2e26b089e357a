"""Semantic segmentation: any rsfm backbone + UperNet, random-crop training, sliding-window inference.

The recipe follows the UperNet fine-tuning of the MAE/RVSA/MTP line (MMSegmentation's
``upernet`` configs): the backbone's four-level pyramid feeds
:class:`~rsfm.models.heads.upernet.UperNetHead`, whose logits are upsampled (bilinear) to the
input and trained with cross-entropy that skips the ignore index (255). AdamW with layer-wise
lr decay on the ViT (timm's parameter groups) and the full lr on the neck and head; linear
warmup then cosine decay, stepped per batch. The lr is absolute (not scaled by batch size),
as in MMSegmentation.

Training runs on random crops of large tiles; validation, test and :func:`predict_file`
predict whole images of any size by :func:`slide_inference` (overlapping crop-sized windows,
logits averaged where they overlap), so the model always sees inputs of the training size.

.. versionadded:: 0.1
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from torch import Tensor

from rsfm.data.io import read_image
from rsfm.data.segmentation import IGNORE_INDEX, SegmentationDataModule, colourise, datamodule_from_config
from rsfm.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from rsfm.engine.export import atomic_write
from rsfm.engine.optim import dense_param_groups, step_schedule
from rsfm.eval.report import write_json
from rsfm.metrics.segmentation import SegmentationMetrics
from rsfm.models.adapters import ViTFeaturePyramid, build_backbone
from rsfm.models.heads.upernet import UperNetHead
from rsfm.tasks.recipe import encoder_normalisation, recipe_sections

__all__ = ["SegmentationTask", "build", "predict_file", "slide_inference", "window_starts"]

_TIFF = {".tif", ".tiff"}


def window_starts(size: int, crop: int, stride: int) -> list[int]:
    """Offsets of sliding windows along one axis of ``size`` pixels.

    Windows start every ``stride`` pixels; the last one is moved back to end at ``size`` so
    that all windows lie inside the image (a single window at 0 when ``size <= crop``).

    Raises:
        ValueError: if ``crop`` or ``stride`` is not positive or ``stride > crop`` (gaps).

    """
    if crop < 1 or stride < 1 or stride > crop:
        raise ValueError(f"need 0 < stride <= crop, got crop={crop}, stride={stride}")
    if size <= crop:
        return [0]
    n = math.ceil((size - crop) / stride) + 1
    return sorted({min(i * stride, size - crop) for i in range(n)})


def slide_inference(
    fn: Callable[[Tensor], Tensor],
    image: Tensor,
    num_classes: int,
    crop: int,
    stride: int,
    batch_windows: int = 8,
) -> Tensor:
    """Predict an image of any size with overlapping ``crop × crop`` windows.

    Each window's logits are added into a full-size map and divided by how many windows
    covered each pixel. An image smaller than the crop (in either side) is padded at the
    bottom/right with zeros (the mean colour after normalisation) and the padding cropped off
    the result. A pixel covered by one window gets exactly that window's logits.

    Args:
        fn: model mapping ``(N, C, crop, crop)`` to ``(N, K, crop, crop)`` logits.
        image: ``(B, C, H, W)`` float32, normalised.
        num_classes: ``K``.
        crop: window side in pixels.
        stride: step between windows in pixels, ``<= crop``.
        batch_windows: windows per call of ``fn`` (times ``B`` images).

    Returns:
        ``(B, K, H, W)`` float32 logits on ``image``'s device.

    Raises:
        ValueError: on bad sizes or if ``fn`` returns the wrong shape.

    """
    if image.ndim != 4:
        raise ValueError(f"image must be (B, C, H, W), got {tuple(image.shape)}")
    b, _, h, w = image.shape
    pad_h, pad_w = max(crop - h, 0), max(crop - w, 0)
    if pad_h or pad_w:
        image = F.pad(image, (0, pad_w, 0, pad_h))
    hp, wp = image.shape[-2:]
    boxes = [(y, x) for y in window_starts(hp, crop, stride) for x in window_starts(wp, crop, stride)]
    logits = image.new_zeros((b, num_classes, hp, wp), dtype=torch.float32)
    count = image.new_zeros((1, 1, hp, wp), dtype=torch.float32)
    for i in range(0, len(boxes), max(1, batch_windows)):
        chunk = boxes[i : i + max(1, batch_windows)]
        windows = torch.cat([image[..., y : y + crop, x : x + crop] for y, x in chunk])
        out = fn(windows)
        if tuple(out.shape) != (len(chunk) * b, num_classes, crop, crop):
            raise ValueError(
                f"fn returned {tuple(out.shape)} for windows {tuple(windows.shape)}; expected K={num_classes}"
            )
        for j, (y, x) in enumerate(chunk):
            logits[..., y : y + crop, x : x + crop] += out[j * b : (j + 1) * b].float()
            count[..., y : y + crop, x : x + crop] += 1
    return (logits / count)[..., :h, :w]


def _denormalise(image: Tensor, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """``(3, H, W)`` normalised float → ``(H, W, 3)`` uint8."""
    m = torch.tensor(mean, dtype=image.dtype, device=image.device).view(3, 1, 1)
    s = torch.tensor(std, dtype=image.dtype, device=image.device).view(3, 1, 1)
    rgb = ((image * s + m).clamp(0, 1) * 255).round().byte()
    return rgb.permute(1, 2, 0).cpu().numpy()


def render_comparison(
    image: np.ndarray,
    target: np.ndarray,
    pred: np.ndarray,
    palette: Sequence[Sequence[int]],
    class_names: Sequence[str],
    max_side: int = 768,
) -> Image.Image:
    """Side-by-side panel: image | ground truth | prediction, with a colour legend below.

    Args:
        image: ``(H, W, 3)`` uint8.
        target: ``(H, W)`` int labels (ignore pixels drawn black).
        pred: ``(H, W)`` int labels.
        palette: ``(R, G, B)`` per class.
        class_names: class names for the legend.
        max_side: longest panel side in pixels; larger images are downscaled (labels by
            nearest neighbour).

    Returns:
        An RGB PIL image.

    """
    h, w = target.shape
    scale = min(1.0, max_side / max(h, w))
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    panels = [
        Image.fromarray(image).resize(size, Image.BILINEAR),
        Image.fromarray(colourise(target, palette)).resize(size, Image.NEAREST),
        Image.fromarray(colourise(pred, palette)).resize(size, Image.NEAREST),
    ]
    gap, row = 6, 18
    rows = math.ceil(len(class_names) / 4)
    canvas = Image.new("RGB", (3 * size[0] + 2 * gap, size[1] + row * (rows + 1)), "white")
    for i, panel in enumerate(panels):
        canvas.paste(panel, (i * (size[0] + gap), 0))
    draw = ImageDraw.Draw(canvas)
    top = size[1] + 3
    draw.text((2, top), "image | ground truth | prediction (black: ignore)", fill="black")
    col_w = canvas.width // 4
    for k, name in enumerate(class_names):
        x, y = (k % 4) * col_w + 2, top + row * (1 + k // 4)
        draw.rectangle((x, y + 2, x + 12, y + 12), fill=tuple(int(c) for c in palette[k]), outline="black")
        draw.text((x + 16, y), str(name), fill="black")
    return canvas


class SegmentationTask(L.LightningModule):
    """Semantic segmentation with a multi-scale backbone and a UperNet head.

    Batches are dicts with ``image`` ``(B, 3, H, W)`` float32 (normalised) and ``mask``
    ``(B, H, W)`` int64 (labels in ``[0, K)``, ``ignore_index`` elsewhere), as made by
    :class:`~rsfm.data.segmentation.SegmentationDataModule`.

    Args:
        backbone: :func:`~rsfm.models.adapters.build_backbone` spec (plain dict).
        num_classes: number of classes ``K``.
        class_names: ``K`` names (metrics, legends); default ``"0"``...
        palette: ``(R, G, B)`` per class for visualisations; default: fixed colours.
        channels: UperNet width.
        pool_scales: pyramid-pooling bins.
        dropout: dropout before the classifier.
        lr: peak learning rate of the neck, the head and the last ViT block (absolute).
        weight_decay: AdamW weight decay (none on biases, norms, position embedding, tokens).
        layer_decay: ViT layer-wise lr decay (timm's groups: the patch embedding gets
            ``layer_decay^L`` of ``lr`` for ``L`` blocks, each block one factor more, the last
            block and the final norm the full ``lr``); None or 1 turns it off.
        warmup_epochs: epochs of linear warmup.
        min_lr_ratio: final lr as a fraction of the peak.
        crop_size: side of the sliding windows at evaluation (the training crop), pixels.
        stride: step of the sliding windows, pixels; default ``2/3`` of ``crop_size``.
        ignore_index: label skipped by the loss and the metrics.
        mean: normalisation mean of inputs in [0, 1] (for :func:`predict_file` and the
            visualisations).
        std: normalisation std of inputs in [0, 1].
        num_vis: number of test images rendered as PNG.
        batch_windows: sliding windows per forward pass.
        out_dir: folder for ``metrics.json`` and PNGs at the end of ``test``; default: the
            trainer's log folder (or its root folder without a logger).

    """

    def __init__(
        self,
        backbone: dict[str, Any],
        num_classes: int,
        class_names: Sequence[str] | None = None,
        palette: Sequence[Sequence[int]] | None = None,
        channels: int = 256,
        pool_scales: Sequence[int] = (1, 2, 3, 6),
        dropout: float = 0.1,
        lr: float = 1e-4,
        weight_decay: float = 0.05,
        layer_decay: float | None = 0.9,
        warmup_epochs: float = 1.0,
        min_lr_ratio: float = 0.0,
        crop_size: int = 256,
        stride: int | None = None,
        ignore_index: int = IGNORE_INDEX,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        num_vis: int = 4,
        batch_windows: int = 8,
        out_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["out_dir"])
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class names for {num_classes} classes")
        self.class_names = (
            [str(c) for c in class_names] if class_names is not None else [str(i) for i in range(num_classes)]
        )
        if palette is None:
            rng = np.random.default_rng(0)
            palette = rng.integers(40, 256, (num_classes, 3)).tolist()
        self.palette = [tuple(int(c) for c in p) for p in palette]
        self.stride = int(stride) if stride else max(1, crop_size * 2 // 3)
        self.backbone = build_backbone(dict(backbone))
        self.head = UperNetHead(self.backbone.out_channels, num_classes, channels, pool_scales, dropout)
        self.val_metrics = SegmentationMetrics(num_classes, ignore_index)
        self.test_metrics = SegmentationMetrics(num_classes, ignore_index)
        self.out_dir = None if out_dir is None else str(out_dir)
        self._vis: list[tuple[np.ndarray, np.ndarray, np.ndarray, str]] = []

    def forward(self, images: Tensor) -> Tensor:
        """Class logits at input resolution.

        Args:
            images: ``(B, 3, H, W)`` float32, normalised; ``H``, ``W`` multiples of the ViT
                patch size.

        Returns:
            ``(B, K, H, W)`` float32 logits (head output upsampled, bilinear).

        """
        logits = self.head(self.backbone(images))
        return F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)

    def predict_logits(self, images: Tensor) -> Tensor:
        """Sliding-window logits ``(B, K, H, W)`` of whole images of any size; see :func:`slide_inference`."""
        hp = self.hparams
        return slide_inference(self, images, hp.num_classes, hp.crop_size, self.stride, hp.batch_windows)

    def _loss(self, logits: Tensor, mask: Tensor) -> Tensor:
        if not bool((mask != self.hparams.ignore_index).any()):
            return logits.sum() * 0.0  # all ignored: mean CE would be NaN
        return F.cross_entropy(logits.float(), mask, ignore_index=self.hparams.ignore_index)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        """Cross-entropy (ignore index skipped) on a batch of crops."""
        images, mask = batch["image"], batch["mask"]
        loss = self._loss(self(images), mask)
        n = images.shape[0]
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=n)
        self.log("train/lr", self.trainer.optimizers[0].param_groups[-1]["lr"], on_step=True, batch_size=n)
        return loss

    def _eval_step(self, batch: dict[str, Any], metrics: SegmentationMetrics, stage: str) -> Tensor:
        images, mask = batch["image"], batch["mask"]
        logits = self.predict_logits(images)
        self.log(f"{stage}/loss", self._loss(logits, mask), on_epoch=True, batch_size=images.shape[0])
        preds = logits.argmax(1)
        metrics.update(preds, mask)
        return preds

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        """Accumulate the confusion matrix of whole validation images (sliding windows)."""
        self._eval_step(batch, self.val_metrics, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        """Accumulate the test confusion matrix; keep the first ``num_vis`` images for PNGs."""
        preds = self._eval_step(batch, self.test_metrics, "test")
        if self.global_rank == 0:
            for i in range(preds.shape[0]):
                if len(self._vis) >= self.hparams.num_vis:
                    break
                image = _denormalise(batch["image"][i], self.hparams.mean, self.hparams.std)
                path = batch["path"][i] if "path" in batch else f"{batch_idx}_{i}"
                self._vis.append((image, batch["mask"][i].cpu().numpy(), preds[i].cpu().numpy(), path))

    def _log_scores(self, metrics: SegmentationMetrics, stage: str) -> dict[str, Tensor]:
        scores = metrics.compute()
        for key in ("mIoU", "OA", "mF1"):
            self.log(f"{stage}/{key}", scores[key].float(), prog_bar=key == "mIoU")
        for name, iou, f1 in zip(self.class_names, scores["IoU"], scores["F1"], strict=True):
            if not torch.isnan(iou):
                self.log(f"{stage}/IoU/{name}", iou.float())
                self.log(f"{stage}/F1/{name}", f1.float())
        return scores

    def on_validation_epoch_end(self) -> None:
        """Log ``val/mIoU``, ``val/OA``, ``val/mF1`` and per-class ``val/IoU/<name>``."""
        self._log_scores(self.val_metrics, "val")
        self.val_metrics.reset()

    def on_test_epoch_start(self) -> None:
        """Forget the visualisations of a previous test run."""
        self._vis = []

    def on_test_epoch_end(self) -> None:
        """Log the test scores; write ``metrics.json`` and PNG comparisons into :attr:`out_dir`."""
        self._log_scores(self.test_metrics, "test")
        report = self.test_metrics.report(self.class_names)
        self.test_metrics.reset()
        if self.global_rank != 0:
            return
        out = Path(self.out_dir or self.trainer.log_dir or self.trainer.default_root_dir)
        write_json(out / "metrics.json", report)
        for i, (image, target, pred, path) in enumerate(self._vis):
            panel = render_comparison(image, target, pred, self.palette, self.class_names)
            name = f"test_{i:02d}_{Path(path).stem}.png".replace(" ", "_")
            atomic_write(out / name, lambda tmp, panel=panel: panel.save(tmp, format="PNG"))
        self._vis = []

    def configure_optimizers(self) -> dict[str, Any]:
        """AdamW: layer-decay groups on the ViT encoder, full lr elsewhere; warmup + cosine per step."""
        hp = self.hparams
        groups = dense_param_groups(
            self,
            self.backbone.encoder if isinstance(self.backbone, ViTFeaturePyramid) else None,
            hp.lr,
            hp.weight_decay,
            hp.layer_decay,
        )
        optimizer = torch.optim.AdamW(groups, lr=hp.lr, betas=(0.9, 0.999))
        return {
            "optimizer": optimizer,
            "lr_scheduler": step_schedule(optimizer, self.trainer, hp.warmup_epochs, hp.min_lr_ratio),
        }


# --------------------------------------------------------------------------- recipes

MODEL_KEYS = {"channels", "pool_scales", "dropout", "stride", "num_vis", "batch_windows"}


def build(cfg: Mapping[str, Any]) -> tuple[SegmentationTask, SegmentationDataModule]:
    """Build the task and datamodule of a segmentation recipe.

    Inputs are normalised with the ``mean``/``std`` recorded in an rsfm encoder export when
    ``backbone.encoder`` is set, else with ``data.mean``/``data.std`` (ImageNet by default).
    The evaluation window is ``data.crop_size``; ``model.stride`` its step.

    Args:
        cfg: the recipe as a plain dict (sections ``backbone``, ``data``, ``model``, ``optim``;
            ``trainer`` and the top-level keys are the runner's).

    Returns:
        ``(task, datamodule)``.

    Raises:
        ValueError: naming ``section.key`` for an unknown key or a bad value.
        FileNotFoundError: if the data or the encoder file is missing.

    """
    # data keys depend on data.dataset and are checked by datamodule_from_config
    backbone, data, model, optim = recipe_sections(cfg, "segmentation", set(cfg.get("data") or {}), MODEL_KEYS)

    patch = None
    meta = encoder_normalisation(backbone, data)
    if meta is not None:
        patch = int(meta["patch_size"]) if meta.get("arch") == "vit" else None
    elif backbone.get("arch", "vit") == "vit":
        patch = int(backbone.get("patch_size", 16))
    crop = int(data.get("crop_size", 256))
    if patch and crop % patch:
        raise ValueError(f"data.crop_size {crop} must be a multiple of the ViT patch size {patch}")
    stride = int(model.get("stride") or max(1, crop * 2 // 3))
    if not 0 < stride <= crop:
        raise ValueError(f"model.stride must be in (0, data.crop_size={crop}], got {stride}")

    datamodule = datamodule_from_config(data)
    task = SegmentationTask(
        backbone=backbone,
        num_classes=datamodule.num_classes,
        class_names=list(datamodule.classes),
        palette=[list(c) for c in datamodule.palette],
        channels=int(model.get("channels", 256)),
        pool_scales=tuple(int(s) for s in model.get("pool_scales", (1, 2, 3, 6))),
        dropout=float(model.get("dropout", 0.1)),
        lr=float(optim.get("lr", 1e-4)),
        weight_decay=float(optim.get("weight_decay", 0.05)),
        layer_decay=None if optim.get("layer_decay") is None else float(optim["layer_decay"]),
        warmup_epochs=float(optim.get("warmup_epochs", 1)),
        min_lr_ratio=float(optim.get("min_lr_ratio", 0.0)),
        crop_size=crop,
        stride=stride,
        mean=[float(m) for m in datamodule.train_set.mean.flatten()],
        std=[float(s) for s in datamodule.train_set.std.flatten()],
        num_vis=int(model.get("num_vis", 4)),
        batch_windows=int(model.get("batch_windows", 8)),
    )
    return task, datamodule


# --------------------------------------------------------------------------- prediction


def _georeference(path: Path) -> tuple[Any, Any, np.ndarray | None]:
    """``(crs, transform, valid)`` of a GeoTIFF; ``(None, None, None)`` for other files.

    ``valid`` is the dataset mask (``(H, W)`` bool, False on nodata). A TIFF without CRS and
    with the identity transform counts as not georeferenced.
    """
    if path.suffix.lower() not in _TIFF:
        return None, None, None
    import warnings

    import rasterio
    from rasterio.errors import NotGeoreferencedWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path) as src:
            valid = src.dataset_mask() > 0
            if src.crs is None and src.transform.is_identity:
                return None, None, valid
            return src.crs, src.transform, valid


def predict_file(
    module: SegmentationTask,
    path_in: str | os.PathLike[str],
    path_out: str | os.PathLike[str],
    crop: int | None = None,
    stride: int | None = None,
    batch_windows: int | None = None,
) -> Path:
    """Segment one image or GeoTIFF of any size by sliding windows and write the label mask.

    The mask holds class labels (uint8) with the module's class colours as a colour map /
    palette; nodata pixels of a GeoTIFF input are set to 255 (the GeoTIFF's nodata value). A
    georeferenced input gives a GeoTIFF with the input's CRS and transform.

    Args:
        module: a (fine-tuned) :class:`SegmentationTask`; its device is used.
        path_in: image (JPEG, PNG...) or (Geo)TIFF, read by :func:`rsfm.data.io.read_image`.
        path_out: ``.tif``/``.tiff`` (GeoTIFF) or ``.png`` file, or an existing folder (the mask
            is then ``<stem>_mask.tif`` for TIFF inputs, ``<stem>_mask.png`` otherwise).
        crop: window side in pixels; default the module's ``crop_size``.
        stride: window step in pixels; default the module's.
        batch_windows: windows per forward pass; default the module's.

    Returns:
        The written file.

    Raises:
        ValueError: on an unsupported output suffix, a PNG output for a georeferenced input
            (it would lose the georeference) or more than 255 classes.

    """
    path_in, path_out = Path(path_in), Path(path_out)
    hp = module.hparams
    if hp.num_classes > 255:
        raise ValueError(f"{hp.num_classes} classes do not fit a uint8 mask")
    crs, transform, valid = _georeference(path_in)
    if path_out.is_dir():
        path_out = path_out / f"{path_in.stem}_mask{'.tif' if path_in.suffix.lower() in _TIFF else '.png'}"
    suffix = path_out.suffix.lower()
    if suffix not in _TIFF | {".png"}:
        raise ValueError(f"output {path_out} must end in .tif, .tiff or .png")
    if suffix == ".png" and crs is not None:
        raise ValueError(f"{path_in} is georeferenced; write the mask as .tif to keep its CRS and transform")

    image = read_image(path_in).to(module.device)
    mean = torch.tensor(hp.mean, device=module.device).view(1, 3, 1, 1)
    std = torch.tensor(hp.std, device=module.device).view(1, 3, 1, 1)
    x = (image[None].float() / 255.0 - mean) / std
    was_training = module.training
    module.eval()
    with torch.inference_mode():
        logits = slide_inference(
            module,
            x,
            hp.num_classes,
            int(crop or hp.crop_size),
            int(stride or module.stride),
            int(batch_windows or hp.batch_windows),
        )
    module.train(was_training)
    pred = logits.argmax(1)[0].to(torch.uint8).cpu().numpy()
    if valid is not None:
        pred[~valid] = IGNORE_INDEX
    palette = [tuple(int(c) for c in p) for p in module.palette]

    if suffix == ".png":
        img = Image.fromarray(pred, mode="P")
        flat = [c for p in palette for c in p] + [0, 0, 0] * (256 - len(palette))
        img.putpalette(flat)
        return atomic_write(path_out, lambda tmp: img.save(tmp, format="PNG"))

    import rasterio

    profile = {
        "driver": "GTiff",
        "height": pred.shape[0],
        "width": pred.shape[1],
        "count": 1,
        "dtype": "uint8",
        "nodata": IGNORE_INDEX,
        "compress": "deflate",
    }
    if crs is not None or transform is not None:
        profile.update(crs=crs, transform=transform)

    def write(tmp: str) -> None:
        import warnings

        from rasterio.errors import NotGeoreferencedWarning

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(tmp, "w", **profile) as dst:
                dst.write(pred, 1)
                dst.write_colormap(1, {k: (*c, 255) for k, c in enumerate(palette)})

    return atomic_write(path_out, write)
