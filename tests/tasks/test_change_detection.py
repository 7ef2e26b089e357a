import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import rasterio.windows
import torch
import yaml
from PIL import Image

from rsfm.data.change_detection import LEVIRCD, ChangeDetectionDataModule
from rsfm.models.adapters import build_backbone
from rsfm.models.change import SiameseChangeDetector
from rsfm.tasks.change_detection import ChangeDetectionTask, build, predict_file

RECIPE = Path(__file__).resolve().parents[2] / "configs" / "finetune" / "change_detection_levir.yaml"
VIT = {"arch": "vit", "size": "tiny", "img_size": 64, "patch_size": 16}


@pytest.fixture(scope="module")
def levir(datasets: Path) -> Path:
    return datasets / "levir_cd"


def test_siamese_shares_one_batched_backbone_pass(one_thread):
    torch.manual_seed(0)
    backbone = build_backbone(VIT)
    calls = []
    backbone.register_forward_hook(lambda m, inp, out: calls.append(inp[0].shape[0]))
    model = SiameseChangeDetector(backbone, fusion="diff", channels=32).eval()
    a, b = torch.randn(2, 3, 64, 96), torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        out = model(a, b)
        assert calls == [4]  # both dates in one forward
        assert out.shape == (2, 2, 64, 96)
        # |f_a - f_b| is symmetric: swapping the dates changes nothing
        assert torch.allclose(model(b, a), out, atol=1e-5)
    concat = SiameseChangeDetector(build_backbone(VIT), fusion="concat", channels=32, num_classes=1).eval()
    with torch.no_grad():
        assert concat(a, b).shape == (2, 1, 64, 96)
    resnet = SiameseChangeDetector(build_backbone({"arch": "resnet50"}), fusion="concat", channels=32).eval()
    with torch.no_grad():
        assert resnet(a[:1], b[:1]).shape == (1, 2, 64, 96)
    with pytest.raises(ValueError, match="fusion"):
        SiameseChangeDetector(backbone, fusion="sum")


def test_training_steps_lower_the_loss_on_real_pairs(levir, one_thread):
    torch.manual_seed(0)
    ds = LEVIRCD(levir, ["test_2_0000_0000.png", "train_36_0512_0512.png"])
    batch = {k: torch.stack([ds[i][k][..., 96:160, 96:160] for i in (0, 1)]) for k in ("image_a", "image_b", "mask")}
    assert 0 < batch["mask"].float().mean() < 1
    task = ChangeDetectionTask(VIT, channels=32, loss="ce+dice")
    opt = torch.optim.AdamW(task.parameters(), lr=1e-3)

    def loss() -> torch.Tensor:
        return task.compute_loss(task(batch["image_a"], batch["image_b"]), batch["mask"])

    task.eval()
    with torch.no_grad():
        before = loss().item()
    task.train()
    for _ in range(8):
        opt.zero_grad()
        loss().backward()
        opt.step()
    task.eval()
    with torch.no_grad():
        after = loss().item()
    assert after < 0.8 * before


def test_fit_and_test_write_metrics_and_pngs(levir, cpu_trainer, tmp_path, one_thread):
    torch.manual_seed(0)
    out = tmp_path / "out"
    task = ChangeDetectionTask(VIT, channels=32, lr=1e-3, layer_decay=0.5, out_dir=str(out), num_visualisations=1)
    dm = ChangeDetectionDataModule(levir, crop_size=64, batch_size=2)
    trainer = cpu_trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=1, num_sanity_val_steps=0)
    trainer.fit(task, datamodule=dm)
    # layer decay (peak lr, before the schedule): block i of 12 at 0.5^(11 - i), the patch
    # embedding at 0.5^12; the pyramid neck and the decoder at the full lr
    lr_of = {id(p): g["initial_lr"] for g in trainer.optimizers[0].param_groups for p in g["params"]}
    enc = task.model.backbone.encoder
    assert lr_of[id(task.model.classifier.weight)] == pytest.approx(1e-3)
    assert lr_of[id(task.model.backbone.fpn1[0].weight)] == pytest.approx(1e-3)
    assert lr_of[id(enc.blocks[11].attn.qkv.weight)] == pytest.approx(1e-3)
    assert lr_of[id(enc.blocks[0].attn.qkv.weight)] == pytest.approx(1e-3 * 0.5**11)
    assert lr_of[id(enc.patch_embed.proj.weight)] == pytest.approx(1e-3 * 0.5**12)
    assert "val/F1" in trainer.callback_metrics

    (tested,) = trainer.test(task, datamodule=dm)
    metrics = json.loads((out / "metrics.json").read_text())
    for k in ("F1", "IoU", "precision", "recall", "OA"):
        assert metrics["metrics"][k] == pytest.approx(tested[f"test/{k}"], abs=1e-6)
    assert metrics["pairs"] == 2 and set(metrics["per_class"]) == {"no_change", "change"}
    c = metrics["counts"]
    assert c["TP"] + c["FP"] + c["FN"] + c["TN"] == 2 * 256 * 256
    pngs = list((out / "visualisations").glob("*.png"))
    assert len(pngs) == 1
    assert np.asarray(Image.open(pngs[0])).shape == (256, 4 * 256 + 3 * 4, 3)


def test_build_from_recipe_checks_keys(levir):
    cfg = yaml.safe_load(RECIPE.read_text())
    cfg["data"]["root"] = str(levir)
    cfg["backbone"]["img_size"] = 64
    task, dm = build(cfg)
    assert isinstance(task, ChangeDetectionTask) and dm.crop_size == cfg["data"]["crop_size"]
    assert task.hparams.fusion == cfg["model"]["fusion"]
    assert torch.allclose(task.mean.flatten(), torch.tensor(cfg["data"]["mean"]))
    cfg["model"]["fusoin"] = "diff"
    with pytest.raises(ValueError, match=r"model\.fusoin"):
        build(cfg)
    del cfg["model"]["fusoin"]
    cfg["task"] = "segmentation"
    with pytest.raises(ValueError, match="change_detection"):
        build(cfg)


def test_predict_file_png_tiled_and_geotiff(levir, datasets, tmp_path, one_thread):
    torch.manual_seed(0)
    task = ChangeDetectionTask(VIT, channels=32).eval()
    name = "test_2_0000_0000.png"
    pair = f"{levir / 'A' / name},{levir / 'B' / name}"
    whole = predict_file(task, pair, tmp_path / "whole.png", tile_size=None)
    tiled = predict_file(task, pair, tmp_path / "tiled.png", tile_size=128, overlap=0.5)
    w, t = np.asarray(Image.open(whole)), np.asarray(Image.open(tiled))
    assert w.shape == t.shape == (256, 256) and set(np.unique(w)) <= {0, 255}
    with pytest.raises(ValueError, match="two images"):
        predict_file(task, str(levir / "A" / name), tmp_path / "x.png")
    # a GeoTIFF pair gives a GeoTIFF mask on the same grid: a real 160×128 window of the
    # Landsat scene, with the window's georeference
    scene = datasets / "scenes" / "RGB.byte.tif"
    src = tmp_path / "window.tif"
    with rasterio.open(scene) as s:
        win = rasterio.windows.Window(300, 300, 160, 128)
        profile = {**s.profile, "width": 160, "height": 128, "transform": s.window_transform(win)}
        with rasterio.open(src, "w", **profile) as dst:
            dst.write(s.read(window=win))
    out = predict_file(task, (src, src), tmp_path / "change.tif", tile_size=None)
    with rasterio.open(src) as a, rasterio.open(out) as b:
        assert b.crs == a.crs and b.transform == a.transform and (b.height, b.width) == (128, 160)
        # identical dates: |f_a - f_b| = 0 at every level, so one class everywhere
        assert len(np.unique(b.read(1))) == 1
