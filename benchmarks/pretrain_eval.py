"""Equal-budget pretraining, then kNN / linear probe / fine-tuning against a scratch baseline.

For each variant (MAE, SelectiveMAE with the ``energy`` score, SelectiveMAE with the
released ``official`` score and sampling), the script measures the seconds per training
step with a short calibration run, sets the number of epochs so that the full schedule
(warmup, cosine, PSTS curriculum) fits the same wall-clock budget, pretrains on the
non-held-out part of the data, exports the encoder and evaluates it on the stratified
held-out split it never saw. The scratch baseline fine-tunes a randomly initialised ViT of
the same shape with the same fine-tuning budget; a random-init encoder gives the kNN and
linear-probe floor. One table, one JSON file.

    python benchmarks/pretrain_eval.py --budget-min 8           # CPU
    python benchmarks/pretrain_eval.py --budget-min 2 --num-workers 12 --finetune-epochs 30   # GPU
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import lightning as L

from rsfm.engine.config import load_config
from rsfm.engine.pretrain import run_pretrain
from rsfm.eval.run import evaluate

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
    """Wall time of training steps after a warm-up."""

    def __init__(self, skip: int = 3) -> None:
        self.skip, self.t0, self.steps = skip, None, 0
        self.elapsed = 0.0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.skip:
            self.t0 = time.perf_counter()
        elif self.t0 is not None:
            self.steps = trainer.global_step - self.skip
            self.elapsed = time.perf_counter() - self.t0


def recipe(variant: str, args: argparse.Namespace, out: Path, *extra: str):
    name, overrides = VARIANTS[variant]
    return load_config(
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
    p.add_argument("--calibration-steps", type=int, default=12)
    p.add_argument("--size", default="tiny")
    p.add_argument("--img-size", type=int, default=112)
    p.add_argument("--patch-size", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--num-workers", type=int, default=1)
    p.add_argument("--finetune-epochs", type=int, default=3)
    p.add_argument("--finetune-max-time", default=None, help="cap per fine-tuning run, DD:HH:MM:SS")
    p.add_argument("--eval-workers", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    out = Path(args.out)
    eval_workers = args.eval_workers if args.eval_workers is not None else args.num_workers
    budget_s = args.budget_min * 60
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    results: dict[str, Any] = {"args": vars(args), "variants": {}}
    holdout = recipe(variants[0], args, out).data.holdout_fraction

    for variant in [v for v in variants if v != "scratch"]:
        # 1) seconds per step, measured on this machine now
        timer = StepTimer()
        run_pretrain(
            recipe(
                variant,
                args,
                out / "calibration",
                f"trainer.max_steps={timer.skip + args.calibration_steps}",
                "viz.num_images=0",
                "checkpoint.every_n_epochs=1000",
            ),
            callbacks=[timer],
        )
        sec_per_step = timer.elapsed / max(1, timer.steps)
        cfg = recipe(variant, args, out, "trainer.max_epochs=1")
        from rsfm.engine.pretrain import build_datamodule

        dm = build_datamodule(cfg)
        dm.setup("fit")
        steps_per_epoch = len(dm.train_dataloader())
        epochs = max(1, math.floor(budget_s / (sec_per_step * steps_per_epoch)))
        print(
            f"[{variant}] {sec_per_step:.3f} s/step x {steps_per_epoch} steps/epoch -> {epochs} epochs "
            f"in {args.budget_min:g} min"
        )
        # 2) pretrain with the whole schedule inside the budget (max_time only as a safety cap)
        cap = time.strftime("%H:%M:%S", time.gmtime(budget_s * 1.2))
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
        res = run_pretrain(cfg)
        wall = time.perf_counter() - t0
        # 3) evaluate on the held-out split the encoder never saw
        metrics = evaluate(
            res["encoder"],
            args.data,
            ("knn", "linear", "finetune"),
            out_dir=str(out / variant / "eval"),
            val_fraction=cfg.data.holdout_fraction,
            split_seed=cfg.data.split_seed,
            num_workers=eval_workers,
            finetune_epochs=args.finetune_epochs,
            finetune_max_time=args.finetune_max_time,
            seed=args.seed,
            verbose=True,
        )
        results["variants"][variant] = {
            "epochs": epochs,
            "sec_per_step": sec_per_step,
            "pretrain_wall_s": wall,
            "images_per_s": args.batch_size / sec_per_step,
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
            val_fraction=holdout,
            num_workers=eval_workers,
            finetune_epochs=args.finetune_epochs,
            finetune_max_time=args.finetune_max_time,
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
        + f"; held-out split of {args.data} ({holdout:.0%})"
    )
    print(f"{'encoder':<24} {'epochs':>6} {'img/s':>8} {'kNN OA':>8} {'linear OA':>10} {'fine-tune OA':>13}")
    for v, r in results["variants"].items():
        oa = r["OA"]
        print(
            f"{v:<24} {r['epochs']:>6} {r['images_per_s']:>8.1f} {oa['knn']:>8.2f} {oa['linear']:>10.2f} "
            f"{oa['finetune']:>13.2f}"
        )
    if "scratch" in results:
        oa = results["scratch"]["OA"]
        print(
            f"{'scratch (random init)':<24} {'-':>6} {'-':>8} {oa['knn']:>8.2f} {oa['linear']:>10.2f} "
            f"{oa['finetune']:>13.2f}"
        )
        for v, r in results["variants"].items():
            print(f"fine-tune OA gain of {v} over scratch: {r['OA']['finetune'] - oa['finetune']:+.2f} points")


if __name__ == "__main__":
    main()
