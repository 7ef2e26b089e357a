"""MAE and SelectiveMAE models on real AID images."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rsfm.optim import build_adamw
from rsfm.methods.mae import MAE
from rsfm.methods.selective_mae import SelectiveMAE
from rsfm.models.encoders.vit import VIT_SIZES, build_vit, sincos_pos_embed_2d


@pytest.fixture(scope="module")
def imgs(datasets: Path) -> torch.Tensor:
    paths = [sorted((datasets / "aid" / c).glob("*.jpg"))[0] for c in ("Airport", "Forest", "Port", "Desert")]
    arr = [np.asarray(Image.open(p).convert("RGB").resize((64, 64)), np.float32) / 255 for p in paths]
    return (torch.from_numpy(np.stack(arr)).permute(0, 3, 1, 2) - 0.4) / 0.2


def test_vit_sizes_and_fixed_sincos() -> None:
    for size, spec in VIT_SIZES.items():
        if size == "large":
            continue
        m = build_vit(size, img_size=32, patch_size=16)
        assert m.embed_dim == spec.embed_dim and len(m.blocks) == spec.depth
    m = build_vit("tiny", img_size=64, patch_size=16)
    assert not m.pos_embed.requires_grad
    pe = sincos_pos_embed_2d(192, 4, cls_token=True)
    assert torch.equal(m.pos_embed[0], pe) and torch.all(pe[0] == 0)
    assert m.forward_intermediates(torch.zeros(1, 3, 64, 64), indices=[2, 5], intermediates_only=True)[0].shape == (
        1,
        192,
        4,
        4,
    )
    with pytest.raises(ValueError, match="multiple"):
        build_vit("tiny", img_size=60, patch_size=16)


def test_mae_forward(imgs: torch.Tensor) -> None:
    m = MAE("tiny", img_size=64, patch_size=8, mask_ratio=0.75)
    out = m(imgs, generator=torch.Generator().manual_seed(0))
    assert out["ids_visible"].shape == (4, 16) and out["ids_target"].shape == (4, 48)
    assert out["pred"].shape == (4, 48, 8 * 8 * 3)
    assert torch.isfinite(out["loss"]) and m.lr_scale == 1.0
    out["loss"].backward()
    assert m.encoder.blocks[0].attn.qkv.weight.grad is not None


def test_selective_mae_forward_and_budgets(imgs: torch.Tensor) -> None:
    m = SelectiveMAE("tiny", img_size=112, patch_size=8)  # 196 tokens, as the paper's grid
    x = torch.nn.functional.interpolate(imgs, size=112)
    out = m(x, progress=0.1, generator=torch.Generator().manual_seed(0))
    assert out["ids_seed"].shape == (4, 14) and out["ids_added"].shape == (4, 15)
    assert out["ids_visible"].shape == (4, 29) and out["ids_target"].shape == (4, 49)
    assert out["pred"].shape == (4, 49, 192)
    for v, t in zip(out["ids_visible"], out["ids_target"], strict=True):
        assert len(set(v.tolist())) == 29 and not set(v.tolist()) & set(t.tolist())
    assert m.lr_scale == pytest.approx(0.25 / 0.85)
    out["loss"].backward()
    assert m.decoder_blocks[0].kv.weight.grad is not None
    assert m.encoder.patch_embed.proj.weight.grad is not None


def test_selective_mae_seeds_are_the_richest_patches(imgs: torch.Tensor) -> None:
    from rsfm.methods.hog import hog_score

    m = SelectiveMAE("tiny", img_size=64, patch_size=8)
    out = m(imgs, progress=0.0)
    scores = hog_score(imgs, 8)
    top = scores.topk(out["ids_seed"].shape[1]).indices
    assert torch.equal(out["ids_seed"].sort(1).values, top.sort(1).values)


def test_official_score_with_sampling_runs(imgs: torch.Tensor) -> None:
    m = SelectiveMAE(
        "tiny", img_size=64, patch_size=16, hog_score="official", seed_selection="sample", target_selection="sample"
    )
    a = m(imgs, generator=torch.Generator().manual_seed(1))["ids_seed"]
    b = m(imgs, generator=torch.Generator().manual_seed(2))["ids_seed"]
    assert not torch.equal(a, b)  # uniform sampling, not a fixed ranking


@pytest.mark.parametrize(
    "kwargs",
    [{"seed_selection": "best"}, {"hog_score": "x"}, {"rec_ratio": 0.9}, {"psts_boundaries": (0.5, 0.4, 0.7, 0.8)}],
)
def test_selective_mae_rejects_bad_options(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        SelectiveMAE("tiny", img_size=64, patch_size=16, **kwargs)


def test_weight_decay_groups() -> None:
    m = SelectiveMAE("tiny", img_size=64, patch_size=16)
    opt = build_adamw(m, 1e-3)
    names = {id(p): n for n, p in m.named_parameters()}
    no_decay = {names[id(p)] for g in opt.param_groups if g["weight_decay"] == 0 for p in g["params"]}
    decay = {names[id(p)] for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    assert {"encoder.cls_token", "mask_token", "encoder.norm.weight", "encoder.blocks.0.attn.qkv.bias"} <= no_decay
    assert "encoder.blocks.0.attn.qkv.weight" in decay and "decoder_pred.weight" in decay
    assert "encoder.pos_embed" not in decay  # frozen
    assert all(betas == (0.9, 0.95) for betas in (g["betas"] for g in opt.param_groups))
