"""Fidelity at equal compute: MAE and SelectiveMAE's variants pretrained with the same FLOPs, several seeds.

Every variant starts from its checked recipe (``configs/pretrain/mae_vit_tiny.yaml`` or
``selective_mae_vit_tiny.yaml``) with this benchmark's data, sizes and seed, and differs only in
the settings its name says:

- ``mae``: MAE, 75 % random masking, full decoder;
- ``smae_topk_rsfm`` / ``smae_topk_released``: SelectiveMAE with the gradient-energy score and
  top-k seeds and targets (the paper), with rsfm's decoder or the released one;
- ``smae_sample_rsfm`` / ``smae_sample_released``: the same score, sampled seeds and targets;
- ``release_uniform``: the release as shipped: its (identically zero) score, hence uniform
  sampled seeds and targets, and its decoder.

**Equal compute** is equal training FLOPs: each variant's forward + backward FLOPs per step are
counted once with ``torch.utils.flop_counter`` on a real batch, and its epochs are the budget
(``--budget-mae-epochs`` epochs of MAE) over its FLOPs per epoch, rounded to whole epochs so
every schedule (warmup, cosine, PSTS curriculum) completes. Counting FLOPs, not seconds, keeps the
budget independent of a shared machine's load; the wall time of each run is reported beside it.

Each run pretrains (:func:`rsfm.engine.run.pretrain`) on the non-held-out part of the data,
exports the encoder and evaluates it (:func:`rsfm.engine.evaluate.evaluate`) on the stratified
held-out split it never saw: kNN and linear-probe overall accuracy (OA, percent). Runs go seed by
seed, all variants within a seed, so a change in the machine's load touches every variant alike.
The table gives each variant's mean over seeds ± the 95 % Student-t half-width, and each
SelectiveMAE variant's paired difference to MAE (same seed) with its interval. Results are saved
after every run in ``<out>/results.json``; running the same command again skips finished runs.

    python benchmarks/pretrain_eval.py --seeds 0 1 2                       # CPU, about 1 hour
    python benchmarks/pretrain_eval.py --seeds 0 1 2 --budget-mae-epochs 20 --num-workers 12 \\
        --batch-size 256 --img-size 224 --patch-size 16 --size base --protocols knn,linear,finetune  # GPU
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from rsfm.engine.config import load_recipe
from rsfm.engine.evaluate import evaluate
from rsfm.engine.run import build_data, pretrain

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO / ".." / "shared" / "datasets" / "aid"
SMAE = "selective_mae_vit_tiny.yaml"
ENERGY_TOPK = ["model.hog_score=energy", "model.seed_selection=topk", "model.target_selection=topk"]
ENERGY_SAMPLE = ["model.hog_score=energy", "model.seed_selection=sample", "model.target_selection=sample"]
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "mae": ("mae_vit_tiny.yaml", []),
    "smae_topk_rsfm": (SMAE, [*ENERGY_TOPK, "model.decoder=rsfm"]),
    "smae_topk_released": (SMAE, [*ENERGY_TOPK, "model.decoder=released"]),
    "smae_sample_rsfm": (SMAE, [*ENERGY_SAMPLE, "model.decoder=rsfm"]),
    "smae_sample_released": (SMAE, [*ENERGY_SAMPLE, "model.decoder=released"]),
    "release_uniform": (
        SMAE,
        ["model.hog_score=official", "model.seed_selection=sample", "model.target_selection=sample"]
        + ["model.decoder=released"],
    ),
}
# two-sided 97.5 % quantiles of Student's t for 1..9 degrees of freedom (then the normal's)
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def mean_ci(values: list[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95 % Student-t interval (0 for one value)."""
    n = len(values)
    if n < 2:
        return (values[0] if values else float("nan")), 0.0
    return statistics.mean(values), T975.get(n - 1, 1.96) * statistics.stdev(values) / n**0.5


def recipe(variant: str, args: argparse.Namespace, out: Path, seed: int, *extra: str) -> dict[str, Any]:
    """The variant's checked recipe with this benchmark's data, sizes, seed and output folder."""
    name, overrides = VARIANTS[variant]
    return load_recipe(
        "pretrain",
        REPO / "configs" / "pretrain" / name,
        [
            f"data.root={args.data}",
            f"output_dir={out}",
            f"run_name={variant}_seed{seed}",
            "resume=null",
            f"data.batch_size={args.batch_size}",
            f"data.num_workers={args.num_workers}",
            f"data.img_size={args.img_size}",
            f"model.patch_size={args.patch_size}",
            f"model.size={args.size}",
            "evaluate.enabled=false",
            "trainer.enable_progress_bar=false",
            "trainer.log_every_n_steps=20",
            "viz.num_images=0",
            f"seed={seed}",
            *overrides,
            *extra,
        ],
    )


def step_flops(cfg: dict[str, Any], batch: torch.Tensor) -> int:
    """Forward + backward FLOPs of one training step of the recipe's method on ``batch``.

    Counted by ``torch.utils.flop_counter`` (matrix products and convolutions, which dominate a
    ViT's cost; the selection's own HOG convolutions and PSTS similarities are counted too).
    """
    from torch.utils.flop_counter import FlopCounterMode

    from rsfm.utils.registry import METHODS

    model_cfg = cfg["model"]
    init = dict(model_cfg.get("init_args") or {})
    init.update(img_size=batch.shape[-1], in_chans=batch.shape[1])
    model = METHODS.get(str(model_cfg["class_path"]).rsplit(".", 1)[-1])(**init)
    with FlopCounterMode(display=False) as counter:
        out = model(batch, progress=0.5, generator=torch.Generator().manual_seed(0))
        out["loss"].backward()
    return int(counter.get_total_flops())


def real_batch(args: argparse.Namespace) -> torch.Tensor:
    """A batch of ``--batch-size`` real images from ``--data`` at ``--img-size`` (for FLOP counting)."""
    import numpy as np
    from PIL import Image

    files = sorted(Path(args.data).rglob("*.jpg"))
    files = files[:: max(1, len(files) // args.batch_size)][: args.batch_size]
    files = (files * (args.batch_size // max(1, len(files)) + 1))[: args.batch_size]
    arrs = [
        np.asarray(Image.open(f).convert("RGB").resize((args.img_size,) * 2), dtype=np.float32) / 255 for f in files
    ]
    return torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2).contiguous()


def class_subset(root: Path, per_class: int, dest: Path) -> Path:
    """A folder of symlinks to the first ``per_class`` images (by name) of each class folder of ``root``."""
    for cls in sorted(d for d in root.iterdir() if d.is_dir()):
        (dest / cls.name).mkdir(parents=True, exist_ok=True)
        for f in sorted(x for x in cls.iterdir() if x.is_file())[:per_class]:
            link = dest / cls.name / f.name
            if not link.exists():
                link.symlink_to(f.resolve())
    return dest


def run_one(variant: str, seed: int, epochs: int, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """Pretrain one variant with one seed for ``epochs``, then evaluate its export."""
    cfg = recipe(
        variant,
        args,
        out,
        seed,
        f"trainer.max_epochs={epochs}",
        f"checkpoint.every_n_epochs={epochs}",
        f"viz.every_n_epochs={epochs}",
    )
    t0 = time.perf_counter()
    res = pretrain(cfg)
    wall = time.perf_counter() - t0
    data_args = cfg["data"]["init_args"]
    protocols = tuple(p.strip() for p in args.protocols.split(",") if p.strip())
    metrics = evaluate(
        res["encoder"],
        args.data,
        protocols,
        out_dir=str(out / f"{variant}_seed{seed}" / "eval"),
        test_fraction=data_args["test_fraction"],
        split_seed=data_args["split_seed"],
        num_workers=args.eval_workers if args.eval_workers is not None else args.num_workers,
        finetune_epochs=args.finetune_epochs,
        finetune_batch_size=args.finetune_batch_size,
        seed=seed,
        verbose=False,
    )
    return {"epochs": epochs, "pretrain_wall_s": wall, "OA": {k: v["OA"] for k, v in metrics["protocols"].items()}}


def print_table(results: dict[str, Any], args: argparse.Namespace) -> None:
    """The per-variant table (mean ± 95 % interval over seeds) and the paired differences to MAE."""
    runs = results["runs"]
    protocols = [p.strip() for p in args.protocols.split(",") if p.strip()]
    print(
        f"\nViT-{args.size}/{args.patch_size} at {args.img_size} px, batch {args.batch_size}, equal training FLOPs "
        f"({args.budget_mae_epochs:g} MAE epochs); held-out split of {args.data}; OA in percent, mean ± 95 % "
        "t-interval over seeds"
    )
    head = ["variant", "GFLOP/step", "epochs", "TFLOP", "seeds", "img/s"] + [f"{p} OA" for p in protocols]
    head += [f"{p} − MAE" for p in protocols]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    mae = {int(s): r for s, r in runs.get("mae", {}).items()}
    for variant, by_seed in runs.items():
        if not by_seed:
            continue
        info = results["budget"][variant]
        seeds = sorted(int(s) for s in by_seed)
        rate = [
            info["steps_per_epoch"] * by_seed[str(s)]["epochs"] * args.batch_size / by_seed[str(s)]["pretrain_wall_s"]
            for s in seeds
        ]
        total = info["flops_per_step"] * info["steps_per_epoch"] * info["epochs"]
        row = [
            variant,
            f"{info['flops_per_step'] / 1e9:.1f}",
            str(info["epochs"]),
            f"{total / 1e12:.1f}",
            str(len(seeds)),
            f"{statistics.median(rate):.1f}",
        ]
        for p in protocols:
            m, h = mean_ci([by_seed[str(s)]["OA"][p] for s in seeds])
            row.append(f"{m:.2f} ± {h:.2f}")
        for p in protocols:
            paired = [by_seed[str(s)]["OA"][p] - mae[s]["OA"][p] for s in seeds if s in mae]
            if variant == "mae" or not paired:
                row.append("–")
            else:
                m, h = mean_ci(paired)
                row.append(f"{m:+.2f} ± {h:.2f}")
        print("| " + " | ".join(row) + " |")
    for mode in ("topk", "sample"):
        released, ours = runs.get(f"smae_{mode}_released", {}), runs.get(f"smae_{mode}_rsfm", {})
        seeds = sorted(set(released) & set(ours), key=int)
        for p in protocols if seeds else []:
            m, h = mean_ci([released[s]["OA"][p] - ours[s]["OA"][p] for s in seeds])
            print(f"decoder, {mode} selection, {p} OA: released − rsfm = {m:+.2f} ± {h:.2f} ({len(seeds)} seeds)")
    print("\nper seed:")
    for variant, by_seed in runs.items():
        cells = [
            f"seed {s}: " + ", ".join(f"{p} {by_seed[s]['OA'][p]:.2f}" for p in protocols)
            for s in sorted(by_seed, key=int)
        ]
        print(f"  {variant}: " + "; ".join(cells))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--out", default=str(REPO / "runs" / "bench_pretrain_eval"))
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma list of {list(VARIANTS)}")
    p.add_argument(
        "--per-class", type=int, default=None, help="use the first N images (by name) of each class of --data"
    )
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--budget-mae-epochs", type=float, default=1.0, help="training FLOPs of this many MAE epochs each")
    p.add_argument("--size", default="tiny")
    p.add_argument("--img-size", type=int, default=112)
    p.add_argument("--patch-size", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--num-workers", type=int, default=1)
    p.add_argument("--protocols", default="knn,linear", help="comma list of knn, linear, finetune")
    p.add_argument("--finetune-epochs", type=int, default=3)
    p.add_argument("--finetune-batch-size", type=int, default=64)
    p.add_argument("--eval-workers", type=int, default=None)
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.per_class:
        args.data = str(class_subset(Path(args.data), args.per_class, out / f"data_{args.per_class}_per_class"))
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; expected some of {list(VARIANTS)}")
    path = out / "results.json"
    results: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {}
    settings = {k: v for k, v in vars(args).items() if k not in ("seeds", "variants", "out", "eval_workers")}
    if results and results.get("settings") != settings:
        raise SystemExit(f"{path} holds runs with other settings {results.get('settings')}; use another --out")
    results.setdefault("settings", settings)
    results.setdefault("budget", {})
    results.setdefault("runs", {})

    # 1) the compute budget: FLOPs per step of every variant, steps per epoch of the data
    dm = build_data(recipe("mae", args, out, 0, "trainer.max_epochs=1"))
    dm.setup("fit")
    steps_per_epoch = len(dm.train_dataloader())
    batch = None
    for variant in ["mae", *variants]:
        if variant not in results["budget"]:
            batch = real_batch(args) if batch is None else batch
            flops = step_flops(recipe(variant, args, out, 0), batch)
            results["budget"][variant] = {"flops_per_step": flops, "steps_per_epoch": steps_per_epoch}
    budget = args.budget_mae_epochs * steps_per_epoch * results["budget"]["mae"]["flops_per_step"]
    for variant in variants:
        info = results["budget"][variant]
        info["epochs"] = max(1, round(budget / (info["flops_per_step"] * steps_per_epoch)))
        print(
            f"[{variant}] {info['flops_per_step'] / 1e9:.1f} GFLOP per step, {steps_per_epoch} steps per epoch "
            f"-> {info['epochs']} epochs"
        )
    path.write_text(json.dumps(results, indent=2))

    # 2) seed by seed, every variant: pretrain, export, evaluate
    for seed in args.seeds:
        for variant in variants:
            done = results["runs"].setdefault(variant, {})
            if str(seed) in done:
                continue
            print(f"[{variant}] seed {seed}: {results['budget'][variant]['epochs']} epochs", flush=True)
            done[str(seed)] = run_one(variant, seed, results["budget"][variant]["epochs"], args, out)
            print(f"[{variant}] seed {seed}: {done[str(seed)]}", flush=True)
            path.write_text(json.dumps(results, indent=2))
    print_table(results, args)


if __name__ == "__main__":
    main()
