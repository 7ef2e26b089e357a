"""The ``rsfm`` command.

rsfm pretrain --config configs/pretrain/selective_mae_vit_tiny.yaml [key=value ...]
rsfm evaluate --encoder runs/x/encoder.safetensors --data ../shared/datasets/aid
rsfm export --checkpoint runs/x/checkpoints/last.ckpt --out encoder.safetensors
rsfm stats <folder>
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

__all__ = ["main"]

DATA_HINT = (
    "point data.root at a folder of images (sub-folders = classes for evaluation), e.g. "
    "`rsfm pretrain --config ... data.root=/path/to/images`, or download a public set with torchgeo "
    'where there is internet (`pip install torchgeo`, then `python -c "from torchgeo.datasets import '
    "UCMerced; UCMerced('data/ucmerced', download=True)\"` and "
    "data.root=data/ucmerced/UCMerced_LandUse/Images)"
)


def _pretrain(args: argparse.Namespace, rest: list[str]) -> int:
    from omegaconf import OmegaConf

    from rsfm.engine.config import load_config

    cfg = load_config(args.config, rest)
    if args.print_config:
        print(OmegaConf.to_yaml(cfg))
        return 0
    root = Path(cfg.data.root)
    if not root.is_dir():
        print(f"rsfm: data folder not found: {root}; {DATA_HINT}", file=sys.stderr)
        return 2
    from rsfm.engine.pretrain import run_pretrain

    result = run_pretrain(cfg)
    if result.get("encoder"):
        print(f"run folder: {result['run_dir']}")
    return 0


def _evaluate(args: argparse.Namespace, rest: list[str]) -> int:
    if rest:
        raise SystemExit(f"rsfm evaluate: unexpected arguments {rest}")
    from rsfm.eval.run import evaluate

    if not Path(args.data).is_dir():
        print(f"rsfm: data folder not found: {args.data}; {DATA_HINT}", file=sys.stderr)
        return 2
    evaluate(
        encoder_path=args.encoder,
        data_root=args.data,
        protocols=tuple(p.strip() for p in args.protocols.split(",") if p.strip()),
        out_dir=args.out,
        img_size=args.img_size,
        val_fraction=args.val_fraction,
        split_seed=args.split_seed,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        k=args.k,
        temperature=args.temperature,
        finetune_epochs=args.finetune_epochs,
        finetune_max_time=args.finetune_max_time,
        scratch_size=args.scratch_size,
        seed=args.seed,
    )
    return 0


def _export(args: argparse.Namespace, rest: list[str]) -> int:
    if rest:
        raise SystemExit(f"rsfm export: unexpected arguments {rest}")
    from rsfm.engine.pretrain import export_from_checkpoint

    print(f"encoder exported to {export_from_checkpoint(args.checkpoint, args.out)}")
    return 0


def _stats(args: argparse.Namespace, rest: list[str]) -> int:
    if rest:
        raise SystemExit(f"rsfm stats: unexpected arguments {rest}")
    from rsfm.data.stats import compute_mean_std, format_stats

    mean, std = compute_mean_std(args.folder, max_images=args.max_images, seed=args.seed)
    print(format_stats(mean, std))
    return 0


def _finetune(args: argparse.Namespace, rest: list[str]) -> int:
    from rsfm.tasks.runner import finetune, load_task_config

    result = finetune(load_task_config(args.config, rest))
    print(f"test metrics: {json.dumps(result['metrics'], indent=1)}\nrun folder: {result['run_dir']}")
    return 0


def _test(args: argparse.Namespace, rest: list[str]) -> int:
    from rsfm.tasks.runner import load_task_config, test

    result = test(load_task_config(args.config, rest), args.checkpoint)
    print(f"test metrics: {json.dumps(result['metrics'], indent=1)}")
    return 0


def _predict(args: argparse.Namespace, rest: list[str]) -> int:
    from rsfm.tasks.runner import load_task_config, predict

    out = predict(load_task_config(args.config, rest), args.checkpoint, args.input, args.output)
    print(f"prediction written to {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``rsfm`` command."""
    p = argparse.ArgumentParser(prog="rsfm", description="Remote-sensing foundation models")
    sub = p.add_subparsers(dest="command", required=True)

    pt = sub.add_parser(
        "pretrain",
        help="pretrain an encoder from a YAML recipe",
        description="Pretrain, export the encoder and evaluate it. Any recipe value can be "
        "overridden as section.key=value (e.g. trainer.max_epochs=5 data.root=/data).",
    )
    pt.add_argument(
        "--config", "-c", required=True, help="YAML recipe, e.g. configs/pretrain/selective_mae_vit_tiny.yaml"
    )
    pt.add_argument("--print-config", action="store_true", help="print the resolved recipe and exit")
    pt.set_defaults(func=_pretrain)

    ev = sub.add_parser("evaluate", help="kNN / linear probe / fine-tuning of an encoder on a labeled folder")
    ev.add_argument("--encoder", default=None, help="exported .safetensors encoder (omit for a scratch baseline)")
    ev.add_argument("--data", required=True, help="labeled image folder (class = sub-folder)")
    ev.add_argument("--protocols", default="knn,linear", help="comma list of knn, linear, finetune")
    ev.add_argument("--out", default="runs/eval", help="output folder for metrics.json and metrics.md")
    ev.add_argument("--img-size", type=int, default=None, help="input size (default: the encoder's)")
    ev.add_argument("--val-fraction", type=float, default=0.2, help="stratified held-out share")
    ev.add_argument("--split-seed", type=int, default=0)
    ev.add_argument("--batch-size", type=int, default=128)
    ev.add_argument("--num-workers", type=int, default=2)
    ev.add_argument("--k", type=int, default=20, help="kNN neighbours")
    ev.add_argument("--temperature", type=float, default=0.07, help="kNN vote temperature")
    ev.add_argument("--finetune-epochs", type=int, default=10)
    ev.add_argument("--finetune-max-time", default=None, help="wall-clock budget DD:HH:MM:SS")
    ev.add_argument("--scratch-size", default=None, help="ViT size for a scratch baseline (no --encoder)")
    ev.add_argument("--seed", type=int, default=0)
    ev.set_defaults(func=_evaluate)

    ex = sub.add_parser("export", help="export the encoder of a pretraining checkpoint to safetensors")
    ex.add_argument("--checkpoint", required=True)
    ex.add_argument("--out", required=True)
    ex.set_defaults(func=_export)

    ft = sub.add_parser(
        "finetune",
        help="fine-tune a downstream task from a YAML recipe, then test the best checkpoint",
        description="Downstream recipes: configs/finetune/<task>_<dataset>.yaml. Override any value as "
        "section.key=value, e.g. backbone.encoder=runs/x/encoder.safetensors trainer.max_epochs=5.",
    )
    ft.add_argument("--config", "-c", required=True)
    ft.set_defaults(func=_finetune)
    te = sub.add_parser("test", help="evaluate a fine-tuned checkpoint on the recipe's test split")
    te.add_argument("--config", "-c", required=True)
    te.add_argument("--checkpoint", required=True)
    te.set_defaults(func=_test)
    pr = sub.add_parser("predict", help="run a fine-tuned model on an image or GeoTIFF of any size")
    pr.add_argument("--config", "-c", required=True)
    pr.add_argument("--checkpoint", required=True)
    pr.add_argument("--input", required=True)
    pr.add_argument("--output", required=True)
    pr.set_defaults(func=_predict)

    st = sub.add_parser("stats", help="per-channel mean/std of a folder of images (for data.mean/std)")
    st.add_argument("folder")
    st.add_argument("--max-images", type=int, default=None)
    st.add_argument("--seed", type=int, default=0)
    st.set_defaults(func=_stats)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``rsfm`` command; returns the exit status."""
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    try:
        return int(args.func(args, rest) or 0)
    except (FileNotFoundError, ValueError) as err:
        if os.environ.get("RSFM_DEBUG"):
            raise
        print(f"rsfm {args.command}: error: {err} (set RSFM_DEBUG=1 for the traceback)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
