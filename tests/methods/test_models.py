"""MAE and SelectiveMAE models on real AID images; the PretrainMethod API they share with GeRSP."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rsfm.methods import MAE, GeRSP, PretrainMethod, SelectiveMAE, StepContext
from rsfm.models.encoders.vit import VIT_SIZES, build_vit, sincos_pos_embed_2d
from rsfm.optim import OptimConfig, build_optimizer, param_groups
from rsfm.utils.errors import ConfigError


@pytest.fixture(scope="module")
def imgs(datasets: Path) -> torch.Tensor:
    paths = [sorted((datasets / "aid" / c).glob("*.jpg"))[0] for c in ("Airport", "Forest", "Port", "Desert")]
    arr = [np.asarray(Image.open(p).convert("RGB").resize((64, 64)), np.float32) / 255 for p in paths]
    return (torch.from_numpy(np.stack(arr)).permute(0, 3, 1, 2) - 0.4) / 0.2


def test_vit_sizes_and_fixed_sincos() -> None:
    for size, spec in VIT_SIZES.items():
        with torch.device("meta"):  # structure only: no memory, no initialisation cost
            m = build_vit(size, img_size=32, patch_size=16)
        assert m.embed_dim == spec.embed_dim and len(m.blocks) == spec.depth
        assert m.blocks[0].attn.num_heads == spec.num_heads
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


@pytest.mark.parametrize("decoder", ["released", "rsfm"])
def test_selective_mae_forward_and_budgets(imgs: torch.Tensor, decoder: str) -> None:
    m = SelectiveMAE("tiny", img_size=112, patch_size=8, decoder=decoder)  # 196 tokens, as the paper's grid
    x = torch.nn.functional.interpolate(imgs, size=112)
    out = m(x, progress=0.1, generator=torch.Generator().manual_seed(0))
    assert out["ids_seed"].shape == (4, 14) and out["ids_added"].shape == (4, 15)
    assert out["ids_visible"].shape == (4, 29) and out["ids_target"].shape == (4, 49)
    assert out["pred"].shape == (4, 49, 192)
    for v, t in zip(out["ids_visible"], out["ids_target"], strict=True):
        assert len(set(v.tolist())) == 29 and not set(v.tolist()) & set(t.tolist())
    assert m.lr_scale == pytest.approx(0.25 / 0.85)
    out["loss"].backward()
    kv = m.decoder_blocks[0].cross_attn.kv if decoder == "released" else m.decoder_blocks[0].kv
    assert kv.weight.grad is not None
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


@pytest.mark.parametrize(("seeds", "targets"), [("topk", "sample"), ("sample", "topk"), ("topk", "topk")])
def test_official_score_with_a_top_k_selection_is_refused(seeds: str, targets: str) -> None:
    from rsfm.utils.errors import ConfigError

    with pytest.raises(ConfigError, match="hog_score=official .* needs model.seed_selection=sample"):
        SelectiveMAE(
            "tiny", img_size=64, patch_size=16, hog_score="official", seed_selection=seeds, target_selection=targets
        )


@pytest.mark.parametrize(
    "kwargs",
    [{"seed_selection": "best"}, {"hog_score": "x"}, {"rec_ratio": 0.9}, {"psts_boundaries": (0.5, 0.4, 0.7, 0.8)}],
)
def test_selective_mae_rejects_bad_options(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        SelectiveMAE("tiny", img_size=64, patch_size=16, **kwargs)


@pytest.mark.parametrize("method", [SelectiveMAE, MAE])
@pytest.mark.parametrize("token_weight_decay", [True, False])
def test_weight_decay_groups(method: type, token_weight_decay: bool) -> None:
    m = method("tiny", img_size=64, patch_size=16, token_weight_decay=token_weight_decay)
    cfg = OptimConfig(name="adamw", blr=1.5e-4, betas=[0.9, 0.95])
    opt = build_optimizer(param_groups(m, None, 1e-3, cfg.weight_decay), cfg)
    names = {id(p): n for n, p in m.named_parameters()}
    no_decay = {names[id(p)] for g in opt.param_groups if g["weight_decay"] == 0 for p in g["params"]}
    decay = {names[id(p)] for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    assert {"encoder.norm.weight", "encoder.blocks.0.attn.qkv.bias"} <= no_decay
    # the releases decay the (1, 1, D) tokens: their optimiser groups exempt only 1-D tensors
    tokens = {"encoder.cls_token", "mask_token"}
    assert tokens <= (decay if token_weight_decay else no_decay)
    assert "encoder.blocks.0.attn.qkv.weight" in decay and "decoder_pred.weight" in decay
    assert "encoder.pos_embed" not in decay  # frozen
    assert all(betas == (0.9, 0.95) for betas in (g["betas"] for g in opt.param_groups))
    assert isinstance(opt, torch.optim.AdamW)
    assert all(g["lr"] == 1e-3 for g in opt.param_groups)
    assert {g["weight_decay"] for g in opt.param_groups} == {0.0, cfg.weight_decay}
    # every trainable parameter is in exactly one group
    ids = [id(p) for g in opt.param_groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in m.parameters() if p.requires_grad)


def test_adamw_is_fused_where_it_can_be_and_steps_as_the_default() -> None:
    torch.manual_seed(0)
    m = MAE("tiny", img_size=32, patch_size=16, decoder_depth=1)
    twin = MAE("tiny", img_size=32, patch_size=16, decoder_depth=1)
    twin.load_state_dict(m.state_dict())
    opts = []
    for model, fused in ((m, None), (twin, False)):
        cfg = OptimConfig(name="adamw", lr=1e-3, betas=[0.9, 0.95], fused=fused)
        opts.append(build_optimizer(param_groups(model, None, 1e-3, cfg.weight_decay), cfg))
    assert opts[0].defaults["fused"] is True and not opts[1].defaults["fused"]
    # the same gradients (of unit scale: Adam normalises near-zero ones to ±lr, so rounding
    # noise would dominate them) give the same update, to rounding
    before = {k: v.clone() for k, v in m.state_dict().items()}
    g = torch.Generator().manual_seed(1)
    for _ in range(3):
        for a, b in zip(m.parameters(), twin.parameters(), strict=True):
            if a.requires_grad:
                a.grad = torch.randn(a.shape, generator=g)
                b.grad = a.grad.clone()
        for opt in opts:
            opt.step()
    for (name, a), b in zip(m.state_dict().items(), twin.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    assert sum(not torch.equal(v, before[k]) for k, v in m.state_dict().items()) > 10
    # a state saved by the foreach optimiser resumes into a fused one, which stays fused
    opts[0].load_state_dict(opts[1].state_dict())
    assert all(g["fused"] is True for g in opts[0].param_groups)
    opts[0].step()


# -- the PretrainMethod API -----------------------------------------------------------------


def test_training_step_with_step_context_returns_the_loss(imgs: torch.Tensor, one_thread) -> None:
    for method in (MAE("tiny", img_size=64, patch_size=16), SelectiveMAE("tiny", img_size=64, patch_size=16)):
        assert isinstance(method, PretrainMethod) and method.sample_keys == method.image_keys == ("image",)
        assert not method.joins_collectives
        ctx = StepContext(progress=0.2, generator=torch.Generator().manual_seed(0))
        out = method.training_step({"image": imgs}, ctx)
        assert out["loss"].ndim == 0 and torch.isfinite(out["loss"]) and out["loss"].requires_grad
        # the same generator state gives the same mask and loss (resumed runs repeat the masks)
        again = method.training_step({"image": imgs}, StepContext(0.2, torch.Generator().manual_seed(0)))
        assert torch.equal(out["ids_target"], again["ids_target"]) and torch.equal(out["loss"], again["loss"])
        out["loss"].backward()
        assert method.encoder.blocks[-1].mlp.fc2.weight.grad is not None
        method.after_optimizer_step()  # a no-op for masked image models
        meta = method.export_meta()
        assert meta == {"arch": "vit", "size": "tiny", "img_size": 64, "patch_size": 16, "in_chans": 3}


def test_selective_mae_logs_the_psts_stage(imgs: torch.Tensor) -> None:
    m = SelectiveMAE("tiny", img_size=64, patch_size=16)
    for progress, stage in [(0.0, 1), (0.36, 2), (0.5, 3), (0.74, 4), (0.9, 5)]:  # near, near→far, far, →random, random
        out = m.training_step({"image": imgs}, StepContext(progress, generator=torch.Generator().manual_seed(0)))
        assert out["psts_stage"].ndim == 0 and float(out["psts_stage"]) == stage, progress
    assert "psts_stage" not in MAE("tiny", img_size=64, patch_size=16).training_step({"image": imgs}, StepContext(0.5))


def test_unset_sizes_default_to_224_and_rgb() -> None:
    with torch.device("meta"):  # structure only: no memory, no initialisation cost
        _check_unset_sizes()


def _check_unset_sizes() -> None:
    for method in (MAE("tiny", img_size=None, in_chans=None), SelectiveMAE("tiny", img_size=None, in_chans=None)):
        assert method.img_size == 224 and method.in_chans == 3
        assert tuple(method.encoder.patch_embed.img_size) == (224, 224)
        assert method.encoder.patch_embed.proj.in_channels == 3
        assert method.num_patches == 14 * 14
        assert method.decoder_pred.out_features == 16 * 16 * 3
    g = GeRSP(num_classes=3, arch="vit", size="tiny", img_size=None, in_chans=None, queue_size=8)
    assert g.img_size == 224 and g.in_chans == 3
    assert g.export_meta()["img_size"] == 224 and g.export_meta()["in_chans"] == 3
    m = MAE("tiny", img_size=64, in_chans=4, patch_size=16)  # a 4-band encoder and pixel head
    assert m.encoder.patch_embed.proj.in_channels == 4 and m.decoder_pred.out_features == 16 * 16 * 4


def test_bad_method_options_raise_config_errors() -> None:
    with pytest.raises(ConfigError, match="num_classes"):
        GeRSP(num_classes=None, arch="vit", size="tiny", img_size=32, patch_size=8, queue_size=8)
    with pytest.raises(ConfigError, match="num_classes"):
        GeRSP(num_classes=0, arch="vit", size="tiny", img_size=32, patch_size=8, queue_size=8)
    with pytest.raises(ConfigError, match="size"):
        MAE("gigantic", img_size=64)
    with pytest.raises(ConfigError, match="patch_size"):
        MAE("tiny", img_size=60, patch_size=16)
    with pytest.raises(ConfigError, match="mask_ratio"):
        MAE("tiny", img_size=64, mask_ratio=1.0)
    # nothing masked (the loss, a mean over masked patches, was NaN), or nothing left visible
    with pytest.raises(ConfigError, match=r"model.mask_ratio must be in \(0, 1\), got 0.0"):
        MAE("tiny", img_size=64, mask_ratio=0.0)
    with pytest.raises(ConfigError, match="of 16 patches keeps 0: MAE needs at least one visible patch"):
        MAE("tiny", img_size=64, patch_size=16, mask_ratio=0.99)
