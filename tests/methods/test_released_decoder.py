"""SelectiveMAE's released decoder: the release's weights load, and decode as the release's block does.

The release's tensors are built here from its model definition's names and shapes (SelectiveMAE's
``mae_vit_small_patch16`` with the pretraining script's 8 decoder blocks: encoder 384 wide, 12
blocks, 6 heads; decoder 256 wide, 8 heads), saved in its checkpoint container
(``{"model": state_dict, "epoch": ...}``) and loaded back. The reference decoder below is written
from the release's equations with plain tensor operations, independently of rsfm's modules.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from rsfm.methods import SelectiveMAE
from rsfm.methods.selective_mae import released_state_dict
from rsfm.models.encoders.vit import sincos_pos_embed_2d
from rsfm.utils.errors import CheckpointError, ConfigError

D, DEPTH, DD, DEC_DEPTH, P, GRID = 384, 12, 256, 8, 16, 14


def release_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors under the names and shapes of the release's ViT-S/16 pretraining model."""
    g = torch.Generator().manual_seed(seed)
    shapes: dict[str, tuple[int, ...]] = {
        "cls_token": (1, 1, D),
        "pos_embed": (1, GRID * GRID + 1, D),
        "patch_embed.proj.weight": (D, 3, P, P),
        "patch_embed.proj.bias": (D,),
        "norm.weight": (D,),
        "norm.bias": (D,),
        "decoder_embed1.weight": (DD, D),
        "decoder_embed1.bias": (DD,),
        "mask_token": (1, 1, DD),
        "decoder_norm.weight": (DD,),
        "decoder_norm.bias": (DD,),
        "decoder_pred.weight": (P * P * 3, DD),
        "decoder_pred.bias": (P * P * 3,),
        "decoder_pos_embed": (1, GRID * GRID + 1, DD),
        "pos_embed_probs": (1, GRID * GRID, D),
        "get_token_probs.0.norm1.weight": (D,),
        "get_token_probs.0.norm1.bias": (D,),
        "get_token_probs.0.attn.qkv.weight": (3 * D, D),
        "get_token_probs.0.attn.proj.weight": (D, D),
        "get_token_probs.0.attn.proj.bias": (D,),
        "get_token_probs.0.norm2.weight": (D,),
        "get_token_probs.0.norm2.bias": (D,),
        "get_token_probs.0.mlp.fc1.weight": (4 * D, D),
        "get_token_probs.0.mlp.fc1.bias": (4 * D,),
        "get_token_probs.0.mlp.fc2.weight": (D, 4 * D),
        "get_token_probs.0.mlp.fc2.bias": (D,),
        "get_token_probs.1.weight": (1, D),
        "get_token_probs.1.bias": (1,),
        "get_token_probs_linear.weight": (1, D),
        "get_token_probs_linear.bias": (1,),
        "hog.weight_x": (3, 1, 3, 3),
        "hog.weight_y": (3, 1, 3, 3),
        "hog.gkern": (16, 16),
    }
    for i in range(DEPTH):
        b = f"blocks.{i}."
        shapes |= {
            b + "norm1.weight": (D,),
            b + "norm1.bias": (D,),
            b + "attn.qkv.weight": (3 * D, D),
            b + "attn.qkv.bias": (3 * D,),
            b + "attn.proj.weight": (D, D),
            b + "attn.proj.bias": (D,),
            b + "norm2.weight": (D,),
            b + "norm2.bias": (D,),
            b + "mlp.fc1.weight": (4 * D, D),
            b + "mlp.fc1.bias": (4 * D,),
            b + "mlp.fc2.weight": (D, 4 * D),
            b + "mlp.fc2.bias": (D,),
        }
    for i in range(DEC_DEPTH):
        b = f"decoder_blocks.{i}."
        shapes |= {
            b + "norm1.weight": (DD,),
            b + "norm1.bias": (DD,),
            b + "cross_attn.q.weight": (DD, DD),
            b + "cross_attn.q.bias": (DD,),
            b + "cross_attn.kv.weight": (2 * DD, D),
            b + "cross_attn.kv.bias": (2 * DD,),
            b + "cross_attn.proj.weight": (DD, DD),
            b + "cross_attn.proj.bias": (DD,),
            b + "norm2.weight": (DD,),
            b + "norm2.bias": (DD,),
            b + "mlp.fc1.weight": (4 * DD, DD),
            b + "mlp.fc1.bias": (4 * DD,),
            b + "mlp.fc2.weight": (DD, 4 * DD),
            b + "mlp.fc2.bias": (DD,),
        }
    state = {k: torch.randn(s, generator=g) * 0.05 for k, s in shapes.items()}
    for k in state:  # norms near identity, as trained ones
        if k.endswith("norm.weight") or ".norm1.weight" in k or ".norm2.weight" in k or k == "decoder_norm.weight":
            state[k] = 1 + state[k]
    # the release's position embeddings are the fixed 2-D sin-cos tables
    state["pos_embed"] = sincos_pos_embed_2d(D, GRID, cls_token=True).unsqueeze(0)
    state["decoder_pos_embed"] = sincos_pos_embed_2d(DD, GRID, cls_token=True).unsqueeze(0)
    return state


def reference_decoder(state: dict[str, torch.Tensor], latent: torch.Tensor, ids_target: torch.Tensor) -> torch.Tensor:
    """The release's partial decoder in plain tensor operations: queries are the mask token plus the
    targets' decoder position; each block's keys and values project the encoder output as it is."""
    heads, hd = 8, DD // 8
    pos = state["decoder_pos_embed"][0, 1:]
    x = state["mask_token"] + pos[ids_target]
    b, q_len, m_len = x.shape[0], x.shape[1], latent.shape[1]
    for i in range(DEC_DEPTH):
        w = {k.split(f"decoder_blocks.{i}.", 1)[1]: v for k, v in state.items() if k.startswith(f"decoder_blocks.{i}.")}
        h = F.layer_norm(x, (DD,), w["norm1.weight"], w["norm1.bias"], eps=1e-6)
        q = F.linear(h, w["cross_attn.q.weight"], w["cross_attn.q.bias"]).view(b, q_len, heads, hd).transpose(1, 2)
        kv = F.linear(latent, w["cross_attn.kv.weight"], w["cross_attn.kv.bias"]).view(b, m_len, 2, heads, hd)
        k, v = kv[:, :, 0].transpose(1, 2), kv[:, :, 1].transpose(1, 2)
        att = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(hd), dim=-1) @ v
        x = x + F.linear(
            att.transpose(1, 2).reshape(b, q_len, DD), w["cross_attn.proj.weight"], w["cross_attn.proj.bias"]
        )
        h = F.layer_norm(x, (DD,), w["norm2.weight"], w["norm2.bias"], eps=1e-6)
        h = F.linear(
            F.gelu(F.linear(h, w["mlp.fc1.weight"], w["mlp.fc1.bias"])), w["mlp.fc2.weight"], w["mlp.fc2.bias"]
        )
        x = x + h
    x = F.layer_norm(x, (DD,), state["decoder_norm.weight"], state["decoder_norm.bias"], eps=1e-6)
    return F.linear(x, state["decoder_pred.weight"], state["decoder_pred.bias"])


def released_model() -> SelectiveMAE:
    return SelectiveMAE("small", img_size=224, patch_size=P, decoder="released", decoder_depth=DEC_DEPTH)


def aid_images(datasets: Path, n: int = 2) -> torch.Tensor:
    files = sorted((datasets / "aid" / "Airport").glob("*.jpg"))[:n]
    arrs = [np.asarray(Image.open(f).convert("RGB").resize((224, 224)), dtype=np.float32) / 255 for f in files]
    x = torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2)
    return (x - 0.4) / 0.2


def test_the_released_decoder_has_the_release_names_and_shapes() -> None:
    model = released_model()
    mapped, report = released_state_dict(release_state())
    own = model.state_dict()
    assert set(mapped) == set(own)
    assert all(own[k].shape == v.shape for k, v in mapped.items())
    assert "decoder_embed.weight" not in own  # the release projects the memory in each block
    assert {"decoder_embed1.weight", "hog.gkern", "get_token_probs.1.weight", "decoder_pos_embed"} <= set(
        report["dropped"]
    )
    assert len(report["decoder"]) == 1 + 2 + 2 + 14 * DEC_DEPTH  # mask token, norm, pred, blocks


def test_released_weights_load_and_decode_as_the_release(datasets: Path, tmp_path: Path) -> None:
    state = release_state()
    ckpt = tmp_path / "selectivemae-vit-small.pth"
    torch.save({"model": state, "epoch": 799, "args": None}, ckpt)
    model = released_model().eval()
    report = model.load_released(torch.load(ckpt, weights_only=False)["model"], source=str(ckpt))
    assert len(report["encoder"]) == 4 + 2 + 12 * DEPTH
    torch.testing.assert_close(model.encoder.patch_embed.proj.weight, state["patch_embed.proj.weight"])
    # the decoder's fixed position table is the release's
    torch.testing.assert_close(model.decoder_pos_embed, state["decoder_pos_embed"])

    imgs = aid_images(datasets)
    g = torch.Generator().manual_seed(0)
    ids = torch.stack([torch.randperm(GRID * GRID, generator=g) for _ in range(imgs.shape[0])])
    ids_visible, ids_target = ids[:, :29], ids[:, 29:78]
    with torch.no_grad():
        latent = model.encode_visible(imgs, ids_visible)
        ours = model.forward_decoder(latent, ids_visible, ids_target)
        ref = reference_decoder(state, latent, ids_target)
    assert ours.shape == (2, 49, P * P * 3)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    # and a full training step runs on them
    out = model.train()(imgs, progress=0.5, generator=torch.Generator().manual_seed(1))
    out["loss"].backward()
    assert torch.isfinite(out["loss"]) and model.decoder_blocks[0].cross_attn.kv.weight.grad is not None


def test_released_weights_need_the_released_decoder_and_its_shapes() -> None:
    state = release_state()
    with pytest.raises(ConfigError, match="decoder=released"):
        SelectiveMAE("small", img_size=224, patch_size=P, decoder="rsfm").load_released(state)
    shallow = SelectiveMAE("small", img_size=224, patch_size=P, decoder="released", decoder_depth=2)
    with pytest.raises(CheckpointError, match="unexpected.*decoder_blocks.2"):
        shallow.load_released(state, source="ckpt.pth")
    del state["decoder_blocks.0.cross_attn.kv.bias"]
    with pytest.raises(CheckpointError, match=r"ckpt.pth.*missing.*decoder_blocks.0.cross_attn.kv.bias"):
        released_model().load_released(state, source="ckpt.pth")
    with pytest.raises(CheckpointError, match="unknown key.*head.weight"):
        released_state_dict({"head.weight": torch.zeros(2, 2)})
    with pytest.raises(ConfigError, match="model.decoder"):
        SelectiveMAE("tiny", img_size=64, patch_size=16, decoder="crossmae")


@pytest.mark.parametrize("decoder", ["released", "rsfm"])
def test_both_decoders_train(decoder: str, datasets: Path) -> None:
    model = SelectiveMAE("tiny", img_size=112, patch_size=8, decoder=decoder, decoder_depth=2)
    imgs = F.interpolate(aid_images(datasets), size=112, mode="bilinear", antialias=True)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(3):
        out = model(imgs, progress=0.1, generator=torch.Generator().manual_seed(0))
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(float(out["loss"].detach()))
    assert out["pred"].shape == (2, 49, 8 * 8 * 3)
    assert losses[-1] < losses[0]  # the same tokens three times: the decoder fits them
