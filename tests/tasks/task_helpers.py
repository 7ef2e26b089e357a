"""Shared pieces of the downstream-task tests: the recipes shrunk to CPU runs, the CLI in-process."""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
RECIPES = REPO / "configs" / "finetune"
SCENE = "scenes/RGB.byte.tif"
AID_CLASSES = ["Airport", "Beach", "Forest"]

#: every recipe: one epoch of two batches, one validation and one test image, quiet, on the CPU
FAST = [
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=1",
    "trainer.limit_test_batches=1",
    "trainer.check_val_every_n_epoch=1",
    "trainer.log_every_n_steps=1",
    "trainer.enable_progress_bar=false",
    "trainer.accelerator=cpu",
    "data.num_workers=0",
    "model.encoder.img_size=64",
    "model.encoder.patch_size=32",
]

#: per recipe: small crops and heads (the recipe's structure, a fraction of its cost)
SMALL: dict[str, list[str]] = {
    "segmentation_dubai": [
        "data.crop_size=64",
        "data.batch_size=2",
        "model.heads.segmentation.channels=16",
        "model.heads.segmentation.stride=64",
        "model.heads.auxiliary.channels=8",
        "model.num_visualisations=1",
    ],
    "segmentation_loveda": [
        "data.crop_size=128",  # 1024 px tiles: fewer, larger windows
        "data.batch_size=2",
        "model.heads.segmentation.channels=16",
        "model.heads.segmentation.stride=128",
        "model.heads.auxiliary.channels=8",
        "model.num_visualisations=1",
    ],
    "change_detection_levir": [
        "data.crop_size=64",
        "data.batch_size=2",
        "model.heads.change.channels=16",
        "model.heads.change.stride=64",
        "model.num_visualisations=1",
    ],
    "detection_nepu": [
        "data.crop_size=64",
        "data.batch_size=2",
        "model.heads.detection.fpn_channels=16",
        "model.heads.detection.tile=512",
        "model.heads.detection.overlap=64",
        "model.heads.detection.box_batch_size_per_image=16",
        "model.heads.detection.rpn_post_nms_top_n_test=50",
        "model.num_visualisations=1",
    ],
    "rotated_detection_dota": [
        "data.crop_size=64",
        "data.batch_size=2",
        "model.heads.rotated_detection.fpn_channels=16",
        "model.heads.rotated_detection.fc_channels=32",
        "model.heads.rotated_detection.roi_num_samples=16",
        "model.heads.rotated_detection.rpn_proposals_test=50",
        "model.heads.rotated_detection.tile_size=512",
        "model.heads.rotated_detection.tile_overlap=64",
        "model.num_visualisations=1",
    ],
    "rotated_detection_hituav": [
        "data.crop_size=64",
        "data.batch_size=2",
        "data.eval_batch_size=1",
        "model.heads.rotated_detection.fpn_channels=16",
        "model.heads.rotated_detection.fc_channels=32",
        "model.heads.rotated_detection.roi_num_samples=16",
        "model.heads.rotated_detection.rpn_proposals_test=50",
        "model.num_visualisations=1",
    ],
    "instance_segmentation_isaid": [
        "data.crop_size=64",
        "data.batch_size=2",
        "model.heads.instance_segmentation.fpn_channels=16",
        "model.heads.instance_segmentation.fc_channels=32",
        "model.heads.instance_segmentation.mask_channels=16",
        "model.heads.instance_segmentation.box_batch_size_per_image=16",
        "model.heads.instance_segmentation.rpn_post_nms_top_n_test=50",
        "model.heads.instance_segmentation.detections_per_tile=20",
        "model.heads.instance_segmentation.max_detections=20",
        "model.heads.instance_segmentation.tile=640",
        "model.heads.instance_segmentation.overlap=64",
        "model.num_visualisations=1",
    ],
    "classification_aid": [
        "data.img_size=64",
        "data.batch_size=12",  # the 12 held-out images in one test batch
        "model.num_visualisations=6",
    ],
}

DATA_FOLDER = {
    "segmentation_dubai": "dubai_seg",
    "segmentation_loveda": "loveda",
    "change_detection_levir": "levir_cd",
    "detection_nepu": "nepu_owod",
    "rotated_detection_dota": "dota",
    "rotated_detection_hituav": "hit_uav",
    "instance_segmentation_isaid": "isaid_dota",
}


def run_cli(*argv: str) -> tuple[int, str, str]:
    """``rsfm <argv>`` in this process, on one CPU thread: ``(exit status, stdout, stderr)``."""
    import torch

    from rsfm.cli import main

    out, err = io.StringIO(), io.StringIO()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a second thread mostly waits on the small models of these runs
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(list(argv))
    finally:
        torch.set_num_threads(threads)
    return code, out.getvalue(), err.getvalue()


@dataclass
class Run:
    """A fine-tuning run of a recipe made by ``rsfm finetune``."""

    recipe: Path
    folder: Path
    overrides: list[str]
    stdout: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def best(self) -> Path:
        """The best validation checkpoint."""
        return self.folder / "checkpoints" / "best.ckpt"

    def cli(self, command: str, *argv: str) -> tuple[int, str, str]:
        """``rsfm <command> --config <recipe> <the run's overrides> <argv>`` (later overrides win)."""
        return run_cli(command, "--config", str(self.recipe), *self.overrides, *argv)
