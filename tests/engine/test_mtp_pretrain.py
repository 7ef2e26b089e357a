"""MTP through the engine and the real CLI: MIM export → multi-task pretraining → export → fine-tuning."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from engine_helpers import FINETUNE, PRETRAIN, REPO, Crash, CrashAt, assert_same_weights, checkpoint
from safetensors.torch import load_file

from rsfm.cli import main
from rsfm.engine.config import load_recipe
from rsfm.engine.run import pretrain
from rsfm.models.encoders.vit import build_vit
from rsfm.models.export import export_encoder, read_encoder_meta

MTP = PRETRAIN / "mtp_vit_tiny.yaml"


@pytest.fixture(scope="module")
def mim_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ViT-Tiny/8 MIM-style export (random weights) standing in for the README main job's."""
    torch.manual_seed(0)
    vit = build_vit("tiny", img_size=112, patch_size=8)
    meta = {"arch": "vit", "size": "tiny", "img_size": 112, "patch_size": 8, "in_chans": 3, "method": "SelectiveMAE"}
    meta.update(mean=[0.3983, 0.4095, 0.3689], std=[0.2123, 0.1902, 0.1889])
    return export_encoder(vit, tmp_path_factory.mktemp("mim") / "encoder.safetensors", meta)


def mtp_args(out: Path, datasets: Path, init: Path, *extra: str) -> list[str]:
    """The CPU recipe on the real subsets, shrunk to 64 px crops and a few steps."""
    return [
        f"model.init={init}",
        f"data.subsets.dota_isaid.init_args.isaid_root={datasets / 'isaid_dota'}",
        f"data.subsets.dota_isaid.init_args.dota_root={datasets / 'dota'}",
        f"data.subsets.hituav.init_args.root={datasets / 'hit_uav'}",
        "data.crop_size=64",
        "data.batch_size=2",
        "data.crops_per_image=6",
        "model.heads.semantic.init_args.channels=16",
        "model.heads.instance.init_args.fpn_channels=16",
        "model.heads.instance.init_args.box_batch_size_per_image=32",
        "model.heads.instance.init_args.fc_channels=32",
        "model.heads.instance.init_args.mask_channels=8",
        "model.heads.instance.init_args.mask_convs=1",
        "model.heads.instance.init_args.rpn_post_nms_top_n_train=100",
        "model.heads.rotated.init_args.fpn_channels=16",
        "model.heads.rotated.init_args.fc_channels=32",
        "model.heads.rotated.init_args.roi_num_samples=32",
        "model.heads.rotated.init_args.rpn_proposals_train=100",
        f"output_dir={out}",
        "run_name=run",
        "trainer.max_epochs=1",
        "trainer.log_every_n_steps=1",
        "trainer.enable_progress_bar=false",
        *extra,
    ]


def test_ddp_cli_pretrains_logs_every_task_and_exports_for_fine_tuning(
    tmp_path: Path, datasets: Path, mim_export: Path
) -> None:
    """`rsfm pretrain` in two CPU processes (gloo): per-task losses logged, the encoder exported."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "rsfm.cli", "pretrain", "--config", str(MTP)]
    cmd += mtp_args(tmp_path, datasets, mim_export, "data.crops_per_image=8")
    cmd += ["trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=REPO)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "distributed_backend=gloo" in out and "Starting with 2 processes" in out
    run = tmp_path / "run"
    # P0005 is the only dota_isaid training image: 8 crops over 2 ranks, batch 2 → 2 steps; every
    # parameter, per-subset predictors included, joined the gradient all-reduce
    assert checkpoint(run / "checkpoints" / "last.ckpt")["global_step"] == 2
    with open(run / "logs" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    logged = {k for r in rows for k, v in r.items() if v not in ("", None)}
    for key in ("train/semantic", "train/instance", "train/rotated", "train/rotated/hituav", "train/loss"):
        assert key in logged, sorted(logged)
    assert "train/semantic/hituav" not in logged  # HIT-UAV has boxes only
    enc = run / "encoder.safetensors"
    meta = read_encoder_meta(enc)
    assert meta["method"] == "MTP" and meta["arch"] == "vit" and meta["init"] == str(mim_export)
    assert meta["mean"] == [0.3983, 0.4095, 0.3689]  # normalised as the MIM run
    state = load_file(str(enc))
    mim = load_file(str(mim_export))
    assert state.keys() == mim.keys()  # the encoder only: no decoder, neck or MIM decoder
    assert not torch.equal(state["blocks.0.attn.qkv.weight"], mim["blocks.0.attn.qkv.weight"])  # it trained
    # every downstream recipe accepts the export (models built, weights loaded)
    from rsfm.engine.run import _downstream

    for recipe in sorted(FINETUNE.glob("*.yaml")):
        if recipe.stem == "rotated_detection_dior_r":
            continue  # its data (full DIOR-R) is not in ../shared/datasets
        r = load_recipe("finetune", recipe, [f"model.encoder.init_args.weights={enc}", f"output_dir={tmp_path}"])
        module, _ = _downstream(r)
        got = module.model.encoder.model.state_dict()["blocks.0.attn.qkv.weight"]
        assert torch.equal(got, state["blocks.0.attn.qkv.weight"]), recipe.stem


@pytest.mark.parametrize(
    ("every", "epochs", "crash", "stopped_step", "final_step"),
    [
        # 8 crops of P0005, batch 2: 4 steps an epoch; the kill leaves the middle of epoch 0
        pytest.param(2, 1, 3, 2, 4, id="mid_epoch"),
        # ... or the end of epoch 0: the shortest subset ends each epoch, and the others'
        # orders must not continue into the next one
        pytest.param(4, 2, 5, 4, 8, id="epoch_end"),
    ],
)
def test_resume_gives_identical_weights(
    every: int, epochs: int, crash: int, stopped_step: int, final_step: int, tmp_path, datasets, mim_export, one_thread
) -> None:
    common = [f"checkpoint.every_n_train_steps={every}", f"trainer.max_epochs={epochs}", "data.crops_per_image=8"]

    def recipe(run: str) -> dict:
        return load_recipe("pretrain", MTP, mtp_args(tmp_path / run, datasets, mim_export, *common))

    pretrain(recipe("a"))
    with pytest.raises(Crash):
        pretrain(recipe("b"), callbacks=[CrashAt(crash)])
    stopped = checkpoint(tmp_path / "b" / "run" / "checkpoints" / "last.ckpt")
    assert stopped["global_step"] == stopped_step and stopped["epoch"] == 0
    pretrain(recipe("b"))
    a = checkpoint(tmp_path / "a" / "run" / "checkpoints" / "last.ckpt")
    b = checkpoint(tmp_path / "b" / "run" / "checkpoints" / "last.ckpt")
    assert a["global_step"] == b["global_step"] == final_step
    assert_same_weights(a["state_dict"], b["state_dict"])
    ea = load_file(str(tmp_path / "a" / "run" / "encoder.safetensors"))
    eb = load_file(str(tmp_path / "b" / "run" / "encoder.safetensors"))
    assert all(torch.equal(ea[k], eb[k]) for k in ea)


def test_one_crop_per_subset_on_one_device_is_refused(tmp_path: Path, datasets: Path, mim_export: Path, capsys) -> None:
    args = mtp_args(tmp_path, datasets, mim_export, "data.batch_size=1")
    assert main(["pretrain", "--config", str(MTP), *args]) == 2
    assert "data.batch_size=1: the semantic decoder's BatchNorm needs at least 2 crops" in capsys.readouterr().err


def test_recipes_check(datasets: Path) -> None:
    r = load_recipe("pretrain", MTP, [])
    assert r["model"]["class_path"].endswith("MTP") and r["data"]["class_path"].endswith("MultiTaskDataModule")
    gpu = load_recipe("pretrain", PRETRAIN / "mtp_vit_base_rvsa.yaml", [])
    args = gpu["optim"]
    assert args["lr"] == 6.0e-5 and args["layer_decay"] == 0.9 and gpu["trainer"]["gradient_clip_val"] == 5.0
    assert gpu["trainer"]["max_steps"] == 80000 and gpu["data"]["init_args"]["crop_size"] == 448
