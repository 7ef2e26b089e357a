"""Detection: tiled prediction and merging, the Faster R-CNN head on real NEPU crops, VOC scores, GeoJSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from rsfm.data.detection import VOCDataModule
from rsfm.models.heads.detection import DetectionMetricSet, FasterRCNNHead
from rsfm.models.inference import tile_windows
from rsfm.tasks.module import DownstreamTask
from rsfm.tasks.predict import predict_files
from rsfm.utils.errors import ConfigError

#: a small, fast detector (the recipe's structure, fewer channels and proposals)
SMALL = {"fpn_channels": 16, "box_batch_size_per_image": 32, "rpn_post_nms_top_n_test": 50, "tile": 256}


@pytest.fixture(scope="module")
def nepu(datasets: Path) -> VOCDataModule:
    dm = VOCDataModule(
        str(datasets / "nepu_owod"), train_split="train", classes=["oilwell"], crop_size=128, batch_size=2,
        object_crop_prob=1.0, min_visibility=0.9, num_workers=0,
    )  # fmt: skip
    dm.setup("fit")
    return dm


def detection_task(info: dict[str, Any], patch: int = 16, **head: Any) -> DownstreamTask:
    torch.manual_seed(0)
    model = {
        "encoder": {"class_path": "ViT", "init_args": {"size": "tiny", "img_size": 64, "patch_size": patch}},
        "neck": {"class_path": "SimpleFeaturePyramid"},
        "heads": {"detection": {"class_path": "FasterRCNNHead", "init_args": {**SMALL, **head}}},
    }
    return DownstreamTask(model=model, optim={"lr": 2e-4}, data=info)


# --------------------------------------------------------------------------- tiling


def test_tile_windows_cover_with_overlap() -> None:
    wins = tile_windows(400, 1000, tile=192, overlap=64)
    xs = sorted({(x0, x1) for _, x0, _, x1 in wins})
    assert xs[0][0] == 0 and xs[-1][1] == 1000
    assert all(x1 - x0 == 192 for x0, x1 in xs)
    assert all(a[1] - b[0] >= 64 for a, b in zip(xs, xs[1:], strict=False))  # neighbours overlap
    assert tile_windows(100, 150, 192, 64) == [(0, 0, 100, 150)]  # a small image is one tile
    with pytest.raises(ValueError):
        tile_windows(100, 100, 64, 64)


def bright_squares(tiles: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    """Stand-in detector: per tile, the box of the bright square of channel 0 (class 0) and 1 (class 1)."""
    out = []
    for t in tiles:
        boxes, labels = [], []
        for channel in (0, 1):
            ys, xs = torch.nonzero(t[channel] > 0.5, as_tuple=True)
            if len(xs):
                boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
                labels.append(channel)
        out.append(
            {
                "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                "scores": torch.full((len(boxes),), 0.9),
                "labels": torch.tensor(labels, dtype=torch.int64),
            }
        )
    return out


def test_tiled_detection_finds_each_object_once() -> None:
    image = torch.zeros(3, 400, 400)
    image[0, 140:180, 150:190] = 1.0  # inside the overlap of 4 tiles (starts 0, 128, 208)
    image[1, 150:175, 160:185] = 1.0  # another class, overlapping it: class-wise NMS keeps both
    head = FasterRCNNHead(tile=192, overlap=64, batch_tiles=3, merge_iou=0.5)
    calls: list[int] = []

    class Model:  # features of a list batch: the tiles themselves
        def features(self, batch: dict[str, Any], *heads: Any) -> list[torch.Tensor]:
            calls.append(len(batch["image"]))
            assert all(t.shape[-1] <= 192 and t.shape[-2] <= 192 for t in batch["image"])
            return batch["image"]

    head.forward = lambda tiles, batch=None: bright_squares(tiles)  # type: ignore[method-assign]
    out = head.detect(Model(), image)
    assert calls == [3, 3, 3]  # 9 tiles, 3 per pass
    order = out["labels"].argsort()
    torch.testing.assert_close(out["boxes"][order], torch.tensor([[150.0, 140, 190, 180], [160, 150, 185, 175]]))
    assert out["labels"][order].tolist() == [0, 1]
    assert head.detect(Model(), image, score_thresh=0.95)["boxes"].shape == (0, 4)


# --------------------------------------------------------------------------- the head


def test_faster_rcnn_keeps_native_size(nepu) -> None:
    task = detection_task(nepu.info().to_dict(), fpn_channels=32)
    head = task.heads["detection"]
    assert head.strides == [4, 8, 16, 32, 64]
    assert head.rpn.anchor_generator.sizes == ((16,), (32,), (64,), (128,), (256,))  # 4× each stride
    images = [torch.rand(3, 96, 160), torch.rand(3, 64, 64)]
    features = task.model.features({"image": images})
    assert features.sizes == [(96, 160), (64, 64)]  # not resized; padded to a multiple of 32
    assert features.shape == (96, 160) and features.maps["image"][0].shape == (2, 192, 24, 40)
    task.eval()
    with torch.no_grad():
        dets = head(features)
    assert len(dets) == 2
    for d, (h, w) in zip(dets, features.sizes, strict=True):
        assert set(d) == {"boxes", "scores", "labels"}
        if len(d["boxes"]):
            assert float(d["boxes"][:, 2].max()) <= w and float(d["boxes"][:, 3].max()) <= h
            assert int(d["labels"].min()) >= 0  # 0-based classes, background removed


def test_head_options_are_checked() -> None:
    with pytest.raises(ConfigError, match="metric"):
        FasterRCNNHead(metric="map")
    with pytest.raises(ConfigError, match="overlap"):
        FasterRCNNHead(tile=64, overlap=64)
    info = {"classes": ["oilwell"], "sample_keys": ["image", "boxes", "labels"]}
    with pytest.raises(ConfigError, match="anchor_sizes needs 5 levels"):
        detection_task(info, anchor_sizes=[[16], [32]])


def test_training_steps_lower_the_loss_on_real_crops(nepu) -> None:
    batch = next(iter(nepu.train_dataloader()))  # two real 128 px crops holding oil wells
    assert all(len(b) for b in batch["boxes"])
    task = detection_task(nepu.info().to_dict())
    head = task.heads["detection"]

    def loss() -> torch.Tensor:
        terms = head.loss(task.model.features(batch), batch)
        assert set(terms) == {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg"}
        return sum(terms.values())

    def measure() -> float:
        torch.manual_seed(1)  # same proposal sampling before and after
        with torch.no_grad():
            return float(loss())

    task.train()
    before = measure()
    opt = torch.optim.AdamW(task.parameters(), lr=2e-4)
    for _ in range(8):
        opt.zero_grad()
        loss().backward()
        opt.step()
    after = measure()
    assert after < 0.85 * before, (before, after)


def test_voc_scores_equal_hand_computed_ap() -> None:
    # two wells and a difficult one; detections: a hit (0.9), a false alarm (0.8), a hit on
    # the difficult well (0.7, neither true nor false), a second hit on the first well (0.6)
    metrics = DetectionMetricSet(["oilwell"], "voc12")
    target = {
        "boxes": [torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]])],
        "labels": [torch.tensor([0, 0, 0])],
        "difficult": [torch.tensor([False, False, True])],
    }
    pred = {
        "boxes": torch.tensor([[0.0, 0, 10, 9], [60, 60, 70, 70], [40, 40, 50, 50], [1.0, 0, 10, 10]]),
        "scores": torch.tensor([0.9, 0.8, 0.7, 0.6]),
        "labels": torch.tensor([0, 0, 0, 0]),
    }
    metrics.update([pred], target)
    # ranked: TP (P 1, R 1/2), FP (P 1/2), ignored, FP (duplicate): all-point AP = 1 × 1/2
    assert metrics.compute() == {"mAP50": pytest.approx(50.0)}
    metrics.reset()
    metrics.update([{k: v[:1] for k, v in pred.items()}], target)
    assert metrics.compute()["mAP50"] == pytest.approx(50.0)
    report = metrics.report()
    assert report["metric"] == "voc12" and report["classes"] == ["oilwell"]


# --------------------------------------------------------------------------- GeoJSON


def test_predict_jpeg_in_pixel_coordinates(nepu, datasets: Path, tmp_path: Path) -> None:
    task = detection_task(nepu.info().to_dict(), patch=32, vis_score_thresh=0.0, box_score_thresh=0.0)
    image = datasets / "nepu_owod" / "JPEGImages" / "0_15.jpg"
    out = predict_files(task, [image], tmp_path)
    assert out.name == "0_15_boxes.geojson"
    fc = json.loads(out.read_text())
    assert fc["type"] == "FeatureCollection" and fc["name"] == "0_15"
    assert fc["coordinates"] == "pixel" and "crs" not in fc and "transform" not in fc
    assert fc["image_size"] == [768, 1024]
    assert fc["features"], "a random detector still returns low-score boxes"
    for f in fc["features"][:20]:
        x0, y0, x1, y1 = f["properties"]["bbox_px"]
        assert f["geometry"]["coordinates"][0] == [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]
        assert 0 <= x0 < x1 <= 768 and 0 <= y0 < y1 <= 1024
        assert f["properties"]["class"] == "oilwell" and f["properties"]["label"] == 0
    with pytest.raises(ConfigError, match="geojson"):
        predict_files(task, [image], tmp_path / "x.png")
