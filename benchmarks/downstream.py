"""Downstream benchmark: the same fine-tuning budget from scratch and from a pretrained encoder.

For each fine-tuning recipe (``--recipes``, default every ``configs/finetune/*.yaml``) the
script runs :func:`rsfm.engine.run.finetune` twice per seed, with identical settings
(architecture, crops, batches, epochs, hence optimiser steps, and input normalisation) except
the encoder's initial weights: random ("scratch") or an rsfm export ("pretrained", by default
the encoder of the default recipe ``configs/pretrain/selective_mae_vit_tiny.yaml``). Both runs
get the export's encoder shape in ``model.encoder.init_args`` (ViT: ``size``, ``patch_size``,
``img_size``; ResNet: ``name``, switching the recipe's ``class_path`` when the export is of
the other family); the pretrained run also sets ``model.encoder.init_args.weights``. The
export's normalisation statistics go into ``data.mean``/``data.std`` of both runs (when the
band counts match, as the task model then normalises with them), so only the weights differ.
Each run selects its checkpoint on the validation split by the recipe's monitor metric and
reports the test split.

A task is named by its recipe's file stem (``segmentation_dubai``). Its metrics are the test
metrics its runs return, in percent, the headline first: the run's monitor metric (the first
evaluated head's, e.g. ``mIoU`` for segmentation, ``mAP50`` for detection, ``F1`` for change
detection, ``OA`` for classification). The table gives, per task and metric, scratch and
pretrained (mean ± sample std over seeds), the difference in percentage points and the mean
wall time per run in seconds; it is printed and written with every run's metrics to
``<out>/summary.md`` and ``<out>/summary.json``.

Usage::

    rsfm pretrain --config configs/pretrain/selective_mae_vit_tiny.yaml    # the encoder
    python benchmarks/downstream.py --encoder runs/selective_mae_vit_tiny/encoder.safetensors
    # some recipes, GPU, longer budgets, three seeds, data elsewhere:
    python benchmarks/downstream.py --encoder enc.safetensors --seeds 0 1 2 \\
        --recipes configs/finetune/segmentation_*.yaml \\
        --set segmentation_dubai:trainer.max_epochs=30 --set segmentation_dubai:data.root=/data/dubai_seg
    # smoke: one batch of everything
    python benchmarks/downstream.py --encoder enc.safetensors --recipes configs/finetune/segmentation_dubai.yaml \\
        --set segmentation_dubai:trainer.max_epochs=1 --set segmentation_dubai:trainer.limit_train_batches=1 \\
        --set segmentation_dubai:trainer.limit_val_batches=1 --set segmentation_dubai:trainer.limit_test_batches=1

Scores are percentages (as every rsfm metric); differences are percentage points.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import lightning as L
import yaml

from rsfm.engine.config import load_recipe
from rsfm.engine.run import build_data, finetune
from rsfm.models.export import is_resnet, read_encoder_meta

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "configs" / "finetune"
VARIANTS = ("scratch", "pretrained")
#: encoder options that carry over when the encoder family switches (ViT ↔ ResNet)
SHARED_ENCODER_OPTIONS = ("in_chans", "drop_path_rate", "frozen", "out_indices")


class MonitorName(L.Callback):
    """Records the run's monitor metric (``val/mIoU``...) when fitting starts."""

    def __init__(self) -> None:
        self.monitor: str | None = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.monitor = getattr(pl_module, "monitor", None)


def parse_sets(items: list[str], tasks: list[str]) -> dict[str, list[str]]:
    """``stem:section.key=value`` items → ``{stem: [section.key=value, ...]}``.

    Raises:
        ValueError: on an item without ``stem:`` or naming a recipe that is not run.
    """
    out: dict[str, list[str]] = {}
    for item in items:
        task, sep, override = item.partition(":")
        if not sep or task not in tasks or "=" not in override:
            raise ValueError(
                f"--set {item!r}: expected <recipe stem>:<section.key>=<value> with a stem in {sorted(tasks)}"
            )
        out.setdefault(task, []).append(override)
    return out


def _value(v: Any) -> str:
    """A value as an override writes it: strings bare (quotes would stay in them), the rest as JSON."""
    return v if isinstance(v, str) else json.dumps(v)


def encoder_overrides(current: dict[str, Any], meta: dict[str, Any], encoder: Path, variant: str) -> list[str]:
    """Overrides giving the recipe's encoder the export's shape, and the export's weights if pretrained.

    Args:
        current: the recipe's resolved ``model.encoder`` (``class_path``, ``init_args``).
        meta: the export's metadata (:func:`rsfm.models.export.read_encoder_meta`).
        encoder: the export.
        variant: ``scratch`` (random weights) or ``pretrained``.
    """
    arch = str(meta.get("arch", ""))
    if is_resnet(arch):
        cls, shape = "ResNet", {"name": arch}
    else:
        cls = "ViTRVSA" if arch == "vit_rvsa" else "ViT"
        shape = {"size": meta["size"], "patch_size": meta["patch_size"], "img_size": meta["img_size"]}
        if arch == "vit_rvsa":
            shape.update(window_size=meta["window_size"], interval=meta["interval"])
    shape["weights"] = str(encoder) if variant == "pretrained" else None
    if current["class_path"].rpartition(".")[2] == cls:
        return [f"model.encoder.init_args.{k}={_value(v)}" for k, v in shape.items()]
    # the export is of another family: replace the encoder, keeping the options both take
    kept = {k: v for k, v in (current.get("init_args") or {}).items() if k in SHARED_ENCODER_OPTIONS}
    out = [f"model.encoder={json.dumps({'class_path': cls, 'init_args': {**kept, **shape}})}"]
    if cls == "ViTRVSA":
        out.append("model.neck=null")  # ViT+RVSA builds its own simple feature pyramid
    return out


def task_recipe(
    path: Path, variant: str, seed: int, args: argparse.Namespace, meta: dict[str, Any], extra: list[str]
) -> dict[str, Any]:
    """The checked recipe of one (task, variant, seed) run."""
    overrides = [
        f"seed={seed}",
        f"output_dir={args.out}",
        f"run_name={path.stem}/{variant}_seed{seed}",
        "resume=null",
        f"trainer.accelerator={args.accelerator}",
        f"trainer.enable_progress_bar={str(args.progress).lower()}",
        *extra,
    ]
    base = load_recipe("finetune", path, overrides)
    root = (base["data"].get("init_args") or {}).get("root")
    if root and not Path(root).is_absolute():  # recipes name data relative to the repository
        overrides.append(f"data.root={(REPO / root).resolve()}")
    overrides += encoder_overrides(base["model"]["encoder"], meta, args.encoder, variant)
    if meta.get("mean") and meta.get("std") and len(meta["mean"]) == build_data(base).info().num_channels:
        overrides += [f"data.mean={json.dumps(list(meta['mean']))}", f"data.std={json.dumps(list(meta['std']))}"]
    return load_recipe("finetune", path, overrides)


def run_one(
    path: Path, variant: str, seed: int, args: argparse.Namespace, meta: dict[str, Any], extra: list[str]
) -> dict[str, Any]:
    """Fine-tune and test one (task, variant, seed); returns its test metrics (percent), headline and wall time."""
    recipe = task_recipe(path, variant, seed, args, meta, extra)
    monitor = MonitorName()
    start = time.perf_counter()
    result = finetune(recipe, callbacks=[monitor])
    seconds = time.perf_counter() - start
    metrics = {k.removeprefix("test/"): float(v) for k, v in result["metrics"].items() if k.startswith("test/")}
    headline = (monitor.monitor or "").removeprefix("val/") or next(iter(metrics), "")
    if headline in metrics:
        metrics = {headline: metrics.pop(headline), **metrics}
    return {
        "task": path.stem,
        "recipe": str(path),
        "variant": variant,
        "seed": seed,
        "seconds": seconds,
        "headline": headline,
        "metrics": metrics,
        "run_dir": result["run_dir"],
    }


def _cell(values: list[float]) -> str:
    """Mean, with the sample standard deviation when there is more than one value."""
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def summarise(rows: list[dict[str, Any]]) -> str:
    """Markdown table: per task and metric (percent), scratch and pretrained (mean over seeds), Δ, time."""
    lines = [
        "| task | metric (%) | scratch | pretrained | Δ (points) | seeds | time scratch / pretrained |",
        "|---|---|---|---|---|---|---|",
    ]
    for task in dict.fromkeys(r["task"] for r in rows):
        by_variant = {v: [r for r in rows if r["task"] == task and r["variant"] == v] for v in VARIANTS}
        if not all(by_variant.values()):
            continue
        t = {v: statistics.mean(r["seconds"] for r in by_variant[v]) for v in VARIANTS}
        names = dict.fromkeys(name for r in rows if r["task"] == task for name in r["metrics"])
        for name in names:
            vals = {v: [r["metrics"][name] for r in by_variant[v] if name in r["metrics"]] for v in VARIANTS}
            if not all(vals.values()):
                continue
            mean = {v: statistics.mean(vals[v]) for v in VARIANTS}
            lines.append(
                f"| {task} | {name} | {_cell(vals['scratch'])} | {_cell(vals['pretrained'])} | "
                f"{mean['pretrained'] - mean['scratch']:+.2f} | {len(vals['scratch'])} | "
                f"{t['scratch']:.0f} s / {t['pretrained']:.0f} s |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; prints the table and writes ``summary.json`` and ``summary.md``."""
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], epilog="Scores are percentages; differences are percentage points."
    )
    p.add_argument("--encoder", type=Path, default=REPO / "runs" / "selective_mae_vit_tiny" / "encoder.safetensors")
    p.add_argument(
        "--recipes",
        nargs="+",
        type=Path,
        default=None,
        metavar="YAML",
        help="fine-tuning recipes (default: every configs/finetune/*.yaml whose data folder exists, e.g. not "
        "rotated_detection_dior_r without data/DIOR-R); a task is named by its file stem",
    )
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="STEM:KEY=VALUE",
        help="override for the recipe of that stem, e.g. segmentation_dubai:trainer.max_epochs=30",
    )
    p.add_argument("--accelerator", default="auto")
    p.add_argument("--out", "--output", dest="out", type=Path, default=REPO / "runs" / "bench_downstream")
    p.add_argument("--progress", action="store_true", help="show Lightning's progress bars")
    args = p.parse_args(argv)
    if args.recipes is None:
        args.recipes = []
        for path in sorted(RECIPES.glob("*.yaml")):
            root = ((yaml.safe_load(path.read_text()).get("data") or {}).get("init_args") or {}).get("root")
            if root and not (REPO / root).is_dir():
                print(f"skipping {path.stem}: its data folder {root} is not here (pass --recipes to insist)")
                continue
            args.recipes.append(path)
    if not args.encoder.is_file():
        p.error(f"encoder not found: {args.encoder} (run the default pretraining recipe or pass --encoder)")
    missing = [str(r) for r in args.recipes if not r.is_file()]
    if missing:
        p.error(f"recipes not found: {missing}")
    stems = [r.stem for r in args.recipes]
    if len(set(stems)) != len(stems):
        p.error(f"--recipes: two recipes share a file stem (a task's name): {stems}")
    args.encoder = args.encoder.resolve()
    args.out = args.out.resolve()
    try:
        sets = parse_sets(args.sets, stems)
    except ValueError as err:
        p.error(str(err))
    meta = read_encoder_meta(args.encoder)
    shape = meta["arch"] if is_resnet(str(meta.get("arch", ""))) else f"ViT-{meta['size']}/{meta['patch_size']}"
    print(f"encoder: {args.encoder} ({meta.get('method')}, {shape})")
    rows: list[dict[str, Any]] = []
    for path in args.recipes:
        for seed in args.seeds:
            for variant in VARIANTS:
                row = run_one(path, variant, seed, args, meta, sets.get(path.stem, []))
                rows.append(row)
                head = row["headline"]
                score = row["metrics"].get(head, float("nan"))
                print(
                    f"{row['task']:24s} {variant:10s} seed {seed}: {head} {score:.2f} % ({row['seconds']:.0f} s)",
                    flush=True,
                )
    table = summarise(rows)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(
        json.dumps(
            {
                "encoder": str(args.encoder),
                "encoder_meta": meta,
                "scale": "percent",
                "recipes": [str(r) for r in args.recipes],
                "overrides": sets,
                "runs": rows,
            },
            indent=2,
        )
    )
    (args.out / "summary.md").write_text(table + "\n")
    print(f"written: {args.out / 'summary.json'}, {args.out / 'summary.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
