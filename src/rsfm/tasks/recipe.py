"""The sections every downstream recipe shares, read and checked in one place."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rsfm.engine.export import read_encoder_meta

__all__ = ["BACKBONE_KEYS", "OPTIM_KEYS", "encoder_normalisation", "recipe_sections"]

#: options of :func:`rsfm.models.adapters.build_backbone`
BACKBONE_KEYS = frozenset(
    {"encoder", "arch", "size", "img_size", "patch_size", "frozen", "drop_path_rate", "out_indices"}
)
#: AdamW with layer decay and a warmup-cosine schedule (:mod:`rsfm.engine.optim`)
OPTIM_KEYS = frozenset({"lr", "weight_decay", "layer_decay", "warmup_epochs", "min_lr_ratio"})


def recipe_sections(
    cfg: Mapping[str, Any], task: str, data_keys: set[str] | frozenset[str], model_keys: set[str] | frozenset[str]
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Copies of a recipe's ``backbone``, ``data``, ``model`` and ``optim`` sections.

    Args:
        cfg: the recipe as a plain dict.
        task: the task's name, for error messages.
        data_keys: the options the task's ``data`` section accepts.
        model_keys: the options the task's ``model`` section accepts.

    Returns:
        ``(backbone, data, model, optim)`` as new dicts (missing sections are empty).

    Raises:
        ValueError: naming ``section.key`` for the first unknown key.
    """
    allowed = {"backbone": BACKBONE_KEYS, "data": data_keys, "model": model_keys, "optim": OPTIM_KEYS}
    sections = []
    for name, keys in allowed.items():
        values = dict(cfg.get(name) or {})
        unknown = sorted(set(values) - set(keys))
        if unknown:
            raise ValueError(f"{name}.{unknown[0]} is not a {task} option; expected one of {sorted(keys)}")
        sections.append(values)
    return sections[0], sections[1], sections[2], sections[3]


def encoder_normalisation(backbone: Mapping[str, Any], data: dict[str, Any]) -> dict[str, Any] | None:
    """Normalise inputs as the encoder was pretrained: the export's ``mean``/``std`` win.

    When ``backbone.encoder`` names an rsfm export that records ``mean`` and ``std``, they
    replace ``data['mean']``/``data['std']`` in place (per channel, for inputs in [0, 1]);
    otherwise ``data`` keeps the recipe's values.

    Returns:
        The export's metadata, or None without ``backbone.encoder``.

    Raises:
        FileNotFoundError, ValueError: see :func:`rsfm.engine.export.read_encoder_meta`.
    """
    if not backbone.get("encoder"):
        return None
    meta = read_encoder_meta(backbone["encoder"])
    if meta.get("mean") and meta.get("std"):
        data["mean"], data["std"] = [float(v) for v in meta["mean"]], [float(v) for v in meta["std"]]
    return meta
