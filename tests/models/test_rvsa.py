"""ViT + RVSA encoder: the attention against a hand-written window attention, shapes, init, loading."""

import logging
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from rsfm.models.encoders import ViT, ViTRVSA, build_vit, build_vit_rvsa
from rsfm.models.encoders.rvsa import (
    GlobalRelPosAttention,
    RotatedVariedSizeWindowAttention,
    default_rvsa_out_indices,
    rvsa_sample_grid,
    symmetric_window_padding,
)
from rsfm.models.export import adapt_input_channels, export_encoder, load_encoder, read_encoder_meta
from rsfm.models.task_model import build_part
from rsfm.utils.errors import CheckpointError, ConfigError
from rsfm.utils.registry import ENCODERS

VIT_META = {"arch": "vit", "size": "tiny", "img_size": 64, "patch_size": 16, "in_chans": 3, "method": "mae"}


@pytest.fixture(scope="module")
def scene(datasets) -> torch.Tensor:
    """A real LoveDA tile ``(1, 3, 1024, 1024)``, normalised per channel."""
    from rsfm.data.io import read_image

    image = read_image(datasets / "loveda" / "images_png" / "0.png").float()[None] / 255
    return (image - image.mean((2, 3), keepdim=True)) / image.std((2, 3), keepdim=True)


def crop(scene: torch.Tensor, h: int, w: int, top: int = 100, left: int = 200) -> torch.Tensor:
    return scene[:, :, top : top + h, left : left + w].contiguous()


def real_tokens(scene: torch.Tensor, dim: int, h: int, w: int) -> torch.Tensor:
    """``(2, h·w, dim)`` tokens of two real crops (a random 16 px patch projection, then LayerNorm)."""
    proj = torch.nn.Conv2d(3, dim, 16, 16)
    x = torch.cat([crop(scene, 16 * h, 16 * w), crop(scene, 16 * h, 16 * w, 500, 300)])
    with torch.no_grad():
        return F.layer_norm(proj(x).flatten(2).transpose(1, 2), (dim,))


def window_attention_by_hand(attn: RotatedVariedSizeWindowAttention, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Plain 7×7 window attention written out window by window, with the same parameters.

    Symmetric zero padding of q/k/v (smaller half top/left), scaled q·k, the MViTv2 term with
    unscaled q and the Swin bias indexed by hand, softmax, crop, projection.
    """
    b, n, c = x.shape
    heads, d, ws = attn.num_heads, c // attn.num_heads, 7
    ph, pw = (-h) % ws, (-w) % ws
    top, left = ph // 2, pw // 2
    qkv = attn.qkv(x).reshape(b, h, w, 3, heads, d)
    padded = x.new_zeros(b, h + ph, w + pw, 3, heads, d)
    padded[:, top : top + h, left : left + w] = qkv
    out = x.new_zeros(b, h + ph, w + pw, heads, d)
    iy, ix = torch.arange(ws * ws) // ws, torch.arange(ws * ws) % ws
    dy, dx = iy[:, None] - iy[None, :], ix[:, None] - ix[None, :]  # query minus key
    swin = attn.relative_position_bias_table[(dy + ws - 1) * (2 * ws - 1) + (dx + ws - 1)].permute(2, 0, 1)
    for wy in range(0, h + ph, ws):
        for wx in range(0, w + pw, ws):
            q, k, v = padded[:, wy : wy + ws, wx : wx + ws].reshape(b, ws * ws, 3, heads, d).unbind(2)
            logits = torch.einsum("bihd,bjhd->bhij", q, k) * d**-0.5
            logits = logits + torch.einsum("bihd,ijd->bhij", q, attn.rel_pos_h[dy + ws - 1])
            logits = logits + torch.einsum("bihd,ijd->bhij", q, attn.rel_pos_w[dx + ws - 1])
            logits = logits + swin[None]
            o = torch.einsum("bhij,bjhd->bihd", logits.softmax(-1), v)
            out[:, wy : wy + ws, wx : wx + ws] = o.reshape(b, ws, ws, heads, d)
    return attn.proj(out[:, top : top + h, left : left + w].reshape(b, n, c))


@pytest.mark.parametrize(("h", "w"), [(9, 11), (5, 16)])
def test_zero_predictors_reduce_rvsa_to_plain_window_attention(scene, h: int, w: int, one_thread) -> None:
    torch.manual_seed(0)
    attn = RotatedVariedSizeWindowAttention(64, 2)
    attn.zero_predictors()
    with torch.no_grad():  # random relative-position terms, so that their indexing is checked
        attn.rel_pos_h.normal_(0, 0.3), attn.rel_pos_w.normal_(0, 0.3)
        attn.relative_position_bias_table.normal_(0, 1.0)
    x = real_tokens(scene, 64, h, w)
    with torch.no_grad():
        got = attn(x, (h, w))
        want = window_attention_by_hand(attn, x, h, w)
    assert got.shape == (2, h * w, 64)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    # the predictors are live: a shift of the windows changes the output
    with torch.no_grad():
        attn.sampling_offsets[2].bias.fill_(0.2)
        assert (attn(x, (h, w)) - want).abs().max() > 1e-3


def test_sampling_stays_in_float32_under_autocast(scene, one_thread) -> None:
    torch.manual_seed(0)
    attn = RotatedVariedSizeWindowAttention(64, 2)
    attn.zero_predictors()
    x = real_tokens(scene, 64, 9, 11)
    with torch.no_grad():
        want = window_attention_by_hand(attn, x, 9, 11)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            grid = attn.sampling_grid(x, (9, 11))
            got = attn(x, (9, 11))
    assert grid.dtype == torch.float32 and got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), want, atol=0.05, rtol=0.05)  # bfloat16 matmuls, exact sampling


def test_symmetric_padding_puts_the_smaller_half_first() -> None:
    assert symmetric_window_padding(32, 32, 7) == (1, 2, 1, 2)  # 512 px, ViT-B: 35 × 35
    assert symmetric_window_padding(28, 28, 7) == (0, 0, 0, 0)  # 448 px: no padding
    assert symmetric_window_padding(9, 11, 7) == (1, 2, 2, 3)  # (left, right, top, bottom)


def test_sampling_grid_rotates_and_shifts_as_documented(scene) -> None:
    torch.manual_seed(0)
    ws, hp, wp = 7, 14, 21
    zero = torch.zeros(1, 2, 2, 3)
    base = rvsa_sample_grid(zero, zero, torch.zeros(1, 1, 2, 3), (hp, wp), ws)
    image = crop(scene, hp, wp)[:, :2]
    # no prediction: every sample on its own token's centre
    same = F.grid_sample(image, base, mode="bilinear", padding_mode="zeros", align_corners=True)
    torch.testing.assert_close(same, image, atol=1e-5, rtol=0)
    # θ = π/2 on a square grid turns every window by a quarter: (x, y) → (-y, x) about its centre
    square = rvsa_sample_grid(zero[..., :2], zero[..., :2], torch.full((1, 1, 2, 2), math.pi / 2), (14, 14), ws)
    image = crop(scene, 14, 14)[:, :1]
    turned = F.grid_sample(image, square, mode="bilinear", padding_mode="zeros", align_corners=True)
    for wy in (0, 7):
        for wx in (0, 7):
            window = image[0, 0, wy : wy + 7, wx : wx + 7]
            # slot (ky, kx) reads row wy + 3 + (kx - 3), column wx + 3 - (ky - 3)
            want = torch.stack([torch.stack([window[kx, 6 - ky] for kx in range(7)]) for ky in range(7)])
            torch.testing.assert_close(turned[0, 0, wy : wy + 7, wx : wx + 7], want, atol=1e-5, rtol=0)


def test_offsets_are_normalised_with_the_release_axis_swap() -> None:
    torch.manual_seed(0)
    attn = RotatedVariedSizeWindowAttention(32, 2)
    attn.zero_predictors()
    h, w = 14, 28  # 2 windows down, 4 across
    x = torch.randn(1, h * w, 32)
    with torch.no_grad():
        base = attn.sampling_grid(x, (h, w))
        attn.sampling_offsets[2].bias.copy_(torch.tensor([0.4, 0.0, 0.0, 0.8]))  # head 0: x; head 1: y
        moved = attn.sampling_grid(x, (h, w))
    shift = moved - base  # (2 heads, 14, 28, 2)
    # the x offset is divided by the window count along H (2), the y offset by that along W (4)
    torch.testing.assert_close(shift[0, ..., 0], torch.full((h, w), 0.2))
    torch.testing.assert_close(shift[1, ..., 1], torch.full((h, w), 0.2))
    assert shift[0, ..., 1].abs().max() == 0 and shift[1, ..., 0].abs().max() == 0


def test_vit_base_rvsa_shapes_at_512(one_thread) -> None:
    """The shape table of the backbone at 512 px (shape propagation on the meta device, no compute)."""
    with torch.device("meta"):
        model = build_vit_rvsa("base", img_size=512).eval()
    assert [i for i, b in enumerate(model.blocks) if isinstance(b.attn, GlobalRelPosAttention)] == [2, 5, 8, 11]
    assert model.out_indices == (3, 5, 7, 11)
    for block in model.blocks:
        block.attn.debug_shapes = {}
    with torch.no_grad():
        pyramid = model(torch.empty(1, 3, 512, 512, device="meta"))
    window = model.blocks[0].attn.debug_shapes
    assert window == {
        "padded": (1, 768, 35, 35),  # 32 → 35: 5 × 5 windows of 7
        "offsets": (12, 2, 5, 5),
        "scales": (12, 2, 5, 5),
        "angles": (12, 1, 5, 5),
        "grid": (12, 35, 35, 2),
        "logits": (25, 12, 49, 49),
    }
    assert all(b.attn.debug_shapes == window for b in model.blocks if not isinstance(b.attn, GlobalRelPosAttention))
    assert model.blocks[2].attn.debug_shapes == {"logits": (1, 12, 1024, 1024)}
    assert model.blocks[2].attn.full_attn_rel_pos_h.shape == (63, 64)
    assert [tuple(p.shape) for p in pyramid] == [
        (1, 768, 128, 128),
        (1, 768, 64, 64),
        (1, 768, 32, 32),
        (1, 768, 16, 16),
    ]
    # parameters without the pyramid: 86,863,936 (≈ 86.9 M), counted from the layer shapes
    c, s, nh, d = 768, 32, 12, 64
    per_block = 4 * c + (3 * c * c + 3 * c) + (c * c + c) + (8 * c * c + 5 * c)  # norms, qkv, proj, mlp
    rvsa = 2 * 13 * d + 169 * nh + 2 * (c * 2 * nh + 2 * nh) + (c * nh + nh)  # rel-pos, Swin, 3 predictors
    full = 2 * (2 * s - 1) * d
    expected = (3 * 256 * c + c) + s * s * c + 12 * per_block + 8 * rvsa + 4 * full + 2 * c
    count = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("fpn"))
    assert count == expected and count == pytest.approx(86.9e6, abs=0.05e6)


@pytest.mark.slow
def test_vit_base_rvsa_runs_at_512_on_a_real_tile(scene) -> None:
    torch.manual_seed(0)
    model = build_vit_rvsa("base", img_size=512).eval()
    model.blocks[0].attn.debug_shapes, model.blocks[11].attn.debug_shapes = {}, {}
    with torch.no_grad():
        pyramid = model(crop(scene, 512, 512))
    assert model.blocks[0].attn.debug_shapes["logits"] == (25, 12, 49, 49)
    assert model.blocks[11].attn.debug_shapes["logits"] == (1, 12, 1024, 1024)
    assert [tuple(p.shape) for p in pyramid] == [(1, 768, 512 // s, 512 // s) for s in (4, 8, 16, 32)]
    assert all(torch.isfinite(p).all() for p in pyramid)


def test_gradients_reach_the_zero_initialised_predictors(scene, one_thread) -> None:
    torch.manual_seed(0)
    enc = ViTRVSA("tiny", img_size=128)
    attns = enc.model.rvsa_attentions()
    assert len(attns) == 8 and all(not conv.weight.detach().any() for a in attns for conv in a.predictors())
    pyramid = enc.forward_intermediates(crop(scene, 128, 112))
    sum(p.square().mean() for p in pyramid).backward()
    for i, a in enumerate(attns):
        for conv in a.predictors():
            assert conv.weight.grad is not None and float(conv.weight.grad.abs().sum()) > 0, i


def test_inputs_of_any_patch_multiple_and_the_release_init(scene, one_thread) -> None:
    torch.manual_seed(0)
    zero = ViTRVSA("tiny", img_size=224).eval()
    torch.manual_seed(0)
    release = ViTRVSA("tiny", img_size=224, rvsa_init="release").eval()
    assert zero.strides == [4, 8, 16, 32] and zero.out_channels == [192] * 4 and zero.input_multiple == 16
    for name, value in zero.model.state_dict().items():
        if ".sampling_" in name:
            assert not value.any(), name
            assert release.model.state_dict()[name].abs().sum() > 0, name  # PyTorch's Conv2d init
        else:
            assert torch.equal(value, release.model.state_dict()[name]), name
    with torch.no_grad():
        for h, w in ((448, 448), (224, 320), (64, 96)):
            x = crop(scene, h, w)
            maps = zero.forward_intermediates(x)  # pos_embed and global tables resampled to the grid
            assert [tuple(m.shape) for m in maps] == [(1, 192, h // s, w // s) for s in (4, 8, 16, 32)], (h, w)
            assert all(torch.isfinite(m).all() for m in maps)
        x = crop(scene, 224, 320)
        assert (release.forward_intermediates(x)[2] - zero.forward_intermediates(x)[2]).abs().max() > 1e-3
        with pytest.raises(ValueError, match="multiples of 16"):
            zero.forward_intermediates(crop(scene, 100, 96))


def test_pooled_features_and_drop_pooling(scene, one_thread) -> None:
    enc = ViTRVSA("tiny", img_size=64).eval()
    x = torch.cat([crop(scene, 64, 64), crop(scene, 64, 64, 600, 600)])
    with torch.no_grad():
        pooled = enc.forward_pooled(x)
        last, _, _ = enc.model.tokens(x)
        before = enc.forward_intermediates(x)
    assert pooled.shape == (2, 192) and enc.num_features == 192
    # MTP's classification models pool the last block's raw tokens: the release never uses its
    # final norm, which rsfm keeps (its checkpoints hold it) frozen, out of every optimiser group
    torch.testing.assert_close(pooled, last.mean(1))
    torch.testing.assert_close(enc(x), pooled)
    assert "model.norm.weight" in enc.state_dict()
    assert not any(p.requires_grad for p in enc.model.norm.parameters())
    groups = enc.param_groups(1e-3, 0.05, 0.9)
    assert not {id(p) for p in enc.model.norm.parameters()} & {id(p) for g in groups for p in g["params"]}
    enc.drop_pooling()  # nothing to drop
    with torch.no_grad():
        for b, a in zip(before, enc.forward_intermediates(x), strict=True):
            torch.testing.assert_close(a, b)


def test_layer_decay_groups_and_sizes() -> None:
    enc = ViTRVSA("tiny", img_size=64)
    groups = enc.param_groups(1e-3, 0.05, 0.9)
    lr_of = {id(p): g["lr"] for g in groups for p in g["params"]}
    wd_of = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    params = dict(enc.model.named_parameters())
    trained = {n for n, p in params.items() if p.requires_grad}
    assert trained == set(params) - {"norm.weight", "norm.bias"}  # the release's unused final norm
    assert len(lr_of) == len(trained) == sum(len(g["params"]) for g in groups)
    # BEiT's rule, as MTP's fine-tuning: block i at 0.9^(12 - i), the stem at 0.9^13, the pyramid at 1
    for i in range(12):
        assert lr_of[id(params[f"blocks.{i}.attn.qkv.weight"])] == pytest.approx(1e-3 * 0.9 ** (12 - i))
    for name in ("patch_embed.proj.weight", "pos_embed"):
        assert lr_of[id(params[name])] == pytest.approx(1e-3 * 0.9**13), name
    for name in ("fpn1.0.weight", "fpn2.0.weight"):
        assert lr_of[id(params[name])] == pytest.approx(1e-3), name
    assert (
        wd_of[id(params["pos_embed"])] == 0.0 and wd_of[id(params["blocks.0.attn.sampling_offsets.2.weight"])] == 0.05
    )
    assert enc.no_weight_decay() == {"model.pos_embed"}
    assert {g["lr"] for g in enc.param_groups(1e-3, 0.05, None)} == {1e-3}
    # sizes: width, depth, heads, interval
    with torch.device("meta"):
        for size, width, depth, heads, glob in (
            ("small", 384, 12, 6, [2, 5, 8, 11]),
            ("large", 1024, 24, 16, [5, 11, 17, 23]),
        ):
            m = build_vit_rvsa(size, drop_path_rate=0.3)
            assert m.embed_dim == width and len(m.blocks) == depth and m.blocks[0].attn.num_heads == heads
            assert [i for i, b in enumerate(m.blocks) if isinstance(b.attn, GlobalRelPosAttention)] == glob
            assert m.out_indices == default_rvsa_out_indices(depth)
            assert m.blocks[-1].drop_path.drop_prob == pytest.approx(0.3) and isinstance(
                m.blocks[0].drop_path, torch.nn.Identity
            )
    assert default_rvsa_out_indices(24) == (7, 11, 15, 23)


def test_options_are_checked() -> None:
    for kwargs, match in (
        ({"size": "gigantic"}, "size"),
        ({"size": "tiny", "img_size": 60}, "multiple of patch_size"),
        ({"size": "tiny", "img_size": 60, "patch_size": 10}, "divisible by 4"),
        ({"size": "tiny", "rvsa_init": "xavier"}, "rvsa_init"),
        ({"size": "tiny", "out_indices": [3, 5, 7]}, "out_indices"),
        ({"size": "tiny", "out_indices": [3, 5, 7, 12]}, "out_indices"),
    ):
        with pytest.raises(ConfigError, match=match):
            ViTRVSA(**kwargs)


# -- exports ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vit_export(tmp_path_factory) -> tuple[Path, torch.nn.Module]:
    """A real rsfm ViT-tiny export (64 px, patch 16, class token, sin-cos pos_embed), as MAE writes it."""
    torch.manual_seed(0)
    vit = build_vit("tiny", img_size=64, patch_size=16)
    meta = {**VIT_META, "mean": [0.4, 0.4, 0.3], "std": [0.2, 0.2, 0.1]}
    return export_encoder(vit, tmp_path_factory.mktemp("export") / "vit.safetensors", meta), vit


def test_plain_vit_export_initialises_rvsa(vit_export, scene, caplog, one_thread) -> None:
    path, vit = vit_export
    with caplog.at_level(logging.INFO, logger="rsfm.models.encoders.rvsa"):
        enc = ViTRVSA(size="base", img_size=112, patch_size=8, weights=str(path))  # the export's size wins
    assert enc.model.embed_dim == 192 and enc.patch_size == 16 and enc.model.grid_size == (7, 7)
    source = vit.state_dict()
    own = enc.model.state_dict()
    blocks = [k for k in source if k.startswith("blocks.")]
    assert len(blocks) == 12 * 12
    for k in [*blocks, "patch_embed.proj.weight", "patch_embed.proj.bias", "norm.weight", "norm.bias"]:
        assert torch.equal(own[k], source[k]), k
    # class slot dropped, 4 × 4 grid resized bicubically to 7 × 7
    grid = source["pos_embed"][:, 1:].reshape(1, 4, 4, 192).permute(0, 3, 1, 2)
    want = F.interpolate(grid, size=(7, 7), mode="bicubic", align_corners=False).permute(0, 2, 3, 1).reshape(1, 49, 192)
    torch.testing.assert_close(own["pos_embed"], want)
    assert enc.model.pos_embed.requires_grad  # learnable from here on
    report = enc.load_report
    assert report["ignored"] == ["cls_token"]
    assert "blocks.0.attn.sampling_offsets.2.weight" in report["initialised"]
    assert "blocks.2.attn.full_attn_rel_pos_h" in report["initialised"] and "fpn1.1.ln.weight" in report["initialised"]
    assert not any(
        k.startswith(("blocks.0.mlp", "blocks.0.attn.qkv", "patch_embed", "pos_embed")) for k in report["initialised"]
    )
    assert "kept at init" in caplog.text and "cls_token" in caplog.text
    assert not any(conv.weight.any() for a in enc.model.rvsa_attentions() for conv in a.predictors())  # zero init
    assert enc.meta["arch"] == "vit_rvsa" and enc.meta["size"] == "tiny" and enc.meta["method"] == "mae"
    assert enc.meta["mean"] == [0.4, 0.4, 0.3] and enc.meta["img_size"] == 112 and enc.meta["weights"] == str(path)
    with torch.no_grad():
        assert enc.forward_intermediates(crop(scene, 112, 112))[0].shape == (1, 192, 28, 28)
    # four bands from the RGB export: the patch projection is adapted
    four = ViTRVSA(img_size=64, in_chans=4, weights=str(path))
    assert four.meta["in_chans"] == 4
    torch.testing.assert_close(
        four.model.patch_embed.proj.weight, adapt_input_channels(source["patch_embed.proj.weight"], 4)
    )


def test_vit_rvsa_export_round_trip(tmp_path: Path, scene, one_thread) -> None:
    torch.manual_seed(0)
    enc = ViTRVSA("tiny", img_size=96, window_size=7, rvsa_init="release").eval()
    with torch.no_grad():  # nothing left at a trivial value
        for name, p in enc.model.named_parameters():
            if "rel_pos" in name:
                p.normal_(0, 0.1)
    path = export_encoder(enc.model, tmp_path / "rvsa.safetensors", {**enc.meta, "mean": [0.3] * 3, "std": [0.2] * 3})
    meta = read_encoder_meta(path)
    assert meta["arch"] == "vit_rvsa" and meta["window_size"] == 7 and meta["interval"] == 3
    back = ViTRVSA(size="base", img_size=224, weights=str(path)).eval()  # the export's architecture wins
    assert back.meta["size"] == "tiny" and back.meta["img_size"] == 96 and back.meta["mean"] == [0.3] * 3
    for k, v in enc.model.state_dict().items():
        assert torch.equal(back.model.state_dict()[k], v), k
    x = crop(scene, 96, 128)
    with torch.no_grad():
        for a, b in zip(enc.forward_intermediates(x), back.forward_intermediates(x), strict=True):
            assert torch.equal(a, b)
        assert torch.equal(enc.forward_pooled(x), back.forward_pooled(x))
    assert isinstance(load_encoder(path), type(enc.model))
    # the plain ViT refuses it; ViTRVSA refuses what it cannot build
    with pytest.raises(ConfigError, match="holds a vit_rvsa encoder; use class_path: ViTRVSA"):
        ViT(weights=str(path))
    with pytest.raises(ConfigError, match="size 'large'"):
        ENCODERS.get("vit_large_rvsa")(weights=str(path))
    import timm

    cnn = export_encoder(
        timm.create_model("resnet18", num_classes=0),
        tmp_path / "r18.safetensors",
        {"arch": "resnet18", "img_size": 64, "in_chans": 3},
    )
    with pytest.raises(ConfigError, match="class_path: ResNet"):
        ViTRVSA(weights=str(cnn))


def test_vit_rvsa_exports_are_checked(tmp_path: Path) -> None:
    torch.manual_seed(0)
    enc = ViTRVSA("tiny", img_size=32)
    meta = dict(enc.meta)
    enc.drop_pooling()  # a task model's encoder: no final norm
    path = export_encoder(enc.model, tmp_path / "maps_only.safetensors", meta)
    loaded = load_encoder(path)  # the norm only pooled features use stays at its init
    assert isinstance(loaded.norm, torch.nn.LayerNorm) and loaded.rsfm_meta["window_size"] == 7
    with pytest.raises(ValueError, match="no classifier"):
        load_encoder(path, num_classes=3)
    with pytest.raises(KeyError, match="window_size"):
        export_encoder(enc.model, tmp_path / "x.safetensors", {k: v for k, v in meta.items() if k != "window_size"})
    liar = export_encoder(enc.model, tmp_path / "liar.safetensors", {**meta, "size": "small"})
    with pytest.raises(CheckpointError, match="another shape"):
        load_encoder(liar)


def test_exports_that_contradict_their_metadata_are_refused(tmp_path: Path) -> None:
    torch.manual_seed(0)
    small = build_vit("small", img_size=64, patch_size=16)
    path = export_encoder(small, tmp_path / "liar.safetensors", VIT_META)  # says tiny, holds small
    with pytest.raises(ConfigError, match="model.encoder.weights.*does not fit"):
        ViTRVSA(weights=str(path))


def test_built_through_build_part_by_registered_name() -> None:
    spec = {"class_path": "vit_tiny_rvsa", "init_args": {"img_size": 64}}
    enc = build_part(spec, ENCODERS, "model.encoder", in_chans=4)
    assert isinstance(enc, ViTRVSA) and enc.meta["size"] == "tiny" and enc.meta["in_chans"] == 4
    assert enc.model.patch_embed.proj.in_channels == 4
    enc = build_part(
        {"class_path": "ViTRVSA", "init_args": {"size": "tiny", "img_size": 64}}, ENCODERS, "x", in_chans=2
    )
    assert enc.model.in_chans == 2 and enc.meta["arch"] == "vit_rvsa"
    assert {"ViTRVSA", "vit_tiny_rvsa", "vit_base_rvsa", "vit_large_rvsa"} <= set(ENCODERS.names())
    with pytest.raises(ConfigError, match="size"):
        build_part({"class_path": "vit_base_rvsa", "init_args": {"size": "tiny"}}, ENCODERS, "model.encoder")


def test_task_model_uses_the_pyramid_without_a_neck(loveda_batch, one_thread) -> None:
    from rsfm.models.task_model import TaskModel

    batch, info = loveda_batch
    model = TaskModel(
        {"class_path": "vit_tiny_rvsa", "init_args": {"img_size": 64}},
        {"seg": {"class_path": "FCNHead", "init_args": {"channels": 16, "in_index": 0}}},
        None,
        info,
    )
    assert model.encoder.meta["in_chans"] == info.num_channels
    assert not any(p.requires_grad for n, p in model.named_parameters() if n.startswith("encoder.model.norm."))
    out = model(batch)["seg"]
    assert out.shape == (4, len(info.classes), 64, 64)  # the stride-4 level, upsampled to the crops
    assert model.encoder.strides == [4, 8, 16, 32] and model.size_divisor == 32
