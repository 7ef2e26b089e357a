"""gather_by_index: the shares of a split that each process extracted, as one set in dataset order."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rsfm.tasks.probes import gather_by_index


def test_one_process_orders_by_index_and_keeps_each_once(aid_histograms) -> None:
    x, y = aid_histograms(["Airport", "Beach"], 4)  # 8 real feature rows
    index = torch.tensor([5, 1, 7, 3, 1, 0, 6, 2])  # index 1 twice (a split smaller than the ranks)
    idx, xs, ys = gather_by_index(index, x, y)
    assert idx.tolist() == [0, 1, 2, 3, 5, 6, 7]
    order = [5, 1, 7, 3, 0, 6, 2]  # where indices 0, 1 (its first row), 2, 3, 5, 6, 7 sit in the input
    assert index[order].tolist() == idx.tolist()
    assert torch.equal(xs, x[order]) and torch.equal(ys, y[order])
    with pytest.raises(ValueError, match="every column needs 8 rows"):
        gather_by_index(index, x[:7])


def _gather_worker(rank: int, world: int, port: int, data: str) -> None:
    import os
    from datetime import timedelta

    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=60))
    try:
        shares = torch.load(data)
        out = {}
        for case, parts in shares.items():
            index, x, y = parts[rank]
            out[case] = gather_by_index(index, x, y)
        torch.save(out, f"{data}.rank{rank}")
        dist.barrier()  # neither rank tears the group down while the other still uses it
    finally:
        dist.destroy_process_group()


def test_two_processes_receive_the_whole_split_in_order(tmp_path: Path, aid_histograms) -> None:
    """As an unpadded evaluation loader shares 9 samples over 2 ranks, and with one rank empty."""
    import socket

    import torch.multiprocessing as mp

    x, y = aid_histograms(["Airport", "Beach", "Forest"], 3)  # 9 real feature rows
    even, odd = torch.arange(0, 9, 2), torch.arange(1, 9, 2)
    empty = torch.zeros(0, dtype=torch.long)
    shares = {
        "interleaved": [(even, x[even], y[even]), (odd, x[odd], y[odd])],
        "one_empty": [(torch.arange(9), x, y), (empty, x[:0], y[:0])],
    }
    data = tmp_path / "shares.pt"
    torch.save(shares, data)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_gather_worker, args=(2, port, str(data)), nprocs=2, join=True)
    for rank in (0, 1):
        got = torch.load(f"{data}.rank{rank}")
        for case in shares:
            idx, xs, ys = got[case]
            assert idx.tolist() == list(range(9)), case
            assert torch.equal(xs, x) and torch.equal(ys, y), case
