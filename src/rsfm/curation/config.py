"""The sections of an ``rsfm curate`` recipe (checked by the same parser as every command).

.. versionadded:: 0.3
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["CurateInput", "DedupConfig", "ExecutorConfig", "ShardConfig"]


@dataclass
class CurateInput:
    """One input folder of a curation run (the recipe's ``inputs`` list).

    Attributes:
        root: folder of images and rasters, searched recursively.
        name: the input's name in the manifest and the report (None: the folder's name).
        bands: 0-based bands to keep (None: RGB by :class:`~rsfm.data.io.RasterRule`'s rule).
        raster_scale: ``'auto'`` (percentile stretch of non-8-bit rasters, scene-wide for
            sliced ones) or a divisor (e.g. 10000 for Sentinel-2 L2A).
        percentiles: ``[low, high]`` of the ``'auto'`` stretch.
        include: glob patterns (``fnmatch``) on the path relative to ``root``; a file is an
            input only if it matches one (None: every image file), e.g. ``['*/images/*']``.

    Raises:
        ValueError: naming the field, for ``percentiles`` that are not ``[low, high]`` within
            [0, 100] or a ``raster_scale`` that is neither ``'auto'`` nor a positive number.
    """

    root: str
    name: str | None = None
    bands: list[int] | None = None
    raster_scale: str | float = "auto"
    percentiles: list[float] = field(default_factory=lambda: [2.0, 98.0])
    include: list[str] | None = None

    def __post_init__(self) -> None:
        if len(self.percentiles) != 2 or not 0 <= self.percentiles[0] < self.percentiles[1] <= 100:
            raise ValueError(f"percentiles must be [low, high] with 0 <= low < high <= 100, got {self.percentiles}")
        if self.raster_scale != "auto":
            try:
                scale = float(self.raster_scale)
            except (TypeError, ValueError):
                scale = float("nan")
            if not scale > 0:
                raise ValueError(f"raster_scale must be 'auto' or a positive divisor, got {self.raster_scale!r}")


@dataclass
class DedupConfig:
    """The ``dedup`` section (see :mod:`rsfm.curation.dedup`).

    Attributes:
        exact: drop tiles whose pixels (or files whose bytes) equal a kept one's.
        perceptual: drop near-duplicates by pHash and dHash.
        phash_threshold: largest pHash Hamming distance of a near-duplicate, bits.
        dhash_threshold: largest dHash Hamming distance of a near-duplicate, bits.
        exact_search_limit: largest number of hashes searched exactly (brute force); above
            it, faiss' IVF index, approximate: 98 % of the pairs at 100k tiles (see
            :func:`rsfm.curation.dedup.hamming_pairs`).
        ivf_nprobe: IVF lists searched per query above ``exact_search_limit``.
        image_level: also compare whole images (thumbnails), so that a resized copy of a
            scene that is sliced is found although no tile of it matches.
        eval_sets: folders of evaluation images a corpus must never contain: a tile or file
            matching one of them (exactly or perceptually) is dropped as ``eval_overlap``.
        embedding_encoder: an rsfm encoder export (``encoder.safetensors``); when set, tiles
            whose pooled features have cosine similarity >= ``embedding_threshold`` with a
            kept tile's are dropped as ``embedding_duplicate``.
        embedding_threshold: cosine similarity of an embedding duplicate, (0, 1].
        embedding_img_size: side the tiles are resized to for the encoder, pixels.
        embedding_batch_size: tiles per encoder batch.

    Raises:
        ValueError: naming ``dedup.<field>`` for a value out of its range, when the recipe is
            read rather than after hours of hashing.
    """

    exact: bool = True
    perceptual: bool = True
    phash_threshold: int = 8
    dhash_threshold: int = 10
    exact_search_limit: int = 200_000
    ivf_nprobe: int = 64
    image_level: bool = True
    eval_sets: list[str] = field(default_factory=list)
    embedding_encoder: str | None = None
    embedding_threshold: float = 0.97
    embedding_img_size: int = 224
    embedding_batch_size: int = 32

    def __post_init__(self) -> None:
        for name in ("phash_threshold", "dhash_threshold"):
            if not 0 <= getattr(self, name) <= 63:
                raise ValueError(f"dedup.{name} must be in [0, 63] bits, got {getattr(self, name)}")
        if not 0.0 < self.embedding_threshold <= 1.0:
            raise ValueError(f"dedup.embedding_threshold must be in (0, 1], got {self.embedding_threshold}")
        for name in ("ivf_nprobe", "embedding_img_size", "embedding_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"dedup.{name} must be >= 1, got {getattr(self, name)}")
        if self.exact_search_limit < 0:
            raise ValueError(f"dedup.exact_search_limit must be >= 0, got {self.exact_search_limit}")


@dataclass
class ShardConfig:
    """The ``shards`` section: how kept tiles are stored (:mod:`rsfm.data.shards`).

    Attributes:
        encoding: ``'png'`` (lossless) or ``'jpg'`` for tiles cut from a larger image.
        quality: JPEG quality, 1-100.
        png_level: zlib level of PNG tiles, 0-9 (1: fastest; 6 saves about 10 % of the bytes of
            aerial tiles at 3x the encoding time).
        keep_source_bytes: store a file kept whole (JPEG, PNG... under the default band
            rule) as its original bytes: no re-encoding, no loss, no growth.
        chunk_bytes: target size of a LitData chunk (``'64MB'``).
        examples_per_rule: images per contact sheet of the report.
        keep_work: keep the per-file intermediate results (``work/``) after a complete run.
    """

    encoding: str = "png"
    quality: int = 95
    png_level: int = 1
    keep_source_bytes: bool = True
    chunk_bytes: str = "64MB"
    examples_per_rule: int = 16
    keep_work: bool = False


@dataclass
class ExecutorConfig:
    """The ``executor`` section: where the per-file work runs.

    Attributes:
        workers: 1: in this process; more: that many local Dask worker processes.
        scheduler: address of a running Dask distributed scheduler (``tcp://host:8786``),
            e.g. started on a SLURM allocation with dask-jobqueue; the output folder must then
            be on a file system every worker sees. Overrides ``workers``.
    """

    workers: int = 1
    scheduler: str | None = None
