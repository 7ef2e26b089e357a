"""Multi-scale feature adapters that let dense-prediction heads use any rsfm encoder.

A plain ViT gives one feature map at stride ``patch_size``. Dense heads (UperNet, FPN-based
detectors, change decoders) want a pyramid. :class:`ViTFeaturePyramid` builds the simple
feature pyramid of ViTDet (Li et al., ECCV 2022, §3) as used by RVSA and MTP: features of
four evenly spaced blocks, two 2× deconvolutions for stride p/4, one for p/2, identity for p
and a max-pool for 2p. :class:`ResNetFeatures` returns the native stages of a timm ResNet.
Both expose ``out_channels`` and ``strides`` (pixels), so heads are built from them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from rsfm.engine.export import is_resnet, load_encoder, read_encoder_meta
from rsfm.models.vit import build_vit

__all__ = ["ResNetFeatures", "ViTFeaturePyramid", "build_backbone", "evenly_spaced_blocks"]


def evenly_spaced_blocks(depth: int, n: int = 4) -> tuple[int, ...]:
    """Indices of ``n`` evenly spaced blocks ending at the last one: 12 → (3, 5, 7, 11).

    For depth 12 this is the (3, 5, 7, 11) of RVSA/MTP; for 24 it gives (5, 11, 17, 23).
    """
    if depth < n:
        raise ValueError(f"cannot take {n} blocks of a depth-{depth} encoder")
    if depth == 12 and n == 4:
        return (3, 5, 7, 11)
    step = depth // n
    return tuple(step * (i + 1) - 1 for i in range(n))


class ViTFeaturePyramid(nn.Module):
    """Simple feature pyramid over a timm ViT (ViTDet §3; RVSA/MTP's neck).

    Args:
        encoder: a timm ``VisionTransformer`` (rsfm's :func:`~rsfm.models.vit.build_vit` or
            :func:`~rsfm.engine.export.load_encoder`), preferably with ``dynamic_img_size``.
        out_indices: the four blocks whose outputs feed the pyramid (default: evenly spaced).
        frozen: freeze the encoder (its parameters get ``requires_grad=False`` and it stays in
            eval mode).

    Input ``(B, C, H, W)`` float32 with ``H``, ``W`` multiples of the patch size ``p``;
    output: a list of four ``(B, D, H/s, W/s)`` maps for ``strides = (p/4, p/2, p, 2p)``
    pixels (4, 8, 16, 32 for p = 16), ``D`` the encoder width.
    """

    def __init__(self, encoder: nn.Module, out_indices: Sequence[int] | None = None, frozen: bool = False) -> None:
        super().__init__()
        self.encoder = encoder
        depth = len(encoder.blocks)
        self.out_indices = tuple(out_indices) if out_indices is not None else evenly_spaced_blocks(depth)
        if len(self.out_indices) != 4:
            raise ValueError(f"out_indices must name 4 blocks, got {self.out_indices}")
        d = encoder.embed_dim
        p = encoder.patch_embed.patch_size[0]
        if p % 4:
            raise ValueError(f"patch_size {p} must be divisible by 4 for the stride-p/4 level")
        self.fpn1 = nn.Sequential(
            nn.ConvTranspose2d(d, d, 2, 2), nn.BatchNorm2d(d), nn.GELU(), nn.ConvTranspose2d(d, d, 2, 2)
        )
        self.fpn2 = nn.ConvTranspose2d(d, d, 2, 2)
        self.fpn3 = nn.Identity()
        self.fpn4 = nn.MaxPool2d(2, 2)
        self.out_channels = [d] * 4
        self.strides = [p // 4, p // 2, p, 2 * p]
        self.frozen = frozen
        if frozen:
            self.encoder.requires_grad_(False)

    def train(self, mode: bool = True) -> ViTFeaturePyramid:
        """Set train/eval mode; a frozen encoder stays in eval mode."""
        super().train(mode)
        if self.frozen:
            self.encoder.eval()
        return self

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``(B, C, H, W)`` → four maps at ``self.strides``; see the class docstring."""
        feats = self.encoder.forward_intermediates(
            x, indices=list(self.out_indices), intermediates_only=True, output_fmt="NCHW"
        )
        return [f(t) for f, t in zip((self.fpn1, self.fpn2, self.fpn3, self.fpn4), feats, strict=True)]


class ResNetFeatures(nn.Module):
    """Stages 1–4 of a timm ResNet as a pyramid at strides (4, 8, 16, 32) pixels.

    Args:
        name: a timm ResNet name, e.g. ``resnet50``.
        frozen: freeze the weights (BatchNorm statistics too).
        state_dict: optional weights (timm key names) to load.
    """

    def __init__(self, name: str = "resnet50", frozen: bool = False, state_dict: dict | None = None) -> None:
        super().__init__()
        self.body = timm.create_model(name, pretrained=False, features_only=True, out_indices=(1, 2, 3, 4))
        if state_dict is not None:
            missing, unexpected = self.body.load_state_dict(state_dict, strict=False)
            if missing:
                raise ValueError(f"ResNet weights lack {len(missing)} tensors, e.g. {missing[:3]}")
        self.out_channels = list(self.body.feature_info.channels())
        self.strides = list(self.body.feature_info.reduction())
        self.frozen = frozen
        if frozen:
            self.body.requires_grad_(False)

    def train(self, mode: bool = True) -> ResNetFeatures:
        """Set train/eval mode; a frozen body stays in eval mode."""
        super().train(mode)
        if self.frozen:
            self.body.eval()
        return self

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``(B, 3, H, W)`` → four maps ``(B, C_i, H/s_i, W/s_i)``."""
        return self.body(x)


def build_backbone(spec: dict[str, Any]) -> nn.Module:
    """Build a multi-scale backbone from a config mapping.

    Keys: ``encoder`` (path of an rsfm ``.safetensors`` export, a ViT or a ResNet such as
    GeRSP's ``resnet50``; its architecture, sizes and normalisation are read from it) or,
    for random initialisation, ``arch`` (``vit`` or a
    timm ResNet name such as ``resnet50``) with ``size``, ``img_size`` and ``patch_size`` for
    ViTs; optional ``frozen`` (bool), ``drop_path_rate`` (float) and ``out_indices``.

    Returns:
        A :class:`ViTFeaturePyramid` or :class:`ResNetFeatures`; for an rsfm export its
        ``rsfm_meta`` attribute holds the export's metadata (``mean``, ``std``...).

    Raises:
        FileNotFoundError: if ``encoder`` does not exist.
        ValueError: on an unknown ``arch`` or missing keys.
    """
    frozen = bool(spec.get("frozen", False))
    drop_path = float(spec.get("drop_path_rate", 0.0))
    if spec.get("encoder"):
        path = Path(spec["encoder"])
        meta = read_encoder_meta(path)
        if is_resnet(str(meta.get("arch", ""))):
            from safetensors.torch import load_file

            resnet = ResNetFeatures(meta["arch"], frozen=frozen, state_dict=load_file(str(path)))
            resnet.rsfm_meta = meta
            return resnet
        encoder = load_encoder(path, drop_path_rate=drop_path, dynamic_img_size=True)
        backbone = ViTFeaturePyramid(encoder, spec.get("out_indices"), frozen=frozen)
        backbone.rsfm_meta = encoder.rsfm_meta
        return backbone
    arch = spec.get("arch", "vit")
    if arch == "vit":
        for key in ("size", "patch_size"):
            if key not in spec:
                raise ValueError(f"backbone.{key} is required for a randomly initialised ViT")
        encoder = build_vit(
            spec["size"],
            img_size=int(spec.get("img_size", 224)),
            patch_size=int(spec["patch_size"]),
            drop_path_rate=drop_path,
            dynamic_img_size=True,
        )
        return ViTFeaturePyramid(encoder, spec.get("out_indices"), frozen=frozen)
    if arch.startswith("resnet"):
        return ResNetFeatures(arch, frozen=frozen)
    raise ValueError(f"backbone.arch {arch!r} is not supported; expected 'vit' or a timm ResNet name")
