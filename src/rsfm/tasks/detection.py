"""Horizontal object detection: Faster R-CNN + FPN on any rsfm encoder.

:class:`DetectionTask` fine-tunes :func:`rsfm.models.detection.build_faster_rcnn` on random
crops and evaluates whole images by overlapping tiles merged with class-wise NMS
(:func:`rsfm.models.detection.detect_tiled`), scoring mAP50 and mAP50:95 overall and per
class (:class:`rsfm.metrics.detection.DetectionMAP`). :func:`build` turns a recipe
(``configs/finetune/detection_<dataset>.yaml``) into the task and its
:class:`~rsfm.data.detection.DetectionDataModule`; :func:`predict_file` writes the boxes of
an image or GeoTIFF of any size as GeoJSON, in map coordinates when the input is
georeferenced.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from PIL import Image
from torch import Tensor
from torchvision.utils import draw_bounding_boxes

from rsfm.data.detection import DetectionDataModule
from rsfm.data.io import read_image
from rsfm.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from rsfm.engine.export import atomic_write
from rsfm.engine.optim import dense_param_groups, step_schedule
from rsfm.eval.report import write_json
from rsfm.metrics.detection import DetectionMAP
from rsfm.models.adapters import ViTFeaturePyramid
from rsfm.models.detection import build_faster_rcnn, detect_tiled
from rsfm.tasks.recipe import encoder_normalisation, recipe_sections

__all__ = ["DetectionTask", "build", "predict_file", "render_boxes"]

_TIFF = {".tif", ".tiff"}


def render_boxes(
    image: Tensor,
    target: Mapping[str, Tensor],
    pred: Mapping[str, Tensor],
    class_names: Sequence[str],
    score_thresh: float = 0.5,
) -> Image.Image:
    """Ground truth (green; difficult in yellow) beside predictions (red), as one RGB image.

    Args:
        image: ``(3, H, W)`` float32 in [0, 1].
        target: ``boxes`` ``(N, 4)`` xyxy pixels, ``labels`` ``(N,)``, optional ``difficult``.
        pred: ``boxes`` ``(M, 4)`` xyxy pixels, ``scores`` ``(M,)``, ``labels`` ``(M,)``.
        class_names: names for the box captions.
        score_thresh: predictions below this score are not drawn.

    Returns:
        A ``(2W + 8) × H`` PIL image.
    """
    img = (image.detach().cpu().clamp(0, 1) * 255).round().to(torch.uint8)
    difficult = target.get("difficult")
    if difficult is None:
        difficult = torch.zeros(len(target["labels"]), dtype=torch.bool)
    t_colors = ["yellow" if d else "lime" for d in difficult.tolist()]
    t_labels = [class_names[int(c)] for c in target["labels"]]
    left = draw_bounding_boxes(img, target["boxes"].cpu(), t_labels, colors=t_colors, width=2) if t_labels else img
    keep = pred["scores"].cpu() >= score_thresh
    p_boxes, p_scores, p_cls = pred["boxes"].cpu()[keep], pred["scores"].cpu()[keep], pred["labels"].cpu()[keep]
    p_labels = [f"{class_names[int(c)]} {float(s):.2f}" for c, s in zip(p_cls, p_scores, strict=True)]
    right = draw_bounding_boxes(img, p_boxes, p_labels, colors="red", width=2) if p_labels else img
    gap = torch.full((3, img.shape[1], 8), 255, dtype=torch.uint8)
    panel = torch.cat([left, gap, right], dim=2)
    return Image.fromarray(panel.permute(1, 2, 0).numpy())


class DetectionTask(L.LightningModule):
    """Horizontal object detection with Faster R-CNN + FPN on a multi-scale rsfm backbone.

    Batches are dicts of lists, as made by :class:`~rsfm.data.detection.DetectionDataModule`:
    ``image`` ``(3, H, W)`` float32 in [0, 1] (normalised inside the detector), ``boxes``
    ``(N, 4)`` float32 xyxy pixels, ``labels`` ``(N,)`` int64 in ``[0, K)``, ``difficult``
    ``(N,)`` bool. Training batches are random crops; validation and test batches whole
    images, detected by tiles.

    Args:
        backbone: :func:`~rsfm.models.adapters.build_backbone` spec (plain dict).
        class_names: the ``K`` class names.
        fpn_channels: FPN width.
        anchor_sizes: anchor sizes (pixels) per pyramid level (five levels); default four
            times each level's stride.
        aspect_ratios: anchor aspect ratios (height/width).
        mean: normalisation mean of inputs in [0, 1] (an encoder's ``rsfm_meta`` wins).
        std: normalisation std of inputs in [0, 1].
        crop_size: training crop side, pixels (recorded as the detector's nominal size).
        tile: inference tile side, pixels.
        overlap: inference tile overlap, pixels (at least the largest object's size, so that
            every object is seen whole by some tile).
        batch_tiles: tiles per forward pass at inference.
        box_score_thresh: minimum score of a detection.
        box_nms_thresh: class-wise NMS IoU within a tile.
        merge_iou: class-wise NMS IoU of the merge across tiles.
        max_detections: detections kept per tile and per image, and considered by the mAP.
        box_batch_size_per_image: proposals sampled per crop for the box head's loss.
        rpn_post_nms_top_n_test: proposals per tile scored by the box head at inference.
        lr: peak learning rate (neck, heads; the ViT's top group), absolute.
        weight_decay: AdamW weight decay (none on biases, norms, position embedding, tokens).
        layer_decay: ViT layer-wise lr decay (block ``i`` of ``L`` gets ``layer_decay^(L-i)``
            of ``lr``); None or 1 turns it off.
        warmup_epochs: epochs of linear warmup.
        min_lr_ratio: final lr as a fraction of the peak (cosine decay per step).
        num_vis: test images rendered as PNG.
        vis_score_thresh: minimum score of a drawn prediction.
        out_dir: folder for ``metrics.json`` and PNGs at the end of ``test``; default the
            trainer's log folder (or its root folder without a logger).
    """

    def __init__(
        self,
        backbone: dict[str, Any],
        class_names: Sequence[str],
        fpn_channels: int = 256,
        anchor_sizes: Sequence[Sequence[int]] | None = None,
        aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        crop_size: int = 256,
        tile: int = 512,
        overlap: int = 128,
        batch_tiles: int = 4,
        box_score_thresh: float = 0.05,
        box_nms_thresh: float = 0.5,
        merge_iou: float = 0.5,
        max_detections: int = 100,
        box_batch_size_per_image: int = 512,
        rpn_post_nms_top_n_test: int = 1000,
        lr: float = 1e-4,
        weight_decay: float = 0.05,
        layer_decay: float | None = 0.9,
        warmup_epochs: float = 1.0,
        min_lr_ratio: float = 0.0,
        num_vis: int = 4,
        vis_score_thresh: float = 0.5,
        out_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["out_dir"])
        self.class_names = [str(c) for c in class_names]
        self.model = build_faster_rcnn(
            dict(backbone),
            num_classes=len(self.class_names),
            fpn_channels=fpn_channels,
            anchor_sizes=anchor_sizes,
            aspect_ratios=aspect_ratios,
            image_mean=mean,
            image_std=std,
            size=crop_size,
            box_score_thresh=box_score_thresh,
            box_nms_thresh=box_nms_thresh,
            detections_per_img=max_detections,
            box_batch_size_per_image=box_batch_size_per_image,
            rpn_post_nms_top_n_test=rpn_post_nms_top_n_test,
        )
        self.val_map = DetectionMAP(self.class_names, max_detections)
        self.test_map = DetectionMAP(self.class_names, max_detections)
        self.out_dir = None if out_dir is None else str(out_dir)
        self._vis: list[tuple[Tensor, dict[str, Tensor], dict[str, Tensor], str]] = []

    def forward(self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None) -> Any:
        """Torchvision's interface: the loss dict in train mode, detections in eval mode.

        Args:
            images: ``(3, H, W)`` float32 in [0, 1], any sizes.
            targets: (train mode) ``boxes`` ``(N, 4)`` xyxy pixels and ``labels`` ``(N,)`` in
                ``[0, K)``.

        Returns:
            ``{'loss_classifier', 'loss_box_reg', 'loss_objectness', 'loss_rpn_box_reg'}`` in
            train mode; per image ``boxes``, ``scores``, ``labels`` (in ``[0, K)``) in eval mode.
        """
        if targets is not None:
            targets = [{"boxes": t["boxes"], "labels": t["labels"] + 1} for t in targets]
        out = self.model(images, targets)
        if self.model.training:
            return out
        return [{**d, "labels": d["labels"] - 1} for d in out]

    @torch.no_grad()
    def detect(
        self,
        images: Sequence[Tensor],
        tile: int | None = None,
        overlap: int | None = None,
        score_thresh: float | None = None,
    ) -> list[dict[str, Tensor]]:
        """Detect objects in whole images of any size by overlapping tiles.

        Args:
            images: ``(3, H, W)`` float32 in [0, 1].
            tile: tile side, pixels; default the module's.
            overlap: tile overlap, pixels; default the module's.
            score_thresh: drop detections scoring lower (on top of ``box_score_thresh``).

        Returns:
            Per image ``boxes`` ``(M, 4)`` float32 xyxy image pixels, ``scores`` ``(M,)``,
            ``labels`` ``(M,)`` int64 in ``[0, K)``, by decreasing score.
        """
        hp = self.hparams
        was_training = self.model.training
        self.model.eval()
        out = []
        for image in images:
            d = detect_tiled(
                self.model,
                image,
                int(tile or hp.tile),
                int(hp.overlap if overlap is None else overlap),
                hp.merge_iou,
                hp.max_detections,
                hp.batch_tiles,
            )
            d["labels"] = d["labels"] - 1
            if score_thresh is not None:
                keep = d["scores"] >= score_thresh
                d = {k: v[keep] for k, v in d.items()}
            out.append(d)
        self.model.train(was_training)
        return out

    def training_step(self, batch: dict[str, list[Any]], batch_idx: int) -> Tensor:
        """Sum of the RPN and box-head losses on a batch of crops."""
        targets = [{"boxes": b, "labels": lab} for b, lab in zip(batch["boxes"], batch["labels"], strict=True)]
        losses = self(batch["image"], targets)
        loss = sum(losses.values())
        n = len(batch["image"])
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=n)
        for key, value in losses.items():
            self.log(f"train/{key}", value, on_step=False, on_epoch=True, batch_size=n)
        self.log("train/lr", self.trainer.optimizers[0].param_groups[-1]["lr"], on_step=True, batch_size=n)
        return loss

    def _eval_step(self, batch: dict[str, list[Any]], metric: DetectionMAP) -> list[dict[str, Tensor]]:
        preds = self.detect(batch["image"])
        targets = [
            {"boxes": b, "labels": lab, "difficult": d}
            for b, lab, d in zip(batch["boxes"], batch["labels"], batch["difficult"], strict=True)
        ]
        metric.update(preds, targets)
        return preds

    def validation_step(self, batch: dict[str, list[Any]], batch_idx: int) -> None:
        """Detect whole validation images by tiles; accumulate the mAP."""
        self._eval_step(batch, self.val_map)

    def test_step(self, batch: dict[str, list[Any]], batch_idx: int) -> None:
        """Detect whole test images; accumulate the mAP; keep the first ``num_vis`` for PNGs."""
        preds = self._eval_step(batch, self.test_map)
        if self.global_rank != 0:
            return
        for i, pred in enumerate(preds):
            if len(self._vis) >= self.hparams.num_vis:
                break
            target = {k: batch[k][i].cpu() for k in ("boxes", "labels", "difficult")}
            name = batch["id"][i] if "id" in batch else f"{batch_idx}_{i}"
            self._vis.append((batch["image"][i].cpu(), target, {k: v.cpu() for k, v in pred.items()}, str(name)))

    def _log_scores(self, metric: DetectionMAP, stage: str) -> dict[str, Any]:
        scores = metric.compute()
        metric.reset()
        # no ground truth at all gives None; log 0 so that checkpoint selection still works
        self.log(f"{stage}/mAP50", float(scores["mAP50"] or 0.0), prog_bar=True)
        self.log(f"{stage}/mAP50_95", float(scores["mAP50_95"] or 0.0))
        for name, entry in scores["per_class"].items():
            if entry["AP50"] is not None:
                self.log(f"{stage}/AP50/{name}", float(entry["AP50"]))
                self.log(f"{stage}/AP50_95/{name}", float(entry["AP50_95"]))
        return scores

    def on_validation_epoch_end(self) -> None:
        """Log ``val/mAP50``, ``val/mAP50_95`` and per-class ``val/AP50/<name>``."""
        self._log_scores(self.val_map, "val")

    def on_test_epoch_start(self) -> None:
        """Forget the visualisations of a previous test run."""
        self._vis = []

    def on_test_epoch_end(self) -> None:
        """Log the test scores; write ``metrics.json`` and PNGs (ground truth | predictions) into :attr:`out_dir`."""
        scores = self._log_scores(self.test_map, "test")
        if self.global_rank != 0:
            return
        out = Path(self.out_dir or self.trainer.log_dir or self.trainer.default_root_dir)
        write_json(out / "metrics.json", {**scores, "classes": self.class_names})
        for i, (image, target, pred, name) in enumerate(self._vis):
            panel = render_boxes(image, target, pred, self.class_names, self.hparams.vis_score_thresh)
            path = out / f"test_{i:02d}_{Path(name).stem}.png".replace(" ", "_")
            atomic_write(path, lambda tmp, panel=panel: panel.save(tmp, format="PNG"))
        self._vis = []

    def configure_optimizers(self) -> dict[str, Any]:
        """AdamW: layer-decay groups on the ViT encoder, full lr elsewhere; warmup + cosine per step."""
        hp = self.hparams
        groups = dense_param_groups(
            self,
            getattr(self.model.backbone.body, "encoder", None)
            if isinstance(self.model.backbone.body, ViTFeaturePyramid)
            else None,
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

DATA_KEYS = {
    "format", "root", "sets", "image_dir", "classes", "split_fractions", "crop_size", "crops_per_image",
    "min_visibility", "object_crop_prob", "flip", "keep_difficult", "batch_size", "eval_batch_size",
    "num_workers", "mean", "std",
}  # fmt: skip
MODEL_KEYS = {
    "fpn_channels", "anchor_sizes", "aspect_ratios", "tile", "overlap", "batch_tiles", "box_score_thresh",
    "box_nms_thresh", "merge_iou", "max_detections", "box_batch_size_per_image", "rpn_post_nms_top_n_test",
    "num_vis", "vis_score_thresh",
}  # fmt: skip


def build(cfg: Mapping[str, Any]) -> tuple[DetectionTask, DetectionDataModule]:
    """Build the task and datamodule of a detection recipe.

    Inputs are normalised with the ``mean``/``std`` recorded in an rsfm encoder export when
    ``backbone.encoder`` is set, else with ``data.mean``/``data.std`` (ImageNet by default).
    The class names come from the data (``data.classes`` or the annotations).

    Args:
        cfg: the recipe as a plain dict (sections ``backbone``, ``data``, ``model``, ``optim``;
            ``trainer`` and the top-level keys are the runner's).

    Returns:
        ``(task, datamodule)``.

    Raises:
        ValueError: naming ``section.key`` for an unknown key or a bad value.
        FileNotFoundError: if the data or the encoder file is missing.
    """
    backbone, data, model, optim = recipe_sections(cfg, "detection", DATA_KEYS, MODEL_KEYS)
    for key in ("format", "root"):
        if key not in data:
            raise ValueError(f"data.{key} is required")

    encoder_normalisation(backbone, data)
    mean = [float(v) for v in data.pop("mean", IMAGENET_MEAN)]
    std = [float(v) for v in data.pop("std", IMAGENET_STD)]
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise ValueError(f"data.mean/data.std must be three values (std > 0), got {mean} and {std}")
    crop = int(data.get("crop_size", 256))
    tile = int(model.get("tile", 512))
    overlap = int(model.get("overlap", 128))
    if crop <= 0:
        raise ValueError(f"data.crop_size must be positive, got {crop}")
    if tile <= 0 or not 0 <= overlap < tile:
        raise ValueError(f"model.overlap must be in [0, model.tile={tile}), got {overlap}")

    datamodule = DetectionDataModule(**data, seed=int(cfg.get("seed", 0)))
    task = DetectionTask(
        backbone=backbone,
        class_names=datamodule.class_names,
        fpn_channels=int(model.get("fpn_channels", 256)),
        anchor_sizes=None if model.get("anchor_sizes") is None else [list(s) for s in model["anchor_sizes"]],
        aspect_ratios=[float(a) for a in model.get("aspect_ratios", (0.5, 1.0, 2.0))],
        mean=mean,
        std=std,
        crop_size=crop,
        tile=tile,
        overlap=overlap,
        batch_tiles=int(model.get("batch_tiles", 4)),
        box_score_thresh=float(model.get("box_score_thresh", 0.05)),
        box_nms_thresh=float(model.get("box_nms_thresh", 0.5)),
        merge_iou=float(model.get("merge_iou", 0.5)),
        max_detections=int(model.get("max_detections", 100)),
        box_batch_size_per_image=int(model.get("box_batch_size_per_image", 512)),
        rpn_post_nms_top_n_test=int(model.get("rpn_post_nms_top_n_test", 1000)),
        lr=float(optim.get("lr", 1e-4)),
        weight_decay=float(optim.get("weight_decay", 0.05)),
        layer_decay=None if optim.get("layer_decay") is None else float(optim["layer_decay"]),
        warmup_epochs=float(optim.get("warmup_epochs", 1)),
        min_lr_ratio=float(optim.get("min_lr_ratio", 0.0)),
        num_vis=int(model.get("num_vis", 4)),
        vis_score_thresh=float(model.get("vis_score_thresh", 0.5)),
    )
    return task, datamodule


# --------------------------------------------------------------------------- prediction


def _georeference(path: Path) -> tuple[Any, Any]:
    """``(crs, transform)`` of a georeferenced TIFF, else ``(None, None)``."""
    if path.suffix.lower() not in _TIFF:
        return None, None
    import warnings

    import rasterio
    from rasterio.errors import NotGeoreferencedWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path) as src:
            if src.crs is None and src.transform.is_identity:
                return None, None
            return src.crs, src.transform


def predict_file(
    module: DetectionTask,
    path_in: str | os.PathLike[str],
    path_out: str | os.PathLike[str],
    score_thresh: float | None = None,
    tile: int | None = None,
    overlap: int | None = None,
) -> Path:
    """Detect objects in one image or GeoTIFF of any size (tiled) and write them as GeoJSON.

    Each box is a ``Polygon`` feature (corners ``(x0, y0) (x1, y0) (x1, y1) (x0, y1)``) with
    properties ``class``, ``label``, ``score`` and ``bbox_px`` (xyxy pixels). For a
    georeferenced input the corners are mapped by the raster's affine transform into its CRS
    (a rotated raster gives a general quadrilateral), and the collection carries the CRS
    in GDAL's ``crs`` member; otherwise they are pixel coordinates (x right, y down, pixel
    edges, ``(0, 0)`` the top-left corner of the image).

    Args:
        module: a (fine-tuned) :class:`DetectionTask`; its device is used.
        path_in: image (JPEG, PNG...) or (Geo)TIFF, read by :func:`rsfm.data.io.read_image`.
        path_out: ``.geojson``/``.json`` file, or an existing folder (``<stem>_boxes.geojson``).
        score_thresh: keep detections scoring at least this; default the module's
            ``vis_score_thresh``.
        tile: tile side, pixels; default the module's.
        overlap: tile overlap, pixels; default the module's.

    Returns:
        The written file.

    Raises:
        ValueError: if ``path_out`` does not end in ``.geojson`` or ``.json``.
    """
    path_in, path_out = Path(path_in), Path(path_out)
    if path_out.is_dir():
        path_out = path_out / f"{path_in.stem}_boxes.geojson"
    if path_out.suffix.lower() not in (".geojson", ".json"):
        raise ValueError(f"output {path_out} must end in .geojson or .json")
    crs, transform = _georeference(path_in)
    image = read_image(path_in).to(module.device).float().div_(255.0)
    thresh = module.hparams.vis_score_thresh if score_thresh is None else float(score_thresh)
    det = module.detect([image], tile=tile, overlap=overlap, score_thresh=thresh)[0]

    features = []
    for box, score, label in zip(det["boxes"].tolist(), det["scores"].tolist(), det["labels"].tolist(), strict=True):
        x0, y0, x1, y1 = box
        ring = [(x0, y0), (x1, y0), (x1, y1), (x0, y1), (x0, y0)]
        if transform is not None:
            ring = [transform @ xy for xy in ring]
        features.append(
            {
                "type": "Feature",
                "geometry": {"type": "Polygon", "coordinates": [[[float(x), float(y)] for x, y in ring]]},
                "properties": {
                    "class": module.class_names[int(label)],
                    "label": int(label),
                    "score": float(score),
                    "bbox_px": [float(v) for v in box],
                },
            }
        )
    collection: dict[str, Any] = {
        "type": "FeatureCollection",
        "name": path_in.stem,
        "coordinates": "map" if transform is not None else "pixel",
        "image_size": [int(image.shape[2]), int(image.shape[1])],
        "features": features,
    }
    if crs is not None:
        collection["crs"] = {"type": "name", "properties": {"name": crs.to_string()}}
    if transform is not None:
        collection["transform"] = [float(v) for v in list(transform)[:6]]  # rasterio affine a..f
    text = json.dumps(collection, indent=1)

    def write(tmp: str) -> None:
        Path(tmp).write_text(text)

    return atomic_write(path_out, write)
