"""Converting released checkpoints into rsfm exports (issue #12, point 1).

Each fixture builds a random state dict with the key names and shapes of the authors' code
(MAE's ``models_mae.py``/``models_vit.py``, SelectiveMAE's ``models_selectivemae.py`` and
``transformer_utils.py``, MTP's RVSA backbone, GeRSP's mmselfsup/MoCo ResNet-50, timm and
torchgeo state dicts), saves it in the release's container format, converts it, loads it with
:func:`rsfm.models.export.load_encoder`, and compares the features with a reference model
loaded with the official state dict, on real AID images.
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from rsfm.models.convert import SOURCES, convert_checkpoint, convert_file, convert_state_dict, read_checkpoint
from rsfm.models.export import load_encoder, read_encoder_meta
from rsfm.models.model_card import render_model_card
from rsfm.utils.errors import CheckpointError, ConfigError

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
#: (width, depth, heads) of the ViT sizes the tests use
TINY, SMALL, BASE = (192, 12, 3), (384, 12, 6), (768, 12, 12)


@pytest.fixture(scope="module")
def aid(datasets: Path):
    """``make(size)`` -> 2 real AID images (Airport, Beach) ``(2, 3, size, size)`` float32, ImageNet-normalised."""
    import numpy as np
    from PIL import Image

    files = [sorted((datasets / "aid" / c).glob("*.jpg"))[0] for c in ("Airport", "Beach")]

    def make(size: int) -> Tensor:
        imgs = [np.asarray(Image.open(f).convert("RGB").resize((size, size), Image.BILINEAR)) for f in files]
        x = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float() / 255.0
        return (x - MEAN) / STD

    return make


def bands(x: Tensor, n: int) -> Tensor:
    """Real multispectral-like input: the RGB bands of ``x`` repeated to ``n`` bands."""
    return x.repeat(1, -(-n // 3), 1, 1)[:, :n]


# -- official key names and shapes -----------------------------------------------------------


def _linear(sd: dict, name: str, out: int, inp: int, bias: bool = True) -> None:
    sd[f"{name}.weight"] = torch.randn(out, inp) * inp**-0.5
    if bias:
        sd[f"{name}.bias"] = torch.randn(out) * 0.02


def _norm(sd: dict, name: str, dim: int) -> None:
    sd[f"{name}.weight"] = 1 + 0.1 * torch.randn(dim)
    sd[f"{name}.bias"] = 0.1 * torch.randn(dim)


def _block(sd: dict, name: str, dim: int, qkv_bias: bool = True) -> None:
    """timm's ``Block`` (MAE's encoder and decoder blocks, SelectiveMAE's encoder blocks)."""
    _norm(sd, f"{name}.norm1", dim)
    _linear(sd, f"{name}.attn.qkv", 3 * dim, dim, qkv_bias)
    _linear(sd, f"{name}.attn.proj", dim, dim)
    _norm(sd, f"{name}.norm2", dim)
    _linear(sd, f"{name}.mlp.fc1", 4 * dim, dim)
    _linear(sd, f"{name}.mlp.fc2", dim, 4 * dim)


def mae_encoder(width: int, depth: int, grid: int = 14, patch: int = 16, in_chans: int = 3) -> dict[str, Tensor]:
    """The encoder keys of MAE's ``MaskedAutoencoderViT`` (= ``models_vit.VisionTransformer``)."""
    torch.manual_seed(0)
    sd: dict[str, Tensor] = {"cls_token": 0.02 * torch.randn(1, 1, width)}
    pos = 0.5 * torch.randn(1, 1 + grid * grid, width)
    pos[:, 0] = 0  # MAE's fixed sin-cos table has a zero class-token slot
    sd["pos_embed"] = pos
    sd["patch_embed.proj.weight"] = torch.randn(width, in_chans, patch, patch) * (in_chans * patch * patch) ** -0.5
    sd["patch_embed.proj.bias"] = 0.02 * torch.randn(width)
    for i in range(depth):
        _block(sd, f"blocks.{i}", width)
    _norm(sd, "norm", width)
    return sd


def mae_decoder(width: int, dec: int, depth: int, grid: int = 14, patch: int = 16) -> dict[str, Tensor]:
    """MAE's decoder keys (``decoder_embed``, ``mask_token``, ``decoder_pos_embed``, blocks, norm, pred)."""
    sd: dict[str, Tensor] = {"mask_token": 0.02 * torch.randn(1, 1, dec)}
    _linear(sd, "decoder_embed", dec, width)
    sd["decoder_pos_embed"] = torch.randn(1, 1 + grid * grid, dec)
    for i in range(depth):
        _block(sd, f"decoder_blocks.{i}", dec)
    _norm(sd, "decoder_norm", dec)
    _linear(sd, "decoder_pred", patch * patch * 3, dec)
    return sd


def selectivemae_extras(width: int, dec: int, depth: int, grid: int = 14, patch: int = 16) -> dict[str, Tensor]:
    """SelectiveMAE's non-encoder keys: cross-attention decoder, token scorer, HOG buffers."""
    sd: dict[str, Tensor] = {"mask_token": 0.02 * torch.randn(1, 1, dec)}
    _linear(sd, "decoder_embed1", dec, width)
    for i in range(depth):
        b = f"decoder_blocks.{i}"
        _norm(sd, f"{b}.norm1", dec)
        _linear(sd, f"{b}.cross_attn.q", dec, dec)
        _linear(sd, f"{b}.cross_attn.kv", 2 * dec, width)
        _linear(sd, f"{b}.cross_attn.proj", dec, dec)
        _norm(sd, f"{b}.norm2", dec)
        _linear(sd, f"{b}.mlp.fc1", 4 * dec, dec)
        _linear(sd, f"{b}.mlp.fc2", dec, 4 * dec)
    _norm(sd, "decoder_norm", dec)
    _linear(sd, "decoder_pred", patch * patch * 3, dec)
    sd["pos_embed_probs"] = torch.zeros(1, grid * grid, width)
    sd["decoder_pos_embed"] = torch.randn(1, 1 + grid * grid, dec)
    _block(sd, "get_token_probs.0", width, qkv_bias=False)
    _linear(sd, "get_token_probs.1", 1, width)
    _linear(sd, "get_token_probs_linear", 1, width)
    sd["hog.weight_x"] = torch.randn(3, 1, 3, 3)
    sd["hog.weight_y"] = torch.randn(3, 1, 3, 3)
    sd["hog.gkern"] = torch.rand(16, 16)
    return sd


def save_mae_container(sd: dict[str, Tensor], path: Path, model: str = "mae_vit_base_patch16") -> Path:
    """MAE's ``misc.save_model`` format (also SelectiveMAE's)."""
    args = argparse.Namespace(model=model, input_size=224, mask_ratio=0.75, norm_pix_loss=True, blr=1.5e-4)
    torch.save(
        {"model": sd, "optimizer": {"state": {}, "param_groups": []}, "epoch": 799, "scaler": {}, "args": args}, path
    )
    return path


def timm_vit(width: int, depth: int, heads: int, img: int = 224, in_chans: int = 3, **kw):
    """MAE's ``models_vit.VisionTransformer`` is timm's: qkv bias, LayerNorm eps 1e-6, MLP ratio 4."""
    from functools import partial

    from timm.models.vision_transformer import VisionTransformer

    return VisionTransformer(
        img_size=img,
        patch_size=16,
        in_chans=in_chans,
        embed_dim=width,
        depth=depth,
        num_heads=heads,
        mlp_ratio=4.0,
        qkv_bias=True,
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
        num_classes=0,
        **kw,
    ).eval()


def encoder_part(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    keep = ("patch_embed.", "blocks.", "norm.", "fc_norm.")
    return {k: v for k, v in sd.items() if k in ("cls_token", "pos_embed") or k.startswith(keep)}


# -- MAE / SelectiveMAE ----------------------------------------------------------------------


def test_mae_checkpoint_converts_to_the_official_models_features(tmp_path: Path, aid) -> None:
    width, depth, heads = TINY
    sd = {**mae_encoder(width, depth), **mae_decoder(width, 128, 2)}
    path = save_mae_container(sd, tmp_path / "mae_pretrain_vit_tiny.pth")
    out = tmp_path / "mae.safetensors"
    report = convert_checkpoint(path, out, source="mae")
    assert report.meta["size"] == "tiny" and report.meta["img_size"] == 224 and report.meta["patch_size"] == 16
    assert report.container == "model" and not report.missing and not report.resampled
    assert set(report.used) == set(encoder_part(sd))
    assert set(report.dropped) == {k for k in sd if k.startswith("decoder_") or k == "mask_token"}
    meta = read_encoder_meta(out)
    assert meta["method"] == "MAE" and meta["licence"].startswith("CC-BY-NC-4.0")
    assert meta["converted_from"] == {
        "source": "mae",
        "file": path.name,
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
    }
    assert meta["mean"] == pytest.approx([0.485, 0.456, 0.406])
    ours = load_encoder(out).eval()
    ref = timm_vit(width, depth, heads)
    ref.load_state_dict(encoder_part(sd), strict=True)  # the official keys, as they are
    x = aid(224)
    with torch.no_grad():
        a, b = ours.forward_features(x), ref.forward_features(x)
    assert a.shape == (2, 197, width)
    assert (a - b).abs().max().item() <= 1e-5


@pytest.mark.slow
def test_mae_base_shaped_checkpoint(tmp_path: Path, aid) -> None:
    """ViT-Base with MAE's full shapes (8 decoder blocks of 512), features as timm's ViT-B/16."""
    width, depth, heads = BASE
    sd = {**mae_encoder(width, depth), **mae_decoder(width, 512, 8)}
    path = save_mae_container(sd, tmp_path / "mae_visualize_vit_base.pth")
    ours = load_encoder(path, source="mae").eval()
    assert ours.rsfm_meta["size"] == "base"
    ref = timm_vit(width, depth, heads)
    ref.load_state_dict(encoder_part(sd), strict=True)
    x = aid(224)
    with torch.no_grad():
        assert (ours.forward_features(x) - ref.forward_features(x)).abs().max().item() <= 1e-5


def test_selectivemae_checkpoint_is_recognised_and_matches(tmp_path: Path, aid) -> None:
    width, depth, heads = SMALL
    sd = {**mae_encoder(width, depth), **selectivemae_extras(width, 256, 2)}
    path = save_mae_container(sd, tmp_path / "selectivemae_vit_small.pth", "mae_vit_small_patch16")
    ours = load_encoder(path).eval()  # no source: recognised by its cross-attention decoder
    report = ours.conversion_report
    assert report.source == "selectivemae" and ours.rsfm_meta["method"] == "SelectiveMAE"
    assert ours.rsfm_meta["licence"].startswith("MIT")
    for key in (
        "hog.weight_x",
        "hog.gkern",
        "pos_embed_probs",
        "get_token_probs.0.attn.qkv.weight",
        "get_token_probs_linear.weight",
        "decoder_embed1.weight",
        "decoder_blocks.0.cross_attn.kv.weight",
    ):
        assert key in report.dropped
    ref = timm_vit(width, depth, heads)
    ref.load_state_dict(encoder_part(sd), strict=True)
    x = aid(224)
    with torch.no_grad():
        assert (ours.forward_features(x) - ref.forward_features(x)).abs().max().item() <= 1e-5


def test_pos_embed_resampled_to_another_grid(tmp_path: Path, aid) -> None:
    width, depth, _ = TINY
    sd = mae_encoder(width, depth)
    same, meta, report = convert_state_dict({"model": sd}, "mae", img_size=224)
    assert torch.equal(same["pos_embed"], sd["pos_embed"]) and not report.resampled
    state, meta, report = convert_state_dict({"model": sd}, "mae", img_size=256)
    assert meta["img_size"] == 256 and report.resampled == {"pos_embed": ((14, 14), (16, 16))}
    pe = state["pos_embed"]
    assert pe.shape == (1, 1 + 16 * 16, width)
    assert torch.equal(pe[:, 0], sd["pos_embed"][:, 0])  # the class-token slot is kept
    grid = sd["pos_embed"][:, 1:].reshape(1, 14, 14, width).permute(0, 3, 1, 2)
    want = (
        F.interpolate(grid, size=(16, 16), mode="bicubic", align_corners=False)
        .permute(0, 2, 3, 1)
        .reshape(1, -1, width)
    )
    torch.testing.assert_close(pe[:, 1:], want)
    path = save_mae_container(sd, tmp_path / "mae.pth")
    model = load_encoder(path, source="mae", img_size=256).eval()
    with torch.no_grad():
        assert model.forward_features(aid(256)).shape == (2, 257, width)


def test_missing_encoder_key_and_unknown_size_are_named(tmp_path: Path) -> None:
    width, depth, _ = TINY
    sd = mae_encoder(width, depth)
    del sd["blocks.3.attn.proj.weight"]
    path = save_mae_container(sd, tmp_path / "broken.pth")
    with pytest.raises(CheckpointError, match=r"broken\.pth.*lacks encoder keys: blocks\.3\.attn\.proj\.weight"):
        convert_checkpoint(path, tmp_path / "x.safetensors", source="mae")
    assert not (tmp_path / "x.safetensors").exists()
    odd = mae_encoder(200, 12)
    with pytest.raises(CheckpointError, match=r"odd\.pth: patch_embed\.proj\.weight .*width 200.*fit no rsfm ViT size"):
        load_encoder(save_mae_container(odd, tmp_path / "odd.pth"), source="mae")
    scaled = {**mae_encoder(width, depth), "blocks.0.ls1.gamma": torch.ones(width)}
    with pytest.raises(CheckpointError, match=r"cannot represent: blocks\.0\.ls1\.gamma"):
        convert_state_dict(scaled, "timm")
    with pytest.raises(CheckpointError, match="holds a vit_rvsa encoder"):
        convert_state_dict(mae_encoder(width, depth), "mtp")


def test_plain_weights_need_a_source(tmp_path: Path) -> None:
    path = save_mae_container(mae_encoder(*TINY[:2]), tmp_path / "mae_pretrain_vit_tiny.pth")
    with pytest.raises(CheckpointError, match="cannot tell the source.*mae, selectivemae, timm or torchgeo"):
        load_encoder(path)
    assert load_encoder(path, source="mae").rsfm_meta["method"] == "MAE"


# -- MTP (ViT + RVSA) ----------------------------------------------------------------------------


def rvsa_state(img: int = 224):
    """A ViT-Tiny + RVSA with the release's key names, every tensor random (tables included)."""
    from rsfm.models.encoders.rvsa import build_vit_rvsa

    torch.manual_seed(1)
    model = build_vit_rvsa("tiny", img_size=img, rvsa_init="release").eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "rel_pos" in name:
                p.normal_(0, 0.1)
    return model, model.state_dict()


def test_mtp_mmseg_checkpoint_converts_to_the_same_rvsa(tmp_path: Path, aid) -> None:
    ref, sd = rvsa_state()
    for key in (
        "blocks.0.attn.sampling_offsets.2.weight",
        "blocks.0.attn.relative_position_bias_table",
        "blocks.2.attn.full_attn_rel_pos_h",
        "fpn1.1.ln.weight",
        "fpn2.0.weight",
        "pos_embed",
    ):
        assert key in sd  # the release's names (MTP's RVSA backbone)
    assert sd["pos_embed"].shape == (1, 196, 192)  # no class token
    ckpt = {"backbone." + k: v for k, v in sd.items()}
    ckpt["decode_head.conv_seg.weight"] = torch.randn(7, 512, 1, 1)
    ckpt["auxiliary_head.conv_seg.bias"] = torch.randn(7)
    path = tmp_path / "upernet_vit_tiny_rvsa.pth"
    torch.save({"meta": {"mmseg_version": "0.20.2", "CLASSES": ("a", "b")}, "state_dict": ckpt}, path)
    ours = load_encoder(path).eval()  # recognised by its RVSA tables
    meta = ours.rsfm_meta
    assert (meta["arch"], meta["size"], meta["window_size"], meta["interval"]) == ("vit_rvsa", "tiny", 7, 3)
    assert meta["method"] == "MTP" and ours.conversion_report.container == "state_dict"
    assert set(ours.conversion_report.dropped) == {"decode_head.conv_seg.weight", "auxiliary_head.conv_seg.bias"}
    x = aid(224)
    with torch.no_grad():
        for a, b in zip(ours(x), ref(x), strict=True):
            assert a.shape == b.shape and (a - b).abs().max().item() <= 1e-5
    # another grid: the position embedding and the global tables follow
    state, meta, report = convert_state_dict({"state_dict": ckpt}, "mtp", img_size=256)
    assert state["pos_embed"].shape == (1, 256, 192) and state["blocks.2.attn.full_attn_rel_pos_h"].shape == (31, 64)
    assert report.resampled["pos_embed"] == ((14, 14), (16, 16))


def test_rvsa_repository_checkpoint_names_its_global_tables_as_mtp_does() -> None:
    """The RVSA paper's repository names the global blocks' tables attn.rel_pos_h/w (MTP: full_attn_rel_pos_h/w)."""
    _, sd = rvsa_state()
    renamed = {("backbone." + k).replace("attn.full_attn_rel_pos", "attn.rel_pos"): v for k, v in sd.items()}
    assert "backbone.blocks.2.attn.rel_pos_h" in renamed and "backbone.blocks.0.attn.rel_pos_h" in renamed
    renamed["decode_head.conv_seg.weight"] = torch.zeros(7, 512, 1, 1)
    state, meta, report = convert_state_dict({"state_dict": renamed, "meta": {}}, None)
    assert meta["arch"] == "vit_rvsa" and report.dropped == ["decode_head.conv_seg.weight"] and not report.missing
    assert set(state) == set(sd) and all(torch.equal(state[k], sd[k]) for k in sd)
    assert "backbone.blocks.2.attn.rel_pos_h" in report.used  # reported under the file's own names


def test_mtp_encoder_file_without_global_tables(tmp_path: Path) -> None:
    """MTP's encoder files are unprefixed; the "branches" variant has no global tables (filled with zeros)."""
    _, sd = rvsa_state()
    sd = {k: v for k, v in sd.items() if "full_attn_rel_pos" not in k and "relative_position_index" not in k}
    state, meta, report = convert_state_dict({"state_dict": sd, "iteration": 80000}, "mtp")
    assert torch.equal(state["blocks.2.attn.full_attn_rel_pos_w"], torch.zeros(27, 64))
    assert (
        "blocks.5.attn.full_attn_rel_pos_h" in report.missing
        and "blocks.0.attn.relative_position_index" in report.missing
    )
    del sd["fpn1.0.weight"]
    with pytest.raises(CheckpointError, match=r"lacks encoder keys: fpn1\.0\.weight"):
        convert_state_dict(sd, "mtp")


def test_mtp_encoder_file_as_mtp_saves_it_reads(tmp_path: Path) -> None:
    """MTP saves ``{epoch, iteration, state_dict, optimizer, scheduler, loss_pretrain: np.array}``.

    NumPy arrays and scalars are read (weights-only), under NumPy 2's module names and NumPy 1's
    (a file saved in 2024 names ``numpy.core.multiarray``); other objects stay refused.
    """
    import numpy as np

    _, sd = rvsa_state()
    container = {
        "epoch": 3,
        "iteration": 80000,
        "state_dict": sd,
        "optimizer": {"state": {}, "param_groups": [{"lr": 6e-5, "params": [0, 1]}]},
        "scheduler": {"last_epoch": np.int64(80000)},
        "loss_pretrain": np.array([3.2, 2.9, 2.7]),
    }
    path = tmp_path / "last_vit_b_rvsa_ss_is_rd_pretrn_model_encoder.pth"
    torch.save(container, path, _use_new_zipfile_serialization=False)  # one pickle stream: names editable
    raw = path.read_bytes()
    core = b"numpy._core.multiarray\n" if b"numpy._core.multiarray\n" in raw else b"numpy.core.multiarray\n"
    assert core in raw
    for name, data in (
        ("numpy2.pth", raw.replace(b"numpy.core.multiarray\n", b"numpy._core.multiarray\n")),
        ("numpy1.pth", raw.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")),
    ):
        (tmp_path / name).write_bytes(data)
        state = read_checkpoint(tmp_path / name)
        assert np.array_equal(state["loss_pretrain"], [3.2, 2.9, 2.7]) and state["scheduler"]["last_epoch"] == 80000
        out, meta, report = convert_state_dict(state, "mtp")
        assert meta["arch"] == "vit_rvsa" and report.container == "state_dict"
        assert torch.equal(out["pos_embed"], sd["pos_embed"])
    torch.save({**container, "hook": np.random.default_rng}, tmp_path / "code.pth")
    with pytest.raises(CheckpointError, match="holds objects other than tensors"):
        read_checkpoint(tmp_path / "code.pth")


# -- GeRSP, timm and torchgeo ResNets ------------------------------------------------------------


def resnet_state(in_chans: int = 3) -> tuple[torch.nn.Module, dict[str, Tensor]]:
    import timm

    torch.manual_seed(2)
    model = timm.create_model("resnet50", pretrained=False, num_classes=0, in_chans=in_chans).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
    return model, model.state_dict()


@pytest.mark.parametrize("layout", ["release", "moco"])
def test_gersp_resnet50(tmp_path: Path, aid, layout: str) -> None:
    ref, sd = resnet_state()
    if layout == "release":  # GeRSP's converted file: the mmselfsup backbone only
        ckpt = {"state_dict": {"backbone." + k: v for k, v in sd.items()}}
    else:  # MoCo-style training checkpoint: query/key encoders with their MLP, and the queue
        mlp = {
            "fc.0.weight": torch.randn(2048, 2048),
            "fc.0.bias": torch.randn(2048),
            "fc.2.weight": torch.randn(128, 2048),
            "fc.2.bias": torch.randn(128),
        }
        enc = {**sd, **mlp}
        ckpt = {
            "epoch": 200,
            "arch": "resnet50",
            "state_dict": {
                **{"module.encoder_q." + k: v for k, v in enc.items()},
                **{"module.encoder_k." + k: v for k, v in enc.items()},
                "module.queue": torch.randn(128, 16),
                "module.queue_ptr": torch.zeros(1, dtype=torch.long),
            },
        }
    path = tmp_path / "gersp.pth"
    torch.save(ckpt, path)
    ours = load_encoder(path).eval()  # recognised by the prefix
    report = ours.conversion_report
    assert report.source == "gersp" and ours.rsfm_meta["arch"] == "resnet50" and ours.rsfm_meta["method"] == "GeRSP"
    assert len(report.used) == len(sd) and not report.missing
    if layout == "moco":
        assert {"module.encoder_q.fc.0.weight", "module.encoder_q.fc.2.bias", "module.queue"} <= set(report.dropped)
        assert "module.encoder_k.conv1.weight" in report.dropped
    x = aid(160)
    with torch.no_grad():
        assert (ours.forward_features(x) - ref.forward_features(x)).abs().max().item() <= 1e-5


def test_torchgeo_multispectral_weights_keep_their_bands(tmp_path: Path, aid) -> None:
    ref, sd = resnet_state(in_chans=13)  # e.g. ResNet50_Weights.SENTINEL2_ALL_MOCO
    path = tmp_path / "resnet50_sentinel2_all_moco.pth"
    torch.save({k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}, path)
    out = tmp_path / "s2.safetensors"
    report = convert_checkpoint(path, out, source="torchgeo", mean=[0.0] * 13, std=[1e4 / 255] * 13)
    assert report.meta["in_chans"] == 13 and report.meta["std"][0] == pytest.approx(1e4 / 255)
    assert any(k.endswith("num_batches_tracked") for k in report.missing)
    ours = load_encoder(out).eval()
    x = bands(aid(128), 13)
    with torch.no_grad():
        assert (ours.forward_features(x) - ref.forward_features(x)).abs().max().item() <= 1e-5


def test_timm_vit_weights(tmp_path: Path, aid, monkeypatch) -> None:
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(3)
    vit = timm.create_model("vit_small_patch16_224", pretrained=False).eval()  # with its 1000-class head
    save_file(vit.state_dict(), tmp_path / "vit_small.safetensors")
    ours = load_encoder(tmp_path / "vit_small.safetensors", source="timm").eval()
    assert set(ours.conversion_report.dropped) == {"head.weight", "head.bias"}
    card = render_model_card(ours.rsfm_meta)
    assert "the position embedding timm learned" in card and "sin-cos" not in card
    # fine-tuned as timm's ViTs are: the learned position embedding goes on training
    from rsfm.models.encoders.vit import ViT

    monkeypatch.setenv("RSFM_CACHE", str(tmp_path / "cache"))  # where the conversion is kept
    assert ViT(weights=f"timm:{tmp_path / 'vit_small.safetensors'}").model.pos_embed.requires_grad
    x = aid(224)
    with torch.no_grad():
        assert (ours.forward_features(x) - vit.forward_features(x)).abs().max().item() <= 1e-5


def test_torchgeo_vit_weights_keep_their_bands(tmp_path: Path, aid) -> None:
    import timm

    torch.manual_seed(4)
    s1 = timm.create_model("vit_small_patch16_224", pretrained=False, in_chans=2, num_classes=0).eval()
    torch.save(s1.state_dict(), tmp_path / "B2_vits16_mae_ep99_enc.pth")  # e.g. ViTSmall16_Weights.SENTINEL1_GRD_MAE
    ours = load_encoder(tmp_path / "B2_vits16_mae_ep99_enc.pth", source="torchgeo").eval()
    assert ours.rsfm_meta["in_chans"] == 2 and "mean" not in ours.rsfm_meta
    x = bands(aid(224), 2)
    with torch.no_grad():
        assert (ours.forward_features(x) - s1.forward_features(x)).abs().max().item() <= 1e-5


# -- the command -------------------------------------------------------------------------------


def test_rsfm_convert_command(tmp_path: Path, capsys) -> None:
    from rsfm.cli import build_parser, main

    choices = next(
        a for a in build_parser()._subparsers._group_actions[0].choices["convert"]._actions if a.dest == "source"
    ).choices
    assert set(choices) == {"auto", *SOURCES}
    width, depth, _ = TINY
    enc, dec = mae_encoder(width, depth), mae_decoder(width, 128, 1)
    path = save_mae_container({**enc, **dec}, tmp_path / "mae.pth")
    out = tmp_path / "enc.safetensors"
    rc = main(
        [
            "convert",
            "--source",
            "mae",
            "--input",
            str(path),
            "--output",
            str(out),
            "--img-size",
            "256",
            "--in-chans",
            "4",
        ]
    )
    text = capsys.readouterr().out
    assert rc == 0, text
    assert f"keys used: {len(enc)}" in text and f"keys dropped: {len(dec)} (" in text and "mask_token" in text
    assert "pos_embed resampled from grid 14x14 to 16x16" in text and "encoder keys missing (filled): 0" in text
    meta = read_encoder_meta(out)
    assert (meta["img_size"], meta["in_chans"], meta["size"]) == (256, 4, "tiny") and "mean" not in meta
    assert meta["converted_from"]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert load_encoder(out).patch_embed.proj.weight.shape == (width, 4, 16, 16)
    plain = save_mae_container(mae_encoder(width, depth), tmp_path / "plain.pth")
    assert main(["convert", "--input", str(plain), "--output", str(tmp_path / "p.safetensors")]) == 2
    assert "cannot tell the source" in capsys.readouterr().err


def test_convert_file_reports_sha_and_rejects_junk(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"\x80\x02 not a pickle")
    with pytest.raises(CheckpointError, match=r"junk\.pth is not a checkpoint"):
        convert_file(junk, "mae")
    mmengine = tmp_path / "mmengine.pth"
    torch.save({"state_dict": mae_encoder(*TINY[:2]), "message_hub": argparse.ArgumentParser}, mmengine)
    with pytest.raises(CheckpointError, match="holds objects other than tensors"):
        convert_file(mmengine, "mae")
    with pytest.raises(CheckpointError, match="unknown checkpoint source 'dino'"):
        convert_state_dict(mae_encoder(*TINY[:2]), "dino")


def test_bad_conversion_settings_and_foreign_tokens_are_named(tmp_path: Path) -> None:
    sd = mae_encoder(*TINY[:2])
    with pytest.raises(ConfigError, match="img_size must be a positive number of pixels, got -16"):
        convert_state_dict(sd, "mae", img_size=-16)  # was: a 1x1 position grid, then a file timm refuses
    with pytest.raises(ConfigError, match=r"std must be positive .* got \[0.0, 0.0, 0.0\]"):
        convert_state_dict(sd, "mae", mean=[0.5] * 3, std=[0.0] * 3)  # was: NaN features, silently
    with pytest.raises(CheckpointError, match="holds reg_token .*register or distillation tokens"):
        convert_state_dict({**sd, "reg_token": torch.zeros(1, 4, TINY[0])}, "timm")
    export = tmp_path / "e.safetensors"
    convert_checkpoint(save_mae_container(sd, tmp_path / "mae.pth"), export, "mae")
    with pytest.raises(CheckpointError, match=r"e\.safetensors already is an rsfm encoder export: use it as it is"):
        convert_file(export, "mae")  # was: relabelled as MAE, its own statistics replaced by ImageNet's


# -- recipes: model.encoder.weights may name a released checkpoint -------------------------------


def test_recipe_weights_take_a_released_checkpoint(tmp_path: Path, aid, monkeypatch) -> None:
    from rsfm.models.convert import as_export
    from rsfm.models.encoders.rvsa import ViTRVSA
    from rsfm.models.encoders.vit import ViT

    monkeypatch.setenv("RSFM_CACHE", str(tmp_path / "cache"))
    width, depth, heads = TINY
    sd = mae_encoder(width, depth)  # as mae_pretrain_vit_*.pth: the encoder alone
    path = save_mae_container(sd, tmp_path / "mae_pretrain_vit_tiny.pth")
    # a plain ViT could be MAE's, SelectiveMAE's or timm's: the recipe names the source
    with pytest.raises(CheckpointError, match=r"cannot tell the source.*model\.encoder\.weights=<source>:<path>"):
        ViT(weights=str(path))
    enc = ViT(weights=f"mae:{path}", img_size=192).eval()
    assert enc.meta["weights"] == f"mae:{path}" and enc.meta["method"] == "MAE"
    ref = timm_vit(width, depth, heads)
    ref.load_state_dict(sd, strict=True)
    x = aid(224)
    with torch.no_grad():
        assert (enc.model.forward_features(x) - ref.forward_features(x)).abs().max().item() <= 1e-5
    # converted once: the cached export is reused, and a changed file is converted again
    cached = as_export(f"mae:{path}")
    assert cached.parent == tmp_path / "cache" / "converted" and len(list(cached.parent.iterdir())) == 2  # + card
    mtime = cached.stat().st_mtime_ns
    assert as_export(f"mae:{path}") == cached and cached.stat().st_mtime_ns == mtime
    sd["norm.weight"] = sd["norm.weight"] + 1
    save_mae_container(sd, path)
    assert as_export(f"mae:{path}") != cached
    # MTP starts RVSA from an MIM ViT: a released MAE checkpoint does too
    rvsa = ViTRVSA(size="tiny", img_size=224, weights=f"mae:{path}")
    assert rvsa.meta["init_from"] == "vit" and rvsa.meta["weights"] == f"mae:{path}"
    torch.testing.assert_close(rvsa.model.blocks[0].mlp.fc1.weight, sd["blocks.0.mlp.fc1.weight"])
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        ViT(weights=f"mae:{tmp_path / 'absent.pth'}")
