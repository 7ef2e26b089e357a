"""torchgeo tasks that start from an rsfm export (imports torchgeo; ``pip install torchgeo``).

torchgeo builds its classifiers with ``timm.create_model(model, ...)`` and its segmentation
models with segmentation_models_pytorch (smp), but loads ``weights`` given as a path only from
a Lightning checkpoint. The two tasks here are torchgeo's own, whose ``weights`` may also be
an rsfm export (``.safetensors``): the model is then built through the export's timm name
(:mod:`rsfm.models.interop.timm_models`), with timm's position-embedding resampling and
first-layer adaptation. Everything else (losses, metrics, optimiser, freezing) is torchgeo's.

- classification: ``model`` is the export's timm name (``rsfm_vit_base_patch16``,
  ``rsfm_resnet50``; :func:`~rsfm.models.interop.timm_models.timm_model_name` gives it).
- segmentation: ``backbone`` is ``tu-`` + that name. A ViT export serves smp's DPT
  (``model='dpt'``, Ranftl et al. 2021), whose decoder reassembles the ViT's token maps into
  a pyramid; smp's other decoders need a CNN pyramid (strides 2 … 32), so a ResNet export
  serves ``unet``, ``deeplabv3+``, ``upernet`` and ``segformer``.

.. versionadded:: 0.3
"""

from __future__ import annotations

import os
from typing import Any

import timm
from torchgeo.trainers import ClassificationTask, SemanticSegmentationTask

from rsfm.models.interop.timm_models import register_timm_models, timm_model_name
from rsfm.utils.errors import ConfigError

__all__ = ["ExportClassificationTask", "ExportSemanticSegmentationTask", "is_export"]

#: smp models a ResNet export can serve (DPT takes ViTs; torchgeo's FCN has no encoder)
SMP_CNN_MODELS = ("unet", "deeplabv3+", "upernet", "segformer")


def is_export(weights: Any) -> bool:
    """Whether torchgeo ``weights`` name an rsfm export: a path ending in ``.safetensors``."""
    return isinstance(weights, (str, os.PathLike)) and str(weights).endswith(".safetensors")


class ExportClassificationTask(ClassificationTask):
    """torchgeo's :class:`~torchgeo.trainers.ClassificationTask`; ``weights`` may be an rsfm export.

    With an export, ``model`` must be its timm name (e.g. ``rsfm_vit_base_patch16``); the
    classifier is new (``num_classes`` outputs) and ``in_channels`` other than the export's
    adapt its first layer. Inputs are ``(B, in_channels, H, W)`` float32 normalised with the
    export's statistics (``task.model.pretrained_cfg['mean']``/``['std']``); a ViT takes any
    size whose sides are multiples of its patch (the position embedding is resampled).

    Raises:
        CheckpointError: if the export is unreadable or holds another architecture than
            ``model`` (naming the file and the right name).
    """

    def configure_models(self) -> None:
        """Build the timm model from the export (or as torchgeo does for other ``weights``)."""
        weights = self.weights
        if not is_export(weights):
            super().configure_models()
            return
        register_timm_models()
        self.model = timm.create_model(
            self.hparams["model"],
            pretrained=True,
            pretrained_cfg_overlay={"file": str(weights)},
            num_classes=self.hparams["num_classes"] or self.hparams["num_labels"] or 1,
            in_chans=self.hparams["in_channels"],
            # a ViT takes any input whose sides are multiples of its patch, as rsfm's ViT encoder
            dynamic_img_size=True if str(self.hparams["model"]).startswith("rsfm_vit_") else None,
        )
        if self.hparams["freeze_backbone"]:
            for param in self.model.parameters():
                param.requires_grad = False
            for param in self.model.get_classifier().parameters():
                param.requires_grad = True


class ExportSemanticSegmentationTask(SemanticSegmentationTask):
    """torchgeo's :class:`~torchgeo.trainers.SemanticSegmentationTask`; ``weights`` may be an rsfm export.

    With an export, ``backbone`` must be ``tu-`` + its timm name and ``model`` ``dpt`` for a
    ViT export or one of :data:`SMP_CNN_MODELS` for a ResNet export. A ViT encoder takes any
    input whose sides are multiples of its patch (the position embedding is resampled).
    Inputs ``(B, in_channels, H, W)`` float32, normalised with the export's statistics;
    outputs ``(B, num_classes, H, W)`` logits.

    Args:
        *args: torchgeo's arguments (``model``, ``backbone``, ``weights``, ``num_classes`` …).
        smp_kwargs: further arguments of the smp model with an export, e.g. DPT's
            ``decoder_intermediate_channels`` and ``decoder_fusion_channels`` (DPT's defaults
            give a 34M-parameter decoder); None: smp's defaults.
        **kwargs: torchgeo's keyword arguments.

    Raises:
        ConfigError: on a ``backbone`` that is not the export's name, or a ``model`` that
            cannot take the export's encoder.
        CheckpointError: if the export is unreadable.
    """

    def __init__(self, *args: Any, smp_kwargs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        self.smp_kwargs = dict(smp_kwargs or {})
        super().__init__(*args, **kwargs)

    def configure_models(self) -> None:
        """Build the smp model around the export's encoder (or as torchgeo does for other ``weights``)."""
        import segmentation_models_pytorch as smp

        weights = self.weights
        if not is_export(weights):
            super().configure_models()
            return
        register_timm_models()
        name = timm_model_name(weights)
        model, backbone = self.hparams["model"], self.hparams["backbone"]
        if backbone != f"tu-{name}":
            raise ConfigError(f"backbone: {weights} holds a {name} encoder; set backbone='tu-{name}', not {backbone!r}")
        vit = name.startswith("rsfm_vit_")
        if vit and model != "dpt":
            raise ConfigError(
                f"model: a ViT encoder ({weights}) serves smp's 'dpt' only (the other decoders need a CNN "
                f"pyramid of strides 2 to 32); got {model!r}"
            )
        if not vit and model not in SMP_CNN_MODELS:
            raise ConfigError(f"model: a {name} encoder ({weights}) serves {list(SMP_CNN_MODELS)}; got {model!r}")
        builders = {
            "dpt": smp.DPT,
            "unet": smp.Unet,
            "deeplabv3+": smp.DeepLabV3Plus,
            "upernet": smp.UPerNet,
            "segformer": smp.Segformer,
        }
        extra: dict[str, Any] = {"dynamic_img_size": True} if vit else {}
        self.model = builders[model](
            encoder_name=backbone,
            encoder_weights=True,  # smp: load the timm model's pretrained weights, here the export's
            in_channels=self.hparams["in_channels"],
            classes=self.hparams["num_classes"] or self.hparams["num_labels"] or 1,
            pretrained_cfg_overlay={"file": str(weights)},
            **{**extra, **self.smp_kwargs},
        )
        if self.hparams["freeze_backbone"]:
            for param in self.model.encoder.parameters():
                param.requires_grad = False
        if self.hparams["freeze_decoder"]:
            for param in self.model.decoder.parameters():
                param.requires_grad = False
