"""The pretraining engine on real AID images: loss goes down, exact resume, DDP, export."""

import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from safetensors.torch import load_file

from rsfm.engine.config import load_config
from rsfm.models.export import load_encoder, read_encoder_meta
from rsfm.engine.pretrain import build_datamodule, build_module, run_pretrain

REPO = Path(__file__).resolve().parents[2]
RECIPE = REPO / "configs" / "pretrain" / "selective_mae_vit_tiny.yaml"


def small_config(tmp_path: Path, datasets: Path, *extra: str):
    """ViT-Tiny at 64 px with 8 px patches on real AID images, a few steps per epoch."""
    return load_config(
        RECIPE,
        [
            f"data.root={datasets / 'aid'}",
            f"output_dir={tmp_path}",
            "run_name=run",
            "data.img_size=64",
            "data.batch_size=8",
            "data.num_workers=0",
            "trainer.max_epochs=2",
            "trainer.limit_train_batches=4",
            "trainer.enable_progress_bar=false",
            "trainer.log_every_n_steps=1",
            "viz.num_images=2",
            "evaluate.enabled=false",
            *extra,
        ],
    )


@pytest.mark.parametrize("method", ["selective_mae", "mae"])
def test_short_real_run_lowers_loss(tmp_path: Path, datasets: Path, method: str) -> None:
    extra = ["model.name=mae", "model.mask_ratio=0.75"] if method == "mae" else []
    for key in (
        "rec_ratio",
        "seed_ratio",
        "hog_score",
        "seed_selection",
        "target_selection",
        "psts",
        "psts_boundaries",
    ):
        if method == "mae":
            extra.append(f"~model.{key}")
    cfg = load_config(RECIPE, [])
    cfg = small_config(
        tmp_path,
        datasets,
        "optim.lr=1e-3",
        "optim.warmup_epochs=0",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=30",
    )
    if method == "mae":
        cfg.model = {"name": "mae", "size": "tiny", "patch_size": 8, "mask_ratio": 0.75}
    L.seed_everything(0)
    dm = build_datamodule(cfg)
    module = build_module(cfg)
    imgs = dm.viz_batch(8)

    def held_out_loss() -> float:
        module.eval()
        with torch.no_grad():
            loss = module.model(imgs, progress=0.0, generator=torch.Generator().manual_seed(0))["loss"].item()
        module.train()
        return loss

    before = held_out_loss()
    trainer = L.Trainer(
        max_epochs=1,
        limit_train_batches=30,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        use_distributed_sampler=False,
        accelerator="cpu",
    )
    trainer.fit(module, datamodule=dm)
    after = held_out_loss()
    assert after < before * 0.9, (before, after)


class Crash(L.Callback):
    """Simulates a killed process after a given optimiser step."""

    def __init__(self, at_step: int) -> None:
        self.at_step = at_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.at_step:
            raise KeyboardInterrupt


def _state(run_dir: Path) -> dict[str, torch.Tensor]:
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    return ckpt["state_dict"]


@pytest.mark.parametrize("method", ["selective_mae"])
def test_resume_mid_epoch_gives_identical_weights(tmp_path: Path, datasets: Path, method: str) -> None:
    common = ["checkpoint.every_n_train_steps=2", "trainer.limit_train_batches=5", "trainer.max_epochs=2"]
    full = small_config(tmp_path / "a", datasets, *common)
    run_pretrain(full)

    cut = small_config(tmp_path / "b", datasets, *common)
    # crash at step 3: the last checkpoint is from step 2, in the middle of epoch 0
    try:
        run_pretrain(cut, callbacks=[Crash(3)])
    except (KeyboardInterrupt, SystemExit):
        pass
    ckpt = torch.load(tmp_path / "b" / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 2 and ckpt["epoch"] == 0
    resumed = small_config(tmp_path / "b", datasets, *common)  # resume: auto
    run_pretrain(resumed)

    a, b = _state(tmp_path / "a" / "run"), _state(tmp_path / "b" / "run")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ea = load_file(str(tmp_path / "a" / "run" / "encoder.safetensors"))
    eb = load_file(str(tmp_path / "b" / "run" / "encoder.safetensors"))
    assert all(torch.equal(ea[k], eb[k]) for k in ea)
    # and the run did train: the weights moved from the initialisation
    L.seed_everything(0)
    init = build_module(full).state_dict()
    assert any(not torch.equal(init[k], a[k]) for k in a if k in init and a[k].dtype.is_floating_point)


def test_export_loads_as_timm_encoder(tmp_path: Path, datasets: Path) -> None:
    cfg = small_config(tmp_path, datasets, "trainer.max_epochs=1", "trainer.limit_train_batches=1")
    result = run_pretrain(cfg)
    meta = read_encoder_meta(result["encoder"])
    assert meta["method"] == "selective_mae" and meta["img_size"] == 64 and meta["patch_size"] == 8
    assert len(meta["mean"]) == 3
    enc = load_encoder(result["encoder"])
    feats = enc.forward_features(torch.zeros(2, 3, 64, 64))
    assert feats.shape == (2, 65, 192)
    figs = sorted((Path(result["run_dir"]) / "figures").glob("*.png"))
    assert figs, "no reconstruction figure written"
    # `rsfm export` from the last checkpoint gives the same weights and metadata
    from rsfm.cli import main

    again = tmp_path / "again.safetensors"
    assert main(["export", "--checkpoint", result["checkpoint"], "--out", str(again)]) == 0
    a, b = load_file(result["encoder"]), load_file(str(again))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert read_encoder_meta(again) == meta


def test_ddp_two_cpu_processes(tmp_path: Path, datasets: Path) -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "rsfm.cli",
        "pretrain",
        "--config",
        str(RECIPE),
        f"data.root={datasets / 'aid'}",
        f"output_dir={tmp_path}",
        "run_name=ddp",
        "data.img_size=64",
        "data.batch_size=4",
        "data.num_workers=0",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=3",
        "trainer.enable_progress_bar=false",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "trainer.strategy=ddp",
        "viz.num_images=2",
        "evaluate.enabled=false",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    assert "world_size: 2" in out or "distributed_backend=gloo" in out
    assert (tmp_path / "ddp" / "encoder.safetensors").is_file()
    ckpt = torch.load(tmp_path / "ddp" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 3


def test_ddp_rank_with_only_unreadable_files_keeps_step(tmp_path: Path, datasets: Path) -> None:
    """Two ranks, batch 1, one good and one truncated image: each step one rank has an empty batch."""
    root = tmp_path / "images" / "Forest"
    root.mkdir(parents=True)
    data = sorted((datasets / "aid" / "Forest").glob("*.jpg"))[0].read_bytes()
    (root / "good.jpg").write_bytes(data)
    (root / "truncated.jpg").write_bytes(data[:3000])
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable, "-m", "rsfm.cli", "pretrain", "--config", str(RECIPE),
        f"data.root={tmp_path / 'images'}", f"output_dir={tmp_path}", "run_name=ddp_bad", "resume=null",
        "data.img_size=64", "data.batch_size=1", "data.num_workers=0", "data.holdout_fraction=0",
        "trainer.max_epochs=2", "trainer.enable_progress_bar=false", "trainer.accelerator=cpu",
        "trainer.devices=2", "trainer.strategy=ddp", "viz.num_images=1", "evaluate.enabled=false",
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "1 truncated" in proc.stdout + proc.stderr
    ckpt = torch.load(tmp_path / "ddp_bad" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 2


def test_bad_files_are_skipped_and_counted_not_fatal(tmp_path: Path, datasets: Path) -> None:
    import shutil

    import numpy as np
    import rasterio
    from PIL import Image

    root = tmp_path / "images"
    for cls in ("Forest", "Port"):
        (root / cls).mkdir(parents=True)
        for p in sorted((datasets / "aid" / cls).glob("*.jpg"))[:6]:
            shutil.copy(p, root / cls / p.name)
    src = sorted((datasets / "aid" / "Port").glob("*.jpg"))[10]
    data = src.read_bytes()
    (root / "Port" / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (root / "Port" / "empty.jpg").write_bytes(b"")
    (root / "Port" / "notes.jpg").write_text("not an image")
    (root / "Port" / "readme.txt").write_text("not an image either")
    Image.open(src).convert("L").save(root / "Forest" / "gray.png")
    rgb = np.asarray(Image.open(src).convert("RGB")).transpose(2, 0, 1)
    with rasterio.open(
        root / "Forest" / "four_band.tif",
        "w",
        driver="GTiff",
        width=rgb.shape[2],
        height=rgb.shape[1],
        count=4,
        dtype="uint8",
    ) as dst:
        dst.write(np.concatenate([rgb, rgb[:1]], axis=0))
    cfg = small_config(
        tmp_path,
        datasets,
        f"data.root={root}",
        "data.holdout_fraction=0",
        "data.batch_size=4",
        "trainer.max_epochs=2",
        "trainer.limit_train_batches=null",
    )
    result = run_pretrain(cfg)
    assert result["skipped"] == {"truncated": 1, "zero_byte": 1, "not_an_image": 2}
    assert Path(result["encoder"]).is_file()
    assert (Path(result["run_dir"]) / "logs" / "skipped_files.json").is_file()
