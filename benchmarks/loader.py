"""Loader headroom: images/s the pretraining data pipeline delivers, from a folder and from shards, per worker count.

The pipeline is ``rsfm pretrain``'s own: :class:`rsfm.data.pretrain.PretrainDataModule`'s
training loader (read or fetch, decode, MAE augmentation, collate, the resumable sampler),
over the same images as a folder (``data.root``) and as the sharded corpus ``rsfm curate``
wrote from it (``data.shards``). Folder and shard rounds alternate, so machine noise hits
both alike; each figure is the median over rounds of images/s after the first batch (worker
start-up is reported apart). Beside them: the training images/s of the model the recipe
trains (MAE and SelectiveMAE, same encoder, batch and input size, images already in memory;
see ``benchmarks/throughput.py``), so a recipe's ``num_workers`` can be read off: the
smallest count whose loader outpaces the model. Each loader runs with ``data.decode:
workers`` (decode and augment in the workers) and ``data.decode: device`` (JPEGs decoded,
every image cropped and resized, on ``--device`` when the batch reaches it; on a CPU that
work lands in the training process). The model rows train on ``--device`` too (bf16 autocast on
a GPU, as ``rsfm pretrain`` trains there).

    python benchmarks/loader.py                                   # ViT-Tiny/8 at 112 px, batch 128 (the CPU recipes)
    python benchmarks/loader.py --workers 0 1 2 4 --images 3000
    python benchmarks/loader.py --images 300 --batches 3 --rounds 1 --workers 0 1   # smoke
    python benchmarks/loader.py --decode workers device --device cuda               # data.decode on a GPU
    python benchmarks/loader.py --sources folder    # without shards (no curation dependencies needed)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from rsfm.data.pretrain import PretrainDataModule  # noqa: E402
from throughput import build, load_batch, train_steps  # noqa: E402

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "datasets" / "aid"


def subset(root: Path, n: int, out: Path) -> Path:
    """A folder of ``n`` AID images (symlinks), spread over every class."""
    files = sorted(root.glob("*/*.jpg"))
    picked = files[:: max(1, len(files) // n)][:n]
    for f in picked:
        (out / f.parent.name).mkdir(parents=True, exist_ok=True)
        (out / f.parent.name / f.name).symlink_to(f.resolve())
    return out


def loader_rate(source: dict[str, str], workers: int, decode: str, args: argparse.Namespace) -> tuple[float, float]:
    """(images/s after the first batch, seconds to the first batch) of one training loader.

    With ``decode='device'`` each batch is finished on ``args.device`` as the engine finishes it
    (:meth:`~rsfm.data.pretrain.PretrainDataModule.on_device`: JPEG decoding, crop, resize,
    flip), and the device is synchronised before the clock is read.
    """
    data = PretrainDataModule(
        **source,
        img_size=args.img_size,
        batch_size=args.batch_size,
        num_workers=workers,
        test_fraction=0.2,
        seed=0,
        decode=decode,
    )
    data.setup("fit")
    device = torch.device(args.device)

    def finished(batch: dict) -> int:
        batch = data.on_device(batch, device)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return int(batch["image"].shape[0])

    t0 = time.perf_counter()
    it = iter(data.train_dataloader())
    finished(next(it))
    first = time.perf_counter() - t0
    t1 = time.perf_counter()
    n = 0
    for _ in range(args.batches):
        try:
            n += finished(next(it))
        except StopIteration:
            break
    if n == 0:
        raise SystemExit(
            f"--images {args.images}: the training split holds one batch of {args.batch_size} at most, and the "
            "first batch is not timed; give more --images or a smaller --batch-size"
        )
    rate = n / (time.perf_counter() - t1)
    del it
    return rate, first


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=DATA, help="image folder (AID by default)")
    p.add_argument("--images", type=int, default=2000, help="images taken from it")
    p.add_argument("--corpus", type=Path, default=None, help="an existing corpus of the same images (else curated)")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--img-size", type=int, default=112)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--batches", type=int, default=8, help="timed batches per loader and round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--size", default="tiny")
    p.add_argument("--patch-size", type=int, default=8)
    p.add_argument("--model-steps", type=int, default=3)
    p.add_argument(
        "--decode",
        nargs="+",
        choices=["workers", "device"],
        default=["workers", "device"],
        help="where training images are decoded and augmented (data.decode)",
    )
    p.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="where --decode device decodes and augments, and where the model rows train",
    )
    p.add_argument(
        "--sources",
        nargs="+",
        choices=["folder", "shards"],
        default=["folder", "shards"],
        help="the folder of images and/or the sharded corpus curated from it",
    )
    args = p.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        folder = subset(args.data, args.images, Path(tmp) / "images")
        corpus = args.corpus
        if corpus is None and "shards" in args.sources:
            from rsfm.curation.config import CurateInput, DedupConfig
            from rsfm.curation.pipeline import curate

            corpus = Path(tmp) / "corpus"
            t = time.perf_counter()
            # no deduplication: the corpus holds exactly the folder's images, so both loaders read the same set
            result = curate(
                [CurateInput(root=str(folder))],
                corpus,
                dedup=DedupConfig(exact=False, perceptual=False, image_level=False),
                progress=lambda _: None,
            )
            print(f"curated {result.kept} images into shards in {time.perf_counter() - t:.1f} s")
        every = {"folder": {"root": str(folder)}, "shards": {"shards": str(corpus)}}
        sources = {name: every[name] for name in args.sources}
        variants = [(name, decode) for decode in args.decode for name in sources]
        rates: dict[tuple[str, str, int], list[float]] = {}
        firsts: dict[tuple[str, str, int], list[float]] = {}
        for _ in range(args.rounds):
            for workers in args.workers:
                for name, decode in variants:
                    rate, first = loader_rate(sources[name], workers, decode, args)
                    rates.setdefault((name, decode, workers), []).append(rate)
                    firsts.setdefault((name, decode, workers), []).append(first)

        model = {}
        x = load_batch(args.data, args.batch_size, args.img_size).to(args.device)
        amp = torch.device(args.device).type == "cuda"
        for method in ("mae", "selective_mae"):
            task, opt = build(method, args.size, args.img_size, args.patch_size, args.batch_size, args.device)
            train_steps(task, opt, x, 1, amp)  # warm-up
            model[method] = args.batch_size * args.model_steps / train_steps(task, opt, x, args.model_steps, amp)
            del task, opt

    where = f"CPU, {torch.get_num_threads()} threads" if args.device == "cpu" else f"model on {args.device}, bf16"
    print(
        f"\n## Loader vs model ({where}; {args.images} AID images, "
        f"{args.img_size} px, batch {args.batch_size}; ViT-{args.size}/{args.patch_size})\n"
    )
    labels = [name if decode == "workers" else f"{name}, decoded on {args.device}" for name, decode in variants]
    ratios = []
    if len(sources) == 2:
        ratios += [
            ("shards / folder" + (f" ({d})" if len(args.decode) > 1 else ""), ("shards", d), ("folder", d))
            for d in args.decode
        ]
    if len(args.decode) == 2:
        ratios += [(f"{args.device} / workers ({n})", (n, "device"), (n, "workers")) for n in sources]
    header = ["workers", *(f"{label} img/s" for label in labels), *(r[0] for r in ratios)]
    header.append("first batch s (" + " / ".join(labels) + ")")
    print("| " + " | ".join(header) + " |")
    print("|" + "---:|" * (len(header) - 1) + "---|")
    for workers in args.workers:
        med = {v: statistics.median(rates[(*v, workers)]) for v in variants}
        first = " / ".join(f"{statistics.median(firsts[(*v, workers)]):.2f}" for v in variants)
        cells = [str(workers), *(f"{med[v]:.0f}" for v in variants), *(f"{med[a] / med[b]:.2f}" for _, a, b in ratios)]
        print("| " + " | ".join([*cells, first]) + " |")
    print("\n| model | training img/s |")
    print("|---|---:|")
    for method, rate in model.items():
        print(f"| {method} | {rate:.0f} |")
    print(f"\ncommand: python benchmarks/loader.py {' '.join(sys.argv[1:])}".rstrip())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
