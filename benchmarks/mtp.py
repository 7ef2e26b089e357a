"""MTP's claim, measured: fine-tune scratch, MIM-only and MIM→MTP encoders with equal budgets.

MTP (Wang et al., "MTP: Advancing Remote Sensing Foundation Model via Multi-Task
Pretraining", IEEE JSTARS 2024) claims that continuing an MIM encoder's pretraining with
supervised multi-task learning (semantic segmentation, instance segmentation, rotated
detection) improves its transfer to dense tasks. This script fine-tunes, for every recipe and
seed, three encoders of one architecture with identical settings (crops, batches, optimiser
steps, input normalisation) except the initial weights:

- ``scratch``: random initialisation;
- ``mim``: the MIM export MTP started from (``--mim``, by default the README's main job,
  SelectiveMAE ViT-Tiny);
- ``mtp``: the MTP export (``--mtp``, by default ``configs/pretrain/mtp_vit_tiny.yaml``'s).

Each run selects its checkpoint on the validation split by the recipe's monitor metric and
reports the test split (the runs are those of ``benchmarks/downstream.py``, whose overrides
this script reuses). The table gives per task and metric the mean over seeds with a 95 %
Student-t interval, and the differences MTP − MIM and MIM − scratch in points, beside the
ViT-B+RVSA figures of MTP's release for the matching task (MAE vs MAE+MTP; reference only: other
data, scale and architecture). It is printed and written to ``<out>/summary.md`` and
``<out>/summary.json`` with every run's metrics.

Usage::

    rsfm pretrain --config configs/pretrain/selective_mae_vit_tiny.yaml      # MIM
    rsfm pretrain --config configs/pretrain/mtp_vit_tiny.yaml                # MIM → MTP
    python benchmarks/mtp.py --seeds 0 1 2
    # shorter budgets on CPU: any recipe override per task stem
    python benchmarks/mtp.py --seeds 0 1 --set detection_nepu:trainer.max_epochs=4
    # the table of the finished runs under one or more output folders (runs split over processes)
    python benchmarks/mtp.py --collect runs/bench_mtp runs/bench_mtp_b

Scores are percentages (as every rsfm metric); differences are percentage points.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "configs" / "finetune"
#: the dense downstream tasks of the claim: segmentation, horizontal and rotated detection, change detection
DEFAULT_RECIPES = ("segmentation_dubai", "detection_nepu", "rotated_detection_dota", "change_detection_levir")
VARIANTS = ("scratch", "mim", "mtp")

#: ViT-B+RVSA, MAE vs MAE+MTP, from MTP's released fine-tuning logs and README (percent)
PAPER: dict[str, tuple[str, float, float]] = {
    "segmentation": ("LoveDA mIoU", 51.95, 52.39),
    "detection": ("DIOR AP50", 75.8, 79.0),
    "rotated_detection": ("DIOR-R mAP50", 68.06, 71.29),
    "change_detection": ("LEVIR-CD F1", 92.21, 92.22),
}


def _downstream() -> Any:
    """``benchmarks/downstream.py`` as a module (its recipe overrides and runner)."""
    spec = importlib.util.spec_from_file_location("rsfm_bench_downstream", Path(__file__).with_name("downstream.py"))
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules[spec.name] = module  # type: ignore[union-attr]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def t_interval(values: list[float]) -> float:
    """Half-width of the 95 % Student-t interval of the mean (0 for one value)."""
    n = len(values)
    if n < 2:
        return 0.0
    # two-sided 97.5 % quantiles of Student's t for 1..9 degrees of freedom, then the normal's
    quantile = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}
    return quantile.get(n - 1, 1.96) * statistics.stdev(values) / n**0.5


def _cell(values: list[float]) -> str:
    if not values:
        return "–"
    mean = statistics.mean(values)
    return f"{mean:.2f}" if len(values) == 1 else f"{mean:.2f} ± {t_interval(values):.2f}"


def paper_reference(task: str) -> str:
    """The release's MAE → MAE+MTP figure of the task's kind, or ``–``."""
    for kind in sorted(PAPER, key=len, reverse=True):
        if task.startswith(kind):
            name, mae, mtp = PAPER[kind]
            return f"{name}: {mae:.2f} → {mtp:.2f} ({mtp - mae:+.2f})"
    return "–"


def _diff(a: float, b: float) -> str:
    return "–" if a != a or b != b else f"{a - b:+.2f}"  # NaN: a variant has no run


def summarise(rows: list[dict[str, Any]]) -> str:
    """Markdown table: per task and metric, each variant's mean ± 95 % interval over seeds, the differences."""
    lines = [
        "| task | metric (%) | scratch | MIM | MIM→MTP | MTP − MIM | MIM − scratch | seeds | "
        "release, ViT-B+RVSA MAE → MAE+MTP |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for task in dict.fromkeys(r["task"] for r in rows):
        names = dict.fromkeys(name for r in rows if r["task"] == task for name in r["metrics"])
        for i, name in enumerate(names):
            vals = {
                v: [
                    r["metrics"][name] for r in rows if r["task"] == task and r["variant"] == v and name in r["metrics"]
                ]
                for v in VARIANTS
            }
            mean = {v: statistics.mean(x) if x else float("nan") for v, x in vals.items()}
            seeds = min(len(x) for x in vals.values())
            lines.append(
                f"| {task} | {name} | {_cell(vals['scratch'])} | {_cell(vals['mim'])} | {_cell(vals['mtp'])} | "
                f"{_diff(mean['mtp'], mean['mim'])} | {_diff(mean['mim'], mean['scratch'])} | {seeds} | "
                f"{paper_reference(task) if i == 0 else ''} |"
            )
    return "\n".join(lines)


def collect(folders: list[Path]) -> list[dict[str, Any]]:
    """The finished runs under benchmark output folders (``<task>/<variant>_seed<k>/metrics.json``).

    For tables of runs split over several processes or machines, or of a benchmark stopped
    before its end; the headline is each run's first test metric (the monitor's).
    """
    rows = []
    for folder in folders:
        for path in sorted(Path(folder).glob("*/*_seed*/metrics.json")):
            rows += collect_run(path)
    return rows


def collect_run(path: Path) -> list[dict[str, Any]]:
    """The row of one finished run's ``<task>/<variant>_seed<k>/metrics.json`` (none for other folders)."""
    variant, _, seed = path.parent.name.rpartition("_seed")
    if variant not in VARIANTS or not seed.isdigit():
        return []
    summary = json.loads(path.read_text())
    metrics = {k.removeprefix("test/"): float(v) for k, v in summary["metrics"].items() if k.startswith("test/")}
    headline = _monitor(summary.get("config") or {}) or next(iter(metrics), "")
    if headline in metrics:  # the headline first, as the runner orders it
        metrics = {headline: metrics.pop(headline), **metrics}
    row = {"task": path.parent.parent.name, "variant": variant, "seed": int(seed), "metrics": metrics}
    return [{**row, "headline": headline, "seconds": float("nan")}]


def _monitor(config: dict[str, Any]) -> str | None:
    """The metric a run's recipe selected checkpoints by (its first evaluated head's, by default)."""
    import importlib

    model = config.get("model") or {}
    if model.get("monitor"):
        return str(model["monitor"]).removeprefix("val/")
    for spec in (model.get("heads") or {}).values():
        if (spec.get("init_args") or {}).get("evaluate", True) is False:
            continue
        module, _, name = str(spec.get("class_path", "")).rpartition(".")
        try:
            return getattr(importlib.import_module(module), name).monitor
        except (ImportError, AttributeError, ValueError):
            return None
    return None


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; prints the table and writes ``summary.json`` and ``summary.md``."""
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["--collect"]:
        rows = collect([Path(a) for a in argv[1:]])
        seeds = sorted({r["seed"] for r in rows})
        print(f"{len(rows)} finished runs (seeds {seeds}) under {', '.join(argv[1:])}")
        print(summarise(rows))
        return 0
    ds = _downstream()
    from rsfm.models.export import read_encoder_meta

    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], epilog="Scores are percentages; differences are percentage points."
    )
    p.add_argument("--mim", type=Path, default=REPO / "runs" / "selective_mae_vit_tiny" / "encoder.safetensors")
    p.add_argument("--mtp", type=Path, default=REPO / "runs" / "mtp_vit_tiny" / "encoder.safetensors")
    p.add_argument(
        "--recipes", nargs="+", type=Path, default=[RECIPES / f"{s}.yaml" for s in DEFAULT_RECIPES], metavar="YAML"
    )
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="STEM:KEY=VALUE")
    p.add_argument("--accelerator", default="auto")
    p.add_argument("--out", "--output", dest="out", type=Path, default=REPO / "runs" / "bench_mtp")
    p.add_argument("--progress", action="store_true", help="show Lightning's progress bars")
    p.add_argument(
        "--skip-done", action="store_true", help="reuse runs whose metrics.json exists under --out (resume a benchmark)"
    )
    args = p.parse_args(argv)
    for flag, path in (("--mim", args.mim), ("--mtp", args.mtp)):
        if not path.is_file():
            p.error(f"{flag}: encoder not found: {path} (run its pretraining recipe first)")
    missing = [str(r) for r in args.recipes if not r.is_file()]
    if missing:
        p.error(f"recipes not found: {missing}")
    stems = [r.stem for r in args.recipes]
    try:
        sets = ds.parse_sets(args.sets, stems)
    except ValueError as err:
        p.error(str(err))
    args.mim, args.mtp, args.out = args.mim.resolve(), args.mtp.resolve(), args.out.resolve()
    metas = {"mim": read_encoder_meta(args.mim), "mtp": read_encoder_meta(args.mtp)}
    shape = {k: (m.get("arch"), m.get("size"), m.get("patch_size")) for k, m in metas.items()}
    if shape["mim"] != shape["mtp"]:
        p.error(f"the MIM and MTP encoders differ in architecture: {shape}; compare encoders of one shape")
    print(f"MIM: {args.mim} ({metas['mim'].get('method')}); MTP: {args.mtp} (from {metas['mtp'].get('init')})")
    rows: list[dict[str, Any]] = []
    for path in args.recipes:
        for seed in args.seeds:
            for variant in VARIANTS:
                # the downstream runner's "scratch"/"pretrained" overrides, with the variant's export
                args.encoder = args.mtp if variant == "mtp" else args.mim
                meta = metas["mtp" if variant == "mtp" else "mim"]
                kind = "scratch" if variant == "scratch" else "pretrained"
                name = f"{path.stem}/{variant}_seed{seed}"
                done = args.out / name / "metrics.json"
                if args.skip_done and done.is_file():  # finished by an earlier, interrupted invocation
                    print(f"{name}: finished earlier, reusing {done}", flush=True)
                    rows += collect_run(done)
                    continue
                extra = [*sets.get(path.stem, []), f"run_name={name}"]
                row = ds.run_one(path, kind, seed, args, meta, extra)
                row["variant"] = variant
                rows.append(row)
                head = row["headline"]
                score = row["metrics"].get(head, float("nan"))
                print(
                    f"{row['task']:24s} {variant:8s} seed {seed}: {head} {score:.2f} % ({row['seconds']:.0f} s)",
                    flush=True,
                )
    table = summarise(rows)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    summary = {
        "mim": str(args.mim),
        "mtp": str(args.mtp),
        "meta": metas,
        "scale": "percent",
        "recipes": [str(r) for r in args.recipes],
        "overrides": sets,
        "runs": rows,
    }
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    (args.out / "summary.md").write_text(table + "\n")
    print(f"written: {args.out / 'summary.json'}, {args.out / 'summary.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
