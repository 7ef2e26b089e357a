"""FSDP pretraining by transformer block, two CPU processes (gloo): train, export, resume.

torch's FSDP runs on CPUs with the gloo backend; Lightning's own ``"fsdp"`` refuses the CPU,
rsfm's :class:`~rsfm.engine.trainer.BlockFSDPStrategy` does not, so the whole path (wrapping,
checkpoints gathered on rank 0, resume, encoder export) is tested here without a GPU.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from engine_helpers import PRETRAIN, REPO, assert_same_weights, checkpoint

from rsfm.engine.trainer import FSDP_STRATEGIES, BlockFSDPStrategy, block_types, build_trainer

#: a script that pretrains from a recipe and overrides, raising after optimiser step ``argv[1]`` (0: never)
DRIVER = """
import sys

import lightning as L

from rsfm.engine.config import load_recipe
from rsfm.engine.run import pretrain


class CrashAt(L.Callback):
    def __init__(self, step):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, *args):
        if trainer.global_step == self.step:
            raise RuntimeError(f"killed after step {self.step}")


crash = int(sys.argv[1])
pretrain(load_recipe("pretrain", sys.argv[2], sys.argv[3:]), callbacks=[CrashAt(crash)] if crash else [])
"""


def test_block_types_are_the_vit_blocks() -> None:
    from timm.layers import Mlp
    from timm.models.vision_transformer import Block

    from rsfm.methods.mae import MAE
    from rsfm.methods.selective_mae import CrossAttentionBlock, ReleasedCrossAttentionBlock, SelectiveMAE

    assert block_types(MAE("tiny", img_size=32, patch_size=8, decoder_depth=1)) == {Block}
    for decoder, block in (("rsfm", CrossAttentionBlock), ("released", ReleasedCrossAttentionBlock)):
        method = SelectiveMAE("tiny", img_size=32, patch_size=8, decoder_depth=1, decoder=decoder)
        assert block_types(method) == {Block, block}
    assert block_types(Mlp(8, 16)) == set()


def test_fsdp_names_build_the_block_strategy(tmp_path: Path) -> None:
    for name, checkpointing in FSDP_STRATEGIES.items():
        trainer = build_trainer(
            tmp_path, {"accelerator": "cpu", "devices": 2, "strategy": name, "enable_progress_bar": False}, {}
        )
        strategy = trainer.strategy
        assert isinstance(strategy, BlockFSDPStrategy)
        assert strategy.activation_checkpointing is checkpointing
        assert strategy.num_processes == 2 and strategy.root_device.type == "cpu"
        assert str(strategy.sharding_strategy).endswith("FULL_SHARD")
    # other strategies are Lightning's, untouched
    plain = build_trainer(tmp_path, {"accelerator": "cpu", "devices": 1, "strategy": "auto"}, {}, fitting=False)
    assert not isinstance(plain.strategy, BlockFSDPStrategy)


def test_block_strategy_refuses_policies_of_its_own() -> None:
    with pytest.raises(TypeError, match="auto_wrap_policy"):
        BlockFSDPStrategy(auto_wrap_policy={torch.nn.Linear})


def pretrain_fsdp(out: Path, images: Path, crash: int = 0, *extra: str) -> subprocess.CompletedProcess:
    """Two-process FSDP pretraining of a tiny SelectiveMAE (3 steps an epoch, 2 epochs) into ``out/run``.

    The gradient norm is clipped (at 5.0, as MTP's recipes clip): Lightning refuses norm clipping
    under FSDP, rsfm clips over all ranks' shards (:meth:`rsfm.training.TrainingModule.configure_gradient_clipping`).
    """
    script = out.parent / "driver.py"
    script.write_text(DRIVER)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable, str(script), str(crash), str(PRETRAIN / "selective_mae_vit_tiny.yaml"),
        f"data.init_args.root={images}", f"output_dir={out}", "run_name=run", "data.init_args.img_size=32",
        "data.init_args.batch_size=2", "data.init_args.num_workers=0", "data.init_args.test_fraction=0",
        "model.init_args.patch_size=8", "model.init_args.decoder_depth=2", "trainer.accelerator=cpu",
        "trainer.devices=2", "trainer.strategy=fsdp", "trainer.max_epochs=2", "trainer.limit_train_batches=3",
        "trainer.enable_progress_bar=false", "checkpoint.every_n_train_steps=2", "viz.num_images=2",
        "evaluate.enabled=false", "trainer.gradient_clip_val=5.0", *extra,
    ]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=REPO)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory, datasets: Path) -> Path:
    """16 real AID images of two classes, copied."""
    root = tmp_path_factory.mktemp("aid")
    for name in ("Beach", "Forest"):
        (root / name).mkdir()
        for src in sorted((datasets / "aid" / name).glob("*.jpg"))[:8]:
            shutil.copy(src, root / name / src.name)
    return root


@pytest.fixture(scope="module")
def resumed(tmp_path_factory: pytest.TempPathFactory, images: Path) -> tuple[Path, str]:
    """A run killed after step 3 (last checkpoint: step 2, mid-epoch) and rerun to its end."""
    out = tmp_path_factory.mktemp("resumed")
    crashed = pretrain_fsdp(out, images, crash=3)
    assert crashed.returncode != 0 and "killed after step 3" in crashed.stderr, crashed.stderr[-3000:]
    assert checkpoint(out / "run" / "checkpoints" / "last.ckpt")["global_step"] == 2
    proc = pretrain_fsdp(out, images)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    return out / "run", log


def test_fsdp_pretrain_resumes_and_exports_full_weights(resumed: tuple[Path, str]) -> None:
    from safetensors.torch import load_file

    from rsfm.methods.module import PretrainTask
    from rsfm.optim import param_groups

    run, log = resumed
    assert "distributed_backend=gloo" in log and "Starting with 2 processes" in log
    assert "resuming from" in log
    # reconstruction figures: every rank ran the sharded forward, rank 0 drew them
    assert sorted(p.name for p in (run / "figures").glob("*.png")) == [
        "reconstruction_epoch002.png",
        "reconstruction_final.png",
    ]
    last = checkpoint(run / "checkpoints" / "last.ckpt")
    stopped = checkpoint(run / "checkpoints" / "epoch000-step000002.ckpt")
    assert last["global_step"] == 6
    # full, unsharded weights under the plain model's names, that moved since the resume
    module = PretrainTask(**last["hyper_parameters"])
    own = module.state_dict()
    assert set(last["state_dict"]) == set(own)
    assert all(last["state_dict"][k].shape == own[k].shape for k in own)
    moved = [k for k, v in last["state_dict"].items() if not torch.equal(v, stopped["state_dict"][k])]
    assert moved
    # the encoder export is the final full encoder
    encoder = load_file(str(run / "encoder.safetensors"))
    prefix = "model.encoder."
    final = {k[len(prefix) :]: v for k, v in last["state_dict"].items() if k.startswith(prefix)}
    assert_same_weights(encoder, {k: v for k, v in final.items() if not k.startswith("head.")})
    # weight decay as without FSDP (no decay on 1-D tensors): the groups saw the real shapes
    groups = param_groups(module.model, None, 1e-3, 0.05)
    saved = last["optimizer_states"][0]
    assert [len(g["params"]) for g in saved["param_groups"]] == [len(g["params"]) for g in groups]
    assert [g["weight_decay"] for g in saved["param_groups"]] == [0.05, 0.0]
    # optimiser state in torch's own format, with full shapes, and AdamW's two moments distinct
    flat = [p for g in groups for p in g["params"]]
    for i, state in saved["state"].items():
        assert state["exp_avg"].shape == flat[i].shape
    assert not all(torch.equal(s["exp_avg"], s["exp_avg_sq"]) for s in saved["state"].values())


@pytest.mark.slow
def test_fsdp_resume_is_bit_identical(resumed: tuple[Path, str], images: Path, tmp_path: Path) -> None:
    proc = pretrain_fsdp(tmp_path, images)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    a = checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")
    b = checkpoint(resumed[0] / "checkpoints" / "last.ckpt")
    assert a["global_step"] == b["global_step"] == 6
    assert_same_weights(a["state_dict"], b["state_dict"])
    for i, state in a["optimizer_states"][0]["state"].items():
        assert_same_weights(state, b["optimizer_states"][0]["state"][i])


# two processes compiling their steps: about 2.5 minutes
@pytest.mark.slow
def test_compiled_steps_train_under_ddp(images: Path, tmp_path: Path) -> None:
    """``trainer.compile`` under DDP (FSDP refuses it: ``tests/engine/test_config.py``)."""
    proc = pretrain_fsdp(tmp_path, images, 0, "trainer.strategy=ddp", "trainer.compile=true")
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert "Starting with 2 processes" in log and "FSDP" not in log
    last = checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert last["global_step"] == 6
    assert all(torch.isfinite(v).all() for v in last["state_dict"].values() if v.is_floating_point())
    assert not any("_compiled" in k for k in last["state_dict"])
    assert (tmp_path / "run" / "encoder.safetensors").is_file()


@pytest.mark.slow
def test_fsdp_clips_the_norm_over_all_shards_as_ddp_does(images: Path, tmp_path: Path) -> None:
    """One clipped SGD step (lr 1000, clip 1e-3) moves the weights by the same vector under FSDP as under DDP.

    With plain SGD the step is ``lr`` times the clipped gradient, so the weights after it show the
    clipping exactly. Each rank clipping its own shard (``torch.nn.utils.clip_grad_norm_`` under
    FSDP) would scale every shard by its own norm: steps of 1 in norm, off by a large fraction.
    """
    one_step = (
        "optim.name=sgd", "optim.lr=1000", "optim.blr=null", "optim.momentum=0", "optim.weight_decay=0",
        "optim.warmup_epochs=0", "trainer.max_epochs=1", "trainer.limit_train_batches=1",
        "trainer.gradient_clip_val=1e-3", "checkpoint.every_n_train_steps=1",
    )  # fmt: skip
    finals = {}
    for name, strategy, lr in (("start", "ddp", "optim.lr=0"), ("ddp", "ddp", ""), ("fsdp", "fsdp", "")):
        proc = pretrain_fsdp(tmp_path / name, images, 0, f"trainer.strategy={strategy}", *one_step, *filter(None, [lr]))
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
        finals[name] = checkpoint(tmp_path / name / "run" / "checkpoints" / "last.ckpt")["state_dict"]
    start = {k: v for k, v in finals.pop("start").items() if v.is_floating_point()}
    ddp = torch.cat([(finals["ddp"][k] - start[k]).flatten() for k in start])
    fsdp = torch.cat([(finals["fsdp"][k] - start[k]).flatten() for k in start])
    assert ddp.norm().item() == pytest.approx(1.0, rel=1e-3)  # lr x clip: the step was clipped
    assert (fsdp - ddp).norm().item() < 1e-4 * ddp.norm().item()


@pytest.mark.slow
def test_mtp_trains_and_resumes_under_fsdp_in_bf16(tmp_path: Path) -> None:
    """MTP's recipe (shared decoders, detection heads with a float32 region stage, clipping) on 2 FSDP processes.

    Before: FSDP crashed wrapping the shared feature pyramid twice ("already wrapped"), then the
    float32 region stage met Lightning's bf16 FSDP parameters, then the shared parameters did not
    fit the gathered state.
    """
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    base = [
        sys.executable, "-m", "rsfm.cli", "pretrain", "--config", str(PRETRAIN / "mtp_vit_tiny.yaml"),
        "model.init_args.init=null", f"output_dir={tmp_path}", "run_name=run", "data.init_args.crop_size=96",
        "trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=fsdp", "trainer.precision=bf16-mixed",
        "trainer.limit_train_batches=2", "trainer.enable_progress_bar=false",
    ]  # fmt: skip
    for epochs in (1, 2):
        proc = subprocess.run(
            [*base, f"trainer.max_epochs={epochs}"], capture_output=True, text=True, env=env, timeout=900, cwd=REPO
        )
        log = proc.stdout + proc.stderr
        assert proc.returncode == 0, log[-4000:]
    assert "resuming from" in log
    last = checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert last["global_step"] == 4
    assert all(torch.isfinite(v).all() for v in last["state_dict"].values() if v.is_floating_point())
    assert (tmp_path / "run" / "encoder.safetensors").is_file()


def test_mixed_precision_plugins_become_autocast_over_float32_parameters(tmp_path: Path) -> None:
    """``*-mixed`` under rsfm's FSDP: float32 parameters, autocast; fp16's scaler kept; CPU fp16 runs bf16."""
    import torch.distributed as dist
    from lightning.pytorch.plugins.precision import FSDPPrecision
    from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

    from rsfm.engine.trainer import AutocastFSDPPrecision
    from rsfm.methods.mae import MAE

    for precision in ("16-mixed", "bf16-mixed", "32-true"):
        strategy = BlockFSDPStrategy()
        strategy.parallel_devices = [torch.device("cpu")]
        strategy.precision_plugin = FSDPPrecision(precision)  # what Lightning's connector hands over
        plugin = strategy.precision_plugin
        assert isinstance(plugin, AutocastFSDPPrecision) is (precision != "32-true")
        assert plugin.precision == precision
        assert isinstance(plugin.scaler, ShardedGradScaler) is (precision == "16-mixed")  # it crashed here
        if precision == "32-true":
            continue
        assert strategy.mixed_precision_config is None
        dist.init_process_group("gloo", init_method=f"file://{tmp_path / precision}", rank=0, world_size=1)
        try:
            strategy._setup_model(MAE("tiny", img_size=32, patch_size=8, decoder_depth=1))
        finally:
            dist.destroy_process_group()
        # on a CPU: bf16 autocast, no scaler (CPUs have no fp16 loss scaling; Lightning does the same)
        assert (plugin.device_type, plugin.precision, plugin.scaler) == ("cpu", "bf16-mixed", None)
        with plugin.forward_context():
            assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
