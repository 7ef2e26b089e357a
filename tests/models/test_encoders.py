"""Encoders (ViT, ResNet), the simple feature pyramid, and the encoder's optimiser groups."""

import pytest
import torch
from torch import nn

from rsfm.models.encoders import ResNet, ViT, evenly_spaced_blocks
from rsfm.models.necks import SimpleFeaturePyramid
from rsfm.optim import param_groups
from rsfm.utils.errors import ConfigError


@pytest.fixture(scope="module")
def crops(datasets) -> torch.Tensor:
    """Two real LoveDA crops ``(2, 3, 96, 128)`` in [0, 1] (not the encoders' nominal size)."""
    from rsfm.data.io import read_image

    image = read_image(datasets / "loveda" / "images_png" / "0.png").float() / 255
    return torch.stack([image[:, :96, :128], image[:, 500:596, 300:428]])


def test_evenly_spaced_blocks() -> None:
    assert evenly_spaced_blocks(12) == (3, 5, 7, 11)  # RVSA / MTP
    assert evenly_spaced_blocks(24) == (5, 11, 17, 23)
    assert evenly_spaced_blocks(8) == (1, 3, 5, 7)
    assert evenly_spaced_blocks(6, 2) == (2, 5)
    assert evenly_spaced_blocks(4) == (0, 1, 2, 3)
    with pytest.raises(ValueError, match="depth-3"):
        evenly_spaced_blocks(3)


@pytest.mark.parametrize(("patch", "strides"), [(16, [4, 8, 16, 32]), (8, [2, 4, 8, 16])])
def test_vit_intermediates_and_pyramid(crops: torch.Tensor, patch: int, strides: list[int], one_thread) -> None:
    enc = ViT("tiny", img_size=64, patch_size=patch)
    assert enc.out_indices == [3, 5, 7, 11] and enc.out_channels == [192] * 4 and enc.strides == [patch] * 4
    with torch.no_grad():
        maps = enc.forward_intermediates(crops)  # position embedding resampled to the 96 × 128 grid
    assert [tuple(m.shape) for m in maps] == [(2, 192, 96 // patch, 128 // patch)] * 4
    assert not torch.equal(maps[0], maps[-1])
    neck = SimpleFeaturePyramid()
    neck.build(enc.out_channels, enc.strides)
    assert neck.strides == strides and neck.out_channels == [192] * 4
    with torch.no_grad():
        pyramid = neck(maps)
    assert [tuple(p.shape) for p in pyramid] == [(2, 192, 96 // s, 128 // s) for s in strides]
    torch.testing.assert_close(pyramid[2], maps[2])  # stride p: the block's map itself


def test_vit_chosen_blocks_are_the_blocks_outputs(crops: torch.Tensor, one_thread) -> None:
    enc = ViT("tiny", img_size=64, patch_size=16, out_indices=[0, 11]).eval()
    assert enc.out_indices == [0, 11] and enc.strides == [16, 16]
    x = crops[:1, :, :64, :64]
    with torch.no_grad():
        first, last = enc.forward_intermediates(x)
        tokens = enc.model.patch_embed(x)
        tokens = enc.model._pos_embed(tokens)
        after0 = enc.model.blocks[0](tokens)  # no final norm on the maps (ViTDet)
    torch.testing.assert_close(first, after0[:, 1:].transpose(1, 2).reshape(1, 192, 4, 4))
    assert last.shape == (1, 192, 4, 4)


def test_simple_feature_pyramid_rejects_other_inputs() -> None:
    for channels, strides, match in (
        ([192] * 3, [16] * 3, "4 maps"),
        ([192] * 4, [4, 8, 16, 32], "one stride"),
        ([64, 128, 256, 512], [16] * 4, "one stride and width"),
        ([192] * 4, [14] * 4, "divisible by 4"),
    ):
        with pytest.raises(ConfigError, match=match):
            SimpleFeaturePyramid().build(channels, strides)


def test_resnet_stages_and_pooled_features(crops: torch.Tensor, one_thread) -> None:
    enc = ResNet("resnet18")
    assert enc.out_indices == [1, 2, 3, 4] and enc.strides == [4, 8, 16, 32]
    assert enc.out_channels == [64, 128, 256, 512] and enc.num_features == 512
    assert enc.meta == {"arch": "resnet18", "img_size": 224, "in_chans": 3, "method": "random-init"}
    enc.eval()
    with torch.no_grad():
        maps = enc.forward_intermediates(crops)
        pooled = enc.forward_pooled(crops)
    assert [tuple(m.shape) for m in maps] == [
        (2, c, 96 // s, 128 // s) for c, s in zip([64, 128, 256, 512], enc.strides, strict=True)
    ]
    assert pooled.shape == (2, 512)
    torch.testing.assert_close(pooled, maps[-1].mean((2, 3)))  # global average pooling of the last stage
    torch.testing.assert_close(enc(crops), pooled)
    two = ResNet("resnet18", out_indices=[2, 4])
    assert two.strides == [8, 32] and two.out_channels == [128, 512]
    with pytest.raises(ConfigError, match="not a timm ResNet"):
        ResNet("resnet7")


def test_vit_pooled_features_token_or_average(crops: torch.Tensor, one_thread) -> None:
    torch.manual_seed(0)
    token = ViT("tiny", img_size=64, patch_size=16).eval()
    avg = ViT("tiny", img_size=64, patch_size=16, global_pool="avg").eval()
    x = crops[:, :, :64, :64]
    with torch.no_grad():
        t, a = token.forward_pooled(x), avg.forward_pooled(x)
        feats = token.model.forward_features(x)  # (B, 1 + N, D) after the final norm
        tokens = avg.model.forward_features(x)  # no final norm: "avg" normalises the mean (fc_norm)
    assert t.shape == a.shape == (2, 192) and token.num_features == avg.num_features == 192
    torch.testing.assert_close(t, feats[:, 0])  # the class token
    torch.testing.assert_close(a, avg.model.fc_norm(tokens[:, 1:].mean(1)))  # the mean of the patch tokens
    torch.testing.assert_close(token(x), t)


@pytest.mark.parametrize("exported, wanted", [("token", "avg"), ("avg", "token")])
def test_export_loads_with_the_other_pooling(
    crops: torch.Tensor, tmp_path, exported: str, wanted: str, one_thread
) -> None:
    # an export pooled one way fine-tunes pooled the other (MAE fine-tunes its class-token encoder
    # with average pooling): the blocks load, the unused final norm is dropped and the new one
    # starts as MAE's does, weight 1 and bias 0
    from rsfm.models.encoders.vit import build_vit
    from rsfm.models.export import export_encoder

    torch.manual_seed(0)
    source = build_vit("tiny", img_size=64, patch_size=16, global_pool=exported)
    for p in source.parameters():
        p.data.add_(0.01 * torch.randn_like(p))  # every tensor, norms included, away from its init
    meta = {"arch": "vit", "size": "tiny", "img_size": 64, "patch_size": 16, "in_chans": 3, "global_pool": exported}
    path = export_encoder(source, tmp_path / "enc.safetensors", meta)
    enc = ViT(weights=str(path), global_pool=wanted).eval()
    assert enc.model.global_pool == wanted
    new_norm = enc.model.fc_norm if wanted == "avg" else enc.model.norm
    torch.testing.assert_close(new_norm.weight, torch.ones(192))
    torch.testing.assert_close(new_norm.bias, torch.zeros(192))
    for name, value in enc.model.blocks.state_dict().items():
        torch.testing.assert_close(value, source.blocks.state_dict()[name])
    x = crops[:, :, :64, :64]
    with torch.no_grad():
        tokens = source.blocks(source.norm_pre(source._pos_embed(source.patch_embed(x))))  # (B, 1 + N, D), no norm
        pooled = enc.forward_pooled(x)
    kept = tokens[:, 1:].mean(1) if wanted == "avg" else tokens[:, 0]
    torch.testing.assert_close(pooled, nn.functional.layer_norm(kept, (192,), eps=1e-6), rtol=1e-4, atol=1e-4)
    # the export's own pooling still loads its final norm as trained
    same = ViT(weights=str(path)).eval()
    trained = same.model.norm if exported == "token" else same.model.fc_norm
    torch.testing.assert_close(trained.weight, (source.norm if exported == "token" else source.fc_norm).weight)


def test_drop_pooling_removes_the_final_norm_only(crops: torch.Tensor, one_thread) -> None:
    enc = ViT("tiny", img_size=64, patch_size=16).eval()
    x = crops[:, :, :64, :64]
    with torch.no_grad():
        before = enc.forward_intermediates(x)
    enc.drop_pooling()
    assert isinstance(enc.model.norm, nn.Identity)
    assert not any("norm." in n and not n.startswith("model.blocks") for n, _ in enc.named_parameters())
    with torch.no_grad():
        after = enc.forward_intermediates(x)
    for b, a in zip(before, after, strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize(
    "make", [lambda: ViT("tiny", img_size=64, frozen=True), lambda: ResNet("resnet18", frozen=True)]
)
def test_frozen_encoder_stays_in_eval_mode(crops: torch.Tensor, make, one_thread) -> None:
    enc = make()
    enc.train()
    assert enc.training and not enc.model.training  # the module says train, the backbone stays eval
    assert not any(m.training for m in enc.model.modules())
    assert not any(p.requires_grad for p in enc.parameters())
    assert enc.param_groups(1e-3, 0.05, 0.75) == []
    state = {k: v.clone() for k, v in enc.state_dict().items()}
    enc(crops[:, :, :64, :64])
    for k, v in enc.state_dict().items():  # BatchNorm statistics frozen too
        assert torch.equal(v, state[k]), k


def test_vit_layer_decay_groups() -> None:
    enc = ViT("tiny", img_size=64, patch_size=16)
    groups = enc.param_groups(1e-3, 0.05, 0.75)
    lr_of = {id(p): g["lr"] for g in groups for p in g["params"]}
    wd_of = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    params = dict(enc.named_parameters())
    trainable = {n for n, p in params.items() if p.requires_grad}
    assert {n for n, p in params.items() if id(p) in lr_of} == trainable  # every trainable one, once
    assert sum(len(g["params"]) for g in groups) == len(trainable)
    # the position embedding trains (MAE's fine-tuning), at the stem's rate and without decay
    assert "model.pos_embed" in trainable
    assert lr_of[id(params["model.pos_embed"])] == pytest.approx(1e-3 * 0.75**12)
    assert wd_of[id(params["model.pos_embed"])] == 0.0
    fixed = ViT("tiny", img_size=64, patch_size=16, pos_embed="fixed")
    assert not fixed.model.pos_embed.requires_grad
    assert id(fixed.model.pos_embed) not in {id(p) for g in fixed.param_groups(1e-3, 0.05, 0.75) for p in g["params"]}
    with pytest.raises(ConfigError, match=r"model.encoder.pos_embed must be one of \('learn', 'fixed'\), got 'frozen'"):
        ViT("tiny", img_size=64, patch_size=16, pos_embed="frozen")
    # the last block (and the final norm) at the full rate, each earlier one 0.75 lower
    for i in range(12):
        assert lr_of[id(params[f"model.blocks.{i}.attn.qkv.weight"])] == pytest.approx(1e-3 * 0.75 ** (11 - i))
    assert lr_of[id(params["model.norm.weight"])] == pytest.approx(1e-3)
    assert lr_of[id(params["model.patch_embed.proj.weight"])] == pytest.approx(1e-3 * 0.75**12)
    assert lr_of[id(params["model.cls_token"])] == pytest.approx(1e-3 * 0.75**12)
    # no weight decay on norms, biases and the class token
    for name in ("model.cls_token", "model.norm.weight", "model.blocks.0.attn.qkv.bias", "model.blocks.3.norm1.weight"):
        assert wd_of[id(params[name])] == 0.0, name
    assert wd_of[id(params["model.blocks.0.mlp.fc1.weight"])] == 0.05
    # without layer decay: everything at lr
    assert {g["lr"] for g in enc.param_groups(1e-3, 0.05, None)} == {1e-3}
    assert {g["lr"] for g in enc.param_groups(1e-3, 0.05, 1.0)} == {1e-3}
    # a ResNet has no layers to decay
    assert {g["lr"] for g in ResNet("resnet18").param_groups(1e-3, 0.05, 0.75)} == {1e-3}


def test_task_model_groups_train_necks_and_heads_at_the_full_rate(loveda_batch) -> None:
    from rsfm.models.task_model import TaskModel

    _, info = loveda_batch
    model = TaskModel(
        {"class_path": "ViT", "init_args": {"size": "tiny", "img_size": 64}},
        {"seg": {"class_path": "FCNHead", "init_args": {"channels": 16}}},
        {"class_path": "SimpleFeaturePyramid"},
        info,
    )
    groups = param_groups(model, model.encoder, 1e-3, 0.05, 0.75)
    lr_of = {id(p): g["lr"] for g in groups for p in g["params"]}
    wd_of = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    assert len(lr_of) == sum(len(g["params"]) for g in groups) == sum(p.requires_grad for p in model.parameters())
    assert all(lr_of[id(p)] == 1e-3 for p in [*model.neck.parameters(), *model.heads.parameters()])
    assert wd_of[id(model.neck.fpn1[0].weight)] == 0.05 and wd_of[id(model.neck.fpn1[0].bias)] == 0.0
    assert min(lr_of.values()) == pytest.approx(1e-3 * 0.75**12)


def test_encoder_options_are_checked() -> None:
    with pytest.raises(ConfigError, match="size"):
        ViT("gigantic")
    with pytest.raises(ConfigError, match="multiple of patch_size"):
        ViT("tiny", img_size=60, patch_size=16)
