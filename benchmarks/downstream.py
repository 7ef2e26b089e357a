"""Downstream benchmark: the same fine-tuning budget from scratch and from a pretrained encoder.

For each task the script runs the task's recipe in ``configs/finetune/`` twice per seed, with
identical settings (architecture, crops, batches, epochs, hence optimiser steps, and input
normalisation) except the encoder's initial weights: random ("scratch") or an rsfm export
("pretrained", by default the encoder of the default recipe
``configs/pretrain/selective_mae_vit_tiny.yaml``). The ViT shape (size, patch size) and the
normalisation statistics of the scratch runs are read from the export, so only the weights
differ. Each run selects its checkpoint on the validation split and reports the test split;
the table puts the two side by side with the difference and the wall time.

Tasks (``--tasks``) and what they report:

- ``segmentation``: Dubai aerial set split by tile; mIoU, OA, mF1.
- ``detection``: NEPU-OWOD oil wells; mAP50, mAP50:95.
- ``change_detection``: LEVIR-CD; F1, IoU of the change class, OA.
- ``classification``: AID (test = the split pretraining held out); OA, mean class accuracy.

Usage::

    rsfm pretrain --config configs/pretrain/selective_mae_vit_tiny.yaml    # the encoder
    python benchmarks/downstream.py --encoder runs/selective_mae_vit_tiny/encoder.safetensors
    # GPU, longer budgets, three seeds, data elsewhere:
    python benchmarks/downstream.py --encoder enc.safetensors --seeds 0 1 2 \\
        --set segmentation:trainer.max_epochs=30 --set segmentation:data.root=/data/dubai_seg

Scores are fractions in [0, 1], printed as percentages.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

from rsfm.engine.export import read_encoder_meta
from rsfm.tasks.runner import finetune, load_task_config

REPO = Path(__file__).resolve().parents[1]
RECIPES = {
    "segmentation": "segmentation_dubai.yaml",
    "detection": "detection_nepu.yaml",
    "change_detection": "change_detection_levir.yaml",
    "classification": "classification_aid.yaml",
}
#: metrics shown per task (test split); the first one is the headline
METRICS = {
    "segmentation": ["mIoU", "OA", "mF1"],
    "detection": ["mAP50", "mAP50_95"],
    "change_detection": ["F1", "IoU", "OA"],
    "classification": ["OA", "mean_class_accuracy"],
}
VARIANTS = ("scratch", "pretrained")


def parse_sets(items: list[str]) -> dict[str, list[str]]:
    """``task:section.key=value`` items → ``{task: [section.key=value, ...]}``.

    Raises:
        ValueError: on an item without ``task:`` or with an unknown task.
    """
    out: dict[str, list[str]] = {}
    for item in items:
        task, sep, override = item.partition(":")
        if not sep or task not in RECIPES or "=" not in override:
            raise ValueError(f"--set {item!r}: expected <task>:<section.key>=<value> with a task in {sorted(RECIPES)}")
        out.setdefault(task, []).append(override)
    return out


def variant_overrides(meta: dict[str, Any], encoder: Path, variant: str) -> list[str]:
    """Overrides that make the two variants differ only by the encoder's initial weights."""
    common = [
        "backbone.arch=vit",
        f"backbone.size={meta['size']}",
        f"backbone.patch_size={meta['patch_size']}",
        f"data.mean={list(meta['mean'])}",
        f"data.std={list(meta['std'])}",
    ]
    weights = f"backbone.encoder={encoder}" if variant == "pretrained" else "backbone.encoder=null"
    return [*common, weights]


def run_one(task: str, variant: str, seed: int, args: argparse.Namespace, extra: list[str]) -> dict[str, Any]:
    """Fine-tune and test one (task, variant, seed); returns its test metrics and wall time."""
    meta = read_encoder_meta(args.encoder)
    overrides = [
        *variant_overrides(meta, args.encoder, variant),
        f"seed={seed}",
        f"output_dir={args.output}",
        f"run_name={task}/{variant}_seed{seed}",
        "resume=null",
        f"trainer.accelerator={args.accelerator}",
        f"trainer.enable_progress_bar={str(args.progress).lower()}",
        *extra,
    ]
    cfg = load_task_config(REPO / "configs" / "finetune" / RECIPES[task], overrides)
    if cfg["data"].get("root") and not Path(cfg["data"]["root"]).is_absolute():
        cfg["data"]["root"] = str((REPO / cfg["data"]["root"]).resolve())
    start = time.perf_counter()
    result = finetune(cfg)
    seconds = time.perf_counter() - start
    metrics = {k.removeprefix("test/"): float(v) for k, v in result["metrics"].items() if k.startswith("test/")}
    return {"task": task, "variant": variant, "seed": seed, "seconds": seconds, "metrics": metrics}


def _cell(values: list[float]) -> str:
    """Mean, with the sample standard deviation when there is more than one value."""
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def summarise(rows: list[dict[str, Any]]) -> str:
    """Markdown table: per task and metric, scratch and pretrained (mean over seeds), Δ, time."""
    lines = [
        "| task | metric | scratch | pretrained | Δ (points) | seeds | time scratch / pretrained |",
        "|---|---|---|---|---|---|---|",
    ]
    for task in dict.fromkeys(r["task"] for r in rows):
        by_variant = {v: [r for r in rows if r["task"] == task and r["variant"] == v] for v in VARIANTS}
        if not all(by_variant.values()):
            continue
        t = {v: statistics.mean(r["seconds"] for r in by_variant[v]) for v in VARIANTS}
        for name in METRICS[task]:
            vals = {v: [100 * r["metrics"][name] for r in by_variant[v] if name in r["metrics"]] for v in VARIANTS}
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
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--encoder", type=Path, default=REPO / "runs" / "selective_mae_vit_tiny" / "encoder.safetensors")
    p.add_argument("--tasks", nargs="+", default=["segmentation", "detection", "change_detection"], choices=RECIPES)
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="TASK:KEY=VALUE")
    p.add_argument("--accelerator", default="auto")
    p.add_argument("--output", type=Path, default=REPO / "runs" / "bench_downstream")
    p.add_argument("--progress", action="store_true", help="show Lightning's progress bars")
    args = p.parse_args(argv)
    if not args.encoder.is_file():
        p.error(f"encoder not found: {args.encoder} (run the default pretraining recipe or pass --encoder)")
    args.encoder = args.encoder.resolve()
    sets = parse_sets(args.sets)
    meta = read_encoder_meta(args.encoder)
    print(f"encoder: {args.encoder} ({meta.get('method')}, ViT-{meta['size']}/{meta['patch_size']})")
    rows: list[dict[str, Any]] = []
    for task in args.tasks:
        for seed in args.seeds:
            for variant in VARIANTS:
                row = run_one(task, variant, seed, args, sets.get(task, []))
                rows.append(row)
                head = METRICS[task][0]
                score = 100 * row["metrics"].get(head, float("nan"))
                print(f"{task:17s} {variant:10s} seed {seed}: {head} {score:.2f} ({row['seconds']:.0f} s)", flush=True)
    table = summarise(rows)
    print(table)
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "summary.json").write_text(
        json.dumps({"encoder": str(args.encoder), "encoder_meta": meta, "overrides": sets, "runs": rows}, indent=2)
    )
    (args.output / "summary.md").write_text(table + "\n")
    print(f"written: {args.output / 'summary.json'}, {args.output / 'summary.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
