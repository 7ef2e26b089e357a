"""One configuration system for every ``rsfm`` command: YAML recipes checked against type hints.

Recipes follow the convention of torchgeo and TerraTorch (LightningCLI / jsonargparse):
top-level sections ``trainer``, ``model``, ``data``, ``optim`` and run settings, and pluggable
parts given as ``{class_path: <registered name or import path>, init_args: {...}}``. The parser
is jsonargparse's, built from the signatures of the classes a recipe names, so a misspelt
key or a value of the wrong type fails naming ``section.key`` before anything is built. Any
value can be overridden on the command line as ``section.key=value`` (also
``--section.key=value`` or ``--section.key value``); ``init_args`` may be left out of the key
(``model.heads.segmentation.channels=64``). ``--print-config`` prints the resolved recipe
with every default.

Why not LightningCLI itself: the commands do more than ``fit`` (pretraining exports and
evaluates the encoder; fine-tuning tests the best checkpoint), and LightningCLI imports
Lightning and instantiates a Trainer before it reports a wrong key — on the 2-core CI
machine ``import lightning`` alone takes 8–10 s. Here validation imports only the classes a
recipe names, which import torch but not Lightning, torchvision or timm, so a bad recipe
fails in about 5 s.

.. versionadded:: 0.2
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rsfm.models.encoders.base import Encoder
from rsfm.models.heads.base import Head
from rsfm.models.necks import Neck
from rsfm.utils.errors import CheckpointError, ConfigError

__all__ = [
    "CheckpointConfig",
    "EvalConfig",
    "TaskModelConfig",
    "TrainerConfig",
    "VizConfig",
    "load_recipe",
    "normalise_overrides",
]

#: ``trainer.strategy`` names accepted without asking Lightning's registry (rsfm's FSDP ones
#: included); any other must be a registered Lightning strategy
COMMON_STRATEGIES = (
    "auto",
    "ddp",
    "ddp_spawn",
    "ddp_find_unused_parameters_true",
    "fsdp",
    "fsdp_activation_checkpointing",
)


@dataclass
class TrainerConfig:
    """The ``trainer`` section: Lightning ``Trainer`` options.

    Attributes:
        max_epochs: epochs of the run.
        max_steps: optimiser steps of the run (-1: from ``max_epochs``).
        max_time: wall-clock budget ``DD:HH:MM:SS``.
        accelerator: ``auto``, ``cpu``, ``gpu``...
        devices: number of devices, a list of ids, or ``auto``.
        num_nodes: machines; must equal the job's (SLURM ``--nodes``, torchrun ``--nnodes``).
        strategy: ``auto``, ``ddp``, ``fsdp`` (rsfm's FSDP, one unit per transformer block:
            :class:`rsfm.engine.trainer.BlockFSDPStrategy`), ``fsdp_activation_checkpointing``
            (the same, recomputing activations in the backward pass), or any Lightning strategy.
        precision: None: bf16-mixed on GPU, 32-true on CPU.
        sync_batchnorm: synchronise BatchNorm statistics across devices (SyncBN).
        gradient_clip_val: clip the gradient norm to this value.
        accumulate_grad_batches: batches per optimiser step.
        log_every_n_steps: logging period.
        limit_train_batches: batches (int) or share (float) of an epoch.
        limit_val_batches: likewise for validation.
        limit_test_batches: likewise for testing.
        check_val_every_n_epoch: validation period in epochs.
        enable_progress_bar: show progress bars.
        compile: pretraining only (MAE, SelectiveMAE): run each step's forward and loss compiled
            by ``torch.compile`` as one graph (:meth:`rsfm.methods.base.MaskedImageModel.compile_step`);
            ``true``, or a ``torch.compile`` mode (``reduce-overhead``: CUDA graphs,
            ``max-autotune``). The first steps are slower while it compiles. Not with an FSDP
            ``strategy`` (refused); with ``ddp`` each rank compiles its step.
    """

    max_epochs: int | None = 10
    max_steps: int = -1
    max_time: str | None = None
    accelerator: str = "auto"
    devices: int | str | list[int] = "auto"
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str | None = None
    sync_batchnorm: bool = False
    gradient_clip_val: float | None = None
    accumulate_grad_batches: int = 1
    log_every_n_steps: int = 10
    limit_train_batches: int | float | None = None
    limit_val_batches: int | float | None = None
    limit_test_batches: int | float | None = None
    check_val_every_n_epoch: int | None = 1
    enable_progress_bar: bool = True
    compile: bool | str = False


@dataclass
class CheckpointConfig:
    """The ``checkpoint`` section: numbered checkpoints every N epochs (or steps) plus ``last.ckpt``.

    Attributes:
        every_n_epochs: period of numbered checkpoints in epochs.
        every_n_train_steps: period in optimiser steps (wins over ``every_n_epochs``).
    """

    every_n_epochs: int | None = 1
    every_n_train_steps: int | None = None


@dataclass
class VizConfig:
    """The ``viz`` section of pretraining: reconstruction figures.

    Attributes:
        every_n_epochs: period in epochs (0: only at the end).
        num_images: images per figure.
    """

    every_n_epochs: int = 1
    num_images: int = 8


#: the evaluation protocols of ``rsfm evaluate`` and the ``evaluate`` section
EVAL_PROTOCOLS = ("knn", "linear", "finetune", "lpft", "scratch")
EVAL_PRECISIONS = ("32-true", "bf16-mixed", "16-mixed")


@dataclass
class EvalConfig:
    """The ``evaluate`` section of pretraining: probes of the exported encoder (``rsfm evaluate``).

    Attributes:
        enabled: evaluate after pretraining.
        root: labelled folder (class = sub-folder); None: ``data.root``.
        protocols: any of ``knn``, ``linear``, ``finetune``, ``lpft``, ``scratch``.
        k: kNN neighbours.
        temperature: kNN vote temperature.
        batch_size: feature-extraction batch.
        num_workers: loader processes.
        finetune_epochs: epochs of the fine-tuning protocols.
        finetune_max_time: wall-clock budget per fine-tuning run, ``DD:HH:MM:SS``.
        precision: arithmetic of the features and the fine-tuning (``32-true``, ``bf16-mixed``,
            ``16-mixed``); None: bf16 autocast on a GPU that has it, float32 on the CPU, whatever
            the pretraining's ``trainer.precision`` was.
    """

    enabled: bool = True
    root: str | None = None
    protocols: list[str] = field(default_factory=lambda: ["knn", "linear"])
    k: int = 20
    temperature: float = 0.07
    batch_size: int = 128
    num_workers: int = 2
    finetune_epochs: int = 10
    finetune_max_time: str | None = None
    precision: str | None = None


@dataclass
class TaskModelConfig:
    """The ``model`` section of fine-tuning recipes: an encoder, an optional neck, heads.

    Attributes:
        encoder: ``{class_path: ViT | ResNet, init_args: {...}}`` (``rsfm list encoders``).
        heads: name → ``{class_path: ..., init_args: {...}}`` (``rsfm list heads``).
        neck: ``{class_path: SimpleFeaturePyramid}`` or None (``rsfm list necks``).
        monitor: the metric that selects the tested checkpoint; None: the first evaluated
            head's (``val/mIoU``, ``val/mAP50``, ``val/F1``, ``val/OA``).
        num_visualisations: test samples drawn per head.
    """

    encoder: Encoder
    heads: dict[str, Head]
    neck: Neck | None = None
    monitor: str | None = None
    num_visualisations: int = 4


def normalise_overrides(args: list[str]) -> list[str]:
    """``key=value``, ``--key=value`` and ``--key value`` → jsonargparse's ``--key=value``.

    Raises:
        ConfigError: on an argument that is not an override.
    """
    out: list[str] = []
    i = 0
    while i < len(args):
        a = args[i]
        if a.startswith("--"):
            a = a[2:]
            if "=" not in a:
                if i + 1 >= len(args):
                    raise ConfigError(f"override --{a} has no value")
                a = f"{a}={args[i + 1]}"
                i += 1
        if "=" not in a or a.startswith("="):
            raise ConfigError(f"cannot read {args[i]!r} as an override; expected key=value, e.g. trainer.max_epochs=5")
        key, _, value = a.partition("=")
        out.append(f"--{key}={value}")
        i += 1
    return out


def _check_yaml(path: Path) -> dict[str, Any]:
    """Fail with ``file:line:column`` on a YAML syntax error or a recipe that is not a mapping.

    Returns:
        The recipe file's top-level mapping (empty for an empty file).
    """
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        raise ConfigError(f"{where}: YAML syntax error: {err.problem or err.context}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: YAML error: {err}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"cannot read recipe {path}: {err}") from None
    if data is not None and not isinstance(data, dict):
        raise ConfigError(
            f"{path}: a recipe is a mapping of sections (trainer, model, data...), got {type(data).__name__}"
        )
    return data or {}


def _option_groups(parser: Any) -> dict[str, Any]:
    """The defaults of the parser's option sections (``trainer``, ``tiling``...), by section name."""
    defaults = parser.get_defaults()
    names = {key.split(".", 1)[0] for key in defaults.keys() if "." in key}
    return {name: defaults[name] for name in sorted(names)}


def _check_option_groups(path: Path, data: dict[str, Any], groups: dict[str, Any]) -> list[str]:
    """Check that each option section of a recipe file is a mapping (``trainer: {max_epochs: 8}``).

    jsonargparse lets a plain value (``tiling: 5``, ``dedup: false``) replace a whole section,
    which then fails far from the file or, for ``false``, is ignored.

    Returns:
        The sections written empty (``trainer:`` or ``trainer: null``): they take their defaults.

    Raises:
        ConfigError: naming the file and the section, for any other value that is not a mapping.
    """
    empty: list[str] = []
    for name in groups:
        if name not in data:
            continue
        value = data[name]
        if value is None:
            empty.append(name)
        elif not isinstance(value, dict):
            raise ConfigError(
                f"{path}: {name}: expected a mapping of {name} options ({name}: {{option: value}}; "
                f"options: {', '.join(_section_fields(name))}), got {type(value).__name__} {value!r}"
            )
    return empty


def _parser(command: str) -> Any:
    """The jsonargparse parser of a command's recipe."""
    from jsonargparse import ActionConfigFile, ArgumentParser

    p = ArgumentParser(prog=f"rsfm {command}", exit_on_error=False, default_env=False, allow_abbrev=False)
    p.add_argument("--config", "-c", action=ActionConfigFile, help="YAML recipe")
    if command == "curate":
        return _curate_parser(p)

    import rsfm.data  # noqa: F401  (registers the datamodules: short class names resolve)
    from rsfm.data.base import DataModule
    from rsfm.optim import OptimConfig

    p.add_argument("--seed", type=int, default=0, help="run seed")
    p.add_argument("--output_dir", type=str, default="runs", help="parent folder of the run folder")
    p.add_argument("--run_name", type=str, default=command, help="run folder name under output_dir")
    p.add_argument(
        "--resume", type=str | None, default="auto", help="'auto' (last checkpoint of the run if any), none, or a path"
    )
    p.add_class_arguments(TrainerConfig, "trainer")
    p.add_class_arguments(CheckpointConfig, "checkpoint")
    p.add_class_arguments(OptimConfig, "optim", instantiate=False)
    p.add_subclass_arguments(DataModule, "data", required=True, instantiate=False)
    if command == "pretrain":
        import rsfm.methods  # noqa: F401
        from rsfm.methods.base import PretrainMethod

        p.add_subclass_arguments(PretrainMethod, "model", required=True, instantiate=False)
        p.add_class_arguments(VizConfig, "viz")
        p.add_class_arguments(EvalConfig, "evaluate")
    else:
        import rsfm.models  # noqa: F401  (registers encoders, necks and heads)

        p.add_class_arguments(TaskModelConfig, "model")
    return p


def _curate_parser(p: Any) -> Any:
    """Sections of an ``rsfm curate`` recipe (:mod:`rsfm.curation`)."""
    from rsfm.curation.config import CurateInput, DedupConfig, ExecutorConfig, ShardConfig
    from rsfm.curation.ingest import Tiling
    from rsfm.curation.rules import QualityThresholds

    p.add_argument("--inputs", type=list[CurateInput], required=True, help="input folders, in priority order")
    p.add_argument("--output", type=str, required=True, help="corpus folder (shards, manifest, report)")
    p.add_class_arguments(Tiling, "tiling")
    p.add_class_arguments(QualityThresholds, "rules")
    p.add_class_arguments(DedupConfig, "dedup")
    p.add_class_arguments(ShardConfig, "shards")
    p.add_class_arguments(ExecutorConfig, "executor")
    return p


def _class_options(class_path: str) -> list[str]:
    import importlib
    import inspect

    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except Exception:
        return []
    names: list[str] = []
    for klass in cls.__mro__:
        if klass.__init__ is object.__init__:
            continue
        for p in inspect.signature(klass.__init__).parameters.values():
            if p.name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and p.name not in names:
                names.append(p.name)
        if not any(p.kind == p.VAR_KEYWORD for p in inspect.signature(klass.__init__).parameters.values()):
            break
    return names


def _not_an_option(section: str) -> str:
    fields = _section_fields(section)
    if not section:
        return f"not a top-level key; expected one of {', '.join(fields)}"
    if "." not in section and section not in _section_fields(""):
        return f"unknown section {section!r}; expected one of {', '.join(_section_fields(''))}"
    return f"not an option of {section}" + (f"; options: {', '.join(fields)}" if fields else "")


def _section_fields(section: str) -> list[str]:
    from dataclasses import fields

    from rsfm.optim import OptimConfig

    sections = {
        "trainer": TrainerConfig,
        "checkpoint": CheckpointConfig,
        "optim": OptimConfig,
        "viz": VizConfig,
        "evaluate": EvalConfig,
        "model": TaskModelConfig,
    }
    from rsfm.curation.config import DedupConfig, ExecutorConfig, ShardConfig
    from rsfm.curation.ingest import Tiling
    from rsfm.curation.rules import QualityThresholds

    sections.update(
        {
            "tiling": Tiling,
            "rules": QualityThresholds,
            "dedup": DedupConfig,
            "shards": ShardConfig,
            "executor": ExecutorConfig,
        }
    )
    if section in sections:
        return [f.name for f in fields(sections[section])]
    if section:
        return []
    return [
        "seed",
        "output_dir",
        "run_name",
        "resume",
        "trainer",
        "checkpoint",
        "optim",
        "model",
        "data",
        "viz",
        "evaluate",
        # rsfm curate
        "inputs",
        "output",
        "tiling",
        "rules",
        "dedup",
        "shards",
        "executor",
    ]


_NOISE = (
    "Does not validate against any of the",
    "Subtypes:",
    "Errors:",
    "Given value type:",
    "Given value:",
    "- Expected a <class 'NoneType'>",
    "Expected a <class 'NoneType'>",
    "Not a valid subclass",
)


def format_parse_error(message: str, source: str | None = None) -> str:
    """One line out of a jsonargparse error: ``section.key: what is wrong``.

    The nested messages of jsonargparse (one level per ``Parser key`` and per ``class_path``)
    are joined into the dotted key and the innermost problem; an option that a class does
    not take lists the options it does take.
    """
    keys: list[str] = []
    classes: list[str] = []
    problems: list[str] = []
    for raw in message.splitlines():
        line = raw.strip().lstrip("- ").strip()
        if not line:
            continue
        m = re.match(r'Parser key "([^"]+)":?(.*)', line)
        if m:
            keys.append(m.group(1))
            if m.group(2).strip():
                problems.append(m.group(2).strip())
            continue
        m = re.match(r"Problem with given class_path ['\"]([^'\"]+)['\"]:?", line)
        if m:
            classes.append(m.group(1))
            continue
        if any(line.startswith(n) for n in _NOISE):
            continue
        problems.append(line)
    key = ".".join(dict.fromkeys(k for k in keys if k))
    problem = problems[0] if problems else message.strip().splitlines()[0]
    m = re.match(r"Option '([^']+)' is not accepted", problem) or re.match(r'Key "([^"]+)" is not expected', problem)
    if m:
        option = m.group(1)
        if classes:
            cls = classes[-1]
            allowed = _class_options(cls)
            problem = f"{option!r} is not an option of {cls.rsplit('.', 1)[-1]}" + (
                f"; options: {', '.join(allowed)}" if allowed else ""
            )
            if key and key != "model.heads":  # the head's name is found by _name_the_head
                key = f"{key}.{option}"
        else:
            problem = f"{option!r} is not an option here"
    m = re.match(r"Group '([\w.]+)' does not accept option '([\w.]+)'", problem)
    if m is not None:
        key, problem = f"{m.group(1)}.{m.group(2)}", _not_an_option(m.group(1))
    m = re.match(r"'([\w.]+)' is not an option here", problem)
    if m is not None and not key:
        key, problem = m.group(1), _not_an_option("")
    m = re.match(r"(?:Expected a dot import path string: |Import path )([\w.]*)", problem)
    if m is not None:
        from rsfm.utils.registry import REGISTRIES

        kind = {"model.heads": "heads", "model.encoder": "encoders", "model.neck": "necks", "data": "datasets"}.get(
            key, "methods" if key == "model" else ""
        )
        names = REGISTRIES[kind].names() if kind else []
        wrong = "does not correspond" in problem
        given = repr(m.group(1))
        problem = f"class_path {given} is not one of the" if wrong else f"unknown class_path {given};"
        problem += f" registered {kind or 'classes'}" + (f": {', '.join(names)}" if names else "")
    m = re.match(r"unrecognized arguments: --([\w.]+)", problem)
    if m is not None:
        dotted = m.group(1)
        section = dotted.rpartition(".")[0]
        key, problem = dotted, _not_an_option(section)
    problem = re.sub(r"<class '([\w.]+)'>", r"\1", problem)
    prefix = f"{source}: " if source else ""
    return f"{prefix}{key}: {problem}" if key else f"{prefix}{problem}"


def _name_the_head(message: str, path: Path | None, args: list[str]) -> str:
    """Put the head's name into a ``model.heads: 'x' is not an option of ...`` message.

    jsonargparse reports a bad option of a head under the dict's key (``model.heads``) alone;
    the recipe and the overrides say which head carries it, giving
    ``model.heads.<name>.<option>``. The message is returned unchanged when no head (or more
    than one) carries the option.
    """
    m = re.search(r"model\.heads: '(\w+)' is not an option of", message)
    if m is None:
        return message
    option = m.group(1)
    carriers: list[str] = []
    if path is not None:
        import yaml

        try:
            heads = ((yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("model") or {}).get("heads") or {}
        except (OSError, yaml.YAMLError, AttributeError):
            heads = {}
        for name, spec in heads.items() if isinstance(heads, dict) else ():
            if isinstance(spec, dict) and (option in spec or option in (spec.get("init_args") or {})):
                carriers.append(str(name))
    for a in args:
        o = re.match(rf"--model\.heads\.(\w+)\.(?:init_args\.)?{option}=", a)
        if o is not None:
            carriers.append(o.group(1))
    names = list(dict.fromkeys(carriers))
    if len(names) != 1:
        return message
    return message.replace("model.heads: ", f"model.heads.{names[0]}.{option}: ", 1)


def load_recipe(command: str, path: str | Path | None, overrides: list[str] | None = None) -> dict[str, Any]:
    """Read, override and check a recipe; nothing is built.

    Args:
        command: ``pretrain``, ``finetune``, ``test`` or ``predict``.
        path: the YAML recipe (None: defaults and overrides only).
        overrides: ``section.key=value`` items.

    Returns:
        The resolved recipe as plain dicts (pluggable parts as ``{"class_path", "init_args"}``
        with full class paths and every default filled in), plus ``_yaml``: its YAML text.

    Raises:
        ConfigError: naming the file and ``section.key`` on a missing recipe, a YAML syntax
            error (line and column), an unknown key or a value of the wrong type.
        CheckpointError: for ``pretrain``/``finetune``, if ``resume`` names a missing file.
    """
    from jsonargparse import ArgumentError

    args: list[str] = []
    parser = _parser("finetune" if command in ("test", "predict") else command)
    groups = _option_groups(parser)
    empty: list[str] = []
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"recipe not found: {path}")
        empty = _check_option_groups(path, _check_yaml(path), groups)
        args += ["--config", str(path)]
    args += normalise_overrides(list(overrides or []))
    try:
        cfg = parser.parse_args(args)
        for name in empty:  # `trainer:` with every option commented out: the defaults, then overrides
            section = groups[name].clone()
            for key, value in (cfg.get(name) or {}).items():
                section[key] = value
            cfg[name] = section
    except ArgumentError as err:
        message = format_parse_error(str(err), str(path) if path else None)
        raise ConfigError(_name_the_head(message, path, args)) from None
    except SystemExit:  # argparse's own exits (unknown top-level option)
        raise ConfigError(f"{path}: invalid recipe or overrides {args[2:]}") from None
    text = parser.dump(cfg, skip_none=False, skip_check=True)
    import yaml

    plain: dict[str, Any] = yaml.safe_load(text)
    plain.pop("config", None)
    check_sections(plain)
    resume = plain.get("resume")
    if command in ("pretrain", "finetune") and resume not in (None, "", "auto", "none", "None"):
        if not Path(str(resume)).is_file():  # before anything is built (as rsfm.engine.checkpoint.resolve_resume)
            raise CheckpointError(f"resume: checkpoint not found: {resume}")
    plain["_yaml"] = text
    return plain


def check_sections(recipe: dict[str, Any]) -> None:
    """Check the values of the plain sections (``optim``, ``trainer``, ``evaluate``) before anything runs.

    The parser checks keys and types; this checks what only the section knows (an unknown
    optimiser, ``lr`` and ``blr`` together, ``trainer.compile`` with FSDP, a method that cannot
    train under FSDP, an unknown protocol, a missing folder), so that a bad recipe fails in
    seconds, before a run folder exists.

    Raises:
        ConfigError: naming ``optim.<key>``, ``trainer.compile``, ``trainer.strategy`` or
            ``evaluate.<key>``.
        DataError: if ``evaluate.root`` is set but not a folder.
    """
    from rsfm.data.base import check_folder
    from rsfm.optim import OptimConfig

    if recipe.get("optim") is not None:
        OptimConfig(**recipe["optim"])
    trainer = recipe.get("trainer") or {}
    strategy = trainer.get("strategy")
    if isinstance(strategy, str) and strategy not in COMMON_STRATEGIES:
        # checked here, not when the trainer is built after the data scan; Lightning's registry
        # (a heavy import) only for a name that is not one of the usual ones
        import difflib

        from lightning.pytorch.strategies import StrategyRegistry

        known = list(dict.fromkeys([*COMMON_STRATEGIES, *StrategyRegistry.available_strategies()]))
        if strategy not in known:
            close = difflib.get_close_matches(strategy, known, n=3)
            hint = f"; did you mean {' or '.join(close)}?" if close else f"; e.g. {', '.join(known[:4])}"
            raise ConfigError(f"trainer.strategy: unknown strategy {strategy!r}{hint}")
    if trainer.get("compile") and str(trainer.get("strategy")).startswith("fsdp"):
        # FSDP gathers each block's weights in hooks around the block's forward: inside one fullgraph
        # graph they cannot run (torch.compile stops on FSDP's stream handling)
        raise ConfigError(
            f"trainer.compile: not with trainer.strategy={trainer['strategy']} (FSDP's per-block weight gathering "
            "cannot run inside the one compiled graph of a step); use trainer.strategy=ddp with trainer.compile, "
            "or trainer.compile=false with FSDP"
        )
    model = recipe.get("model")
    if str(trainer.get("strategy")).startswith("fsdp") and isinstance(model, dict) and model.get("class_path"):
        from rsfm.utils.registry import METHODS

        name = str(model["class_path"]).rsplit(".", 1)[-1]  # 'GeRSP' or 'rsfm.methods.GeRSP'
        if name in METHODS.names():
            reason = getattr(METHODS.get(name), "fsdp_unsupported", None)
            if reason:
                raise ConfigError(f"trainer.strategy={trainer['strategy']}: {name} cannot train under FSDP: {reason}")
    ev = recipe.get("evaluate")
    if ev and ev.get("enabled"):
        unknown = [p for p in ev.get("protocols") or [] if p not in EVAL_PROTOCOLS]
        if unknown:
            raise ConfigError(f"evaluate.protocols: unknown {unknown}; expected some of {list(EVAL_PROTOCOLS)}")
        if ev.get("precision") is not None and ev["precision"] not in EVAL_PRECISIONS:
            raise ConfigError(
                f"evaluate.precision: expected one of {list(EVAL_PRECISIONS)} or null, got {ev['precision']!r}"
            )
        if ev.get("root"):
            check_folder(ev["root"], "evaluate.root")


def print_config(recipe: dict[str, Any]) -> None:
    """Print the resolved recipe (YAML, every default included)."""
    sys.stdout.write(recipe["_yaml"])
