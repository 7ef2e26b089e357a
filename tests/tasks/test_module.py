"""DownstreamTask, the one fine-tuning module: heads, metric names, losses, outputs, optimiser groups.

Real Dubai crops and a ViT-Tiny at 32-64 px keep every test to a few seconds on a CPU.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from rsfm.data.segmentation import DubaiDataModule
from rsfm.tasks.module import DownstreamTask
from rsfm.utils.errors import ConfigError

VIT = {"class_path": "ViT", "init_args": {"size": "tiny", "img_size": 32, "patch_size": 16}}
NECK = {"class_path": "SimpleFeaturePyramid"}
UPERNET = {"class_path": "UperNetHead", "init_args": {"channels": 8, "pool_scales": [1, 2]}}
FCN = {"class_path": "FCNHead", "init_args": {"in_index": 2, "channels": 8, "loss_weight": 0.4, "evaluate": False}}
OPTIM = {"name": "adamw", "lr": 1e-3, "weight_decay": 0.05, "layer_decay": 0.75, "warmup_epochs": 0}


@pytest.fixture(scope="module")
def dubai(datasets: Path) -> DubaiDataModule:
    """Dubai with 32 px training crops (the evaluation window); whole images of Tiles 2 and 3."""
    dm = DubaiDataModule(
        str(datasets / "dubai_seg"), val_split=[2], test_split=[3], crop_size=32, batch_size=4, num_workers=0
    )
    dm.setup("fit")
    return dm


def real_crops(dm: DubaiDataModule, size: int, n: int = 2, split: str = "val") -> dict[str, Any]:
    """A batch of ``n`` real ``size`` px crops (image, mask, id) at pixel (100, 100) of ``split``'s images."""
    samples = [dm.datasets[split][i] for i in range(n)]
    return {
        "image": torch.stack([s["image"][:, 100 : 100 + size, 100 : 100 + size] for s in samples]),
        "mask": torch.stack([s["mask"][100 : 100 + size, 100 : 100 + size] for s in samples]),
        "id": [s["id"] for s in samples],
    }


def make_task(dm: DubaiDataModule, heads: dict[str, Any], **kwargs: Any) -> DownstreamTask:
    torch.manual_seed(0)
    model = {"encoder": VIT, "neck": NECK, "heads": heads}
    kwargs.setdefault("optim", OPTIM)
    return DownstreamTask(model=model, data=dm.info().to_dict(), batch_size=dm.batch_size, **kwargs)


def trainer(tmp_path: Path, **kwargs: Any) -> L.Trainer:
    kwargs.setdefault("enable_checkpointing", False)
    return L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=tmp_path,
        **kwargs,
    )


def loader(batch: dict[str, Any], repeat: int = 1) -> DataLoader:
    """A loader yielding the same ready-made batch ``repeat`` times."""
    return DataLoader([batch] * repeat, batch_size=None)


class FixedBatches(L.LightningDataModule):
    """Ready-made training (and validation) batches.

    Training goes through a datamodule: the task sizes its schedule from
    ``trainer.datamodule.train_dataloader()``.
    """

    def __init__(self, train: dict[str, Any], repeat: int, val: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.train, self.repeat, self.val = train, repeat, val

    def train_dataloader(self) -> DataLoader:
        return loader(self.train, self.repeat)

    def val_dataloader(self) -> Any:
        return [] if self.val is None else loader(self.val)


# --------------------------------------------------------------------------- construction


def test_one_evaluated_head_logs_plain_metric_names(dubai) -> None:
    task = make_task(dubai, {"segmentation": UPERNET})
    assert task.evaluated == ["segmentation"]
    assert task.monitor == "val/mIoU"
    assert task.metric_key("test", "segmentation", "OA") == "test/OA"
    assert set(task.heads) == {"segmentation"}


def test_bad_model_specifications_are_config_errors(dubai) -> None:
    with pytest.raises(ConfigError, match="no head is evaluated"):
        make_task(dubai, {"auxiliary": FCN})
    with pytest.raises(ConfigError, match="model.heads is empty"):
        make_task(dubai, {})
    # a change head reads image_a/image_b, which segmentation samples do not have
    with pytest.raises(ConfigError, match=r"model\.heads\.change .*image_a"):
        make_task(dubai, {"change": {"class_path": "ChangeHead"}})
    with pytest.raises(ConfigError, match=r"model\.heads\.x\.class_path"):
        make_task(dubai, {"x": {"class_path": "NoSuchHead"}})
    with pytest.raises(ConfigError, match="UperNetHead"):
        make_task(dubai, {"s": {"class_path": "UperNetHead", "init_args": {"chanels": 8}}})


def test_monitor_must_name_a_logged_metric(dubai) -> None:
    # with two evaluated heads every metric carries its head's name: a plain val/mIoU (the
    # monitor of a one-head recipe) or an unknown head is refused before training
    heads = {"a": UPERNET, "b": UPERNET}
    assert make_task(dubai, heads, monitor="val/b/mIoU").monitor == "val/b/mIoU"
    assert make_task(dubai, heads, monitor="val/a/mF1").monitor == "val/a/mF1"
    for bad in ("val/mIoU", "val/c/mIoU", "train/a/mIoU", "val/a/miou", "val/a/mAP50"):
        with pytest.raises(ConfigError, match="model.monitor"):
            make_task(dubai, heads, monitor=bad)
    # a metric the head does not compute is refused with the list to choose from
    with pytest.raises(ConfigError, match=r"model\.monitor: 'val/foo' .*\['val/mIoU', 'val/OA', 'val/mF1'\]"):
        make_task(dubai, {"segmentation": UPERNET}, monitor="val/foo")
    with pytest.raises(ConfigError, match="model.monitor"):
        make_task(dubai, {"segmentation": UPERNET}, monitor="val/segmentation/mIoU")


def test_an_encoder_export_brings_its_architecture_and_statistics(dubai, tmp_path) -> None:
    import timm

    from rsfm.models.encoders.vit import build_vit
    from rsfm.models.export import export_encoder

    meta = {"arch": "vit", "size": "tiny", "img_size": 32, "patch_size": 8, "in_chans": 3}
    stats = export_encoder(
        build_vit("tiny", img_size=32, patch_size=8),
        tmp_path / "vit.safetensors",
        {**meta, "mean": [0.1] * 3, "std": [0.2] * 3},
    )
    plain = export_encoder(build_vit("tiny", img_size=32, patch_size=8), tmp_path / "plain.safetensors", meta)
    data = dubai.info().to_dict()
    for path, expected in ((stats, ([0.1] * 3, [0.2] * 3)), (plain, (data["mean"], data["std"]))):
        encoder = {"class_path": "ViT", "init_args": {"weights": str(path), "patch_size": 16}}
        task = DownstreamTask({"encoder": encoder, "neck": NECK, "heads": {"s": UPERNET}}, OPTIM, data)
        assert task.model.encoder.patch_size == 8  # the export's architecture wins
        mean, std = task.model.mean_std
        assert mean == pytest.approx(expected[0]) and std == pytest.approx(expected[1])
    # a ResNet export needs no neck: its four stages are the pyramid
    resnet = export_encoder(
        timm.create_model("resnet18", num_classes=0),
        tmp_path / "r18.safetensors",
        {"arch": "resnet18", "img_size": 64, "in_chans": 3},
    )
    encoder = {"class_path": "ResNet", "init_args": {"weights": str(resnet)}}
    task = DownstreamTask({"encoder": encoder, "heads": {"s": UPERNET}}, OPTIM, data).eval()
    assert task.model.encoder.strides == [4, 8, 16, 32]
    with torch.no_grad():
        assert task.heads["s"].predict(task.model, real_crops(dubai, 48)).shape == (2, 48, 48)


# --------------------------------------------------------------------------- two evaluated heads


def test_two_evaluated_heads_are_logged_and_written_under_their_names(dubai, tmp_path) -> None:
    task = make_task(dubai, {"a": UPERNET, "b": UPERNET}, num_visualisations=1)
    assert task.evaluated == ["a", "b"]
    assert task.monitor == "val/a/mIoU"  # the first evaluated head's metric
    batch = real_crops(dubai, 32)
    (validated,) = trainer(tmp_path).validate(task, dataloaders=loader(batch), verbose=False)
    expected = {f"val/{h}/{m}" for h in ("a", "b") for m in ("mIoU", "OA", "mF1")}
    assert set(validated) == expected
    task.out_dir = str(tmp_path / "out")
    (tested,) = trainer(tmp_path).test(task, dataloaders=loader(batch), verbose=False)
    assert set(tested) == {k.replace("val/", "test/") for k in expected}
    report = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert set(report["heads"]) == {"a", "b"}
    assert report["metrics"] == pytest.approx(tested)
    for head in ("a", "b"):
        assert report["heads"][head]["mIoU"] == pytest.approx(tested[f"test/{head}/mIoU"])
        assert len(list((tmp_path / "out" / "visualisations" / head).glob("*.png"))) == 1


# --------------------------------------------------------------------------- auxiliary head


def test_auxiliary_head_is_trained_but_not_scored(dubai, tmp_path) -> None:
    task = make_task(dubai, {"segmentation": UPERNET, "auxiliary": FCN}, num_visualisations=1)
    assert task.evaluated == ["segmentation"] and task.monitor == "val/mIoU"
    before = task.model.heads["auxiliary"].classifier.weight.detach().clone()
    batch = real_crops(dubai, 32, n=4, split="test")
    t = trainer(tmp_path, max_steps=1, limit_val_batches=1)
    t.fit(task, datamodule=FixedBatches(batch, 1, real_crops(dubai, 32)))
    logged = {k: float(v) for k, v in t.callback_metrics.items()}
    assert {"train/segmentation/ce", "train/auxiliary/ce", "train/loss", "val/mIoU"} <= set(logged)
    assert not [k for k in logged if "auxiliary" in k and not k.startswith("train/")]
    # the loss of the one step is the weighted sum of the heads' terms (0.4 for the auxiliary head)
    total = logged["train/segmentation/ce"] + 0.4 * logged["train/auxiliary/ce"]
    assert logged["train/loss"] == pytest.approx(total, rel=1e-5)
    # the auxiliary head's classifier took the optimiser step
    assert not torch.equal(task.model.heads["auxiliary"].classifier.weight, before)

    task.out_dir = str(tmp_path / "out")
    (tested,) = t.test(task, dataloaders=loader(real_crops(dubai, 32)), verbose=False)
    assert set(tested) == {"test/mIoU", "test/OA", "test/mF1"}
    report = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert list(report["heads"]) == ["segmentation"]
    assert [p.name for p in (tmp_path / "out" / "visualisations").iterdir()] == ["segmentation"]


# --------------------------------------------------------------------------- test outputs


def test_test_metrics_equal_the_hand_computed_confusion_matrix(dubai, tmp_path) -> None:
    task = make_task(dubai, {"segmentation": UPERNET}, num_visualisations=1)
    task.out_dir = str(tmp_path / "out")
    batch = real_crops(dubai, 48)  # 48 px: sliding 32 px windows every 21 px over each crop
    batch["mask"][0, :4] = 255  # some ignored pixels
    (tested,) = trainer(tmp_path).test(task, dataloaders=loader(batch), verbose=False)

    task.eval()
    with torch.no_grad():
        preds = task.model.heads["segmentation"].predict(task.model, batch)
    assert preds.shape == (2, 48, 48)
    k = 6
    keep = batch["mask"] != 255
    cm = torch.bincount(batch["mask"][keep] * k + preds[keep], minlength=k * k).view(k, k).double()
    tp, fp, fn = cm.diagonal(), cm.sum(0) - cm.diagonal(), cm.sum(1) - cm.diagonal()
    union = tp + fp + fn
    iou = tp[union > 0] / union[union > 0]
    f1 = 2 * tp[union > 0] / (2 * tp + fp + fn)[union > 0]

    report = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert report["scale"] == "percent" and report["split"] == "test"
    seg = report["heads"]["segmentation"]
    assert seg["confusion_matrix"] == cm.long().tolist()
    assert seg["pixels"] == 2 * 48 * 48 - 4 * 48
    assert seg["mIoU"] == pytest.approx(100 * float(iou.mean()))
    assert seg["mF1"] == pytest.approx(100 * float(f1.mean()))
    assert seg["OA"] == pytest.approx(100 * float(cm.trace() / cm.sum()))
    assert tested["test/mIoU"] == pytest.approx(seg["mIoU"], abs=1e-4)
    assert report["metrics"]["test/OA"] == pytest.approx(seg["OA"], abs=1e-4)
    (png,) = (tmp_path / "out" / "visualisations" / "segmentation").glob("*.png")
    assert png.name == "00_image_part_001.png"
    w, h = Image.open(png).size
    assert w == 3 * 48 + 2 * 6 and h > 48  # image | truth | prediction, legend below


def test_predict_step_returns_every_evaluated_head(dubai) -> None:
    task = make_task(dubai, {"segmentation": UPERNET, "auxiliary": FCN}).eval()
    batch = real_crops(dubai, 32)
    out = task.predict_step(batch, 0)
    assert list(out) == ["segmentation"] and out["segmentation"].shape == (2, 32, 32)


# --------------------------------------------------------------------------- optimisation


def test_layer_decay_applies_to_the_encoder_only(dubai) -> None:
    task = make_task(dubai, {"segmentation": UPERNET, "auxiliary": FCN})
    groups = task.optimizer_groups(1e-3)
    lr_of = {id(p): g["lr"] for g in groups for p in g["params"]}
    trainable = [p for p in task.parameters() if p.requires_grad]
    assert len(lr_of) == len(trainable)  # every trainable parameter in exactly one group
    vit = task.model.encoder.model
    blocks = [lr_of[id(b.attn.qkv.weight)] for b in vit.blocks]
    # timm's layer decay: the last block at the full rate, each earlier one a factor 0.75 lower,
    # the patch embedding and class token one factor below block 0
    assert blocks == pytest.approx([1e-3 * 0.75 ** (11 - i) for i in range(12)])
    assert lr_of[id(vit.patch_embed.proj.weight)] == pytest.approx(1e-3 * 0.75**12)
    assert lr_of[id(vit.cls_token)] == pytest.approx(1e-3 * 0.75**12)
    # the neck and the heads train at the full rate
    assert lr_of[id(task.model.neck.fpn1[0].weight)] == pytest.approx(1e-3)
    assert lr_of[id(task.model.heads["segmentation"].decoder.classifier.weight)] == pytest.approx(1e-3)
    assert lr_of[id(task.model.heads["auxiliary"].classifier.weight)] == pytest.approx(1e-3)
    # no weight decay on biases, norms and the position embedding, which trains with the patch
    # embedding's rate (MAE's fine-tuning: layer 0 of timm's groups)
    wd_of = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    assert wd_of[id(vit.blocks[3].norm1.weight)] == 0 and wd_of[id(vit.blocks[3].mlp.fc1.weight)] == 0.05
    assert wd_of[id(vit.pos_embed)] == 0 and lr_of[id(vit.pos_embed)] == pytest.approx(1e-3 * 0.75**12)


def test_training_lowers_the_loss_on_real_crops(dubai, tmp_path) -> None:
    task = make_task(dubai, {"segmentation": UPERNET}, optim={**OPTIM, "lr": 2e-3})
    batch = real_crops(dubai, 32, n=4, split="test")
    losses: list[float] = []

    class Losses(L.Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            losses.append(float(outputs["loss"]))

    trainer(tmp_path, max_epochs=1, callbacks=[Losses()], limit_val_batches=0).fit(
        task, datamodule=FixedBatches(batch, 10)
    )
    assert len(losses) == 10
    assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.2, losses
