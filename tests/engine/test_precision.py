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


def _two_steps(datasets: Path, monkeypatch, **trainer_kwargs) -> tuple[torch.optim.Optimizer, list[dict]]:
    """Two training steps of a tiny MAE on 8 real AID images; what each clipping call saw.

    Returns the optimiser and, per call of ``torch.nn.utils.clip_grad_norm_`` /
    ``clip_grad_value_``: the limit, the total gradient norm it was given, and the largest
    gradient norm and absolute value after it.
    """
    import lightning as L
    import numpy as np
    from PIL import Image

    from rsfm.data.base import DataInfo
    from rsfm.methods.module import PretrainTask

    calls: list[dict] = []
    for name in ("clip_grad_norm_", "clip_grad_value_"):
        real = getattr(torch.nn.utils, name)

        def spy(params, *a, _real=real, _name=name, **k):
            params = list(params)
            limit = a[0] if a else k.get("max_norm", k.get("clip_value"))
            before = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params])).item()
            out = _real(params, *a, **k)
            after = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params])).item()
            biggest = max(p.grad.abs().max().item() for p in params)
            calls.append({"fn": _name, "limit": float(limit), "before": before, "after": after, "max": biggest})
            return out

        monkeypatch.setattr(torch.nn.utils, name, spy)
    files = sorted((datasets / "aid" / "Beach").glob("*.jpg"))[:8]
    images = [
        torch.from_numpy(np.asarray(Image.open(f).convert("RGB").resize((32, 32)))).permute(2, 0, 1).float() / 255
        for f in files
    ]
    batches = [{"image": torch.stack(images[i : i + 4]), "index": torch.arange(i, i + 4)} for i in (0, 4)]
    spec = {"class_path": "MAE", "init_args": {"size": "tiny", "patch_size": 8}}
    optim = {"name": "adamw", "lr": 1e-4, "weight_decay": 0.05, "betas": [0.9, 0.95], "warmup_epochs": 0}
    task = PretrainTask(model=spec, optim=optim, data=DataInfo(num_channels=3, img_size=32).to_dict(), batch_size=4)
    trainer = L.Trainer(
        accelerator="cpu", devices=1, max_steps=2, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, **trainer_kwargs,
    )  # fmt: skip
    trainer.fit(task, torch.utils.data.DataLoader(batches, batch_size=None))
    return trainer.optimizers[0], calls


def test_fp16_with_a_loss_scaler_clips_unscaled_gradients_with_an_unfused_adamw(datasets: Path, monkeypatch) -> None:
    """A fused AdamW unscales fp16 gradients only inside its step: clipping needs the unfused one.

    A real fp16 loss scaler runs on the CPU here (Lightning turns ``16-mixed`` into bf16 on a CPU,
    so the plugin is given explicitly); the gradients clipped must be the unscaled ones.
    """
    from lightning.pytorch.plugins import MixedPrecision

    plugin = MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu", init_scale=2.0**16))
    optimizer, calls = _two_steps(datasets, monkeypatch, plugins=[plugin], gradient_clip_val=0.5)
    assert not optimizer.defaults["fused"]
    assert [c["limit"] for c in calls] == [0.5, 0.5]
    # unscaled: a tiny MAE's gradient norm is a few units, 65536 times that when still scaled
    assert all(0.5 < c["before"] < 100 and c["after"] <= 0.5 * 1.001 for c in calls), calls


@pytest.mark.parametrize("precision", ["bf16-mixed", "32-true"])
@pytest.mark.parametrize("algorithm", ["norm", "value"])
def test_runs_without_a_loss_scaler_keep_the_fused_adamw_and_clip(
    datasets: Path, monkeypatch, precision: str, algorithm: str
) -> None:
    """bf16 has no loss scaler: the gradients are final, and clipping them before the fused step is exact.

    Lightning refuses any fused optimiser under mixed precision, and rsfm clips itself then; in
    fp32 Lightning clips.
    """
    limit = 0.5 if algorithm == "norm" else 1e-3
    optimizer, calls = _two_steps(
        datasets, monkeypatch, precision=precision, gradient_clip_val=limit, gradient_clip_algorithm=algorithm
    )
    assert optimizer.defaults["fused"]
    assert [c["fn"] for c in calls] == [f"clip_grad_{algorithm}_"] * 2 and all(c["limit"] == limit for c in calls)
    if algorithm == "norm":
        assert all(c["before"] > limit and c["after"] <= limit * 1.001 for c in calls), calls
    else:
        assert all(c["max"] <= limit * (1 + 1e-6) for c in calls), calls  # float32 of 1e-3


def test_bf16_without_clipping_clips_nothing(datasets: Path, monkeypatch) -> None:
    optimizer, calls = _two_steps(datasets, monkeypatch, precision="bf16-mixed")
    assert optimizer.defaults["fused"] and calls == []
