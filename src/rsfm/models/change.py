"""Siamese change detector: one shared backbone, per-level fusion, light FPN decoder.

The design is the common bi-temporal baseline (FC-Siam-diff / FC-Siam-conc, Daudt et al.,
ICIP 2018, on a feature pyramid as in BIT and the MTP change-detection head): both dates go
through the *same* backbone (shared weights, one batched forward), each pyramid level fuses
the two feature maps, by their absolute difference (``diff``, symmetric in the two dates) or
by concatenation and a 1×1 conv (``concat``), and an FPN-style decoder (lateral 1×1 convs,
top-down 2× upsampling and addition, a 3×3 conv; Lin et al., CVPR 2017) turns the finest
level into change logits upsampled to the input size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["SiameseChangeDetector"]

FUSIONS = ("diff", "concat")


def _conv_bn_relu(c_in: int, c_out: int, k: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, k, padding=k // 2, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(True))


class SiameseChangeDetector(nn.Module):
    """Change map from two co-registered images with a shared multi-scale backbone.

    Args:
        backbone: a module mapping ``(B, 3, H, W)`` to a list of feature maps ``(B, C_i,
            H/s_i, W/s_i)``, finest first, with attributes ``out_channels`` and ``strides``
            (pixels), e.g. :func:`rsfm.models.adapters.build_backbone`.
        fusion: ``"diff"`` (``|f_a - f_b|``) or ``"concat"`` (``[f_a, f_b]`` then a 1×1 conv,
            BatchNorm and ReLU back to ``C_i`` channels).
        channels: decoder width.
        num_classes: 2 for no-change/change logits (softmax, cross-entropy) or 1 for a single
            change logit (sigmoid, binary cross-entropy).

    Raises:
        ValueError: on an unknown ``fusion`` or ``num_classes`` not 1 or 2.

    """

    def __init__(self, backbone: nn.Module, fusion: str = "diff", channels: int = 128, num_classes: int = 2) -> None:
        super().__init__()
        if fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got {fusion!r}")
        if num_classes not in (1, 2):
            raise ValueError(f"num_classes must be 1 (one change logit) or 2, got {num_classes}")
        self.backbone = backbone
        self.fusion = fusion
        self.num_classes = num_classes
        in_channels = list(backbone.out_channels)
        self.strides = list(backbone.strides)
        if fusion == "concat":
            self.fuse = nn.ModuleList(_conv_bn_relu(2 * c, c, 1) for c in in_channels)
        self.lateral = nn.ModuleList(nn.Conv2d(c, channels, 1) for c in in_channels)
        self.smooth = _conv_bn_relu(channels, channels, 3)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def fuse_level(self, level: int, fa: Tensor, fb: Tensor) -> Tensor:
        """Fuse the two dates' features of one pyramid level.

        Args:
            level: pyramid level index (selects the ``concat`` conv).
            fa: ``(B, C, h, w)`` features of the before image.
            fb: ``(B, C, h, w)`` features of the after image.

        Returns:
            ``(B, C, h, w)`` fused features.

        """
        if self.fusion == "diff":
            return (fa - fb).abs()
        return self.fuse[level](torch.cat([fa, fb], dim=1))

    def forward(self, image_a: Tensor, image_b: Tensor) -> Tensor:
        """Change logits.

        Args:
            image_a: ``(B, 3, H, W)`` float32, normalised, the before image; ``H``, ``W``
                multiples of the backbone's patch size.
            image_b: ``(B, 3, H, W)`` float32, normalised, the after image.

        Returns:
            ``(B, num_classes, H, W)`` float32 logits (channel 1 = change when 2 classes).

        Raises:
            ValueError: if the two images differ in shape.

        """
        if image_a.shape != image_b.shape:
            raise ValueError(f"the two images differ in shape: {tuple(image_a.shape)} vs {tuple(image_b.shape)}")
        b = image_a.shape[0]
        # one forward over both dates: shared weights, and BatchNorm sees both
        feats = self.backbone(torch.cat([image_a, image_b], dim=0))
        fused = [self.fuse_level(i, f[:b], f[b:]) for i, f in enumerate(feats)]
        x = self.lateral[-1](fused[-1])
        for i in range(len(fused) - 2, -1, -1):
            lat = self.lateral[i](fused[i])
            x = lat + F.interpolate(x, size=lat.shape[-2:], mode="bilinear", align_corners=False)
        logits = self.classifier(self.smooth(x))
        return F.interpolate(logits, size=image_a.shape[-2:], mode="bilinear", align_corners=False)
