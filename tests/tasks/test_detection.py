"""Detection task: tiled prediction and merging, training on real NEPU crops, test outputs, GeoJSON."""

import json
from pathlib import Path

import lightning as L
import pytest
import rasterio
import torch
import yaml
from PIL import Image
from torch.utils.data import DataLoader

from rsfm.data.detection import DetectionDataModule
from rsfm.models.detection import FPNBackbone, build_faster_rcnn, detect_tiled, merge_detections, tile_windows
from rsfm.tasks.detection import DetectionTask, build, predict_file

RECIPE = Path(__file__).resolve().parents[2] / "configs" / "finetune" / "detection_nepu.yaml"
#: a small, fast detector for tests (the recipe's structure, fewer channels and proposals)
SMALL = {
    "fpn_channels": 32,
    "tile": 384,
    "overlap": 64,
    "box_batch_size_per_image": 32,
    "rpn_post_nms_top_n_test": 50,
    "batch_tiles": 4,
    "num_vis": 1,
}


def _cfg(datasets: Path, **model) -> dict:
    cfg = yaml.safe_load(RECIPE.read_text())
    cfg["data"]["root"] = str(datasets / "nepu_owod")
    cfg["data"].update(crop_size=128, batch_size=2)
    cfg["backbone"].update(img_size=128, drop_path_rate=0.0)
    cfg["model"].update(SMALL, **model)
    cfg["optim"]["warmup_epochs"] = 0
    return cfg


# --------------------------------------------------------------------------- tiling


def test_tile_windows_cover_with_overlap():
    wins = tile_windows(400, 1000, tile=192, overlap=64)
    xs = sorted({(x0, x1) for _, x0, _, x1 in wins})
    assert xs[0][0] == 0 and xs[-1][1] == 1000
    assert all(x1 - x0 == 192 for x0, x1 in xs)
    assert all(a[1] - b[0] >= 64 for a, b in zip(xs, xs[1:], strict=False))  # neighbours overlap
    assert tile_windows(100, 150, 192, 64) == [(0, 0, 100, 150)]  # a small image is one tile
    with pytest.raises(ValueError):
        tile_windows(100, 100, 64, 64)


class BrightSquareDetector(torch.nn.Module):
    """Stand-in detector: per tile, the bounding box of each bright square (channel 0 > 0.5,
    label 1) and dark-red square (channel 1 > 0.5, label 2)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, tiles):
        out = []
        for t in tiles:
            self.calls += 1
            boxes, labels = [], []
            for channel, label in ((0, 1), (1, 2)):
                ys, xs = torch.nonzero(t[channel] > 0.5, as_tuple=True)
                if len(xs):
                    boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
                    labels.append(label)
            out.append(
                {
                    "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                    "scores": torch.full((len(boxes),), 0.9),
                    "labels": torch.tensor(labels, dtype=torch.int64),
                }
            )
        return out


def test_tiled_detection_finds_object_once():
    image = torch.zeros(3, 400, 400)
    image[0, 140:180, 150:190] = 1.0  # inside the overlap of 4 tiles (starts 0, 128, 208)
    image[1, 150:175, 160:185] = 1.0  # another class, overlapping it: class-wise NMS keeps both
    det = BrightSquareDetector()
    out = detect_tiled(det, image, tile=192, overlap=64, iou_threshold=0.5, batch_size=3)
    assert det.calls == 9
    order = out["labels"].argsort()
    torch.testing.assert_close(out["boxes"][order], torch.tensor([[150.0, 140, 190, 180], [160, 150, 185, 175]]))
    assert out["labels"][order].tolist() == [1, 2]


def test_merge_shifts_boxes():
    dets = [
        {"boxes": torch.tensor([[0.0, 0, 10, 10]]), "scores": torch.tensor([0.8]), "labels": torch.tensor([1])},
        {"boxes": torch.tensor([[5.0, 5, 15, 15]]), "scores": torch.tensor([0.9]), "labels": torch.tensor([1])},
    ]
    out = merge_detections(dets, [(100, 200), (0, 0)], iou_threshold=0.5)
    torch.testing.assert_close(out["boxes"], torch.tensor([[5.0, 5, 15, 15], [200, 100, 210, 110]]))
    assert merge_detections(dets, [(0, 0), (0, 0)], 0.1, max_detections=1)["scores"].tolist() == [pytest.approx(0.9)]


# --------------------------------------------------------------------------- model


def test_faster_rcnn_keeps_native_size(one_thread):
    model = build_faster_rcnn({"arch": "vit", "size": "tiny", "img_size": 64, "patch_size": 16}, 3, fpn_channels=32)
    assert isinstance(model.backbone, FPNBackbone) and model.backbone.out_channels == 32
    assert model.backbone.strides == [4, 8, 16, 32, 64]
    assert model.rpn.anchor_generator.sizes == ((16,), (32,), (64,), (128,), (256,))
    images = [torch.rand(3, 96, 160), torch.rand(3, 64, 64)]
    batch, _ = model.transform(images)
    assert batch.image_sizes == [(96, 160), (64, 64)]  # not resized; padded to a multiple of 32
    assert tuple(batch.tensors.shape) == (2, 3, 96, 160)
    feats = model.backbone(batch.tensors)
    assert list(feats) == ["0", "1", "2", "3", "pool"] and feats["0"].shape == (2, 32, 24, 40)


# --------------------------------------------------------------------------- task on real data


@pytest.fixture(scope="module")
def built(datasets):
    torch.manual_seed(0)
    return build(_cfg(datasets))


def test_build_from_recipe(built, datasets):
    task, dm = built
    assert isinstance(task, DetectionTask) and isinstance(dm, DetectionDataModule)
    assert task.class_names == ["oilwell"]
    assert task.model.transform.image_mean == [0.485, 0.456, 0.406]
    with pytest.raises(ValueError, match="model.tiles"):
        build({**_cfg(datasets), "model": {"tiles": 3}})
    with pytest.raises(ValueError, match="data.colour"):
        build({**_cfg(datasets), "data": {"format": "voc", "root": "x", "colour": 1}})
    with pytest.raises(ValueError, match="model.overlap"):
        build({**_cfg(datasets), "model": {"tile": 64, "overlap": 64}})


def test_training_steps_lower_the_loss(datasets, one_thread, tmp_path):
    torch.manual_seed(0)
    cfg = _cfg(datasets)
    cfg["data"]["object_crop_prob"] = 1.0
    cfg["optim"]["lr"] = 2e-4
    task, dm = build(cfg)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))  # two real 128 px crops holding oil wells
    assert all(len(b) for b in batch["boxes"])

    def loss() -> float:
        task.train()
        torch.manual_seed(1)  # same proposal sampling before and after
        with torch.no_grad():
            return float(
                sum(
                    task(
                        batch["image"],
                        [{"boxes": b, "labels": la} for b, la in zip(batch["boxes"], batch["labels"], strict=True)],
                    ).values()
                )
            )

    before = loss()
    trainer = L.Trainer(
        accelerator="cpu", max_steps=8, logger=False, enable_progress_bar=False, enable_model_summary=False,
        enable_checkpointing=False, limit_val_batches=0, default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(task, train_dataloaders=DataLoader([batch] * 8, batch_size=None))
    after = loss()
    assert after < 0.85 * before, (before, after)
    # layer decay: the ViT's patch embedding learns slower than the detection heads
    groups = trainer.optimizers[0].param_groups
    assert sum(len(g["params"]) for g in groups) == sum(1 for p in task.parameters() if p.requires_grad)
    assert min(g["initial_lr"] for g in groups) < max(g["initial_lr"] for g in groups) == pytest.approx(2e-4)


def test_test_step_writes_metrics_and_png(built, one_thread, tmp_path):
    task, dm = built
    dm.setup("test")
    task.out_dir = str(tmp_path / "test")
    trainer = L.Trainer(
        accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
        limit_test_batches=1, default_root_dir=tmp_path,
    )  # fmt: skip
    (logged,) = trainer.test(task, datamodule=dm)
    assert {"test/mAP50", "test/mAP50_95"} <= set(logged)
    metrics = json.loads((tmp_path / "test" / "metrics.json").read_text())
    assert set(metrics) >= {"mAP50", "mAP50_95", "per_class", "num_images"} and metrics["num_images"] == 1
    assert metrics["per_class"]["oilwell"]["num_objects"] == len(dm.test_dataset.records[0].boxes)
    (png,) = sorted((tmp_path / "test").glob("*.png"))
    _, h, w = dm.test_dataset[0]["image"].shape
    assert Image.open(png).size == (2 * w + 8, h)


def test_predict_geotiff_in_map_coordinates(built, datasets, one_thread, tmp_path):
    task, _ = built
    src = datasets / "scenes" / "RGB.byte.tif"
    out = predict_file(task, src, tmp_path / "boxes.geojson", score_thresh=0.0)
    fc = json.loads(out.read_text())
    with rasterio.open(src) as ds:
        transform, crs = ds.transform, ds.crs
    assert fc["type"] == "FeatureCollection" and fc["coordinates"] == "map"
    assert fc["crs"]["properties"]["name"] == crs.to_string()
    assert fc["features"], "a random detector still returns low-score boxes"
    for f in fc["features"][:20]:
        x0, y0, x1, y1 = f["properties"]["bbox_px"]
        ring = f["geometry"]["coordinates"][0]
        expect = [transform @ xy for xy in [(x0, y0), (x1, y0), (x1, y1), (x0, y1), (x0, y0)]]
        assert [v for xy in ring for v in xy] == pytest.approx([v for xy in expect for v in xy])
        assert 0 <= x0 < x1 <= 791 and 0 <= y0 < y1 <= 718
        assert f["properties"]["class"] == "oilwell"


def test_predict_jpeg_in_pixel_coordinates(built, datasets, one_thread, tmp_path):
    task, _ = built
    out = predict_file(task, datasets / "nepu_owod/JPEGImages/0_15.jpg", tmp_path, score_thresh=0.0)
    assert out.name == "0_15_boxes.geojson"
    fc = json.loads(out.read_text())
    assert fc["coordinates"] == "pixel" and "crs" not in fc and fc["image_size"] == [768, 1024]
    f = fc["features"][0]
    x0, y0, x1, y1 = f["properties"]["bbox_px"]
    assert f["geometry"]["coordinates"][0] == [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]
    with pytest.raises(ValueError, match="geojson"):
        predict_file(task, datasets / "nepu_owod/JPEGImages/0_15.jpg", tmp_path / "x.png")
