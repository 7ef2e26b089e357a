"""Encoder export: one safetensors file that downstream code loads without the method.

The file holds the encoder's ``state_dict`` (timm key names, no classifier head) and, in
the safetensors metadata, a JSON ``rsfm`` entry with everything needed to rebuild it: the
architecture (``arch``: ``vit``, or a timm ResNet name such as ``resnet50``), ``img_size``,
``in_chans``, for ViTs ``size`` and ``patch_size``, the normalisation ``mean``/``std`` the
encoder was trained with, and the pretraining method.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import timm
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from rsfm.models.vit import build_vit

__all__ = ["atomic_write", "export_encoder", "is_resnet", "load_encoder", "read_encoder_meta", "required_meta"]


def is_resnet(arch: str) -> bool:
    """Whether an export's ``arch`` names a timm ResNet (``resnet50``, ``resnet18`` ...)."""
    return arch.startswith("resnet")


def required_meta(arch: str) -> tuple[str, ...]:
    """Metadata fields an export of ``arch`` must carry to be rebuilt."""
    if is_resnet(arch):
        return ("arch", "img_size", "in_chans")
    return ("arch", "size", "img_size", "patch_size", "in_chans")


def atomic_write(path: str | os.PathLike[str], write: Any) -> Path:
    """Write a file atomically: ``write(tmp_path)`` then rename over ``path``.

    A crash mid-write leaves the previous file (if any) intact, never a truncated one.

    Args:
        path: destination file.
        write: callable taking the temporary path (str) and writing the file there.

    Returns:
        The destination as a ``Path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        # mkstemp creates 0600 files; give the result the permissions a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def export_encoder(encoder: nn.Module, path: str | os.PathLike[str], meta: dict[str, Any]) -> Path:
    """Save an encoder's weights and build metadata to ``path`` (safetensors), atomically.

    Args:
        encoder: a ViT built by :func:`rsfm.models.vit.build_vit` or a timm ResNet; its
            classifier (``head`` / ``fc``) is dropped.
        path: destination ``.safetensors`` file.
        meta: JSON-serialisable build metadata; must contain the fields of
            :func:`required_meta` (``arch``, ``img_size``, ``in_chans``, and for ViTs ``size``
            and ``patch_size``); should contain ``mean``/``std`` (normalisation, per channel,
            for inputs scaled to [0, 1]) and ``method``.

    Returns:
        The written path.

    Raises:
        KeyError: if a required metadata field is missing.
    """
    for key in required_meta(str(meta.get("arch", ""))):
        if key not in meta:
            raise KeyError(f"encoder metadata lacks required field {key!r}")
    state = {
        k: v.detach().cpu().contiguous() for k, v in encoder.state_dict().items() if not k.startswith(("head.", "fc."))
    }
    return atomic_write(path, lambda tmp: save_file(state, tmp, metadata={"rsfm": json.dumps(meta)}))


def read_encoder_meta(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Return the ``rsfm`` metadata of an exported encoder.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: if the file is not an rsfm encoder export.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"encoder file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as err:  # safetensors raises its own error types
        raise ValueError(f"{path} is not a safetensors file: {err}") from err
    if "rsfm" not in meta:
        raise ValueError(f"{path} has no 'rsfm' metadata; was it written by rsfm's export?")
    return json.loads(meta["rsfm"])


def load_encoder(
    path: str | os.PathLike[str],
    num_classes: int = 0,
    global_pool: str | None = None,
    drop_path_rate: float = 0.0,
    dynamic_img_size: bool = False,
) -> nn.Module:
    """Rebuild an exported encoder and load its weights.

    Args:
        path: a file written by :func:`export_encoder`.
        num_classes: size of a new, randomly initialised classifier head (0: none).
        global_pool: ``token`` or ``avg`` pooling of a ViT's ``forward_head``; None: the
            export's ``global_pool`` (``token`` when absent).
        drop_path_rate: stochastic depth for fine-tuning.
        dynamic_img_size: accept any input size (position embedding resampled), see
            :func:`rsfm.models.vit.build_vit`.

    Returns:
        A timm ``VisionTransformer``, or for ``arch: resnet50`` (any timm ResNet) a timm
        ``ResNet`` whose pooled features are global-average-pooled (2048-d for ResNet-50;
        ``global_pool`` and ``dynamic_img_size`` do not apply: a CNN takes any input size);
        its ``rsfm_meta`` attribute holds the metadata.

    Raises:
        FileNotFoundError, ValueError: see :func:`read_encoder_meta`; ValueError also for an
        unsupported ``arch``.
    """
    meta = read_encoder_meta(path)
    arch = meta.get("arch")
    if arch == "vit":
        model = build_vit(
            meta["size"],
            img_size=meta["img_size"],
            patch_size=meta["patch_size"],
            in_chans=meta["in_chans"],
            num_classes=num_classes,
            global_pool=global_pool or meta.get("global_pool", "token"),
            drop_path_rate=drop_path_rate,
            dynamic_img_size=dynamic_img_size,
        )
    elif isinstance(arch, str) and is_resnet(arch) and arch in timm.list_models("resnet*"):
        model = timm.create_model(
            arch, pretrained=False, num_classes=num_classes, in_chans=meta["in_chans"], drop_path_rate=drop_path_rate
        )
    else:
        raise ValueError(
            f"{path}: unsupported encoder arch {arch!r}; expected 'vit' or a timm ResNet (e.g. 'resnet50')"
        )
    from safetensors.torch import load_file

    state = load_file(str(path))
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith(("head.", "fc."))]
    if missing or unexpected:
        raise ValueError(f"{path}: weights do not match the encoder: missing {missing}, unexpected {unexpected}")
    model.rsfm_meta = meta
    return model
