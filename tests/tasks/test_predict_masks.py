"""``rsfm predict`` for instance segmentation: outlines as GeoJSON, an instance-id raster and its id table.

A small Mask R-CNN task (ViT-Tiny, patch 32, the simple pyramid) predicts a real iSAID scene
end to end; with the head's ``detect`` replaced by known masks, the written polygons, ids and
georeference are checked exactly on a real GeoTIFF and a real PNG.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from PIL import Image
from rasterio.features import rasterize
from shapely.geometry import shape
from task_helpers import SCENE

from rsfm.data.base import DataInfo
from rsfm.data.instance import ISAID_CLASSES
from rsfm.models.heads.instance_segmentation import MaskRCNNHead
from rsfm.tasks.module import DownstreamTask
from rsfm.tasks.predict import predict_files
from rsfm.utils.errors import ConfigError

#: a small, fast Mask R-CNN (as tests/tasks/test_instance_segmentation.py)
SMALL = {
    "fpn_channels": 16,
    "fc_channels": 32,
    "mask_channels": 16,
    "box_batch_size_per_image": 16,
    "rpn_post_nms_top_n_test": 50,
    "detections_per_tile": 10,
    "tile": 640,
    "overlap": 64,
    "max_detections": 10,
    "box_score_thresh": 0.0,
}
ISAID_SCENE = "isaid_dota/train/images/P0005.png"  # 884 wide, 977 high


@pytest.fixture(scope="module")
def task() -> DownstreamTask:
    torch.manual_seed(0)
    info = DataInfo(classes=list(ISAID_CLASSES), sample_keys=("image", "boxes", "labels", "masks"))
    model = {
        "encoder": {"class_path": "ViT", "init_args": {"size": "tiny", "img_size": 64, "patch_size": 32}},
        "neck": {"class_path": "SimpleFeaturePyramid"},
        "heads": {"instance_segmentation": {"class_path": "MaskRCNNHead", "init_args": SMALL}},
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return DownstreamTask(model=model, optim={"lr": 1e-4}, data=info.to_dict(), num_visualisations=0)


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def test_real_mask_rcnn_predicts_an_isaid_scene(
    task: DownstreamTask, datasets: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    head = task.heads["instance_segmentation"]
    assert isinstance(head, MaskRCNNHead) and head.output_kind == "masks"
    monkeypatch.setattr(head, "vis_score_thresh", 0.0)  # an untrained head: keep its low scores
    written = predict_files(task, [datasets / ISAID_SCENE], tmp_path)
    assert written == tmp_path / "P0005_masks.geojson"
    fc = read_json(written)
    assert fc["type"] == "FeatureCollection" and fc["coordinates"] == "pixel" and "crs" not in fc
    assert fc["image_size"] == [884, 977] and fc["id_raster"] == "P0005_masks_ids.png"
    features = fc["features"]
    assert 0 < len(features) <= SMALL["max_detections"], "an untrained head still returns low-score instances"
    ids = np.asarray(Image.open(tmp_path / "P0005_masks_ids.png"))
    assert ids.shape == (977, 884) and ids.dtype in (np.uint16, np.int32)  # 16-bit grey PNG
    assert set(np.unique(ids).tolist()) <= set(range(len(features) + 1))
    table = read_json(tmp_path / "P0005_masks_ids.json")["ids"]
    assert list(table) == [str(i) for i in range(1, len(features) + 1)]
    scores = [f["properties"]["score"] for f in features]
    assert scores == sorted(scores, reverse=True)
    for n, f in enumerate(features, start=1):
        p = f["properties"]
        assert p["id"] == n and p["class"] == ISAID_CLASSES[p["label"]]
        assert table[str(n)] == {"class": p["class"], "label": p["label"], "score": p["score"]}
        geom = shape(f["geometry"])
        assert geom.is_valid and geom.area == pytest.approx(p["area_px"])
        # the outline lies inside the instance's box (the pasted mask never leaves it by more than a pixel)
        x0, y0, x1, y1 = p["bbox_px"]
        bx0, by0, bx1, by1 = geom.bounds
        assert bx0 >= np.floor(x0) - 1 and by0 >= np.floor(y0) - 1 and bx1 <= np.ceil(x1) + 1 and by1 <= np.ceil(y1) + 1
        # each id's pixels are a part of its mask: the best-scoring instance keeps all of them
        assert (ids == n).sum() <= p["area_px"]
    assert (ids == 1).sum() == features[0]["properties"]["area_px"]


# --------------------------------------------------------------------------- known masks


def known_instances(height: int, width: int) -> tuple[dict[str, torch.Tensor], list[int]]:
    """Five instances, not in score order: the expected ids' source indices (by score, ≥ 0.5, non-empty)."""
    masks = torch.zeros(5, height, width, dtype=torch.bool)
    masks[0, 100:160, 200:300] = True  # 0.6: a ring overlapping instance 1, with a 20 × 20 hole
    masks[0, 120:140, 240:260] = False
    masks[1, 90:130, 180:230] = True  # 0.9: a rectangle
    masks[2, 300:320, 50:70] = True  # 0.7: two separate blobs (a MultiPolygon)
    masks[2, 400:405, 600:640] = True
    masks[3, 10:20, 10:20] = True  # 0.3: below vis_score_thresh
    # instance 4 (0.8): an empty mask, left out
    det = {
        "boxes": torch.tensor(
            [[200, 100, 300, 160], [180, 90, 230, 130], [50, 300, 640, 405], [10, 10, 20, 20], [5, 5, 6, 6]],
            dtype=torch.float32,
        ),
        "scores": torch.tensor([0.6, 0.9, 0.7, 0.3, 0.8]),
        "labels": torch.tensor([0, 8, 1, 2, 3]),
        "masks": masks,
    }
    return det, [1, 2, 0]


@pytest.fixture
def known_detect(task: DownstreamTask, monkeypatch: pytest.MonkeyPatch):
    """Replace the head's ``detect`` by :func:`known_instances` (thresholded as the real one); returns the calls."""
    head = task.heads["instance_segmentation"]
    monkeypatch.setattr(head, "vis_score_thresh", 0.5)
    calls: list[dict] = []

    def detect(model, image, score_thresh=None):
        calls.append({"shape": tuple(image.shape), "score_thresh": score_thresh})
        det, _ = known_instances(int(image.shape[-2]), int(image.shape[-1]))
        keep = det["scores"] >= score_thresh if score_thresh is not None else slice(None)
        return {k: v[keep] for k, v in det.items()}

    monkeypatch.setattr(head, "detect", detect)
    return calls


def expected_ids(det: dict[str, torch.Tensor], order: list[int]) -> np.ndarray:
    ids = np.zeros(det["masks"].shape[1:], dtype=np.uint16)
    for n, i in enumerate(order, start=1):  # by decreasing score: earlier ids keep overlapping pixels
        m = det["masks"][i].numpy()
        ids[m & (ids == 0)] = n
    return ids


def test_known_masks_on_a_geotiff_keep_crs_and_transform(
    task: DownstreamTask, known_detect: list, datasets: Path, tmp_path: Path
) -> None:
    scene = datasets / SCENE
    written = predict_files(task, [scene], tmp_path / "instances.geojson")
    assert known_detect == [{"shape": (3, 718, 791), "score_thresh": 0.5}]  # the boxes writer's threshold
    with rasterio.open(scene) as src:
        crs, transform = src.crs, src.transform
    fc = read_json(written)
    assert fc["coordinates"] == "map" and fc["crs"]["properties"]["name"] == crs.to_string()
    assert fc["transform"] == pytest.approx(list(transform)[:6]) and fc["id_raster"] == "instances_ids.tif"
    det, order = known_instances(718, 791)
    features = fc["features"]
    assert [f["id"] for f in features] == [1, 2, 3]
    assert [f["properties"]["score"] for f in features] == pytest.approx([0.9, 0.7, 0.6])
    assert [f["properties"]["class"] for f in features] == ["Small_Vehicle", "storage_tank", "ship"]
    pixel_area = abs(transform.a * transform.e - transform.b * transform.d)
    for f, i in zip(features, order, strict=True):
        mask = det["masks"][i].numpy()
        geom = shape(f["geometry"])
        assert geom.is_valid and f["properties"]["area_px"] == mask.sum()
        assert geom.area == pytest.approx(mask.sum() * pixel_area, rel=1e-9)
        assert f["properties"]["bbox_px"] == det["boxes"][i].tolist()
        # burnt back through the input's transform, the outline is exactly the mask
        burnt = rasterize([f["geometry"]], out_shape=mask.shape, transform=transform, dtype="uint8")
        np.testing.assert_array_equal(burnt.astype(bool), mask)
        assert crs.is_projected and geom.bounds[0] > 1e5  # UTM metres, not pixels
    assert [f["geometry"]["type"] for f in features] == ["Polygon", "MultiPolygon", "Polygon"]
    assert len(features[1]["geometry"]["coordinates"]) == 2  # two blobs
    assert len(features[2]["geometry"]["coordinates"]) == 2  # outer ring and the hole

    with rasterio.open(tmp_path / "instances_ids.tif") as dst:
        assert dst.crs == crs and dst.transform == transform
        assert (dst.height, dst.width, dst.count, dst.dtypes[0]) == (718, 791, 1, "uint16")
        ids = dst.read(1)
    np.testing.assert_array_equal(ids, expected_ids(det, order))
    assert (ids == 3).sum() < det["masks"][0].sum()  # the 0.6 ring lost its overlap with the 0.9 rectangle
    table = read_json(tmp_path / "instances_ids.json")
    assert table["raster"] == "instances_ids.tif" and table["background"] == 0
    assert table["ids"] == {
        "1": {"class": "Small_Vehicle", "label": 8, "score": pytest.approx(0.9)},
        "2": {"class": "storage_tank", "label": 1, "score": pytest.approx(0.7)},
        "3": {"class": "ship", "label": 0, "score": pytest.approx(0.6)},
    }


def test_known_masks_on_a_png_are_in_pixels(task: DownstreamTask, known_detect: list, datasets: Path, tmp_path: Path):
    written = predict_files(task, [datasets / ISAID_SCENE], tmp_path / "p5.json")
    assert written == tmp_path / "p5.json"
    fc = read_json(written)
    assert fc["coordinates"] == "pixel" and "crs" not in fc and "transform" not in fc
    det, order = known_instances(977, 884)
    for f, i in zip(fc["features"], order, strict=True):
        mask = det["masks"][i].numpy()
        assert shape(f["geometry"]).area == mask.sum()  # pixel edges: one unit square per pixel
        burnt = rasterize([f["geometry"]], out_shape=mask.shape, dtype="uint8")  # identity: pixel coordinates
        np.testing.assert_array_equal(burnt.astype(bool), mask)
    rect = fc["features"][0]["geometry"]["coordinates"][0]
    assert {tuple(xy) for xy in rect} == {(180.0, 90.0), (230.0, 90.0), (230.0, 130.0), (180.0, 130.0)}
    png = Image.open(tmp_path / "p5_ids.png")
    assert png.size == (884, 977) and png.mode.startswith("I")  # 16-bit grey
    np.testing.assert_array_equal(np.asarray(png).astype(np.uint16), expected_ids(det, order))
    assert set(read_json(tmp_path / "p5_ids.json")["ids"]) == {"1", "2", "3"}


def test_masks_output_must_be_geojson(task: DownstreamTask, known_detect: list, datasets: Path, tmp_path: Path):
    with pytest.raises(ConfigError, match=r"must end in \.geojson, \.json"):
        predict_files(task, [datasets / SCENE], tmp_path / "masks.tif")
    assert known_detect == [] and not list(tmp_path.iterdir())
