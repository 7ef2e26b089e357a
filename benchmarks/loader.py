"""Loader headroom: images/s the pretraining data pipeline delivers, from a folder and from shards, per worker count.

The pipeline is ``rsfm pretrain``'s own: :class:`rsfm.data.pretrain.PretrainDataModule`'s
training loader (read or fetch, decode, MAE augmentation, collate, the resumable sampler),
over the same images as a folder (``data.root``) and as the sharded corpus ``rsfm curate``
wrote from it (``data.shards``). Folder and shard rounds alternate, so machine noise hits
both alike; each figure is the median over rounds of images/s after the first batch (worker
start-up is reported apart). Beside them: the training images/s of the model the recipe
trains (MAE and SelectiveMAE, same encoder, batch and input size, images already in memory;
see ``benchmarks/throughput.py``), so a recipe's ``num_workers`` can be read off: the
smallest count whose loader outpaces the model.

    python benchmarks/loader.py                                   # ViT-Tiny/8 at 112 px, batch 128 (the CPU recipes)
    python benchmarks/loader.py --workers 0 1 2 4 --images 3000
    python benchmarks/loader.py --images 300 --batches 3 --rounds 1 --workers 0 1   # smoke
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

from rsfm.curation.config import CurateInput, DedupConfig  # noqa: E402
from rsfm.curation.pipeline import curate  # noqa: E402
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


def loader_rate(source: dict[str, str], workers: int, args: argparse.Namespace) -> tuple[float, float]:
    """(images/s after the first batch, seconds to the first batch) of one training loader."""
    data = PretrainDataModule(
        **source, img_size=args.img_size, batch_size=args.batch_size, num_workers=workers, test_fraction=0.2, seed=0
    )
    data.setup("fit")
    t0 = time.perf_counter()
    it = iter(data.train_dataloader())
    next(it)
    first = time.perf_counter() - t0
    t1 = time.perf_counter()
    n = 0
    for _ in range(args.batches):
        try:
            n += next(it)["image"].shape[0]
        except StopIteration:
            break
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
    args = p.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        folder = subset(args.data, args.images, Path(tmp) / "images")
        corpus = args.corpus
        if corpus is None:
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
        sources = {"folder": {"root": str(folder)}, "shards": {"shards": str(corpus)}}
        rates: dict[tuple[str, int], list[float]] = {}
        firsts: dict[tuple[str, int], list[float]] = {}
        for _ in range(args.rounds):
            for workers in args.workers:
                for name, source in sources.items():
                    rate, first = loader_rate(source, workers, args)
                    rates.setdefault((name, workers), []).append(rate)
                    firsts.setdefault((name, workers), []).append(first)

        model = {}
        x = load_batch(args.data, args.batch_size, args.img_size)
        for method in ("mae", "selective_mae"):
            task, opt = build(method, args.size, args.img_size, args.patch_size, args.batch_size, "cpu")
            train_steps(task, opt, x, 1, False)  # warm-up
            model[method] = args.batch_size * args.model_steps / train_steps(task, opt, x, args.model_steps, False)

    print(
        f"\n## Loader vs model (CPU, {torch.get_num_threads()} threads; {args.images} AID images, "
        f"{args.img_size} px, batch {args.batch_size}; ViT-{args.size}/{args.patch_size})\n"
    )
    print("| workers | folder img/s | shards img/s | shards / folder | first batch s (folder / shards) |")
    print("|---:|---:|---:|---:|---|")
    for workers in args.workers:
        f = statistics.median(rates[("folder", workers)])
        s = statistics.median(rates[("shards", workers)])
        ff = statistics.median(firsts[("folder", workers)])
        fs = statistics.median(firsts[("shards", workers)])
        print(f"| {workers} | {f:.0f} | {s:.0f} | {s / f:.2f} | {ff:.2f} / {fs:.2f} |")
    print("\n| model | training img/s |")
    print("|---|---:|")
    for method, rate in model.items():
        print(f"| {method} | {rate:.0f} |")
    print(f"\ncommand: python benchmarks/loader.py {' '.join(sys.argv[1:])}".rstrip())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
