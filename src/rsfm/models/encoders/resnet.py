"""ResNet encoders (He et al., CVPR 2016) from timm: GeRSP's backbone and a CNN baseline.

.. versionadded:: 0.2
"""

from __future__ import annotations

from typing import Any

from rsfm.models.encoders.base import Encoder
from rsfm.utils.errors import ConfigError
from rsfm.utils.registry import ENCODERS

__all__ = ["ResNet"]


@ENCODERS.register
class ResNet(Encoder):
    """A timm ResNet; its four stages give maps at strides 4, 8, 16 and 32 pixels.

    Args:
        name: timm model name (``resnet50``, ``resnet18``...); ignored with ``weights``.
        in_chans: input bands; None: the data's (filled in by the task). A 3-band export is
            adapted to other band counts.
        drop_path_rate: stochastic depth.
        weights: an rsfm encoder export of a ResNet (e.g. GeRSP's), or a released checkpoint, optionally as
            ``<source>:<path>`` (:func:`rsfm.models.convert.as_export`); None: random.
        frozen: freeze the weights (BatchNorm statistics too).
        out_indices: stages of :meth:`forward_intermediates` (timm's indices: 1 = layer1 …
            4 = layer4); None: all four.

    Raises:
        ConfigError: on a name timm does not know, or ``weights`` of another architecture.
        CheckpointError: if ``weights`` cannot be read.
    """

    def __init__(
        self,
        name: str = "resnet50",
        in_chans: int | None = None,
        drop_path_rate: float = 0.0,
        weights: str | None = None,
        frozen: bool = False,
        out_indices: list[int] | None = None,
    ) -> None:
        super().__init__(frozen, out_indices)
        import timm

        if weights:
            self._load_export(weights, "resnet", "ViT", drop_path_rate=drop_path_rate, in_chans=in_chans)
        else:
            if name not in timm.list_models("resnet*"):
                raise ConfigError(f"model.encoder.name: {name!r} is not a timm ResNet (e.g. resnet50)")
            self.model = timm.create_model(
                name, pretrained=False, num_classes=0, in_chans=in_chans or 3, drop_path_rate=drop_path_rate
            )
            self.meta = {"arch": name, "img_size": 224, "in_chans": in_chans or 3, "method": "random-init"}
        info = self.model.feature_info
        self._channels = {i: int(f["num_chs"]) for i, f in enumerate(info)}
        self._reductions = {i: int(f["reduction"]) for i, f in enumerate(info)}
        self._finish()

    @property
    def out_indices(self) -> list[int]:
        """The stages of :meth:`forward_intermediates`."""
        return self._out_indices if self._out_indices is not None else [1, 2, 3, 4]

    @property
    def out_channels(self) -> list[int]:
        """Channels of the chosen stages (256, 512, 1024, 2048 for ResNet-50)."""
        return [self._channels[i] for i in self.out_indices]

    @property
    def strides(self) -> list[int]:
        """Strides of the chosen stages (4, 8, 16, 32)."""
        return [self._reductions[i] for i in self.out_indices]

    def param_groups(self, lr: float, weight_decay: float, layer_decay: float | None) -> list[dict[str, Any]]:
        """Weight-decay groups at ``lr`` (no layer decay for a CNN)."""
        return super().param_groups(lr, weight_decay, None)
