"""Data-parallel fine-tuning with two CPU processes (gloo) through the real CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from engine_helpers import FINETUNE, REPO, SMALL, checkpoint

#: extra overrides so that each rank gets at least two training batches
CASES = {
    "segmentation_dubai": [],
    "detection_nepu": [],
    "change_detection_levir": ["data.init_args.crops_per_image=2"],
    "rotated_detection_dota": [],
}


def run_ddp(name: str, out: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable, "-m", "rsfm.cli", "finetune", "--config", str(FINETUNE / f"{name}.yaml"),
        f"output_dir={out}", "run_name=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp",
        "trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1",
        "trainer.limit_test_batches=1", "trainer.enable_progress_bar=false", "trainer.log_every_n_steps=1",
        *SMALL[name], *extra,
    ]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=REPO)


# one task in the default run (CI's 20-minute budget); every task with -m slow
@pytest.mark.parametrize(
    "name", [n if n == "segmentation_dubai" else pytest.param(n, marks=pytest.mark.slow) for n in CASES]
)
def test_ddp_two_cpu_processes(name: str, tmp_path: Path, datasets: Path) -> None:
    proc = run_ddp(name, tmp_path, *CASES[name])
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "distributed_backend=gloo" in out and "Starting with 2 processes" in out
    last = checkpoint(tmp_path / "ddp" / "checkpoints" / "last.ckpt")
    # 2 batches per rank and epoch: 2 optimiser steps, every parameter got a gradient (no
    # unused-parameter error from DDP's reducer)
    assert last["global_step"] == 2
    assert (tmp_path / "ddp" / "metrics.json").is_file()


@pytest.mark.slow
def test_rsfm_test_on_two_processes_scores_each_image_once(tmp_path: Path, aid_subset) -> None:
    """3 test images on 2 ranks: the same scores as one process (the padded sampler counted one twice)."""
    import json

    root = aid_subset(["Airport", "Beach", "Forest"], 5)
    common = [
        "--config", str(FINETUNE / "classification_aid.yaml"), f"output_dir={tmp_path}", f"data.init_args.root={root}",
        "data.init_args.test_fraction=0.2", "data.init_args.val_fraction=0.2", "trainer.accelerator=cpu",
        "trainer.enable_progress_bar=false", *SMALL["classification_aid"],
    ]  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}

    def rsfm(*args: str) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            [sys.executable, "-m", "rsfm.cli", *args], capture_output=True, text=True, env=env, timeout=600, cwd=REPO
        )
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
        return proc

    rsfm("finetune", *common, "run_name=ft", "trainer.max_epochs=1")
    ckpt = str(tmp_path / "ft" / "checkpoints" / "last.ckpt")
    scores = {}
    for devices in (1, 2):
        strategy = "ddp" if devices > 1 else "auto"
        proc = rsfm("test", *common, f"run_name=t{devices}", f"trainer.devices={devices}",
                    f"trainer.strategy={strategy}", "--checkpoint", ckpt)  # fmt: skip
        assert proc.stdout.count("test metrics (percent)") == 1  # printed by rank 0 alone
        details = json.loads((tmp_path / f"t{devices}" / "test" / "metrics.json").read_text())
        scores[devices] = (details["metrics"], details["heads"]["classification"]["n"])
    assert scores[2] == scores[1] and scores[1][1] == 3


@pytest.mark.slow
def test_lp_ft_on_two_processes_fits_one_probe(tmp_path: Path, aid_subset) -> None:
    """LP-FT under DDP: each rank extracts its share, the shares are gathered, one probe as on one process.

    The rate is ~0 (blr 1e-12), so the classifier in ``last.ckpt`` after 2 steps is the probe
    the run started from: the 2-process probe must equal the 1-process one.
    """
    import json

    import torch

    root = aid_subset(["Airport", "Beach", "Forest"], 11)  # 33 images: 21 train (11 and 10 per rank), 6 val, 6 test
    extra = (f"data.init_args.root={root}", "data.init_args.val_fraction=0.25", "optim.blr=1e-12")
    proc = run_ddp("classification_aid", tmp_path, *extra)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert out.count("linear-probe init (LP-FT) on 21 frozen training features") == 1  # printed by rank 0
    report = json.loads((tmp_path / "ddp" / "probe_init.json").read_text())["heads"]["classification"]
    assert report["train_samples"] == 21 and report["val_samples"] == 6
    assert checkpoint(tmp_path / "ddp" / "checkpoints" / "last.ckpt")["global_step"] == 2

    one = tmp_path / "one"
    proc = run_ddp("classification_aid", one, *extra, "trainer.devices=1", "trainer.strategy=auto")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    single = json.loads((one / "ddp" / "probe_init.json").read_text())["heads"]["classification"]
    assert {k: single[k] for k in ("lr", "lr_search", "val_OA", "train_samples", "val_samples")} == {
        k: report[k] for k in ("lr", "lr_search", "val_OA", "train_samples", "val_samples")
    }
    for key in ("model.heads.classification.fc.weight", "model.heads.classification.fc.bias"):
        two_ranks = checkpoint(tmp_path / "ddp" / "checkpoints" / "last.ckpt")["state_dict"][key]
        one_rank = checkpoint(one / "ddp" / "checkpoints" / "last.ckpt")["state_dict"][key]
        torch.testing.assert_close(two_ranks, one_rank, rtol=0, atol=1e-4)
