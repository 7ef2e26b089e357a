"""Run downstream recipes: ``rsfm finetune``, ``rsfm test`` and ``rsfm predict``.

A recipe (``configs/finetune/<task>_<dataset>.yaml``) names a ``task``; the task's module
(``rsfm.tasks.<task>``) turns the recipe into a LightningModule and a datamodule through its
``build(cfg)``. This module only adds what every task shares: reading and overriding the
recipe, the Lightning trainer (checkpoints, CSV/TensorBoard logs), testing the best
checkpoint on the held-out split and writing ``metrics.json``.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from rsfm.engine.config import parse_overrides
from rsfm.engine.precision import default_precision

__all__ = ["MONITOR", "TASKS", "finetune", "load_task_config", "predict", "test"]

#: task name → module implementing ``build(cfg)`` (and ``predict_file`` where it applies)
TASKS = {
    "classification": "rsfm.tasks.classification",
    "segmentation": "rsfm.tasks.segmentation",
    "change_detection": "rsfm.tasks.change_detection",
    "detection": "rsfm.tasks.detection",
}
#: validation metric that selects the checkpoint tested at the end of ``finetune``
MONITOR = {
    "classification": "val/OA",
    "segmentation": "val/mIoU",
    "change_detection": "val/F1",
    "detection": "val/mAP50",
}
TOP_LEVEL = {"task", "seed", "output_dir", "run_name", "resume", "backbone", "data", "model", "optim", "trainer"}
TRAINER_KEYS = {
    "max_epochs", "max_steps", "max_time", "accelerator", "devices", "num_nodes", "strategy", "precision",
    "gradient_clip_val", "accumulate_grad_batches", "log_every_n_steps", "limit_train_batches",
    "limit_val_batches", "limit_test_batches", "check_val_every_n_epoch", "enable_progress_bar",
}  # fmt: skip


def load_task_config(path: str | Path, overrides: list[str] | None = None) -> dict[str, Any]:
    """Read a downstream recipe and apply ``section.key=value`` overrides.

    Raises:
        FileNotFoundError: if the recipe does not exist.
        ValueError: on unknown top-level or trainer keys or an unknown task.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"recipe not found: {path}")
    try:
        cfg = OmegaConf.load(path)
        if overrides:
            cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(parse_overrides(overrides)))
    except OmegaConfBaseException as err:
        raise ValueError(f"invalid recipe {path}: {err}") from None
    out: dict[str, Any] = OmegaConf.to_container(cfg, resolve=True)  # type: ignore[assignment]
    unknown = sorted(set(out) - TOP_LEVEL)
    if unknown:
        raise ValueError(f"{path}: unknown section {unknown[0]!r}; expected {sorted(TOP_LEVEL)}")
    if out.get("task") not in TASKS:
        raise ValueError(f"{path}: task must be one of {sorted(TASKS)}, got {out.get('task')!r}")
    bad = sorted(set(out.get("trainer") or {}) - TRAINER_KEYS)
    if bad:
        raise ValueError(f"{path}: trainer.{bad[0]} is not a supported option; expected {sorted(TRAINER_KEYS)}")
    out.setdefault("seed", 0)
    out.setdefault("output_dir", "runs")
    out.setdefault("run_name", f"{out['task']}")
    for section in ("backbone", "data", "model", "optim", "trainer"):
        out[section] = dict(out.get(section) or {})
    return out


def _task_module(cfg: dict[str, Any]) -> Any:
    return importlib.import_module(TASKS[cfg["task"]])


def _trainer(cfg: dict[str, Any], run_dir: Path, monitor: str | None) -> L.Trainer:
    t = dict(cfg["trainer"])
    if t.get("precision") is None:
        t["precision"] = default_precision(t.get("accelerator", "auto"))
    checkpoint = ModelCheckpoint(
        dirpath=run_dir / "checkpoints",
        filename="best",
        monitor=monitor,
        mode="max",
        save_last=True,
        save_top_k=1 if monitor else 0,
        auto_insert_metric_name=False,
    )
    loggers = [CSVLogger(run_dir, name="logs", version=""), TensorBoardLogger(run_dir, name="tensorboard", version="")]
    return L.Trainer(default_root_dir=run_dir, callbacks=[checkpoint], logger=loggers, **t)


def _write_metrics(run_dir: Path, cfg: dict[str, Any], tested: list[dict[str, float]], ckpt: str | None) -> dict:
    from rsfm.eval.report import write_json

    result = {"task": cfg["task"], "checkpoint": ckpt, "metrics": tested[0] if tested else {}, "config": cfg}
    write_json(run_dir / "metrics.json", result)
    return result


def finetune(cfg: dict[str, Any]) -> dict[str, Any]:
    """Fine-tune on the recipe's train split, select by the validation metric, test the best.

    Returns:
        ``run_dir``, ``checkpoint`` (the tested one) and ``metrics`` (the test metrics).
    """
    run_dir = Path(cfg["output_dir"]) / cfg["run_name"]
    L.seed_everything(cfg["seed"], workers=True)
    module, datamodule = _task_module(cfg).build(cfg)
    if hasattr(module, "out_dir"):
        module.out_dir = str(run_dir / "test")
    trainer = _trainer(cfg, run_dir, MONITOR[cfg["task"]])
    resume = cfg.get("resume")
    if resume == "auto":
        last = run_dir / "checkpoints" / "last.ckpt"
        resume = str(last) if last.is_file() else None
    if trainer.is_global_zero:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(json.dumps(cfg, indent=2))
    trainer.fit(module, datamodule=datamodule, ckpt_path=resume)
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    ckpt = best or None
    tested = trainer.test(module, datamodule=datamodule, ckpt_path=ckpt)
    return {"run_dir": str(run_dir), "checkpoint": ckpt, **_write_metrics(run_dir, cfg, tested, ckpt)}


def _load_module(cfg: dict[str, Any], ckpt: str | Path) -> tuple[L.LightningModule, L.LightningDataModule]:
    """The recipe's task with the checkpoint's weights, and its datamodule.

    Raises:
        FileNotFoundError: if ``ckpt`` does not exist.
        ValueError: if it is not a Lightning checkpoint or its weights do not fit the model.
    """
    ckpt = Path(ckpt)
    if not ckpt.is_file():
        raise FileNotFoundError(f"checkpoint not found: {ckpt}")
    module, datamodule = _task_module(cfg).build(cfg)
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    if "state_dict" not in state:
        raise ValueError(f"{ckpt} is not a Lightning checkpoint of `rsfm finetune` (no 'state_dict')")
    try:
        module.load_state_dict(state["state_dict"])
    except RuntimeError as err:
        first = next((line.strip() for line in str(err).splitlines()[1:] if line.strip()), str(err))
        raise ValueError(
            f"{ckpt} does not fit the model the recipe builds ({first}); "
            "pass the recipe and the overrides it was trained with"
        ) from None
    return module, datamodule


def test(cfg: dict[str, Any], ckpt: str | Path) -> dict[str, Any]:
    """Evaluate a fine-tuned checkpoint on the recipe's test split; writes ``metrics.json``."""
    run_dir = Path(cfg["output_dir"]) / cfg["run_name"]
    module, datamodule = _load_module(cfg, ckpt)
    if hasattr(module, "out_dir"):
        module.out_dir = str(run_dir / "test")
    trainer = _trainer(cfg, run_dir, None)
    tested = trainer.test(module, datamodule=datamodule)
    return {"run_dir": str(run_dir), **_write_metrics(run_dir, cfg, tested, str(ckpt))}


def predict(cfg: dict[str, Any], ckpt: str | Path, path_in: str | Path, path_out: str | Path, **kwargs: Any) -> Path:
    """Run a fine-tuned model on one image or GeoTIFF of any size (tiled).

    Raises:
        ValueError: if the task has no file prediction.
    """
    task = _task_module(cfg)
    if not hasattr(task, "predict_file"):
        raise ValueError(f"task {cfg['task']!r} has no file prediction")
    module, _ = _load_module(cfg, ckpt)
    module.eval()
    return Path(task.predict_file(module, path_in, path_out, **kwargs))
