"""rsfm curate on a mixed real corpus with injected duplicates and bad files (issue #11, points 1, 2, 4)."""

from __future__ import annotations

import io
import re
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import rasterio
from PIL import Image
from rasterio.windows import Window
from rasterio.windows import transform as window_transform

from rsfm.curation.config import CurateInput, DedupConfig, ExecutorConfig, ShardConfig
from rsfm.curation.dedup import pixel_sha256
from rsfm.curation.ingest import Tiling, read_tile, tile_windows
from rsfm.curation.pipeline import curate
from rsfm.curation.rules import CurationRule, QualityThresholds
from rsfm.data.io import RasterRule, decode_image, read_image
from rsfm.data.shards import ShardCorpus, ShardDataset
from rsfm.utils.errors import DataError

TILING = Tiling(tile_size=256, overlap=0, max_size=512, min_size=64)
INPUTS = ("aid", "loveda", "dubai", "dota", "scenes", "injected")


def build_corpus(datasets: Path, root: Path, damaged_jpeg) -> dict[str, object]:
    """Copy a mixed real corpus into ``root`` and inject bad files and copies; say what was injected."""
    for cls in ("Airport", "Beach", "Forest"):
        (root / "aid" / cls).mkdir(parents=True)
        for f in sorted((datasets / "aid" / cls).glob("*.jpg"))[:5]:
            shutil.copy(f, root / "aid" / cls / f.name)
    (root / "loveda").mkdir()
    shutil.copy(sorted((datasets / "loveda" / "images_png").glob("*.png"))[0], root / "loveda")
    (root / "dubai").mkdir()
    shutil.copy(datasets / "dubai_seg" / "Tile 1" / "images" / "image_part_001.jpg", root / "dubai")
    (root / "dota").mkdir()
    dota = sorted((datasets / "dota" / "images").glob("*.png"))[0]
    shutil.copy(dota, root / "dota")
    (root / "scenes").mkdir()
    shutil.copy(datasets / "scenes" / "RGB.byte.tif", root / "scenes")

    inj = root / "injected"
    inj.mkdir()
    beach = sorted((root / "aid" / "Beach").glob("*.jpg"))[0]
    shutil.copy(beach, inj / "exact_copy.jpg")
    Image.open(beach).save(inj / "reencoded.jpg", quality=70)
    Image.open(beach).resize((120, 120), Image.Resampling.BICUBIC).save(inj / "resized.png")
    big = Image.open(dota).convert("RGB")
    big.resize((big.width // 2, big.height // 2), Image.Resampling.BICUBIC).save(inj / "dota_half.jpg", quality=90)
    Image.new("RGB", (200, 200), (128, 128, 128)).save(inj / "blank_gray.png")
    Image.new("RGB", (200, 200), (255, 255, 255)).save(inj / "blank_white.png")
    Image.new("RGB", (200, 200), (0, 0, 0)).save(inj / "blank_black.png")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(1, 16, (200, 200, 3), dtype=np.uint8)).save(inj / "dark_noise.png")
    ramp = np.tile(np.linspace(40, 200, 200, dtype=np.float32), (200, 1))
    Image.fromarray(np.stack([ramp] * 3, -1).astype(np.uint8)).save(inj / "smooth_ramp.png")
    (inj / "corrupt.jpg").write_bytes(beach.read_bytes()[:600])
    # a copy of the Beach image damaged in its middle: garbage pixels, not a near duplicate to keep
    (inj / "damaged_copy.jpg").write_bytes(damaged_jpeg(beach))
    with rasterio.open(inj / "two_band.tif", "w", driver="GTiff", width=96, height=96, count=2, dtype="uint8") as dst:
        dst.write(rng.integers(0, 255, (2, 96, 96), dtype=np.uint8))
    half = big.resize((big.width // 2, big.height // 2))
    return {"beach": f"Beach/{beach.name}", "dota_half_tiles": len(tile_windows(half.height, half.width, TILING))}


def run(root: Path, out: Path, **kwargs):
    return curate(
        [CurateInput(root=str(root / n)) for n in INPUTS], out, tiling=TILING, progress=lambda _: None, **kwargs
    )


@pytest.fixture(scope="module")
def corpus(datasets: Path, tmp_path_factory: pytest.TempPathFactory, damaged_jpeg):
    root = tmp_path_factory.mktemp("mixed")
    facts = build_corpus(datasets, root, damaged_jpeg)
    out = root / "corpus"
    result = run(root, out, shards=ShardConfig(keep_work=False, examples_per_rule=4))
    rows = pq.read_table(out / "manifest.parquet").to_pylist()
    return root, out, result, rows, facts


def rgb_byte_nodata_tiles(path: Path) -> int:
    """Tiles of RGB.byte.tif that are mostly nodata, from the raster's own mask (independent of rsfm)."""
    with rasterio.open(path) as src:
        mask = src.dataset_mask() == 0
        data = src.read()
    bad = mask | np.all(data == 0, axis=0)
    n = 0
    for x, y, w, h in tile_windows(bad.shape[0], bad.shape[1], TILING):
        n += bad[y : y + h, x : x + w].mean() > 0.5
    return n


def test_every_injected_file_is_dropped_by_its_rule_and_originals_are_kept(corpus) -> None:
    root, out, result, rows, facts = corpus
    by_file: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        by_file.setdefault((r["input"], r["source"]), []).append(r)
    expected = {
        "exact_copy.jpg": "exact_duplicate",
        "reencoded.jpg": "near_duplicate",
        "resized.png": "near_duplicate",
        "dota_half.jpg": "near_duplicate",
        "blank_gray.png": "blank",
        "blank_white.png": "saturated",
        "blank_black.png": "nodata",
        "dark_noise.png": "dark",
        "smooth_ramp.png": "low_information",
        "corrupt.jpg": "unreadable",
        "damaged_copy.jpg": "unreadable",
        "two_band.tif": "unsupported_bands",
    }
    for name, rule in expected.items():
        got = by_file[("injected", name)]
        assert {r["rule"] for r in got} == {rule}, (name, [(r["rule"], r["detail"]) for r in got])
    assert "Corrupt JPEG data" in by_file[("injected", "damaged_copy.jpg")][0]["detail"]
    # the copies name the original they duplicate
    original = by_file[("aid", facts["beach"])][0]
    for name in ("exact_copy.jpg", "reencoded.jpg", "resized.png"):
        assert by_file[("injected", name)][0]["duplicate_of"] == original["id"]
    assert len(by_file[("injected", "dota_half.jpg")]) == facts["dota_half_tiles"] > 1
    # originals: all kept, except the nodata corners of the Landsat scene
    nodata_tiles = rgb_byte_nodata_tiles(root / "scenes" / "RGB.byte.tif")
    assert nodata_tiles >= 1
    for (name, source), file_rows in by_file.items():
        if name == "injected":
            continue
        rules = [r["rule"] for r in file_rows]
        if source == "RGB.byte.tif":
            assert rules.count("nodata") == nodata_tiles and rules.count(None) == len(rules) - nodata_tiles
        else:
            assert rules == [None] * len(rules), (name, source, rules)


def test_the_report_counts_each_rule_exactly(corpus) -> None:
    root, out, result, rows, facts = corpus
    nodata = rgb_byte_nodata_tiles(root / "scenes" / "RGB.byte.tif") + 1  # + the black file
    expected = {
        "unreadable": 2,
        "unsupported_bands": 1,
        "nodata": nodata,
        "saturated": 1,
        "dark": 1,
        "blank": 1,
        "low_information": 1,
        "exact_duplicate": 1,
        "near_duplicate": 2 + facts["dota_half_tiles"],
    }
    assert result.excluded == expected
    text = (out / "report.md").read_text().split("## Rows per input")[0]
    table = dict(re.findall(r"^\| (\w+) \| (\d+) \|", text, flags=re.M))
    assert {k: int(v) for k, v in table.items() if k != "kept"} == expected
    assert int(table["kept"]) == result.kept == sum(r["status"] == "kept" for r in rows)
    for rule in ("kept", "nodata", "near_duplicate", "blank"):
        sheet = out / "report" / f"{rule}.png"
        assert sheet.is_file() and Image.open(sheet).size[0] > 96
    assert not (out / "work").exists()  # removed after a complete run (shards.keep_work=false)


def test_a_manifest_row_maps_back_to_its_source_pixels(corpus) -> None:
    root, out, result, rows, facts = corpus
    dataset = ShardDataset(ShardCorpus.open(out))
    kept = {r["id"]: r for r in rows if r["status"] == "kept"}
    scene = [r for r in kept.values() if r["source"] == "RGB.byte.tif"]
    loveda = [r for r in kept.values() if r["input"] == "loveda"]
    aid = [r for r in kept.values() if r["input"] == "aid"]
    for row in (scene[0], scene[-1], loveda[3], aid[0]):
        sample_id, ext, data = dataset.raw(row["shard_index"])
        assert sample_id == row["id"]
        stored = decode_image(data, f"x.{ext}").numpy()
        again = read_tile(row, root / row["input"])
        np.testing.assert_array_equal(stored, again)
        assert stored.shape == (3, row["height"], row["width"])
    # the georeferenced tile's transform is its window's, and its pixels are the raster's own
    row = scene[len(scene) // 2]
    with rasterio.open(root / "scenes" / "RGB.byte.tif") as src:
        window = Window(row["x"], row["y"], row["width"], row["height"])
        assert row["crs"] == f"EPSG:{src.crs.to_epsg()}"
        np.testing.assert_allclose(row["transform"], tuple(window_transform(window, src.transform))[:6])
        assert row["gsd"] == pytest.approx(abs(src.transform.a))
        raw = src.read(window=window, masked=True)
    expect = np.where(np.ma.getmaskarray(raw), 0, np.ma.getdata(raw)).astype(np.uint8)
    np.testing.assert_array_equal(decode_image(dataset.raw(row["shard_index"])[2], "x.png").numpy(), expect)
    # a whole AID file is stored as its own bytes
    assert dataset.raw(aid[0]["shard_index"])[2] == (root / "aid" / aid[0]["source"]).read_bytes()
    np.testing.assert_array_equal(
        decode_image(dataset.raw(aid[0]["shard_index"])[2], "x.jpg"), read_image(root / "aid" / aid[0]["source"])
    )


def test_manifest_statistics_and_hashes(corpus) -> None:
    root, out, result, rows, facts = corpus
    row = next(r for r in rows if r["status"] == "kept" and r["input"] == "aid")
    pixels = read_image(root / "aid" / row["source"]).numpy().reshape(3, -1).astype(np.float64)
    np.testing.assert_allclose(row["band_mean"], pixels.mean(axis=1), rtol=1e-5)
    assert row["band_min"] == pixels.min(axis=1).astype(int).tolist()
    assert len(row["phash"]) == 16 and len(row["sha256"]) == 64
    ids = [r["id"] for r in rows]
    assert ids == list(range(len(rows)))
    shard_index = sorted(r["shard_index"] for r in rows if r["status"] == "kept")
    assert shard_index == list(range(result.kept))


def test_a_killed_run_resumes_and_gives_the_same_shards_and_manifest(corpus, tmp_path, monkeypatch) -> None:
    root, out, result, rows, facts = corpus
    import rsfm.curation.pipeline as pipeline

    real = pipeline.process_file
    calls = {"n": 0}

    def dies_after_ten(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 10:
            raise KeyboardInterrupt  # the process is killed mid-run
        return real(*args, **kwargs)

    second = tmp_path / "corpus"
    monkeypatch.setattr(pipeline, "process_file", dies_after_ten)
    with pytest.raises(KeyboardInterrupt):
        run(root, second, shards=ShardConfig(examples_per_rule=4))
    assert not (second / "manifest.parquet").exists() and len(list((second / "work").glob("*.pkl"))) == 10
    monkeypatch.setattr(pipeline, "process_file", real)
    resumed = run(root, second, shards=ShardConfig(examples_per_rule=4))
    assert resumed.processed == result.files - 10  # only the files the killed run had not finished
    assert pq.read_table(second / "manifest.parquet").equals(pq.read_table(out / "manifest.parquet"))
    chunks = sorted(p.name for p in (out / "shards").glob("*.bin"))
    assert chunks and chunks == sorted(p.name for p in (second / "shards").glob("*.bin"))
    for name in chunks:
        assert (second / "shards" / name).read_bytes() == (out / "shards" / name).read_bytes()


def test_evaluation_images_never_enter_the_corpus(datasets, tmp_path) -> None:
    src = tmp_path / "src"
    (src / "Beach").mkdir(parents=True)
    files = sorted((datasets / "aid" / "Beach").glob("*.jpg"))[:6]
    for f in files:
        shutil.copy(f, src / "Beach")
    evalset = tmp_path / "eval"
    evalset.mkdir()
    Image.open(files[2]).save(evalset / "test_image.png")  # the benchmark's copy, another format
    shutil.copy(files[4], evalset / "exact.jpg")
    out = tmp_path / "out"
    result = curate(
        [CurateInput(root=str(src))], out, tiling=TILING, dedup=DedupConfig(eval_sets=[str(evalset)]), progress=print
    )
    rows = {r["source"]: r for r in pq.read_table(out / "manifest.parquet").to_pylist()}
    assert result.excluded == {"eval_overlap": 2}
    assert rows[f"Beach/{files[2].name}"]["rule"] == "eval_overlap"
    assert rows[f"Beach/{files[4].name}"]["rule"] == "eval_overlap"
    assert "exact.jpg" in rows[f"Beach/{files[4].name}"]["detail"]


class NoBeaches(CurationRule):
    """A user rule: drop bright, sandy-looking tiles (blue-poor)."""

    name = "sandy"

    def __init__(self, max_blue_ratio: float = 0.9) -> None:
        self.max_blue_ratio = max_blue_ratio

    def __call__(self, tile, measures, info) -> bool:
        r, g, b = measures.band_mean
        return b < self.max_blue_ratio * r and info["source"].startswith("Desert/")


def test_a_custom_rule_is_applied_counted_and_named(datasets, tmp_path) -> None:
    src = tmp_path / "src"
    for cls in ("Desert", "Forest"):
        (src / cls).mkdir(parents=True)
        for f in sorted((datasets / "aid" / cls).glob("*.jpg"))[:4]:
            shutil.copy(f, src / cls)
    out = tmp_path / "out"
    result = curate(
        [CurateInput(root=str(src))],
        out,
        tiling=TILING,
        rules=QualityThresholds(custom=[NoBeaches()], disable=["low_information"]),
        progress=lambda _: None,
    )
    rows = pq.read_table(out / "manifest.parquet").to_pylist()
    sandy = [r["source"] for r in rows if r["rule"] == "sandy"]
    assert sandy and all(s.startswith("Desert/") for s in sandy)
    assert result.excluded == {"sandy": len(sandy)}
    assert "| sandy |" in (out / "report.md").read_text()


def _mixed_source(datasets: Path, tmp_path: Path) -> Path:
    """Six AID JPEGs, a GeoTIFF scene and a dark PNG (excluded) in one folder tree."""
    src = tmp_path / "src"
    (src / "Forest").mkdir(parents=True)
    for f in sorted((datasets / "aid" / "Forest").glob("*.jpg"))[:6]:
        shutil.copy(f, src / "Forest")
    shutil.copy(datasets / "scenes" / "RGB.byte.tif", src)
    Image.new("RGB", (100, 100), (7, 7, 7)).save(src / "Forest" / "dark.png")
    return src


def test_two_dask_workers_give_the_same_manifest_as_one(datasets, tmp_path) -> None:
    src = _mixed_source(datasets, tmp_path)
    one = curate([CurateInput(root=str(src))], tmp_path / "one", tiling=TILING, progress=lambda _: None)
    two = curate(
        [CurateInput(root=str(src))],
        tmp_path / "two",
        tiling=TILING,
        executor=ExecutorConfig(workers=2),
        progress=lambda _: None,
    )
    assert one.kept == two.kept and one.excluded == two.excluded
    assert pq.read_table(tmp_path / "two" / "manifest.parquet").equals(
        pq.read_table(tmp_path / "one" / "manifest.parquet")
    )
    for chunk in (tmp_path / "one" / "shards").glob("*.bin"):
        assert (tmp_path / "two" / "shards" / chunk.name).read_bytes() == chunk.read_bytes()


def test_a_running_scheduler_gives_the_same_manifest(datasets, tmp_path) -> None:
    """``executor.scheduler`` (a running Dask cluster, as on a cluster): the one-process output again."""
    src = _mixed_source(datasets, tmp_path)
    one = curate([CurateInput(root=str(src))], tmp_path / "one", tiling=TILING, progress=lambda _: None)
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        remote = curate(
            [CurateInput(root=str(src))],
            tmp_path / "remote",
            tiling=TILING,
            executor=ExecutorConfig(scheduler=cluster.scheduler_address),
            progress=lambda _: None,
        )
    assert remote.processed == one.processed
    assert pq.read_table(tmp_path / "remote" / "manifest.parquet").equals(
        pq.read_table(tmp_path / "one" / "manifest.parquet")
    )


def test_clear_errors(tmp_path) -> None:
    with pytest.raises(DataError, match=r"inputs\[0\]\.root: folder not found"):
        curate([CurateInput(root=str(tmp_path / "missing"))], tmp_path / "out", progress=lambda _: None)
    from rsfm.utils.errors import ConfigError

    with pytest.raises(ConfigError, match="shards.chunk_bytes"):
        curate([CurateInput(root=str(tmp_path))], tmp_path / "out", shards=ShardConfig(chunk_bytes="lots"))
    with pytest.raises(ConfigError, match="shards.png_level"):
        curate([CurateInput(root=str(tmp_path))], tmp_path / "out", shards=ShardConfig(png_level=12))
    with pytest.raises(ValueError, match="tiling.overlap"):
        Tiling(tile_size=256, overlap=256)
    with pytest.raises(ValueError, match="rules.disable"):
        QualityThresholds(disable=["cloudy"])


def test_thumbnail_bytes_in_contact_sheet_are_images() -> None:
    from rsfm.curation.report import contact_sheet

    thumbs = []
    for v in (10, 120, 240):
        buf = io.BytesIO()
        Image.new("RGB", (96, 80), (v, v, v)).save(buf, format="JPEG")
        thumbs.append(buf.getvalue())
    sheet = Image.open(io.BytesIO(contact_sheet(thumbs, ["a", "b", "c"], columns=2)))
    assert sheet.size == (2 * 100 + 4, 2 * (96 + 12 + 4) + 4)


def test_embedding_near_duplicates_with_an_rsfm_encoder(datasets, tmp_path) -> None:
    import torch

    from rsfm.models.encoders.vit import build_vit
    from rsfm.models.export import export_encoder

    torch.manual_seed(0)
    meta = {"arch": "vit", "size": "tiny", "img_size": 64, "patch_size": 16, "in_chans": 3, "method": "random-init"}
    encoder = export_encoder(build_vit("tiny", img_size=64, patch_size=16), tmp_path / "enc.safetensors", meta)
    src = tmp_path / "src"
    for cls in ("Forest", "Airport"):
        (src / cls).mkdir(parents=True)
        for f in sorted((datasets / "aid" / cls).glob("*.jpg"))[:4]:
            shutil.copy(f, src / cls)
    first = sorted((src / "Forest").glob("*.jpg"))[0]
    Image.open(first).save(src / "Forest" / "zz_copy.jpg", quality=70)
    dedup = DedupConfig(
        exact=False,
        perceptual=False,
        image_level=False,
        embedding_encoder=str(encoder),
        embedding_threshold=0.9995,  # distinct Forest images reach 0.998 with this random encoder; the copy 0.99999
        embedding_img_size=64,
    )
    result = curate([CurateInput(root=str(src))], tmp_path / "out", tiling=TILING, dedup=dedup, progress=lambda _: None)
    rows = {r["source"]: r for r in pq.read_table(tmp_path / "out" / "manifest.parquet").to_pylist()}
    assert result.excluded == {"embedding_duplicate": 1}
    assert rows["Forest/zz_copy.jpg"]["rule"] == "embedding_duplicate"
    assert rows["Forest/zz_copy.jpg"]["duplicate_of"] == rows[f"Forest/{first.name}"]["id"]


def test_a_sigkilled_cli_run_resumes_to_the_same_output(datasets, tmp_path) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    import yaml

    src = tmp_path / "src"
    for cls in ("Pond", "Meadow"):
        (src / cls).mkdir(parents=True)
        for f in sorted((datasets / "aid" / cls).glob("*.jpg"))[:16]:
            shutil.copy(f, src / cls)
    recipe = {"inputs": [{"root": str(src)}], "output": str(tmp_path / "killed"), "tiling": {"tile_size": 128}}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    proc = subprocess.Popen(
        [sys.executable, "-m", "rsfm.cli", "curate", "--config", str(tmp_path / "r.yaml")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    work = tmp_path / "killed" / "work"
    deadline = time.time() + 120
    while time.time() < deadline and len(list(work.glob("*.pkl"))) < 5 and proc.poll() is None:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = len(list(work.glob("*.pkl")))
    assert 5 <= done < 32 and not (tmp_path / "killed" / "manifest.parquet").exists()
    resumed = curate([CurateInput(root=str(src))], tmp_path / "killed", tiling=Tiling(tile_size=128), progress=print)
    assert resumed.processed == 32 - done
    whole = curate([CurateInput(root=str(src))], tmp_path / "whole", tiling=Tiling(tile_size=128), progress=print)
    assert whole.kept == resumed.kept and whole.excluded == resumed.excluded
    assert pq.read_table(tmp_path / "killed" / "manifest.parquet").equals(
        pq.read_table(tmp_path / "whole" / "manifest.parquet")
    )
    for chunk in (tmp_path / "whole" / "shards").glob("*.bin"):
        assert (tmp_path / "killed" / "shards" / chunk.name).read_bytes() == chunk.read_bytes()


def test_a_16_bit_multiband_geotiff_is_stretched_scene_wide_and_re_read_exactly(datasets, tmp_path) -> None:
    """A uint16 4-band GeoTIFF (the Landsat scene's bands x 257 plus their mean as a 4th band, nodata 0)."""
    src_dir = tmp_path / "src"
    src_dir.mkdir()
    with rasterio.open(datasets / "scenes" / "RGB.byte.tif") as src:
        rgb = src.read().astype(np.uint16) * 257
        profile = src.profile
    bands = np.concatenate([rgb, rgb.mean(axis=0, keepdims=True).astype(np.uint16)])
    profile.update(count=4, dtype="uint16", nodata=0)
    with rasterio.open(src_dir / "landsat16.tif", "w", **profile) as dst:
        dst.write(bands)
    out = tmp_path / "out"
    result = curate([CurateInput(root=str(src_dir), bands=[0, 1, 2, 3])], out, tiling=TILING, progress=lambda _: None)
    rows = pq.read_table(out / "manifest.parquet").to_pylist()
    kept = [r for r in rows if r["status"] == "kept"]
    assert result.kept == len(kept) > 0 and {r["rule"] for r in rows} <= {None, "nodata"}
    assert {r["dtype"] for r in rows} == {"uint16"} and {r["channels"] for r in rows} == {4}
    # one stretch for the whole scene, from its valid pixels
    assert len({tuple(r["stretch_low"]) for r in rows}) == 1 and rows[0]["stretch_low"][0] > 0
    dataset = ShardDataset(ShardCorpus.open(out))
    assert dataset.corpus.channels == 4
    for row in (kept[0], kept[-1]):
        sample_id, ext, data = dataset.raw(row["shard_index"])
        assert ext == "npy"
        np.testing.assert_array_equal(decode_image(data, "x.npy").numpy(), read_tile(row, src_dir))
    item = dataset[0]
    assert item["image"].shape == (4, kept[0]["height"], kept[0]["width"]) and item["image"].dtype.is_floating_point


@pytest.mark.parametrize(
    ("spec", "rule"),
    [
        ({"raster_scale": 10200}, RasterRule(scale=10200.0)),
        ({"percentiles": [10, 90]}, RasterRule(percentiles=(10.0, 90.0))),
        ({}, RasterRule()),
    ],
    ids=["fixed_scale", "percentiles", "default"],
)
def test_a_16_bit_png_shard_holds_the_pixels_its_input_rule_gives(datasets, tmp_path, spec, rule) -> None:
    """A 16-bit RGB PNG (an AID scene x 40) under a non-default rule: the shard, the manifest's
    hash and :func:`read_tile` agree with :func:`read_image` under that rule (the original bytes
    are only kept where the default rule decodes them to the same pixels)."""
    src_dir = tmp_path / "src"
    src_dir.mkdir()
    rgb = np.asarray(Image.open(datasets / "aid" / "Airport" / "airport_10.jpg").convert("RGB")).astype(np.uint16) * 40
    h, w, _ = rgb.shape
    with rasterio.open(src_dir / "a.png", "w", driver="PNG", width=w, height=h, count=3, dtype="uint16") as dst:
        dst.write(rgb.transpose(2, 0, 1))
    out = tmp_path / "out"
    curate(
        [CurateInput(root=str(src_dir), **spec)],
        out,
        tiling=Tiling(tile_size=600, max_size=600, min_size=64),
        progress=lambda _: None,
    )
    (row,) = pq.read_table(out / "manifest.parquet").to_pylist()
    assert row["status"] == "kept" and row["dtype"] == "uint16" and row["percentiles"] == list(rule.percentiles)
    expected = read_image(src_dir / "a.png", rule).numpy()
    _, ext, data = ShardDataset(ShardCorpus.open(out)).raw(0)
    np.testing.assert_array_equal(decode_image(data, f"x.{ext}").numpy(), expected)
    np.testing.assert_array_equal(read_tile(row, src_dir), expected)
    assert row["sha256"] == pixel_sha256(expected)


def test_one_pixel_wide_images_are_measured_and_excluded_not_fatal(datasets, tmp_path) -> None:
    """A 1-pixel row and column cut from an AID scene, with ``tiling.min_size=1``: each is read,
    measured (no 2x2 cell for the gradient energy: energy 0) and excluded as low_information,
    beside a whole scene that is kept."""
    src_dir = tmp_path / "src"
    src_dir.mkdir()
    scene = datasets / "aid" / "Airport" / "airport_10.jpg"
    shutil.copy(scene, src_dir / "whole.jpg")
    rgb = np.asarray(Image.open(scene).convert("RGB"))
    Image.fromarray(np.ascontiguousarray(rgb[:1])).save(src_dir / "row.png")
    Image.fromarray(np.ascontiguousarray(rgb[:, :1])).save(src_dir / "column.png")
    out = tmp_path / "out"
    result = curate(
        [CurateInput(root=str(src_dir))],
        out,
        tiling=Tiling(tile_size=600, max_size=600, min_size=1),
        progress=lambda _: None,
    )
    rows = {r["source"]: r for r in pq.read_table(out / "manifest.parquet").to_pylist()}
    assert result.kept == 1 and result.excluded == {"low_information": 2}
    assert rows["whole.jpg"]["status"] == "kept" and rows["whole.jpg"]["energy"] > 0
    for name in ("row.png", "column.png"):
        assert rows[name]["rule"] == "low_information" and rows[name]["energy"] == 0.0
