"""A sharded corpus written straight from an image folder, for the tests of ``data.shards``.

:func:`folder_corpus` stands in for ``rsfm curate`` on a folder of whole images: one tile per
file, each file's original bytes (a JPEG passes through undecoded), in the order and with the
groups that :class:`~rsfm.data.folder.ImageFolder` gives the folder.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from rsfm.data.folder import scan_folder
from rsfm.data.shards import MANIFEST, write_shards

__all__ = ["folder_corpus"]


def folder_corpus(folder: Path, out: Path, chunk_size: int = 256) -> Path:
    """Write the images of ``folder`` as a corpus at ``out`` (``shards/`` + ``manifest.parquet``).

    Files are listed as :func:`~rsfm.data.folder.scan_folder` lists them (sorted relative
    paths); tile ``i`` is file ``i``: ``id = i``, ``source`` = its relative path, ``group`` =
    the first path component (``''`` for a file directly in ``folder``), ``status = 'kept'``,
    ``rule = None``, ``shard_index = i``, ``channels = 3``.

    Args:
        folder: folder of 3-band images (any depth).
        out: corpus folder to create.
        chunk_size: tiles per LitData chunk (small values give several chunks).

    Returns:
        ``out``.
    """
    files, relative, _ = scan_folder(folder)
    write_shards(
        out,
        ((i, path.suffix.lower().lstrip("."), path.read_bytes()) for i, path in enumerate(files)),
        chunk_size=chunk_size,
    )
    groups = [rel.partition("/")[0] if "/" in rel else "" for rel in relative]
    n = len(files)
    table = pa.table(
        {
            "id": pa.array(range(n), pa.int64()),
            "source": pa.array(relative, pa.string()),
            "group": pa.array(groups, pa.string()),
            "status": pa.array(["kept"] * n, pa.string()),
            "rule": pa.array([None] * n, pa.string()),
            "shard_index": pa.array(range(n), pa.int64()),
            "channels": pa.array([3] * n, pa.int64()),
        }
    )
    pq.write_table(table, out / MANIFEST)
    return out
