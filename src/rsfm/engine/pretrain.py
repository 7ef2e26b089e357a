"""Run a pretraining recipe end to end: data, method, Lightning trainer, export, evaluation."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from rsfm.data.datamodule import PretrainDataModule
from rsfm.data.folder import SkipReportCallback
from rsfm.data.io import RasterRule
from rsfm.data.paired import PairedDataModule, natural_classes
from rsfm.engine.config import PretrainConfig, to_dict
from rsfm.engine.export import export_encoder
from rsfm.engine.figures import ReconstructionFigures
from rsfm.engine.gersp_module import GeRSPModule
from rsfm.engine.module import PretrainModule, StepModule
from rsfm.engine.precision import default_precision

__all__ = ["build_datamodule", "build_module", "build_trainer", "export_from_checkpoint", "run_pretrain"]

log = logging.getLogger(__name__)


def run_dir(cfg: PretrainConfig) -> Path:
    """``output_dir/run_name``: checkpoints, logs, figures and the exported encoder."""
    return Path(cfg.output_dir) / cfg.run_name


def is_gersp(cfg: PretrainConfig) -> bool:
    """Whether a recipe trains GeRSP (``model.name: gersp``), which pairs RS and natural images."""
    return cfg.model.get("name") == "gersp"


def _natural_root(cfg: PretrainConfig) -> str:
    if not cfg.data.natural_root:
        raise ValueError(
            "data.natural_root is required for model.name=gersp: a labeled natural-image folder "
            "<root>/<class>/<image>, e.g. an ImageNet train folder or ../shared/datasets/cifar10/train"
        )
    return str(cfg.data.natural_root)


def build_datamodule(cfg: PretrainConfig) -> PretrainDataModule | PairedDataModule:
    """The pretraining datamodule of a recipe; fails at once on a missing or empty folder.

    GeRSP recipes get a :class:`~rsfm.data.paired.PairedDataModule` over ``data.root`` and
    ``data.natural_root``; the others a :class:`~rsfm.data.datamodule.PretrainDataModule`.
    """
    d = cfg.data
    raster = RasterRule(
        bands=tuple(d.bands) if d.bands is not None else None,
        scale=d.raster_scale if d.raster_scale == "auto" else float(d.raster_scale),
    )
    common = dict(
        root=d.root,
        img_size=d.img_size,
        batch_size=d.batch_size,
        num_workers=d.num_workers,
        mean=tuple(d.mean),
        std=tuple(d.std),
        holdout_fraction=d.holdout_fraction,
        split_seed=d.split_seed,
        seed=cfg.seed,
        scale=tuple(d.scale),
        raster=raster,
    )
    if is_gersp(cfg):
        return PairedDataModule(natural_root=_natural_root(cfg), **common)
    return PretrainDataModule(hflip=d.hflip, **common)


def build_module(cfg: PretrainConfig) -> PretrainModule | GeRSPModule:
    """The Lightning module of a recipe; ``model.img_size`` follows ``data.img_size``.

    For GeRSP, ``model.num_classes`` is the number of class folders of ``data.natural_root``.

    Raises:
        ValueError: if ``model.img_size`` is set and differs from ``data.img_size``, or on a
            GeRSP recipe without ``data.natural_root``.
    """
    model = dict(to_dict(cfg.model))
    if "img_size" in model and model["img_size"] != cfg.data.img_size:
        raise ValueError(f"model.img_size={model['img_size']} differs from data.img_size={cfg.data.img_size}")
    model["img_size"] = cfg.data.img_size
    o = cfg.optim
    options = dict(
        model=model,
        blr=o.blr,
        lr=o.lr,
        weight_decay=o.weight_decay,
        betas=tuple(o.betas),
        warmup_epochs=o.warmup_epochs,
        min_lr=o.min_lr,
        batch_size=cfg.data.batch_size,
        seed=cfg.seed,
        optimizer=o.name,
        momentum=o.momentum,
        restarts=o.restarts,
    )
    if is_gersp(cfg):
        model.setdefault("num_classes", len(natural_classes(_natural_root(cfg))))
        return GeRSPModule(**options)
    return PretrainModule(**options)


def build_trainer(cfg: PretrainConfig, extra_callbacks: list[L.Callback] | None = None) -> L.Trainer:
    """A Lightning trainer for a recipe.

    It writes checkpoints (every N epochs or steps, plus ``last``), CSV and TensorBoard logs,
    reconstruction figures (masked-image methods only) and the skipped-file report.
    """
    t, out = cfg.trainer, run_dir(cfg)
    ck = cfg.checkpoint
    checkpoint = ModelCheckpoint(
        dirpath=out / "checkpoints",
        filename="epoch{epoch:03d}-step{step:06d}",
        auto_insert_metric_name=False,
        save_top_k=-1,
        save_last=True,
        every_n_epochs=None if ck.every_n_train_steps else ck.every_n_epochs,
        every_n_train_steps=ck.every_n_train_steps,
    )
    callbacks: list[L.Callback] = [checkpoint, SkipReportCallback(), *(extra_callbacks or [])]
    if not is_gersp(cfg):
        figures = ReconstructionFigures(
            out / "figures", cfg.viz.every_n_epochs, cfg.viz.num_images, cfg.data.mean, cfg.data.std
        )
        callbacks.insert(1, figures)
    loggers = [CSVLogger(out, name="logs", version=""), TensorBoardLogger(out, name="tensorboard", version="")]
    return L.Trainer(
        accelerator=t.accelerator,
        devices=t.devices,
        num_nodes=t.num_nodes,
        strategy=t.strategy,
        precision=cfg.trainer.precision or default_precision(cfg.trainer.accelerator),
        max_epochs=t.max_epochs,
        max_steps=t.max_steps,
        max_time=t.max_time,
        gradient_clip_val=t.gradient_clip_val,
        accumulate_grad_batches=t.accumulate_grad_batches,
        log_every_n_steps=t.log_every_n_steps,
        limit_train_batches=t.limit_train_batches,
        enable_progress_bar=t.enable_progress_bar,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        use_distributed_sampler=False,  # the datamodule shards with its own resumable sampler
        default_root_dir=out,
        callbacks=callbacks,
        logger=loggers,
    )


def resolve_resume(cfg: PretrainConfig) -> str | None:
    """The checkpoint to resume from.

    None for a fresh run, ``last.ckpt`` of the run when ``resume: auto`` and it exists, or an
    explicit path.

    Raises:
        FileNotFoundError: if an explicit checkpoint path does not exist.
    """
    if cfg.resume in (None, "", "none"):
        return None
    if cfg.resume == "auto":
        last = run_dir(cfg) / "checkpoints" / "last.ckpt"
        return str(last) if last.is_file() else None
    path = Path(cfg.resume)
    if not path.is_file():
        raise FileNotFoundError(f"resume: checkpoint not found: {path}")
    return str(path)


def encoder_meta(module: StepModule, data: dict[str, Any], epochs: int | None, steps: int | None) -> dict[str, Any]:
    """Metadata of an exported encoder (see :func:`rsfm.engine.export.export_encoder`).

    Args:
        module: the trained module.
        data: the recipe's ``data`` section (normalisation and held-out split).
        epochs: epochs trained.
        steps: optimiser steps trained.
    """
    meta = module.model.export_meta()
    meta.update(
        method=module.method_name,
        mean=list(data["mean"]),
        std=list(data["std"]),
        data_root=str(data["root"]),
        holdout_fraction=data["holdout_fraction"],
        split_seed=data["split_seed"],
        epochs=epochs,
        steps=steps,
    )
    if data.get("natural_root"):
        meta["natural_root"] = str(data["natural_root"])
    return meta


def export_from_checkpoint(ckpt: str | Path, out: str | Path) -> Path:
    """Export the (student) encoder of a checkpoint of :class:`PretrainModule` or :class:`GeRSPModule`.

    Raises:
        FileNotFoundError: if ``ckpt`` does not exist.
        ValueError: if it is not an rsfm pretraining checkpoint.
    """
    ckpt = Path(ckpt)
    if not ckpt.is_file():
        raise FileNotFoundError(f"checkpoint not found: {ckpt}")
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    if "rsfm_config" not in state or "hyper_parameters" not in state:
        raise ValueError(f"{ckpt} is not an rsfm pretraining checkpoint (no rsfm_config)")
    hparams = state["hyper_parameters"]
    cls = GeRSPModule if hparams.get("model", {}).get("name") == "gersp" else PretrainModule
    module = cls(**hparams)
    module.load_state_dict(state["state_dict"])
    meta = encoder_meta(module, state["rsfm_config"]["data"], state.get("epoch"), state.get("global_step"))
    return export_encoder(module.model.encoder, out, meta)


class _StoreConfig(L.Callback):
    """Keeps the full recipe inside every checkpoint (``rsfm_config``)."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        self.cfg = cfg

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        checkpoint["rsfm_config"] = self.cfg


def run_pretrain(cfg: PretrainConfig, callbacks: list[L.Callback] | None = None) -> dict[str, Any]:
    """Pretrain, export the encoder and (if ``evaluate.enabled``) evaluate it.

    Args:
        cfg: a validated recipe (:func:`rsfm.engine.config.load_config`).
        callbacks: extra Lightning callbacks.

    Returns:
        ``run_dir``, ``encoder`` (path of the exported safetensors), ``checkpoint``
        (``last.ckpt``), ``skipped`` (counts by reason) and ``metrics`` (evaluation results
        or None).

    Raises:
        FileNotFoundError: on a missing data folder or resume checkpoint.
        ValueError: on an inconsistent recipe.
    """
    out = run_dir(cfg)
    L.seed_everything(cfg.seed, workers=True)
    datamodule = build_datamodule(cfg)
    module = build_module(cfg)
    plain = to_dict(cfg)
    trainer = build_trainer(cfg, extra_callbacks=[_StoreConfig(plain), *(callbacks or [])])
    ckpt_path = resolve_resume(cfg)
    if trainer.is_global_zero:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(plain, indent=2))
        if ckpt_path:
            print(f"resuming from {ckpt_path}")
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    result: dict[str, Any] = {"run_dir": str(out), "encoder": None, "metrics": None}
    skip_cb = next(c for c in trainer.callbacks if isinstance(c, SkipReportCallback))
    result["skipped"] = skip_cb.report.counts()
    if not trainer.is_global_zero:
        return result
    meta = encoder_meta(module, plain["data"], trainer.current_epoch, trainer.global_step)
    encoder_path = export_encoder(module.model.encoder, out / "encoder.safetensors", meta)
    result["encoder"] = str(encoder_path)
    result["checkpoint"] = str(out / "checkpoints" / "last.ckpt")
    print(f"encoder exported to {encoder_path}")
    if cfg.evaluate.enabled:
        from rsfm.eval.run import evaluate

        e = cfg.evaluate
        val_fraction = e.val_fraction if e.val_fraction is not None else cfg.data.holdout_fraction
        if val_fraction <= 0:
            val_fraction = 0.2
            log.warning(
                "data.holdout_fraction is 0: pretraining saw every image, so the evaluation's "
                "held-out split (evaluate.val_fraction=%.2f) is not unseen data",
                val_fraction,
            )
        result["metrics"] = evaluate(
            encoder_path=str(encoder_path),
            data_root=e.root or cfg.data.root,
            protocols=tuple(e.protocols),
            out_dir=str(out / "eval"),
            val_fraction=val_fraction,
            split_seed=cfg.data.split_seed,
            batch_size=e.batch_size,
            num_workers=e.num_workers,
            k=e.k,
            temperature=e.temperature,
            finetune_epochs=e.finetune_epochs,
            finetune_max_time=e.finetune_max_time,
            seed=cfg.seed,
        )
    return result
