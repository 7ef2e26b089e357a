"""Collectives over the processes of a distributed run that every layer may use.

Torch is imported inside the functions, so that importing this module (and checking a recipe)
stays as light as the rest of :mod:`rsfm.utils`.

.. versionadded:: 0.3.4
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import Tensor

__all__ = ["concat_all_gather", "process_rank"]


def _world() -> int:
    """Processes in the default group; 1 outside a distributed run."""
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def process_rank() -> int:
    """The rank of the calling process in the default group, 0 outside a distributed run (or in a group of one).

    .. versionadded:: 0.3.5
    """
    import torch.distributed as dist

    return dist.get_rank() if _world() > 1 else 0


def concat_all_gather(x: Tensor) -> tuple[Tensor, list[int]]:
    """Concatenate ``x`` ``(n_r, ...)`` of every rank in rank order; identity in one process.

    Ranks may hold different ``n_r`` (a batch that lost unreadable files, a rank with no rows):
    sizes are exchanged first and the tensors padded for ``all_gather``. Every rank must pass
    the same dtype and trailing shape. No gradient flows back.

    Args:
        x: ``(n_r, ...)`` tensor of any dtype, on the device the process group communicates on.

    Returns:
        ``(gathered (Σ n_r, ...), sizes [n_0, n_1, ...])``; in one process ``(x.detach(), [n])``.

    .. versionchanged:: 0.3.4
       Moved here from :mod:`rsfm.methods.gersp` (which still exports it) for the downstream
       tasks' sharded feature extraction.
    """
    import torch
    import torch.distributed as dist

    world = _world()
    if world == 1:
        return x.detach(), [x.shape[0]]
    with torch.no_grad():
        n = torch.tensor([x.shape[0]], device=x.device)
        sizes_t = [torch.zeros_like(n) for _ in range(world)]
        dist.all_gather(sizes_t, n)
        sizes = [int(s.item()) for s in sizes_t]
        padded = x.detach().new_zeros((max(sizes), *x.shape[1:]))
        padded[: x.shape[0]] = x.detach()
        parts = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(parts, padded.contiguous())
        return torch.cat([p[:s] for p, s in zip(parts, sizes, strict=True)]), sizes
