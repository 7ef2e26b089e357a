"""Failure behaviour: divergence, user errors, kills during checkpoint writes, logs across resumes."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import lightning as L
import pytest
import torch
from engine_helpers import PRETRAIN, REPO, Crash, CrashAt, aid_pretrain_args, checkpoint

from rsfm.cli import main
from rsfm.engine.config import load_recipe
from rsfm.engine.run import pretrain
from rsfm.utils.errors import TrainingDiverged

RECIPE = PRETRAIN / "selective_mae_vit_tiny.yaml"


def small(out: Path, datasets: Path, *extra: str) -> list[str]:
    """Overrides for a six-step SelectiveMAE run on real AID images, logging every 50 steps."""
    return aid_pretrain_args(
        out,
        datasets,
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=6",
        "trainer.log_every_n_steps=50",  # divergence happens at a step that logs nothing
        "viz.num_images=1",
        *extra,
    )


def finite(state: dict) -> bool:
    return all(bool(torch.isfinite(v).all()) for v in state["state_dict"].values() if v.is_floating_point())


def stderr_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "Traceback" not in err[0]
    return err[0]


class NaNGradientAt(L.Callback):
    """Poison one gradient at a given optimiser step (after the backward pass)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_after_backward(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.global_step == self.step:
            next(p for p in pl_module.parameters() if p.grad is not None).grad.fill_(float("nan"))


def test_nan_at_a_non_logging_step_keeps_last_good_checkpoint(tmp_path: Path, datasets: Path) -> None:
    args = small(tmp_path, datasets, "checkpoint.every_n_train_steps=2", "optim.warmup_epochs=0")
    with pytest.raises(TrainingDiverged, match=r"diverged at step 3.*last good state is .*last.ckpt \(step 2\)"):
        pretrain(load_recipe("pretrain", RECIPE, args), callbacks=[NaNGradientAt(3)])
    ckpts = tmp_path / "run" / "checkpoints"
    last = checkpoint(ckpts / "last.ckpt")
    assert last["global_step"] == 2 and finite(last)
    assert all(finite(checkpoint(p)) for p in ckpts.glob("*.ckpt"))
    # the rerun (no poisoned gradient now, a lower rate) resumes from step 2 and finishes
    result = pretrain(load_recipe("pretrain", RECIPE, [*args, "optim.blr=1e-4"]))
    final = checkpoint(ckpts / "last.ckpt")
    assert final["global_step"] == 6 and finite(final) and Path(result["encoder"]).is_file()


def test_diverging_learning_rate_then_lower_rate_finishes(tmp_path: Path, datasets: Path, capsys) -> None:
    args = small(tmp_path, datasets, "checkpoint.every_n_train_steps=1", "optim.warmup_epochs=0")
    assert main(["pretrain", "--config", str(RECIPE), *args, "optim.blr=1e6"]) == 2
    line = stderr_line(capsys)
    assert "training diverged at step" in line and "lower optim.lr" in line
    ckpts = tmp_path / "run" / "checkpoints"
    # no checkpoint a rerun would resume from holds non-finite weights or the weights that diverged
    assert all(finite(checkpoint(p)) for p in ckpts.glob("*.ckpt"))
    assert list(ckpts.glob("*.diverged"))
    assert main(["pretrain", "--config", str(RECIPE), *args, "optim.blr=1.5e-4"]) == 0
    final = checkpoint(ckpts / "last.ckpt")
    assert final["global_step"] == 6 and finite(final)
    assert main(["export", "--checkpoint", str(ckpts / "last.ckpt"), "--out", str(tmp_path / "e.safetensors")]) == 0


def test_export_refuses_non_finite_weights(tmp_path: Path, datasets: Path, capsys) -> None:
    args = small(tmp_path, datasets, "trainer.limit_train_batches=1")
    assert main(["pretrain", "--config", str(RECIPE), *args]) == 0
    state = checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")
    key = next(k for k, v in state["state_dict"].items() if v.is_floating_point() and "encoder" in k)
    state["state_dict"][key] = torch.full_like(state["state_dict"][key], float("inf"))
    torch.save(state, tmp_path / "poisoned.ckpt")
    capsys.readouterr()
    assert (
        main(["export", "--checkpoint", str(tmp_path / "poisoned.ckpt"), "--out", str(tmp_path / "x.safetensors")]) == 2
    )
    assert "NaN or infinite" in stderr_line(capsys)
    assert not (tmp_path / "x.safetensors").exists()


class Gadget:
    """Any class: pickled into a checkpoint, loading it with weights_only=False would run code."""


def test_checkpoints_are_loaded_weights_only(tmp_path: Path, capsys) -> None:
    path = tmp_path / "gadget.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {}, "gadget": Gadget()}, path)
    assert main(["export", "--checkpoint", str(path), "--out", str(tmp_path / "e.safetensors")]) == 2
    assert "can run code" in stderr_line(capsys)


def test_metrics_csv_keeps_every_step_across_a_resume(tmp_path: Path, datasets: Path) -> None:
    args = small(tmp_path, datasets, "checkpoint.every_n_train_steps=2", "trainer.log_every_n_steps=1")
    with pytest.raises(Crash):
        pretrain(load_recipe("pretrain", RECIPE, args), callbacks=[CrashAt(3)])
    pretrain(load_recipe("pretrain", RECIPE, args))
    with (tmp_path / "run" / "logs" / "metrics.csv").open() as f:
        steps = [int(r["step"]) for r in csv.DictReader(f) if r.get("train/loss")]
    assert steps == list(range(6))  # every step once: none lost, none repeated


class ReadLogAt(L.Callback):
    """Read ``metrics.csv`` as it is on disk once the run has taken ``step`` steps (what a SIGKILL would leave)."""

    def __init__(self, path: Path, step: int) -> None:
        self.path, self.step, self.steps = path, step, None

    def on_train_batch_end(self, trainer: L.Trainer, *args) -> None:
        if trainer.global_step == self.step and self.steps is None:
            with self.path.open() as f:
                self.steps = [int(r["step"]) for r in csv.DictReader(f) if r.get("train/loss")]


def test_every_checkpoint_has_its_log_rows_on_disk(tmp_path: Path, datasets: Path) -> None:
    # a kill after the step-2 checkpoint must not leave a checkpoint whose steps have no rows
    # (a resume keeps the rows before its step); Lightning writes the CSV rows at every log
    args = small(tmp_path, datasets, "checkpoint.every_n_train_steps=2", "trainer.log_every_n_steps=1")
    reader = ReadLogAt(tmp_path / "run" / "logs" / "metrics.csv", 3)
    pretrain(load_recipe("pretrain", RECIPE, args), callbacks=[reader])
    assert reader.steps is not None and reader.steps[:2] == [0, 1], reader.steps


def test_kill_between_numbered_and_last_checkpoint(tmp_path: Path, datasets: Path) -> None:
    args = small(tmp_path, datasets, "checkpoint.every_n_train_steps=2", "trainer.log_every_n_steps=1")
    pretrain(load_recipe("pretrain", RECIPE, [*args, "trainer.limit_train_batches=4"]))
    ckpts = tmp_path / "run" / "checkpoints"
    # as if killed after writing the step-4 checkpoint but before last.ckpt: last is still step 2
    (ckpts / "last.ckpt").write_bytes((ckpts / "epoch000-step000002.ckpt").read_bytes())
    pretrain(load_recipe("pretrain", RECIPE, [*args, "trainer.max_epochs=2", "trainer.limit_train_batches=4"]))
    names = sorted(p.name for p in ckpts.iterdir())
    assert not [n for n in names if "-v" in n], names  # no "-v1" duplicates
    assert checkpoint(ckpts / "last.ckpt")["global_step"] == 8
    with (tmp_path / "run" / "logs" / "metrics.csv").open() as f:
        steps = [int(r["step"]) for r in csv.DictReader(f) if r.get("train/loss")]
    assert steps == list(range(8))  # resumed from step 4, not 2: nothing repeated


KILLER = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    real = Path.write_bytes
    def killed_mid_write(self, data):
        with open(self, "wb") as f:
            f.write(data[: len(data) // 2])
            f.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    Path.write_bytes = killed_mid_write
    from rsfm.cli import main
    sys.exit(main(sys.argv[1:]))
    """
)


def test_kill_during_checkpoint_write_leaves_nothing_outside_the_run(tmp_path: Path, datasets: Path) -> None:
    systmp = tmp_path / "systmp"
    systmp.mkdir()
    env = {**os.environ, "TMPDIR": str(systmp), "OMP_NUM_THREADS": "1"}
    args = small(tmp_path, datasets, "checkpoint.every_n_train_steps=2")
    proc = subprocess.run(
        [sys.executable, "-c", KILLER, "pretrain", "--config", str(RECIPE), *args],
        capture_output=True, text=True, env=env, timeout=300, cwd=REPO,
    )  # fmt: skip
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert list(systmp.iterdir()) == []  # nothing in the system temp folder
    ckpts = tmp_path / "run" / "checkpoints"
    partial = [p.name for p in ckpts.iterdir()]
    assert partial and all(n.startswith(".") and n.endswith(".tmp") for n in partial), partial
    # the rerun clears the partial file and trains from scratch to the end
    assert main(["pretrain", "--config", str(RECIPE), *args]) == 0
    assert not [p for p in ckpts.iterdir() if p.name.endswith(".tmp")]
    assert checkpoint(ckpts / "last.ckpt")["global_step"] == 6


def _finetune_args(out: Path, datasets: Path) -> list[str]:
    return [
        f"output_dir={out}",
        "run_name=ft",
        f"data.init_args.root={datasets / 'levir_cd'}",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=1",
        "trainer.enable_progress_bar=false",
    ]


@pytest.mark.parametrize(
    "case",
    [
        "yaml",
        "output_is_file",
        "unwritable",
        "missing_input",
        "not_a_checkpoint",
        "does_not_fit",
        "misspelt",
        "no_data",
        "fsdp_finetune",
    ],
)
def test_user_errors_are_one_line_with_exit_2(case: str, tmp_path: Path, datasets: Path, capsys) -> None:
    recipe = REPO / "configs" / "finetune" / "change_detection_levir.yaml"
    args = _finetune_args(tmp_path, datasets)
    if case == "yaml":
        bad = tmp_path / "bad.yaml"
        bad.write_text("model:\n  encoder: {class_path: ViT\ndata: [\n")
        argv, expect = ["finetune", "--config", str(bad)], f"{bad}:3:"
    elif case == "output_is_file":
        (tmp_path / "file").write_text("x")
        argv, expect = ["finetune", "--config", str(recipe), *args, f"output_dir={tmp_path / 'file'}"], "is a file"
    elif case == "unwritable":
        argv, expect = ["finetune", "--config", str(recipe), *args, "output_dir=/proc/rsfm-test"], "output_dir"
    elif case == "missing_input":
        argv = [
            "predict",
            "--config",
            str(recipe),
            *args,
            "--checkpoint",
            "x.ckpt",
            "--input",
            "nope.tif",
            "--output",
            "o.tif",
        ]
        expect = "--input: file not found: nope.tif"
    elif case == "not_a_checkpoint":
        argv, expect = ["test", "--config", str(recipe), *args, "--checkpoint", str(recipe)], "is not a checkpoint"
    elif case == "does_not_fit":
        other = tmp_path / "other.ckpt"
        torch.save({"state_dict": {f"model.layer{i}.weight": torch.zeros(2) for i in range(40)}}, other)
        argv, expect = ["test", "--config", str(recipe), *args, "--checkpoint", str(other)], "missing"
    elif case == "misspelt":
        argv, expect = ["finetune", "--config", str(recipe), *args, "trainer.max_epoch=2"], "trainer.max_epoch"
    elif case == "fsdp_finetune":  # it trained, then its test crashed on the unwrapped model
        argv = ["finetune", "--config", str(recipe), *args, "trainer.strategy=fsdp", "trainer.devices=2"]
        expect = "trainer.strategy=fsdp: FSDP applies to pretraining"
    else:
        argv, expect = ["finetune", "--config", str(recipe), *args, "data.init_args.root=/no/such/folder"], "data.root"
    capsys.readouterr()
    assert main(argv) == 2
    line = stderr_line(capsys)
    assert expect in line, line
    assert len(line) < 700
    if case == "does_not_fit":
        assert "40 unexpected" in line and "… 37 more" in line
    if case in ("misspelt", "no_data", "yaml"):
        assert not (tmp_path / "ft").exists()


def test_ctrl_c_during_a_run_exits_130(monkeypatch, tmp_path: Path, datasets: Path, capsys) -> None:
    import rsfm.engine.run

    def stopped_like_lightning(recipe, callbacks=None):
        try:  # Lightning's answer to Ctrl+C inside fit: a graceful shutdown, then exit(1)
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            sys.exit(1)

    monkeypatch.setattr(rsfm.engine.run, "pretrain", stopped_like_lightning)
    assert main(["pretrain", "--config", str(RECIPE), *small(tmp_path, datasets)]) == 130
    assert capsys.readouterr().err.strip() == "rsfm pretrain: interrupted"

    def exits(recipe, callbacks=None):
        sys.exit(3)  # any other exit passes through

    monkeypatch.setattr(rsfm.engine.run, "pretrain", exits)
    with pytest.raises(SystemExit):
        main(["pretrain", "--config", str(RECIPE), *small(tmp_path, datasets)])


def test_stats_options_are_checked(tmp_path: Path, capsys) -> None:
    assert main(["stats", str(tmp_path), "--bands", "3;2;1"]) == 2
    assert "--bands: expected 0-based band indices" in stderr_line(capsys)
    assert main(["stats", str(tmp_path), "--raster-scale", "ten"]) == 2
    assert "--raster-scale: expected 'auto' or a number" in stderr_line(capsys)


class _FailingImages(torch.utils.data.Dataset):
    """A dataset whose item raises the error a data problem gives, in a loader worker."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    def __len__(self) -> int:
        return 1

    def __getitem__(self, index: int) -> torch.Tensor:
        raise self.error


@pytest.mark.parametrize("kind", ["data_error", "unsupported_bands"])
def test_a_loader_workers_data_error_is_one_line_naming_the_file(kind: str, monkeypatch, capsys) -> None:
    """PyTorch re-raises a worker's error with the worker's traceback as its message (or as a
    RuntimeError when the type cannot be rebuilt): the command prints the original message."""
    import argparse

    from rsfm.data.io import UnsupportedImageError
    from rsfm.utils.errors import DataError

    path = "levir/label/train_412.png"
    error = (
        DataError(f"{path}: change mask values must be 0 (no change) or 255 (change), found [1]")
        if kind == "data_error"
        else UnsupportedImageError(path, "has 3 bands; data.bands asks for band 3")
    )
    loader = torch.utils.data.DataLoader(_FailingImages(error), num_workers=1)

    def command(args: argparse.Namespace, rest: list[str]) -> int:
        next(iter(loader))
        return 0

    parser = argparse.ArgumentParser(prog="rsfm")
    parser.set_defaults(func=command, command="finetune")
    monkeypatch.setattr("rsfm.cli.build_parser", lambda: parser)
    assert main([]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"rsfm finetune: error: {path}") and "worker" not in err and len(err.splitlines()) == 1
    assert ("found [1]" if kind == "data_error" else "data.bands asks for band 3") in err


def test_predict_refuses_an_input_given_twice(capsys) -> None:
    """argparse keeps the last of a repeated option: rsfm predict predicted the second file alone."""
    recipe = REPO / "configs" / "finetune" / "change_detection_levir.yaml"
    argv = ["predict", "--config", str(recipe), "--checkpoint", "x.ckpt", "--input", "a.png", "--input", "b.png"]
    with pytest.raises(SystemExit) as info:
        main([*argv, "--output", "o.tif"])
    assert info.value.code == 2
    assert (
        "--input given twice: a.png and b.png (two images of a change pair: --input before,after)"
        in capsys.readouterr().err
    )
