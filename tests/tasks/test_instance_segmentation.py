"""Instance segmentation end to end: Mask R-CNN trained and tested through DownstreamTask on real iSAID scenes.

Two training steps on 64 px crops of P0005, then one validation and one test scene (P0003,
1023 × 1147, segmented whole by four 640 px tiles); the test writes ``metrics.json`` with COCO mask
and box AP and a picture.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image

from rsfm.data.instance import ISAID_CLASSES, ISAIDDataModule
from rsfm.engine.data import LightningData
from rsfm.models.heads.instance_segmentation import InstanceSegmentationMetricSet, MaskRCNNHead
from rsfm.tasks.module import DownstreamTask

#: a small, fast Mask R-CNN (the recipe's structure, fewer channels and samples)
SMALL = {
    "fpn_channels": 16,
    "fc_channels": 32,
    "mask_channels": 16,
    "box_batch_size_per_image": 16,
    "rpn_post_nms_top_n_train": 100,
    "rpn_post_nms_top_n_test": 50,
    "detections_per_tile": 20,
    "tile": 640,
    "overlap": 64,
    "max_detections": 20,
}
METRICS = ("mask_mAP50", "mask_mAP50_95", "box_mAP50", "box_mAP50_95")


@pytest.fixture(scope="module")
def isaid(datasets: Path) -> ISAIDDataModule:
    dm = ISAIDDataModule(
        str(datasets / "isaid_dota"), crop_size=64, crops_per_image=4, batch_size=2, object_crop_prob=1.0,
        num_workers=0, seed=0,
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the test split is the validation split (iSAID's test labels are private)
        dm.setup("fit")
    return dm


def test_mask_rcnn_trains_and_tests_whole_scenes(isaid: ISAIDDataModule, tmp_path: Path) -> None:
    info = isaid.info()
    assert info.classes == list(ISAID_CLASSES) and {"boxes", "labels", "masks"} <= set(info.sample_keys)
    torch.manual_seed(0)
    model = {
        "encoder": {"class_path": "ViT", "init_args": {"size": "tiny", "img_size": 64, "patch_size": 32}},
        "neck": {"class_path": "SimpleFeaturePyramid"},
        "heads": {"instance_segmentation": {"class_path": "MaskRCNNHead", "init_args": SMALL}},
    }
    task = DownstreamTask(
        model=model, optim={"lr": 2e-4, "warmup_epochs": 0}, data=info.to_dict(), batch_size=2, num_visualisations=1
    )
    assert isinstance(task.heads["instance_segmentation"], MaskRCNNHead) and task.monitor == "val/mask_mAP50"
    assert isinstance(task.val_metrics["instance_segmentation"], InstanceSegmentationMetricSet)
    trainer = L.Trainer(
        accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
        enable_checkpointing=False, num_sanity_val_steps=0, default_root_dir=tmp_path,
        max_steps=2, limit_val_batches=1, limit_test_batches=1,
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = LightningData(isaid)
        trainer.fit(task, datamodule=data)
        logged = {k: float(v) for k, v in trainer.callback_metrics.items()}
        terms = ("loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg", "loss_mask")
        assert {f"train/instance_segmentation/{t}" for t in terms} <= set(logged)
        assert {f"val/{m}" for m in METRICS} <= set(logged)
        task.out_dir = str(tmp_path / "out")
        (tested,) = trainer.test(task, datamodule=data, verbose=False)

    assert set(tested) == {f"test/{m}" for m in METRICS}
    assert all(0.0 <= v <= 100.0 for v in tested.values())
    report = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert report["split"] == "test" and report["scale"] == "percent"
    assert report["metrics"] == pytest.approx(tested)
    head = report["heads"]["instance_segmentation"]
    assert head["metric"] == "coco" and head["classes"] == list(ISAID_CLASSES) and head["num_images"] == 1
    assert head["mask_mAP50"] == pytest.approx(tested["test/mask_mAP50"], abs=1e-4)
    # the test scene's 59 instances (its id PNG), every class with objects scored per class
    assert sum(c["num_objects"] for c in head["per_class"].values()) == 59
    for name, c in head["per_class"].items():
        assert (c["mask_AP50"] is None) == (c["num_objects"] == 0), name
    (png,) = (tmp_path / "out" / "visualisations" / "instance_segmentation").glob("*.png")
    assert png.name == "00_P0003.png"
    assert Image.open(png).size == (3 * 1147 + 16, 1023)  # image | truth | prediction
    assert np.asarray(Image.open(png)).std() > 0
