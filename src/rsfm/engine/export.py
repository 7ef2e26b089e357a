"""Encoder export: one safetensors file that downstream code loads without the method.

The file holds the encoder's ``state_dict`` (timm ``VisionTransformer`` key names, no
classifier head) and, in the safetensors metadata, a JSON ``rsfm`` entry with everything
needed to rebuild it: architecture, size, ``img_size``, ``patch_size``, ``in_chans``, the
normalisation ``mean``/``std`` the encoder was trained with, and the pretraining method.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from rsfm.models.vit import build_vit

__all__ = ["atomic_write", "export_encoder", "load_encoder", "read_encoder_meta"]


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
        encoder: a ViT built by :func:`rsfm.models.vit.build_vit`; its ``head`` is dropped.
        path: destination ``.safetensors`` file.
        meta: JSON-serialisable build metadata; must contain ``arch``, ``size``,
            ``img_size``, ``patch_size`` and ``in_chans``; should contain ``mean``/``std``
            (normalisation, per channel, for inputs scaled to [0, 1]) and ``method``.

    Returns:
        The written path.

    Raises:
        KeyError: if a required metadata field is missing.
    """
    for key in ("arch", "size", "img_size", "patch_size", "in_chans"):
        if key not in meta:
            raise KeyError(f"encoder metadata lacks required field {key!r}")
    state = {k: v.detach().cpu().contiguous() for k, v in encoder.state_dict().items() if not k.startswith("head.")}
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
    global_pool: str = "token",
    drop_path_rate: float = 0.0,
    dynamic_img_size: bool = False,
) -> nn.Module:
    """Rebuild an exported encoder and load its weights.

    Args:
        path: a file written by :func:`export_encoder`.
        num_classes: size of a new, randomly initialised classifier head (0: none).
        global_pool: ``token`` or ``avg`` pooling for ``forward_head``.
        drop_path_rate: stochastic depth for fine-tuning.
        dynamic_img_size: accept any input size (position embedding resampled), see
            :func:`rsfm.models.vit.build_vit`.

    Returns:
        A timm ``VisionTransformer``; its ``rsfm_meta`` attribute holds the metadata.

    Raises:
        FileNotFoundError, ValueError: see :func:`read_encoder_meta`; ValueError also for an
        unsupported ``arch``.
    """
    meta = read_encoder_meta(path)
    if meta["arch"] != "vit":
        raise ValueError(f"{path}: unsupported encoder arch {meta['arch']!r}; expected 'vit'")
    model = build_vit(
        meta["size"],
        img_size=meta["img_size"],
        patch_size=meta["patch_size"],
        in_chans=meta["in_chans"],
        num_classes=num_classes,
        global_pool=global_pool,
        drop_path_rate=drop_path_rate,
        dynamic_img_size=dynamic_img_size,
    )
    from safetensors.torch import load_file

    state = load_file(str(path))
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("head.")]
    if missing or unexpected:
        raise ValueError(f"{path}: weights do not match the encoder: missing {missing}, unexpected {unexpected}")
    model.rsfm_meta = meta
    return model
