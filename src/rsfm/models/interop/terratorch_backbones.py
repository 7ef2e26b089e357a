"""TerraTorch backbones for rsfm exports: ``rsfm_vit`` and ``rsfm_resnet`` (imports terratorch).

Importing this module adds both to ``TERRATORCH_BACKBONE_REGISTRY`` (``import rsfm`` imports it
as soon as terratorch is imported). Each takes the export as ``ckpt_path`` (TerraTorch's
convention for local weights) and loads it when ``pretrained`` is true; the architecture always
comes from the export's metadata. A backbone's ``forward`` returns a list of feature maps and
its ``out_channels`` their widths, as TerraTorch's necks and decoders expect:

- ``rsfm_vit``: the tokens ``(B, 1 + N, D)`` after every block (``D`` = width, ``N`` patches,
  class token first), like TerraTorch's own ViTs; decoders need the necks ``SelectIndices``
  (e.g. blocks 3, 5, 7, 11) and ``ReshapeTokensToImage`` (to ``(B, D, H/p, W/p)``), and for a
  pyramid decoder such as UPerNet also ``LearnedInterpolateToPyramidal``.
- ``rsfm_resnet``: the four stage maps ``(B, C_i, H/s_i, W/s_i)`` at strides 4, 8, 16, 32
  (256 … 2048 channels for ResNet-50).

Inputs are ``(B, in_chans, H, W)`` float32 normalised with the export's statistics (its
``mean``/``std`` metadata, in ``backbone.rsfm_meta``).

.. versionadded:: 0.3
"""

from __future__ import annotations

from typing import Any

import torch
from terratorch.registry import TERRATORCH_BACKBONE_REGISTRY
from torch import Tensor, nn

from rsfm.models.export import is_resnet, read_encoder_meta
from rsfm.models.interop.timm_models import register_timm_models, timm_model_name
from rsfm.utils.errors import CheckpointError

__all__ = ["BACKBONES", "RSFMResNetBackbone", "RSFMViTBackbone", "rsfm_resnet", "rsfm_vit"]


def _timm_model(ckpt_path: str | None, pretrained: bool, in_chans: int | None, model_bands: Any, **kwargs: Any):
    """The export's metadata and its timm model (weights loaded when ``pretrained``)."""
    import timm

    if not ckpt_path:
        raise CheckpointError("ckpt_path: an rsfm backbone needs the export (.safetensors) that defines it")
    meta = read_encoder_meta(ckpt_path)
    register_timm_models()
    if in_chans is None and model_bands is not None:
        in_chans = len(model_bands)
    model = timm.create_model(
        timm_model_name(meta),
        pretrained=pretrained,
        pretrained_cfg_overlay={"file": str(ckpt_path)},
        num_classes=0,
        in_chans=int(in_chans or meta["in_chans"]),
        img_size=int(meta["img_size"]) if meta.get("arch") == "vit" else None,
        **kwargs,
    )
    return meta, model


class RSFMViTBackbone(nn.Module):
    """An rsfm ViT export as a TerraTorch backbone: the tokens after every block.

    Attributes:
        vit: the timm ``VisionTransformer`` (:func:`rsfm.models.encoders.vit.build_vit`'s architecture).
        out_channels: the width ``D`` once per block.
        rsfm_meta: the export's metadata.
    """

    def __init__(self, vit: nn.Module, meta: dict[str, Any]) -> None:
        super().__init__()
        self.vit = vit
        self.rsfm_meta = meta
        self.out_channels = [int(vit.embed_dim)] * len(vit.blocks)

    def forward(self, x: Tensor, **kwargs: Any) -> list[Tensor]:
        """``(B, C, H, W)`` float32 (sides multiples of the patch) -> per block ``(B, 1 + N, D)``."""
        _, tokens = self.vit.forward_intermediates(x, output_fmt="NLC", norm=False, return_prefix_tokens=True)
        return [torch.cat([prefix, t], dim=1) for t, prefix in tokens]


class RSFMResNetBackbone(nn.Module):
    """An rsfm ResNet export as a TerraTorch backbone: the four stage maps.

    Attributes:
        resnet: timm's ``ResNet``.
        out_channels: channels of stages 1-4 (256, 512, 1024, 2048 for ResNet-50).
        rsfm_meta: the export's metadata.
    """

    def __init__(self, resnet: nn.Module, meta: dict[str, Any]) -> None:
        super().__init__()
        self.resnet = resnet
        self.rsfm_meta = meta
        self.out_channels = [int(f["num_chs"]) for f in resnet.feature_info[1:]]

    def forward(self, x: Tensor, **kwargs: Any) -> list[Tensor]:
        """``(B, C, H, W)`` float32 -> four maps ``(B, C_i, H/s_i, W/s_i)``, ``s_i`` = 4, 8, 16, 32."""
        return list(self.resnet.forward_intermediates(x, indices=[1, 2, 3, 4], intermediates_only=True))


@TERRATORCH_BACKBONE_REGISTRY.register
def rsfm_vit(
    ckpt_path: str | None = None,
    pretrained: bool = True,
    model_bands: list[Any] | None = None,
    in_chans: int | None = None,
    drop_path_rate: float = 0.0,
    **kwargs: Any,
) -> RSFMViTBackbone:
    """An rsfm ViT export (``arch: vit``) as a TerraTorch backbone.

    Args:
        ckpt_path: the export (``.safetensors``); it defines the architecture.
        pretrained: load its weights (False: the architecture only, e.g. before loading a
            fine-tuned TerraTorch checkpoint).
        model_bands: TerraTorch's band list; its length is the input channels when
            ``in_chans`` is None.
        in_chans: input channels; None: ``len(model_bands)`` or the export's. A 3-band export
            has its patch projection adapted by timm's rule.
        drop_path_rate: stochastic depth.
        **kwargs: more arguments of timm's ``VisionTransformer``; ``dynamic_img_size`` is
            True unless given (inputs of any size, position embedding resampled).

    Raises:
        CheckpointError: if ``ckpt_path`` is missing, unreadable or not a ViT export.
    """
    meta = read_encoder_meta(ckpt_path) if ckpt_path else None
    if meta is not None and meta.get("arch") != "vit":
        raise CheckpointError(
            f"ckpt_path: {ckpt_path} holds a {meta.get('arch')!r} encoder; rsfm_vit takes a ViT export"
        )
    kwargs.setdefault("dynamic_img_size", True)  # any input whose sides are multiples of the patch
    meta, model = _timm_model(ckpt_path, pretrained, in_chans, model_bands, drop_path_rate=drop_path_rate, **kwargs)
    return RSFMViTBackbone(model, meta)


@TERRATORCH_BACKBONE_REGISTRY.register
def rsfm_resnet(
    ckpt_path: str | None = None,
    pretrained: bool = True,
    model_bands: list[Any] | None = None,
    in_chans: int | None = None,
    drop_path_rate: float = 0.0,
    **kwargs: Any,
) -> RSFMResNetBackbone:
    """An rsfm ResNet export (``arch: resnet50`` …, e.g. GeRSP's) as a TerraTorch backbone.

    It takes the arguments of :func:`rsfm_vit` (``ckpt_path`` a ResNet export; ``**kwargs``
    go to timm's ``ResNet``).

    Raises:
        CheckpointError: if ``ckpt_path`` is missing, unreadable or not a ResNet export.
    """
    meta = read_encoder_meta(ckpt_path) if ckpt_path else None
    if meta is not None and not is_resnet(str(meta.get("arch", ""))):
        raise CheckpointError(
            f"ckpt_path: {ckpt_path} holds a {meta.get('arch')!r} encoder; rsfm_resnet takes a ResNet export"
        )
    meta, model = _timm_model(ckpt_path, pretrained, in_chans, model_bands, drop_path_rate=drop_path_rate, **kwargs)
    return RSFMResNetBackbone(model, meta)


#: the registered backbones
BACKBONES = {"rsfm_vit": rsfm_vit, "rsfm_resnet": rsfm_resnet}
