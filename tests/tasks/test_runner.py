"""The downstream runner and the `rsfm finetune|test|predict` commands, on real LEVIR-CD pairs."""

import json
from pathlib import Path

import pytest
from PIL import Image

from rsfm.cli import main
from rsfm.tasks.runner import load_task_config

REPO = Path(__file__).resolve().parents[2]
RECIPES = sorted((REPO / "configs" / "finetune").glob("*.yaml"))


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_recipes_load(recipe: Path) -> None:
    cfg = load_task_config(recipe, ["trainer.max_epochs=1"])
    assert cfg["trainer"]["max_epochs"] == 1 and cfg["task"] in recipe.stem


def test_config_errors_name_the_field(tmp_path: Path) -> None:
    recipe = REPO / "configs" / "finetune" / "change_detection_levir.yaml"
    with pytest.raises(ValueError, match="trainer.max_epoch"):
        load_task_config(recipe, ["trainer.max_epoch=1"])
    with pytest.raises(ValueError, match="unknown section 'optimiser'"):
        load_task_config(recipe, ["optimiser.lr=1"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("task: panoptic\n")
    with pytest.raises(ValueError, match="task must be one of"):
        load_task_config(bad)
    with pytest.raises(FileNotFoundError):
        load_task_config(tmp_path / "none.yaml")


def test_cli_finetune_test_predict(tmp_path: Path, datasets: Path, one_thread: None, capsys) -> None:
    recipe = str(REPO / "configs" / "finetune" / "change_detection_levir.yaml")
    common = [f"data.root={datasets / 'levir_cd'}", f"output_dir={tmp_path}", "run_name=cd", "data.num_workers=0"]
    fast = ["trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.enable_progress_bar=false"]
    assert main(["finetune", "--config", recipe, *common, *fast]) == 0
    run = tmp_path / "cd"
    metrics = json.loads((run / "metrics.json").read_text())
    assert {"test/F1", "test/IoU", "test/precision", "test/recall", "test/OA"} <= set(metrics["metrics"])
    assert list((run / "test").rglob("*.png"))
    ckpt = run / "checkpoints" / "best.ckpt"
    assert ckpt.is_file()
    assert main(["test", "--config", recipe, "--checkpoint", str(ckpt), *common]) == 0
    pair = sorted((datasets / "levir_cd" / "A").glob("*.png"))[0].name
    out = tmp_path / "change.png"
    before, after = datasets / "levir_cd" / "A" / pair, datasets / "levir_cd" / "B" / pair
    assert (
        main(
            [
                "predict",
                "--config",
                recipe,
                "--checkpoint",
                str(ckpt),
                "--input",
                f"{before},{after}",
                "--output",
                str(out),
                *common,
            ]
        )
        == 0
    )
    assert Image.open(out).size == Image.open(before).size
    assert main(["test", "--config", recipe, "--checkpoint", str(tmp_path / "missing.ckpt"), *common]) == 2
    assert "checkpoint not found" in capsys.readouterr().err


def test_encoder_normalisation_prefers_the_export(tmp_path: Path) -> None:
    from rsfm.models.export import export_encoder
    from rsfm.models.encoders.vit import build_vit
    from rsfm.tasks.recipe import encoder_normalisation

    path = tmp_path / "enc.safetensors"
    meta = {"arch": "vit", "size": "tiny", "img_size": 32, "patch_size": 8, "in_chans": 3}
    export_encoder(build_vit("tiny", img_size=32, patch_size=8), path, {**meta, "mean": [0.1] * 3, "std": [0.2] * 3})
    data = {"mean": [0.5] * 3, "std": [0.5] * 3}
    assert encoder_normalisation({}, data) is None and data["mean"] == [0.5] * 3
    assert encoder_normalisation({"encoder": str(path)}, data)["patch_size"] == 8
    assert data == {"mean": [0.1] * 3, "std": [0.2] * 3}
    no_stats = tmp_path / "plain.safetensors"
    export_encoder(build_vit("tiny", img_size=32, patch_size=8), no_stats, meta)
    data = {"mean": [0.5] * 3, "std": [0.5] * 3}
    encoder_normalisation({"encoder": str(no_stats)}, data)
    assert data == {"mean": [0.5] * 3, "std": [0.5] * 3}
