"""The sections every downstream recipe shares, read and checked in one place."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["BACKBONE_KEYS", "OPTIM_KEYS", "recipe_sections"]

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
