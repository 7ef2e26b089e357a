"""Encoders: timm backbones behind one interface (:class:`~rsfm.models.encoders.base.Encoder`)."""

from rsfm.models.encoders.base import Encoder
from rsfm.models.encoders.resnet import ResNet
from rsfm.models.encoders.rvsa import ViTRVSA, build_vit_rvsa
from rsfm.models.encoders.vit import VIT_SIZES, ViT, build_vit, evenly_spaced_blocks, sincos_pos_embed_2d

__all__ = [
    "VIT_SIZES",
    "Encoder",
    "ResNet",
    "ViT",
    "ViTRVSA",
    "build_vit",
    "build_vit_rvsa",
    "evenly_spaced_blocks",
    "sincos_pos_embed_2d",
]
