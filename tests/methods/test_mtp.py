"""MTP: one encoder pass over every subset, shared decoders with per-subset predictors, partial labels."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rsfm.data.multitask_module import MultiTaskDataModule
from rsfm.methods.base import StepContext
from rsfm.methods.mtp import MTP
from rsfm.models.encoders.vit import build_vit
from rsfm.models.export import export_encoder
from rsfm.utils.errors import ConfigError

ENCODER = {"class_path": "ViT", "init_args": {"size": "tiny", "patch_size": 16}}
NECK = {"class_path": "SimpleFeaturePyramid"}
#: CPU-sized decoders
HEADS = {
    "semantic": {"class_path": "UperNetHead", "init_args": {"channels": 16}},
    "instance": {
        "class_path": "MaskRCNNHead",
        "init_args": {
            "fpn_channels": 16,
            "fc_channels": 32,
            "mask_channels": 8,
            "mask_convs": 1,
            "box_batch_size_per_image": 32,
            "rpn_post_nms_top_n_train": 100,
        },
    },
    "rotated": {
        "class_path": "OrientedRCNNHead",
        "init_args": {"fpn_channels": 16, "fc_channels": 32, "roi_num_samples": 32, "rpn_proposals_train": 100},
    },
}


def subsets(datasets: Path) -> dict:
    return {
        "dota_isaid": {
            "class_path": "ISAIDDOTASource",
            "init_args": {"isaid_root": str(datasets / "isaid_dota"), "dota_root": str(datasets / "dota")},
        },
        "hituav": {
            "class_path": "RotatedBoxesSource",
            "init_args": {"layout": "hit_uav", "root": str(datasets / "hit_uav")},
        },
    }


@pytest.fixture(scope="module")
def data(datasets: Path) -> MultiTaskDataModule:
    dm = MultiTaskDataModule(subsets(datasets), crop_size=96, batch_size=2, crops_per_image=2, seed=0)
    dm.setup("fit")
    return dm


@pytest.fixture(scope="module")
def batch(data: MultiTaskDataModule) -> dict:
    """One real training step's batch: 2 crops of P0005 (all labels) and 2 HIT-UAV crops (boxes)."""
    return next(iter(data.train_dataloader()))[0]


def build(data: MultiTaskDataModule, **kwargs) -> MTP:
    info = data.info()
    args = {"encoder": ENCODER, "neck": NECK, "heads": HEADS, "subsets": info.subsets, "img_size": 96, **kwargs}
    return MTP(**args)


def test_info_lists_each_subsets_tasks_and_classes(data: MultiTaskDataModule) -> None:
    subs = data.info().subsets
    assert subs["dota_isaid"]["tasks"] == ["semantic", "instance", "rotated"]
    assert subs["hituav"]["tasks"] == ["rotated"]
    assert "small-vehicle" in subs["dota_isaid"]["classes"] and "Person" in subs["hituav"]["classes"]


def test_step_over_real_subsets(data: MultiTaskDataModule, batch: dict) -> None:
    assert set(batch) == {"dota_isaid", "hituav"}
    assert "mask" in batch["dota_isaid"] and "mask" not in batch["hituav"]
    torch.manual_seed(0)
    model = build(data)
    out = model.training_step(batch, StepContext(progress=0.0))
    # each task's loss per subset that carries it, nothing for labels a subset lacks
    assert {"semantic/dota_isaid", "instance/dota_isaid", "rotated/dota_isaid", "rotated/hituav"} <= set(out)
    assert "semantic/hituav" not in out and "instance/hituav" not in out
    assert torch.allclose(out["rotated"], out["rotated/dota_isaid"] + out["rotated/hituav"])
    assert torch.allclose(out["loss"], out["semantic"] + out["instance"] + out["rotated"])
    assert torch.isfinite(out["loss"])
    out["loss"].backward()
    enc = model.backbone.model.blocks[0].attn.qkv.weight.grad
    assert enc is not None and enc.abs().sum() > 0
    # the rotated decoder is shared; only the final predictors are per subset
    a, b = model.decoders["rotated"]["dota_isaid"], model.decoders["rotated"]["hituav"]
    assert a.fpn is b.fpn and a.rpn is b.rpn and a.roi_head.fc1 is b.roi_head.fc1
    assert a.roi_head.cls.out_features == len(data.info().subsets["dota_isaid"]["classes"]) + 1
    assert b.roi_head.cls.out_features == 5 + 1
    assert a.roi_head.cls.weight.grad.abs().sum() > 0 and b.roi_head.cls.weight.grad.abs().sum() > 0


def test_loss_weights_and_dropped_tasks(data: MultiTaskDataModule, batch: dict) -> None:
    torch.manual_seed(0)
    full = build(data).training_step(batch, StepContext(progress=0.0))
    torch.manual_seed(0)
    weighted = build(data, loss_weights={"semantic": 0.5}).training_step(batch, StepContext(progress=0.0))
    assert torch.allclose(weighted["semantic"], full["semantic"])
    assert torch.allclose(weighted["loss"], full["loss"] - 0.5 * full["semantic"])
    no_instance = build(data, heads={**HEADS, "instance": None})
    assert "instance" not in no_instance.decoders
    out = no_instance.training_step(batch, StepContext(progress=0.0))
    assert "instance" not in out and "semantic/dota_isaid" in out


def test_init_from_a_mim_export(tmp_path: Path, data: MultiTaskDataModule) -> None:
    vit = build_vit("tiny", img_size=64, patch_size=16)
    torch.nn.init.normal_(vit.blocks[3].mlp.fc1.weight)
    meta = {"arch": "vit", "size": "tiny", "img_size": 64, "patch_size": 16, "in_chans": 3}
    path = export_encoder(
        vit, tmp_path / "mim.safetensors", {**meta, "method": "SelectiveMAE", "mean": [0.3] * 3, "std": [0.2] * 3}
    )
    model = build(data, init=str(path))
    assert torch.equal(model.encoder.blocks[3].mlp.fc1.weight, vit.blocks[3].mlp.fc1.weight)
    assert model.input_stats == ([0.3] * 3, [0.2] * 3)  # normalise as the MIM run did
    meta_out = model.export_meta()
    assert meta_out["arch"] == "vit" and meta_out["init"] == str(path) and meta_out["init_method"] == "SelectiveMAE"
    assert "mean" not in meta_out and set(meta_out["subsets"]) == {"dota_isaid", "hituav"}


def test_bad_specifications_are_named(data: MultiTaskDataModule) -> None:
    with pytest.raises(ConfigError, match="model.subsets"):
        MTP(encoder=ENCODER, neck=NECK, heads=HEADS, subsets={})
    with pytest.raises(ConfigError, match="unknown tasks.*depth"):
        build(data, heads={"depth": {"class_path": "UperNetHead"}})
    with pytest.raises(ConfigError, match="SimpleFeaturePyramid"):
        build(data, neck=None)
    with pytest.raises(ConfigError, match="hituav"):
        build(data, heads={**HEADS, "rotated": None})


def test_one_crop_per_subset_needs_synchronised_batchnorm(data: MultiTaskDataModule) -> None:
    """Batch 1 trains semantics only with SyncBN over several devices (2 ranks without it: each
    rank's BatchNorm saw one crop and PyTorch's 'Expected more than 1 value per channel')."""
    model = build(data)
    with pytest.raises(ConfigError, match="per step on one device"):
        model.check_setup(1, 1)
    with pytest.raises(ConfigError, match="per step on each of 2 devices without SyncBN"):
        model.check_setup(1, 2)
    model.check_setup(2, 2)
    synced = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    synced.check_setup(1, 2)
    with pytest.raises(ConfigError, match="on one device"):
        synced.check_setup(1, 1)


def test_fsdp_wraps_the_shared_decoders_and_runs_a_bf16_step(data: MultiTaskDataModule, batch: dict, tmp_path) -> None:
    """rsfm's FSDP keeps MTP's shared decoder layers in their parent's unit and bf16-mixed as autocast.

    FSDP cannot make a module reachable by two paths its own unit (it crashed, "already wrapped",
    on the shared feature pyramid of the rotated heads); and Lightning's FSDP bf16 cast the
    parameters to bf16, which the detection heads' float32 region stage could not take ("Input
    type (float) and bias type (c10::BFloat16)"). One process (gloo) wraps the model here.
    """
    import torch.distributed as dist
    from lightning.pytorch.plugins.precision import FSDPPrecision
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    from rsfm.engine.trainer import AutocastFSDPPrecision, BlockFSDPStrategy, shared_modules

    torch.manual_seed(0)
    model = build(data)
    shared = shared_modules(model)
    a = model.decoders["rotated"]["dota_isaid"]  # its layers are hituav's too
    assert id(a.fpn) in shared and id(a.fpn.inner_blocks[0]) in shared and id(model) in shared
    assert id(model.backbone.model.blocks[0]) not in shared
    blocks = {id(block) for block in model.backbone.model.blocks}
    strategy = BlockFSDPStrategy()
    strategy.parallel_devices = [torch.device("cpu")]
    strategy.precision_plugin = FSDPPrecision("bf16-mixed")
    assert isinstance(strategy.precision_plugin, AutocastFSDPPrecision)
    assert strategy.mixed_precision_config is None  # the parameters stay float32
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        wrapped = strategy._setup_model(model)
        units = [m.module for m in wrapped.modules() if isinstance(m, FSDP) and m is not wrapped]
        assert blocks <= {id(u) for u in units}  # one unit per encoder block
        assert all(id(u) not in shared for u in units)
        # the step through the root unit's forward, as Lightning redirects it
        model.forward = lambda b: model.training_step(b, StepContext(progress=0.0))
        with strategy.precision_plugin.forward_context():
            out = wrapped(batch)
        assert torch.isfinite(out["loss"]) and {"rotated/hituav", "instance/dota_isaid"} <= set(out)
        out["loss"].backward()
        assert all(p.grad is not None for p in wrapped.parameters())
    finally:
        dist.destroy_process_group()
