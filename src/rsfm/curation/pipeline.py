"""``rsfm curate``: input folders → measured, filtered, deduplicated tiles → shards, manifest, report.

Stages (SelectiveMAE's OpticalRS-13M was built by exclusion, slicing and perceptual
deduplication; Wang et al., arXiv 2406.11933, its dataset section):

1. **List** the inputs' files (sorted; inputs in recipe order).
2. **Per file** (in parallel; :func:`process_file`): open it, exclude it whole
   (``unreadable``, ``unsupported_bands``, ``too_small``), hash the whole image, cut it
   into tiles, measure each tile and apply the quality rules (:mod:`rsfm.curation.rules`),
   hash the tiles and encode the ones that pass. Each file's result is written atomically to
   ``work/`` under a key of the file and the settings, so a killed run redoes only the files
   it had not finished.
3. **Deduplicate** across all inputs (:mod:`rsfm.curation.dedup`), and against the
   evaluation sets named in ``dedup.eval_sets``.
4. **Write** the kept tiles as LitData shards, the manifest (one row per file excluded
   whole and per tile) and the report.

Global ids are assigned after stage 2, in input order, so the output does not depend on the
number of workers or on how often the run was interrupted.

.. versionadded:: 0.3
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import pickle
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rsfm.curation.config import CurateInput, DedupConfig, ExecutorConfig, ShardConfig
from rsfm.curation.dedup import embedding_pairs, greedy_keep, hamming_pairs, perceptual_hashes, pixel_sha256
from rsfm.curation.ingest import OpenedSource, SourceFile, Tiling, iter_tiles
from rsfm.curation.rules import QualityThresholds, check_quality, measure_tile
from rsfm.data.io import BadImageError, RasterRule
from rsfm.utils.errors import ConfigError, DataError
from rsfm.utils.files import file_sha256

__all__ = ["CurateResult", "CurationSettings", "curate", "list_inputs", "process_file"]

#: version of the per-file results in ``work/`` (a change invalidates old ones)
_WORK_VERSION = 1
_THUMB = 96
_BAD_REASON_DETAIL = {
    "zero_byte": "empty file",
    "truncated": "truncated file",
    "corrupt": "corrupt image data",
    "not_an_image": "not an image",
    "unreadable": "cannot be decoded",
}


@dataclass
class CurationSettings:
    """Everything that decides a file's result (hashed into its ``work/`` key)."""

    tiling: Tiling
    rules: QualityThresholds
    shards: ShardConfig
    dedup: DedupConfig


@dataclass
class CurateResult:
    """What a curation run produced.

    Attributes:
        output: the corpus folder.
        kept: tiles in the shards.
        excluded: manifest rows excluded, by rule.
        files: input files listed.
        processed: files processed by this call (the others came from ``work/``).
        seconds: wall time of this call.
    """

    output: Path
    kept: int
    excluded: dict[str, int]
    files: int
    processed: int
    seconds: float
    stage_seconds: dict[str, float] = field(default_factory=dict)


def list_inputs(inputs: list[CurateInput]) -> tuple[list[SourceFile], list[dict[str, Any]], dict[str, RasterRule]]:
    """List the files of every input.

    Returns:
        ``(sources, empty, rules)``: the image files in order; rows for empty image files
        (excluded as ``unreadable``); the band rule of each input by name.

    Raises:
        DataError: naming ``inputs[i].root`` if a folder is missing, or on duplicate names.
    """
    from rsfm.data.folder import scan_folder

    sources: list[SourceFile] = []
    empty: list[dict[str, Any]] = []
    rules: dict[str, RasterRule] = {}
    several = len(inputs) > 1
    for i, spec in enumerate(inputs):
        root = Path(spec.root)
        if not root.is_dir():
            raise DataError(f"inputs[{i}].root: folder not found: {root}")
        name = spec.name or root.resolve().name
        if name in rules:
            raise DataError(f"inputs[{i}].name: {name!r} is used twice; give the inputs distinct names")
        try:
            rules[name] = RasterRule(
                bands=tuple(spec.bands) if spec.bands is not None else None,
                scale=spec.raster_scale if spec.raster_scale == "auto" else float(spec.raster_scale),
                percentiles=(float(spec.percentiles[0]), float(spec.percentiles[1])),
            )
        except (ValueError, IndexError) as err:
            raise ConfigError(f"inputs[{i}]: {err}") from None
        files, relative, skipped = scan_folder(root)
        if spec.include is not None:
            keep = [i for i, rel in enumerate(relative) if any(fnmatch.fnmatch(rel, pat) for pat in spec.include)]
            files, relative = [files[i] for i in keep], [relative[i] for i in keep]
            skipped = [
                (p, r)
                for p, r in skipped
                if any(fnmatch.fnmatch(os.path.relpath(p, root).replace(os.sep, "/"), pat) for pat in spec.include)
            ]
        for path, rel in zip(files, relative, strict=True):
            first, sep, _ = rel.partition("/")
            group = first if sep else ""
            sources.append(
                SourceFile(name, str(path.resolve()), rel, f"{name}/{group}" if several else group, path.stat().st_size)
            )
        for path, reason in skipped:
            if reason == "not_an_image":
                continue  # other file types are not candidates
            rel = os.path.relpath(path, root).replace(os.sep, "/")
            first, sep, _ = rel.partition("/")
            empty.append(
                {
                    "input": name,
                    "source": rel,
                    "group": (f"{name}/{first if sep else ''}" if several else (first if sep else "")),
                    "rule": "unreadable",
                    "detail": _BAD_REASON_DETAIL[reason],
                    "file_size": 0 if reason == "zero_byte" else None,
                }
            )
    return sources, empty, rules


def _settings_key(settings: CurationSettings) -> str:
    def plain(obj: Any) -> Any:
        if hasattr(obj, "__dataclass_fields__"):
            return {k: plain(v) for k, v in vars(obj).items()}
        if isinstance(obj, list | tuple):
            return [plain(v) for v in obj]
        if isinstance(obj, dict):
            return {k: plain(v) for k, v in obj.items()}
        if isinstance(obj, int | float | str | bool) or obj is None:
            return obj
        state = sorted(vars(obj).items()) if hasattr(obj, "__dict__") else obj
        return f"{type(obj).__module__}.{type(obj).__qualname__}:{state}"

    relevant = {
        "tiling": plain(settings.tiling),
        "rules": plain(settings.rules),
        "encoding": [
            settings.shards.encoding,
            settings.shards.quality,
            settings.shards.png_level,
            settings.shards.keep_source_bytes,
        ],
        "version": _WORK_VERSION,
    }
    return hashlib.sha1(json.dumps(relevant, sort_keys=True, default=str).encode()).hexdigest()


def _file_key(source: SourceFile, rule: RasterRule, settings_key: str, kind: str) -> str:
    st = os.stat(source.path)
    text = json.dumps([kind, source.input, source.source, st.st_size, st.st_mtime_ns, repr(rule), settings_key])
    return hashlib.sha1(text.encode()).hexdigest()


def _thumb(tile: np.ndarray) -> bytes:
    import io

    from PIL import Image

    rgb = tile if tile.shape[0] == 3 else np.repeat(np.rint(tile.mean(axis=0))[None].astype(np.uint8), 3, axis=0)
    image = Image.fromarray(np.ascontiguousarray(rgb.transpose(1, 2, 0)))
    image.thumbnail((_THUMB, _THUMB), Image.Resampling.BOX)
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=80)
    return buf.getvalue()


def process_file(
    source: SourceFile, rule: RasterRule, settings: CurationSettings, work: str, key: str, kind: str = "corpus"
) -> str:
    """Stage 2 for one file: exclusion, slicing, measures, quality rules, hashes, encoding.

    The result goes to ``work/<key>.pkl`` (rows) and ``work/<key>.bin`` (encoded tiles that
    pass the quality rules, and report thumbnails of those that do not, at the offsets the
    rows give), both written atomically; an existing result
    is kept (resume).

    Args:
        source: the file.
        rule: its input's band rule.
        settings: the run's settings.
        work: the ``work/`` folder.
        key: the file's result key.
        kind: ``'corpus'``, or ``'eval'`` for a file of an evaluation set (hashes only).

    Returns:
        The path of the rows file.
    """
    from rsfm.data.shards import encode_tile

    out = Path(work) / f"{key}.pkl"
    if out.is_file():
        return str(out)
    blob = bytearray()
    rows: list[dict[str, Any]] = []
    record: dict[str, Any] = {"source": source.source, "input": source.input, "rows": rows}
    tiling, rules = settings.tiling, settings.rules
    try:
        record["file_sha256"] = file_sha256(source.path)
        with OpenedSource(source.path, rule) as src:
            record.update(
                width=src.width,
                height=src.height,
                channels=src.channels,
                dtype=src.dtype,
                crs=src.crs,
                stretch=src.stretch,
            )
            if min(src.height, src.width) < tiling.min_size:
                record["rule"] = "too_small"
                record["detail"] = f"{src.width}x{src.height} px, smaller than tiling.min_size={tiling.min_size}"
            else:
                thumb = src.thumbnail()
                record["phash"], record["dhash"] = perceptual_hashes(thumb)
                whole_bytes = None
                if (
                    kind == "corpus"
                    and settings.shards.keep_source_bytes
                    and rule.bands is None
                    and src.channels == 3
                    and Path(source.path).suffix.lower() not in (".tif", ".tiff")
                    # the shard decodes these bytes with the default rule: the same pixels only
                    # for 8-bit files (no scaling) or when the input's rule is the default
                    and (src.dtype == "uint8" or rule == RasterRule())
                ):
                    whole_bytes = Path(source.path).read_bytes()
                for window, tile, mask in iter_tiles(src, tiling):
                    x, y, w, h = window
                    row: dict[str, Any] = {
                        "x": x,
                        "y": y,
                        "width": w,
                        "height": h,
                        "transform": src.window_transform(window),
                        "sha256": pixel_sha256(tile),
                    }
                    row["phash"], row["dhash"] = perceptual_hashes(tile)
                    if kind == "corpus":
                        m = measure_tile(tile, mask)
                        row["measures"] = asdict(m)
                        info = {
                            "source": source.source,
                            "input": source.input,
                            "window": window,
                            "crs": src.crs,
                            "transform": row["transform"],
                        }
                        row["rule"] = check_quality(tile, m, rules, info)
                        if row["rule"] is not None:
                            # the report's only view of an excluded tile (kept ones are shown from their data)
                            t = _thumb(tile)
                            row["thumb"] = (len(blob), len(t))
                            blob += t
                        else:
                            if whole_bytes is not None and (w, h) == (src.width, src.height):
                                ext, data = Path(source.path).suffix.lower().lstrip("."), whole_bytes
                            else:
                                ext, data = encode_tile(
                                    tile, settings.shards.encoding, settings.shards.quality, settings.shards.png_level
                                )
                            row["ext"] = ext
                            row["data"] = (len(blob), len(data))
                            blob += data
                    rows.append(row)
    except BadImageError as err:
        record["rule"] = "unsupported_bands" if err.reason == "unsupported_bands" else "unreadable"
        record["detail"] = str(err).removeprefix(f"{err.path}: ")
    except OSError as err:
        record["rule"] = "unreadable"
        record["detail"] = f"cannot read file ({err})"
    from rsfm.utils.files import atomic_write

    atomic_write(Path(work) / f"{key}.bin", lambda tmp: Path(tmp).write_bytes(bytes(blob)))
    atomic_write(out, lambda tmp: Path(tmp).write_bytes(pickle.dumps(record, protocol=5)))
    return str(out)


def _worker_process_file(*task: Any) -> str:
    """:func:`process_file` in a Dask worker: one thread per process (the workers are the parallelism)."""
    import torch

    torch.set_num_threads(1)
    return process_file(*task)


def _run_tasks(tasks: list[tuple[Any, ...]], executor: ExecutorConfig, progress: Callable[[str], None]) -> None:
    """Run :func:`process_file` over ``tasks``: in this process, on local Dask workers or a Dask cluster."""
    if not tasks:
        return
    if executor.scheduler is None and executor.workers <= 1:
        import torch

        step = max(1, len(tasks) // 10)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # per-tile work is small: a thread pool costs more than it gains
        try:
            for i, task in enumerate(tasks, 1):
                process_file(*task)
                if i % step == 0 or i == len(tasks):
                    progress(f"  files {i}/{len(tasks)}")
        finally:
            torch.set_num_threads(threads)
        return
    try:
        import dask.bag as db
        from distributed import Client, LocalCluster
    except ImportError as err:
        raise ConfigError("executor.workers > 1 and executor.scheduler need Dask: pip install 'rsfm[curate]'") from err
    bag = db.from_sequence(tasks, npartitions=min(len(tasks), max(1, executor.workers) * 8))
    mapped = bag.starmap(_worker_process_file)
    if executor.scheduler is not None:
        with Client(executor.scheduler) as client:
            progress(f"  {len(tasks)} files on the Dask cluster at {executor.scheduler} ({client})")
            mapped.compute()
        return
    # the same distributed scheduler as a cluster's, on local worker processes
    with (
        LocalCluster(
            n_workers=executor.workers, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        Client(cluster) as client,
    ):
        progress(f"  {len(tasks)} files on {executor.workers} local Dask worker processes ({client})")
        mapped.compute()


def _rows_of(record: dict[str, Any], source: SourceFile) -> list[dict[str, Any]]:
    """Manifest rows of one file's result (ids are filled in later)."""
    base = {
        "input": source.input,
        "source": source.source,
        "group": source.group,
        "file_size": source.size,
        "file_sha256": record.get("file_sha256"),
        "source_width": record.get("width"),
        "source_height": record.get("height"),
        "channels": record.get("channels"),
        "dtype": record.get("dtype"),
        "crs": record.get("crs"),
    }
    if record.get("rule"):
        return [dict(base, level="file", rule=record["rule"], detail=record.get("detail"))]
    stretch = record.get("stretch")
    base["stretch_low"] = [lo for lo, _ in stretch] if stretch else None
    base["stretch_high"] = [hi for _, hi in stretch] if stretch else None
    out = []
    for row in record["rows"]:
        r = dict(base, level="tile", **{k: v for k, v in row.items() if k != "measures"})
        r.update(row.get("measures", {}))
        out.append(r)
    return out


def _gsd(crs: str | None, transform: list[float] | None) -> float | None:
    """Ground sample distance, metres, of a projected CRS in metres (None otherwise)."""
    if crs is None or transform is None:
        return None
    try:
        from rasterio.crs import CRS

        c = CRS.from_user_input(crs)
        if not c.is_projected or (c.linear_units or "").lower() not in ("metre", "meter", "m"):
            return None
    except Exception:
        return None
    return float(abs(transform[0]))


def curate(
    inputs: list[CurateInput],
    output: str | os.PathLike[str],
    tiling: Tiling | None = None,
    rules: QualityThresholds | None = None,
    dedup: DedupConfig | None = None,
    shards: ShardConfig | None = None,
    executor: ExecutorConfig | None = None,
    progress: Callable[[str], None] = print,
) -> CurateResult:
    """Curate input folders into a sharded corpus (see the module docstring).

    Args:
        inputs: the input folders, in priority order (earlier wins ties between duplicates).
        output: the corpus folder (``shards/``, ``manifest.parquet``, ``report.md``,
            ``report/``); a run into a folder holding an unfinished run continues it.
        tiling: slicing (default :class:`~rsfm.curation.ingest.Tiling`).
        rules: quality rules (default :class:`~rsfm.curation.rules.QualityThresholds`).
        dedup: deduplication settings.
        shards: storage settings.
        executor: where per-file work runs.
        progress: called with one line per stage.

    Returns:
        A :class:`CurateResult`.

    Raises:
        DataError: if an input folder is missing or no file was found.
        ConfigError: on an invalid setting, or inputs giving different numbers of bands.
    """
    t0 = time.perf_counter()
    tiling = tiling or Tiling()
    rules = rules or QualityThresholds()
    dedup = dedup or DedupConfig()
    shards = shards or ShardConfig()
    executor = executor or ExecutorConfig()
    if shards.encoding not in ("png", "jpg"):
        raise ConfigError(f"shards.encoding must be 'png' or 'jpg', got {shards.encoding!r}")
    if executor.workers < 1:
        raise ConfigError(f"executor.workers must be >= 1, got {executor.workers}")
    if not 1 <= shards.quality <= 100:
        raise ConfigError(f"shards.quality must be in [1, 100], got {shards.quality}")
    if not 0 <= shards.png_level <= 9:
        raise ConfigError(f"shards.png_level must be in [0, 9], got {shards.png_level}")
    _parse_bytes(shards.chunk_bytes)  # before hours of work, not after
    if not inputs:
        raise ConfigError("inputs: give at least one input folder")
    counts = [len(spec.bands) if spec.bands is not None else 3 for spec in inputs]
    if len(set(counts)) > 1:
        listed = ", ".join(f"inputs[{i}] {n}" for i, n in enumerate(counts))
        raise ConfigError(
            "inputs: every input must give the same number of bands (a corpus is read as one tensor shape): "
            f"got {listed} (bands: None reads RGB, 3)"
        )
    if dedup.embedding_encoder is not None and not Path(dedup.embedding_encoder).is_file():
        raise DataError(f"dedup.embedding_encoder: encoder export not found: {dedup.embedding_encoder}")
    settings = CurationSettings(tiling, rules, shards, dedup)
    stages: dict[str, float] = {}

    # 1. list (before the output folder is made: a wrong input leaves nothing behind)
    sources, empty_rows, input_rules = list_inputs(inputs)
    if not sources and not empty_rows:
        raise DataError(f"inputs: no image file under {[i.root for i in inputs]}")
    eval_sources: list[SourceFile] = []
    for i, folder in enumerate(dedup.eval_sets):
        if not Path(folder).is_dir():
            raise DataError(f"dedup.eval_sets[{i}]: folder not found: {folder}")
        found, _, _ = list_inputs([CurateInput(root=folder, name=f"eval{i}")])
        eval_sources += found
    out = Path(output)
    work = out / "work"
    work.mkdir(parents=True, exist_ok=True)
    from rsfm.utils.files import remove_stale_temporaries

    remove_stale_temporaries(work)  # half-written results of a killed run
    stages["list"] = time.perf_counter() - t0
    progress(f"curate: {len(sources)} files in {len(inputs)} input(s), {len(eval_sources)} evaluation files")

    # 2. per file
    t = time.perf_counter()
    skey = _settings_key(settings)
    keys = [_file_key(s, input_rules[s.input], skey, "corpus") for s in sources]
    eval_keys = [_file_key(s, RasterRule(), skey, "eval") for s in eval_sources]
    tasks = [
        (s, input_rules[s.input], settings, str(work), k, "corpus")
        for s, k in zip(sources, keys, strict=True)
        if not (work / f"{k}.pkl").is_file()
    ]
    tasks += [
        (s, RasterRule(), settings, str(work), k, "eval")
        for s, k in zip(eval_sources, eval_keys, strict=True)
        if not (work / f"{k}.pkl").is_file()
    ]
    progress(f"curate: {len(tasks)} files to process, {len(sources) + len(eval_sources) - len(tasks)} done before")
    _run_tasks(tasks, executor, progress)
    stages["process"] = time.perf_counter() - t

    # 3. rows, ids and deduplication
    t = time.perf_counter()
    rows: list[dict[str, Any]] = []
    records = []
    for s, k in zip(sources, keys, strict=True):
        record = pickle.loads((work / f"{k}.pkl").read_bytes())
        file_rows = _rows_of(record, s)
        for r in file_rows:
            r["_key"] = k
        records.append((s, record, len(rows), len(file_rows)))
        rows += file_rows
    for r in empty_rows:
        rows.append(dict(r, level="file"))
    for i, r in enumerate(rows):
        r["id"] = i
        r.setdefault("detail", None)
        r["duplicate_of"] = None
        if r.get("transform") is not None:
            r["gsd"] = _gsd(r.get("crs"), r["transform"])
    _deduplicate(rows, records, eval_sources, eval_keys, work, dedup, progress)
    stages["dedup"] = time.perf_counter() - t

    # 4. shards, manifest, report
    t = time.perf_counter()
    _write_outputs(rows, inputs, input_rules, out, work, settings, progress)
    stages["write"] = time.perf_counter() - t
    excluded: dict[str, int] = {}
    for r in rows:
        if r["rule"] is not None:
            excluded[r["rule"]] = excluded.get(r["rule"], 0) + 1
    kept = sum(r["rule"] is None for r in rows)
    if not shards.keep_work:
        shutil.rmtree(work, ignore_errors=True)
    return CurateResult(
        output=out,
        kept=kept,
        excluded=excluded,
        files=len(sources) + len(empty_rows),
        processed=len(tasks),
        seconds=time.perf_counter() - t0,
        stage_seconds=stages,
    )


def _deduplicate(
    rows: list[dict[str, Any]],
    records: list[tuple[SourceFile, dict[str, Any], int, int]],
    eval_sources: list[SourceFile],
    eval_keys: list[str],
    work: Path,
    dedup: DedupConfig,
    progress: Callable[[str], None],
) -> None:
    """Mark eval overlaps and duplicates in ``rows`` (rule, detail, duplicate_of)."""
    search = {"exact_limit": dedup.exact_search_limit, "nprobe": dedup.ivf_nprobe}

    def drop(rows_: list[dict[str, Any]], rule: str, detail: str, of: int | None) -> None:
        for r in rows_:
            if r["rule"] is None:
                r.update(rule=rule, detail=detail, duplicate_of=of)

    # evaluation sets: files and tiles
    if eval_sources:
        e_files: dict[str, str] = {}
        e_tiles: dict[str, str] = {}
        e_p: list[str] = []
        e_d: list[str] = []
        e_name: list[str] = []
        for s, k in zip(eval_sources, eval_keys, strict=True):
            rec = pickle.loads((work / f"{k}.pkl").read_bytes())
            if rec.get("rule") or "phash" not in rec:
                continue
            e_files[rec["file_sha256"]] = s.path
            e_p.append(rec["phash"])
            e_d.append(rec["dhash"])
            e_name.append(s.path)
            for row in rec["rows"]:
                e_tiles[row["sha256"]] = s.path
                e_p.append(row["phash"])
                e_d.append(row["dhash"])
                e_name.append(s.path)
        # whole files (their thumbnails) and tiles against every evaluation image and tile
        q_p, q_d, q_rows = [], [], []
        for _, rec, start, n in records:
            if rec.get("rule") or "phash" not in rec:
                continue
            if rec["file_sha256"] in e_files:
                drop(rows[start : start + n], "eval_overlap", f"same file as {e_files[rec['file_sha256']]}", None)
                continue
            q_p.append(rec["phash"])
            q_d.append(rec["dhash"])
            q_rows.append(rows[start : start + n])
            for r in rows[start : start + n]:
                if r["rule"] is None and r["sha256"] in e_tiles:
                    drop([r], "eval_overlap", f"same pixels as {e_tiles[r['sha256']]}", None)
                elif r["rule"] is None:
                    q_p.append(r["phash"])
                    q_d.append(r["dhash"])
                    q_rows.append([r])
        if dedup.perceptual:
            hits = hamming_pairs(e_p, e_d, dedup.phash_threshold, dedup.dhash_threshold, queries=(q_p, q_d), **search)
            for group, found in zip(q_rows, hits, strict=True):
                if found:
                    drop(group, "eval_overlap", f"looks like {e_name[found[0]]}", None)

    # whole files: exact (bytes) and perceptual (thumbnails)
    files = [(s, rec, start, n) for s, rec, start, n in records if not rec.get("rule") and "phash" in rec]
    if dedup.image_level and files:
        live = [f for f in files if any(r["rule"] is None for r in rows[f[2] : f[2] + f[3]])]
        priority = sorted(range(len(live)), key=lambda i: (-live[i][1]["width"] * live[i][1]["height"], i))
        neighbours: list[list[int]] = [[] for _ in live]
        if dedup.exact:
            by_sha: dict[str, list[int]] = {}
            for i, f in enumerate(live):
                by_sha.setdefault(f[1]["file_sha256"], []).append(i)
            for same in by_sha.values():
                for i in same:
                    neighbours[i] += [j for j in same if j != i]
        if dedup.perceptual:
            near = hamming_pairs(
                [f[1]["phash"] for f in live],
                [f[1]["dhash"] for f in live],
                dedup.phash_threshold,
                dedup.dhash_threshold,
                **search,
            )
            for i, n in enumerate(near):
                neighbours[i] = sorted(set(neighbours[i]) | set(n))
        for item, of in greedy_keep(priority, neighbours).items():
            s, rec, start, n = live[item]
            ks, krec, kstart, kn = live[of]
            exact = rec["file_sha256"] == krec["file_sha256"]
            drop(
                rows[start : start + n],
                "exact_duplicate" if exact else "near_duplicate",
                f"{'same file as' if exact else 'resembles'} {ks.input}/{ks.source}",
                rows[kstart]["id"],
            )

    # tiles: exact (pixels), then perceptual
    def live_tiles() -> list[dict[str, Any]]:
        return [r for r in rows if r["rule"] is None]

    if dedup.exact:
        first: dict[str, dict[str, Any]] = {}
        for r in sorted(live_tiles(), key=lambda r: (-r["width"] * r["height"], r["id"])):
            if r["sha256"] in first:
                k = first[r["sha256"]]
                drop([r], "exact_duplicate", f"same pixels as {k['input']}/{k['source']} tile {k['id']}", k["id"])
            else:
                first[r["sha256"]] = r
    if dedup.perceptual:
        cand = live_tiles()
        near = hamming_pairs(
            [r["phash"] for r in cand],
            [r["dhash"] for r in cand],
            dedup.phash_threshold,
            dedup.dhash_threshold,
            **search,
        )
        priority = sorted(range(len(cand)), key=lambda i: (-cand[i]["width"] * cand[i]["height"], cand[i]["id"]))
        for item, of in greedy_keep(priority, near).items():
            k = cand[of]
            drop([cand[item]], "near_duplicate", f"resembles {k['input']}/{k['source']} tile {k['id']}", k["id"])
    if dedup.embedding_encoder:
        cand = live_tiles()
        features = _embed(cand, work, dedup, progress)
        near = embedding_pairs(features, dedup.embedding_threshold)
        priority = sorted(range(len(cand)), key=lambda i: (-cand[i]["width"] * cand[i]["height"], cand[i]["id"]))
        for item, of in greedy_keep(priority, near).items():
            k = cand[of]
            drop(
                [cand[item]],
                "embedding_duplicate",
                f"same content as {k['input']}/{k['source']} tile {k['id']}",
                k["id"],
            )
    counts: dict[str, int] = {}
    for r in rows:
        if r["rule"] in ("eval_overlap", "exact_duplicate", "near_duplicate", "embedding_duplicate"):
            counts[r["rule"]] = counts.get(r["rule"], 0) + 1
    progress(f"curate: deduplicated: {counts or 'no duplicate'}")


def _tile_bytes(work: Path, row: dict[str, Any], which: str) -> bytes:
    offset, size = row[which]
    with open(work / f"{row['_key']}.bin", "rb") as f:
        f.seek(offset)
        return f.read(size)


def _embed(rows: list[dict[str, Any]], work: Path, dedup: DedupConfig, progress: Callable[[str], None]) -> np.ndarray:
    """Pooled features ``(N, D)`` float32 of the tiles, by the encoder export ``dedup.embedding_encoder``."""
    import torch
    import torch.nn.functional as F

    from rsfm.data.io import decode_image
    from rsfm.models.export import load_encoder

    path = Path(dedup.embedding_encoder or "")
    if not path.is_file():
        raise DataError(f"dedup.embedding_encoder: encoder export not found: {path}")
    encoder = load_encoder(path, dynamic_img_size=True).eval()
    meta = getattr(encoder, "rsfm_meta", {}) or {}
    mean = torch.tensor(meta.get("mean") or [0.485, 0.456, 0.406]).view(1, -1, 1, 1)
    std = torch.tensor(meta.get("std") or [0.229, 0.224, 0.225]).view(1, -1, 1, 1)
    size = int(dedup.embedding_img_size)
    feats = []
    progress(f"curate: embedding {len(rows)} tiles with {path}")
    with torch.no_grad():
        for start in range(0, len(rows), dedup.embedding_batch_size):
            batch = []
            for r in rows[start : start + dedup.embedding_batch_size]:
                image = decode_image(_tile_bytes(work, r, "data"), f"x.{r['ext']}").float().div(255)
                batch.append(F.interpolate(image[None], size=(size, size), mode="bilinear", antialias=True)[0])
            x = (torch.stack(batch) - mean) / std
            out = encoder.forward_head(encoder.forward_features(x), pre_logits=True)
            feats.append(out.float().numpy())
    return np.concatenate(feats) if feats else np.zeros((0, 1), np.float32)


_MANIFEST_FIELDS: list[tuple[str, str]] = [
    ("id", "int64"),
    ("input", "string"),
    ("source", "string"),
    ("group", "string"),
    ("level", "string"),
    ("status", "string"),
    ("rule", "string"),
    ("detail", "string"),
    ("duplicate_of", "int64"),
    ("shard_index", "int64"),
    ("x", "int64"),
    ("y", "int64"),
    ("width", "int64"),
    ("height", "int64"),
    ("source_width", "int64"),
    ("source_height", "int64"),
    ("channels", "int64"),
    ("dtype", "string"),
    ("bands", "list<int64>"),
    ("raster_scale", "string"),
    ("percentiles", "list<double>"),
    ("stretch_low", "list<double>"),
    ("stretch_high", "list<double>"),
    ("crs", "string"),
    ("transform", "list<double>"),
    ("gsd", "double"),
    ("file_size", "int64"),
    ("file_sha256", "string"),
    ("sha256", "string"),
    ("phash", "string"),
    ("dhash", "string"),
    ("ext", "string"),
    ("nbytes", "int64"),
    ("nodata_fraction", "double"),
    ("saturated_fraction", "double"),
    ("brightness", "double"),
    ("grey_std", "double"),
    ("energy", "double"),
    ("entropy", "double"),
    ("band_mean", "list<double>"),
    ("band_std", "list<double>"),
    ("band_min", "list<int64>"),
    ("band_max", "list<int64>"),
]


def _parse_bytes(text: str | int) -> int:
    """``'64MB'``, ``'512KB'``, ``'1GB'`` or a number → bytes (decimal units).

    Raises:
        ConfigError: naming ``shards.chunk_bytes`` on anything else.
    """
    import re

    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]?B?)\s*", str(text), flags=re.IGNORECASE)
    if not match:
        raise ConfigError(f"shards.chunk_bytes: expected a size such as '64MB', got {text!r}")
    unit = match.group(2).upper().rstrip("B")
    return int(float(match.group(1)) * {"": 1, "K": 10**3, "M": 10**6, "G": 10**9}[unit])


def _arrow_type(name: str) -> Any:
    import pyarrow as pa

    simple = {"int64": pa.int64(), "string": pa.string(), "double": pa.float64()}
    if name.startswith("list<"):
        return pa.list_(simple[name[5:-1]])
    return simple[name]


def _write_outputs(
    rows: list[dict[str, Any]],
    inputs: list[CurateInput],
    input_rules: dict[str, RasterRule],
    out: Path,
    work: Path,
    settings: CurationSettings,
    progress: Callable[[str], None],
) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from rsfm.curation.report import write_report
    from rsfm.data.shards import MANIFEST, write_shards
    from rsfm.utils.files import atomic_write

    kept = [r for r in rows if r["rule"] is None]
    for r in rows:
        r["status"] = "kept" if r["rule"] is None else "excluded"
        rule = input_rules.get(r["input"])
        r["bands"] = list(rule.bands) if rule is not None and rule.bands is not None else None
        r["raster_scale"] = str(rule.scale) if rule is not None else None
        r["percentiles"] = list(rule.percentiles) if rule is not None else None
        r["shard_index"] = None
        r["nbytes"] = r["data"][1] if r.get("data") and r["rule"] is None else None
    for i, r in enumerate(kept):
        r["shard_index"] = i

    def items() -> Any:
        for r in kept:
            yield r["id"], r["ext"], _tile_bytes(work, r, "data")

    target = _parse_bytes(settings.shards.chunk_bytes)
    mean = sum(r["nbytes"] for r in kept) / max(1, len(kept))
    n = write_shards(out, items(), chunk_size=max(1, round(target / max(mean, 1.0))))
    progress(f"curate: {n} tiles written to {out / 'shards'}")
    schema = pa.schema([(name, _arrow_type(kind)) for name, kind in _MANIFEST_FIELDS])
    columns = {name: [r.get(name) for r in rows] for name, _ in _MANIFEST_FIELDS}
    table = pa.table(columns, schema=schema)
    atomic_write(out / MANIFEST, lambda tmp: pq.write_table(table, tmp))

    def thumb_of(row: dict[str, Any]) -> bytes | None:
        from rsfm.data.io import decode_image

        if row.get("thumb"):
            return _tile_bytes(work, row, "thumb")
        if row.get("data"):
            return _thumb(decode_image(_tile_bytes(work, row, "data"), f"x.{row['ext']}").numpy())
        return None

    write_report(rows, inputs, out, settings, thumb_of)
    progress(f"curate: manifest {out / MANIFEST}, report {out / 'report.md'}")


def _instantiate(spec: Any, where: str) -> Any:
    """A ``{class_path, init_args}`` mapping → the object (an object passes through)."""
    if not isinstance(spec, dict):
        return spec
    import importlib

    from rsfm.curation.rules import CurationRule

    path = spec.get("class_path", "")
    module, _, name = path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as err:
        raise ConfigError(f"{where}: cannot import {path!r} ({err})") from None
    if not (isinstance(cls, type) and issubclass(cls, CurationRule)):
        raise ConfigError(f"{where}: {path} is not a rsfm.curation.rules.CurationRule subclass")
    return cls(**(spec.get("init_args") or {}))


def curate_recipe(recipe: dict[str, Any], progress: Callable[[str], None] = print) -> CurateResult:
    """Run :func:`curate` from a resolved ``rsfm curate`` recipe (:func:`rsfm.engine.config.load_recipe`).

    Raises:
        ConfigError: naming ``section.key`` on an invalid value.
        DataError: as :func:`curate`.
    """

    def section(name: str, cls: type) -> Any:
        values = dict(recipe.get(name) or {})
        if name == "rules":
            values["custom"] = [
                _instantiate(spec, f"rules.custom[{i}]") for i, spec in enumerate(values.get("custom") or [])
            ]
        try:
            return cls(**values)
        except (TypeError, ValueError) as err:
            message = str(err)
            raise ConfigError(message if message.startswith(f"{name}.") else f"{name}: {message}") from None

    inputs = []
    for i, spec in enumerate(recipe["inputs"]):
        try:
            inputs.append(CurateInput(**spec))
        except ValueError as err:  # names its field
            raise ConfigError(f"inputs[{i}].{err}") from None
        except TypeError as err:
            raise ConfigError(f"inputs[{i}]: {err}") from None
    return curate(
        inputs,
        recipe["output"],
        tiling=section("tiling", Tiling),
        rules=section("rules", QualityThresholds),
        dedup=section("dedup", DedupConfig),
        shards=section("shards", ShardConfig),
        executor=section("executor", ExecutorConfig),
        progress=progress,
    )
