"""Encoder files: one safetensors file that downstream code loads without the method.

The file holds the encoder's ``state_dict`` (timm key names, no classifier head) and, in
the safetensors metadata, a JSON ``rsfm`` entry with everything needed to rebuild it: the
architecture (``arch``: ``vit``, ``vit_rvsa`` (ViT + RVSA with its feature pyramid,
:mod:`rsfm.models.encoders.rvsa`), or a timm ResNet name such as ``resnet50``),
``img_size``, ``in_chans``, for ViTs ``size`` and ``patch_size`` (and for ``vit_rvsa``
``window_size`` and ``interval``), the normalisation ``mean``/``std`` the encoder was trained
with, and the pretraining method.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rsfm.models.encoders.vit import build_vit
from rsfm.utils.errors import CheckpointError
from rsfm.utils.files import atomic_write

__all__ = [
    "adapt_input_channels",
    "encoder_from_state",
    "export_encoder",
    "is_resnet",
    "load_encoder",
    "non_finite_tensors",
    "read_encoder_meta",
    "required_meta",
]


def is_resnet(arch: str) -> bool:
    """Whether an export's ``arch`` names a timm ResNet (``resnet50``, ``resnet18`` ...)."""
    return arch.startswith("resnet")


def required_meta(arch: str) -> tuple[str, ...]:
    """Metadata fields an export of ``arch`` must carry to be rebuilt."""
    if is_resnet(arch):
        return ("arch", "img_size", "in_chans")
    if arch == "vit_rvsa":
        return ("arch", "size", "img_size", "patch_size", "in_chans", "window_size", "interval")
    return ("arch", "size", "img_size", "patch_size", "in_chans")


def export_encoder(encoder: nn.Module, path: str | os.PathLike[str], meta: dict[str, Any]) -> Path:
    """Save an encoder's weights and build metadata to ``path`` (safetensors), atomically.

    Args:
        encoder: a ViT built by :func:`rsfm.models.encoders.vit.build_vit`, a ViT + RVSA built
            by :func:`rsfm.models.encoders.rvsa.build_vit_rvsa` (``arch: vit_rvsa``) or a timm
            ResNet; its classifier (``head`` / ``fc``) is dropped.
        path: destination ``.safetensors`` file.
        meta: JSON-serialisable build metadata; must contain the fields of
            :func:`required_meta` (``arch``, ``img_size``, ``in_chans``, for ViTs ``size``
            and ``patch_size``, for ``vit_rvsa`` also ``window_size`` and ``interval``);
            should contain ``mean``/``std`` (normalisation, per channel, for inputs scaled
            to [0, 1]) and ``method``.

    Returns:
        The written path.

    Raises:
        KeyError: if a required metadata field is missing.
        CheckpointError: if a weight is NaN or infinite (a diverged run is never exported).
    """
    from safetensors.torch import save_file

    for key in required_meta(str(meta.get("arch", ""))):
        if key not in meta:
            raise KeyError(f"encoder metadata lacks required field {key!r}")
    state = {
        k: v.detach().cpu().contiguous() for k, v in encoder.state_dict().items() if not k.startswith(("head.", "fc."))
    }
    bad = non_finite_tensors(state)
    if bad:
        raise CheckpointError(
            f"refusing to export {path}: {len(bad)} weight tensors hold NaN or infinite values (e.g. {bad[:3]}); "
            "the run diverged — resume from an earlier checkpoint with a lower learning rate"
        )
    out = atomic_write(path, lambda tmp: save_file(state, tmp, metadata={"rsfm": json.dumps(meta)}))
    from rsfm.models.model_card import write_model_card  # the card beside the file: encoder.md

    write_model_card(out, meta)
    return out


def non_finite_tensors(state: dict[str, Any]) -> list[str]:
    """Names of the floating-point tensors of a state dict that hold NaN or infinite values."""
    return [
        k
        for k, v in state.items()
        if isinstance(v, torch.Tensor) and v.is_floating_point() and not bool(torch.isfinite(v).all())
    ]


def adapt_input_channels(weight: torch.Tensor, in_chans: int) -> torch.Tensor:
    """Adapt a first-layer weight trained on 3 bands (RGB) to ``in_chans`` bands.

    The RGB filters are repeated over the bands and scaled by ``3 / in_chans`` (timm's
    ``adapt_input_conv`` rule), then, when ``in_chans`` is not a multiple of 3, every band's
    filter is shifted by the same amount so that the bands' filters sum to the RGB filters'
    sum (for one band: that sum). An input whose bands all equal one grey image therefore
    gives the same activations as the RGB weights on that grey image in R, G and B, for any
    band count (the 3/C rule alone keeps that only for multiples of 3).

    Args:
        weight: ``(O, 3, k, k)`` float weight of a patch embedding or first convolution.
        in_chans: bands ``C`` of the new input.

    Returns:
        ``(O, C, k, k)`` weight in the input's dtype.

    Raises:
        ValueError: if ``weight`` does not have 3 input channels or ``in_chans < 1``.
    """
    if weight.ndim != 4 or weight.shape[1] != 3:
        raise ValueError(f"expected an (O, 3, k, k) weight, got {tuple(weight.shape)}")
    if in_chans < 1:
        raise ValueError(f"in_chans must be >= 1, got {in_chans}")
    if in_chans == 3:
        return weight
    if in_chans == 1:
        return weight.sum(dim=1, keepdim=True)
    repeat = -(-in_chans // 3)
    out = weight.repeat(1, repeat, 1, 1)[:, :in_chans] * (3.0 / in_chans)
    if in_chans % 3:  # the repeats cover R, G, B unequally: restore the sum of the filters
        out = out + (weight.sum(dim=1, keepdim=True) - out.sum(dim=1, keepdim=True)) / in_chans
    return out


def read_encoder_meta(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Return the ``rsfm`` metadata of an exported encoder.

    Raises:
        CheckpointError: if ``path`` does not exist or is not an rsfm encoder export.
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"encoder file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as err:  # safetensors raises its own error types
        raise CheckpointError(f"{path} is not a safetensors file ({err})") from None
    if "rsfm" not in meta:
        raise CheckpointError(f"{path} has no 'rsfm' metadata; was it written by `rsfm export`?")
    return json.loads(meta["rsfm"])


def first_layer_key(arch: str) -> str:
    """State-dict key of the first layer's weight: the ViT patch projection or the ResNet stem conv."""
    return "conv1.weight" if is_resnet(arch) else "patch_embed.proj.weight"


def mismatch_summary(missing: list[str], unexpected: list[str], shapes: list[str] | None = None) -> str:
    """One line: counts of missing / unexpected / mis-shaped keys and the first few names."""
    parts = []
    for what, keys in (("missing", missing), ("unexpected", unexpected), ("with another shape", shapes or [])):
        if keys:
            more = f", … {len(keys) - 3} more" if len(keys) > 3 else ""
            parts.append(f"{len(keys)} {what} ({', '.join(keys[:3])}{more})")
    return "; ".join(parts)


def load_encoder(
    path: str | os.PathLike[str],
    num_classes: int = 0,
    global_pool: str | None = None,
    drop_path_rate: float = 0.0,
    dynamic_img_size: bool = False,
    in_chans: int | None = None,
    source: str | None = None,
    img_size: int | None = None,
) -> nn.Module:
    """Rebuild an exported encoder and load its weights; a foreign checkpoint is converted first.

    Args:
        path: a file written by :func:`export_encoder`, or a checkpoint released by one of
            the sources of :mod:`rsfm.models.convert` (MAE's ``mae_pretrain_vit_base.pth``,
            MTP's, GeRSP's, timm or torchgeo weights …), converted in memory.
        source: the foreign checkpoint's source (a key of
            :data:`rsfm.models.convert.SOURCES`); None: an rsfm export, or, for any other
            file, the source recognised by its keys (``"auto"`` forces that).
        img_size: for a foreign checkpoint, the input side its position embedding is
            resampled to (None: the checkpoint's); ignored for an rsfm export.
        num_classes: size of a new, randomly initialised classifier head (0: none).
        global_pool: ``token`` or ``avg`` pooling of a ViT's ``forward_head``; None: the
            export's ``global_pool`` (``token`` when absent). Pooling other than the export's
            drops its final norm and starts the one it pools with afresh, as MAE's
            fine-tuning does (``_repool_final_norm``).
        drop_path_rate: stochastic depth for fine-tuning.
        dynamic_img_size: accept any input size (position embedding resampled), see
            :func:`rsfm.models.encoders.vit.build_vit`.
        in_chans: input bands; None: the export's. A 3-band export given another number has
            its first layer adapted by :func:`adapt_input_channels`.

    Returns:
        A timm ``VisionTransformer``; for ``arch: vit_rvsa`` a
        :class:`~rsfm.models.encoders.rvsa.VisionTransformerRVSA` (it takes any input whose
        sides are multiples of the patch and pools by averaging, so ``global_pool`` and
        ``dynamic_img_size`` do not apply; a missing final ``norm``, which only pooled
        features use, keeps its init); or for ``arch: resnet50`` (any timm ResNet) a timm
        ``ResNet`` whose pooled features are global-average-pooled (2048-d for ResNet-50;
        ``global_pool`` and ``dynamic_img_size`` do not apply: a CNN takes any input size);
        its ``rsfm_meta`` attribute holds the metadata and, for a converted checkpoint, its
        ``conversion_report`` attribute the :class:`rsfm.models.convert.ConversionReport`.

    Raises:
        CheckpointError: see :func:`read_encoder_meta`; also for an unsupported ``arch``,
            weights that do not fit it, or bands that cannot be adapted; for a foreign
            checkpoint, see :func:`rsfm.models.convert.convert_state_dict` (an ambiguous or
            unknown source, a missing encoder key …).
        ValueError: if ``num_classes > 0`` for a ``vit_rvsa`` export (it has no classifier).
    """
    report = None
    if source is None and _is_rsfm_export(path):
        meta, state = read_encoder_meta(path), None
    else:
        from rsfm.models.convert import convert_file

        state, meta, report = convert_file(path, source, img_size=img_size)
    model = encoder_from_state(
        path,
        meta,
        state,
        num_classes=num_classes,
        global_pool=global_pool,
        drop_path_rate=drop_path_rate,
        dynamic_img_size=dynamic_img_size,
        in_chans=in_chans,
    )
    if report is not None:
        model.conversion_report = report
    return model


def _repool_final_norm(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Drop a ViT export's final norm when ``model`` pools the other way; its new norm keeps its init.

    timm puts a ViT's final LayerNorm on every token (``norm``) for class-token pooling and
    on the mean token (``fc_norm``) for average pooling, so an export pooled one way has the
    other's norm missing. MAE's fine-tuning (He et al. 2022, §A.3, average pooling over an
    encoder pretrained with the class token) does the same: the pretrained ``norm`` is
    dropped and ``fc_norm`` starts as an identity LayerNorm (weight 1, bias 0).

    Args:
        state: the export's tensors, by timm name.
        model: the freshly built timm ``VisionTransformer`` they are loaded into.

    Returns:
        ``state``, without the ``norm.*`` or ``fc_norm.*`` tensors ``model`` has no place for,
        and with ``model``'s own initial values for the norm it uses instead.
    """
    own = model.state_dict()
    pairs = (("norm.", "fc_norm."), ("fc_norm.", "norm."))
    for has, lacks in pairs:
        if any(k.startswith(has) for k in state) and not any(k.startswith(has) for k in own):
            state = {k: v for k, v in state.items() if not k.startswith(has)}
            state.update({k: v.clone() for k, v in own.items() if k.startswith(lacks) and k not in state})
    return state


def _is_rsfm_export(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a safetensors file with rsfm metadata (a missing file counts as one)."""
    from safetensors import safe_open

    if not Path(path).is_file():
        return True  # read_encoder_meta reports it
    try:
        with safe_open(str(path), framework="pt") as f:
            return "rsfm" in (f.metadata() or {})
    except Exception:  # not safetensors: a torch checkpoint, or no checkpoint at all
        return False


def encoder_from_state(
    path: str | os.PathLike[str],
    meta: dict[str, Any],
    state: dict[str, torch.Tensor] | None = None,
    num_classes: int = 0,
    global_pool: str | None = None,
    drop_path_rate: float = 0.0,
    dynamic_img_size: bool = False,
    in_chans: int | None = None,
) -> nn.Module:
    """Rebuild the encoder ``meta`` describes and load ``state`` (None: the export at ``path``).

    The part of :func:`load_encoder` after the metadata is read; ``path`` names the weights
    in errors. Arguments, result and errors as :func:`load_encoder`'s.
    """
    import timm
    from safetensors.torch import load_file

    arch = meta.get("arch")
    if arch not in ("vit", "vit_rvsa") and not (
        isinstance(arch, str) and is_resnet(arch) and arch in timm.list_models("resnet*")
    ):
        raise CheckpointError(
            f"{path}: unsupported encoder arch {arch!r}; expected 'vit', 'vit_rvsa' or a timm ResNet (e.g. 'resnet50')"
        )
    absent = [k for k in required_meta(arch) if k not in meta]
    if absent:
        raise CheckpointError(f"{path}: its rsfm metadata lacks {absent}; was it written by `rsfm export`?")
    chans = int(in_chans or meta["in_chans"])
    if arch == "vit":
        model = build_vit(
            meta["size"],
            img_size=meta["img_size"],
            patch_size=meta["patch_size"],
            in_chans=chans,
            num_classes=num_classes,
            global_pool=global_pool or meta.get("global_pool", "token"),
            drop_path_rate=drop_path_rate,
            dynamic_img_size=dynamic_img_size,
        )
    elif arch == "vit_rvsa":
        from rsfm.models.encoders.rvsa import build_vit_rvsa

        if num_classes:
            raise ValueError(f"{path}: a vit_rvsa encoder has no classifier head; load it with num_classes=0")
        try:
            model = build_vit_rvsa(
                meta["size"],
                img_size=meta["img_size"],
                patch_size=meta["patch_size"],
                in_chans=chans,
                drop_path_rate=drop_path_rate,
                window_size=meta["window_size"],
                interval=meta["interval"],
            )
        except ValueError as err:
            raise CheckpointError(f"{path}: its rsfm metadata does not describe a ViT+RVSA: {err}") from None
    else:
        model = timm.create_model(
            arch, pretrained=False, num_classes=num_classes, in_chans=chans, drop_path_rate=drop_path_rate
        )
    if state is None:
        state = load_file(str(path))
    if arch == "vit":
        state = _repool_final_norm(state, model)
    if chans != int(meta["in_chans"]):
        key = first_layer_key(str(arch))
        if int(meta["in_chans"]) != 3:
            raise CheckpointError(
                f"{path} was trained on {meta['in_chans']} bands; only 3-band (RGB) weights adapt to {chans} bands"
            )
        state[key] = adapt_input_channels(state[key], chans)
    if arch == "vit_rvsa":  # report shape mismatches as such (load_state_dict raises a RuntimeError)
        own = model.state_dict()
        shapes = [k for k, v in state.items() if k in own and tuple(v.shape) != tuple(own[k].shape)]
        if shapes:
            raise CheckpointError(f"{path}: weights do not fit a {arch} encoder: {mismatch_summary([], [], shapes)}")
    missing, unexpected = model.load_state_dict(state, strict=False)
    optional = ("head.", "fc.", "norm.") if arch == "vit_rvsa" else ("head.", "fc.")
    missing = [k for k in missing if not k.startswith(optional)]
    if missing or unexpected:
        raise CheckpointError(f"{path}: weights do not fit a {arch} encoder: {mismatch_summary(missing, unexpected)}")
    meta = dict(meta, in_chans=chans)
    model.rsfm_meta = meta
    return model
