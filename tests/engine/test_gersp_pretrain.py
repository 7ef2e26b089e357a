"""GeRSP through the engine and the real CLI on AID + CIFAR-10: run, export, evaluate, DDP."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rsfm.cli import main
from rsfm.engine.config import load_config
from rsfm.models.export import load_encoder, read_encoder_meta
from rsfm.optim import warmup_cosine, warmup_cosine_restarts
from rsfm.engine.pretrain import build_module, run_pretrain

REPO = Path(__file__).resolve().parents[2]
RECIPES = sorted((REPO / "configs" / "pretrain").glob("gersp_*.yaml"))


def _overrides(tmp_path: Path, datasets: Path, *extra: str) -> list[str]:
    return [
        f"data.root={datasets / 'aid'}",
        f"data.natural_root={datasets / 'cifar10' / 'train'}",
        f"output_dir={tmp_path}",
        "run_name=run",
        "resume=null",
        "data.img_size=32",
        "data.batch_size=4",
        "data.num_workers=0",
        "model.queue_size=16",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=2",
        "trainer.enable_progress_bar=false",
        "trainer.log_every_n_steps=1",
        "evaluate.enabled=false",
        *extra,
    ]


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_recipes_load_and_build(recipe: Path, datasets: Path) -> None:
    cfg = load_config(recipe, [f"data.natural_root={datasets / 'cifar10' / 'train'}", "data.img_size=32"])
    assert cfg.model.name == "gersp" and cfg.optim.name == "sgd" and cfg.optim.restarts >= 1
    module = build_module(cfg)
    assert module.model.classifier.out_features == 10  # CIFAR-10 classes


def test_cosine_restarts_schedule() -> None:
    # 2 warmup steps, then 3 cycles of 4 steps
    values = [warmup_cosine_restarts(s, 2, 14, cycles=3) for s in range(14)]
    assert values[:2] == [0.0, 0.5]
    assert values[2] == values[6] == values[10] == 1.0  # each cycle restarts at the peak
    assert values[4] == pytest.approx(0.5) and values[5] < values[4]
    assert all(warmup_cosine_restarts(s, 2, 14, 1) == warmup_cosine(s, 2, 14) for s in range(14))


def test_cli_run_exports_a_resnet_encoder_that_evaluation_accepts(tmp_path: Path, datasets: Path, one_thread) -> None:
    args = _overrides(tmp_path, datasets, "model.arch=resnet50")
    assert main(["pretrain", "--config", str(REPO / "configs" / "pretrain" / "gersp_resnet50.yaml"), *args]) == 0
    run = tmp_path / "run"
    meta = read_encoder_meta(run / "encoder.safetensors")
    assert meta["arch"] == "resnet50" and meta["method"] == "gersp" and meta["img_size"] == 32
    assert meta["natural_root"].endswith("train") and not (run / "figures").exists()
    enc = load_encoder(run / "encoder.safetensors")
    assert enc.forward_head(enc.forward_features(torch.zeros(2, 3, 32, 32)), pre_logits=True).shape == (2, 2048)
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 2 and int(ckpt["state_dict"]["model.queue.ptr"]) == 8
    # the teacher took an EMA step after each optimiser step: it differs from its start
    sd = ckpt["state_dict"]
    assert not torch.equal(sd["model.teacher_encoder.conv1.weight"], sd["model.encoder.conv1.weight"])
    logged = (run / "logs" / "metrics.csv").read_text().splitlines()[0]
    for key in ("train/loss", "train/loss_con", "train/loss_ce", "train/acc_natural"):
        assert key in logged
    # `rsfm export` from the checkpoint gives the same student weights
    again = tmp_path / "again.safetensors"
    assert main(["export", "--checkpoint", str(run / "checkpoints" / "last.ckpt"), "--out", str(again)]) == 0
    assert read_encoder_meta(again)["arch"] == "resnet50"
    # #2's evaluation on a small labeled folder: kNN and linear on pooled 2048-d features
    from rsfm.eval.run import evaluate

    subset = tmp_path / "aid"
    for name in ("Airport", "Forest", "Port"):
        (subset / name).mkdir(parents=True)
        for src in sorted((datasets / "aid" / name).glob("*.jpg"))[:5]:
            (subset / name / src.name).symlink_to(src)
    result = evaluate(
        run / "encoder.safetensors",
        subset,
        ("knn", "linear", "finetune", "scratch"),
        out_dir=tmp_path / "eval",
        linear_epochs=5,
        num_workers=0,
        finetune_epochs=1,
        finetune_batch_size=4,
        verbose=False,
    )
    assert set(result["protocols"]) == {"knn", "linear", "finetune", "scratch"}
    assert result["data"]["n_heldout"] == 3
    # and the downstream backbone builder takes the ResNet export
    from rsfm.models.adapters import build_backbone

    backbone = build_backbone({"encoder": str(run / "encoder.safetensors")})
    assert backbone.strides == [4, 8, 16, 32] and backbone.rsfm_meta["arch"] == "resnet50"


def test_missing_natural_root_is_a_clear_error(tmp_path: Path, datasets: Path, capsys) -> None:
    recipe = str(REPO / "configs" / "pretrain" / "gersp_vit_tiny.yaml")
    args = _overrides(tmp_path, datasets, f"data.natural_root={tmp_path / 'nope'}")
    assert main(["pretrain", "--config", recipe, *args]) == 2
    assert "data.natural_root: folder not found" in capsys.readouterr().err
    with pytest.raises(ValueError, match="data.natural_root is required"):
        build_module(load_config(recipe, ["data.natural_root=null"]))
    with pytest.raises(ValueError, match="model.queue is not an option of gersp"):
        build_module(load_config(recipe, [f"data.natural_root={datasets / 'cifar10' / 'train'}", "model.queue=3"]))


def test_resume_mid_epoch_gives_identical_student_teacher_and_queue(tmp_path: Path, datasets: Path, one_thread) -> None:
    from test_pretrain import Crash

    recipe = REPO / "configs" / "pretrain" / "gersp_vit_tiny.yaml"
    common = ["checkpoint.every_n_train_steps=2", "trainer.limit_train_batches=4", "resume=auto"]
    run_pretrain(load_config(recipe, _overrides(tmp_path / "a", datasets, *common)))
    try:
        run_pretrain(load_config(recipe, _overrides(tmp_path / "b", datasets, *common)), callbacks=[Crash(3)])
    except (KeyboardInterrupt, SystemExit):
        pass
    run_pretrain(load_config(recipe, _overrides(tmp_path / "b", datasets, *common)))  # resumes from step 2
    a, b = (
        torch.load(tmp_path / r / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
        for r in "ab"
    )
    assert a["global_step"] == b["global_step"] == 4
    for k in a["state_dict"]:  # student, teacher (EMA) and queue alike
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k


@pytest.mark.parametrize("variant", ["moco_only", "natural_only", "released_teacher"])
def test_ablations_run(tmp_path: Path, datasets: Path, variant: str, one_thread) -> None:
    extra = {
        "moco_only": ["model.alpha=0"],
        "natural_only": ["model.contrastive=false"],
        "released_teacher": ["model.ema_projector=false"],
    }[variant]
    cfg = load_config(REPO / "configs" / "pretrain" / "gersp_vit_tiny.yaml", _overrides(tmp_path, datasets, *extra))
    result = run_pretrain(cfg)
    assert Path(result["encoder"]).is_file()


def test_ddp_two_cpu_processes_fill_the_queue_from_both_ranks(tmp_path: Path, datasets: Path) -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "rsfm.cli",
        "pretrain",
        "--config",
        str(REPO / "configs" / "pretrain" / "gersp_vit_tiny.yaml"),
        *_overrides(tmp_path, datasets, "trainer.limit_train_batches=3", "model.queue_size=20"),
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "trainer.strategy=ddp",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "run" / "encoder.safetensors").is_file()
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 3
    # 3 steps x world size 2 x batch 4 = 24 keys entered a queue of 20: the pointer wrapped to 4
    assert int(ckpt["state_dict"]["model.queue.ptr"]) == (3 * 2 * 4) % 20
