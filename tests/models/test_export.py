"""Encoder files: export round trips, encoders built from them, band adaptation, refusals."""

import json
import math
from pathlib import Path

import pytest
import torch

from rsfm.models.encoders import ResNet, ViT, build_vit
from rsfm.models.export import (
    adapt_input_channels,
    export_encoder,
    load_encoder,
    mismatch_summary,
    non_finite_tensors,
    read_encoder_meta,
)
from rsfm.utils.errors import CheckpointError, ConfigError

VIT_META = {"arch": "vit", "size": "tiny", "img_size": 64, "patch_size": 16, "in_chans": 3, "method": "mae"}


@pytest.fixture(scope="module")
def rgb(datasets) -> torch.Tensor:
    """A real LoveDA crop ``(1, 3, 64, 64)`` in [0, 1]."""
    from rsfm.data.io import read_image

    return (read_image(datasets / "loveda" / "images_png" / "1.png").float() / 255)[None, :, 200:264, 300:364]


@pytest.fixture(scope="module")
def vit_file(tmp_path_factory) -> tuple[Path, torch.nn.Module]:
    torch.manual_seed(0)
    enc = build_vit("tiny", img_size=64, patch_size=16, num_classes=5)  # with a classifier: not exported
    path = export_encoder(
        enc, tmp_path_factory.mktemp("export") / "vit.safetensors", {**VIT_META, "mean": [0.4] * 3, "std": [0.2] * 3}
    )
    return path, enc


def test_vit_round_trip_keeps_weights_and_meta(vit_file, rgb: torch.Tensor) -> None:
    path, enc = vit_file
    meta = read_encoder_meta(path)
    assert meta == {**VIT_META, "mean": [0.4] * 3, "std": [0.2] * 3}
    loaded = load_encoder(path)
    assert loaded.rsfm_meta == meta and loaded.num_classes == 0
    state = loaded.state_dict()
    assert not any(k.startswith("head.") for k in state)
    for k, v in state.items():
        assert torch.equal(v, enc.state_dict()[k]), k
    enc.eval(), loaded.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded.forward_features(rgb), enc.forward_features(rgb))
    assert load_encoder(path, num_classes=7).head.out_features == 7  # a new, random classifier


def test_encoders_built_from_an_export(vit_file, tmp_path: Path) -> None:
    path, enc = vit_file
    # the export's architecture wins over the arguments
    vit = ViT(size="base", img_size=224, weights=str(path), frozen=True)
    assert vit.meta["size"] == "tiny" and vit.meta["weights"] == str(path) and vit.meta["mean"] == [0.4] * 3
    assert vit.model.embed_dim == 192 and vit.patch_size == 16
    assert torch.equal(vit.model.blocks[3].mlp.fc1.weight, enc.blocks[3].mlp.fc1.weight)
    assert not any(p.requires_grad for p in vit.parameters())
    # a ResNet export
    import timm

    torch.manual_seed(0)
    cnn = timm.create_model("resnet18", pretrained=False, num_classes=0)
    rpath = export_encoder(cnn, tmp_path / "r18.safetensors", {"arch": "resnet18", "img_size": 64, "in_chans": 3})
    res = ResNet(name="resnet50", weights=str(rpath))
    assert res.meta["arch"] == "resnet18" and res.out_channels == [64, 128, 256, 512]
    assert torch.equal(res.model.layer2[0].conv1.weight, cnn.layer2[0].conv1.weight)
    # the wrong class for the file's architecture
    with pytest.raises(ConfigError, match="class_path: ResNet"):
        ViT(weights=str(rpath))
    with pytest.raises(ConfigError, match="class_path: ViT"):
        ResNet(weights=str(path))


def test_unreadable_or_foreign_files_are_checkpoint_errors(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    with pytest.raises(CheckpointError, match="not found"):
        read_encoder_meta(tmp_path / "missing.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="not a safetensors"):
        read_encoder_meta(tmp_path / "junk.safetensors")
    save_file({"w": torch.zeros(2)}, tmp_path / "plain.safetensors")
    with pytest.raises(CheckpointError, match="rsfm"):
        read_encoder_meta(tmp_path / "plain.safetensors")
    save_file({"w": torch.zeros(2)}, tmp_path / "swin.safetensors", metadata={"rsfm": json.dumps({"arch": "swin"})})
    with pytest.raises(CheckpointError, match="unsupported encoder arch"):
        load_encoder(tmp_path / "swin.safetensors")
    no_size = {k: v for k, v in VIT_META.items() if k != "size"}
    save_file({"w": torch.zeros(2)}, tmp_path / "old.safetensors", metadata={"rsfm": json.dumps(no_size)})
    with pytest.raises(CheckpointError, match="lacks.*size"):
        load_encoder(tmp_path / "old.safetensors")
    save_file({"w": torch.zeros(2)}, tmp_path / "wrong.safetensors", metadata={"rsfm": json.dumps(VIT_META)})
    with pytest.raises(CheckpointError, match="do not fit"):
        load_encoder(tmp_path / "wrong.safetensors")
    with pytest.raises(KeyError, match="img_size"):
        export_encoder(build_vit("tiny", img_size=32), tmp_path / "x.safetensors", {"arch": "vit", "size": "tiny"})


def test_export_refuses_non_finite_weights(tmp_path: Path) -> None:
    enc = build_vit("tiny", img_size=32, patch_size=16)
    with torch.no_grad():
        enc.blocks[2].mlp.fc1.weight[0, 0] = math.nan
        enc.blocks[5].attn.proj.bias[1] = math.inf
    assert non_finite_tensors(enc.state_dict()) == ["blocks.2.mlp.fc1.weight", "blocks.5.attn.proj.bias"]
    target = tmp_path / "diverged.safetensors"
    with pytest.raises(CheckpointError, match="NaN or infinite") as err:
        export_encoder(enc, target, {**VIT_META, "img_size": 32})
    assert "blocks.2.mlp.fc1.weight" in str(err.value)
    assert not target.exists()  # nothing written, not even a partial file
    assert non_finite_tensors({"steps": torch.tensor([1, 2]), "note": "x", "ok": torch.ones(2)}) == []


def test_adapt_input_channels_3_over_c_rule() -> None:
    torch.manual_seed(0)
    w = torch.randn(8, 3, 4, 4)
    assert adapt_input_channels(w, 3) is w
    six = adapt_input_channels(w, 6)  # a multiple of 3: the RGB filters repeated, times 3/6
    torch.testing.assert_close(six, torch.cat([w, w], 1) * 0.5)
    nine = adapt_input_channels(w, 9)
    torch.testing.assert_close(nine, torch.cat([w, w, w], 1) / 3)
    torch.testing.assert_close(adapt_input_channels(w, 1), w.sum(1, keepdim=True))
    for c in (2, 4, 5, 7):
        out = adapt_input_channels(w, c)
        assert out.shape == (8, c, 4, 4) and out.dtype == w.dtype
        torch.testing.assert_close(out.sum(1), w.sum(1))  # the filters sum to the RGB filters' sum
        # beyond the 3/C repeats, every band is shifted by the same amount
        shift = out - torch.cat([w] * 3, 1)[:, :c] * (3 / c)
        torch.testing.assert_close(shift, shift[:, :1].expand_as(shift))
    with pytest.raises(ValueError, match="O, 3, k, k"):
        adapt_input_channels(torch.zeros(8, 4, 4, 4), 6)
    with pytest.raises(ValueError, match="in_chans"):
        adapt_input_channels(w, 0)


@pytest.mark.parametrize("bands", [4, 6])
def test_load_encoder_adapts_an_rgb_export_to_more_bands(vit_file, rgb: torch.Tensor, bands: int) -> None:
    path, _ = vit_file
    rgb_model, multi = load_encoder(path).eval(), load_encoder(path, in_chans=bands).eval()
    assert multi.rsfm_meta["in_chans"] == bands and read_encoder_meta(path)["in_chans"] == 3
    assert multi.patch_embed.proj.weight.shape == (192, bands, 16, 16)
    torch.testing.assert_close(
        multi.patch_embed.proj.weight, adapt_input_channels(rgb_model.patch_embed.proj.weight, bands)
    )
    # every band equal to the RGB mean of a real crop: the same patch embedding as the RGB model on that grey image
    grey = rgb.mean(1, keepdim=True)
    with torch.no_grad():
        ours = multi.patch_embed(grey.expand(-1, bands, -1, -1))
        ref = rgb_model.patch_embed(grey.expand(-1, 3, -1, -1))
        torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
        # ... and so the same features all the way up
        torch.testing.assert_close(
            multi.forward_features(grey.expand(-1, bands, -1, -1)),
            rgb_model.forward_features(grey.expand(-1, 3, -1, -1)),
            rtol=1e-4,
            atol=1e-4,
        )
    # all other weights unchanged
    a, b = rgb_model.state_dict(), multi.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a if k != "patch_embed.proj.weight")


def test_only_rgb_exports_adapt(tmp_path: Path) -> None:
    enc = build_vit("tiny", img_size=32, patch_size=16, in_chans=4)
    path = export_encoder(enc, tmp_path / "four.safetensors", {**VIT_META, "img_size": 32, "in_chans": 4})
    assert load_encoder(path).patch_embed.proj.in_channels == 4
    with pytest.raises(CheckpointError, match="only 3-band"):
        load_encoder(path, in_chans=6)
    # a 4-band ViT encoder from a 4-band export, as TaskModel fills in_chans from the data
    assert ViT(weights=str(path), in_chans=4).model.patch_embed.proj.in_channels == 4


def test_resnet_export_adapts_its_stem(tmp_path: Path, rgb: torch.Tensor) -> None:
    import timm

    torch.manual_seed(0)
    cnn = timm.create_model("resnet18", pretrained=False, num_classes=0).eval()
    path = export_encoder(cnn, tmp_path / "r18.safetensors", {"arch": "resnet18", "img_size": 64, "in_chans": 3})
    four = load_encoder(path, in_chans=4).eval()
    assert four.conv1.weight.shape == (64, 4, 7, 7)
    grey = rgb.mean(1, keepdim=True)
    with torch.no_grad():
        torch.testing.assert_close(four.conv1(grey.expand(-1, 4, -1, -1)), cnn.conv1(grey.expand(-1, 3, -1, -1)))
    assert ResNet(weights=str(path), in_chans=4).model.conv1.in_channels == 4


def test_mismatch_summary() -> None:
    assert mismatch_summary([], []) == ""
    line = mismatch_summary(["a", "b", "c", "d", "e"], ["x"], ["s"])
    assert line == "5 missing (a, b, c, … 2 more); 1 unexpected (x); 1 with another shape (s)"
