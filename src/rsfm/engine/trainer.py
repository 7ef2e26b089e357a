"""The Lightning trainer of every rsfm run: checkpoints, logs, guards, precision.

.. versionadded:: 0.2
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger

from rsfm.engine.callbacks import NonFiniteGuard, SkipReportCallback, StoreRecipe
from rsfm.engine.checkpoint import AtomicCheckpointIO
from rsfm.engine.csv_log import ResumableCSVLogger
from rsfm.engine.precision import default_precision
from rsfm.utils.errors import ConfigError

__all__ = ["build_trainer"]


def build_trainer(
    run_dir: Path,
    trainer: dict[str, Any],
    checkpoint: dict[str, Any],
    recipe: dict[str, Any] | None = None,
    monitor: str | None = None,
    numbered: bool = False,
    resume_step: int | None = None,
    callbacks: list[L.Callback] | None = None,
    validate: bool = True,
    fitting: bool = True,
) -> L.Trainer:
    """A trainer writing into ``run_dir``.

    It writes ``checkpoints/last.ckpt`` every ``checkpoint.every_n_epochs`` epochs (or
    ``every_n_train_steps`` steps), numbered ``epochNNN-stepNNNNNN.ckpt`` files too with
    ``numbered`` (pretraining), and ``best.ckpt`` by ``monitor`` (fine-tuning); all atomically,
    never with non-finite weights, never as ``-v1`` duplicates. Logs go to
    ``logs/metrics.csv`` (kept across resumes) and ``tensorboard/``. Every step is guarded
    against non-finite losses and gradients; unreadable files are counted.

    Args:
        run_dir: the run folder.
        trainer: the recipe's ``trainer`` section.
        checkpoint: the recipe's ``checkpoint`` section.
        recipe: the resolved recipe, stored in every checkpoint.
        monitor: metric selecting ``best.ckpt`` (higher is better); None: no best checkpoint.
        numbered: keep every periodic checkpoint under a numbered name.
        resume_step: the step a resumed run starts from (the CSV log keeps rows up to it).
        callbacks: extra callbacks.
        validate: run the validation loop (off: ``limit_val_batches=0``).
        fitting: False for a trainer that only tests (``rsfm test``): no checkpoints and no
            loggers, so the training run's ``logs/`` stay as they are.

    Returns:
        The trainer.

    Raises:
        ConfigError: for ``trainer.sync_batchnorm`` without GPUs, or trainer settings Lightning
            rejects (an accelerator this machine lacks, a bad device count...).
    """
    t = dict(trainer)
    if t.get("sync_batchnorm") and (t.get("accelerator") == "cpu" or not torch.cuda.is_available()):
        raise ConfigError(
            "trainer.sync_batchnorm needs GPUs (PyTorch's SyncBatchNorm has no CPU kernels); "
            "on CPUs each process keeps its own BatchNorm statistics"
        )
    if t.get("precision") is None:
        t["precision"] = default_precision(t.get("accelerator", "auto"))
    ckpt_dir = run_dir / "checkpoints"
    every_steps = checkpoint.get("every_n_train_steps")
    every_epochs = None if every_steps else checkpoint.get("every_n_epochs", 1)
    cbs: list[L.Callback] = [
        ModelCheckpoint(
            # at the end of every training epoch, also when validation runs less often
            save_on_train_epoch_end=True,
            dirpath=ckpt_dir,
            filename="epoch{epoch:03d}-step{step:06d}",
            auto_insert_metric_name=False,
            save_top_k=-1 if numbered else 0,
            save_last=True,
            every_n_epochs=every_epochs,
            every_n_train_steps=every_steps,
            enable_version_counter=False,
        )
    ]
    if not fitting:
        cbs = []
    elif monitor is not None:
        cbs.append(
            ModelCheckpoint(
                dirpath=ckpt_dir,
                filename="best",
                monitor=monitor,
                mode="max",
                save_top_k=1,
                save_last=False,
                auto_insert_metric_name=False,
                enable_version_counter=False,
            )
        )
    cbs.append(SkipReportCallback())
    if fitting:
        cbs.append(NonFiniteGuard(ckpt_dir))
    if recipe is not None:
        cbs.append(StoreRecipe(recipe))
    cbs += callbacks or []
    loggers: list[Any] | bool = False
    if fitting:
        loggers = [
            ResumableCSVLogger(run_dir, name="logs", version="", resume_step=resume_step),
            TensorBoardLogger(run_dir, name="tensorboard", version=""),
        ]
    if not validate:
        t["limit_val_batches"] = 0
    try:
        return L.Trainer(
            default_root_dir=run_dir,
            callbacks=cbs,
            logger=loggers,
            enable_checkpointing=fitting,
            plugins=[AtomicCheckpointIO()],
            use_distributed_sampler=False,  # rsfm's loaders shard with their own resumable sampler
            num_sanity_val_steps=0,
            **t,
        )
    except (MisconfigurationException, TypeError, ValueError) as err:  # Lightning's checks of the values
        raise ConfigError(f"trainer: {err}") from None
