"""Deduplication of a corpus: exact (content hash), perceptual (pHash and dHash) and embedding.

* **Exact**: SHA-256 of the decoded tile pixels (and of the file bytes for whole files):
  copies of a file, whatever their name or folder.
* **Perceptual**: the 64-bit pHash (DCT of a 32×32 grey thumbnail) and dHash (signs of
  horizontal gradients of a 9×8 thumbnail) of the ``imagehash`` library. Two images are
  near-duplicates when both Hamming distances are within their thresholds: re-encoded,
  resized or slightly recoloured copies. Requiring both cuts false matches between distinct
  low-texture scenes (fields, water), which a single 64-bit hash of a smooth image meets
  easily. The pairs are found with faiss' binary indexes: exact brute force up to 200k
  tiles, an IVF index above (see :func:`hamming_pairs`).
* **Embedding** (optional): cosine similarity of an rsfm encoder's pooled features above a
  threshold, with a faiss inner-product index.

Which copy survives: the one with more pixels, then the one first in input order (inputs in
recipe order, files by path, tiles row-major). Groups are resolved greedily in that order,
so a tile is dropped only when a tile already kept matches it; the manifest names that tile
(``duplicate_of``).

.. versionadded:: 0.3
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "HASH_BYTES",
    "binary_index",
    "embedding_pairs",
    "greedy_keep",
    "hamming_pairs",
    "perceptual_hashes",
    "pixel_sha256",
]

#: bytes of one perceptual hash (64 bits)
HASH_BYTES = 8


def pixel_sha256(tile: np.ndarray) -> str:
    """Hex SHA-256 of a ``(C, H, W)`` uint8 tile's shape and pixels."""
    digest = hashlib.sha256(np.asarray(tile.shape, dtype=np.int64).tobytes())
    digest.update(np.ascontiguousarray(tile).tobytes())
    return digest.hexdigest()


def perceptual_hashes(tile: np.ndarray) -> tuple[str, str]:
    """64-bit pHash and dHash of a tile, as 16-digit hex strings.

    Args:
        tile: ``(C, H, W)`` uint8 (3 bands: RGB; otherwise the band mean is hashed).

    Returns:
        ``(phash, dhash)``.
    """
    import imagehash
    from PIL import Image

    if tile.shape[0] == 3:
        image = Image.fromarray(np.ascontiguousarray(tile.transpose(1, 2, 0)))
    else:
        image = Image.fromarray(np.rint(tile.astype(np.float32).mean(axis=0)).astype(np.uint8))
    return str(imagehash.phash(image)), str(imagehash.dhash(image))


def _codes(hexes: Sequence[str]) -> np.ndarray:
    return np.frombuffer(b"".join(bytes.fromhex(h) for h in hexes), dtype=np.uint8).reshape(len(hexes), HASH_BYTES)


def hamming_pairs(
    phashes: Sequence[str],
    dhashes: Sequence[str],
    phash_threshold: int,
    dhash_threshold: int,
    queries: tuple[Sequence[str], Sequence[str]] | None = None,
    exact_limit: int = 200_000,
    nprobe: int = 64,
) -> list[list[int]]:
    """Near-duplicate neighbours by pHash and dHash Hamming distance.

    Candidates come from the pHash index and are kept when the dHash is also within its
    threshold. Up to ``exact_limit`` indexed items the search is exact: faiss' brute-force
    binary index (:class:`faiss.IndexBinaryFlat`, SIMD popcounts), which measured faster
    here than faiss' multi-index hashing at every size up to 100k. Its cost grows with the
    square of the corpus; above ``exact_limit``, a binary IVF index
    (:class:`faiss.IndexBinaryIVF`, ``min(4·sqrt(N), N)`` lists, ``nprobe`` of them searched per
    query) compares each tile with about ``nprobe / (4·sqrt(N))`` of the corpus. It is
    approximate: at 100k synthetic-from-real tiles it found 98 % of the exact pairs with
    ``nprobe=64`` (94 % with 32, 99.6 % with 128; ``benchmarks/curation.py``).

    Args:
        phashes: hex pHashes of the indexed items.
        dhashes: hex dHashes, same order.
        phash_threshold: largest pHash distance of a match, bits (0-63).
        dhash_threshold: largest dHash distance of a match, bits (0-63).
        queries: ``(phashes, dhashes)`` of other items to look up (None: the indexed items
            themselves, each then excluded from its own list).
        exact_limit: largest index searched exactly.
        nprobe: IVF lists searched per query above ``exact_limit``.

    Returns:
        For each query, the indices of the indexed items within both thresholds, ascending.

    Raises:
        ValueError: if a threshold is outside [0, 63].
    """
    for name, t in (("phash_threshold", phash_threshold), ("dhash_threshold", dhash_threshold)):
        if not 0 <= t <= 63:
            raise ValueError(f"dedup.{name} must be in [0, 63] bits, got {t}")
    qp, qd = (phashes, dhashes) if queries is None else queries
    if not len(phashes) or not len(qp):
        return [[] for _ in qp]
    base_p, base_d = _codes(phashes), _codes(dhashes)
    query_p, query_d = _codes(qp), _codes(qd)
    index = binary_index(base_p, exact_limit, nprobe)
    lims, _, ids = index.range_search(query_p, phash_threshold + 1)  # faiss: distance < radius
    lims = lims.astype(np.int64)
    table = np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1).sum(axis=1)
    out: list[list[int]] = []
    for q in range(len(qp)):
        cand = ids[lims[q] : lims[q + 1]].astype(np.int64)
        if queries is None:
            cand = cand[cand != q]
        if cand.size:
            dist = table[np.bitwise_xor(base_d[cand], query_d[q])].sum(axis=1)
            cand = cand[dist <= dhash_threshold]
        out.append(sorted(int(c) for c in cand))
    return out


def binary_index(codes: np.ndarray, exact_limit: int = 200_000, nprobe: int = 64) -> Any:
    """A faiss index of ``(N, 8)`` uint8 hash codes: exact up to ``exact_limit``, IVF above.

    The IVF coarse quantiser is trained on a seeded sample, so the same codes give the same
    index (and the same pairs) in every run.
    """
    import faiss

    n = len(codes)
    if n <= exact_limit:
        index = faiss.IndexBinaryFlat(64)
    else:
        nlist = max(1, min(int(4 * np.sqrt(n)), n))  # faiss trains at least one point per list
        index = faiss.IndexBinaryIVF(faiss.IndexBinaryFlat(64), 64, nlist)
        sample = np.random.default_rng(0).choice(n, size=min(n, 64 * nlist), replace=False)
        index.train(codes[np.sort(sample)])
        index.nprobe = int(nprobe)
    index.add(codes)
    return index


def embedding_pairs(features: np.ndarray, threshold: float) -> list[list[int]]:
    """Neighbours by cosine similarity of features.

    Args:
        features: ``(N, D)`` float features (normalised here).
        threshold: smallest cosine similarity of a match, in (0, 1].

    Returns:
        For each item, the other items with similarity >= ``threshold``, ascending.

    Raises:
        ValueError: if ``threshold`` is outside (0, 1].
    """
    import faiss

    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"dedup.embedding_threshold must be in (0, 1], got {threshold}")
    x = np.ascontiguousarray(features, dtype=np.float32)
    if len(x) == 0:
        return []
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    lims, sims, ids = index.range_search(x, float(np.nextafter(np.float32(threshold), np.float32(-1))))
    out = []
    for q in range(len(x)):
        cand = ids[lims[q] : lims[q + 1]]
        keep = (cand != q) & (sims[lims[q] : lims[q + 1]] >= threshold - 1e-6)
        out.append(sorted(int(c) for c in cand[keep]))
    return out


def greedy_keep(priority: Sequence[int], neighbours: Sequence[Sequence[int]]) -> dict[int, int]:
    """Resolve duplicate groups: visit items by priority, drop one that matches a kept item.

    Args:
        priority: item indices, most preferred first (every item once).
        neighbours: for each item, its matches.

    Returns:
        ``{dropped item: the kept item it duplicates}`` (the kept match visited first).
    """
    rank = {item: r for r, item in enumerate(priority)}
    kept: set[int] = set()
    dropped: dict[int, int] = {}
    for item in priority:
        matches = [n for n in neighbours[item] if n in kept]
        if matches:
            dropped[item] = min(matches, key=rank.__getitem__)
        else:
            kept.add(item)
    return dropped
