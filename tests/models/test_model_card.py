"""Model cards beside exports: the metadata fields, a real evaluation's table, the recipe, licences."""

from pathlib import Path

import pytest
import torch

from rsfm.models.encoders.vit import build_vit
from rsfm.models.export import export_encoder
from rsfm.models.model_card import model_card_path, parameter_count, render_model_card, write_model_card

META = {
    "arch": "vit", "size": "tiny", "img_size": 32, "patch_size": 16, "in_chans": 3, "mean": [0.38, 0.39, 0.35],
    "std": [0.21, 0.19, 0.18], "method": "mae", "data_root": "/data/aid", "test_fraction": 0.2, "split_seed": 7,
    "epochs": 3, "steps": 120,
}  # fmt: skip
CLASSES = ["Airport", "Beach", "Forest"]


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> tuple[Path, torch.nn.Module]:
    torch.manual_seed(0)
    enc = build_vit("tiny", img_size=32, patch_size=16)
    return export_encoder(enc, tmp_path_factory.mktemp("card") / "encoder.safetensors", META), enc


def test_export_writes_the_card_beside_the_file(export) -> None:
    path, enc = export
    card = model_card_path(path)
    assert card == path.parent / "encoder.md" and card.is_file()
    text = card.read_text(encoding="utf-8")
    n = sum(v.numel() for v in enc.state_dict().values())
    assert parameter_count(path) == n
    for line in (
        "# Model card: encoder.safetensors",
        "| architecture | ViT-tiny/16",
        f"| parameters | {n / 1e6:.1f} M ({n:,}) |",
        "| input | 3 bands, 32 × 32 px, patch 16 px |",
        "| ground sampling distance | not recorded |",
        "| normalisation | mean [0.38, 0.39, 0.35], std [0.21, 0.19, 0.18]",
        "| pretraining method | mae |",
        "| training length | 3 epochs, 120 optimiser steps |",
        "| timm name | `rsfm_vit_tiny_patch16` |",
        "- root: /data/aid",
        "- held out from pretraining: 0.2 of each class (split seed 7)",
        "- weights: not stated",
        "- training data: unknown",
        'timm.create_model("rsfm_vit_tiny_patch16", pretrained=True, pretrained_cfg_overlay=dict(file="encoder.safe',
        'ExportClassificationTask(model="rsfm_vit_tiny_patch16", weights="encoder.safetensors"',
        'backbone="tu-rsfm_vit_tiny_patch16"',
        'backbone="rsfm_vit", backbone_ckpt_path="encoder.safetensors"',
    ):
        assert line in text, line
    assert "## Evaluation" not in text and "## Recipe" not in text


def test_card_carries_a_real_evaluation_and_the_recipe(export, aid_subset, tmp_path: Path) -> None:
    from rsfm.engine.evaluate import evaluate

    path, _ = export
    root = aid_subset(CLASSES, 5)
    metrics = evaluate(
        str(path), str(root), protocols=["knn"], out_dir=str(tmp_path / "eval"), img_size=32, test_fraction=0.4,
        split_seed=0, batch_size=16, num_workers=0, k=3, device="cpu", verbose=False,
    )  # fmt: skip
    recipe = {"seed": 0, "model": {"class_path": "MAE", "init_args": {"size": "tiny"}}, "_private": "not shown"}
    card = write_model_card(path, META, metrics=metrics, recipe=recipe)
    text = card.read_text(encoding="utf-8")
    knn = metrics["protocols"]["knn"]
    row = f"| knn | {knn['OA']:.2f} | {knn['mean_class_accuracy']:.2f} | {knn['n']} | k=3, temperature=0.07 |"
    assert row in text
    assert f"Held-out split of {root}: 3 classes, 9 training / 6 held-out images." in text
    assert "## Recipe\n\n```yaml\nseed: 0\nmodel:\n  class_path: MAE\n" in text and "_private" not in text
    # the resolved recipe's own text wins when the recipe carries it
    text = render_model_card(META, recipe={"_yaml": "seed: 3  # as written\n", "seed": 3})
    assert "```yaml\nseed: 3  # as written\n```" in text


def test_card_of_a_converted_export_and_of_a_resnet(tmp_path: Path) -> None:
    meta = {
        "arch": "resnet50", "img_size": 224, "in_chans": 3, "method": "gersp", "gsd": 0.5,
        "converted_from": {"source": "gersp", "file": "GeRSP_resnet50.pth"}, "licence": "Apache-2.0",
        "data_licence": "CC BY-NC 4.0", "note": "kept",
    }  # fmt: skip
    text = render_model_card(meta, export_name="gersp.safetensors")
    for line in (
        "| architecture | ResNet (resnet50, timm; He et al. 2016)",
        "| parameters | unknown |",
        "| ground sampling distance | 0.5 m/pixel |",
        "- converted from: source: gersp; file: GeRSP_resnet50.pth",
        "- weights: Apache-2.0",
        "- training data: CC BY-NC 4.0",
        "- note: kept",
        "| timm name | `rsfm_resnet50` |",
        'ExportSemanticSegmentationTask(model="unet", backbone="tu-rsfm_resnet50", weights="gersp.safetensors"',
        'backbone="rsfm_resnet"',
    ):
        assert line in text, line
    assert "check it before you share" not in text  # the weights' licence is stated
    rvsa = render_model_card({**META, "arch": "vit_rvsa", "window_size": 7, "interval": 3})
    assert "rotated varied-size window attention" in rvsa and "timm name" not in rvsa
    assert "timm, torchgeo, TerraTorch: not available" in rvsa
    # written atomically beside the file, replacing the old card
    out = write_model_card(tmp_path / "gersp.safetensors", meta)
    assert out == tmp_path / "gersp.md" and [p.name for p in tmp_path.iterdir()] == ["gersp.md"]
