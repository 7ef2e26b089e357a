"""Shared pieces of the engine tests: small recipes on real data, a crash, checkpoint reading."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch

from rsfm.engine.config import load_recipe

REPO = Path(__file__).resolve().parents[2]
FINETUNE = REPO / "configs" / "finetune"
PRETRAIN = REPO / "configs" / "pretrain"


def aid_pretrain_args(out: Path, datasets: Path, *extra: str, img_size: int = 64, batch_size: int = 8) -> list[str]:
    """Overrides of a short pretraining run on real AID images in one process, ``extra`` last (they win)."""
    return [
        f"data.init_args.root={datasets / 'aid'}",
        f"output_dir={out}",
        "run_name=run",
        f"data.init_args.img_size={img_size}",
        f"data.init_args.batch_size={batch_size}",
        "data.init_args.num_workers=0",
        "trainer.enable_progress_bar=false",
        "evaluate.enabled=false",
        *extra,
    ]


#: overrides that make each fine-tuning recipe a few-second CPU run on real data
SMALL: dict[str, list[str]] = {
    "classification_aid": [
        "model.encoder.init_args.img_size=32",
        "data.init_args.img_size=32",
        "data.init_args.batch_size=4",
        "data.init_args.num_workers=0",
        "model.num_visualisations=2",
    ],
    "segmentation_dubai": [
        "model.encoder.init_args.img_size=64",
        "data.init_args.crop_size=64",
        "data.init_args.batch_size=2",
        "data.init_args.crops_per_image=1",
        "model.heads.segmentation.init_args.channels=16",
        "model.heads.segmentation.init_args.stride=64",
        "model.heads.auxiliary.init_args.channels=8",
        "model.num_visualisations=1",
    ],
    "detection_nepu": [
        "model.encoder.init_args.img_size=64",
        "data.init_args.crop_size=64",
        "data.init_args.batch_size=2",
        "model.heads.detection.init_args.fpn_channels=32",
        "model.heads.detection.init_args.tile=256",
        "model.heads.detection.init_args.overlap=32",
        "model.heads.detection.init_args.box_batch_size_per_image=16",
        "model.heads.detection.init_args.rpn_post_nms_top_n_test=50",
        "model.num_visualisations=1",
    ],
    "change_detection_levir": [
        "model.encoder.init_args.img_size=64",
        "data.init_args.crop_size=64",
        "data.init_args.batch_size=2",
        "data.init_args.crops_per_image=1",
        "model.heads.change.init_args.channels=16",
        "model.num_visualisations=1",
    ],
    "rotated_detection_dota": [
        "model.encoder.init_args.img_size=64",
        "data.init_args.crop_size=64",
        "data.init_args.batch_size=2",
        "data.init_args.crops_per_image=4",
        "model.heads.rotated_detection.init_args.fpn_channels=16",
        "model.heads.rotated_detection.init_args.fc_channels=32",
        "model.heads.rotated_detection.init_args.roi_num_samples=16",
        "model.heads.rotated_detection.init_args.rpn_proposals_test=50",
        "model.heads.rotated_detection.init_args.tile_size=512",
        "model.heads.rotated_detection.init_args.tile_overlap=64",
        "model.num_visualisations=1",
    ],
}


def finetune_recipe(name: str, out: Path, *extra: str) -> dict[str, Any]:
    """A fine-tuning recipe of ``configs/finetune`` shrunk to a quick CPU run into ``out/run``."""
    return load_recipe(
        "finetune",
        FINETUNE / f"{name}.yaml",
        [
            f"output_dir={out}",
            "run_name=run",
            "trainer.accelerator=cpu",
            "trainer.devices=1",
            "trainer.enable_progress_bar=false",
            "trainer.log_every_n_steps=1",
            "trainer.check_val_every_n_epoch=1",
            "trainer.limit_val_batches=1",
            "trainer.limit_test_batches=1",
            *SMALL[name],
            *extra,
        ],
    )


class Crash(Exception):
    """A simulated kill of the process."""


class CrashAt(L.Callback):
    """Raise :class:`Crash` once the run has taken ``step`` optimiser steps."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if trainer.global_step == self.step:
            raise Crash(f"killed after step {self.step}")


def checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint read as rsfm reads them (weights only)."""
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    """Bit-identical state dicts."""
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"
