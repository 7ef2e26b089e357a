"""Convert the checkpoints that papers and libraries released into rsfm encoder exports.

An rsfm export (:mod:`rsfm.models.export`) is one safetensors file with the encoder's weights
and the metadata that rebuilds it. This module turns a *foreign* checkpoint into one, so the
weights the authors released fine-tune with rsfm's tasks like an rsfm-pretrained encoder::

    rsfm convert --source mae --input mae_pretrain_vit_base.pth --output mae_vit_base.safetensors
    rsfm convert --source mtp --input mtp_vit_b_rvsa_encoder.pth --output mtp.safetensors --img-size 512
    rsfm convert --source torchgeo --input resnet50_sentinel2_all_moco-df8b932e.pth --output s2_moco.safetensors

or, in Python, :func:`convert_checkpoint` (writes the export) and
:func:`rsfm.models.export.load_encoder` with ``source=`` (converts in memory and returns the
encoder; without ``source`` a file that is not an rsfm export is recognised by its keys).

Sources (``--source``), the container each release uses, and what is kept:

``mae``
    He et al., "Masked Autoencoders Are Scalable Vision Learners", CVPR 2022:
    ``mae_pretrain_vit_{base,large,huge}.pth`` and MAE's training checkpoints
    (``{"model": state_dict, "optimizer", "epoch", "scaler", "args"}``), also the fine-tuned
    ones. The ViT encoder (``cls_token``, ``pos_embed``, ``patch_embed.proj``,
    ``blocks.N.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}``, ``norm``, or
    ``fc_norm`` for a globally pooled fine-tuned model) becomes an ``arch: vit`` export; the
    decoder (``decoder_*``, ``mask_token``) and a classifier ``head`` are dropped.
``selectivemae``
    Wang et al., "Harnessing Massive Satellite Imagery with Efficient Masked Image
    Modeling", ICCV 2025 (SelectiveMAE, OpticalRS-4M/13M): the same container and encoder
    keys as MAE; dropped: the cross-attention decoder (``decoder_blocks.N.{norm1,
    cross_attn.q, cross_attn.kv, cross_attn.proj, norm2, mlp.*}``, ``decoder_norm``,
    ``decoder_pred``, ``decoder_embed1``, ``decoder_pos_embed``, ``mask_token``) and the
    unused token-scoring parts (``pos_embed_probs``, ``get_token_probs*``, the ``hog.*``
    buffers).
``mtp``
    Wang et al., "MTP: Advancing Remote Sensing Foundation Model via Multi-Task
    Pretraining", IEEE JSTARS 2024, whose backbone is ViT + RVSA (Wang et al., TGRS 2023):
    MTP's encoder files (``{"state_dict": ...}``, unprefixed), its full-model files
    (``encoder.`` prefix) and mmseg/mmdet fine-tuned checkpoints (``{"state_dict":
    {"backbone." + key, "decode_head.…", …}, "meta": …}``). The backbone becomes an
    ``arch: vit_rvsa`` export (:mod:`rsfm.models.encoders.rvsa`, whose key names are the
    release's); everything outside the backbone is dropped. Window size and global-attention
    interval are read from the tables' shapes and which blocks hold them. Global blocks
    without ``full_attn_rel_pos_{h,w}`` (mmdet's "branches" variant) get zero tables, which
    is the same attention without the relative-position term. The RVSA paper's own fine-tuned
    checkpoints (github.com/ViTAE-Transformer/Remote-Sensing-RVSA) name the global blocks'
    tables ``attn.rel_pos_{h,w}``; they are read as MTP's ``full_attn_rel_pos_{h,w}``.
``gersp``
    Huang et al., "Generic Knowledge Boosted Pre-training For Remote Sensing Images",
    arXiv 2401.04614 (GeRSP): a ResNet-50 saved by mmselfsup (``{"state_dict":
    {"backbone." + key}}`` as the released, converted files; ``encoder_q.`` in raw training
    checkpoints) or MoCo-style (``module.encoder_q.``). The query encoder becomes an
    ``arch: resnet50`` export; the momentum encoder (``encoder_k``), the projection MLPs
    (``fc.*``, ``proj_*``, ``neck``), the ImageNet classifier (``pred_q``) and the queue are
    dropped.
``timm``
    A timm state dict (bare, or under ``state_dict``/``model``) of a plain ViT
    (``vit_*``: class token, qkv bias, no layer scale or register tokens) or a ResNet
    (``resnet18/34/50/101/152``); the classifier is dropped.
``torchgeo``
    torchgeo's pretrained weights (``ResNet50_Weights.*``, ``ResNet18_Weights.*``,
    ``ViTSmall16_Weights.*`` …), which are timm state dicts, often with a first layer of
    2 to 13 bands: the band count is kept (``in_chans`` is read from the weight's shape).

The position embedding is resampled bicubically (``align_corners=False``, no antialiasing,
as MAE's and MTP's fine-tuning code) from the checkpoint's patch grid to ``img_size /
patch_size``, keeping the class-token slot; RVSA's global relative-position tables
``(2S - 1, d)`` follow the grid ``S`` the same way. The encoder size (tiny … huge) is read
from the width and depth (:data:`rsfm.models.encoders.vit.VIT_SIZES`), the ResNet depth from
the blocks per stage, the patch size and bands from the first layer.

The export's metadata holds, besides what rebuilds the encoder, ``method`` (``MAE``,
``SelectiveMAE``, ``MTP``, ``GeRSP``, ``timm``, ``torchgeo``), the normalisation
``mean``/``std`` for inputs in [0, 1] (ImageNet's for MAE, SelectiveMAE, MTP, GeRSP and
timm; none for torchgeo, whose weights each use their own — pass ``mean``/``std``),
``converted_from`` (``source``, ``file`` name, ``sha256`` of the file) and ``licence``, the
licence under which the source's weights were released as far as its repository says:

=============  ==============================================================================
mae            CC-BY-NC-4.0 (non-commercial; github.com/facebookresearch/mae LICENSE)
selectivemae   MIT (github.com/Fengxiang23/SelectiveMAE LICENSE; its README says Apache-2.0)
mtp            MIT (github.com/ViTAE-Transformer/MTP LICENSE)
gersp          unknown (github.com/floatingstarZ/GeRSP has no LICENSE file)
timm           unknown (per model: see the weights' model card)
torchgeo       unknown (per weight: see torchgeo's pretrained-weights tables)
=============  ==============================================================================

Pass ``licence=`` (``--licence``) to record the licence you checked. Every conversion
returns a :class:`ConversionReport`: the keys used, the keys dropped (with their names in
the file), the optional encoder keys the file lacks (filled: BatchNorm step counters, RVSA's
constant index buffers, see above) and the resampled grids. A *required* encoder key the
file lacks, a tensor whose shape does not fit, or a key that belongs to the encoder but that
rsfm's architecture cannot represent (layer scale, register tokens …) raises
:class:`~rsfm.utils.errors.CheckpointError` naming the file and the keys. Files are read
with ``torch.load(weights_only=True)`` (``argparse.Namespace``, which MAE's checkpoints
hold in ``args``, is allowed), or as safetensors: loading never runs code from the file.

.. versionadded:: 0.3
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from rsfm.models.encoders.vit import VIT_SIZES
from rsfm.utils.errors import CheckpointError, ConfigError
from rsfm.utils.files import file_sha256

__all__ = [
    "SOURCES",
    "ConversionReport",
    "SourceInfo",
    "as_export",
    "convert_checkpoint",
    "convert_file",
    "convert_state_dict",
    "detect_source",
    "read_checkpoint",
    "resample_pos_embed",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class SourceInfo:
    """What rsfm knows of a checkpoint source.

    Attributes:
        archs: architectures its checkpoints hold (``vit``, ``vit_rvsa``, ``resnet``).
        method: the export's ``method``.
        licence: licence of the released weights, as the source's repository states it.
        mean: normalisation mean for RGB inputs in [0, 1]; None: unknown.
        std: normalisation std; None: unknown.
        prefixes: key prefixes of the encoder inside the file, tried in order (the first
            present wins; keys under none of them are dropped); empty: the keys as they are.
        droppable: regular expressions of the keys that are not part of the encoder.
    """

    archs: tuple[str, ...]
    method: str
    licence: str
    mean: tuple[float, ...] | None = IMAGENET_MEAN
    std: tuple[float, ...] | None = IMAGENET_STD
    prefixes: tuple[str, ...] = ()
    droppable: tuple[str, ...] = (r"^head\.",)


_MAE_DECODER = (r"^decoder_", r"^mask_token$", r"^head\.")

#: the sources :func:`convert_state_dict` knows
SOURCES: dict[str, SourceInfo] = {
    "mae": SourceInfo(
        ("vit",),
        "MAE",
        "CC-BY-NC-4.0 (non-commercial; github.com/facebookresearch/mae LICENSE)",
        droppable=_MAE_DECODER,
    ),
    "selectivemae": SourceInfo(
        ("vit",),
        "SelectiveMAE",
        "MIT (github.com/Fengxiang23/SelectiveMAE LICENSE; its README says Apache-2.0)",
        droppable=(*_MAE_DECODER, r"^pos_embed_probs$", r"^get_token_probs", r"^hog\."),
    ),
    "mtp": SourceInfo(
        ("vit_rvsa",), "MTP", "MIT (github.com/ViTAE-Transformer/MTP LICENSE)", prefixes=("backbone.", "encoder.")
    ),
    "gersp": SourceInfo(
        ("resnet",),
        "GeRSP",
        "unknown (github.com/floatingstarZ/GeRSP has no LICENSE file)",
        prefixes=("backbone.", "encoder_q."),
        droppable=(r"^fc\.", r"^head\."),
    ),
    "timm": SourceInfo(
        ("vit", "resnet"),
        "timm",
        "unknown (per model: see the weights' model card)",
        droppable=(r"^head\.", r"^fc\."),
    ),
    "torchgeo": SourceInfo(
        ("vit", "resnet"),
        "torchgeo",
        "unknown (per weight: see torchgeo's pretrained-weights tables)",
        mean=None,
        std=None,
        droppable=(r"^head\.", r"^fc\."),
    ),
}

#: ResNet depth by (bottleneck, blocks per stage)
_RESNETS: dict[tuple[bool, tuple[int, ...]], str] = {
    (False, (2, 2, 2, 2)): "resnet18",
    (False, (3, 4, 6, 3)): "resnet34",
    (True, (3, 4, 6, 3)): "resnet50",
    (True, (3, 4, 23, 3)): "resnet101",
    (True, (3, 8, 36, 3)): "resnet152",
}


@dataclass
class ConversionReport:
    """What a conversion did.

    Attributes:
        source: the source (a key of :data:`SOURCES`).
        file: the converted file (or a description of an in-memory state dict).
        sha256: hex SHA-256 of the file ("" for an in-memory state dict).
        arch: the export's ``arch`` (``vit``, ``vit_rvsa``, ``resnet50`` …).
        container: the entry of the checkpoint that held the weights ("" for a bare state dict).
        used: the file's keys that became encoder weights (names as in the file).
        dropped: the file's keys that are not part of the encoder (names as in the file).
        missing: optional encoder keys the file lacks, filled as documented (see the module).
        resampled: ``{key: ((rows, cols) before, (rows, cols) after)}`` of resampled tables.
        adapted: first-layer keys whose bands were adapted to another count.
        meta: the export's metadata.
        output: the written export, once written.
    """

    source: str
    file: str
    sha256: str
    arch: str
    container: str = ""
    used: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    resampled: dict[str, tuple[tuple[int, int], tuple[int, int]]] = field(default_factory=dict)
    adapted: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    output: str | None = None

    def summary(self) -> str:
        """A few human-readable lines (what ``rsfm convert`` prints)."""
        m = self.meta
        what = f"{self.arch}" + (f" {m['size']}" if "size" in m else "")
        lines = [
            f"{self.file} ({self.source}{', entry ' + repr(self.container) if self.container else ''}) -> {what}, "
            f"img_size {m.get('img_size')}, in_chans {m.get('in_chans')}"
            + (f", patch {m['patch_size']}" if "patch_size" in m else ""),
            f"keys used: {len(self.used)}",
            f"keys dropped: {len(self.dropped)} ({_fold(self.dropped)})",
            f"encoder keys missing (filled): {len(self.missing)} ({_fold(self.missing)})",
        ]
        for key, (old, new) in self.resampled.items():
            lines.append(f"{key} resampled from grid {old[0]}x{old[1]} to {new[0]}x{new[1]}")
        if self.adapted:
            lines.append(f"first layer adapted to {m.get('in_chans')} bands: {', '.join(self.adapted)}")
        lines.append(f"licence of the weights: {m.get('licence', 'unknown')}")
        if self.output:
            lines.append(f"written to {self.output}")
        return "\n".join(lines)


def _names(keys: list[str], limit: int = 6) -> str:
    """The first ``limit`` key names as they are, then how many more."""
    more = f", … {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def _fold(keys: list[str]) -> str:
    """Key names with block indices folded (``blocks.*.attn.qkv.weight``), at most 8 patterns."""
    pats = list(dict.fromkeys(re.sub(r"\.\d+\.", ".*.", k) for k in keys))
    more = f", … {len(pats) - 8} more" if len(pats) > 8 else ""
    return (", ".join(pats[:8]) + more) if pats else "none"


# -- reading ---------------------------------------------------------------------------------


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a checkpoint without running code from it.

    Args:
        path: a ``torch.save`` file (``.pth``, ``.pt``, ``.bin``, ``.ckpt`` …; read with
            ``weights_only=True``, with ``argparse.Namespace`` and NumPy arrays and scalars
            allowed: MAE's checkpoints hold the former, MTP's a NumPy array of its losses) or a
            ``.safetensors`` file.

    Returns:
        The checkpoint's top-level dict (a state dict, or a container such as ``{"model": …}``).

    Raises:
        CheckpointError: if the file is missing, unreadable, holds objects other than tensors
            and plain values, or is not a dict.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    with path.open("rb") as f:
        magic = f.read(8)
    if path.suffix == ".safetensors" or (magic[:1] != b"\x80" and not magic.startswith(b"PK")):
        from safetensors.torch import load_file

        try:
            return dict(load_file(str(path)))
        except Exception as err:  # safetensors raises its own error types
            raise CheckpointError(f"{path} is neither a torch checkpoint nor a safetensors file ({err})") from None
    try:
        with torch.serialization.safe_globals([argparse.Namespace, *_numpy_globals()]):
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=magic.startswith(b"PK"))
    except Exception as err:  # pickle, zip and unpickler errors of every kind
        text = str(err).splitlines()[0] if str(err) else type(err).__name__
        if "Unsupported global" in str(err):
            raise CheckpointError(
                f"{path} holds objects other than tensors and plain values (e.g. a training framework's "
                "logger state); rsfm does not load it, because loading such a file can run code. Save its "
                "weights alone first, where you trust the file: torch.save(torch.load(f)['state_dict'], 'weights.pth')"
            ) from None
        raise CheckpointError(f"{path} is not a checkpoint ({text[:160]})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} holds a {type(state).__name__}, not a state dict")
    return state


def _numpy_globals() -> list[Any]:
    """What unpickling NumPy arrays and scalars names, under NumPy 2's and NumPy 1's module paths.

    These rebuild an array or scalar from its dtype and bytes and run nothing else; an object
    array's elements are still checked one by one.
    """
    import numpy as np

    core = np._core if hasattr(np, "_core") else np.core  # NumPy 2 | 1
    reconstruct, scalar = core.multiarray._reconstruct, core.multiarray.scalar
    dtypes = [type(np.dtype(c)) for c in "?bBhHiIlLqQefdgFDGUSV"] + [type(np.dtype("M8[s]")), type(np.dtype("m8[s]"))]
    allowed: list[Any] = [np.ndarray, np.dtype, reconstruct, scalar, *dict.fromkeys(dtypes)]
    for package in ("numpy.core", "numpy._core"):  # a file saved under either NumPy names these
        allowed += [(reconstruct, f"{package}.multiarray._reconstruct"), (scalar, f"{package}.multiarray.scalar")]
    return allowed


def _rvsa_global_table_names(
    state: dict[str, Tensor], names: dict[str, str]
) -> tuple[dict[str, Tensor], dict[str, str]]:
    """MTP's names for the global blocks' relative-position tables.

    The RVSA paper's own repository (Wang et al., TGRS 2023) names them ``attn.rel_pos_h/w``,
    as its RVSA blocks name theirs; MTP renamed the global blocks' ones
    ``attn.full_attn_rel_pos_h/w`` (Wang et al., JSTARS 2024, released backbone; see
    docs/methods/mtp.md), the names rsfm's ViT+RVSA uses. A block is
    global when it has no Swin bias table (``attn.relative_position_bias_table``).
    """
    windowed = {
        k.split(".")[1] for k in state if k.startswith("blocks.") and k.endswith(".attn.relative_position_bias_table")
    }
    out: dict[str, Tensor] = {}
    renamed = dict(names)
    for k, v in state.items():
        parts = k.split(".")
        if (
            len(parts) == 4
            and parts[0] == "blocks"
            and parts[1] not in windowed
            and parts[2:]
            in (
                ["attn", "rel_pos_h"],
                ["attn", "rel_pos_w"],
            )
        ):
            new = f"blocks.{parts[1]}.attn.full_attn_{parts[3]}"
            out[new], renamed[new] = v, names[k]
        else:
            out[k] = v
    return out, renamed


def _is_state_dict(d: Any) -> bool:
    return isinstance(d, Mapping) and len(d) > 0 and all(isinstance(v, Tensor) for v in d.values())


def _unwrap(container: Mapping[str, Any], file: str) -> tuple[dict[str, Tensor], str]:
    """The state dict inside a checkpoint and the entry that held it ("" for a bare one)."""
    if _is_state_dict(container):
        return dict(container), ""
    for entry in ("state_dict", "model", "module", "state_dict_ema"):
        inner = container.get(entry)
        if _is_state_dict(inner):
            return dict(inner), entry
    tensors = {k: v for k, v in container.items() if isinstance(v, Tensor)}
    if len(tensors) > len(container) // 2 and tensors:
        return tensors, ""
    raise CheckpointError(
        f"{file}: found no state dict in the checkpoint (top-level entries: {sorted(map(str, container))[:8]}); "
        "expected a state dict or one under 'state_dict' or 'model'"
    )


def _strip_module(state: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Drop DataParallel's ``module.`` prefix; returns the state and ``{new name: name in the file}``."""
    out: dict[str, Tensor] = {}
    names: dict[str, str] = {}
    for k, v in state.items():
        new = k[len("module.") :] if k.startswith("module.") else k
        out[new] = v
        names[new] = k
    return out, names


# -- recognising ---------------------------------------------------------------------------


def _arch_of(keys: set[str]) -> str | None:
    """``vit_rvsa``, ``vit``, ``resnet`` or None, from the (unprefixed) key names."""
    if any(k.endswith(("attn.relative_position_bias_table", "attn.sampling_offsets.2.weight")) for k in keys):
        return "vit_rvsa"
    if {"patch_embed.proj.weight", "blocks.0.attn.qkv.weight"} <= keys:
        return "vit"
    if {"conv1.weight", "layer1.0.conv1.weight"} <= keys:
        return "resnet"
    return None


def _under(keys: set[str], prefix: str) -> set[str]:
    return {k[len(prefix) :] for k in keys if k.startswith(prefix)}


def detect_source(container: Mapping[str, Any], file: str = "<state dict>") -> str:
    """Recognise a checkpoint's source (a key of :data:`SOURCES`) by its key names.

    Distinctive keys decide: RVSA tables -> ``mtp``; a ViT with SelectiveMAE's cross-attention
    decoder or token scorer -> ``selectivemae``; a ViT with MAE's decoder -> ``mae``; a ResNet
    under ``backbone.`` or ``encoder_q.`` (MoCo) -> ``gersp``.

    Raises:
        CheckpointError: naming the candidates when the keys fit several sources (a bare
            ViT or ResNet: mae, selectivemae, timm or torchgeo differ only in licence and
            normalisation), or naming the file's first keys when they fit none.
    """
    state, _ = _unwrap(container, file)
    state, _ = _strip_module(state)
    keys = set(state)
    for prefix in ("backbone.", "encoder.", ""):
        if _arch_of(_under(keys, prefix) if prefix else keys) == "vit_rvsa":
            return "mtp"
    if _arch_of(keys) == "vit":
        if any(k.startswith(("get_token_probs", "pos_embed_probs", "hog.")) or ".cross_attn." in k for k in keys):
            return "selectivemae"
        if "mask_token" in keys or any(k.startswith("decoder_blocks.") for k in keys):
            return "mae"
        raise CheckpointError(
            f"{file}: cannot tell the source of these plain ViT weights: mae, selectivemae, timm or torchgeo "
            "(they differ in licence and normalisation); pass the source (rsfm convert --source, "
            "load_encoder(..., source=...), or in a recipe model.encoder.weights=<source>:<path>)"
        )
    for prefix in ("backbone.", "encoder_q."):
        if _arch_of(_under(keys, prefix)) == "resnet":
            return "gersp"
    if _arch_of(keys) == "resnet":
        raise CheckpointError(
            f"{file}: cannot tell the source of these ResNet weights: timm or torchgeo (or GeRSP without its "
            "prefix); pass the source (rsfm convert --source, load_encoder(..., source=...), or in a recipe "
            "model.encoder.weights=<source>:<path>)"
        )
    first = sorted(keys)[:5]
    raise CheckpointError(
        f"{file}: not a checkpoint of a source rsfm converts ({', '.join(SOURCES)}): its keys ({first} …) hold "
        "no ViT, ViT+RVSA or ResNet; if it is an rsfm training checkpoint, export it with `rsfm export`"
    )


# -- resampling ------------------------------------------------------------------------------


def resample_pos_embed(pos_embed: Tensor, new_grid: tuple[int, int], num_prefix_tokens: int = 1) -> Tensor:
    """Resample a ``(1, k + h·w, C)`` square-grid position embedding to ``(1, k + H·W, C)``.

    Bicubic, ``align_corners=False``, without antialiasing, as the fine-tuning code of MAE
    (He et al. 2022) and MTP (Wang et al. 2024); the ``k`` prefix (class-token) slots are
    kept as they are. Unchanged when the grids agree.

    Raises:
        ValueError: if the embedding is not 3-D or its ``h·w`` is not a square.
    """
    if pos_embed.ndim != 3:
        raise ValueError(f"expected a (1, k + h*w, C) position embedding, got {tuple(pos_embed.shape)}")
    n = pos_embed.shape[1] - num_prefix_tokens
    side = round(n**0.5)
    if side * side != n:
        raise ValueError(f"position embedding of {n} grid tokens is not a square grid")
    if (side, side) == tuple(new_grid):
        return pos_embed
    from rsfm.models.encoders.rvsa import resize_pos_embed

    prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    return torch.cat([prefix, resize_pos_embed(grid, (side, side), tuple(new_grid))], dim=1)


def _resample_table(table: Tensor, length: int) -> Tensor:
    """``(L, d)`` relative-position table to ``(length, d)``, bicubic along ``L`` (MTP's fine-tuning rule)."""
    if table.shape[0] == length:
        return table
    out = F.interpolate(table[None, None].float(), size=(length, table.shape[1]), mode="bicubic", align_corners=False)
    return out[0, 0].to(table.dtype)


# -- conversion ------------------------------------------------------------------------------


def _block_ids(keys: set[str]) -> list[int]:
    return sorted({int(m.group(1)) for k in keys if (m := re.match(r"^blocks\.(\d+)\.", k))})


def _vit_size(state: dict[str, Tensor], file: str) -> str:
    width = int(state["patch_embed.proj.weight"].shape[0])
    depth = len(_block_ids(set(state)))
    for name, spec in VIT_SIZES.items():
        if (spec.embed_dim, spec.depth) == (width, depth):
            return name
    known = ", ".join(f"{n} {s.embed_dim}/{s.depth}" for n, s in VIT_SIZES.items())
    raise CheckpointError(
        f"{file}: patch_embed.proj.weight {tuple(state['patch_embed.proj.weight'].shape)} gives width {width} and "
        f"blocks.* depth {depth}, which fit no rsfm ViT size (width/depth: {known})"
    )


def _resnet_arch(state: dict[str, Tensor], file: str) -> str:
    keys = set(state)
    if state["conv1.weight"].ndim != 4 or tuple(state["conv1.weight"].shape[-2:]) != (7, 7):
        raise CheckpointError(f"{file}: conv1.weight {tuple(state['conv1.weight'].shape)} is not a ResNet 7x7 stem")
    blocks = tuple(len({m.group(1) for k in keys if (m := re.match(rf"^layer{i}\.(\d+)\.", k))}) for i in range(1, 5))
    bottleneck = "layer1.0.conv3.weight" in keys
    arch = _RESNETS.get((bottleneck, blocks))
    if arch is None:
        kind = "bottleneck" if bottleneck else "basic"
        raise CheckpointError(
            f"{file}: layer1..layer4 hold {list(blocks)} {kind} blocks, which fit no timm ResNet "
            f"({', '.join(sorted(set(_RESNETS.values())))})"
        )
    return arch


def _target_state(arch: str, meta: dict[str, Any]) -> dict[str, Tensor]:
    """Names and shapes (on the meta device) of the encoder an export of ``meta`` rebuilds."""
    with torch.device("meta"):
        if arch == "vit":
            from rsfm.models.encoders.vit import build_vit

            model = build_vit(
                meta["size"],
                img_size=meta["img_size"],
                patch_size=meta["patch_size"],
                in_chans=meta["in_chans"],
                global_pool=meta.get("global_pool", "token"),
            )
        elif arch == "vit_rvsa":
            from rsfm.models.encoders.rvsa import build_vit_rvsa

            model = build_vit_rvsa(
                meta["size"],
                img_size=meta["img_size"],
                patch_size=meta["patch_size"],
                in_chans=meta["in_chans"],
                window_size=meta["window_size"],
                interval=meta["interval"],
            )
        else:
            import timm

            model = timm.create_model(arch, pretrained=False, num_classes=0, in_chans=meta["in_chans"])
    return dict(model.state_dict())


def _rvsa_layout(state: dict[str, Tensor], file: str, size: str) -> tuple[int, int]:
    """``(window_size, interval)`` of an RVSA state dict, checked against the block layout."""
    ids = _block_ids(set(state))
    window = [i for i in ids if f"blocks.{i}.attn.relative_position_bias_table" in state]
    glob = [i for i in ids if i not in window]
    if not window or not glob:
        raise CheckpointError(
            f"{file}: an RVSA backbone alternates window and global blocks; this one has {len(window)} window "
            f"and {len(glob)} global blocks"
        )
    interval = glob[0] + 1
    expected = [i for i in ids if (i + 1) % interval == 0]
    if glob != expected:
        raise CheckpointError(
            f"{file}: global-attention blocks {glob} are not every {interval}-th block ({expected}); rsfm's "
            "ViT+RVSA cannot represent that layout"
        )
    table = state[f"blocks.{window[0]}.attn.relative_position_bias_table"]
    heads = VIT_SIZES[size].num_heads
    if table.shape[1] != heads:
        raise CheckpointError(
            f"{file}: blocks.{window[0]}.attn.relative_position_bias_table {tuple(table.shape)} has "
            f"{table.shape[1]} heads; a ViT-{size} has {heads}"
        )
    rel = state.get(f"blocks.{window[0]}.attn.rel_pos_h")
    window_size = (int(rel.shape[0]) + 1) // 2 if rel is not None else round(table.shape[0] ** 0.5 + 1) // 2
    return window_size, interval


def _relative_position_index(window_size: int) -> Tensor:
    from rsfm.models.encoders.rvsa import RotatedVariedSizeWindowAttention

    return RotatedVariedSizeWindowAttention(1, 1, window_size).relative_position_index.clone()


def convert_state_dict(
    container: Mapping[str, Any],
    source: str | None = None,
    *,
    file: str = "<state dict>",
    sha256: str = "",
    img_size: int | None = None,
    in_chans: int | None = None,
    mean: list[float] | tuple[float, ...] | None = None,
    std: list[float] | tuple[float, ...] | None = None,
    licence: str | None = None,
) -> tuple[dict[str, Tensor], dict[str, Any], ConversionReport]:
    """Turn a foreign checkpoint's content into an rsfm encoder state dict and its metadata.

    Args:
        container: the checkpoint as loaded (a state dict or a container such as
            ``{"model": state_dict, ...}``, see the module's list of sources).
        source: a key of :data:`SOURCES`; None or ``"auto"``: :func:`detect_source`.
        file: the file's name, for messages and the metadata.
        sha256: the file's SHA-256, for the metadata.
        img_size: input side (pixels) of the export; the position embedding (and RVSA's global
            tables) are resampled to ``img_size / patch_size``; None: the checkpoint's grid.
        in_chans: bands of the export; None: the checkpoint's. A 3-band first layer adapts
            to another count (:func:`rsfm.models.export.adapt_input_channels`).
        mean: normalisation mean per band (inputs in [0, 1]); None: the source's (dropped when
            the band count changes).
        std: normalisation std per band; None: the source's.
        licence: the weights' licence; None: the source's (:data:`SOURCES`).

    Returns:
        ``(state, meta, report)``: the encoder's state dict (rsfm key names, float tensors
        as in the file), the export metadata (:func:`rsfm.models.export.required_meta` and the
        fields described in the module) and the :class:`ConversionReport`.

    Raises:
        CheckpointError: if the source is unknown or ambiguous, the weights are not of an
            architecture the source releases, fit no rsfm size, lack a required encoder key,
            hold encoder keys rsfm cannot represent, or have tensors of the wrong shape.
        ConfigError: if ``img_size`` is not a positive multiple of the patch, or ``mean``/``std``
            do not have one value per band or a ``std`` is not positive.
    """
    if source in (None, "auto"):
        source = detect_source(container, file)
    if source not in SOURCES:
        raise CheckpointError(f"unknown checkpoint source {source!r}; expected one of {sorted(SOURCES)}")
    info = SOURCES[source]
    raw, entry = _unwrap(container, file)
    state, names = _strip_module(raw)
    dropped: list[str] = []
    for prefix in info.prefixes:
        inner = {k for k in state if k.startswith(prefix)}
        if inner and _arch_of(_under(inner, prefix)) is not None:
            dropped = [names[k] for k in state if k not in inner]
            names = {k[len(prefix) :]: names[k] for k in inner}
            state = {k[len(prefix) :]: state[k] for k in inner}
            break
    family = _arch_of(set(state))
    if family == "vit_rvsa":
        state, names = _rvsa_global_table_names(state, names)
    if family not in info.archs:
        found = family or "no ViT, ViT+RVSA or ResNet"
        raise CheckpointError(
            f"{file}: a {source} checkpoint holds a {' or '.join(info.archs)} encoder, but its keys describe {found}"
            + (f" (keys such as {sorted(state)[:4]})" if family is None else "")
        )
    if img_size is not None and int(img_size) < 1:
        raise ConfigError(f"img_size must be a positive number of pixels, got {img_size}")
    # the metadata, from the shapes
    meta: dict[str, Any] = {}
    first = "conv1.weight" if family == "resnet" else "patch_embed.proj.weight"
    src_chans = int(state[first].shape[1])
    chans = int(in_chans or src_chans)
    if family == "resnet":
        arch = _resnet_arch(state, file)
        meta.update(arch=arch, img_size=int(img_size or 224), in_chans=chans)
    else:
        arch = family
        size = _vit_size(state, file)
        w = state["patch_embed.proj.weight"]
        if w.ndim != 4 or w.shape[-1] != w.shape[-2]:
            raise CheckpointError(f"{file}: patch_embed.proj.weight {tuple(w.shape)} is not a square patch projection")
        patch = int(w.shape[-1])
        if "pos_embed" not in state:
            raise CheckpointError(f"{file}: the encoder key pos_embed is missing")
        extra_tokens = [k for k in ("reg_token", "dist_token") if k in state]
        if extra_tokens:  # the grid check below would blame pos_embed for them
            raise CheckpointError(
                f"{file}: holds {' and '.join(extra_tokens)} (register or distillation tokens), which rsfm's "
                f"{family} cannot represent; convert a ViT without them"
            )
        prefix_tokens = 1 if family == "vit" else 0
        n = int(state["pos_embed"].shape[1]) - prefix_tokens
        side = round(max(n, 0) ** 0.5)
        if state["pos_embed"].ndim != 3 or side * side != n or n == 0:
            raise CheckpointError(
                f"{file}: pos_embed {tuple(state['pos_embed'].shape)} is not a square grid"
                + (" after the class-token slot" if prefix_tokens else " (RVSA has no class token)")
            )
        size_px = int(img_size or side * patch)
        if size_px % patch:
            raise ConfigError(f"img_size {size_px} is not a multiple of the checkpoint's patch size {patch}")
        meta.update(arch=arch, size=size, img_size=size_px, patch_size=patch, in_chans=chans)
        if family == "vit" and "fc_norm.weight" in state and "norm.weight" not in state:
            meta["global_pool"] = "avg"  # a globally pooled (fine-tuned) ViT: fc_norm instead of norm
        if family == "vit_rvsa":
            meta["window_size"], meta["interval"] = _rvsa_layout(state, file, size)
    if mean is None and std is None and info.mean is not None and chans == len(info.mean):
        mean, std = info.mean, info.std
    if (mean is None) != (std is None):
        raise ConfigError("give both mean and std, or neither")
    if mean is not None and std is not None:
        if len(mean) != chans or len(std) != chans:
            raise ConfigError(f"mean and std need {chans} values (one per band), got {len(mean)} and {len(std)}")
        if not all(float(v) > 0 for v in std):
            raise ConfigError(f"std must be positive (one per band, of images in [0, 1]), got {list(std)}")
        meta.update(mean=[float(v) for v in mean], std=[float(v) for v in std])
    meta.update(
        method=info.method,
        converted_from={"source": source, "file": Path(file).name, "sha256": sha256},
        licence=licence or info.licence,
    )
    report = ConversionReport(source=source, file=file, sha256=sha256, arch=arch, container=entry, meta=meta)
    report.dropped = dropped
    # map the keys onto the target
    target_meta = dict(meta, in_chans=src_chans)
    target = _target_state(arch, target_meta)
    droppable = [re.compile(p) for p in info.droppable]
    out: dict[str, Tensor] = {}
    foreign: list[str] = []
    for k, v in state.items():
        if k in target:
            out[k] = v
            report.used.append(names[k])
        elif any(p.search(k) for p in droppable):
            report.dropped.append(names[k])
        else:
            foreign.append(names[k])
    if foreign:
        raise CheckpointError(
            f"{file}: holds encoder weights that rsfm's {arch} cannot represent: {_names(foreign)} "
            "(layer scale, register tokens, other norms or a deeper network?)"
        )
    # fill what may be absent
    for k, t in target.items():
        if k in out:
            continue
        if k.endswith("num_batches_tracked"):
            out[k] = torch.zeros((), dtype=torch.long)
        elif k.endswith("attn.relative_position_index"):
            out[k] = _relative_position_index(meta["window_size"])
        elif k.endswith(("attn.full_attn_rel_pos_h", "attn.full_attn_rel_pos_w")):
            out[k] = torch.zeros(tuple(t.shape))
        elif arch == "vit_rvsa" and k.startswith("norm."):
            pass  # the final norm feeds only pooled features; load_encoder keeps its init
        else:
            continue
        report.missing.append(k)
    absent = [k for k in target if k not in out and not (arch == "vit_rvsa" and k.startswith("norm."))]
    if absent:
        raise CheckpointError(f"{file}: the {source} checkpoint lacks encoder keys: {_names(absent)}")
    # resample to the target grid
    if family != "resnet":
        grid = target["pos_embed"].shape[1] - (1 if arch == "vit" else 0)
        new = round(grid**0.5)
        old = round((out["pos_embed"].shape[1] - (1 if arch == "vit" else 0)) ** 0.5)
        if old != new:
            out["pos_embed"] = resample_pos_embed(out["pos_embed"], (new, new), 1 if arch == "vit" else 0)
            report.resampled["pos_embed"] = ((old, old), (new, new))
        if arch == "vit_rvsa":
            for k in [k for k in out if k.endswith(("full_attn_rel_pos_h", "full_attn_rel_pos_w"))]:
                length = int(target[k].shape[0])
                if out[k].shape[0] != length:
                    before = (int(out[k].shape[0]) + 1) // 2
                    out[k] = _resample_table(out[k], length)
                    report.resampled.setdefault("blocks.*.attn.full_attn_rel_pos_h/w", ((before, before), (new, new)))
    wrong = [
        f"{k} {tuple(v.shape)} (expected {tuple(target[k].shape)})"
        for k, v in out.items()
        if tuple(v.shape) != tuple(target[k].shape)
    ]
    if wrong:
        raise CheckpointError(f"{file}: tensors of the wrong shape for a {arch} encoder: {wrong[:3]}")
    if chans != src_chans:
        from rsfm.models.export import adapt_input_channels

        if src_chans != 3:
            raise CheckpointError(
                f"{file}: {first} has {src_chans} bands; only 3-band (RGB) weights adapt to {chans} bands"
            )
        out[first] = adapt_input_channels(out[first], chans)
        report.adapted.append(first)
    return out, meta, report


def convert_file(
    path: str | os.PathLike[str],
    source: str | None = None,
    **kwargs: Any,
) -> tuple[dict[str, Tensor], dict[str, Any], ConversionReport]:
    """:func:`read_checkpoint` then :func:`convert_state_dict` (with the file's name and SHA-256).

    Args:
        path: the foreign checkpoint.
        source: a key of :data:`SOURCES`; None or ``"auto"``: recognised by its keys.
        **kwargs: ``img_size``, ``in_chans``, ``mean``, ``std``, ``licence`` of
            :func:`convert_state_dict`.

    Raises:
        CheckpointError: see :func:`read_checkpoint` and :func:`convert_state_dict`; also for
            a file that already is an rsfm export (its method, statistics and licence would be
            replaced by the source's).
    """
    from rsfm.models.export import _is_rsfm_export

    if Path(path).is_file() and _is_rsfm_export(path):
        raise CheckpointError(
            f"{path} already is an rsfm encoder export: use it as it is (model.encoder.weights=..., "
            "rsfm.models.export.load_encoder); rsfm convert reads the papers' and other libraries' checkpoints"
        )
    container = read_checkpoint(path)
    return convert_state_dict(container, source, file=str(path), sha256=file_sha256(path), **kwargs)


def convert_checkpoint(
    path: str | os.PathLike[str],
    output: str | os.PathLike[str],
    source: str | None = None,
    img_size: int | None = None,
    in_chans: int | None = None,
    mean: list[float] | None = None,
    std: list[float] | None = None,
    licence: str | None = None,
) -> ConversionReport:
    """Convert a foreign checkpoint into an rsfm export (``rsfm convert``).

    The converted weights are loaded strictly into the rebuilt encoder
    (:func:`rsfm.models.export.encoder_from_state`) before :func:`rsfm.models.export.export_encoder`
    writes them, so a written export always loads.

    Args:
        path: the foreign checkpoint (see the module's list of sources).
        output: the ``.safetensors`` export to write.
        source: a key of :data:`SOURCES`; None or ``"auto"``: recognised by its keys.
        img_size: input side in pixels (position embedding resampled); None: the checkpoint's.
        in_chans: bands; None: the checkpoint's.
        mean: per-band normalisation mean; None: the source's.
        std: per-band normalisation std; None: the source's.
        licence: the weights' licence; None: the source's.

    Returns:
        The :class:`ConversionReport`, with ``output`` set.

    Raises:
        CheckpointError: see :func:`convert_state_dict`.
        ConfigError: see :func:`convert_state_dict`.
    """
    from rsfm.models.export import encoder_from_state, export_encoder

    state, meta, report = convert_file(
        path, source, img_size=img_size, in_chans=in_chans, mean=mean, std=std, licence=licence
    )
    model = encoder_from_state(path, meta, state)
    report.output = str(export_encoder(model, output, meta))
    return report


def as_export(weights: str | os.PathLike[str], cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """An rsfm export for a recipe's ``model.encoder.weights``: the file itself, or its conversion.

    ``weights`` is an rsfm export, a foreign checkpoint (source recognised by its keys) or
    ``<source>:<path>`` naming the source (``mae:/ckpt/mae_pretrain_vit_base.pth``). A foreign
    checkpoint is converted once, at its own patch grid (the encoders resample the position
    embedding to their input), into ``cache_dir`` (default: ``$RSFM_CACHE/converted``, else
    ``~/.cache/rsfm/converted``) under a name holding the file's SHA-256, so a changed file is
    converted again and an unchanged one is not; the export is written atomically.

    Args:
        weights: the path, optionally prefixed with a key of :data:`SOURCES` and ``:``.
        cache_dir: where conversions are kept.

    Returns:
        Path of an rsfm export.

    Raises:
        CheckpointError: if the file is missing or cannot be converted (see
            :func:`convert_state_dict`).
    """
    from rsfm.models.export import _is_rsfm_export

    spec = str(weights)
    source, _, rest = spec.partition(":")
    if rest and source in SOURCES:
        path = Path(rest)
    else:
        source, path = "auto", Path(spec)
        if _is_rsfm_export(path):
            return path
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    cache = Path(cache_dir or Path(os.environ.get("RSFM_CACHE", Path.home() / ".cache" / "rsfm")) / "converted")
    out = cache / f"{path.stem}-{source}-{file_sha256(path)[:16]}.safetensors"
    if not out.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        convert_checkpoint(path, out, source=None if source == "auto" else source)
    return out
