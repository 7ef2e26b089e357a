"""One model for every downstream task: an encoder, an optional neck and any number of heads.

:class:`TaskModel` is built from plain specifications (the recipe's ``model`` section, also
kept in checkpoints): each part is ``{"class_path": name or import path, "init_args": {...}}``.
It normalises inputs with the data's statistics (those of an encoder export win), runs the
encoder and the neck once per batch for every image key the heads need (both dates of a
change pair in one batched pass, so BatchNorm sees both), and hands each head its features.

.. versionadded:: 0.2
"""

from __future__ import annotations

import importlib
import inspect
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rsfm.data.base import DataInfo
from rsfm.models.encoders.base import Encoder
from rsfm.models.heads.base import Features, Head
from rsfm.models.necks import Neck
from rsfm.utils.errors import CheckpointError, ConfigError
from rsfm.utils.registry import ENCODERS, HEADS, NECKS, Registry

__all__ = ["TaskModel", "build_part", "resolve_class"]


def resolve_class(class_path: str, registry: Registry, key: str) -> type:
    """The class a recipe names: a registered name (``UperNetHead``) or an import path.

    Args:
        class_path: a name registered in ``registry`` or ``package.module.Class``.
        registry: where registered names are looked up (``HEADS``, ``ENCODERS``...).
        key: the recipe key, named in errors (``model.heads.segmentation``).

    Returns:
        The class.

    Raises:
        ConfigError: naming ``key`` if the class cannot be found.
    """
    if class_path in registry:
        return registry.get(class_path)
    module, _, name = class_path.rpartition(".")
    if module:
        try:
            return getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            pass
    raise ConfigError(
        f"{key}.class_path: {class_path!r} is neither a registered {registry.kind[:-1]} "
        f"({', '.join(registry.names())}) nor an importable class"
    )


def build_part(spec: Mapping[str, Any], registry: Registry, key: str, **fill: Any) -> Any:
    """Instantiate ``{"class_path", "init_args"}``, filling arguments left None from ``fill``.

    ``fill`` supplies values the data decides (``in_chans``), used only where the class takes
    that argument and the recipe left it None.

    Args:
        spec: ``{"class_path": ..., "init_args": {...}}`` from a recipe.
        registry: where registered names are looked up.
        key: the recipe key, named in errors.
        **fill: defaults for arguments the recipe left None.

    Returns:
        The instance.

    Raises:
        ConfigError: naming ``key`` on an unknown class or arguments it does not take.
    """
    if not isinstance(spec, Mapping) or "class_path" not in spec:
        raise ConfigError(f"{key} must be {{class_path: ..., init_args: {{...}}}}, got {spec!r}")
    cls = resolve_class(str(spec["class_path"]), registry, key)
    args = dict(spec.get("init_args") or {})
    params = inspect.signature(cls).parameters
    for name, value in fill.items():
        if name in params and args.get(name) is None:
            args[name] = value
    try:
        return cls(**args)
    except TypeError as err:
        raise ConfigError(f"{key}: {cls.__name__}: {err}") from None


def _pad_batch(images: Sequence[Tensor], divisor: int) -> tuple[Tensor, list[tuple[int, int]]]:
    """Stack ``(C, H_i, W_i)`` images into ``(B, C, H, W)``, zero-padded bottom/right to a multiple of ``divisor``."""
    sizes = [(int(t.shape[-2]), int(t.shape[-1])) for t in images]
    h = -(-max(s[0] for s in sizes) // divisor) * divisor
    w = -(-max(s[1] for s in sizes) // divisor) * divisor
    out = images[0].new_zeros((len(images), images[0].shape[0], h, w))
    for i, t in enumerate(images):
        out[i, :, : t.shape[-2], : t.shape[-1]] = t
    return out, sizes


class TaskModel(nn.Module):
    """Encoder + neck + heads, built from specifications.

    Args:
        encoder: ``{"class_path": "ViT", "init_args": {...}}`` (``rsfm list encoders``).
        heads: head name → specification (``rsfm list heads``); names are free and prefix
            the logged metrics when there are several.
        neck: specification of the neck (``rsfm list necks``), or None (the encoder's maps go
            to the heads as they are).
        info: the datamodule's :class:`~rsfm.data.base.DataInfo` (classes, bands, statistics).

    Inputs are normalised with ``info.mean``/``info.std``, except that an encoder built from
    an export normalises with the statistics it was pretrained with.

    Raises:
        ConfigError: on an unknown part, a bad option, or a head whose sample keys the data
            does not provide.
    """

    def __init__(
        self,
        encoder: Mapping[str, Any],
        heads: Mapping[str, Mapping[str, Any]],
        neck: Mapping[str, Any] | None = None,
        info: DataInfo | None = None,
    ) -> None:
        super().__init__()
        info = info or DataInfo()
        if not heads:
            raise ConfigError("model.heads is empty: a task needs at least one head")
        self.encoder: Encoder = build_part(encoder, ENCODERS, "model.encoder", in_chans=info.num_channels)
        meta = self.encoder.meta
        mean, std = info.mean, info.std
        if meta.get("weights") and meta.get("mean") and meta.get("std") and len(meta["mean"]) == info.num_channels:
            mean, std = meta["mean"], meta["std"]  # normalise as the encoder was pretrained
        self.mean_std = (list(map(float, mean)), list(map(float, std)))
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.neck: Neck | None = None
        channels, strides = self.encoder.out_channels, self.encoder.strides
        if neck is not None:
            self.neck = build_part(neck, NECKS, "model.neck")
            self.neck.build(channels, strides)
            channels, strides = self.neck.out_channels, self.neck.strides
        self.heads = nn.ModuleDict()
        provided = set(info.sample_keys)
        for name, spec in heads.items():
            head: Head = build_part(spec, HEADS, f"model.heads.{name}")
            missing = [k for k in (*head.image_keys, *head.target_keys) if k not in provided]
            if missing:
                raise ConfigError(
                    f"model.heads.{name} ({type(head).__name__}) reads sample keys {missing} that the data "
                    f"does not provide (it gives {sorted(provided)})"
                )
            if head.input == "pooled":
                head.build([self.encoder.num_features], [], info)
            else:
                head.build(list(channels), list(strides), info)
            self.heads[name] = head
        if not any(h.input == "pooled" for h in self.heads.values()):
            self.encoder.drop_pooling()
        self.info = info
        #: padding multiple of list batches: a multiple of 32, the coarsest stride and the
        #: encoder's input multiple (e.g. a ViT's patch)
        self.size_divisor = math.lcm(int(max([32, *strides])), int(self.encoder.input_multiple))

    def set_normalisation(self, mean: Sequence[float], std: Sequence[float]) -> None:
        """Normalise inputs with these per-band statistics from now on (e.g. a checkpoint's).

        Args:
            mean: one value per input band, of images in [0, 1].
            std: one positive value per input band.

        Raises:
            CheckpointError: if the lengths differ from the model's number of bands or a
                ``std`` is not positive.
        """
        bands = int(self.mean.shape[1])
        if len(mean) != bands or len(std) != bands or not all(float(s) > 0 for s in std):
            raise CheckpointError(
                f"normalisation mean {list(mean)} / std {list(std)} does not fit a model of {bands} bands "
                "(one mean and one positive std per band)"
            )
        self.mean_std = (list(map(float, mean)), list(map(float, std)))
        self.mean.copy_(torch.tensor(self.mean_std[0], dtype=torch.float32).view(1, -1, 1, 1))
        self.std.copy_(torch.tensor(self.mean_std[1], dtype=torch.float32).view(1, -1, 1, 1))

    # -- features ---------------------------------------------------------------------------

    def normalise(self, x: Tensor) -> Tensor:
        """``(B, C, H, W)`` in [0, 1] → normalised with the model's per-band mean and std."""
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def pyramid(self, x: Tensor) -> list[Tensor]:
        """Maps of normalised images: encoder intermediates, through the neck."""
        maps = self.encoder.forward_intermediates(x)
        return self.neck(maps) if self.neck is not None else maps

    def features(self, batch: Mapping[str, Any], *heads: Head) -> Features:
        """Encoder (and neck) outputs of a batch for ``heads`` (all heads when none given).

        Images of the heads' :attr:`~rsfm.models.heads.base.Head.image_keys` are normalised
        and run through the encoder together in one pass (same size required). Tensor
        batches are padded bottom/right to the encoder's input multiple; list batches
        (images of different sizes, as detection's) are padded to a common size, a multiple
        of :attr:`size_divisor`. Padding is 0 after normalising (the mean colour).

        Args:
            batch: ``{key: (B, C, H, W) float32 in [0, 1]}``, or a list of ``(C, H_i, W_i)``
                per key for list batches.
            *heads: the heads whose inputs to compute.

        Returns:
            :class:`~rsfm.models.heads.base.Features`: per image key, the pyramid maps and/or
            pooled features, with the images' sizes before padding.
        """
        heads = heads or tuple(self.heads.values())
        keys = list(dict.fromkeys(k for h in heads for k in h.image_keys))
        kinds = {h.input for h in heads}
        tensors, sizes = [], []
        multiple = self.encoder.input_multiple
        for key in keys:
            images = batch[key]
            if isinstance(images, Tensor):
                h, w = int(images.shape[-2]), int(images.shape[-1])
                t, s = self.normalise(images), [(h, w)] * images.shape[0]
                if h % multiple or w % multiple:  # pad bottom/right with the mean colour (0 after normalising)
                    t = F.pad(t, (0, (-w) % multiple, 0, (-h) % multiple))
            else:
                t, s = _pad_batch([self.normalise(i[None])[0] for i in images], self.size_divisor)
            tensors.append(t)
            sizes = s
        x = torch.cat(tensors) if len(tensors) > 1 else tensors[0]
        out = Features(sizes=sizes, shape=(int(x.shape[-2]), int(x.shape[-1])))
        b = tensors[0].shape[0]
        if "pyramid" in kinds:
            maps = self.pyramid(x)
            for i, key in enumerate(keys):
                out.maps[key] = [m[i * b : (i + 1) * b] for m in maps]
        if "pooled" in kinds:
            pooled = self.encoder.forward_pooled(x)
            for i, key in enumerate(keys):
                out.pooled[key] = pooled[i * b : (i + 1) * b]
        return out

    def forward(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        """Raw outputs of every head for a batch (one encoder pass)."""
        feats = self.features(batch)
        return {name: head(feats, batch) for name, head in self.heads.items()}

    @staticmethod
    def upsample(logits: Tensor, size: Sequence[int]) -> Tensor:
        """Bilinear resize of ``(B, K, h, w)`` logits to ``size``."""
        return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)
