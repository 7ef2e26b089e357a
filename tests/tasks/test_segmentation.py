import json
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from torch.utils.data import DataLoader, Subset

from rsfm.data.segmentation import DubaiSegmentation, SegmentationCrop
from rsfm.models.heads.upernet import UperNetHead
from rsfm.tasks.segmentation import SegmentationTask, build, predict_file, slide_inference, window_starts

ROOT = Path(__file__).resolve().parents[2]
TINY = {"arch": "vit", "size": "tiny", "img_size": 32, "patch_size": 16}


def _task(**kw):
    torch.manual_seed(0)
    kw.setdefault("crop_size", 32)
    return SegmentationTask(backbone=TINY, num_classes=6, channels=16, **kw)


def test_upernet_logits_at_finest_stride():
    head = UperNetHead([8, 16, 32, 64], num_classes=5, channels=16)
    feats = [torch.randn(2, c, 64 // s, 48 // s) for c, s in zip([8, 16, 32, 64], [4, 8, 16, 32], strict=True)]
    assert head(feats).shape == (2, 5, 16, 12)
    head.eval()  # batch of one: BatchNorm of the 1×1 pooled branch needs eval mode
    assert head([f[:1] for f in feats]).shape == (1, 5, 16, 12)
    with pytest.raises(ValueError, match="4 feature maps"):
        head(feats[:3])


def test_window_starts_cover_the_axis():
    assert window_starts(64, 64, 32) == [0]
    assert window_starts(20, 64, 32) == [0]
    assert window_starts(100, 32, 20) == [0, 20, 40, 60, 68]
    with pytest.raises(ValueError):
        window_starts(100, 32, 40)


def test_slide_equals_direct_for_a_translation_equivariant_model():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 4, 1)
    with torch.no_grad():
        for h, w in [(70, 100), (32, 32), (20, 25), (33, 90)]:
            x = torch.randn(2, 3, h, w)
            out = slide_inference(conv, x, 4, crop=32, stride=20, batch_windows=3)
            assert out.shape == (2, 4, h, w)
            torch.testing.assert_close(out, conv(x))


def test_slide_matches_the_real_model_where_windows_fit(one_thread):
    # ViT + UperNet is not translation-equivariant (global attention, pooling), so tiled and
    # direct logits agree exactly where one window covers the whole image or a pixel, and are
    # the mean of the covering windows elsewhere (the overlap blending).
    task = _task().eval()
    x = torch.randn(1, 3, 32, 48)
    with torch.no_grad():
        torch.testing.assert_close(slide_inference(task, x[..., :32], 6, 32, 16), task(x[..., :32]))
        tiled = slide_inference(task, x, 6, crop=32, stride=16)
        left, right = task(x[..., :32]), task(x[..., 16:])
    torch.testing.assert_close(tiled[..., :16], left[..., :16])
    torch.testing.assert_close(tiled[..., 32:], right[..., 16:])
    torch.testing.assert_close(tiled[..., 16:32], (left[..., 16:] + right[..., :16]) / 2)


@pytest.fixture(scope="module")
def dubai_tile2(datasets):
    return DubaiSegmentation(datasets / "dubai_seg", ["Tile 2"])


def test_training_steps_lower_the_loss_on_real_crops(dubai_tile2, cpu_trainer, one_thread):
    torch.manual_seed(0)
    crops = DubaiSegmentation(dubai_tile2.pairs[0][0].parents[2], ["Tile 2"], transform=SegmentationCrop(64))
    batch = [crops[i] for i in range(4)]  # 4 fixed real crops, fed 12 times
    loader = DataLoader(batch * 12, batch_size=4, shuffle=False)
    task = _task(crop_size=64, lr=2e-3, warmup_epochs=0, layer_decay=0.75)
    losses = []

    class Losses(L.Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            losses.append(float(outputs["loss"]))

    trainer = cpu_trainer(max_epochs=1, callbacks=[Losses()], limit_val_batches=0)
    trainer.fit(task, train_dataloaders=loader)
    assert len(losses) == 12
    assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.2, losses
    # layer decay (timm's groups): the patch embedding gets 0.75^12 of the lr, each block one
    # factor more, the last block, neck and head the full lr
    initial = sorted({g["initial_lr"] for g in trainer.optimizers[0].param_groups})
    assert len(initial) == 13
    assert initial == pytest.approx([2e-3 * 0.75**i for i in range(12, -1, -1)])


def test_test_writes_metrics_json_and_pngs(dubai_tile2, cpu_trainer, tmp_path, one_thread):
    task = _task(crop_size=64, stride=64, num_vis=1, class_names=list(dubai_tile2.classes))
    task.out_dir = str(tmp_path / "out")
    loader = DataLoader(Subset(dubai_tile2, [0, 1]), batch_size=1)
    result = cpu_trainer().test(task, dataloaders=loader, verbose=False)[0]
    report = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert set(report) >= {"mIoU", "OA", "mF1", "IoU", "F1", "confusion_matrix"}
    assert list(report["IoU"]) == list(dubai_tile2.classes)
    assert report["mIoU"] == pytest.approx(result["test/mIoU"], abs=1e-6)
    assert report["OA"] == pytest.approx(result["test/OA"], abs=1e-6)
    assert report["pixels"] == 509 * 544 + 510 * 544  # two whole images, no ignore pixels
    pngs = sorted((tmp_path / "out").glob("*.png"))
    assert len(pngs) == 1
    w, h = Image.open(pngs[0]).size
    assert w == 3 * 509 + 12 and h > 544  # image | truth | prediction, legend below


def test_predict_geotiff_keeps_crs_and_transform(datasets, tmp_path, one_thread):
    import rasterio

    src_path = datasets / "scenes" / "RGB.byte.tif"
    task = _task(crop_size=128, stride=128).eval()
    out = predict_file(task, src_path, tmp_path / "mask.tif", batch_windows=16)
    with rasterio.open(src_path) as src, rasterio.open(out) as dst:
        assert dst.crs == src.crs and dst.transform == src.transform
        assert (dst.height, dst.width, dst.count, dst.dtypes[0]) == (src.height, src.width, 1, "uint8")
        mask = dst.read(1)
        nodata = src.dataset_mask() == 0
    assert (mask[nodata] == 255).all() and nodata.any()  # nodata borders stay nodata
    assert mask[~nodata].max() < 6
    with pytest.raises(ValueError, match="georeferenced"):
        predict_file(task, src_path, tmp_path / "mask.png")


def test_predict_plain_image_writes_palette_png(dubai_tile2, tmp_path, one_thread):
    task = _task(crop_size=128, stride=128).eval()
    out = predict_file(task, dubai_tile2.pairs[0][0], tmp_path)
    assert out.name == "image_part_001_mask.png"
    img = Image.open(out)
    assert img.mode == "P" and img.size == (509, 544)
    assert np.asarray(img).max() < 6


@pytest.mark.parametrize("recipe", ["segmentation_dubai", "segmentation_loveda"])
def test_recipes_build(recipe, datasets):
    cfg = yaml.safe_load((ROOT / "configs" / "finetune" / f"{recipe}.yaml").read_text())
    assert cfg["task"] == "segmentation"
    cfg["data"]["root"] = str(datasets / Path(cfg["data"]["root"]).name)
    task, dm = build(cfg)
    assert task.hparams.num_classes == dm.num_classes == len(task.class_names)
    assert task.hparams.crop_size == cfg["data"]["crop_size"]
    for section, key in [("model", "foo"), ("optim", "momentum"), ("data", "tiles"), ("backbone", "depth")]:
        bad = {**cfg, section: {**cfg[section], key: 1}}
        with pytest.raises(ValueError, match=f"{section}.{key}"):
            build(bad)
    with pytest.raises(ValueError, match="multiple of the ViT patch"):
        build({**cfg, "data": {**cfg["data"], "crop_size": 100}})
