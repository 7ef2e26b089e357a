"""rsfm exports in other toolkits: timm names, torchgeo tasks, a TerraTorch backbone.

- timm (:mod:`~rsfm.models.interop.timm_models`): ``rsfm_vit_{size}_patch{p}`` and
  ``rsfm_resnet{18,…,152}``, registered when timm is imported after ``import rsfm``::

      import rsfm, timm
      model = timm.create_model("rsfm_vit_base_patch16", pretrained=True,
                                pretrained_cfg_overlay=dict(file="encoder.safetensors"), num_classes=10)

- torchgeo (:mod:`~rsfm.models.interop.torchgeo_tasks`, imports torchgeo):
  :class:`~rsfm.models.interop.torchgeo_tasks.ExportClassificationTask` and
  :class:`~rsfm.models.interop.torchgeo_tasks.ExportSemanticSegmentationTask`, torchgeo's
  tasks whose ``weights`` may be an rsfm export.
- TerraTorch (:mod:`~rsfm.models.interop.terratorch_backbones`, imports terratorch): the
  backbones ``rsfm_vit`` and ``rsfm_resnet`` of ``BACKBONE_REGISTRY``, registered when
  terratorch is imported after ``import rsfm``.

This package imports neither torchgeo nor terratorch: their modules here are imported on demand.

.. versionadded:: 0.3
"""

from __future__ import annotations

from rsfm.models.interop.timm_models import register_timm_models, timm_model_name, timm_model_names

__all__ = [
    "after_import",
    "register_terratorch_backbones",
    "register_timm_models",
    "timm_model_name",
    "timm_model_names",
]


def register_terratorch_backbones() -> list[str]:
    """Add ``rsfm_vit`` and ``rsfm_resnet`` to TerraTorch's backbone registry (imports terratorch).

    Returns:
        The registered names.
    """
    from rsfm.models.interop.terratorch_backbones import BACKBONES

    return list(BACKBONES)


def after_import(package: str) -> None:
    """Register rsfm's models with ``package`` (``timm`` or ``terratorch``) once it has been imported.

    ``import rsfm`` arranges for this to run right after either package is imported (or at
    once when it already is), so their registries know the ``rsfm_*`` names.
    """
    if package == "timm":
        register_timm_models()
    elif package == "terratorch":
        register_terratorch_backbones()
