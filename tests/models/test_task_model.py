"""TaskModel: parts from specifications, sample-key checks, normalisation, shared encoder passes, extra bands."""

import dataclasses

import pytest
import torch

from rsfm.data.base import DataInfo
from rsfm.models.heads import UperNetHead
from rsfm.models.task_model import TaskModel, build_part, resolve_class
from rsfm.utils.errors import ConfigError
from rsfm.utils.registry import ENCODERS, HEADS

VIT = {"class_path": "ViT", "init_args": {"size": "tiny", "img_size": 64, "patch_size": 16}}
PYRAMID = {"class_path": "SimpleFeaturePyramid"}
FCN = {"class_path": "FCNHead", "init_args": {"channels": 16, "evaluate": True}}


def test_resolve_class_and_build_part() -> None:
    assert resolve_class("UperNetHead", HEADS, "model.heads.seg") is UperNetHead
    assert resolve_class("rsfm.models.heads.UperNetHead", HEADS, "model.heads.seg") is UperNetHead
    with pytest.raises(ConfigError, match=r"model.heads.seg.class_path: 'UperNet2'"):
        resolve_class("UperNet2", HEADS, "model.heads.seg")
    with pytest.raises(ConfigError, match="class_path"):
        resolve_class("no.such.Module", HEADS, "model.heads.seg")
    head = build_part({"class_path": "UperNetHead", "init_args": {"channels": 8}}, HEADS, "model.heads.seg")
    assert isinstance(head, UperNetHead) and head.channels == 8
    # values the data decides fill only arguments the class takes and the recipe left None
    enc = build_part({"class_path": "ResNet", "init_args": {"name": "resnet18"}}, ENCODERS, "model.encoder", in_chans=4)
    assert enc.model.conv1.in_channels == 4
    enc = build_part(
        {"class_path": "ResNet", "init_args": {"name": "resnet18", "in_chans": 3}},
        ENCODERS,
        "model.encoder",
        in_chans=4,
    )
    assert enc.model.conv1.in_channels == 3
    with pytest.raises(ConfigError, match=r"model.heads.seg: UperNetHead: .*unexpected keyword"):
        build_part({"class_path": "UperNetHead", "init_args": {"chanels": 8}}, HEADS, "model.heads.seg")
    with pytest.raises(ConfigError, match="class_path"):
        build_part({"init_args": {}}, HEADS, "model.heads.seg")


def test_a_head_reading_keys_the_data_lacks_is_a_config_error(loveda_batch, levir_batch) -> None:
    _, seg_info = loveda_batch
    _, change_info = levir_batch
    unlabeled = dataclasses.replace(seg_info, sample_keys=("image",))
    with pytest.raises(ConfigError, match=r"model.heads.seg \(UperNetHead\) reads sample keys \['mask'\]"):
        TaskModel(VIT, {"seg": {"class_path": "UperNetHead"}}, PYRAMID, unlabeled)
    with pytest.raises(ConfigError, match=r"\['image_a', 'image_b'\]"):
        TaskModel(VIT, {"change": {"class_path": "ChangeHead"}}, PYRAMID, seg_info)
    with pytest.raises(ConfigError, match=r"\['image', 'label'\]"):
        TaskModel(VIT, {"cls": {"class_path": "ClassificationHead"}}, None, change_info)
    with pytest.raises(ConfigError, match=r"\['boxes', 'labels'\]"):
        TaskModel(VIT, {"det": {"class_path": "FasterRCNNHead"}}, PYRAMID, seg_info)
    with pytest.raises(ConfigError, match="at least one head"):
        TaskModel(VIT, {}, PYRAMID, seg_info)
    with pytest.raises(ConfigError, match="model.encoder.class_path"):
        TaskModel({"class_path": "Swin"}, {"seg": FCN}, PYRAMID, seg_info)


def test_normalisation_and_one_encoder_pass_for_all_heads(loveda_batch, one_thread) -> None:
    batch, info = loveda_batch
    model = TaskModel(
        VIT, {"seg": {"class_path": "UperNetHead", "init_args": {"channels": 16}}, "aux": FCN}, PYRAMID, info
    )
    assert model.mean_std == (info.mean, info.std) and model.mean.shape == (1, 3, 1, 1)
    x = batch["image"]
    torch.testing.assert_close(
        model.normalise(x), (x - torch.tensor(info.mean)[:, None, None]) / torch.tensor(info.std)[:, None, None]
    )
    assert isinstance(model.encoder.model.norm, torch.nn.Identity)  # no pooled head: pooling dropped
    calls = []
    model.encoder.model.patch_embed.register_forward_hook(lambda m, a, o: calls.append(a[0].shape[0]))
    model.eval()
    with torch.no_grad():
        feats = model.features(batch)
        out = model(batch)
    assert calls == [4, 4]  # one encoder pass per call, shared by both heads
    assert [len(m) for m in feats.maps.values()] == [4] and feats.shape == (64, 64) and feats.sizes == [(64, 64)] * 4
    assert set(out) == {"seg", "aux"} and out["seg"].shape == (4, 7, 64, 64)
    assert not feats.pooled


def test_change_pairs_share_one_batched_encoder_pass(levir_batch, one_thread) -> None:
    batch, info = levir_batch
    model = TaskModel(
        VIT, {"change": {"class_path": "ChangeHead", "init_args": {"channels": 16}}}, PYRAMID, info
    ).eval()
    seen = []
    model.encoder.model.patch_embed.register_forward_hook(lambda m, a, o: seen.append(a[0].shape[0]))
    with torch.no_grad():
        feats = model.features(batch)
    assert seen == [8]  # both dates of 4 pairs in one pass (BatchNorm sees both)
    assert set(feats.maps) == {"image_a", "image_b"}
    with torch.no_grad():
        alone = model.pyramid(model.normalise(batch["image_a"]))
    for a, b in zip(feats.maps["image_a"], alone, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_list_batches_of_different_sizes_are_padded(nepu_batch, one_thread) -> None:
    batch, info = nepu_batch
    model = TaskModel(VIT, {"det": {"class_path": "FasterRCNNHead", "init_args": {"fpn_channels": 16}}}, PYRAMID, info)
    images = [batch["image"][0], batch["image"][1][:, :70, :90]]
    with torch.no_grad():
        feats = model.features({"image": images})
    assert feats.sizes == [(96, 96), (70, 90)] and feats.shape == (96, 96)  # padded to a multiple of 32
    assert feats.maps["image"][0].shape == (2, 192, 24, 24)
    # a patch that does not divide 32 (14): list batches pad to a multiple of both
    vit14 = {"class_path": "ViT", "init_args": {"size": "tiny", "img_size": 56, "patch_size": 14}}
    det = {"det": {"class_path": "FasterRCNNHead", "init_args": {"fpn_channels": 16}}}
    model = TaskModel(vit14, det, None, info)
    with torch.no_grad():
        feats = model.features({"image": images})
    assert model.size_divisor == 224 and feats.shape == (224, 224) and feats.sizes == [(96, 96), (70, 90)]


def _four_bands(image: torch.Tensor) -> torch.Tensor:
    """A real RGB crop plus a fourth band (their mean, as a panchromatic band)."""
    return torch.cat([image, image.mean(1, keepdim=True)], dim=1)


@pytest.mark.parametrize(
    "encoder",
    [VIT, {"class_path": "ResNet", "init_args": {"name": "resnet18"}}],
    ids=["vit", "resnet"],
)
def test_four_band_data_runs_through_vit_and_resnet(loveda_batch, encoder, one_thread) -> None:
    batch, info = loveda_batch
    info4 = dataclasses.replace(info, num_channels=4, mean=[0.3, 0.35, 0.3, 0.32], std=[0.2, 0.2, 0.18, 0.19])
    neck = PYRAMID if encoder["class_path"] == "ViT" else None  # a CNN's stages are a pyramid already
    model = TaskModel(encoder, {"seg": {"class_path": "UperNetHead", "init_args": {"channels": 16}}}, neck, info4)
    assert model.mean.shape == model.std.shape == (1, 4, 1, 1)
    assert model.encoder.meta["in_chans"] == 4
    four = {**batch, "image": _four_bands(batch["image"])}
    loss = model.heads["seg"].loss(model.features(four), four)["ce"]
    assert torch.isfinite(loss)
    loss.backward()
    first = model.encoder.model.patch_embed.proj if encoder["class_path"] == "ViT" else model.encoder.model.conv1
    assert first.in_channels == 4 and first.weight.grad is not None and first.weight.grad[:, 3].abs().sum() > 0
    model.eval()
    with torch.no_grad():
        pred = model.heads["seg"].predict(model, four)
    assert pred.shape == (4, 64, 64)
    with pytest.raises(RuntimeError):
        model.features(batch)  # 3-band images do not fit a 4-band model


def test_an_export_s_statistics_win_over_the_data_s(loveda_batch, tmp_path) -> None:
    from rsfm.models.encoders import build_vit
    from rsfm.models.export import export_encoder

    _, info = loveda_batch
    meta = {"arch": "vit", "size": "tiny", "img_size": 64, "patch_size": 16, "in_chans": 3}
    path = export_encoder(
        build_vit("tiny", img_size=64), tmp_path / "e.safetensors", {**meta, "mean": [0.5] * 3, "std": [0.25] * 3}
    )
    enc = {"class_path": "ViT", "init_args": {"weights": str(path)}}
    model = TaskModel(enc, {"seg": FCN}, PYRAMID, info)
    assert model.mean_std == ([0.5] * 3, [0.25] * 3)
    # 4-band data: the export's RGB statistics do not apply, the data's do (and the stem is adapted)
    info4 = dataclasses.replace(info, num_channels=4, mean=[0.3] * 4, std=[0.2] * 4)
    model = TaskModel(enc, {"seg": FCN}, PYRAMID, info4)
    assert model.mean_std == ([0.3] * 4, [0.2] * 4) and model.encoder.model.patch_embed.proj.in_channels == 4
    plain = DataInfo(classes=["a", "b"], sample_keys=("image", "mask"), crop_size=64)
    assert TaskModel(enc, {"seg": FCN}, PYRAMID, plain).mean_std == ([0.5] * 3, [0.25] * 3)


def test_fpn_neck_gives_a_resnet_pyramid_one_width(loveda_batch, one_thread) -> None:
    batch, info = loveda_batch
    resnet = {"class_path": "ResNet", "init_args": {"name": "resnet18"}}
    fpn = {"class_path": "FPN", "init_args": {"out_channels": 32, "extra_pool": True}}
    model = TaskModel(resnet, {"seg": {"class_path": "UperNetHead", "init_args": {"channels": 16}}}, fpn, info)
    assert model.neck.strides == [4, 8, 16, 32, 64] and model.neck.out_channels == [32] * 5
    features = model.features(batch)
    assert [tuple(m.shape[1:]) for m in features.maps["image"]] == [(32, 64 // s, 64 // s) for s in (4, 8, 16, 32, 64)]
    sum(model.heads["seg"].loss(features, batch).values()).backward()
    assert model.neck.fpn.inner_blocks[0][0].weight.grad.abs().sum() > 0
    with pytest.raises(ConfigError, match="FPN takes maps at increasing strides.*SimpleFeaturePyramid"):
        TaskModel(VIT, {"seg": FCN}, {"class_path": "FPN"}, info)
