"""Sharded image corpora: the format ``rsfm curate`` writes and ``data.shards`` reads.

A corpus folder (or the same layout under an ``s3://``, ``gs://`` or ``azure://`` URL) holds

``shards/``
    LitData chunks (``index.json`` + ``chunk-*.bin``), one item per kept tile:
    ``{'id': int, 'ext': str, 'data': bytes}``, ``data`` being the encoded tile (``.png``,
    ``.jpg`` or, for tiles that are not 3-band, a uint8 ``.npy`` array).
``manifest.parquet``
    one row per candidate (kept and excluded) with, for kept ones, ``shard_index`` (the
    item's position in ``shards/``), ``id``, ``source`` and ``group`` (see
    :data:`MANIFEST_COLUMNS` in :mod:`rsfm.data.shards`).

LitData was chosen for the chunks because it is maintained by the authors of Lightning
(which rsfm trains with), reads local folders and object stores alike with a local chunk
cache, and gives random access by index. Random access matters: rsfm's
:class:`~rsfm.data.samplers.EpochSampler` then orders, shards across ranks and resumes a
corpus exactly as it does a folder, so the first epoch over a corpus written from a folder
visits the same images in the same order as the folder itself.

.. versionadded:: 0.3
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from rsfm.data.device_decode import DeferredAugment, deferred_item
from rsfm.data.io import BadImageError, RasterRule, decode_image
from rsfm.data.samplers import parse_key, sample_seed
from rsfm.data.splits import check_fraction, stratified_split
from rsfm.utils.errors import DataError

__all__ = [
    "MANIFEST",
    "MANIFEST_COLUMNS",
    "SHARDS",
    "ShardCorpus",
    "ShardDataset",
    "check_chunks",
    "encode_tile",
    "is_url",
    "write_shards",
]

#: sub-folder of a corpus holding the LitData chunks
SHARDS = "shards"
#: the corpus's manifest file
MANIFEST = "manifest.parquet"
#: columns every manifest has (``rsfm curate`` adds more: window, georeference, hashes, statistics)
MANIFEST_COLUMNS = ("id", "source", "group", "status", "rule", "shard_index", "channels")

_URL_SCHEMES = ("s3://", "gs://", "gcs://", "azure://", "abfs://", "hf://")


def is_url(location: str | os.PathLike[str]) -> bool:
    """Whether ``location`` is an object-store URL (``s3://``, ``gs://``...) rather than a path."""
    return str(location).startswith(_URL_SCHEMES)


def encode_tile(image: np.ndarray, ext: str = "png", quality: int = 95, png_level: int = 1) -> tuple[str, bytes]:
    """Encode a ``(C, H, W)`` uint8 tile for a shard.

    Args:
        image: ``(C, H, W)`` uint8 array.
        ext: ``'png'`` (lossless) or ``'jpg'`` (``quality``); tiles with a channel count other
            than 3 are always stored as ``'npy'`` (lossless, any band count).
        quality: JPEG quality, 1-100.
        png_level: zlib level of PNG, 0-9 (1: about 3x faster than 6 for ~10 % more bytes on
            aerial tiles).

    Returns:
        ``(ext, bytes)``: the extension actually used and the encoded tile. Encoding is
        deterministic (same pixels, same bytes).

    Raises:
        ValueError: on a non-uint8 or non-3-D array, or an unknown ``ext``.
    """
    import io

    from PIL import Image

    if image.dtype != np.uint8 or image.ndim != 3:
        raise ValueError(f"tiles must be (C, H, W) uint8, got {image.dtype} {image.shape}")
    if image.shape[0] != 3:
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(image), allow_pickle=False)
        return "npy", buf.getvalue()
    if ext not in ("png", "jpg"):
        raise ValueError(f"tile encoding must be 'png' or 'jpg', got {ext!r}")
    pil = Image.fromarray(np.ascontiguousarray(image.transpose(1, 2, 0)))
    buf = io.BytesIO()
    if ext == "png":
        pil.save(buf, format="PNG", compress_level=int(png_level))
    else:
        pil.save(buf, format="JPEG", quality=int(quality), subsampling=0 if quality >= 90 else 2)
    return ext, buf.getvalue()


def write_shards(
    corpus: str | os.PathLike[str],
    items: Iterable[tuple[int, str, bytes]],
    chunk_size: int = 256,
) -> int:
    """Write ``items`` as the LitData chunks of ``corpus/shards``, atomically.

    The chunks go to ``corpus/shards.partial`` first, which then replaces ``corpus/shards``
    in one rename: a writer killed midway leaves the previous shards (or none), never a
    partial set that looks complete. Output bytes depend only on the items and
    ``chunk_size``. (Chunks are cut by item count: LitData 0.2's byte target packs
    everything after the first chunk into one chunk when items grow in size.)

    Args:
        corpus: corpus folder (created if missing).
        items: ``(id, ext, data)`` per tile, in shard order.
        chunk_size: items per chunk, >= 1.

    Returns:
        The number of items written.

    Raises:
        ValueError: if ``chunk_size < 1``.
    """
    from litdata.streaming.writer import BinaryWriter

    corpus = Path(corpus)
    final, partial = corpus / SHARDS, corpus / f"{SHARDS}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    writer = BinaryWriter(str(partial), chunk_size=int(chunk_size))
    n = 0
    for sample_id, ext, data in items:
        writer.add_item(n, {"id": int(sample_id), "ext": str(ext), "data": bytes(data)})
        n += 1
    if n:
        writer.done()
        writer.merge(1)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(partial, final)
    return n


def check_chunks(shards: str | os.PathLike[str]) -> None:
    """Check that every chunk file of a local LitData folder has the size its ``index.json`` records.

    A chunk cut short (an interrupted copy, a full disk) would otherwise make LitData wait for
    it as if it were still downloading ("Timed out ... waiting for chunk"). Only sizes are
    compared (a stat per chunk, no read).

    Args:
        shards: the folder holding ``index.json`` and the ``chunk-*.bin`` files.

    Raises:
        DataError: naming the chunk file, if it is missing or its size differs from the
            ``chunk_bytes`` recorded for it (truncated or corrupt), or if ``index.json`` cannot
            be read.
    """
    import json

    shards = Path(shards)
    index = shards / "index.json"
    try:
        chunks = json.loads(index.read_text())["chunks"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise DataError(f"data.shards: cannot read {index} ({err}); expected LitData's chunk index") from None
    for chunk in chunks:
        if not isinstance(chunk, dict) or "filename" not in chunk:
            raise DataError(f"data.shards: {index} lists a chunk without a filename: {chunk!r}")
        path = shards / str(chunk["filename"])
        expected = chunk.get("chunk_bytes")
        try:
            size = path.stat().st_size
        except OSError as err:
            raise DataError(f"data.shards: shard chunk {path} listed in {index} cannot be read ({err})") from None
        if isinstance(expected, int) and size != expected:
            raise DataError(
                f"data.shards: shard chunk {path} is {size} bytes, {index} records {expected}: the chunk is "
                f"truncated or corrupt (copy the corpus again, or re-run `rsfm curate`)"
            )


@dataclass
class ShardCorpus:
    """The kept tiles of a corpus, in shard order, as its manifest lists them.

    Attributes:
        location: the corpus folder or URL.
        ids: ``(N,)`` int64 global ids (``manifest.id``) of the kept tiles, in shard order.
        sources: source file of each kept tile (``manifest.source``).
        groups: split group of each kept tile (``manifest.group``).
        channels: bands per tile (all tiles of a corpus have the same count).
        inputs: input name of each kept tile (``manifest.input``; '' when absent).
        universe: ``((input, source), group)`` of every file the curation listed, kept or
            excluded, in manifest order: what the held-out split is drawn over.
    """

    location: str
    ids: np.ndarray
    sources: list[str]
    groups: list[str]
    channels: int
    inputs: list[str] = field(default_factory=list)
    universe: list[tuple[tuple[str, str], str]] = field(default_factory=list)

    @classmethod
    def open(cls, location: str | os.PathLike[str]) -> ShardCorpus:
        """Read the manifest of a corpus written by ``rsfm curate``.

        Args:
            location: corpus folder, or its ``s3://``/``gs://``/``azure://`` URL.

        Raises:
            DataError: naming ``data.shards`` if the folder, its ``shards/index.json`` or
                its manifest is missing, or the manifest lacks a column or disagrees with
                the shards.
        """
        import pyarrow.parquet as pq

        location = str(location)
        if not is_url(location):
            root = Path(location)
            if not root.is_dir():
                raise DataError(f"data.shards: corpus folder not found: {root}")
            for need in (Path(SHARDS) / "index.json", Path(MANIFEST)):
                if not (root / need).is_file():
                    raise DataError(
                        f"data.shards: {root / need} is missing; expected a corpus written by "
                        "`rsfm curate` (shards/index.json and manifest.parquet)"
                    )
            check_chunks(root / SHARDS)
        path = f"{location.rstrip('/')}/{MANIFEST}"
        try:
            names = pq.read_schema(path).names
            optional = [c for c in ("input", "file_size") if c in names]
            table = pq.read_table(path, columns=list(MANIFEST_COLUMNS) + optional)
        except (OSError, ValueError, KeyError) as err:
            raise DataError(f"data.shards: cannot read {path}: {err}") from None
        col = {name: table.column(name).to_pylist() for name in table.column_names}
        n_rows = table.num_rows
        inputs = col.get("input") or [""] * n_rows
        kept = [i for i in range(n_rows) if col["status"][i] == "kept"]
        kept.sort(key=lambda i: col["shard_index"][i])
        if not kept:
            raise DataError(f"data.shards: {path} lists no kept tile")
        if [col["shard_index"][i] for i in kept] != list(range(len(kept))):
            raise DataError(f"data.shards: {path}: shard_index of the kept rows must be 0..N-1")
        channels = {col["channels"][i] for i in kept}
        if len(channels) != 1:
            raise DataError(f"data.shards: {path}: tiles have different band counts {sorted(channels)}")
        # every file the curation listed, kept or not, except those the folder scan already set
        # aside (empty files, size 0, and files that cannot be stat'ed, size null), which
        # ImageFolder does not list either: the held-out split is drawn over these, so
        # dropping a file does not move the others
        sizes = col.get("file_size")
        listed = [i for i in range(n_rows) if sizes[i] is not None and sizes[i] > 0] if sizes is not None else kept
        universe: dict[tuple[str, str], str] = {}
        for i in sorted(listed, key=lambda i: col["id"][i]):
            universe.setdefault((inputs[i], col["source"][i]), col["group"][i] or "")
        return cls(
            location=location,
            ids=np.asarray([col["id"][i] for i in kept], dtype=np.int64),
            sources=[col["source"][i] for i in kept],
            groups=[col["group"][i] or "" for i in kept],
            channels=int(channels.pop()),
            inputs=[inputs[i] for i in kept],
            universe=list(universe.items()),
        )

    def split(self, split: str, fraction: float, seed: int) -> list[int]:
        """Positions (shard indices) of one split, held out by source file.

        The split is :func:`~rsfm.data.splits.stratified_split` over every file the curation
        listed (kept or excluded, in manifest order), grouped by ``group``: every tile of a
        source is on the same side (no leakage between the tiles of one scene), and dropping
        a file does not move the others. For a corpus curated from one folder, it holds out
        exactly the files :class:`~rsfm.data.folder.ImageFolder` holds out of that folder with
        the same ``fraction`` and ``seed`` (so ``rsfm evaluate`` on that folder tests on files
        pretraining never saw).

        Args:
            split: ``'all'``, ``'train'`` or ``'val'``.
            fraction: share of each group's sources held out, 0 <= x < 1.
            seed: split seed.

        Raises:
            ValueError: on an unknown split, or ``'val'`` with ``fraction == 0``.
        """
        if split not in ("all", "train", "val"):
            raise ValueError(f"split must be 'all', 'train' or 'val', got {split!r}")
        check_fraction(fraction)
        if split == "all" or (split == "train" and fraction == 0):
            return list(range(len(self.ids)))
        if fraction == 0:
            raise ValueError("split='val' needs a fraction > 0")
        keys = list(zip(self._inputs(), self.sources, strict=True))
        universe = self.universe or list(dict(zip(keys, self.groups, strict=True)).items())
        _, val = stratified_split([g for _, g in universe], fraction, seed)
        held_out = {universe[i][0] for i in val}
        return [pos for pos, key in enumerate(keys) if (key in held_out) == (split == "val")]

    def _inputs(self) -> list[str]:
        return self.inputs or [""] * len(self.sources)


class ShardDataset(Dataset[dict[str, Any]]):
    """Random-access tiles of a sharded corpus, one split, with seeded augmentation.

    Items are those of :class:`~rsfm.data.folder.ImageFolder` plus the tile's global id:
    ``{'image': (C, H, W) float32, 'index': int, 'id': int}`` (``index`` is the position in
    this split, ``id`` the manifest's global id, stable across splits and runs, e.g. for
    data pruning). A tile that cannot be decoded comes back as ``{'skipped': (name, reason),
    'index': int, 'id': int}`` and is counted, not fatal.

    Args:
        corpus: an opened :class:`ShardCorpus`.
        split: ``'all'``, ``'train'`` or ``'val'`` (see :meth:`ShardCorpus.split`).
        val_fraction: share of sources held out.
        split_seed: split seed.
        transform: maps a ``(C, H, W)`` uint8 tile to float32, drawing randomness from torch's
            global RNG (seeded per ``(seed, epoch, index)``).
        seed: augmentation seed.
        cache_dir: where LitData caches chunks of a remote corpus (None: its default).

    .. versionadded:: 0.3
    """

    #: reads ``(index, epoch)`` keys and seeds its own augmentation
    takes_keys = True

    def __init__(
        self,
        corpus: ShardCorpus,
        split: str = "all",
        val_fraction: float = 0.0,
        split_seed: int = 0,
        transform: Callable[[Tensor], Tensor] | None = None,
        seed: int = 0,
        cache_dir: str | None = None,
    ) -> None:
        self.corpus = corpus
        self.split = split
        self.positions = corpus.split(split, val_fraction, split_seed)
        self.transform = transform
        self.seed = int(seed)
        self.cache_dir = cache_dir
        self._reader: Any = None
        names = sorted(set(corpus.groups))
        index_of = {name: i for i, name in enumerate(names)}
        #: sorted group names of the whole corpus, and the group of each item of this split
        self.group_names: list[str] = names
        self.groups: list[int] = [index_of[corpus.groups[p]] for p in self.positions]
        #: files not in the corpus (nothing: curation already counted them in its report)
        self.scan_skipped: list[tuple[str, str]] = []

    @property
    def ids(self) -> np.ndarray:
        """``(len(self),)`` int64 global ids of this split's tiles."""
        return self.corpus.ids[self.positions]

    def _open(self) -> Any:
        # opened lazily, once per process: LitData readers must not cross a fork
        if self._reader is None:
            from litdata import StreamingDataset

            location = self.corpus.location.rstrip("/") + "/" + SHARDS
            self._reader = StreamingDataset(location, cache_dir=self.cache_dir)
        return self._reader

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_reader"] = None
        return state

    def __len__(self) -> int:
        """Number of tiles in this split."""
        return len(self.positions)

    def raw(self, index: int) -> tuple[int, str, bytes]:
        """``(id, ext, encoded bytes)`` of the tile at ``index`` of this split, undecoded."""
        item = self._open()[self.positions[index]]
        return int(item["id"]), str(item["ext"]), bytes(item["data"])

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        """Read, decode and augment one tile.

        Args:
            key: an index or ``(index, epoch)``.

        Raises:
            IndexError: if the index is out of range.
            DataError: if the shards disagree with the manifest (a tile's id differs).
        """
        index, epoch = parse_key(key, len(self.positions))
        sample_id, ext, data = self.raw(index)
        expected = int(self.corpus.ids[self.positions[index]])
        if sample_id != expected:
            raise DataError(
                f"data.shards: {self.corpus.location}: shard item {self.positions[index]} has id {sample_id}, "
                f"the manifest says {expected} (shards and manifest.parquet come from different runs)"
            )
        name = f"{self.corpus.sources[self.positions[index]]}#{sample_id}.{ext}"
        if isinstance(self.transform, DeferredAugment):
            deferred = deferred_item(self.transform, data, name, self.seed, epoch, index)
            if deferred is not None:
                return {**deferred, "index": index, "id": sample_id}
        try:
            image = decode_image(data, name, RasterRule())
        except BadImageError as err:
            return {"skipped": (name, err.reason), "index": index, "id": sample_id}
        if self.transform is None:
            out = image.to(torch.float32).div_(255.0)
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(sample_seed(self.seed, epoch, index))
                out = self.transform(image)
        if isinstance(out, dict):  # device-side augmentation: the tile travels decoded, uncropped
            return {**out, "name": name, "index": index, "id": sample_id}
        return {"image": out, "index": index, "id": sample_id}

    def __repr__(self) -> str:
        return f"ShardDataset(corpus={self.corpus.location!r}, split={self.split!r}, samples={len(self)})"
