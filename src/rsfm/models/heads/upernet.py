"""UperNet decoder for semantic segmentation (Xiao et al., "Unified Perceptual Parsing", ECCV 2018).

The head of the MTP, RVSA and SelectiveMAE segmentation results. Its layout follows
MMSegmentation's ``UPerHead``: a pyramid pooling module (PSPNet, Zhao et al. 2017) on the
coarsest level; an FPN (Lin et al. 2017) with 1×1 lateral convolutions, a top-down pathway and
a 3×3 convolution per level; all levels upsampled to the finest one, concatenated, fused by a
3×3 convolution and classified by a 1×1 convolution. Every convolution but the classifier is
conv → BatchNorm → ReLU. Logits come out at the finest stride; the task upsamples them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["PyramidPooling", "UperNet"]


def _conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def _resize(x: Tensor, size: Sequence[int]) -> Tensor:
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


class PyramidPooling(nn.Module):
    """Pyramid pooling module (PSPNet §3.2): average-pool to ``s × s`` bins per scale.

    Args:
        in_channels: channels ``C`` of the input map.
        channels: channels of each pooled branch.
        pool_scales: output sides ``s`` of the adaptive average pools.

    Input ``(B, C, h, w)``; output ``(B, C + len(pool_scales) · channels, h, w)``: the input
    followed by every branch upsampled (bilinear) back to ``h × w``.
    """

    def __init__(self, in_channels: int, channels: int, pool_scales: Sequence[int] = (1, 2, 3, 6)) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(int(s)), _conv_bn_relu(in_channels, channels, 1)) for s in pool_scales
        )

    def forward(self, x: Tensor) -> Tensor:
        """``(B, C, h, w)`` → ``(B, C + n · channels, h, w)``."""
        size = x.shape[-2:]
        return torch.cat([x] + [_resize(branch(x), size) for branch in self.branches], dim=1)


class UperNet(nn.Module):
    """UperNet: pyramid pooling on the coarsest level + FPN fusion of all levels.

    Args:
        in_channels: channels of the input levels, finest first (a backbone's
            ``out_channels``); at least two.
        num_classes: number of classes ``K``.
        channels: width of the lateral, FPN and fusion convolutions (512 in MMSegmentation's
            ViT recipes, 256 in smaller ones).
        pool_scales: adaptive-pool sides of the pyramid pooling module.
        dropout: channel dropout (``Dropout2d``) before the classifier.

    Raises:
        ValueError: on fewer than two levels or a non-positive size.

    """

    def __init__(
        self,
        in_channels: Sequence[int],
        num_classes: int,
        channels: int = 256,
        pool_scales: Sequence[int] = (1, 2, 3, 6),
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        in_channels = [int(c) for c in in_channels]
        if len(in_channels) < 2:
            raise ValueError(f"UperNet needs at least 2 feature levels, got {len(in_channels)}")
        if num_classes < 1 or channels < 1 or not pool_scales:
            raise ValueError(f"bad UperNet sizes: num_classes={num_classes}, channels={channels}, {pool_scales=}")
        self.in_channels = in_channels
        self.num_classes = int(num_classes)
        self.ppm = PyramidPooling(in_channels[-1], channels, pool_scales)
        self.ppm_bottleneck = _conv_bn_relu(in_channels[-1] + len(pool_scales) * channels, channels, 3)
        self.lateral_convs = nn.ModuleList(_conv_bn_relu(c, channels, 1) for c in in_channels[:-1])
        self.fpn_convs = nn.ModuleList(_conv_bn_relu(channels, channels, 3) for _ in in_channels[:-1])
        self.fuse = _conv_bn_relu(len(in_channels) * channels, channels, 3)
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        """Class logits at the finest level's resolution.

        Args:
            features: ``len(in_channels)`` maps ``(B, C_i, H_i, W_i)`` float32, finest first.

        Returns:
            ``(B, K, H_0, W_0)`` float32 logits.

        Raises:
            ValueError: if the number of maps is not ``len(in_channels)``.

        """
        if len(features) != len(self.in_channels):
            raise ValueError(f"expected {len(self.in_channels)} feature maps, got {len(features)}")
        laterals = [conv(f) for conv, f in zip(self.lateral_convs, features[:-1], strict=True)]
        laterals.append(self.ppm_bottleneck(self.ppm(features[-1])))
        # top-down pathway: each level adds the (upsampled) sum of the coarser ones
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + _resize(laterals[i], laterals[i - 1].shape[-2:])
        outs = [conv(x) for conv, x in zip(self.fpn_convs, laterals[:-1], strict=True)] + [laterals[-1]]
        size = outs[0].shape[-2:]
        fused = self.fuse(torch.cat([outs[0]] + [_resize(x, size) for x in outs[1:]], dim=1))
        return self.classifier(self.dropout(fused))
