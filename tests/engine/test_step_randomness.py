"""The per-step randomness of training: a function of (seed, step, micro-batch, rank), nothing else."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from rsfm.training import TrainingModule


class Module(TrainingModule):
    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        self.save_hyperparameters()

    def optimizer_groups(self, lr: float) -> list:
        return [{"params": [], "lr": lr}]


def _draw(module: Module, step: int, batch_idx: int, accumulate: int, rank: int = 0, shared: bool = False) -> float:
    module._trainer = SimpleNamespace(global_step=step, accumulate_grad_batches=accumulate, global_rank=rank)
    module._batch_idx = batch_idx
    return float(torch.rand(1, generator=module.step_generator(shared=shared)))


def test_micro_batches_of_one_step_draw_different_noise() -> None:
    m = Module(seed=3)
    # two micro-batches accumulate into step 5: each gets its own masks
    assert _draw(m, 5, batch_idx=10, accumulate=2) != _draw(m, 5, batch_idx=11, accumulate=2)
    assert _draw(m, 5, 10, 2, shared=True) != _draw(m, 5, 11, 2, shared=True)
    # and the same micro-batch of the same step draws the same (a resumed run repeats it exactly)
    assert _draw(m, 5, batch_idx=10, accumulate=2) == _draw(Module(seed=3), 5, batch_idx=10, accumulate=2)
    # without accumulation the batch index plays no part: the step alone decides
    assert _draw(m, 5, batch_idx=10, accumulate=1) == _draw(m, 5, batch_idx=11, accumulate=1)
    assert _draw(m, 5, 10, 1) != _draw(m, 6, 10, 1)
    # ranks differ, except for the shared generator
    assert _draw(m, 5, 10, 1, rank=0) != _draw(m, 5, 10, 1, rank=1)
    assert _draw(m, 5, 10, 1, rank=0, shared=True) == _draw(m, 5, 10, 1, rank=1, shared=True)
