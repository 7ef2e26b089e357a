"""The encoder interface rsfm's necks, heads and probes use, over any timm backbone.

An :class:`Encoder` holds a timm model in :attr:`Encoder.model` (so its state dict and an
export keep timm's key names) and answers the calls dense heads and probes need, whatever the
architecture: :meth:`Encoder.forward_intermediates` (feature maps of chosen blocks or stages,
as timm's ``forward_intermediates``), :meth:`Encoder.forward_pooled` (one vector per image),
:attr:`Encoder.out_channels` / :attr:`Encoder.strides` of the intermediates, and
:meth:`Encoder.param_groups` (layer-wise lr decay where the architecture has layers).

Encoders are registered (``rsfm list encoders``) and named in recipes as
``model.encoder: {class_path: ViT, init_args: {size: tiny, ...}}``.

.. versionadded:: 0.2
"""

from __future__ import annotations

import abc
from typing import Any

from torch import Tensor, nn

from rsfm.utils.errors import ConfigError

__all__ = ["Encoder"]


class Encoder(nn.Module, metaclass=abc.ABCMeta):
    """Base of rsfm's encoders: a timm backbone plus the calls necks and heads use.

    Args:
        frozen: freeze the weights (the encoder then stays in eval mode: BatchNorm statistics
            and dropout frozen too).
        out_indices: blocks (ViT) or stages (ResNet) whose outputs
            :meth:`forward_intermediates` returns; None: the architecture's default.

    Subclasses build :attr:`model` and set :attr:`meta` (the metadata of an export).
    """

    model: nn.Module

    def __init__(self, frozen: bool = False, out_indices: list[int] | None = None) -> None:
        super().__init__()
        self.frozen = bool(frozen)
        self._out_indices = None if out_indices is None else [int(i) for i in out_indices]
        #: build metadata (architecture, sizes, normalisation of an export)
        self.meta: dict[str, Any] = {}

    def _load_export(self, weights: str, family: str, other: str, **kwargs: Any) -> None:
        """Set :attr:`model` and :attr:`meta` from an rsfm encoder export of ``family``.

        Args:
            weights: path of the export (``.safetensors``), or of a checkpoint released by a
                source of :mod:`rsfm.models.convert`, optionally as ``<source>:<path>``
                (converted once and cached, :func:`rsfm.models.convert.as_export`).
            family: ``vit`` or ``resnet``: the architectures this class builds.
            other: the encoder class that builds the other family (named in the error).
            **kwargs: passed to :func:`rsfm.models.export.load_encoder`.

        Raises:
            ConfigError: if the export holds another architecture.
            CheckpointError: if it cannot be read or converted.
        """
        from rsfm.models.convert import as_export
        from rsfm.models.export import is_resnet, load_encoder, read_encoder_meta

        given, weights = weights, str(as_export(weights))
        arch = str(read_encoder_meta(weights).get("arch", ""))
        if not (is_resnet(arch) if family == "resnet" else arch == family):
            cls = {"vit": "ViT", "vit_rvsa": "ViTRVSA"}.get(arch, "ResNet" if is_resnet(arch) else other)
            hint = " (with model.neck: null: ViTRVSA has its own feature pyramid)" if cls == "ViTRVSA" else ""
            raise ConfigError(
                f"model.encoder.weights: {weights} holds a {arch or 'unknown'} encoder; use class_path: {cls}{hint}"
            )
        self.model = load_encoder(weights, **kwargs)
        self.meta = dict(self.model.rsfm_meta, weights=str(given))

    def _finish(self) -> None:
        """Apply ``frozen`` once :attr:`model` exists (subclasses call it at the end of ``__init__``)."""
        if self.frozen:
            self.model.requires_grad_(False)

    def train(self, mode: bool = True) -> Encoder:
        """Set train/eval mode; a frozen encoder stays in eval mode."""
        super().train(mode)
        if self.frozen:
            self.model.eval()
        return self

    # -- interface (subclasses) -------------------------------------------------------------

    @property
    @abc.abstractmethod
    def out_indices(self) -> list[int]:
        """The blocks or stages of :meth:`forward_intermediates`."""

    @property
    @abc.abstractmethod
    def out_channels(self) -> list[int]:
        """Channels of each map of :meth:`forward_intermediates`."""

    @property
    @abc.abstractmethod
    def strides(self) -> list[int]:
        """Stride of each map of :meth:`forward_intermediates`, pixels."""

    @property
    def input_multiple(self) -> int:
        """Input sides must be a multiple of this (a ViT's patch; 1 for a CNN)."""
        return 1

    @property
    def num_features(self) -> int:
        """Width of :meth:`forward_pooled`'s vectors."""
        return int(self.model.num_features)  # type: ignore[arg-type]

    def forward_intermediates(self, x: Tensor) -> list[Tensor]:
        """Feature maps ``(B, C_i, H/s_i, W/s_i)`` of :attr:`out_indices`, finest first."""
        return list(
            self.model.forward_intermediates(  # type: ignore[operator]
                x, indices=self.out_indices, intermediates_only=True, output_fmt="NCHW"
            )
        )

    def forward_pooled(self, x: Tensor) -> Tensor:
        """One ``(B, D)`` vector per image: the backbone's pooled features (before any classifier)."""
        return self.model.forward_head(self.model.forward_features(x), pre_logits=True)  # type: ignore[operator]

    def forward(self, x: Tensor) -> Tensor:
        """Same as :meth:`forward_pooled`."""
        return self.forward_pooled(x)

    def drop_pooling(self) -> None:
        """Remove what only :meth:`forward_pooled` uses (a ViT's final norm), when only maps are needed.

        Unused parameters would stop a plain DDP run (gradients never arrive for them).
        """

    # -- optimisation -----------------------------------------------------------------------

    def no_weight_decay(self) -> set[str]:
        """Parameter names (relative to this module) exempt from weight decay besides norms and biases."""
        names = self.model.no_weight_decay() if hasattr(self.model, "no_weight_decay") else set()
        return {f"model.{n}" for n in names}

    def param_groups(self, lr: float, weight_decay: float, layer_decay: float | None) -> list[dict[str, Any]]:
        """Optimiser groups of the trainable parameters, with per-group ``lr`` already scaled.

        ``layer_decay`` (timm's groups: block ``i`` of ``L`` gets ``layer_decay^(L - i)`` of
        ``lr``) applies to architectures with layer groups; norms, biases and
        :meth:`no_weight_decay` names get no weight decay.

        Returns:
            Non-empty groups with ``params``, ``lr`` and ``weight_decay`` (empty list when frozen).
        """
        from timm.optim import param_groups_layer_decay, param_groups_weight_decay

        if not any(p.requires_grad for p in self.model.parameters()):
            return []
        skip = self.model.no_weight_decay() if hasattr(self.model, "no_weight_decay") else set()
        if layer_decay not in (None, 1, 1.0) and hasattr(self.model, "group_matcher"):
            groups = param_groups_layer_decay(
                self.model, weight_decay, no_weight_decay_list=skip, layer_decay=layer_decay
            )
        else:
            groups = param_groups_weight_decay(self.model, weight_decay, no_weight_decay_list=skip)
        groups = [g for g in groups if g["params"]]
        for g in groups:
            g["lr"] = lr * g.pop("lr_scale", 1.0)
        return groups
