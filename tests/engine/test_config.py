from pathlib import Path

import pytest

from rsfm.cli import main
from rsfm.engine.config import load_config, parse_overrides
from rsfm.engine.module import build_method
from rsfm.optim import scaled_lr, warmup_cosine

REPO = Path(__file__).resolve().parents[2]
# masked-image recipes; the GeRSP ones are tested in tests/engine/test_gersp_pretrain.py
RECIPES = sorted(p for p in (REPO / "configs" / "pretrain").glob("*.yaml") if not p.stem.startswith("gersp"))


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_recipes_load_and_build(recipe: Path) -> None:
    cfg = load_config(recipe)
    opts = dict(cfg.model)
    name = opts.pop("name")
    model = build_method(name, img_size=64, **{**opts, "size": "tiny"})
    assert model.norm_pix_loss


def test_overrides_and_errors() -> None:
    recipe = REPO / "configs" / "pretrain" / "selective_mae_vit_tiny.yaml"
    cfg = load_config(recipe, ["trainer.max_epochs=3", "--data.batch_size", "16", "--model.rec_ratio=0.3"])
    assert cfg.trainer.max_epochs == 3 and cfg.data.batch_size == 16 and cfg.model.rec_ratio == 0.3
    with pytest.raises(ValueError, match="max_epoch"):
        load_config(recipe, ["trainer.max_epoch=3"])
    with pytest.raises(ValueError, match="batch_size"):
        load_config(recipe, ["data.batch_size=lots"])
    with pytest.raises(FileNotFoundError):
        load_config(REPO / "nope.yaml")
    with pytest.raises(ValueError, match="key=value"):
        parse_overrides(["trainer.max_epochs"])
    with pytest.raises(ValueError, match="model.mask_ration is not an option of mae"):
        build_method("mae", mask_ration=0.5)


def test_lr_rules() -> None:
    assert scaled_lr(1.5e-4, 4096) == pytest.approx(2.4e-3)  # MAE: 1.5e-4 x 4096 / 256
    assert scaled_lr(1.5e-4, 256, 0.25 / 0.85) == pytest.approx(1.5e-4 * 0.25 / 0.85)
    assert warmup_cosine(0, 10, 100) == 0 and warmup_cosine(5, 10, 100) == 0.5
    assert warmup_cosine(10, 10, 100) == 1 and warmup_cosine(100, 10, 100) == pytest.approx(0)
    assert warmup_cosine(55, 10, 100) == pytest.approx(0.5)


def test_cli_missing_data_folder_names_path_and_hint(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    missing = tmp_path / "no_such_folder"
    code = main(
        ["pretrain", "--config", str(REPO / "configs/pretrain/selective_mae_vit_tiny.yaml"), f"data.root={missing}"]
    )
    err = capsys.readouterr().err
    assert code == 2 and str(missing) in err and "data.root" in err and "torchgeo" in err
    assert len(err.strip().splitlines()) == 1


def test_cli_empty_data_folder(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code = main(
        [
            "pretrain",
            "--config",
            str(REPO / "configs/pretrain/selective_mae_vit_tiny.yaml"),
            f"data.root={tmp_path}",
            f"output_dir={tmp_path / 'runs'}",
        ]
    )
    assert code == 2 and str(tmp_path) in capsys.readouterr().err
