"""The attention kernel choice (:mod:`rsfm.models.attention`) on real AID images.

SDPA in fp32 (and on GPUs), the explicit products in bf16 on the CPU, for timm's layers (the
ViT encoders, MAE's decoder) and rsfm's own (SelectiveMAE's cross-attention decoders). The two
kernels compute the same function: under CPU autocast to bf16, losses agree within 0.1 % and the
gradient of every parameter within 5 % of its largest entry (both kernels round the inputs and
outputs of the products to bf16; the explicit one also rounds the logits, the flash kernel
accumulates them in fp32).
"""

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from rsfm.methods import MAE, SelectiveMAE
from rsfm.models import attention as attn_mod
from rsfm.models.attention import attention, choose_attention_kernels, explicit_attention_pays
from rsfm.models.encoders.vit import build_vit


@pytest.fixture(scope="module")
def imgs(datasets: Path) -> torch.Tensor:
    """``(4, 3, 64, 64)`` float32: four AID scenes, normalised."""
    paths = [sorted((datasets / "aid" / c).glob("*.jpg"))[2] for c in ("Airport", "Forest", "Port", "Desert")]
    arr = [np.asarray(Image.open(p).convert("RGB").resize((64, 64)), np.float32) / 255 for p in paths]
    return (torch.from_numpy(np.stack(arr)).permute(0, 3, 1, 2) - 0.4) / 0.2


@pytest.fixture
def sdpa_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts calls of ``F.scaled_dot_product_attention`` (timm and rsfm look it up per call)."""
    calls: list[int] = []
    real = F.scaled_dot_product_attention

    def counting(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(F, "scaled_dot_product_attention", counting)
    return calls


def bf16() -> torch.autocast:
    return torch.autocast("cpu", dtype=torch.bfloat16)


def test_the_explicit_products_pay_for_bf16_on_the_cpu_only() -> None:
    x = torch.zeros(2, 3)
    assert not explicit_attention_pays(x)
    assert explicit_attention_pays(x.bfloat16())
    assert not explicit_attention_pays(x.half())
    with bf16():
        assert explicit_attention_pays(x)
    with torch.autocast("cpu", dtype=torch.float16):
        assert not explicit_attention_pays(x)
    assert not explicit_attention_pays(torch.zeros(2, 3, device="meta", dtype=torch.bfloat16))


def test_vit_encoder_runs_sdpa_in_fp32_and_the_explicit_products_in_cpu_bf16(
    imgs: torch.Tensor, sdpa_calls: list[int]
) -> None:
    torch.manual_seed(0)
    vit = build_vit("tiny", img_size=64, patch_size=8).eval()
    with torch.no_grad():
        ref = vit.forward_features(imgs)
        assert len(sdpa_calls) == len(vit.blocks) == 12
        with bf16():
            low = vit.forward_features(imgs)
        assert len(sdpa_calls) == 12, "bf16 on the CPU must not call SDPA"
        assert not any(b.attn.fused_attn for b in vit.blocks)
        again = vit.forward_features(imgs)  # back in fp32: SDPA again
    assert len(sdpa_calls) == 24 and all(b.attn.fused_attn for b in vit.blocks)
    torch.testing.assert_close(again, ref)
    err = (low.float() - ref).abs().max() / ref.abs().max()
    assert err < 2e-2, f"bf16 explicit attention differs from fp32 SDPA by {err:.3g} of the largest entry"


def _loss_and_grads(model: torch.nn.Module, imgs: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    with bf16():
        out = model(imgs, progress=0.5, generator=torch.Generator().manual_seed(3))
    out["loss"].backward()
    return out["loss"].detach().float(), {
        n: p.grad.float().clone() for n, p in model.named_parameters() if p.grad is not None
    }


@pytest.mark.parametrize(
    "make, n_attention",
    [
        pytest.param(lambda: MAE(size="tiny", img_size=64, patch_size=8, decoder_depth=2), 14, id="mae"),
        pytest.param(
            lambda: SelectiveMAE(size="tiny", img_size=64, patch_size=8, decoder_depth=2), 14, id="selective_mae"
        ),
        pytest.param(
            lambda: SelectiveMAE(size="tiny", img_size=64, patch_size=8, decoder_depth=2, decoder="released"),
            14,
            id="selective_mae_released_decoder",
        ),
    ],
)
def test_pretraining_step_in_cpu_bf16_equals_the_sdpa_step(
    make, n_attention: int, imgs: torch.Tensor, sdpa_calls: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    torch.manual_seed(0)
    model = make().train()
    loss, grads = _loss_and_grads(model, imgs)
    assert sdpa_calls == [], "the encoder and decoder must use the explicit products in CPU bf16"
    monkeypatch.setattr(attn_mod, "explicit_attention_pays", lambda x: False)  # force SDPA
    loss_sdpa, grads_sdpa = _loss_and_grads(model, imgs)
    assert len(sdpa_calls) == n_attention
    torch.testing.assert_close(loss, loss_sdpa, rtol=1e-3, atol=0.0)
    assert grads.keys() == grads_sdpa.keys() and len(grads) > 10
    for name, g in grads_sdpa.items():
        err = (grads[name] - g).abs().max() / g.abs().max().clamp_min(1e-12)
        assert err < 5e-2, f"{name}: gradient differs by {err:.2e} of its largest entry"


def test_attention_is_softmax_attention(imgs: torch.Tensor) -> None:
    # queries, keys and values from real image patches (8 x 8 x 3 = 192 values, 4 heads of 48)
    tokens = F.unfold(imgs, 8, stride=8).transpose(1, 2)  # (4, 64, 192)
    q, k, v = (tokens.view(4, 64, 4, 48).transpose(1, 2) * s for s in (0.3, 0.2, 1.0))
    ref = torch.softmax(q @ k.transpose(-2, -1) / 48**0.5, dim=-1) @ v
    torch.testing.assert_close(attention(q, k, v), ref, rtol=1e-5, atol=1e-5)
    low = attention(q.bfloat16(), k.bfloat16(), v.bfloat16())
    assert low.dtype == torch.bfloat16
    assert ((low.float() - ref).abs().max() / ref.abs().max()) < 2e-2


def test_choose_attention_kernels_is_idempotent_and_keeps_a_layer_built_explicit(imgs: torch.Tensor) -> None:
    vit = build_vit("tiny", img_size=64, patch_size=8).eval()
    hooks = sum(len(b.attn._forward_pre_hooks) for b in vit.blocks)
    assert choose_attention_kernels(vit) == 12
    assert sum(len(b.attn._forward_pre_hooks) for b in vit.blocks) == hooks == 12
    # a layer built explicit (timm's TIMM_FUSED_ATTN=0) stays explicit in fp32
    from timm.models.vision_transformer import VisionTransformer

    plain = VisionTransformer(img_size=64, patch_size=8, embed_dim=48, depth=1, num_heads=3, num_classes=0)
    plain.blocks[0].attn.fused_attn = False
    assert choose_attention_kernels(plain) == 1
    with torch.no_grad():
        plain.forward_features(imgs)
    assert plain.blocks[0].attn.fused_attn is False
