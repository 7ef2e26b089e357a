"""Model cards: a Markdown file beside every encoder export (``encoder.safetensors`` -> ``encoder.md``).

The card tells a reader of the weights what they are and where they come from, following the
headings of Mitchell et al. 2019 ("Model Cards for Model Reporting", FAT* '19, §4) that apply
to a pretrained encoder: the architecture and its parameter count; the input it expects
(bands, image size, ground sampling distance when known, normalisation); how it was trained
(method, data, held-out split, recipe, epochs and steps); the evaluation results on the
held-out split when given; the licence fields; and how to load it in rsfm, timm, torchgeo and
TerraTorch. Everything comes from the export's metadata (:func:`rsfm.models.export.read_encoder_meta`),
the optional metrics of ``rsfm evaluate`` and the optional resolved recipe.

.. versionadded:: 0.3
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rsfm.models.encoders.vit import VIT_SIZES, evenly_spaced_blocks
from rsfm.utils.files import atomic_write

__all__ = ["model_card_path", "parameter_count", "render_model_card", "write_model_card"]

#: metadata fields shown in the card's own sections (the rest go to "Other metadata")
_SHOWN = {
    "arch", "size", "img_size", "patch_size", "in_chans", "window_size", "interval", "global_pool", "mean", "std",
    "method", "data_root", "data_shards", "natural_root", "test_fraction", "split_seed", "epochs", "steps", "gsd",
    "bands", "licence", "license", "data_licence", "converted_from",
}  # fmt: skip


def _is_resnet(arch: str) -> bool:
    """Whether ``arch`` names a timm ResNet (as :func:`rsfm.models.export.is_resnet`, which imports this module)."""
    return arch.startswith("resnet")


def model_card_path(export_path: str | os.PathLike[str]) -> Path:
    """The card of an export: the same name with ``.md`` (``run/encoder.safetensors`` -> ``run/encoder.md``)."""
    return Path(export_path).with_suffix(".md")


def parameter_count(export_path: str | os.PathLike[str]) -> int | None:
    """Number of weights in an export (read from the safetensors header, no tensor loaded); None if unreadable."""
    from safetensors import safe_open

    try:
        with safe_open(str(export_path), framework="pt") as f:
            return sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
    except Exception:  # safetensors raises its own error types; the card then omits the count
        return None


def _architecture(meta: Mapping[str, Any]) -> str:
    arch = str(meta.get("arch", "?"))
    if _is_resnet(arch):
        return f"ResNet ({arch}, timm; He et al. 2016), global-average-pooled features"
    size, patch = meta.get("size", "?"), meta.get("patch_size", "?")
    pool = "mean of the patch tokens" if meta.get("global_pool") == "avg" else "class token"
    if arch == "vit_rvsa":
        return (
            f"ViT-{size}/{patch} with rotated varied-size window attention (RVSA, Wang et al. 2023; "
            f"window {meta.get('window_size', '?')}, full attention every {meta.get('interval', '?')} blocks)"
        )
    source = (meta.get("converted_from") or {}).get("source")
    position = (
        f"the position embedding {source} learned"
        if source in ("timm", "torchgeo")
        else "fixed 2-D sin-cos position embedding"
    )
    return f"ViT-{size}/{patch} (Dosovitskiy et al. 2021; timm VisionTransformer, {position}), pooled by the {pool}"


def _timm_name(meta: Mapping[str, Any]) -> str | None:
    arch = str(meta.get("arch", ""))
    if arch == "vit":
        return f"rsfm_vit_{meta.get('size')}_patch{meta.get('patch_size')}"
    if _is_resnet(arch):
        return f"rsfm_{arch}"
    return None


def _fmt(value: Any) -> str:
    if value is None or value == "":
        return "not recorded"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "; ".join(f"{k}: {_fmt(v)}" for k, v in value.items())
    return str(value)


def _metrics_table(metrics: Mapping[str, Any]) -> list[str]:
    """The evaluation section: one row per protocol (OA, mean class accuracy, n, settings)."""
    protocols = metrics.get("protocols", metrics)
    lines = ["## Evaluation", ""]
    data = metrics.get("data") or {}
    if data:
        lines += [
            f"Held-out split of {_fmt(data.get('root'))}: {len(data.get('classes', []))} classes, "
            f"{_fmt(data.get('n_train'))} training / {_fmt(data.get('n_heldout'))} held-out images. "
            "Scores in percent, on the held-out images only.",
            "",
        ]
    lines += ["| protocol | OA (%) | mean class acc. (%) | n | settings |", "|---|---:|---:|---:|---|"]
    for name, report in protocols.items():
        if not isinstance(report, Mapping) or "OA" not in report:
            continue
        settings = ", ".join(
            f"{k}={_fmt(report[k])}" for k in ("k", "temperature", "lr", "epochs", "blr") if report.get(k) is not None
        )
        mca = report.get("mean_class_accuracy")
        mca_text = f"{mca:.2f}" if isinstance(mca, (int, float)) and not math.isnan(mca) else "–"
        lines.append(
            f"| {name} | {float(report['OA']):.2f} | {mca_text} | {_fmt(report.get('n'))} | {settings or '–'} |"
        )
    return [*lines, ""]


def _recipe_yaml(recipe: Mapping[str, Any]) -> str:
    if isinstance(recipe.get("_yaml"), str):
        return recipe["_yaml"].rstrip()
    import yaml

    plain = {k: v for k, v in recipe.items() if not str(k).startswith("_")}
    return yaml.safe_dump(plain, sort_keys=False, default_flow_style=False).rstrip()


def _loading(name: str, meta: Mapping[str, Any]) -> list[str]:
    """The "How to load" section: rsfm, timm, torchgeo and TerraTorch snippets for the file ``name``."""
    timm_name = _timm_name(meta)
    chans = meta.get("in_chans", 3)
    lines = [
        "## How to load",
        "",
        "Inputs: float32 images scaled to [0, 1], then normalised with the mean and std above.",
        "",
        "rsfm:",
        "",
        "```python",
        "from rsfm.models.export import load_encoder",
        "",
        f'encoder = load_encoder("{name}")  # num_classes=10 adds a new classifier',
        "```",
        "",
    ]
    if timm_name is None:
        return [*lines, "timm, torchgeo, TerraTorch: not available for this architecture (it is not a timm model).", ""]
    vit = timm_name.startswith("rsfm_vit_")
    decoder = "dpt" if vit else "unet"  # smp's DPT reassembles ViT tokens; the others need a CNN pyramid
    seg = (
        f'seg = ExportSemanticSegmentationTask(model="{decoder}", backbone="tu-{timm_name}", '
        f'weights="{name}", num_classes=7)'
    )
    backbone = "rsfm_vit" if vit else "rsfm_resnet"
    necks = "        necks=None,"
    if vit and meta.get("size") in VIT_SIZES:
        blocks = list(evenly_spaced_blocks(VIT_SIZES[str(meta["size"])].depth))
        necks = f'        necks=[{{"name": "SelectIndices", "indices": {blocks}}}, {{"name": "ReshapeTokensToImage"}}],'
    return [
        *lines,
        "timm (`import rsfm` registers the `rsfm_*` names):",
        "",
        "```python",
        "import rsfm  # noqa: F401",
        "import timm",
        "",
        f'model = timm.create_model("{timm_name}", pretrained=True, pretrained_cfg_overlay=dict(file="{name}"), '
        "num_classes=10)",
        "```",
        "",
        "torchgeo:",
        "",
        "```python",
        "from rsfm.models.interop.torchgeo_tasks import ExportClassificationTask, ExportSemanticSegmentationTask",
        "",
        f'task = ExportClassificationTask(model="{timm_name}", weights="{name}", num_classes=10, in_channels={chans})',
        seg,
        "```",
        "",
        "TerraTorch:",
        "",
        "```python",
        "import rsfm  # noqa: F401  (registers the rsfm backbones)",
        "from terratorch.tasks import SemanticSegmentationTask",
        "",
        "task = SemanticSegmentationTask(",
        '    model_factory="EncoderDecoderFactory",',
        "    model_args=dict(",
        f'        backbone="{backbone}", backbone_ckpt_path="{name}", backbone_pretrained=True,',
        necks,
        '        decoder="FCNDecoder", num_classes=7,',
        "    ),",
        ")",
        "```",
        "",
    ]


def render_model_card(
    meta: Mapping[str, Any],
    metrics: Mapping[str, Any] | None = None,
    recipe: Mapping[str, Any] | None = None,
    export_name: str = "encoder.safetensors",
    parameters: int | None = None,
) -> str:
    """The Markdown text of a model card (see the module docstring).

    Args:
        meta: the export's metadata (``arch``, ``img_size``, ``in_chans``, ``mean``/``std``,
            ``method``, ``data_root``/``data_shards``, ``test_fraction``, ``split_seed``,
            ``epochs``, ``steps``; optional ``gsd`` (metres per pixel), ``bands``,
            ``licence``, ``data_licence``, ``converted_from``).
        metrics: the result of :func:`rsfm.engine.evaluate.evaluate` (``protocols`` →
            report with ``OA``/``mean_class_accuracy`` in percent, ``n``), or just its
            ``protocols`` mapping; None: no evaluation section.
        recipe: the resolved recipe (a dict; its ``_yaml`` text when present); None: no recipe section.
        export_name: the export's file name, used in the loading snippets.
        parameters: number of weights, or None when unknown.

    Returns:
        Markdown text ending in a newline.
    """
    arch = str(meta.get("arch", "?"))
    size = meta.get("img_size")
    patch = f", patch {meta['patch_size']} px" if meta.get("patch_size") else ""
    gsd = f"{_fmt(meta['gsd'])} m/pixel" if meta.get("gsd") is not None else "not recorded"
    params = f"{parameters / 1e6:.1f} M ({parameters:,})" if parameters else "unknown"
    lines = [
        f"# Model card: {export_name}",
        "",
        "An encoder exported by rsfm (weights and build metadata in the safetensors file beside this card).",
        "",
        "| | |",
        "|---|---|",
        f"| architecture | {_architecture(meta)} (`arch: {arch}`) |",
        f"| parameters | {params} |",
        f"| input | {_fmt(meta.get('in_chans'))} bands"
        + (f" ({_fmt(meta['bands'])})" if meta.get("bands") is not None else "")
        + f", {_fmt(size)} × {_fmt(size)} px{patch} |",
        f"| ground sampling distance | {gsd} |",
        f"| normalisation | mean {_fmt(meta.get('mean'))}, std {_fmt(meta.get('std'))} (per band, images in [0, 1]) |",
        f"| pretraining method | {_fmt(meta.get('method'))} |",
    ]
    if meta.get("epochs") is not None or meta.get("steps") is not None:
        lines.append(
            f"| training length | {_fmt(meta.get('epochs'))} epochs, {_fmt(meta.get('steps'))} optimiser steps |"
        )
    elif meta.get("converted_from"):
        lines.append("| training length | as released (see the source's paper) |")
    else:
        lines.append("| training length | not recorded |")
    if _timm_name(meta):
        lines.append(f"| timm name | `{_timm_name(meta)}` |")
    lines += ["", "## Data", ""]
    if meta.get("data_shards"):
        lines.append(f"- shards: {meta['data_shards']}")
    if meta.get("converted_from") and not meta.get("data_root"):
        lines.append("- pretrained by the source on its own data (see the source's paper); not an rsfm run")
    else:
        lines.append(f"- root: {_fmt(meta.get('data_root'))}")
    if meta.get("natural_root"):
        lines.append(f"- natural images: {meta['natural_root']}")
    if meta.get("test_fraction") is not None:
        lines.append(
            f"- held out from pretraining: {_fmt(meta.get('test_fraction'))} of each class "
            f"(split seed {_fmt(meta.get('split_seed'))})"
        )
    lines.append("")
    if metrics:
        lines += _metrics_table(metrics)
    weights_licence = meta.get("licence", meta.get("license"))
    lines += ["## Licence", ""]
    if meta.get("converted_from"):
        lines.append(f"- converted from: {_fmt(meta['converted_from'])}")
    lines += [
        f"- weights: {_fmt(weights_licence) if weights_licence else 'not stated'}",
        f"- training data: {_fmt(meta['data_licence']) if meta.get('data_licence') else 'unknown'}",
    ]
    if not weights_licence:
        lines.append(
            "- these weights were trained on the data above, whose licence rsfm does not know: "
            "check it before you share or use them commercially"
        )
    lines.append("")
    other = {k: v for k, v in meta.items() if k not in _SHOWN}
    if other:
        lines += ["## Other metadata", ""] + [f"- {k}: {_fmt(v)}" for k, v in other.items()] + [""]
    if recipe:
        lines += ["## Recipe", "", "```yaml", _recipe_yaml(recipe), "```", ""]
    lines += _loading(export_name, meta)
    return "\n".join(lines).rstrip() + "\n"


def write_model_card(
    export_path: str | os.PathLike[str],
    meta: Mapping[str, Any],
    metrics: Mapping[str, Any] | None = None,
    recipe: Mapping[str, Any] | None = None,
) -> Path:
    """Write (atomically, replacing any) the model card beside an export: ``encoder.safetensors`` -> ``encoder.md``.

    Args:
        export_path: the ``.safetensors`` export (its parameter count is read from it when it exists).
        meta: its metadata (see :func:`render_model_card`).
        metrics: ``rsfm evaluate``'s result, or None.
        recipe: the resolved recipe, or None.

    Returns:
        The card's path.

    Raises:
        OutputError: if the card cannot be written (see :func:`rsfm.utils.files.atomic_write`).
    """
    path = model_card_path(export_path)
    params = parameter_count(export_path) if Path(export_path).is_file() else None
    text = render_model_card(meta, metrics, recipe, Path(export_path).name, params)
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
