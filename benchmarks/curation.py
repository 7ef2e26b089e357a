"""Cost of curation: tiles/s per core for each stage, deduplication as the corpus grows, a 13M projection.

Three measurements, one run, on real images from ``../shared/datasets``:

1. **Stages, per core** (one process, one thread): over a mix of real files (AID scenes kept
   whole, LoveDA and DOTA images and the Landsat GeoTIFF sliced into ``--tile-size`` tiles),
   the time of each per-tile stage of ``rsfm curate``: decode (read + band rule), quality
   measures (statistics, HOG energy, entropy), hashes (SHA-256 + pHash + dHash), encoding of
   sliced tiles (PNG); and the whole per-file stage
   (:func:`rsfm.curation.pipeline.process_file`, which also writes its results).
2. **Deduplication as the corpus grows**: pHash/dHash of 1k, 10k and 100k synthetic-from-real
   tiles (random crops, flips and 90-degree rotations of AID images, resized to 128 px), then
   the two near-duplicate searches of :func:`rsfm.curation.dedup.hamming_pairs` side by side:
   exact (faiss brute-force binary index, the default up to 200k tiles) and IVF (the default
   above), with the IVF's recall of the exact pairs.
3. **Projection to OpticalRS-13M's 13.2 M images**: CPU-hours of the per-file stage at the
   measured per-core rate, and storage at the measured bytes per kept tile, for JPEG
   passthrough (whole files) and PNG tiles.

    python benchmarks/curation.py                       # all three, about 10 minutes on 2 cores
    python benchmarks/curation.py --sizes 1000 10000    # skip the 100k point
    python benchmarks/curation.py --files 20 --sizes 1000 --rounds 1   # smoke
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from rsfm.curation.config import DedupConfig, ShardConfig
from rsfm.curation.dedup import hamming_pairs, perceptual_hashes, pixel_sha256
from rsfm.curation.ingest import OpenedSource, SourceFile, Tiling, iter_tiles
from rsfm.curation.pipeline import CurationSettings, process_file
from rsfm.curation.rules import QualityThresholds, measure_tile
from rsfm.data.io import RasterRule
from rsfm.data.shards import encode_tile

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "datasets"
OPTICALRS_13M = 13_200_000


def sample_files(data: Path, n_aid: int) -> list[Path]:
    rng = random.Random(0)
    aid = sorted((data / "aid").glob("*/*.jpg"))
    files = rng.sample(aid, min(n_aid, len(aid)))
    files += sorted((data / "loveda" / "images_png").glob("*.png"))
    files += sorted((data / "dota" / "images").glob("*.png"))
    files += [data / "scenes" / "RGB.byte.tif"]
    return files


def time_stages(files: list[Path], tiling: Tiling, rounds: int) -> dict[str, dict[str, float]]:
    """Seconds per stage over all tiles of ``files`` (median of ``rounds``), and tile counts."""
    torch.set_num_threads(1)
    rule = RasterRule()
    per_round: dict[str, list[float]] = {k: [] for k in ("decode", "measure", "hash", "encode")}
    tiles = whole = 0
    for _ in range(rounds):
        acc = dict.fromkeys(per_round, 0.0)
        tiles = whole = 0
        for path in files:
            t = time.perf_counter()
            with OpenedSource(path, rule) as src:
                read = list(iter_tiles(src, tiling))
                size = (src.width, src.height)
            acc["decode"] += time.perf_counter() - t
            for (_, _, w, h), tile, mask in read:
                tiles += 1
                t = time.perf_counter()
                measure_tile(tile, mask)
                acc["measure"] += time.perf_counter() - t
                t = time.perf_counter()
                pixel_sha256(tile)
                perceptual_hashes(tile)
                acc["hash"] += time.perf_counter() - t
                if (w, h) == size and path.suffix.lower() != ".tif":
                    whole += 1  # stored as the file's own bytes: no encoding
                    continue
                t = time.perf_counter()
                encode_tile(tile, "png", png_level=ShardConfig.png_level)
                acc["encode"] += time.perf_counter() - t
        for k, v in acc.items():
            per_round[k].append(v)
    out = {k: {"seconds": statistics.median(v)} for k, v in per_round.items()}
    out["_counts"] = {"tiles": float(tiles), "whole": float(whole), "files": float(len(files))}
    return out


def time_process_file(files: list[Path], tiling: Tiling, rounds: int) -> tuple[float, int, dict[str, float]]:
    """Median seconds of :func:`process_file` over ``files``, tiles, and mean stored bytes by kind."""
    settings = CurationSettings(tiling, QualityThresholds(), ShardConfig(), DedupConfig())
    times = []
    stored: dict[str, list[int]] = {"passthrough": [], "png": []}
    tiles = 0
    import pickle

    for r in range(rounds):
        with tempfile.TemporaryDirectory() as work:
            t = time.perf_counter()
            for i, path in enumerate(files):
                source = SourceFile("bench", str(path), path.name, "")
                process_file(source, RasterRule(), settings, work, f"{r}_{i}")
            times.append(time.perf_counter() - t)
            if r == 0:
                for i in range(len(files)):
                    rec = pickle.loads((Path(work) / f"0_{i}.pkl").read_bytes())
                    for row in rec.get("rows", []):
                        tiles += 1
                        if "data" in row:
                            stored["passthrough" if row["ext"] != "png" else "png"].append(row["data"][1])
    means = {k: float(np.mean(v)) for k, v in stored.items() if v}
    return statistics.median(times), tiles, means


def synthetic_hashes(data: Path, n: int, seed: int = 0) -> tuple[list[str], list[str], float]:
    """pHash/dHash of ``n`` synthetic-from-real tiles, and the seconds spent hashing them."""
    rng = np.random.default_rng(seed)
    aid = sorted((data / "aid").glob("*/*.jpg"))
    images = {}
    ph, dh = [], []
    spent = 0.0
    for _ in range(n):
        path = aid[int(rng.integers(len(aid)))]
        if path not in images:
            images[path] = np.asarray(Image.open(path).convert("RGB"))
        a = images[path]
        s = int(rng.integers(int(a.shape[0] * 0.5), a.shape[0] + 1))
        y, x = (int(rng.integers(a.shape[0] - s + 1)), int(rng.integers(a.shape[1] - s + 1)))
        crop = np.rot90(a[y : y + s, x : x + s], k=int(rng.integers(4)))
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        tile = np.asarray(Image.fromarray(np.ascontiguousarray(crop)).resize((128, 128), Image.Resampling.BILINEAR))
        tile = np.ascontiguousarray(tile.transpose(2, 0, 1))
        t = time.perf_counter()
        p, d = perceptual_hashes(tile)
        spent += time.perf_counter() - t
        ph.append(p)
        dh.append(d)
    return ph, dh, spent


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=DATA)
    p.add_argument("--files", type=int, default=300, help="AID files in the stage mix (plus LoveDA, DOTA, Landsat)")
    p.add_argument("--tile-size", type=int, default=512)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    p.add_argument("--phash-threshold", type=int, default=DedupConfig.phash_threshold)
    p.add_argument("--dhash-threshold", type=int, default=DedupConfig.dhash_threshold)
    args = p.parse_args(argv)
    tiling = Tiling(tile_size=args.tile_size, max_size=max(1024, args.tile_size))
    files = sample_files(args.data, args.files)
    print(f"# rsfm curation benchmark (one process, one thread; {len(files)} real files)\n", flush=True)

    stages = time_stages(files, tiling, args.rounds)
    counts = stages.pop("_counts")
    n_tiles, n_whole = counts["tiles"], counts["whole"]
    proc_s, proc_tiles, stored = time_process_file(files, tiling, args.rounds)
    print(f"## 1. Stages per core ({int(n_tiles)} tiles: {int(n_whole)} whole files, {int(n_tiles - n_whole)} cut)\n")
    print("| stage | ms per tile | tiles/s per core |")
    print("|---|---:|---:|")
    for name, v in stages.items():
        n = n_tiles - n_whole if name == "encode" else n_tiles
        ms = 1000 * v["seconds"] / max(n, 1)
        label = f"{name} (cut tiles, PNG)" if name == "encode" else name
        print(f"| {label} | {ms:.2f} | {1000 / ms if ms else float('inf'):.0f} |")
    rate = proc_tiles / proc_s
    print(f"| **whole per-file stage** (process_file) | {1000 / rate:.2f} | **{rate:.0f}** |\n", flush=True)

    print("## 2. Deduplication cost as the corpus grows\n")
    print("| tiles | hashing s | exact search s | IVF search s | exact / IVF | near-dup pairs | IVF recall |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    last = None
    for n in args.sizes:
        ph, dh, hash_s = synthetic_hashes(args.data, n)
        t = time.perf_counter()
        exact = hamming_pairs(ph, dh, args.phash_threshold, args.dhash_threshold)
        exact_s = time.perf_counter() - t
        t = time.perf_counter()
        ivf = hamming_pairs(ph, dh, args.phash_threshold, args.dhash_threshold, exact_limit=0)
        ivf_s = time.perf_counter() - t
        want = {(i, j) for i, row in enumerate(exact) for j in row}
        got = {(i, j) for i, row in enumerate(ivf) for j in row}
        recall = len(got & want) / max(len(want), 1)
        print(
            f"| {n:,} | {hash_s:.1f} | {exact_s:.3f} | {ivf_s:.3f} | {exact_s / max(ivf_s, 1e-9):.2f}x | "
            f"{len(want) // 2} | {f'{100 * recall:.2f} %' if want else 'n/a'} |",
            flush=True,
        )
        last = (n, exact_s, ivf_s)

    print("\n## 3. Projection to OpticalRS-13M (13.2 M images)\n")
    cpu_h = OPTICALRS_13M / rate / 3600
    print(
        f"- per-file stage: {rate:.0f} tiles/s per core -> **{cpu_h:,.0f} CPU-hours** ({cpu_h / 64:,.1f} h on 64 cores)"
    )
    if last is not None:
        n, exact_s, ivf_s = last
        grow = OPTICALRS_13M / n
        # exact: every pair compared (quadratic); IVF: nprobe of 4 sqrt(N) lists per query (about N^1.5)
        print(
            f"- near-duplicate search, from {n:,} tiles: exact {exact_s * grow * grow / 3600:,.0f} h (quadratic), "
            f"IVF {ivf_s * grow**1.5 / 3600:,.1f} h (N^1.5)"
        )
    for kind, mean in stored.items():
        print(f"- storage, {kind}: {mean / 1e3:.1f} kB per tile -> **{OPTICALRS_13M * mean / 1e12:.2f} TB**")
    print(f"\ncommand: python benchmarks/curation.py {' '.join(sys.argv[1:])}".rstrip())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
