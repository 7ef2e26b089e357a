"""Change detection: fine-tune a Siamese change detector on bi-temporal image pairs.

:class:`ChangeDetectionTask` wraps :class:`~rsfm.models.change.SiameseChangeDetector` on any
backbone of :func:`~rsfm.models.adapters.build_backbone` (an rsfm encoder export, a random ViT
or a ResNet). Inputs are images in [0, 1]; the task normalises them with the encoder's own
``mean``/``std`` when it was built from an rsfm export, else with the recipe's.

Loss (``loss``): ``"ce"``, pixel cross-entropy (binary cross-entropy for one logit), or
``"ce+dice"`` (default), that plus ``dice_weight`` × the soft Dice loss of the change class
computed over the whole batch (Milletari et al., 3DV 2016). Change pixels are ~5–25 % of
LEVIR-CD; the Dice term counters that imbalance and tracks F1 directly, and pooling it over
the batch keeps it defined for pairs without change.

Optimiser: AdamW, with layer-wise lr decay on a ViT encoder (timm's groups, as
:mod:`rsfm.eval.finetune`) and the full lr on the pyramid neck and the decoder; lr per step
by :func:`~rsfm.engine.optim.warmup_cosine`.

Metrics (:mod:`rsfm.metrics.change_detection`): precision, recall, F1, IoU of the change class
and OA, logged as ``val/<name>`` and ``test/<name>``. At the end of testing, ``metrics.json``
and PNGs (before | after | ground truth | prediction) are written to ``out_dir``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from rsfm.data.change_detection import ChangeDetectionDataModule
from rsfm.data.io import read_image
from rsfm.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from rsfm.engine.export import atomic_write
from rsfm.engine.optim import dense_param_groups, step_schedule
from rsfm.eval.report import write_json
from rsfm.metrics.change_detection import ChangeDetectionMetrics, change_scores
from rsfm.models.adapters import build_backbone
from rsfm.models.change import SiameseChangeDetector
from rsfm.tasks.recipe import recipe_sections

__all__ = ["ChangeDetectionTask", "build", "change_panel", "predict_file"]

LOSSES = ("ce", "ce+dice")
DATA_KEYS = {
    "root", "crop_size", "batch_size", "eval_batch_size", "num_workers", "val_fraction", "test_fraction",
    "split_seed", "train_repeats", "hflip", "vflip", "rot90", "change_value", "mean", "std",
}  # fmt: skip
MODEL_KEYS = {"fusion", "channels", "num_classes", "loss", "dice_weight", "num_visualisations"}


def soft_dice_loss(prob: Tensor, target: Tensor, eps: float = 1.0) -> Tensor:
    """Soft Dice loss of the change class over a whole batch.

    Args:
        prob: ``(B, H, W)`` float32 change probabilities.
        target: ``(B, H, W)`` int64 in {0, 1}.
        eps: smoothing added to numerator and denominator (pixels).

    Returns:
        Scalar ``1 - (2 Σ p·y + eps) / (Σ p + Σ y + eps)``.

    """
    t = target.to(prob.dtype)
    return 1 - (2 * (prob * t).sum() + eps) / (prob.sum() + t.sum() + eps)


def change_panel(image_a: Tensor, image_b: Tensor, mask: Tensor, pred: Tensor, gap: int = 4) -> np.ndarray:
    """Side-by-side picture: before | after | ground truth | prediction.

    The ground truth is white on black. The prediction is coloured against it: white =
    change found (TP), red = false alarm (FP), green = missed change (FN), black = no change.

    Args:
        image_a: ``(3, H, W)`` float32 in [0, 1], before.
        image_b: ``(3, H, W)`` float32 in [0, 1], after.
        mask: ``(H, W)`` int64 in {0, 1}, true change.
        pred: ``(H, W)`` int64 in {0, 1}, predicted change.
        gap: white gap between panels in pixels.

    Returns:
        ``(H, 4 W + 3 gap, 3)`` uint8 RGB.

    """
    h, w = mask.shape

    def rgb(t: Tensor) -> np.ndarray:
        return (t.detach().float().clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()

    m, p = mask.bool().cpu().numpy(), pred.bool().cpu().numpy()
    gt = np.zeros((h, w, 3), np.uint8)
    gt[m] = 255
    pr = np.zeros((h, w, 3), np.uint8)
    pr[m & p] = (255, 255, 255)
    pr[~m & p] = (230, 40, 40)
    pr[m & ~p] = (40, 200, 40)
    sep = np.full((h, gap, 3), 255, np.uint8)
    return np.concatenate([rgb(image_a), sep, rgb(image_b), sep, gt, sep, pr], axis=1)


def _save_png(path: Path, array: np.ndarray) -> None:
    atomic_write(path, lambda tmp: Image.fromarray(array).save(tmp, format="PNG"))


class ChangeDetectionTask(L.LightningModule):
    """Fine-tune and evaluate a Siamese change detector.

    Batches are dicts from :class:`~rsfm.data.change_detection.ChangeDetectionDataModule`:
    ``image_a``, ``image_b`` ``(B, 3, H, W)`` float32 in [0, 1], ``mask`` ``(B, H, W)`` int64
    in {0, 1} and ``name`` (list of str).

    Args:
        backbone: :func:`~rsfm.models.adapters.build_backbone` spec (plain dict).
        fusion: ``"diff"`` or ``"concat"``, see :class:`~rsfm.models.change.SiameseChangeDetector`.
        channels: decoder width.
        num_classes: 2 (softmax logits) or 1 (one sigmoid logit).
        loss: ``"ce"`` or ``"ce+dice"``, see the module docstring.
        dice_weight: weight of the Dice term with ``"ce+dice"``.
        lr: peak learning rate of the decoder, neck and last encoder layer.
        weight_decay: AdamW weight decay (none on biases, norms, tokens, position embedding).
        layer_decay: layer-wise lr decay of a ViT encoder (timm's groups): block ``i`` of
            ``L`` gets ``layer_decay^(L - 1 - i)`` of ``lr``, the patch embedding, class token
            and position embedding ``layer_decay^L``; ``None`` or 1: off. A ResNet backbone
            trains at ``lr`` throughout.
        warmup_epochs: epochs of linear warmup.
        min_lr_ratio: final lr as a fraction of the peak (cosine decay).
        mean: per-channel mean of [0, 1] inputs, used unless the backbone is an rsfm export
            with its own.
        std: per-channel std, likewise.
        out_dir: folder for ``metrics.json`` and the PNGs of :meth:`on_test_epoch_end`;
            ``None``: the trainer's ``log_dir`` (or ``default_root_dir`` without a logger).
        num_visualisations: test pairs drawn as PNGs (the first ones of the test split).

    Raises:
        ValueError: on an unknown ``loss``, ``fusion`` or ``num_classes``.

    """

    def __init__(
        self,
        backbone: dict[str, Any],
        fusion: str = "diff",
        channels: int = 128,
        num_classes: int = 2,
        loss: str = "ce+dice",
        dice_weight: float = 1.0,
        lr: float = 1e-4,
        weight_decay: float = 0.05,
        layer_decay: float | None = 0.9,
        warmup_epochs: float = 1,
        min_lr_ratio: float = 0.01,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        out_dir: str | None = None,
        num_visualisations: int = 4,
    ) -> None:
        super().__init__()
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
        self.save_hyperparameters()
        net = build_backbone(dict(backbone))
        meta = getattr(net, "rsfm_meta", None) or {}
        if meta.get("mean") is not None and meta.get("std") is not None:
            mean, std = meta["mean"], meta["std"]
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.model = SiameseChangeDetector(net, fusion=fusion, channels=channels, num_classes=num_classes)
        self.val_metrics = ChangeDetectionMetrics()
        self.test_metrics = ChangeDetectionMetrics()
        self.out_dir = out_dir
        self._visuals: list[dict[str, Any]] = []
        self._per_image: list[dict[str, Any]] = []

    # -- inference ---------------------------------------------------------------------------

    def forward(self, image_a: Tensor, image_b: Tensor) -> Tensor:
        """Change logits of images in [0, 1].

        Args:
            image_a: ``(B, 3, H, W)`` float32 in [0, 1], before; ``H``, ``W`` multiples of the
                patch size.
            image_b: ``(B, 3, H, W)`` float32 in [0, 1], after.

        Returns:
            ``(B, num_classes, H, W)`` float32 logits.

        """
        return self.model((image_a - self.mean) / self.std, (image_b - self.mean) / self.std)

    def change_probability(self, logits: Tensor) -> Tensor:
        """``(B, num_classes, H, W)`` logits → ``(B, H, W)`` float32 probability of change."""
        if logits.shape[1] == 1:
            return logits[:, 0].float().sigmoid()
        return logits.float().softmax(1)[:, 1]

    @torch.no_grad()
    def predict_probability(self, image_a: Tensor, image_b: Tensor) -> Tensor:
        """Change probability for images of any size (replicate-padded to the coarsest stride).

        Args:
            image_a: ``(B, 3, H, W)`` float32 in [0, 1], before.
            image_b: ``(B, 3, H, W)`` float32 in [0, 1], after.

        Returns:
            ``(B, H, W)`` float32 probability of change.

        """
        h, w = image_a.shape[-2:]
        m = max(self.model.strides)
        pad = (0, (-w) % m, 0, (-h) % m)
        if any(pad):
            image_a, image_b = (F.pad(t, pad, mode="replicate") for t in (image_a, image_b))
        return self.change_probability(self(image_a, image_b))[:, :h, :w]

    # -- loss --------------------------------------------------------------------------------

    def compute_loss(self, logits: Tensor, mask: Tensor) -> Tensor:
        """Cross-entropy (BCE for one logit), plus the weighted Dice term with ``"ce+dice"``.

        Args:
            logits: ``(B, num_classes, H, W)``.
            mask: ``(B, H, W)`` int64 in {0, 1}.

        Returns:
            Scalar loss.

        """
        logits = logits.float()
        if logits.shape[1] == 1:
            loss = F.binary_cross_entropy_with_logits(logits[:, 0], mask.float())
        else:
            loss = F.cross_entropy(logits, mask)
        if self.hparams.loss == "ce+dice":
            loss = loss + self.hparams.dice_weight * soft_dice_loss(self.change_probability(logits), mask)
        return loss

    # -- steps -------------------------------------------------------------------------------

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        """Loss of one batch of (cropped, augmented) pairs."""
        loss = self.compute_loss(self(batch["image_a"], batch["image_b"]), batch["mask"])
        bs = batch["mask"].shape[0]
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=bs)
        self.log("train/lr", self.trainer.optimizers[0].param_groups[-1]["lr"], on_step=True, batch_size=bs)
        return loss

    def _eval_step(self, batch: dict[str, Any], metrics: ChangeDetectionMetrics, split: str) -> Tensor:
        logits = self(batch["image_a"], batch["image_b"])
        self.log(f"{split}/loss", self.compute_loss(logits, batch["mask"]), batch_size=batch["mask"].shape[0])
        pred = (self.change_probability(logits) > 0.5).long()
        metrics.update(pred, batch["mask"])
        return pred

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        """Accumulate the validation confusion matrix."""
        self._eval_step(batch, self.val_metrics, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        """Accumulate the test confusion matrix; keep per-pair scores and the first pairs for PNGs."""
        pred = self._eval_step(batch, self.test_metrics, "test")
        names = batch.get("name") or [f"{batch_idx}_{i}" for i in range(pred.shape[0])]
        for i, name in enumerate(names):
            m, p = batch["mask"][i], pred[i]
            # rows = true class, columns = predicted: [[TN, FP], [FN, TP]]
            cm = torch.bincount((2 * m + p).flatten(), minlength=4).view(2, 2)
            self._per_image.append({"name": name, **change_scores(cm.cpu())})
            if len(self._visuals) < self.hparams.num_visualisations:
                self._visuals.append(
                    {"name": name, **{k: batch[k][i].cpu() for k in ("image_a", "image_b", "mask")}, "pred": p.cpu()}
                )

    def _log_scores(self, metrics: ChangeDetectionMetrics, split: str) -> dict[str, float]:
        scores = metrics.compute()
        for k, v in scores.items():
            self.log(f"{split}/{k}", v, prog_bar=k == "F1", sync_dist=False)
        return scores

    def on_validation_epoch_end(self) -> None:
        """Log ``val/precision``, ``val/recall``, ``val/F1``, ``val/IoU``, ``val/OA``."""
        self._log_scores(self.val_metrics, "val")
        self.val_metrics.reset()

    def on_test_epoch_start(self) -> None:
        """Forget the pairs kept by an earlier test run."""
        self._visuals, self._per_image = [], []

    def on_test_epoch_end(self) -> None:
        """Log the test scores; write ``metrics.json`` and the PNGs into ``out_dir``."""
        self._log_scores(self.test_metrics, "test")
        report = self.test_metrics.report()
        cm = self.test_metrics.confmat.long().cpu()
        self.test_metrics.reset()
        if not self.trainer.is_global_zero:
            return
        out = self.resolve_out_dir()
        per_class = {
            "no_change": {k: v for k, v in change_scores(cm.flip(0, 1)).items() if k != "OA"},
            "change": {k: v for k, v in change_scores(cm).items() if k != "OA"},
        }
        write_json(
            out / "metrics.json",
            {
                "task": "change_detection",
                "split": "test",
                "pairs": len(self._per_image),
                "metrics": {k: report[k] for k in ("precision", "recall", "F1", "IoU", "OA")},
                "per_class": per_class,
                "counts": {k: report[k] for k in ("TP", "FP", "FN", "TN")},
                "per_image": self._per_image,
            },
        )
        for v in self._visuals:
            name = Path(v["name"]).stem
            _save_png(
                out / "visualisations" / f"{name}.png", change_panel(v["image_a"], v["image_b"], v["mask"], v["pred"])
            )

    def resolve_out_dir(self) -> Path:
        """``out_dir``, else the trainer's ``log_dir``, else its ``default_root_dir``."""
        if self.out_dir is not None:
            return Path(self.out_dir)
        log_dir = self.trainer.log_dir if self._trainer is not None else None
        return Path(log_dir or self.trainer.default_root_dir)

    # -- optimisation ------------------------------------------------------------------------

    def configure_optimizers(self) -> dict[str, Any]:
        """AdamW: layer-decay groups on the ViT encoder, full lr elsewhere; warmup + cosine per step."""
        hp = self.hparams
        groups = dense_param_groups(
            self, getattr(self.model.backbone, "encoder", None), hp.lr, hp.weight_decay, hp.layer_decay
        )
        optimizer = torch.optim.AdamW(groups, lr=hp.lr, betas=(0.9, 0.999))
        return {
            "optimizer": optimizer,
            "lr_scheduler": step_schedule(optimizer, self.trainer, hp.warmup_epochs, hp.min_lr_ratio),
        }


def build(cfg: dict[str, Any]) -> tuple[ChangeDetectionTask, ChangeDetectionDataModule]:
    """Task and datamodule from a change-detection recipe (plain dict of the YAML).

    Sections: ``backbone`` (:func:`~rsfm.models.adapters.build_backbone` spec), ``data``
    (:class:`~rsfm.data.change_detection.ChangeDetectionDataModule` arguments plus ``mean``
    and ``std`` for normalisation), ``model`` (``fusion``, ``channels``, ``num_classes``,
    ``loss``, ``dice_weight``, ``num_visualisations``), ``optim`` (``lr``, ``weight_decay``,
    ``layer_decay``, ``warmup_epochs``, ``min_lr_ratio``). ``trainer`` is the runner's.

    Args:
        cfg: the recipe.

    Returns:
        ``(ChangeDetectionTask, ChangeDetectionDataModule)``.

    Raises:
        ValueError: if ``task`` is not ``change_detection``, on an unknown key in ``data``,
            ``model`` or ``optim`` (named as ``section.key``), or a missing ``data.root``.

    """
    if cfg.get("task", "change_detection") != "change_detection":
        raise ValueError(f"task must be 'change_detection', got {cfg.get('task')!r}")
    backbone, data, model, optim = recipe_sections(cfg, "change-detection", DATA_KEYS, MODEL_KEYS)
    if not data.get("root"):
        raise ValueError("data.root is required (a folder with A/, B/ and label/)")
    norm = {k: tuple(v) for k in ("mean", "std") if (v := data.pop(k, None)) is not None}
    task = ChangeDetectionTask(backbone=backbone, **model, **optim, **norm)
    return task, ChangeDetectionDataModule(**data)


def _read_pair(path_in: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> tuple[Path, Path]:
    if isinstance(path_in, str | os.PathLike):
        parts = str(path_in).split(",")
    else:
        parts = [str(p) for p in path_in]
    if len(parts) != 2:
        raise ValueError(f"change detection needs two images (before, after), got {path_in!r}")
    return Path(parts[0]), Path(parts[1])


@torch.no_grad()
def predict_file(
    module: ChangeDetectionTask,
    path_in: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    path_out: str | os.PathLike[str],
    tile_size: int | None = 512,
    overlap: float = 0.25,
    threshold: float = 0.5,
) -> Path:
    """Predict the change mask of an image pair of any size, tiled with overlap.

    Tiles of ``tile_size`` pixels step by ``tile_size × (1 - overlap)``; the change
    probabilities of overlapping tiles are averaged. Images no larger than a tile are
    predicted whole.

    Args:
        module: a (fine-tuned) task.
        path_in: ``(before, after)`` paths, or one string ``"before,after"`` (the CLI's
            ``--input``); both images must have the same size.
        path_out: output mask, 0 = no change, 255 = change, uint8. A ``.tif``/``.tiff``
            output is a GeoTIFF carrying the before image's CRS and transform when it has
            them; any other suffix is written as PNG.
        tile_size: tile side in pixels, or ``None`` for the whole image at once.
        overlap: fraction of a tile shared with its neighbour, in [0, 1).
        threshold: change probability above which a pixel is change.

    Returns:
        ``path_out``.

    Raises:
        ValueError: if not exactly two inputs are given, their sizes differ, or ``overlap`` is
            out of range.

    """
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap must lie in [0, 1), got {overlap}")
    path_a, path_b = _read_pair(path_in)
    a, b = (read_image(p).float().div_(255)[None] for p in (path_a, path_b))
    if a.shape != b.shape:
        raise ValueError(f"{path_a} is {tuple(a.shape[-2:])} but {path_b} is {tuple(b.shape[-2:])}")
    module.eval()
    device = module.device
    a, b = a.to(device), b.to(device)
    h, w = a.shape[-2:]
    if tile_size is None or (h <= tile_size and w <= tile_size):
        prob = module.predict_probability(a, b)[0]
    else:
        step = max(1, int(tile_size * (1 - overlap)))
        total = torch.zeros(h, w, device=device)
        count = torch.zeros(h, w, device=device)
        ys = list(range(0, max(h - tile_size, 0) + 1, step))
        xs = list(range(0, max(w - tile_size, 0) + 1, step))
        if ys[-1] + tile_size < h:
            ys.append(h - tile_size)
        if xs[-1] + tile_size < w:
            xs.append(w - tile_size)
        for y in ys:
            for x in xs:
                sl = (..., slice(y, y + tile_size), slice(x, x + tile_size))
                total[sl[1:]] += module.predict_probability(a[sl], b[sl])[0]
                count[sl[1:]] += 1
        prob = total / count
    mask = ((prob > threshold).byte() * 255).cpu().numpy()
    path_out = Path(path_out)
    if path_out.suffix.lower() in (".tif", ".tiff"):
        _write_geotiff(path_out, mask, path_a)
    else:
        _save_png(path_out, mask)
    return path_out


def _write_geotiff(path_out: Path, mask: np.ndarray, reference: Path) -> None:
    import rasterio

    h, w = mask.shape
    profile: dict[str, Any] = {"driver": "GTiff", "count": 1, "dtype": "uint8", "height": h, "width": w}
    if reference.suffix.lower() in (".tif", ".tiff"):
        with rasterio.open(reference) as src:
            if src.crs is not None:
                profile.update(crs=src.crs, transform=src.transform)

    def write(tmp: str) -> None:
        with rasterio.open(tmp, "w", **profile) as dst:
            dst.write(mask[None])

    atomic_write(path_out, write)
