"""The default precision and the hint that a CPU run could use bf16 (``rsfm.engine.precision``)."""

from pathlib import Path

import pytest
import torch

from rsfm.engine.precision import bf16_hint, cpu_bf16_units, default_precision
from rsfm.engine.trainer import build_trainer

ZEN4 = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni\n"
SAPPHIRE_RAPIDS = "flags\t\t: avx512f avx512_bf16 amx_bf16 amx_tile amx_int8\n"
OLDER = "flags\t\t: fpu sse2 avx2 fma\n"


@pytest.mark.parametrize(
    "cpuinfo, flag", [(ZEN4, "avx512_bf16"), (SAPPHIRE_RAPIDS, "amx_bf16"), (OLDER, None), ("", None)]
)
def test_cpu_bf16_units_reads_the_flags(tmp_path: Path, cpuinfo: str, flag: str | None) -> None:
    (tmp_path / "cpuinfo").write_text(cpuinfo)
    assert cpu_bf16_units(tmp_path / "cpuinfo") == flag


def test_no_cpuinfo_means_no_units(tmp_path: Path) -> None:
    assert cpu_bf16_units(tmp_path / "absent") is None


@pytest.mark.skipif(torch.cuda.is_available(), reason="the hint is for CPU-only machines")
def test_the_hint_names_the_setting_only_for_fp32_on_a_bf16_cpu(tmp_path: Path) -> None:
    (tmp_path / "zen4").write_text(ZEN4)
    (tmp_path / "older").write_text(OLDER)
    assert default_precision("cpu") == "32-true"
    hint = bf16_hint("32-true", tmp_path / "zen4")
    assert hint is not None and "avx512_bf16" in hint and "trainer.precision=bf16-mixed" in hint
    assert bf16_hint("bf16-mixed", tmp_path / "zen4") is None  # already chosen
    assert bf16_hint("32-true", tmp_path / "older") is None


@pytest.mark.skipif(torch.cuda.is_available(), reason="the hint is for CPU-only machines")
def test_a_fitting_trainer_left_at_fp32_says_it_once(tmp_path: Path, monkeypatch, caplog) -> None:
    import rsfm.engine.precision as precision

    monkeypatch.setattr(precision, "cpu_bf16_units", lambda *a: "avx512_bf16")
    with caplog.at_level("INFO"):
        build_trainer(tmp_path / "a", {"accelerator": "cpu", "devices": 1}, {})
        build_trainer(tmp_path / "b", {"accelerator": "cpu", "devices": 1, "precision": "32-true"}, {})
        build_trainer(tmp_path / "c", {"accelerator": "cpu", "devices": 1}, {}, fitting=False)
    said = [r.getMessage() for r in caplog.records if "bf16 matrix units" in r.getMessage()]
    assert len(said) == 1 and said[0].startswith("[rsfm] this CPU has bf16 matrix units (avx512_bf16)")


class _Trainer:
    """What :meth:`rsfm.training.TrainingModule.configure_optimizers` reads of a Lightning trainer."""

    def __init__(self, precision: str, gradient_clip_val: float | None) -> None:
        self.precision, self.gradient_clip_val = precision, gradient_clip_val
        self.world_size = self.accumulate_grad_batches = 1
        self.datamodule, self.estimated_stepping_batches, self.max_epochs = None, 10, 1
        self.is_global_zero, self.progress_bar_callback = True, None


@pytest.mark.parametrize(
    "precision, clip, fused",
    [("16-mixed", 5.0, False), ("bf16-mixed", 5.0, False), ("16-mixed", None, True), ("32-true", 5.0, True)],
)
def test_mixed_precision_with_clipping_builds_an_unfused_adamw(precision: str, clip: float | None, fused: bool) -> None:
    """Lightning refuses to clip for a fused AdamW under mixed precision; without clipping it stays fused."""
    from rsfm.data.base import DataInfo
    from rsfm.methods.module import PretrainTask

    spec = {"class_path": "MAE", "init_args": {"size": "tiny", "patch_size": 8}}
    optim = {"name": "adamw", "lr": 1e-4, "weight_decay": 0.05, "betas": [0.9, 0.95]}
    task = PretrainTask(model=spec, optim=optim, data=DataInfo(num_channels=3, img_size=32).to_dict(), batch_size=4)
    task.trainer = _Trainer(precision, clip)
    optimizer = task.configure_optimizers()["optimizer"]
    assert bool(optimizer.defaults["fused"]) is fused
