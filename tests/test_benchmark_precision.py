"""benchmarks/precision.py: its variants run what they name (precision, optimiser, clipping), on real AID images."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="module")
def precision(load_benchmark):
    return load_benchmark("precision")


def test_variants_build_the_optimiser_and_clip_as_named(precision, datasets: Path) -> None:
    x = precision.load_batch(datasets / "aid", 2, 32)
    task, _ = precision.build("mae", "tiny", 32, 8, 2, "cpu")
    fused, unfused = precision.optimizer(task, True), precision.optimizer(task, False)
    assert all(g["fused"] for g in fused.param_groups)
    assert not any(g["fused"] for g in unfused.param_groups)

    norms = []
    original = torch.nn.utils.clip_grad_norm_

    def spy(params, max_norm, *args, **kwargs):
        norms.append(max_norm)
        return original(params, max_norm, *args, **kwargs)

    torch.nn.utils.clip_grad_norm_ = spy
    try:
        before = [p.detach().clone() for p in task.parameters()]
        precision.step(task, unfused, x, amp=True, clip=True, seed=0)
        precision.step(task, fused, x, amp=False, clip=False, seed=1)
    finally:
        torch.nn.utils.clip_grad_norm_ = original
    assert norms == [precision.CLIP]  # only the "+ clip" step clipped
    assert any(not torch.equal(a, b) for a, b in zip(before, task.parameters(), strict=True))
    assert all(p.grad is None for p in task.parameters())


def test_paired_ratio_and_its_range(precision) -> None:
    rounds = {"a": [2.0, 4.0, 3.0], "b": [1.0, 1.0, 2.0]}
    ratio, lo, hi = precision.paired(rounds, "a", "b")
    assert ratio == pytest.approx(3.0 / 1.0) and (lo, hi) == (1.5, 4.0)
    labels = {v[0] for v in precision.VARIANTS}
    assert all(a in labels and b in labels for _, a, b in precision.RATIOS)
