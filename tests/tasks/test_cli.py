"""``rsfm finetune``, ``rsfm test`` and ``rsfm predict`` on every fine-tuning recipe, on real data.

Each recipe is fine-tuned once per session by the ``finetuned`` fixture (tests/tasks/conftest.py):
small crops and heads, two training batches, one validation and one test image.
"""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from PIL import Image
from task_helpers import AID_CLASSES, RECIPES, SCENE, run_cli

from rsfm.engine.config import load_recipe

#: recipe → (evaluated head, its metrics); the first metric selects the checkpoint
HEADS = {
    "segmentation_dubai": ("segmentation", ["mIoU", "OA", "mF1"]),
    "segmentation_loveda": ("segmentation", ["mIoU", "OA", "mF1"]),
    "change_detection_levir": ("change", ["F1", "precision", "recall", "IoU", "OA"]),
    "detection_nepu": ("detection", ["mAP50"]),
    "classification_aid": ("classification", ["OA", "mean_class_accuracy"]),
    "rotated_detection_dota": ("rotated_detection", ["mAP50"]),
    "rotated_detection_hituav": ("rotated_detection", ["mAP50"]),
    "instance_segmentation_isaid": (
        "instance_segmentation",
        ["mask_mAP50", "mask_mAP50_95", "box_mAP50", "box_mAP50_95"],
    ),
}
NAMES = list(HEADS)
#: GPU recipes for a full published dataset (not in ../shared/datasets): loaded and checked, not run here
FULL_DATA = {"rotated_detection_dior_r": ("rotated_detection", "data/DIOR-R")}


def test_every_recipe_is_tested() -> None:
    assert sorted(p.stem for p in RECIPES.glob("*.yaml")) == sorted([*NAMES, *FULL_DATA])


@pytest.mark.parametrize("name", [*NAMES, *FULL_DATA])
def test_recipes_load_for_every_command(name: str) -> None:
    recipe = load_recipe("finetune", RECIPES / f"{name}.yaml", ["trainer.max_epochs=1"])
    assert recipe["trainer"]["max_epochs"] == 1
    head = HEADS[name][0] if name in HEADS else FULL_DATA[name][0]
    assert recipe["model"]["heads"][head]["class_path"].startswith("rsfm.models.heads.")
    root = FULL_DATA[name][1] if name in FULL_DATA else "../shared/datasets/"
    assert recipe["data"]["init_args"]["root"].startswith(root)
    # test and predict rebuild the model of the same recipe
    assert load_recipe("predict", RECIPES / f"{name}.yaml")["model"] == recipe["model"]


def test_a_misspelt_key_is_one_line_naming_it() -> None:
    recipe = str(RECIPES / "change_detection_levir.yaml")
    code, out, err = run_cli("finetune", "--config", recipe, "trainer.max_epoch=1")
    assert code == 2 and not out
    assert len(err.strip().splitlines()) == 1 and "trainer.max_epoch" in err


# --------------------------------------------------------------------------- rsfm finetune


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


@pytest.mark.parametrize("name", NAMES)
def test_finetune_writes_the_run_folder(name: str, finetuned) -> None:
    run = finetuned(name)
    head, metrics = HEADS[name]
    folder = run.folder
    for part in ("config.yaml", "checkpoints/best.ckpt", "checkpoints/last.ckpt", "logs/metrics.csv"):
        assert (folder / part).is_file(), part
    assert f"run folder: {folder}" in run.stdout and "test metrics (percent)" in run.stdout

    summary = read_json(folder / "metrics.json")
    assert summary["scale"] == "percent" and summary["checkpoint"] == str(run.best)
    assert set(summary["metrics"]) == {f"test/{m}" for m in metrics}
    assert all(0.0 <= v <= 100.0 for v in summary["metrics"].values()), summary["metrics"]
    assert summary["config"]["trainer"]["max_epochs"] == 1
    details = read_json(folder / "test" / "metrics.json")
    assert details["scale"] == "percent" and details["split"] == "test"
    assert details["metrics"] == pytest.approx(summary["metrics"])
    assert list(details["heads"]) == [head]  # an auxiliary head is trained, not scored
    scores = details["heads"][head].get("metrics", details["heads"][head])  # change nests its scores
    assert scores[metrics[0]] == pytest.approx(summary["metrics"][f"test/{metrics[0]}"], abs=1e-4)

    with open(folder / "logs" / "metrics.csv") as f:
        columns = set(next(csv.reader(f)))
    assert {f"val/{metrics[0]}", "train/loss", "train/lr"} <= columns
    if name.startswith("segmentation"):
        assert {"train/segmentation/ce", "train/auxiliary/ce"} <= columns
        assert not [c for c in columns if c.startswith(("val/auxiliary", "test/auxiliary"))]
    pictures = folder / "test" / "visualisations"
    assert [p.name for p in pictures.iterdir()] == [head]
    assert list((pictures / head).glob("*.png"))


def test_segmentation_scores_are_percent_of_the_confusion_matrix(finetuned) -> None:
    report = read_json(finetuned("segmentation_dubai").folder / "test" / "metrics.json")["heads"]["segmentation"]
    cm = torch.tensor(report["confusion_matrix"], dtype=torch.float64)
    assert cm.sum() == report["pixels"] and 0 < cm.sum() <= 682 * 658  # one Tile 3 image, less ignored pixels
    tp = cm.diagonal()
    union = cm.sum(0) + cm.sum(1) - tp
    assert report["mIoU"] == pytest.approx(100 * float((tp[union > 0] / union[union > 0]).mean()))
    assert report["OA"] == pytest.approx(100 * float(tp.sum() / cm.sum()))
    (png,) = (finetuned("segmentation_dubai").folder / "test" / "visualisations" / "segmentation").iterdir()
    assert png.name == "00_image_part_001.png"


def test_change_scores_are_percent_of_the_pixel_counts(finetuned) -> None:
    folder = finetuned("change_detection_levir").folder
    report = read_json(folder / "test" / "metrics.json")["heads"]["change"]
    c = report["counts"]
    assert c["TP"] + c["FP"] + c["FN"] + c["TN"] == 256 * 256 and report["pairs"] == 1
    assert report["metrics"]["OA"] == pytest.approx(100 * (c["TP"] + c["TN"]) / (256 * 256))
    if c["TP"]:
        assert report["metrics"]["F1"] == pytest.approx(100 * 2 * c["TP"] / (2 * c["TP"] + c["FP"] + c["FN"]))
    assert set(report["per_class"]) == {"no_change", "change"}
    (png,) = (folder / "test" / "visualisations" / "change").iterdir()
    assert np.asarray(Image.open(png)).shape == (256, 4 * 256 + 3 * 4, 3)  # before | after | truth | prediction


def test_classification_tests_the_held_out_images(finetuned) -> None:
    run = finetuned("classification_aid")
    tested = read_json(run.folder / "metrics.json")["metrics"]
    report = read_json(run.folder / "test" / "metrics.json")["heads"]["classification"]
    cm = torch.tensor(report["confusion"])
    assert cm.sum() == 12 and cm.sum(1).tolist() == [4, 4, 4]  # the 4 held-out images of each class
    assert tested["test/OA"] == pytest.approx(100 * cm.trace().item() / 12, abs=1e-4)
    assert list(report["per_class"]) == AID_CLASSES
    assert (run.folder / "test" / "visualisations" / "classification" / "predictions.png").is_file()


def test_detection_report_counts_the_test_objects(finetuned) -> None:
    report = read_json(finetuned("detection_nepu").folder / "test" / "metrics.json")["heads"]["detection"]
    assert report["metric"] == "voc12" and report["classes"] == ["oilwell"]
    assert 0.0 <= report["mAP50"] <= 100.0


# --------------------------------------------------------------------------- rsfm test


@pytest.mark.parametrize("name", NAMES)
def test_test_command_reproduces_the_finetune_scores(name: str, finetuned) -> None:
    run = finetuned(name)
    code, out, err = run.cli("test", "--checkpoint", str(run.best), f"run_name={name}-test")
    assert code == 0, err
    assert "test metrics (percent)" in out
    folder = run.folder.parent / f"{name}-test"
    summary = read_json(folder / "metrics.json")
    assert summary["checkpoint"] == str(run.best)
    assert summary["metrics"] == pytest.approx(read_json(run.folder / "metrics.json")["metrics"], abs=1e-4)
    assert (folder / "test" / "metrics.json").is_file()
    assert list((folder / "test" / "visualisations").rglob("*.png"))


def test_test_in_the_training_folder_keeps_the_training_logs(finetuned, tmp_path: Path) -> None:
    run = finetuned("change_detection_levir")
    copy = tmp_path / "copy"
    shutil.copytree(run.folder, copy)  # the session's run stays as the other tests expect it
    log = copy / "logs" / "metrics.csv"
    history = log.read_bytes()
    assert b"train/loss" in history
    code, _, err = run.cli("test", "--checkpoint", str(copy / "checkpoints" / "best.ckpt"),
                           f"output_dir={tmp_path}", "run_name=copy")  # fmt: skip
    assert code == 0, err
    assert log.read_bytes() == history
    assert not list((copy / "checkpoints").glob("*.tmp")) and (copy / "test" / "metrics.json").is_file()


def test_export_refuses_a_fine_tuning_checkpoint(finetuned, tmp_path: Path) -> None:
    run = finetuned("change_detection_levir")
    code, _, err = run_cli("export", "--checkpoint", str(run.best), "--out", str(tmp_path / "e.safetensors"))
    assert code == 2 and "is a fine-tuning checkpoint" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "e.safetensors").exists()


def test_test_with_a_checkpoint_that_does_not_fit_is_one_line(finetuned) -> None:
    run = finetuned("change_detection_levir")
    # concatenation adds fusion layers the checkpoint does not have
    code, out, err = run.cli("test", "--checkpoint", str(run.best), "model.heads.change.fusion=concat")
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    message = re.search(r"error: (.*) \(RSFM_DEBUG=1", lines[0]).group(1)
    assert str(run.best) in message and len(message) < 400, message
    counts = re.search(r"(\d+) missing \(([^)]*)\)", message)
    assert counts is not None and int(counts.group(1)) > 3, message
    names = [n for n in counts.group(2).split(", ") if not n.startswith("…")]
    assert len(names) == 3 and all(".fuse." in n for n in names)
    assert f"… {int(counts.group(1)) - 3} more" in counts.group(2)
    code, _, err = run.cli("test", "--checkpoint", str(run.folder / "missing.ckpt"))
    assert code == 2 and "checkpoint not found" in err
    code, _, err = run.cli("test", "--checkpoint", str(run.folder / "checkpoints"))
    assert code == 2 and "checkpoints is a folder, not a checkpoint file (it holds best.ckpt" in err, err


def test_a_pretraining_checkpoint_is_sent_to_rsfm_export(finetuned, tmp_path: Path) -> None:
    run = finetuned("segmentation_dubai")
    state = torch.load(run.best, map_location="cpu", weights_only=True)
    # the hyper-parameters a pretraining run stores: its method, not an encoder with heads
    state["hyper_parameters"]["model"] = {"class_path": "rsfm.methods.selective_mae.SelectiveMAE", "init_args": {}}
    torch.save(state, tmp_path / "pretrain.ckpt")
    code, _, err = run.cli("test", "--checkpoint", str(tmp_path / "pretrain.ckpt"))
    assert code == 2 and "pretrain.ckpt is a pretraining checkpoint (SelectiveMAE)" in err and "rsfm export" in err


# --------------------------------------------------------------------------- rsfm predict


def predict(run, *inputs: Path | str, output: Path, extra: tuple[str, ...] = ()) -> tuple[int, str, str]:
    joined = ",".join(str(p) for p in inputs)
    return run.cli("predict", "--checkpoint", str(run.best), "--input", joined, "--output", str(output), *extra)


def test_predict_segmentation_geotiff_keeps_crs_and_transform(finetuned, datasets: Path, tmp_path: Path) -> None:
    run = finetuned("segmentation_dubai")
    scene = datasets / SCENE
    code, out, err = predict(run, scene, output=tmp_path / "mask.tif")
    assert code == 0, err
    assert f"prediction written to {tmp_path / 'mask.tif'}" in out
    with rasterio.open(scene) as src, rasterio.open(tmp_path / "mask.tif") as dst:
        assert dst.crs == src.crs and dst.transform == src.transform
        assert (dst.height, dst.width, dst.count, dst.dtypes[0]) == (src.height, src.width, 1, "uint8")
        assert dst.nodata == 255
        mask = dst.read(1)
        nodata = src.dataset_mask() == 0
    assert nodata.any() and (mask[nodata] == 255).all()  # nodata borders stay nodata
    assert mask[~nodata].max() < 6
    code, _, err = predict(run, scene, output=tmp_path / "mask.png")
    assert code == 2 and "georeferenced" in err and len(err.strip().splitlines()) == 1


def test_test_and_predict_normalise_as_the_checkpoint_was_trained(finetuned, datasets: Path, tmp_path: Path) -> None:
    """A model fine-tuned from an export normalises with the export's statistics, which the recipe lacks."""
    from rsfm.models.encoders.vit import build_vit
    from rsfm.models.export import export_encoder

    base = finetuned("segmentation_dubai")
    mean, std = [0.3, 0.35, 0.4], [0.1, 0.12, 0.14]  # not Dubai's
    meta = {"arch": "vit", "size": "tiny", "img_size": 64, "patch_size": 32, "in_chans": 3, "mean": mean, "std": std}
    export = export_encoder(build_vit("tiny", img_size=64, patch_size=32), tmp_path / "vit.safetensors", meta)
    overrides = [*base.overrides, f"output_dir={tmp_path}", "run_name=from_export"]
    code, _, err = run_cli("finetune", "--config", str(base.recipe), *overrides, f"model.encoder.weights={export}")
    assert code == 0, err
    best = tmp_path / "from_export" / "checkpoints" / "best.ckpt"
    stored = torch.load(best, map_location="cpu", weights_only=True)["rsfm_normalisation"]
    assert stored["mean"] == pytest.approx(mean) and stored["std"] == pytest.approx(std)
    scene, masks = datasets / SCENE, {}
    for name, extra in (("recipe_only", []), ("with_export", [f"model.encoder.weights={export}"])):
        argv = ["--checkpoint", str(best), "--input", str(scene), "--output", str(tmp_path / f"{name}.tif")]
        code, out, err = run_cli("predict", "--config", str(base.recipe), *overrides, *extra, *argv)
        assert code == 0, err
        assert ("normalising inputs as" in out) == (name == "recipe_only"), out
        with rasterio.open(tmp_path / f"{name}.tif") as f:
            masks[name] = f.read(1)
    assert np.array_equal(masks["recipe_only"], masks["with_export"])


def test_predict_segmentation_plain_image_to_a_folder(finetuned, datasets: Path, tmp_path: Path) -> None:
    run = finetuned("segmentation_loveda")
    image = datasets / "levir_cd" / "A" / "test_2_0000_0000.png"  # any RGB image
    code, _, err = predict(run, image, output=tmp_path)
    assert code == 0, err
    img = Image.open(tmp_path / "test_2_0000_0000_mask.png")
    assert img.mode == "P" and img.size == (256, 256) and np.asarray(img).max() < 7
    code, _, err = predict(run, image, output=f"{tmp_path / 'preds'}/")  # a new folder, as the README writes it
    assert code == 0, err
    assert (tmp_path / "preds" / "test_2_0000_0000_mask.png").is_file()


def test_predict_change_geotiff_pair_keeps_crs_and_transform(finetuned, datasets: Path, tmp_path: Path) -> None:
    run = finetuned("change_detection_levir")
    scene = datasets / SCENE
    code, _, err = predict(run, scene, scene, output=tmp_path / "change.tif")
    assert code == 0, err
    with rasterio.open(scene) as src, rasterio.open(tmp_path / "change.tif") as dst:
        assert dst.crs == src.crs and dst.transform == src.transform
        assert (dst.height, dst.width, dst.dtypes[0]) == (src.height, src.width, "uint8")
        values = np.unique(dst.read(1))
    # identical dates: |f_a - f_b| = 0 at every level, so one answer everywhere
    assert len(values) == 1 and set(values.tolist()) <= {0, 255}
    code, _, err = predict(run, scene, output=tmp_path / "x.tif")
    assert code == 2 and "takes 2 image" in err


def test_predict_detection_geojson_in_map_coordinates(finetuned, datasets: Path, tmp_path: Path) -> None:
    run = finetuned("detection_nepu")
    scene = datasets / SCENE
    low = ("model.heads.detection.box_score_thresh=0.0", "model.heads.detection.vis_score_thresh=0.0")
    code, _, err = predict(run, scene, output=tmp_path / "boxes.geojson", extra=low)
    assert code == 0, err
    fc = read_json(tmp_path / "boxes.geojson")
    with rasterio.open(scene) as ds:
        transform, crs = ds.transform, ds.crs
    assert fc["type"] == "FeatureCollection" and fc["coordinates"] == "map"
    assert fc["crs"]["properties"]["name"] == crs.to_string()
    assert fc["transform"] == pytest.approx(list(transform)[:6])
    assert fc["features"], "a barely trained detector still returns low-score boxes"
    for f in fc["features"][:20]:
        x0, y0, x1, y1 = f["properties"]["bbox_px"]
        ring = f["geometry"]["coordinates"][0]
        expect = [transform @ xy for xy in [(x0, y0), (x1, y0), (x1, y1), (x0, y1), (x0, y0)]]
        assert [v for xy in ring for v in xy] == pytest.approx([v for xy in expect for v in xy])
        assert 0 <= x0 < x1 <= 791 and 0 <= y0 < y1 <= 718
        assert f["properties"]["class"] == "oilwell"


def test_predict_rotated_geojson_in_map_coordinates_and_task1(finetuned, datasets: Path, tmp_path: Path) -> None:
    run = finetuned("rotated_detection_dota")
    scene = datasets / SCENE
    low = ("model.heads.rotated_detection.score_threshold=0.0", "model.heads.rotated_detection.vis_score_thresh=0.0")
    code, _, err = predict(run, scene, output=tmp_path / "obbs.geojson", extra=low)
    assert code == 0, err
    fc = read_json(tmp_path / "obbs.geojson")
    with rasterio.open(scene) as ds:
        transform, crs = ds.transform, ds.crs
    assert fc["type"] == "FeatureCollection" and fc["coordinates"] == "map"
    assert fc["crs"]["properties"]["name"] == crs.to_string() and fc["image_size"] == [791, 718]
    assert fc["transform"] == pytest.approx(list(transform)[:6])
    assert fc["features"], "a barely trained detector still returns low-score boxes"
    for f in fc["features"][:20]:
        poly = f["properties"]["polygon_px"]
        corners = list(zip(poly[0::2], poly[1::2], strict=True))
        ring = f["geometry"]["coordinates"][0]
        expect = [transform @ xy for xy in [*corners, corners[0]]]
        assert [v for xy in ring for v in xy] == pytest.approx([v for xy in expect for v in xy])
        cx, cy, w, h, theta = f["properties"]["obb_px"]
        assert 0 <= cx <= 791 and 0 <= cy <= 718 and w >= h > 0 and -np.pi / 2 <= theta < np.pi / 2  # le90
        assert crs.is_projected and ring[0][0] > 1e5  # UTM metres, not pixels
    task1 = tmp_path / "task1"
    files = sorted(p.name for p in task1.glob("Task1_*.txt"))
    assert len(files) == 15 and "Task1_small-vehicle.txt" in files  # one per DOTA v1.0 class
    lines = [ln.split() for p in task1.glob("Task1_*.txt") for ln in p.read_text().splitlines()]
    assert len(lines) == len(fc["features"]) and {ln[0] for ln in lines} == {"RGB.byte"}
    assert all(len(ln) == 10 for ln in lines)


def test_predict_classification_writes_the_label(finetuned, tmp_path: Path) -> None:
    run = finetuned("classification_aid")
    image = sorted((run.extra["root"] / "Beach").iterdir())[0]
    code, _, err = predict(run, image, output=tmp_path / "label.json")
    assert code == 0, err
    label = read_json(tmp_path / "label.json")
    assert label["class"] in AID_CLASSES and label["class"] == AID_CLASSES[label["label"]]
    # the checkpoint describes its data: predicting needs no training set on disk
    argv = ["--checkpoint", str(run.best), "--input", str(image), "--output", str(tmp_path / "elsewhere.json")]
    code, _, err = run.cli("predict", f"data.root={tmp_path / 'not_here'}", *argv)
    assert code == 0, err
    assert read_json(tmp_path / "elsewhere.json") == label
    assert list(label["probabilities"]) == AID_CLASSES
    assert sum(label["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    code, _, err = predict(run, tmp_path / "none.jpg", output=tmp_path / "x.json")
    assert code == 2 and "file not found" in err
    (tmp_path / "notes.jpg").write_text("not an image")  # unreadable: one line, not a traceback
    code, _, err = predict(run, tmp_path / "notes.jpg", output=tmp_path / "x.json")
    assert code == 2 and "notes.jpg: content is not a recognised image format" in err, err
    assert len(err.strip().splitlines()) == 1
