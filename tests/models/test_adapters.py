from pathlib import Path

import pytest
import torch

from rsfm.models.export import export_encoder
from rsfm.models.adapters import build_backbone, evenly_spaced_blocks
from rsfm.models.encoders.vit import build_vit


def test_evenly_spaced_blocks() -> None:
    assert evenly_spaced_blocks(12) == (3, 5, 7, 11)
    assert evenly_spaced_blocks(24) == (5, 11, 17, 23)
    with pytest.raises(ValueError):
        evenly_spaced_blocks(3)


@pytest.mark.parametrize("patch,strides", [(16, [4, 8, 16, 32]), (8, [2, 4, 8, 16])])
def test_vit_pyramid_strides_and_shapes(one_thread: None, patch: int, strides: list[int]) -> None:
    b = build_backbone({"arch": "vit", "size": "tiny", "img_size": 64, "patch_size": patch})
    assert b.strides == strides and b.out_channels == [192] * 4
    feats = b(torch.zeros(1, 3, 96, 128))  # not the pretraining size: position embedding resampled
    assert [tuple(f.shape[-2:]) for f in feats] == [(96 // s, 128 // s) for s in strides]


def test_resnet_stages(one_thread: None) -> None:
    b = build_backbone({"arch": "resnet50"})
    assert b.strides == [4, 8, 16, 32] and b.out_channels == [256, 512, 1024, 2048]
    assert [f.shape[1] for f in b(torch.zeros(1, 3, 64, 64))] == b.out_channels


def test_backbone_from_export_keeps_weights_and_meta(tmp_path: Path, one_thread: None) -> None:
    enc = build_vit("tiny", img_size=64, patch_size=16)
    path = export_encoder(
        enc,
        tmp_path / "enc.safetensors",
        {
            "arch": "vit",
            "size": "tiny",
            "img_size": 64,
            "patch_size": 16,
            "in_chans": 3,
            "mean": [0.4] * 3,
            "std": [0.2] * 3,
        },
    )
    b = build_backbone({"encoder": str(path), "frozen": True})
    assert b.rsfm_meta["mean"] == [0.4] * 3
    assert torch.equal(b.encoder.blocks[3].mlp.fc1.weight, enc.blocks[3].mlp.fc1.weight)
    b.train()
    assert not b.encoder.training and b.fpn1.training  # frozen encoder stays in eval mode
    assert not any(p.requires_grad for p in b.encoder.parameters())
    assert all(p.requires_grad for p in b.fpn1.parameters())
    with pytest.raises(FileNotFoundError):
        build_backbone({"encoder": str(tmp_path / "missing.safetensors")})
    with pytest.raises(ValueError, match="arch"):
        build_backbone({"arch": "swin"})
