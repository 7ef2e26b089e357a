"""timm model names for rsfm exports: ``timm.create_model("rsfm_vit_base_patch16", pretrained=True, ...)``.

Each name is an architecture rsfm exports: ``rsfm_vit_{tiny,small,base,large,huge}_patch{8,14,16}``
is the ViT of :func:`rsfm.models.encoders.vit.build_vit` (timm's ``VisionTransformer`` with a
class token, QKV bias, LayerNorm eps 1e-6, MLP ratio 4, a frozen 2-D sin-cos position embedding,
He et al. 2022) and ``rsfm_resnet{18,34,50,101,152}`` timm's ResNet (He et al. 2016). The
weights come from an export: ``pretrained=True, pretrained_cfg_overlay=dict(file=<export>)``;
its metadata fills the pretrained config (``input_size``, ``mean``, ``std``) and the defaults
``img_size``, ``in_chans`` and ``global_pool``, which the caller may override: timm resamples
the position embedding to another ``img_size`` (bicubic) and adapts the first layer to another
``in_chans`` (its ``adapt_input_conv`` rule), and ``num_classes > 0`` adds a new, random head.

ViT + RVSA exports (``arch: vit_rvsa``) have no timm name: that encoder is not a timm model (no
classifier head, no ``pretrained_cfg``); load it with :func:`rsfm.models.export.load_encoder`.

.. versionadded:: 0.3
"""

from __future__ import annotations

import os
import sys
from functools import partial
from typing import Any

from torch import nn

from rsfm.models.encoders.vit import VIT_SIZES, sincos_pos_embed_2d
from rsfm.models.export import is_resnet, read_encoder_meta
from rsfm.utils.errors import CheckpointError

__all__ = ["RESNET_NAMES", "VIT_PATCHES", "register_timm_models", "timm_model_name", "timm_model_names"]

#: patch sizes of the registered ViT names (8: small objects; 14: ViT-H as MAE; 16: the default)
VIT_PATCHES: tuple[int, ...] = (8, 14, 16)
#: timm ResNets with an ``rsfm_`` name
RESNET_NAMES: tuple[str, ...] = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)

#: read by ``timm.models.register_model``: the pretrained config of every name (no weights: an export's file)
default_cfgs: dict[str, dict[str, Any]] = {}
_registered = False


def timm_model_names() -> list[str]:
    """Every ``rsfm_*`` timm name (registered or not)."""
    vits = [f"rsfm_vit_{size}_patch{p}" for size in VIT_SIZES for p in VIT_PATCHES]
    return vits + [f"rsfm_{name}" for name in RESNET_NAMES]


def timm_model_name(export: str | os.PathLike[str] | dict[str, Any]) -> str:
    """The timm name of an export (a path, or its metadata): ``rsfm_vit_tiny_patch16``, ``rsfm_resnet50``.

    Raises:
        CheckpointError: for an export timm has no name for (``vit_rvsa``, another patch, an
            unknown ResNet), naming the file; see :func:`rsfm.models.export.read_encoder_meta`.
    """
    meta = export if isinstance(export, dict) else read_encoder_meta(export)
    where = "the export" if isinstance(export, dict) else str(export)
    arch = str(meta.get("arch", ""))
    if arch == "vit":
        name = f"rsfm_vit_{meta.get('size')}_patch{meta.get('patch_size')}"
    elif is_resnet(arch):
        name = f"rsfm_{arch}"
    else:
        name = ""
    if name not in timm_model_names():
        raise CheckpointError(
            f"{where}: no timm name for a {arch!r} encoder "
            f"(size {meta.get('size')!r}, patch {meta.get('patch_size')!r}); "
            f"timm knows {timm_model_names()[0]} … {timm_model_names()[-1]}; load it with rsfm.load_encoder"
        )
    return name


def _cfg(name: str) -> dict[str, Any]:
    """The pretrained config of a name: no weights (an export's file brings them), ImageNet statistics."""
    vit = name.startswith("rsfm_vit_")
    return {
        "url": "",
        "num_classes": 0,  # an export has no classifier
        "input_size": (3, 224, 224),
        "crop_pct": 1.0,
        "interpolation": "bicubic",
        "fixed_input_size": vit,
        "mean": _IMAGENET_MEAN,
        "std": _IMAGENET_STD,
        "first_conv": "patch_embed.proj" if vit else "conv1",
        "classifier": "head" if vit else "fc",
        "license": "unknown (see the export's model card)",
    }


def _export_file(pretrained_cfg: Any, overlay: dict[str, Any] | None) -> str | None:
    """The export named by ``pretrained_cfg_overlay['file']`` or a dict ``pretrained_cfg['file']``."""
    if overlay and overlay.get("file"):
        return str(overlay["file"])
    if isinstance(pretrained_cfg, dict) and pretrained_cfg.get("file"):
        return str(pretrained_cfg["file"])
    return None


def _resolve(
    name: str, pretrained: bool, kwargs: dict[str, Any], check: Any
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The pretrained config (the export's statistics and input size) and the export's metadata.

    ``kwargs`` loses ``pretrained_cfg``/``pretrained_cfg_overlay`` and gains the export's
    ``img_size``/``in_chans``/``global_pool`` defaults.
    """
    from timm.models import resolve_pretrained_cfg

    cfg_arg, overlay = kwargs.pop("pretrained_cfg", None), kwargs.pop("pretrained_cfg_overlay", None)
    kwargs.pop("cache_dir", None)
    file = _export_file(cfg_arg, overlay)
    meta = None
    extra: dict[str, Any] = {}
    if pretrained:
        if file is None:
            raise CheckpointError(
                f"{name} has no built-in weights: pass the rsfm export, "
                f"timm.create_model({name!r}, pretrained=True, pretrained_cfg_overlay=dict(file='encoder.safetensors'))"
            )
        meta = read_encoder_meta(file)
        right = timm_model_name({**meta})
        if right != name:
            raise CheckpointError(
                f"{file} holds a {right} encoder, not {name}: create it with timm.create_model({right!r}, ...)"
            )
        check(meta, file)
        chans, size = int(meta["in_chans"]), int(meta["img_size"])
        extra = {"file": str(file), "input_size": (chans, size, size), "num_classes": 0, "custom_load": False}
        if meta.get("mean") is not None and meta.get("std") is not None:
            extra.update(mean=tuple(float(v) for v in meta["mean"]), std=tuple(float(v) for v in meta["std"]))
        if meta.get("licence"):
            extra["license"] = str(meta["licence"])
        kwargs.setdefault("in_chans", chans)
    cfg = resolve_pretrained_cfg(name, cfg_arg, {**(overlay or {}), **extra})
    return cfg.to_dict(), meta


def _check_vit(meta: dict[str, Any], file: str) -> None:
    if int(meta["img_size"]) % int(meta["patch_size"]):
        raise CheckpointError(
            f"{file}: img_size {meta['img_size']} is not a multiple of patch_size {meta['patch_size']}"
        )


def _vit_module(model: nn.Module) -> nn.Module:
    """The ``VisionTransformer`` of a model or of timm's feature wrapper around it."""
    return model if hasattr(model, "pos_embed") else model.model


def _create_vit(name: str, size: str, patch: int, pretrained: bool = False, **kwargs: Any) -> nn.Module:
    from timm.models import build_model_with_cfg
    from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn

    cfg, meta = _resolve(name, pretrained, kwargs, _check_vit)
    if meta is not None:
        kwargs.setdefault("img_size", int(meta["img_size"]))
        kwargs.setdefault("global_pool", meta.get("global_pool", "token"))
    spec = VIT_SIZES[size]
    args = {
        "patch_size": patch,
        "embed_dim": spec.embed_dim,
        "depth": spec.depth,
        "num_heads": spec.num_heads,
        "mlp_ratio": 4.0,
        "qkv_bias": True,
        "norm_layer": partial(nn.LayerNorm, eps=1e-6),
        **kwargs,
    }
    out_indices = args.pop("out_indices", 3)
    model = build_model_with_cfg(
        VisionTransformer,
        name,
        pretrained,
        pretrained_cfg=cfg,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg={"out_indices": out_indices, "feature_cls": "getter"},
        **args,
    )
    vit = _vit_module(model)
    if not pretrained and vit.pos_embed.device.type != "meta":  # random init: build_vit's fixed table
        grid = vit.patch_embed.grid_size
        vit.pos_embed.data.copy_(sincos_pos_embed_2d(spec.embed_dim, grid, cls_token=True).unsqueeze(0))
    vit.pos_embed.requires_grad_(False)
    return model


def _create_resnet(name: str, arch: str, pretrained: bool = False, **kwargs: Any) -> nn.Module:
    from timm.models import model_entrypoint

    cfg, _ = _resolve(name, pretrained, kwargs, lambda meta, file: None)
    return model_entrypoint(arch)(pretrained=pretrained, pretrained_cfg=cfg, **kwargs)


def _entrypoint(name: str) -> Any:
    """A timm entrypoint ``fn(pretrained=False, **kwargs)`` named ``name``, in this module."""
    if name.startswith("rsfm_vit_"):
        size, patch = name[len("rsfm_vit_") :].split("_patch")
        fn = partial(_create_vit, name, size, int(patch))
        doc = f"ViT-{size} with {patch}-pixel patches as rsfm builds it; weights from an rsfm export."
    else:
        fn = partial(_create_resnet, name, name[len("rsfm_") :])
        doc = f"timm {name[len('rsfm_') :]}; weights from an rsfm export."

    def entry(pretrained: bool = False, **kwargs: Any) -> nn.Module:
        return fn(pretrained=pretrained, **kwargs)

    entry.__name__ = entry.__qualname__ = name
    entry.__module__ = __name__
    entry.__doc__ = doc
    return entry


def register_timm_models() -> list[str]:
    """Register every ``rsfm_*`` name with timm (once; later calls do nothing).

    ``import rsfm`` calls it as soon as timm is imported, so user code rarely needs to.

    Returns:
        The registered names (:func:`timm_model_names`).
    """
    global _registered
    names = timm_model_names()
    if _registered:
        return names
    from timm.models import register_model

    module = sys.modules[__name__]
    for name in names:
        default_cfgs[name] = _cfg(name)
        fn = _entrypoint(name)
        setattr(module, name, fn)
        register_model(fn)
    _registered = True
    return names
