"""Multispectral input end to end: a 13-band change-detection run and a 4-band segmentation run."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
from PIL import Image

from rsfm.cli import main
from rsfm.data.segmentation import DUBAI_COLOURS
from rsfm.engine.checkpoint import load_checkpoint
from rsfm.utils.files import read_json

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "data"))
from test_change_layouts import build_oscd  # noqa: E402


def test_oscd_thirteen_band_change_detection_trains_and_tests(tmp_path: Path, datasets: Path, capsys) -> None:
    root = build_oscd(datasets / "levir_cd", tmp_path / "oscd")
    argv = [
        "finetune", "--config", str(REPO / "configs" / "finetune" / "change_detection_levir.yaml"),
        f"output_dir={tmp_path}", "run_name=oscd", "data.class_path=OSCDDataModule", f"data.init_args.root={root}",
        "data.init_args.crop_size=64", "data.init_args.batch_size=2", "model.encoder.init_args.img_size=64",
        "model.heads.change.init_args.channels=16", "trainer.max_epochs=1", "trainer.limit_train_batches=2",
        "trainer.enable_progress_bar=false", "trainer.accelerator=cpu",
    ]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err[-2000:]
    run = tmp_path / "oscd"
    hparams = load_checkpoint(run / "checkpoints" / "last.ckpt")["hyper_parameters"]
    assert hparams["data"]["num_channels"] == 13 and len(hparams["data"]["mean"]) == 13
    weights = load_checkpoint(run / "checkpoints" / "last.ckpt")["state_dict"]
    assert weights["model.encoder.model.patch_embed.proj.weight"].shape[1] == 13
    metrics = read_json(run / "metrics.json")["metrics"]
    assert 0 <= metrics["test/F1"] <= 100


def _four_band_dubai(dubai: Path, root: Path) -> Path:
    """Dubai tiles 1-3 (a few images each) as 4-band GeoTIFFs (R, G, B and a band derived from them)."""
    for tile in (1, 2, 3):
        images = root / f"tile{tile}" / "images"
        masks = root / f"tile{tile}" / "masks"
        images.mkdir(parents=True)
        masks.mkdir(parents=True)
        for src in sorted((dubai / f"Tile {tile}" / "images").glob("*.jpg"))[:2]:
            rgb = np.asarray(Image.open(src).convert("RGB"))[:128, :128].transpose(2, 0, 1)
            nir = (rgb.astype(np.uint16).sum(0) // 3).astype(np.uint8)[None]
            profile = {"driver": "GTiff", "width": 128, "height": 128, "count": 4, "dtype": "uint8"}
            with rasterio.open(images / f"{src.stem}.tif", "w", **profile) as dst:
                dst.write(np.concatenate([rgb, nir]))
            colour = np.asarray(Image.open(dubai / f"Tile {tile}" / "masks" / f"{src.stem}.png").convert("RGB"))[
                :128, :128
            ]
            labels, _ = DUBAI_COLOURS.to_labels(colour)
            Image.fromarray(labels.astype(np.uint8)).save(masks / f"{src.stem}.png")
    return root


@pytest.mark.parametrize("pretrained", [False, True])
def test_four_band_segmentation_with_an_rgb_export_adapted(
    pretrained: bool, tmp_path: Path, datasets: Path, capsys
) -> None:
    root = _four_band_dubai(datasets / "dubai_seg", tmp_path / "data")
    extra = []
    if pretrained:  # an RGB encoder (random weights exported as rsfm does) loads into 4 bands
        import torch

        from rsfm.models.encoders import build_vit
        from rsfm.models.export import export_encoder

        torch.manual_seed(0)
        vit = build_vit("tiny", img_size=64, patch_size=16)
        meta = {"arch": "vit", "size": "tiny", "img_size": 64, "patch_size": 16, "in_chans": 3}
        export_encoder(vit, tmp_path / "rgb.safetensors", meta)
        extra.append(f"model.encoder.init_args.weights={tmp_path / 'rgb.safetensors'}")
    argv = [
        "finetune", "--config", str(REPO / "configs" / "finetune" / "segmentation_dubai.yaml"),
        f"output_dir={tmp_path}", "run_name=ms", "data.class_path=SegmentationFolderDataModule",
        f"data.init_args.root={root}", "data.init_args.train_split=tile1", "data.init_args.val_split=tile2",
        "data.init_args.test_split=tile3", f"data.init_args.classes={list(DUBAI_COLOURS.names)}",
        "data.init_args.bands=[0, 1, 2, 3]", "data.init_args.mean=[0.5, 0.5, 0.5, 0.5]",
        "data.init_args.std=[0.25, 0.25, 0.25, 0.25]", "data.init_args.crop_size=64", "data.init_args.batch_size=2",
        "model.encoder.init_args.img_size=64", "model.heads.segmentation.init_args.channels=16",
        "model.heads.segmentation.init_args.stride=64",
        "model.heads.auxiliary.init_args.channels=8", "trainer.max_epochs=1", "trainer.limit_train_batches=2",
        "trainer.enable_progress_bar=false", "trainer.accelerator=cpu", *extra,
    ]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err[-2000:]
    state = load_checkpoint(tmp_path / "ms" / "checkpoints" / "last.ckpt")
    assert state["state_dict"]["model.encoder.model.patch_embed.proj.weight"].shape[1] == 4
    assert 0 <= read_json(tmp_path / "ms" / "metrics.json")["metrics"]["test/mIoU"] <= 100
