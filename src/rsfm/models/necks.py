"""Necks between an encoder's intermediate maps and the heads.

A plain ViT gives maps at one stride (its patch size); dense heads want a pyramid.
:class:`SimpleFeaturePyramid` builds the simple feature pyramid of ViTDet (Li et al., ECCV
2022, §3), as used by RVSA and MTP: two 2× deconvolutions for stride p/4, one for p/2,
identity for p and a max-pool for 2p. A CNN's stages already form a pyramid; :class:`FPN`
(Lin et al., CVPR 2017) gives them one width and top-down context, for heads that want both.

Necks are configured like every part (``model.neck: {class_path: SimpleFeaturePyramid}``)
and built by the task once the encoder's channels and strides are known (:meth:`Neck.build`).

.. versionadded:: 0.2
"""

from __future__ import annotations

import abc
from collections import OrderedDict
from collections.abc import Sequence

from torch import Tensor, nn

from rsfm.utils.errors import ConfigError
from rsfm.utils.registry import NECKS

__all__ = ["FPN", "Neck", "SimpleFeaturePyramid"]


class Neck(nn.Module, metaclass=abc.ABCMeta):
    """Base of the necks: options in ``__init__``, layers in :meth:`build`.

    After :meth:`build`, :attr:`out_channels` and :attr:`strides` describe the maps that
    ``forward(maps)`` returns.
    """

    def __init__(self) -> None:
        super().__init__()
        self.out_channels: list[int] = []
        self.strides: list[int] = []

    @abc.abstractmethod
    def build(self, in_channels: Sequence[int], strides: Sequence[int]) -> None:
        """Create the layers for maps of ``in_channels`` at ``strides`` (pixels)."""

    @abc.abstractmethod
    def forward(self, maps: list[Tensor]) -> list[Tensor]:
        """Maps of the encoder → maps for the heads, finest first."""


@NECKS.register
class SimpleFeaturePyramid(Neck):
    """ViTDet's simple feature pyramid over four same-stride ViT maps.

    Input: four ``(B, D, H/p, W/p)`` maps (blocks of the encoder); output: four maps at
    strides ``(p/4, p/2, p, 2p)`` pixels (4, 8, 16, 32 for p = 16), ``D`` channels each.

    Raises:
        ConfigError: at :meth:`build`, unless given four maps of one stride divisible by 4.
    """

    def build(self, in_channels: Sequence[int], strides: Sequence[int]) -> None:
        """Create the deconvolutions for maps of ``in_channels`` at ``strides``."""
        if len(in_channels) != 4 or len(set(strides)) != 1 or len(set(in_channels)) != 1:
            raise ConfigError(
                f"model.neck: SimpleFeaturePyramid takes 4 maps of one stride and width (a ViT's), got "
                f"channels {list(in_channels)} at strides {list(strides)}"
            )
        d, p = int(in_channels[0]), int(strides[0])
        if p % 4:
            raise ConfigError(f"model.neck: patch size {p} must be divisible by 4 for the stride-p/4 level")
        self.fpn1 = nn.Sequential(
            nn.ConvTranspose2d(d, d, 2, 2), nn.BatchNorm2d(d), nn.GELU(), nn.ConvTranspose2d(d, d, 2, 2)
        )
        self.fpn2 = nn.ConvTranspose2d(d, d, 2, 2)
        self.fpn3 = nn.Identity()
        self.fpn4 = nn.MaxPool2d(2, 2)
        self.out_channels = [d] * 4
        self.strides = [p // 4, p // 2, p, 2 * p]

    def forward(self, maps: list[Tensor]) -> list[Tensor]:
        """Four same-stride maps → the pyramid (see the class docstring)."""
        return [f(t) for f, t in zip((self.fpn1, self.fpn2, self.fpn3, self.fpn4), maps, strict=True)]


@NECKS.register
class FPN(Neck):
    """Feature Pyramid Network (Lin et al., CVPR 2017, §3) over maps at increasing strides.

    Torchvision's :class:`~torchvision.ops.FeaturePyramidNetwork`: a 1×1 lateral convolution
    per map, top-down nearest-neighbour upsampling added to the finer lateral, then a 3×3
    convolution. Input: ``n`` maps ``(B, C_i, H/s_i, W/s_i)`` at strictly increasing strides
    ``s_i`` (pixels), e.g. a ResNet's four stages; output: ``n`` maps at the same strides with
    ``out_channels`` channels each (float, the input's dtype).

    Args:
        out_channels: channels of every output map (256 in the paper).
        extra_pool: add a ``stride × 2`` level by max-pooling the coarsest output (the paper's
            P6, for detectors with large anchors).

    Raises:
        ConfigError: at :meth:`build`, unless the strides strictly increase (a ViT's maps share
            one stride: use :class:`SimpleFeaturePyramid`), or if ``out_channels`` < 1.
    """

    def __init__(self, out_channels: int = 256, extra_pool: bool = False) -> None:
        super().__init__()
        if out_channels < 1:
            raise ConfigError(f"model.neck: FPN out_channels must be >= 1, got {out_channels}")
        self.channels, self.extra_pool = int(out_channels), bool(extra_pool)

    def build(self, in_channels: Sequence[int], strides: Sequence[int]) -> None:
        """Create the lateral and output convolutions for maps of ``in_channels`` at ``strides``."""
        from torchvision.ops import FeaturePyramidNetwork
        from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

        strides = [int(s) for s in strides]
        if len(strides) < 2 or any(b <= a for a, b in zip(strides, strides[1:], strict=False)):
            raise ConfigError(
                f"model.neck: FPN takes maps at increasing strides (a CNN's stages), got strides {strides}; "
                "a ViT's maps share one stride: use SimpleFeaturePyramid"
            )
        self.fpn = FeaturePyramidNetwork(
            [int(c) for c in in_channels], self.channels, LastLevelMaxPool() if self.extra_pool else None
        )
        self.strides = strides + ([2 * strides[-1]] if self.extra_pool else [])
        self.out_channels = [self.channels] * len(self.strides)

    def forward(self, maps: list[Tensor]) -> list[Tensor]:
        """Maps at increasing strides → the pyramid (see the class docstring), finest first."""
        out = self.fpn(OrderedDict((str(i), m) for i, m in enumerate(maps)))
        return list(out.values())
