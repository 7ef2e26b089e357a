"""Unreadable files in segmentation, detection and change-detection sets are skipped, listed and counted.

Every layout is real data (LoveDA, Dubai, NEPU, LEVIR-CD) copied or linked into a temporary
folder, with a few files then emptied, cut short or replaced by text, as a failing disk or an
interrupted download leaves them.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pytest
import torch
from data_helpers import copy_levir, dubai_subset, small_loveda, voc_copy
from PIL import Image

from rsfm.data.change import LEVIRCDDataModule
from rsfm.data.detection import VOCDataModule
from rsfm.data.segmentation import DubaiDataModule, LoveDADataModule
from rsfm.data.skips import SkipReport, skip_reason
from rsfm.engine.callbacks import SkipReportCallback
from rsfm.engine.data import LightningData
from rsfm.tasks.module import DownstreamTask

ONE_THREAD = True


def empty(path: Path) -> Path:
    """Replace ``path`` (a file or a link) by a zero-byte file."""
    path.unlink()
    path.write_bytes(b"")
    return path


def truncate(path: Path, keep: int = 200) -> Path:
    """Replace ``path`` by its first ``keep`` bytes (a download cut short)."""
    data = path.read_bytes()[:keep]
    path.unlink()
    path.write_bytes(data)
    return path


def text(path: Path) -> Path:
    """Replace ``path`` by a text file of the same name."""
    path.unlink()
    path.write_text("404 Not Found\n")
    return path


def one_batch(loader: Any) -> dict[str, Any]:
    (batch,) = list(loader)
    return batch


# ------------------------------------------------------------------------------- reasons


def test_skip_reason_names_what_is_wrong_with_a_file(datasets: Path, tmp_path: Path) -> None:
    mask = datasets / "loveda" / "masks_png" / "0.png"
    (tmp_path / "a.png").write_bytes(b"")
    cases = {
        "zero_byte": tmp_path / "a.png",
        "truncated": truncate(Path(shutil.copy(mask, tmp_path / "b.png"))),
        "not_an_image": text(Path(shutil.copy(mask, tmp_path / "c.png"))),
    }
    for reason, path in cases.items():
        with pytest.raises(OSError) as info:
            Image.open(path).load()
        assert skip_reason(path, info.value) == reason
    assert skip_reason(tmp_path / "gone.png", FileNotFoundError("gone")) == "unreadable"


# ------------------------------------------------------------------------------- segmentation


def test_segmentation_batches_leave_out_unreadable_images_and_masks(datasets: Path, tmp_path: Path) -> None:
    root = small_loveda(datasets / "loveda", tmp_path / "loveda", size=64)
    for rid in ("3", "4"):  # two more training pairs: an empty image; a mask cut short
        shutil.copy(root / "images_png" / "1.png", root / "images_png" / f"{rid}.png")
        shutil.copy(root / "masks_png" / "1.png", root / "masks_png" / f"{rid}.png")
    bad_image = empty(root / "images_png" / "3.png")
    bad_mask = truncate(root / "masks_png" / "4.png", keep=100)
    dm = LoveDADataModule(str(root), test_split=["2"], crop_size=32, batch_size=4)
    batch = one_batch(dm.train_dataloader())
    assert batch["image"].shape == (2, 3, 32, 32) and batch["mask"].shape == (2, 32, 32)
    assert sorted(batch["id"]) == ["images_png/0", "images_png/1"]
    assert sorted(batch["skipped"]) == [(str(bad_image), "zero_byte"), (str(bad_mask), "truncated")]
    assert SkipReport(batch["skipped"]).summary() == "2 files skipped: 1 truncated, 1 zero_byte"

    # an evaluation batch of only unreadable files is empty and says so, with the bands it would have
    whole = LoveDADataModule(str(root), test_split=["3"], crop_size=32)
    test = one_batch(whole.test_dataloader())
    assert test["image"].shape == (0, 3, 0, 0) and test["image"].dtype == torch.float32
    assert test["mask"].shape == (0, 0, 0) and test["mask"].dtype == torch.int64
    assert test["id"] == [] and test["skipped"] == [(str(bad_image), "zero_byte")]


def test_colour_coded_masks_that_cannot_be_read_are_skipped(datasets: Path, tmp_path: Path) -> None:
    root = dubai_subset(datasets / "dubai_seg", tmp_path / "dubai", {1: 2, 2: 1})
    masks = sorted((root / "Tile 1" / "masks").iterdir())
    bad = text(masks[1])  # Dubai masks are RGB, read through read_image
    dm = DubaiDataModule(str(root), test_split=[2], crop_size=32, batch_size=2)
    batch = one_batch(dm.train_dataloader())
    assert batch["image"].shape == (1, 3, 32, 32) and batch["id"] == [f"Tile 1/images/{masks[0].stem}"]
    assert batch["skipped"] == [(str(bad), "not_an_image")]


# ------------------------------------------------------------------------------- detection


def test_detection_batches_leave_out_unreadable_images(datasets: Path, tmp_path: Path) -> None:
    ids = ["0_15", "0_24", "0_31", "0_36"]
    root = voc_copy(datasets / "nepu_owod", tmp_path / "voc", {"train": ids[:3], "test": ids[3:]})
    zero = empty(root / "JPEGImages" / "0_24.jpg")
    html = text(root / "JPEGImages" / "0_31.jpg")
    dm = VOCDataModule(str(root), test_split="test", val_fraction=0.0, crop_size=64, batch_size=3)
    batch = one_batch(dm.train_dataloader())
    assert [img.shape for img in batch["image"]] == [(3, 64, 64)]
    assert len(batch["boxes"]) == len(batch["labels"]) == len(batch["difficult"]) == 1 and batch["id"] == ["0_15"]
    assert sorted(batch["skipped"]) == [(str(zero), "zero_byte"), (str(html), "not_an_image")]

    empty(root / "JPEGImages" / "0_36.jpg")
    test = one_batch(VOCDataModule(str(root), test_split="test", val_fraction=0.0).test_dataloader())
    assert test["image"] == test["boxes"] == test["id"] == []
    assert test["skipped"] == [(str(root / "JPEGImages" / "0_36.jpg"), "zero_byte")]


# ------------------------------------------------------------------------------- change detection


def test_change_batches_leave_out_pairs_with_an_unreadable_file(datasets: Path, tmp_path: Path) -> None:
    levir = datasets / "levir_cd"
    names = sorted(p.name for p in (levir / "A").iterdir())[:5]
    root = copy_levir(levir, tmp_path / "levir", names)
    dm = LEVIRCDDataModule(str(root), crop_size=64, batch_size=3)
    train = [r.name for r in dm.records()["train"]]
    assert len(train) == 3
    after = truncate(root / "B" / train[1])
    label = empty(root / "label" / train[2])
    batch = one_batch(dm.train_dataloader())
    assert batch["image_a"].shape == batch["image_b"].shape == (1, 3, 64, 64) and batch["mask"].shape == (1, 64, 64)
    assert batch["id"] == [train[0]]
    assert sorted(batch["skipped"]) == sorted([(str(after), "truncated"), (str(label), "zero_byte")])

    (test,) = [r.name for r in dm.records()["test"]]
    before = text(root / "A" / test)
    batch = one_batch(dm.test_dataloader())
    assert batch["image_a"].shape == batch["image_b"].shape == (0, 3, 0, 0) and batch["mask"].shape == (0, 0, 0)
    assert batch["id"] == [] and batch["skipped"] == [(str(before), "not_an_image")]


# ------------------------------------------------------------------------------- a whole run


VIT = {"class_path": "ViT", "init_args": {"size": "tiny", "img_size": 32, "patch_size": 16}}
UPERNET = {"class_path": "UperNetHead", "init_args": {"channels": 8, "pool_scales": [1, 2]}}


def loveda_with(datasets: Path, root: Path, copies: dict[str, str]) -> Path:
    """The 3 LoveDA tiles at 64 px plus copies of them under new ids (``{new: source}``)."""
    small_loveda(datasets / "loveda", root, size=64)
    for rid, src in copies.items():
        shutil.copy(root / "images_png" / f"{src}.png", root / "images_png" / f"{rid}.png")
        shutil.copy(root / "masks_png" / f"{src}.png", root / "masks_png" / f"{rid}.png")
    return root


def segmentation_task(dm: LoveDADataModule) -> DownstreamTask:
    torch.manual_seed(0)
    model = {"encoder": VIT, "neck": {"class_path": "SimpleFeaturePyramid"}, "heads": {"segmentation": UPERNET}}
    return DownstreamTask(model=model, optim={"lr": 1e-3, "warmup_epochs": 0}, data=dm.info().to_dict(), batch_size=2)


def fit(task: DownstreamTask, dm: LoveDADataModule, root: Path) -> SkipReportCallback:
    report = SkipReportCallback()
    trainer = L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
        max_epochs=1,
        default_root_dir=root,
        callbacks=[report],
    )
    trainer.fit(task, datamodule=LightningData(dm))
    return report


def test_fine_tuning_runs_through_unreadable_files_and_reports_them(
    datasets: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Train on a batch that lost a file, validate and test with batches that lost every file."""
    root = loveda_with(datasets, tmp_path / "loveda", {"3": "0", "4": "1", "5": "1", "6": "2"})
    bad_train = empty(root / "images_png" / "3.png")  # training: 0, 3, 4 -> one batch, two readable crops
    bad_val = truncate(root / "masks_png" / "5.png", keep=100)  # validation: 1, 5 (5 alone in its batch)
    bad_test = text(root / "images_png" / "6.png")  # test: 2, 6
    dm = LoveDADataModule(str(root), val_split=["1", "5"], test_split=["2", "6"], crop_size=32, batch_size=3)
    task = segmentation_task(dm)
    before = task.model.heads["segmentation"].decoder.classifier.weight.detach().clone()
    fit(task, dm, tmp_path / "run")
    assert not torch.equal(task.model.heads["segmentation"].decoder.classifier.weight, before)  # the step was taken
    assert task.trainer.global_step == 1 and "val/mIoU" in task.trainer.callback_metrics
    saved = json.loads((tmp_path / "run" / "skipped_files.json").read_text())
    assert saved["counts"] == {"truncated": 1, "zero_byte": 1}
    assert {f["path"] for f in saved["files"]} == {str(bad_train), str(bad_val)}

    task.out_dir = str(tmp_path / "out")
    batches: list[dict[str, Any]] = []

    class Keep(L.Callback):
        def on_test_batch_end(self, trainer, module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
            batches.append(batch)

    skips = SkipReportCallback()
    tester = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, callbacks=[Keep(), skips])
    (scores,) = tester.test(task, datamodule=LightningData(dm), verbose=False)
    assert set(scores) == {"test/mIoU", "test/OA", "test/mF1"}
    assert [b["id"] for b in batches] == [["images_png/2"], []]
    assert batches[1]["skipped"] == [(str(bad_test), "not_an_image")]
    # the test reports what it left out, beside its metrics (the fit's report is another file)
    assert skips.test_report is not None and skips.test_report.counts() == {"not_an_image": 1}
    assert skips.test_path == tmp_path / "out" / "skipped_files.json"
    assert json.loads(skips.test_path.read_text())["files"] == [{"path": str(bad_test), "reason": "not_an_image"}]
    assert "test: 1 file skipped: 1 not_an_image (listed in" in capsys.readouterr().out
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    labelled = int((np.asarray(Image.open(root / "masks_png" / "2.png")) != 0).sum())  # LoveDA's 0: no label
    assert metrics["heads"]["segmentation"]["pixels"] == labelled  # the readable test image alone was scored


def test_a_batch_left_with_one_sample_is_passed_over_when_batchnorm_needs_two(datasets: Path, tmp_path: Path) -> None:
    """UperNet's pooling pyramid normalises 1×1 maps: BatchNorm cannot train on one sample."""
    root = loveda_with(datasets, tmp_path / "loveda", {"3": "0"})
    empty(root / "images_png" / "3.png")  # training: 0, 3 -> one readable crop in the batch of 2
    dm = LoveDADataModule(str(root), val_split=["1"], test_split=["2"], crop_size=32, batch_size=2)
    task = segmentation_task(dm)
    before = task.model.heads["segmentation"].decoder.classifier.weight.detach().clone()
    with pytest.warns(UserWarning, match="one readable sample by skipped files was passed over"):
        report = fit(task, dm, tmp_path / "run")
    weight = task.model.heads["segmentation"].decoder.classifier.weight
    assert torch.equal(weight, before)  # no gradient reached it: the optimiser left it as it was
    assert report.report.counts() == {"zero_byte": 1}
