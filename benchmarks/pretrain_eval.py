"""Equal-budget pretraining, then kNN / linear probe / fine-tuning against a scratch baseline.

For each variant (MAE, ``configs/pretrain/mae_vit_tiny.yaml``; SelectiveMAE with the
``energy`` score, ``configs/pretrain/selective_mae_vit_tiny.yaml``; SelectiveMAE with the
released ``official`` score and sampling), the script measures the seconds per training
step with a short calibration run (3 epochs of ``--calibration-steps`` steps, timed after the
first), sets the number of epochs so that the full schedule (warmup, cosine, PSTS curriculum)
fits the same wall-clock budget, pretrains (:func:`rsfm.engine.run.pretrain`) on the
non-held-out part of the data (the recipe's ``data.test_fraction``), exports the encoder and
evaluates it (:func:`rsfm.engine.evaluate.evaluate`: kNN, linear probe, fine-tuning) on the
stratified held-out split it never saw. The scratch baseline fine-tunes a randomly
initialised ViT of the same shape with the same fine-tuning budget; a random-init encoder
gives the kNN and linear-probe floor. Scores are overall accuracy (OA) on the held-out split,
in percent; gains over scratch in percentage points; throughput in images/s. One table, one
JSON file (``<out>/results.json``).

    python benchmarks/pretrain_eval.py --budget-min 8           # CPU
    python benchmarks/pretrain_eval.py --budget-min 2 --num-workers 12 --finetune-epochs 30   # GPU
    python benchmarks/pretrain_eval.py --budget-min 0.05 --calibration-steps 2 --batch-size 8 \\
        --img-size 64 --finetune-epochs 1 --variants selective_mae,scratch --data <small class folder>   # smoke
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path
from typing import Any

import lightning as L

from rsfm.engine.config import load_recipe
from rsfm.engine.evaluate import evaluate
from rsfm.engine.run import build_data, pretrain

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO / ".." / "shared" / "datasets" / "aid"
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "mae": ("mae_vit_tiny.yaml", []),
    "selective_mae": ("selective_mae_vit_tiny.yaml", []),
    "selective_mae_official": (
        "selective_mae_vit_tiny.yaml",
        ["model.hog_score=official", "model.seed_selection=sample", "model.target_selection=sample"],
    ),
}


class StepTimer(L.Callback):
    """Wall time of training steps and of whole epochs, after a warm-up epoch."""

    def __init__(self) -> None:
        self.step_times: list[float] = []
        self.epoch_times: list[float] = []
        self._t_batch = self._t_epoch = 0.0

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._t_epoch = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if trainer.current_epoch > 0:
            self.epoch_times.append(time.perf_counter() - self._t_epoch)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._t_batch = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.current_epoch > 0 and batch_idx > 0:
            self.step_times.append(time.perf_counter() - self._t_batch)

    def epoch_seconds(self, steps_per_epoch: int, calibration_steps: int) -> float:
        """Predicted wall time of a full epoch: per-step time × steps + per-epoch overhead."""
        step = statistics.median(self.step_times)
        overhead = max(0.0, statistics.median(self.epoch_times) - calibration_steps * step)
        return overhead + steps_per_epoch * step


def recipe(variant: str, args: argparse.Namespace, out: Path, *extra: str) -> dict[str, Any]:
    """The variant's checked recipe with this benchmark's data, sizes and output folder."""
    name, overrides = VARIANTS[variant]
    return load_recipe(
        "pretrain",
        REPO / "configs" / "pretrain" / name,
        [
            f"data.root={args.data}",
            f"output_dir={out}",
            f"run_name={variant}",
            "resume=null",
            f"data.batch_size={args.batch_size}",
            f"data.num_workers={args.num_workers}",
            f"data.img_size={args.img_size}",
            f"model.patch_size={args.patch_size}",
            f"model.size={args.size}",
            "evaluate.enabled=false",
            "trainer.enable_progress_bar=false",
            "trainer.log_every_n_steps=20",
            f"seed={args.seed}",
            *overrides,
            *extra,
        ],
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--out", default=str(REPO / "runs" / "bench_pretrain_eval"))
    p.add_argument(
        "--variants",
        default=",".join([*VARIANTS, "scratch"]),
        help="comma list of pretraining variants and 'scratch' (the baselines)",
    )
    p.add_argument("--budget-min", type=float, default=8.0, help="pretraining wall-clock budget per variant")
    p.add_argument("--calibration-steps", type=int, default=8, help="steps per calibration epoch (3 epochs)")
    p.add_argument("--size", default="tiny")
    p.add_argument("--img-size", type=int, default=112)
    p.add_argument("--patch-size", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--num-workers", type=int, default=1)
    p.add_argument("--finetune-epochs", type=int, default=3)
    p.add_argument("--finetune-batch-size", type=int, default=64)
    p.add_argument("--finetune-max-time", default=None, help="cap per fine-tuning run, DD:HH:MM:SS")
    p.add_argument("--eval-workers", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    out = Path(args.out)
    eval_workers = args.eval_workers if args.eval_workers is not None else args.num_workers
    budget_s = args.budget_min * 60
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    results: dict[str, Any] = {"args": vars(args), "variants": {}}
    unknown = sorted(set(variants) - {*VARIANTS, "scratch"})
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; expected some of {[*VARIANTS, 'scratch']}")
    # the recipes' data split and normalisation (every variant's recipe shares them)
    stats = recipe(next((v for v in variants if v != "scratch"), "selective_mae"), args, out)["data"]["init_args"]
    holdout = stats["test_fraction"]

    for variant in [v for v in variants if v != "scratch"]:
        # 1) seconds per step and per-epoch overhead, measured on this machine now
        timer = StepTimer()
        pretrain(
            recipe(
                variant,
                args,
                out / "calibration",
                "trainer.max_epochs=3",
                f"trainer.limit_train_batches={args.calibration_steps}",
                "viz.num_images=0",
                "checkpoint.every_n_epochs=1000",
            ),
            callbacks=[timer],
        )
        cfg = recipe(variant, args, out, "trainer.max_epochs=1")
        dm = build_data(cfg)
        dm.setup("fit")
        steps_per_epoch = len(dm.train_dataloader())
        epoch_s = timer.epoch_seconds(steps_per_epoch, args.calibration_steps)
        sec_per_step = statistics.median(timer.step_times)
        epochs = max(1, math.floor(budget_s / epoch_s))
        print(
            f"[{variant}] {sec_per_step:.3f} s/step, {epoch_s:.1f} s/epoch of {steps_per_epoch} steps -> "
            f"{epochs} epochs in {args.budget_min:g} min"
        )
        # 2) pretrain with the whole schedule inside the budget (max_time only as a safety cap)
        cap = time.strftime("%H:%M:%S", time.gmtime(budget_s * 1.5))
        cfg = recipe(
            variant,
            args,
            out,
            f"trainer.max_epochs={epochs}",
            f"trainer.max_time=00:{cap}",
            f"checkpoint.every_n_epochs={epochs}",
            f"viz.every_n_epochs={epochs}",
        )
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
            num_workers=eval_workers,
            finetune_epochs=args.finetune_epochs,
            finetune_max_time=args.finetune_max_time,
            finetune_batch_size=args.finetune_batch_size,
            seed=args.seed,
            verbose=True,
        )
        results["variants"][variant] = {
            "epochs": epochs,
            "sec_per_step": sec_per_step,
            "pretrain_wall_s": wall,
            "images_per_s": args.batch_size / sec_per_step,
            "sec_per_epoch": epoch_s,
            "OA": {k: v["OA"] for k, v in metrics["protocols"].items()},
        }
        (out / "results.json").write_text(json.dumps(results, indent=2))

    if "scratch" in variants:
        # Baselines: random-init features (kNN/linear) and fine-tuning from scratch, same budget.
        base = evaluate(
            None,
            args.data,
            ("knn", "linear", "scratch"),
            out_dir=str(out / "scratch" / "eval"),
            img_size=args.img_size,
            patch_size=args.patch_size,
            scratch_size=args.size,
            mean=stats["mean"],
            std=stats["std"],
            test_fraction=holdout,
            split_seed=stats["split_seed"],
            num_workers=eval_workers,
            finetune_epochs=args.finetune_epochs,
            finetune_max_time=args.finetune_max_time,
            finetune_batch_size=args.finetune_batch_size,
            seed=args.seed,
        )
        results["scratch"] = {
            "OA": {("finetune" if k == "scratch" else k): v["OA"] for k, v in base["protocols"].items()},
            "n_heldout": base["data"]["n_heldout"],
        }
        (out / "results.json").write_text(json.dumps(results, indent=2))

    print(
        f"\nViT-{args.size}, {args.img_size} px, patch {args.patch_size}, batch {args.batch_size}; "
        f"pretraining budget {args.budget_min:g} min each; fine-tuning {args.finetune_epochs} epochs"
        + (f" (cap {args.finetune_max_time})" if args.finetune_max_time else "")
        + f"; held-out split of {args.data} ({holdout:.0%}); OA in percent"
    )
    print(
        f"{'encoder':<24} {'epochs':>6} {'wall min':>9} {'img/s':>8} {'kNN OA %':>8} {'linear OA %':>11} "
        f"{'fine-tune OA %':>14}"
    )
    for v, r in results["variants"].items():
        oa = r["OA"]
        print(
            f"{v:<24} {r['epochs']:>6} {r['pretrain_wall_s'] / 60:>9.2f} {r['images_per_s']:>8.1f} "
            f"{oa['knn']:>8.2f} {oa['linear']:>11.2f} "
            f"{oa['finetune']:>14.2f}"
        )
    if "scratch" in results:
        oa = results["scratch"]["OA"]
        print(
            f"{'scratch (random init)':<24} {'-':>6} {'-':>9} {'-':>8} {oa['knn']:>8.2f} {oa['linear']:>11.2f} "
            f"{oa['finetune']:>14.2f}"
        )
        for v, r in results["variants"].items():
            print(f"fine-tune OA gain of {v} over scratch: {r['OA']['finetune'] - oa['finetune']:+.2f} points")


if __name__ == "__main__":
    main()
