"""Typed pretraining recipes: YAML files validated against dataclasses, overridable per key.

A recipe is read with OmegaConf into the :class:`PretrainConfig` schema, so a misspelt key
or a wrong type fails at once naming the field; any value can be overridden from the
command line as ``section.key=value`` (``--section.key=value`` and ``--section.key value``
work too).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from rsfm.data.transforms import IMAGENET_MEAN, IMAGENET_STD

__all__ = [
    "CheckpointConfig",
    "DataConfig",
    "EvalConfig",
    "OptimConfig",
    "PretrainConfig",
    "TrainerConfig",
    "VizConfig",
    "load_config",
    "parse_overrides",
]


@dataclass
class DataConfig:
    """Pretraining images (``PretrainDataModule``; GeRSP: ``rsfm.data.paired.PairedDataModule``)."""

    root: str = "../shared/datasets/aid"
    #: GeRSP only: labeled natural images in ImageNet layout, ``<natural_root>/<class>/<image>``
    natural_root: str | None = None
    img_size: int = 224
    batch_size: int = 64
    num_workers: int = 4
    mean: list[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    std: list[float] = field(default_factory=lambda: list(IMAGENET_STD))
    #: stratified share of images held back from pretraining for evaluation (0: use all)
    holdout_fraction: float = 0.2
    split_seed: int = 0
    scale: list[float] = field(default_factory=lambda: [0.2, 1.0])
    hflip: bool = True
    #: 0-based band indices for multi-band rasters (None: first three / RGB)
    bands: list[int] | None = None
    #: 'auto' (per-image percentile stretch for non-8-bit rasters) or a divisor such as 10000
    raster_scale: str = "auto"


@dataclass
class OptimConfig:
    """The optimiser and its per-step schedule.

    ``adamw`` with warmup-cosine (the MAE family, METHODS.md §1, §2.6) or ``sgd`` with
    momentum and cosine with ``restarts`` cycles (GeRSP, METHODS.md §3).
    """

    #: 'adamw' or 'sgd'
    name: str = "adamw"
    blr: float = 1.5e-4
    lr: float | None = None
    weight_decay: float = 0.05
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    warmup_epochs: float = 1.0
    min_lr: float = 0.0
    #: SGD momentum (``optim.name: sgd``)
    momentum: float = 0.9
    #: cosine cycles over the run, each restarting at the peak lr (0 or 1: one cosine)
    restarts: int = 0


@dataclass
class TrainerConfig:
    """Lightning ``Trainer`` options."""

    max_epochs: int = 10
    max_steps: int = -1
    max_time: str | None = None
    accelerator: str = "auto"
    devices: Any = "auto"
    num_nodes: int = 1
    strategy: str = "auto"
    #: None: bf16-mixed on GPU, 32-true on CPU
    precision: str | None = None
    gradient_clip_val: float | None = None
    accumulate_grad_batches: int = 1
    log_every_n_steps: int = 10
    limit_train_batches: Any = None
    enable_progress_bar: bool = True


@dataclass
class CheckpointConfig:
    """Checkpoints: every N epochs (and/or steps) plus ``last.ckpt``."""

    every_n_epochs: int = 1
    every_n_train_steps: int | None = None


@dataclass
class VizConfig:
    """Reconstruction figures."""

    every_n_epochs: int = 1
    num_images: int = 8


@dataclass
class EvalConfig:
    """Evaluation of the exported encoder after pretraining (``rsfm evaluate``)."""

    enabled: bool = True
    #: labeled folder (class = sub-folder); None: ``data.root``
    root: str | None = None
    protocols: list[str] = field(default_factory=lambda: ["knn", "linear"])
    #: held-out share; None: ``data.holdout_fraction`` (so pretraining never saw it)
    val_fraction: float | None = None
    k: int = 20
    temperature: float = 0.07
    batch_size: int = 128
    num_workers: int = 2
    finetune_epochs: int = 10
    finetune_max_time: str | None = None


@dataclass
class PretrainConfig:
    """A whole pretraining recipe."""

    seed: int = 0
    output_dir: str = "runs"
    run_name: str = "pretrain"
    #: None (fresh run), 'auto' (resume from output_dir/run_name/checkpoints/last.ckpt if
    #: present) or a checkpoint path
    resume: str | None = "auto"
    model: dict[str, Any] = field(default_factory=lambda: {"name": "selective_mae"})
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    viz: VizConfig = field(default_factory=VizConfig)
    evaluate: EvalConfig = field(default_factory=EvalConfig)


def parse_overrides(args: list[str]) -> list[str]:
    """Turn ``key=value``, ``--key=value`` and ``--key value`` into OmegaConf dot-list items.

    Raises:
        ValueError: on an argument that is not an override.
    """
    out: list[str] = []
    i = 0
    while i < len(args):
        a = args[i]
        if a.startswith("--"):
            a = a[2:]
            if "=" not in a:
                if i + 1 >= len(args):
                    raise ValueError(f"override --{a} has no value")
                a = f"{a}={args[i + 1]}"
                i += 1
        if "=" not in a:
            raise ValueError(f"cannot read {args[i]!r} as an override; expected key=value, e.g. trainer.max_epochs=5")
        out.append(a)
        i += 1
    return out


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> PretrainConfig:
    """Read a recipe, apply overrides and validate against :class:`PretrainConfig`.

    Args:
        path: YAML recipe, or None for the defaults.
        overrides: dot-list overrides (see :func:`parse_overrides`).

    Returns:
        The validated config (an OmegaConf object typed as :class:`PretrainConfig`).

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: on an unknown key or a value of the wrong type, naming the field.
    """
    schema = OmegaConf.structured(PretrainConfig)
    try:
        parts: list[DictConfig] = [schema]
        if path is not None:
            path = Path(path)
            if not path.is_file():
                raise FileNotFoundError(f"recipe not found: {path}")
            parts.append(OmegaConf.load(path))
        if overrides:
            parts.append(OmegaConf.from_dotlist(parse_overrides(overrides)))
        cfg = OmegaConf.merge(*parts)
    except OmegaConfBaseException as err:
        raise ValueError(f"invalid recipe {path}: {err}") from None
    return cfg  # type: ignore[return-value]


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain-Python copy of a config (for logging and hparams)."""
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
