"""Near-duplicate search: exact below the limit, IVF above, both checked against a brute-force count."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rsfm.curation.dedup import greedy_keep, hamming_pairs, perceptual_hashes


@pytest.fixture(scope="module")
def hashes(datasets: Path) -> tuple[list[str], list[str]]:
    """pHash/dHash of 300 real AID images, plus re-encoded and shifted copies of the first 40."""
    files = sorted((datasets / "aid").glob("*/*.jpg"))[::23][:300]
    images = [np.asarray(Image.open(f).convert("RGB")) for f in files]
    copies = []
    for a in images[:40]:
        b = np.clip(a.astype(np.int16) + 6, 0, 255).astype(np.uint8)[2:, 2:]  # brighter, cropped by 2 px
        copies.append(b)
    out = [perceptual_hashes(np.ascontiguousarray(x.transpose(2, 0, 1))) for x in images + copies]
    return [p for p, _ in out], [d for _, d in out]


def brute(ph: list[str], dh: list[str], tp: int, td: int) -> list[list[int]]:
    def bits(h: str) -> np.ndarray:
        return np.unpackbits(np.frombuffer(bytes.fromhex(h), dtype=np.uint8))

    p = np.stack([bits(h) for h in ph])
    d = np.stack([bits(h) for h in dh])
    dp = (p[:, None] != p[None]).sum(-1)
    dd = (d[:, None] != d[None]).sum(-1)
    ok = (dp <= tp) & (dd <= td)
    np.fill_diagonal(ok, False)
    return [np.flatnonzero(row).tolist() for row in ok]


def test_exact_search_equals_a_brute_force_count(hashes) -> None:
    ph, dh = hashes
    got = hamming_pairs(ph, dh, 8, 10)
    assert got == brute(ph, dh, 8, 10)
    assert all(300 + i in got[i] for i in range(40))  # every copy found


def test_ivf_search_finds_the_copies_and_is_deterministic(hashes) -> None:
    ph, dh = hashes
    exact = brute(ph, dh, 8, 10)
    ivf = hamming_pairs(ph, dh, 8, 10, exact_limit=0, nprobe=4)
    pairs = {(i, j) for i, row in enumerate(exact) for j in row}
    found = {(i, j) for i, row in enumerate(ivf) for j in row}
    assert len(pairs) >= 2 * 40  # the 40 copies, both ways
    assert found <= pairs and len(found) >= 0.9 * len(pairs)
    assert ivf == hamming_pairs(ph, dh, 8, 10, exact_limit=0, nprobe=4)


@pytest.mark.parametrize("n", [1, 2, 5])
def test_ivf_on_fewer_items_than_its_lists_is_exact(hashes, n) -> None:
    """``exact_limit`` below a tiny corpus: fewer than 16 items (4*sqrt(N) > N lists) once crashed faiss."""
    ph, dh = hashes
    pick = list(range(n)) + [300 + i for i in range(n)]  # n images and their copies
    sub_p, sub_d = [ph[i] for i in pick], [dh[i] for i in pick]
    got = hamming_pairs(sub_p, sub_d, 8, 10, exact_limit=0)  # nprobe 64 >= lists: every list searched
    assert got == brute(sub_p, sub_d, 8, 10)
    assert all(n + i in got[i] for i in range(n))


def test_greedy_keeps_the_preferred_member_of_each_group() -> None:
    neighbours = [[1, 2], [0], [0], []]
    assert greedy_keep([2, 0, 1, 3], neighbours) == {0: 2}  # 1 only matches 0, which was dropped: kept
    assert greedy_keep([0, 1, 2, 3], neighbours) == {1: 0, 2: 0}
    with pytest.raises(ValueError, match="phash_threshold"):
        hamming_pairs(["0" * 16], ["0" * 16], 64, 3)
