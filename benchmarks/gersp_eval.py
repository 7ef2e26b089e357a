"""GeRSP against its ablations under equal wall-clock budgets, each evaluated on AID's held-out split.

Variants (Huang et al., TGRS 2024): ``gersp`` (``L_con + α·L_ce``), ``moco_only`` (α = 0: RS contrast
only) and ``natural_only`` (contrastive term off: natural-image supervision only); optionally
``released_teacher`` (the authors' never-updated teacher projector). For each, a short
calibration run measures the seconds per optimiser step on this machine now; the variant then
pretrains (:func:`rsfm.engine.run.pretrain`, recipe ``configs/pretrain/<--recipe>``) for as
many steps as fit the budget (the cosine-restart schedule laid over exactly those steps),
exports its student encoder and is scored (:func:`rsfm.engine.evaluate.evaluate`) by kNN,
linear probe and fine-tuning on the stratified held-out split of ``--data`` (the recipe's
``data.test_fraction``) that pretraining never saw. Scores are overall accuracy (OA) on that
split, in percent; throughput in RS/natural image pairs per second. One table, one JSON file
(``<out>/results.json``).

    python benchmarks/gersp_eval.py --budget-min 10                     # CPU, ViT-Tiny at 64 px
    python benchmarks/gersp_eval.py --budget-min 0.2 --finetune-epochs 1 --calibration-steps 3   # smoke
    python benchmarks/gersp_eval.py --recipe gersp_resnet50.yaml --img-size 224 --budget-min 20 \\
        --num-workers 12 --queue-size 65536 --finetune-epochs 30                # GPU, the paper's backbone
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import lightning as L

from rsfm.engine.config import load_recipe
from rsfm.engine.evaluate import evaluate
from rsfm.engine.run import pretrain

REPO = Path(__file__).resolve().parents[1]
DATASETS = REPO / ".." / "shared" / "datasets"
VARIANTS: dict[str, list[str]] = {
    "gersp": [],
    "moco_only": ["model.alpha=0"],
    "natural_only": ["model.contrastive=false"],
    "released_teacher": ["model.ema_projector=false"],
}


class StepSeconds(L.Callback):
    """Wall time of each optimiser step after the first ``skip`` (warm-up, loader start)."""

    def __init__(self, skip: int = 2) -> None:
        self.skip = skip
        self.times: list[float] = []
        self._t = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._t = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step > self.skip:
            self.times.append(time.perf_counter() - self._t)


def recipe(variant: str, args: argparse.Namespace, out: Path, *extra: str) -> dict[str, Any]:
    """The variant's checked recipe with this benchmark's data, sizes and output folder."""
    return load_recipe(
        "pretrain",
        REPO / "configs" / "pretrain" / args.recipe,
        [
            f"data.root={args.data}",
            f"data.natural_root={args.natural}",
            f"output_dir={out}",
            f"run_name={variant}",
            "resume=null",
            f"data.batch_size={args.batch_size}",
            f"data.num_workers={args.num_workers}",
            f"data.img_size={args.img_size}",
            f"model.queue_size={args.queue_size}",
            "trainer.limit_train_batches=null",
            "trainer.max_epochs=1000",
            "evaluate.enabled=false",
            "trainer.enable_progress_bar=false",
            "trainer.log_every_n_steps=10",
            f"seed={args.seed}",
            *VARIANTS[variant],
            *extra,
        ],
    )


def main() -> None:
    """Calibrate, pretrain, evaluate every variant; print the side-by-side table."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(DATASETS / "aid"), help="RS folder, also the labeled evaluation set")
    p.add_argument("--natural", default=str(DATASETS / "cifar10" / "train"), help="natural images <root>/<class>/")
    p.add_argument("--recipe", default="gersp_vit_tiny.yaml", help="a recipe under configs/pretrain")
    p.add_argument("--out", default=str(REPO / "runs" / "bench_gersp_eval"))
    p.add_argument("--variants", default="gersp,moco_only,natural_only", help=f"comma list of {list(VARIANTS)}")
    p.add_argument("--budget-min", type=float, default=10.0, help="pretraining wall-clock budget per variant")
    p.add_argument("--calibration-steps", type=int, default=6, help="steps of the calibration run")
    p.add_argument("--img-size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=32, help="pairs per step (RS images and natural images)")
    p.add_argument("--queue-size", type=int, default=4096)
    p.add_argument("--num-workers", type=int, default=1)
    p.add_argument("--finetune-epochs", type=int, default=3)
    p.add_argument("--finetune-batch-size", type=int, default=64)
    p.add_argument("--finetune-max-time", default=None, help="cap per fine-tuning run, DD:HH:MM:SS")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    out = Path(args.out)
    budget_s = args.budget_min * 60
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; expected some of {list(VARIANTS)}")
    results: dict[str, Any] = {"args": vars(args), "variants": {}}

    for variant in variants:
        # 1) seconds per optimiser step, measured on this machine now
        timer = StepSeconds()
        calib = recipe(
            variant,
            args,
            out / "calibration",
            f"trainer.max_steps={args.calibration_steps + timer.skip + 1}",
            "checkpoint.every_n_epochs=1000",
        )
        pretrain(calib, callbacks=[timer])
        sec_per_step = statistics.median(timer.times)
        steps = max(1, int(budget_s / sec_per_step))
        print(f"[{variant}] {sec_per_step:.3f} s/step -> {steps} steps in {args.budget_min:g} min", flush=True)
        # 2) pretrain with the whole schedule inside the budget (max_time only as a safety cap)
        cap = time.strftime("%H:%M:%S", time.gmtime(budget_s * 1.5 + 60))
        cfg = recipe(variant, args, out, f"trainer.max_steps={steps}", f"trainer.max_time=00:{cap}")
        t0 = time.perf_counter()
        res = pretrain(cfg)
        wall = time.perf_counter() - t0
        # 3) evaluate on the held-out split the encoder never saw
        data_args = cfg["data"]["init_args"]
        metrics = evaluate(
            res["encoder"],
            args.data,
            ("knn", "linear", "finetune"),
            out_dir=str(out / variant / "eval"),
            test_fraction=data_args["test_fraction"],
            split_seed=data_args["split_seed"],
            num_workers=args.num_workers,
            finetune_epochs=args.finetune_epochs,
            finetune_max_time=args.finetune_max_time,
            finetune_batch_size=args.finetune_batch_size,
            seed=args.seed,
        )
        results["variants"][variant] = {
            "steps": steps,
            "sec_per_step": sec_per_step,
            "pretrain_wall_s": wall,
            "pairs_per_s": args.batch_size / sec_per_step,
            "OA": {k: v["OA"] for k, v in metrics["protocols"].items()},
        }
        (out / "results.json").write_text(json.dumps(results, indent=2))

    print(
        f"\n{args.recipe}, {args.img_size} px, {args.batch_size} RS + {args.batch_size} natural images per step, "
        f"queue {args.queue_size}; pretraining budget {args.budget_min:g} min each; fine-tuning "
        f"{args.finetune_epochs} epochs; held-out split of {args.data}; OA in percent"
    )
    header = f"{'variant':<18} {'steps':>6} {'wall min':>9} {'pairs/s':>8} {'kNN OA %':>8} {'linear OA %':>11}"
    print(f"{header} {'fine-tune OA %':>14}")
    for v, r in results["variants"].items():
        oa = r["OA"]
        print(
            f"{v:<18} {r['steps']:>6} {r['pretrain_wall_s'] / 60:>9.2f} {r['pairs_per_s']:>8.1f} "
            f"{oa['knn']:>8.2f} {oa['linear']:>11.2f} {oa['finetune']:>14.2f}"
        )
    done = results["variants"]
    if "gersp" in done and len(done) > 1:
        for protocol in ("knn", "linear", "finetune"):
            best = max(done, key=lambda v: done[v]["OA"][protocol])
            print(f"best by {protocol}: {best}" + (" (the paper's ranking holds)" if best == "gersp" else ""))


if __name__ == "__main__":
    main()
