"""The ``rsfm`` command.

::

    rsfm pretrain --config configs/pretrain/selective_mae_vit_tiny.yaml [section.key=value ...]
    rsfm finetune --config configs/finetune/segmentation_dubai.yaml [section.key=value ...]
    rsfm test     --config <recipe> --checkpoint runs/x/checkpoints/best.ckpt
    rsfm predict  --config <recipe> --checkpoint <ckpt> --input scene.tif --output mask.tif
    rsfm evaluate --encoder runs/x/encoder.safetensors --data ../shared/datasets/aid
    rsfm export   --checkpoint runs/x/checkpoints/last.ckpt --out encoder.safetensors
    rsfm convert  --source mae --input mae_pretrain_vit_base.pth --output mae_vit_base.safetensors
    rsfm stats    <folder>
    rsfm samrs    --source hit_uav --root <folder> --out <folder> [--sam-checkpoint sam_vit_h.pth]
    rsfm curate   --config configs/curate/mixed_corpus.yaml [section.key=value ...]
    rsfm list     encoders|necks|heads|methods|datasets

Every command takes ``--print-config`` (print the resolved settings and exit). This module
is the one error boundary: a :class:`~rsfm.utils.errors.UserError` (and the
``FileNotFoundError``/``ValueError`` that data and model code raise on bad input) is printed
as one line naming the file, field or value, with exit status 2; the traceback is shown only
with ``RSFM_DEBUG=1``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

__all__ = ["build_parser", "main"]

DATA_HINT = (
    "point data.root at a folder of images, or download a public set with torchgeo where there is internet "
    "(`pip install torchgeo`; e.g. torchgeo.datasets.UCMerced('data/ucmerced', download=True))"
)


def _recipe(args: argparse.Namespace, rest: list[str]) -> dict[str, Any] | None:
    """Load and check the recipe; print it and return None under ``--print-config``."""
    from rsfm.engine.config import load_recipe, print_config

    recipe = load_recipe(args.command, args.config, rest)
    if args.print_config:
        print_config(recipe)
        return None
    return recipe


def _global_zero() -> bool:
    """Whether this process is rank 0 of the run that just ended (always, without DDP)."""
    from lightning.pytorch.utilities import rank_zero_only

    return int(getattr(rank_zero_only, "rank", 0) or 0) == 0


def _pretrain(args: argparse.Namespace, rest: list[str]) -> int:
    recipe = _recipe(args, rest)
    if recipe is None:
        return 0
    from rsfm.engine.run import pretrain

    result = pretrain(recipe)
    if result.get("encoder"):
        print(f"run folder: {result['run_dir']}")
    return 0


def _finetune(args: argparse.Namespace, rest: list[str]) -> int:
    recipe = _recipe(args, rest)
    if recipe is None:
        return 0
    from rsfm.engine.run import finetune

    result = finetune(recipe)
    if _global_zero():  # every rank holds the gathered scores; one prints them
        print(f"test metrics (percent): {json.dumps(result['metrics'], indent=1)}\nrun folder: {result['run_dir']}")
    return 0


def _test(args: argparse.Namespace, rest: list[str]) -> int:
    recipe = _recipe(args, rest)
    if recipe is None:
        return 0
    from rsfm.engine.run import test

    result = test(recipe, args.checkpoint)
    if _global_zero():
        print(f"test metrics (percent): {json.dumps(result['metrics'], indent=1)}")
    return 0


def _predict(args: argparse.Namespace, rest: list[str]) -> int:
    recipe = _recipe(args, rest)
    if recipe is None:
        return 0
    from rsfm.engine.run import predict

    inputs = [p.strip() for p in args.input.split(",") if p.strip()]
    out = predict(recipe, args.checkpoint, inputs, args.output, args.head)
    print(f"prediction written to {out}")
    return 0


def _curate(args: argparse.Namespace, rest: list[str]) -> int:
    recipe = _recipe(args, rest)
    if recipe is None:
        return 0
    from rsfm.curation.pipeline import curate_recipe

    result = curate_recipe(recipe)
    counts = ", ".join(f"{k} {v}" for k, v in result.excluded.items()) or "none"
    print(
        f"curated {result.files} file(s) in {result.seconds:.1f} s ({result.processed} processed now): "
        f"{result.kept} tile(s) kept; excluded rows: {counts}\ncorpus folder: {result.output} "
        f"(report: {result.output / 'report.md'})"
    )
    return 0


def _no_rest(command: str, rest: list[str]) -> None:
    if rest:
        from rsfm.utils.errors import ConfigError

        raise ConfigError(f"rsfm {command}: unexpected arguments {rest}")


def _print_options(args: argparse.Namespace) -> int:
    import yaml

    options = {k: v for k, v in vars(args).items() if k not in ("func", "command", "print_config")}
    sys.stdout.write(yaml.safe_dump(options, sort_keys=False))
    return 0


def _evaluate(args: argparse.Namespace, rest: list[str]) -> int:
    _no_rest("evaluate", rest)
    if args.print_config:
        return _print_options(args)
    from rsfm.data.base import check_folder
    from rsfm.engine.evaluate import evaluate

    check_folder(args.data, "--data")
    evaluate(
        encoder_path=args.encoder,
        data_root=args.data,
        protocols=[p.strip() for p in args.protocols.split(",") if p.strip()],
        out_dir=args.out,
        img_size=args.img_size,
        test_fraction=args.test_fraction,
        split_seed=args.split_seed,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        k=args.k,
        temperature=args.temperature,
        finetune_epochs=args.finetune_epochs,
        finetune_max_time=args.finetune_max_time,
        finetune_blr=args.finetune_blr,
        scratch_size=args.scratch_size,
        precision=args.precision,
        seed=args.seed,
    )
    return 0


def _export(args: argparse.Namespace, rest: list[str]) -> int:
    _no_rest("export", rest)
    if args.print_config:
        return _print_options(args)
    from rsfm.engine.run import export_checkpoint

    print(f"encoder exported to {export_checkpoint(args.checkpoint, args.out)}")
    return 0


def _floats(text: str | None, option: str) -> list[float] | None:
    if text is None:
        return None
    from rsfm.utils.errors import ConfigError

    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(
            f"{option}: expected comma-separated numbers such as 0.485,0.456,0.406, got {text!r}"
        ) from None


def _convert(args: argparse.Namespace, rest: list[str]) -> int:
    _no_rest("convert", rest)
    if args.print_config:
        return _print_options(args)
    from rsfm.models.convert import convert_checkpoint

    report = convert_checkpoint(
        args.input,
        args.output,
        source=args.source,
        img_size=args.img_size,
        in_chans=args.in_chans,
        mean=_floats(args.mean, "--mean"),
        std=_floats(args.std, "--std"),
        licence=args.licence,
    )
    print(report.summary())
    return 0


def _stats(args: argparse.Namespace, rest: list[str]) -> int:
    _no_rest("stats", rest)
    if args.print_config:
        return _print_options(args)
    from rsfm.data.base import check_folder
    from rsfm.data.io import RasterRule
    from rsfm.data.stats import compute_mean_std, format_stats
    from rsfm.utils.errors import ConfigError

    check_folder(args.folder, "folder")
    try:
        bands = tuple(int(b) for b in args.bands.split(",")) if args.bands else None
    except ValueError:
        raise ConfigError(f"--bands: expected 0-based band indices such as 3,2,1, got {args.bands!r}") from None
    try:
        scale = args.raster_scale if args.raster_scale == "auto" else float(args.raster_scale)
    except ValueError:
        raise ConfigError(f"--raster-scale: expected 'auto' or a number, got {args.raster_scale!r}") from None
    mean, std = compute_mean_std(
        args.folder, raster=RasterRule(bands=bands, scale=scale), max_images=args.max_images, seed=args.seed
    )
    print(format_stats(mean, std))
    return 0


def _split(args: argparse.Namespace, rest: list[str]) -> int:
    from rsfm.data.rotated.split import main as split_main

    return split_main([*args.args, *rest], prog="rsfm split")


def _merge(args: argparse.Namespace, rest: list[str]) -> int:
    _no_rest("merge", rest)
    if args.print_config:
        return _print_options(args)
    from rsfm.data.rotated.split import merge_task1

    s = merge_task1(args.src, args.dst, args.iou_threshold)
    print(
        f"{s['classes']} class file(s): {s['patch_detections']} patch detection(s) -> {s['detections']} "
        f"scene detection(s) in {args.dst}"
    )
    return 0


def _samrs(args: argparse.Namespace, rest: list[str]) -> int:
    _no_rest("samrs", rest)
    if args.print_config:
        return _print_options(args)
    from rsfm.data.base import check_folder
    from rsfm.data.samrs import build_samrs_from_layout
    from rsfm.utils.errors import ConfigError

    check_folder(args.root, "--root")
    if args.sam_checkpoint is None and args.sam_model != "vit_h":
        raise ConfigError("--sam-model needs --sam-checkpoint (the weights of that model)")
    m = build_samrs_from_layout(
        args.source,
        args.root,
        args.out,
        split=args.split,
        limit=args.limit,
        sam=args.sam_checkpoint,
        sam_model=args.sam_model,
        batch=args.batch,
        images=args.images,
        device=args.device,
    )
    c = m["counts"]
    print(
        f"{c['images']} image(s), {c['objects']} object(s), {c['instances']} instance mask(s) ({m['mask_mode']} masks) "
        f"in {args.out}; skipped: {c['skipped_no_boxes']} without boxes, {c['skipped_unreadable']} unreadable"
    )
    for path, reason in m["skipped"]:
        print(f"  skipped {path}: {reason}")
    return 0


def _list(args: argparse.Namespace, rest: list[str]) -> int:
    _no_rest("list", rest)
    if args.print_config:
        return _print_options(args)
    from rsfm.utils.registry import REGISTRIES

    kinds = [args.kind] if args.kind != "all" else list(REGISTRIES)
    for kind in kinds:
        rows = REGISTRIES[kind].describe()
        print(f"{kind}:")
        width = max((len(r[0]) for r in rows), default=0)
        for name, path, doc in rows:
            print(f"  {name:<{width}}  {doc}  [{path}]")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``rsfm`` command."""
    p = argparse.ArgumentParser(prog="rsfm", description="Remote-sensing foundation models", allow_abbrev=False)
    sub = p.add_subparsers(dest="command", required=True)

    def recipe_command(name: str, help: str, func: Any) -> argparse.ArgumentParser:
        sp = sub.add_parser(
            name,
            help=help,
            allow_abbrev=False,
            description=f"{help}. Any recipe value can be overridden as section.key=value "
            "(e.g. trainer.max_epochs=5 data.init_args.root=/data, or data.root=/data).",
        )
        sp.add_argument("--config", "-c", required=True, help="YAML recipe")
        sp.add_argument(
            "--print-config", "--print_config", action="store_true", help="print the resolved recipe and exit"
        )
        sp.set_defaults(func=func)
        return sp

    recipe_command("pretrain", "pretrain an encoder, export it and evaluate it", _pretrain)
    recipe_command("curate", "curate image folders into a deduplicated, sharded pretraining corpus", _curate)
    recipe_command("finetune", "fine-tune a downstream task, then test the best checkpoint", _finetune)
    te = recipe_command("test", "evaluate a fine-tuned checkpoint on the recipe's test split", _test)
    te.add_argument("--checkpoint", required=True)
    pr = recipe_command("predict", "run a fine-tuned model on an image or GeoTIFF of any size", _predict)
    pr.add_argument("--checkpoint", required=True, action=_Once)
    pr.add_argument("--input", required=True, action=_Once, help="image file; 'before,after' for change detection")
    pr.add_argument("--output", required=True, action=_Once, help="output file or folder")
    pr.add_argument("--head", default=None, help="head to predict with (default: the first evaluated one)")

    ev = sub.add_parser("evaluate", help="kNN / linear probe / fine-tuning of an encoder on a labeled folder")
    ev.add_argument("--encoder", default=None, help="exported .safetensors encoder (omit for a scratch baseline)")
    ev.add_argument("--data", required=True, help="labeled image folder (class = sub-folder)")
    ev.add_argument("--protocols", default="knn,linear", help="comma list of knn, linear, finetune, lpft, scratch")
    ev.add_argument("--out", default="runs/eval", help="output folder for metrics.json and metrics.md")
    ev.add_argument("--img-size", type=int, default=None, help="input size (default: the encoder's)")
    ev.add_argument("--test-fraction", type=float, default=0.2, help="stratified held-out share")
    ev.add_argument("--split-seed", type=int, default=0)
    ev.add_argument("--batch-size", type=int, default=128)
    ev.add_argument("--num-workers", type=int, default=2)
    ev.add_argument("--k", type=int, default=20, help="kNN neighbours")
    ev.add_argument("--temperature", type=float, default=0.07, help="kNN vote temperature")
    ev.add_argument("--finetune-epochs", type=int, default=10)
    ev.add_argument("--finetune-max-time", default=None, help="wall-clock budget DD:HH:MM:SS")
    ev.add_argument(
        "--finetune-blr", type=float, default=5e-4, help="base lr per 256 images of finetune, lpft and scratch"
    )
    ev.add_argument("--scratch-size", default=None, help="ViT size for a scratch baseline (no --encoder)")
    ev.add_argument(
        "--precision",
        default=None,
        choices=["32-true", "bf16-mixed", "16-mixed"],  # rsfm.engine.config.EVAL_PRECISIONS (which imports torch)
        help="arithmetic of features and fine-tuning (default: bf16-mixed on a GPU with bf16, else 32-true)",
    )
    ev.add_argument("--seed", type=int, default=0)
    ev.set_defaults(func=_evaluate)

    ex = sub.add_parser("export", help="export the encoder of a pretraining checkpoint to safetensors")
    ex.add_argument("--checkpoint", required=True)
    ex.add_argument("--out", required=True)
    ex.set_defaults(func=_export)

    # the sources of rsfm.models.convert.SOURCES, spelled out so that `rsfm --help` imports no torch
    sources = ("mae", "selectivemae", "mtp", "gersp", "timm", "torchgeo")
    cv = sub.add_parser(
        "convert",
        help="convert a released checkpoint (MAE, SelectiveMAE, MTP, GeRSP, timm, torchgeo) to an rsfm export",
        description="Map a foreign checkpoint's keys onto rsfm's encoder, resample its position embedding to "
        "--img-size, and write an rsfm export (safetensors); prints the keys used, dropped and missing.",
    )
    cv.add_argument("--source", default="auto", choices=["auto", *sources], help="who released it (auto: by its keys)")
    cv.add_argument("--input", required=True, help="the checkpoint (.pth, .pt, .bin, .safetensors)")
    cv.add_argument("--output", required=True, help="the rsfm export to write (.safetensors)")
    cv.add_argument("--img-size", type=int, default=None, help="input side in pixels (default: the checkpoint's)")
    cv.add_argument("--in-chans", type=int, default=None, help="bands (default: the checkpoint's; RGB adapts)")
    cv.add_argument(
        "--mean", default=None, help="per-band mean for inputs in [0, 1], comma list (default: the source's)"
    )
    cv.add_argument("--std", default=None, help="per-band std, comma list (default: the source's)")
    cv.add_argument(
        "--licence", default=None, help="licence of the weights (default: what the source's repository says)"
    )
    cv.set_defaults(func=_convert)

    st = sub.add_parser(
        "stats", help="per-channel mean/std of a folder of images (for data.mean/std; TIFF nodata pixels left out)"
    )
    st.add_argument("folder")
    st.add_argument("--max-images", type=int, default=None)
    st.add_argument("--bands", default=None, help="comma list of 0-based bands, as data.bands (default: RGB)")
    st.add_argument("--raster-scale", default="auto", help="'auto' or a divisor such as 10000, as data.raster_scale")
    st.add_argument("--seed", type=int, default=0)
    st.set_defaults(func=_stats)

    # the split command's options live with it (rsfm.data.rotated.split), which imports torch:
    # `rsfm split ...` passes its arguments through, so that `rsfm --help` stays light
    sp_split = sub.add_parser(
        "split", help="cut large scenes (DOTA layout) into overlapping patches (rsfm split --help)", add_help=False
    )
    sp_split.add_argument("args", nargs=argparse.REMAINDER)
    sp_split.set_defaults(func=_split)
    mg = sub.add_parser("merge", help="merge DOTA Task1 files of patches into Task1 files of their scenes")
    mg.add_argument("src", help="folder of the patches' Task1_<class>.txt files")
    mg.add_argument("dst", help="output folder")
    mg.add_argument("--iou-threshold", type=float, default=0.1, help="rotated NMS threshold (0.1)")
    mg.set_defaults(func=_merge)

    sm = sub.add_parser(
        "samrs",
        help="build a SAMRS-format multi-task set (semantic, instance, rotated labels) from a box dataset",
        description="Write images/, gray/ (semantic), instances.json (COCO RLE), rbbtxts/ (rotated boxes) and "
        "manifest.json for one split of a box layout; masks are the filled boxes, or SAM's with --sam-checkpoint.",
    )
    sm.add_argument("--source", required=True, help="box layout: hit_uav, dota, dior_r, fair1m, hrsc2016, dior, ...")
    sm.add_argument("--root", required=True, help="the dataset folder")
    sm.add_argument("--out", required=True, help="output folder")
    sm.add_argument("--split", default=None, help="split name in the layout (default: its training split)")
    sm.add_argument("--limit", type=int, default=None, help="only the first N images of the split")
    sm.add_argument("--sam-checkpoint", default=None, help="SAM weights (e.g. sam_vit_h_4b8939.pth); omit: box masks")
    sm.add_argument("--sam-model", default="vit_h", choices=["vit_h", "vit_l", "vit_b"], help="SAM encoder (vit_h)")
    sm.add_argument("--batch", type=int, default=20, help="boxes per SAM call (20)")
    sm.add_argument("--images", default="copy", choices=["copy", "symlink", "hardlink"], help="how images are written")
    sm.add_argument("--device", default=None, help="device of SAM (default: cuda when available)")
    sm.set_defaults(func=_samrs)

    ls = sub.add_parser("list", help="list the registered encoders, necks, heads, methods or datasets")
    ls.add_argument(
        "kind", nargs="?", default="all", choices=["all", "encoders", "necks", "heads", "methods", "datasets"]
    )
    ls.set_defaults(func=_list)

    for sp in (ev, ex, cv, st, mg, sm, ls):
        sp.add_argument(
            "--print-config", "--print_config", action="store_true", help="print the resolved options and exit"
        )
    return p


def _options_optional(parser: argparse.ArgumentParser) -> None:
    """Make every required option of the subcommands optional, except ``--config``."""
    for action in parser._actions:  # argparse keeps subcommands here; it has no public accessor
        for sub in (getattr(action, "choices", None) or {}).values():
            if isinstance(sub, argparse.ArgumentParser):
                for option in sub._actions:
                    if option.required and option.option_strings and "--config" not in option.option_strings:
                        option.required = False


class _Once(argparse.Action):
    """An option that may be given once: a second value is an error, not a silent replacement.

    (``rsfm predict --input a.tif --input b.tif`` predicted ``b.tif`` alone.)
    """

    def __call__(
        self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any, option: Any = None
    ) -> None:
        if getattr(namespace, self.dest, None) not in (None, self.default):
            hint = " (two images of a change pair: --input before,after)" if self.dest == "input" else ""
            parser.error(f"{option} given twice: {getattr(namespace, self.dest)} and {values}{hint}")
        setattr(namespace, self.dest, values)


def _user_errors() -> tuple[type[BaseException], ...]:
    """The errors the command line reports in one line: the user's input, not rsfm's code."""
    from rsfm.utils.errors import UserError

    errors: tuple[type[BaseException], ...] = (UserError, FileNotFoundError, NotADirectoryError, ValueError)
    io = sys.modules.get("rsfm.data.io")  # loaded by any command that reads images; not imported for this
    if io is not None:
        errors += (io.BadImageError,)  # an input image that cannot be read (e.g. of rsfm predict)
    return errors


def _worker_error(err: BaseException) -> tuple[str, type[BaseException] | None] | None:
    """``(message, original type)`` of an error a DataLoader worker raised, else None.

    PyTorch re-raises a worker's exception in the main process with the worker's traceback as
    its message (``Caught ValueError in DataLoader worker process 0. Original Traceback …``),
    or as a ``RuntimeError`` when the type cannot be rebuilt from one string; the original
    message is the text after the traceback's last frame, led by the type's name.
    """
    lines = str(err).rstrip().splitlines()
    if not lines or not (lines[0].startswith("Caught ") and "in DataLoader worker process" in lines[0]):
        return None
    frames = [i for i, line in enumerate(lines) if line.startswith(" ")]
    tail = lines[frames[-1] + 1 :] if frames else lines[-1:]
    if not tail:
        return None
    name, _, first = tail[0].partition(": ")
    module, _, attr = name.rpartition(".")
    found = getattr(sys.modules.get(module or "builtins"), attr, None)
    kind = found if isinstance(found, type) and issubclass(found, BaseException) else None
    return first.strip() or name, kind


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``rsfm`` command; returns the exit status (2 for a user error)."""
    parser = build_parser()
    if any(a in ("--print-config", "--print_config") for a in (sys.argv[1:] if argv is None else argv)):
        _options_optional(parser)  # printing the settings needs none of a command's inputs
    args, rest = parser.parse_known_args(argv)
    debug = bool(os.environ.get("RSFM_DEBUG"))
    try:
        try:
            return int(args.func(args, rest) or 0)
        except RuntimeError as err:  # a worker's error whose type could not be rebuilt
            worker = _worker_error(err)
            if worker is None or worker[1] is None or not issubclass(worker[1], _user_errors()):
                raise
            from rsfm.utils.errors import DataError

            raise DataError(worker[0]) from err
    except _user_errors() as err:  # evaluated when an error arrives, after the command's imports
        if debug:
            raise
        worker = _worker_error(err)  # a loader worker's: its own message, not PyTorch's wrapper
        message = worker[0] if worker else str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if "data.root" in message and "not found" in message:
            message = f"{message}; {DATA_HINT}"
        print(f"rsfm {args.command}: error: {message} (RSFM_DEBUG=1 shows the traceback)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"rsfm {args.command}: interrupted", file=sys.stderr)
        return 130
    except SystemExit as err:
        # Lightning answers Ctrl+C during fit/test with a graceful shutdown and exit(1)
        if isinstance(err.__context__, KeyboardInterrupt):
            print(f"rsfm {args.command}: interrupted", file=sys.stderr)
            return 130
        raise


if __name__ == "__main__":
    sys.exit(main())
