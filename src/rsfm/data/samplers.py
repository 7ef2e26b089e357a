"""Resumable, rank-sharded sample order and per-sample seeding for every rsfm loader.

:class:`EpochSampler` yields ``(index, epoch)`` keys; :class:`KeyedDataset` (or a dataset that
reads such keys itself, as :class:`~rsfm.data.folder.ImageFolder`) seeds torch's global RNG
from ``(seed, epoch, index)`` before producing the sample, so every random augmentation is a
pure function of those three numbers, whatever the number of workers or what ran before.
With :class:`~torchdata.stateful_dataloader.StatefulDataLoader`, Lightning saves the
sampler's position in checkpoints, so a run stopped in the middle of an epoch resumes with
exactly the batches an uninterrupted run would have seen. The sampler shards across ranks
itself: trainers are created with ``use_distributed_sampler=False``.

.. versionadded:: 0.1
"""

from __future__ import annotations

import hashlib
import math
import operator
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import Dataset, Sampler

__all__ = ["EpochSampler", "KeyedDataset", "parse_key", "sample_seed"]


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 64-bit seed that is a pure function of ``(seed, epoch, index)``."""
    digest = hashlib.blake2b(f"{seed}:{epoch}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def parse_key(key: int | tuple[int, int], n: int) -> tuple[int, int]:
    """``index`` or ``(index, epoch)`` → ``(index mod n, epoch)`` (epoch 0 for a bare index).

    Raises:
        IndexError: if the index is outside ``[-n, n)``.
    """
    if isinstance(key, tuple | list):
        index, epoch = (operator.index(k) for k in key)
    else:
        index, epoch = operator.index(key), 0
    if not -n <= index < n:
        raise IndexError(f"index {index} out of range for {n} samples")
    return index % n, epoch


class KeyedDataset(Dataset[Any]):
    """Wrap a map-style dataset so that ``dataset[(index, epoch)]`` is reproducible.

    Torch's global RNG is seeded with :func:`sample_seed` ``(seed, epoch, index)`` around the
    call to the wrapped dataset (and restored after), so transforms that draw from it (random
    crops, flips, photometric jitter) give the same sample for the same key in any process.
    ``repeats`` serves each item that many times per epoch, each with its own randomness
    (several random crops of a large tile per epoch).

    Args:
        dataset: any map-style dataset.
        seed: augmentation seed.
        repeats: passes over ``dataset`` per epoch, >= 1.

    Raises:
        ValueError: if ``repeats < 1``.
    """

    def __init__(self, dataset: Any, seed: int = 0, repeats: int = 1) -> None:
        if repeats < 1:
            raise ValueError(f"repeats must be >= 1, got {repeats}")
        self.dataset = dataset
        self.seed = int(seed)
        self.repeats = int(repeats)

    def __len__(self) -> int:
        return len(self.dataset) * self.repeats

    def __getitem__(self, key: int | tuple[int, int]) -> Any:
        """The sample of ``key`` (``index`` or ``(index, epoch)``), with seeded randomness."""
        index, epoch = parse_key(key, len(self))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(sample_seed(self.seed, epoch, index))
            return self.dataset[index % len(self.dataset)]


def _epoch_seed(seed: int, epoch: int) -> int:
    digest = hashlib.blake2b(f"sampler:{seed}:{epoch}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1  # 63 bits: any torch.Generator accepts it


class EpochSampler(Sampler[tuple[int, int]]):
    """Seeded per-epoch order of a dataset's indices, sharded across replicas.

    Yields ``(index, epoch)`` tuples: datasets such as
    :class:`~rsfm.data.folder.ImageFolder` seed each sample's augmentation with them. The
    order of epoch ``e`` is a permutation drawn from ``(seed, e)`` (or ``0..n-1`` without
    shuffling); rank ``r`` of ``R`` takes positions ``r, r + R, ...`` of it, like
    :class:`~torch.utils.data.distributed.DistributedSampler`. With ``drop_last`` the tail
    that does not divide evenly is dropped; otherwise, with ``pad``, the order is padded with
    its first indices, so every rank has the same length, and without it (evaluation) each
    index goes to exactly one rank and the ranks' lengths differ by at most one: scores summed
    over ranks then count every sample once. Only a rank that would get no index at all (fewer
    samples than ranks) gets one repeated index, since a rank without batches would skip the
    evaluation loop and leave the others waiting for its share of the scores.

    Its iterators are stateful (``epoch`` and position), so a
    :class:`~torchdata.stateful_dataloader.StatefulDataLoader` restores the exact position
    even if :meth:`set_epoch` was not called before resuming.

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        num_samples: int,
        shuffle: bool = True,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
        drop_last: bool = True,
        pad: bool = True,
    ) -> None:
        """Create the sampler.

        Args:
            num_samples: length of the dataset.
            shuffle: draw a new order every epoch; if False, indices in order.
            seed: seed of the orders (same on every rank).
            num_replicas: number of ranks (world size).
            rank: this rank, 0 <= rank < num_replicas.
            drop_last: drop the indices that would make ranks unequal instead of padding.
            pad: without ``drop_last``, repeat indices so that every rank has the same length
                (False: every index once; see above).

        Raises:
            ValueError: if an argument is out of range.

        """
        if num_samples < 0:
            raise ValueError(f"num_samples must be >= 0, got {num_samples}")
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(
                f"need num_replicas >= 1 and 0 <= rank < num_replicas, got num_replicas={num_replicas}, rank={rank}"
            )
        self.num_samples = num_samples
        self.shuffle = shuffle
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.drop_last = drop_last
        self.pad = pad
        self.epoch = 0
        #: how many of this rank's keys per epoch the loader uses (the whole batches of a loader
        #: that drops its last partial one, up to the trainer's ``limit_train_batches``); set by
        #: :meth:`rsfm.engine.data.LightningData.train_dataloader`; None: all.
        #: A resumed position at or past it is the end of its epoch, so the run goes on with the
        #: next epoch rather than serving the unused tail as a batchless epoch.
        self.keys_per_epoch: int | None = None

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order the next iterator yields (Lightning calls this).

        Args:
            epoch: epoch number.

        """
        self.epoch = int(epoch)

    def __len__(self) -> int:
        """Return the number of keys yielded per epoch on this rank."""
        if self.drop_last:
            return self.num_samples // self.num_replicas
        if not self.pad:
            return max(len(range(self.rank, self.num_samples, self.num_replicas)), min(1, self.num_samples))
        return math.ceil(self.num_samples / self.num_replicas)

    def indices(self, epoch: int) -> list[int]:
        """Return this rank's indices for an epoch, in order.

        Args:
            epoch: epoch number.

        Returns:
            ``len(self)`` dataset indices.

        """
        n = self.num_samples
        if self.shuffle:
            generator = torch.Generator()
            generator.manual_seed(_epoch_seed(self.seed, epoch))
            order = torch.randperm(n, generator=generator).tolist()
        else:
            order = list(range(n))
        if not self.drop_last and not self.pad:
            mine = order[self.rank :: self.num_replicas]
            if mine or n == 0:
                return mine
            return order[self.rank % n : self.rank % n + 1]  # fewer samples than ranks: one repeat
        total = len(self) * self.num_replicas
        if total > n and n > 0:
            order = (order * math.ceil(total / n))[:total]
        return order[self.rank : total : self.num_replicas]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        """Iterate over ``(index, epoch)`` of the current epoch."""
        return _EpochSamplerIterator(self)


class _EpochSamplerIterator(Iterator[tuple[int, int]]):
    def __init__(self, sampler: EpochSampler) -> None:
        self.sampler = sampler
        self._start(sampler.epoch, 0)

    def _start(self, epoch: int, yielded: int) -> None:
        self.epoch = epoch
        self.order = self.sampler.indices(epoch)
        self.yielded = yielded

    def __iter__(self) -> _EpochSamplerIterator:
        return self

    def __next__(self) -> tuple[int, int]:
        if self.yielded >= len(self.order):
            raise StopIteration
        index = self.order[self.yielded]
        self.yielded += 1
        return index, self.epoch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "yielded": self.yielded}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        epoch, yielded = int(state_dict["epoch"]), int(state_dict["yielded"])
        end = len(self.sampler.indices(epoch))
        if self.sampler.keys_per_epoch is not None:
            end = min(end, self.sampler.keys_per_epoch)
        if yielded >= end:
            # saved after the last batch of its epoch (a checkpoint every N steps, or at the
            # epoch's end, with a partial last batch dropped or limit_train_batches reached):
            # that epoch is over, and the trainer resumes with the next one, whose epoch it may
            # not have set yet; continuing inside the finished epoch would serve its unused
            # tail, no whole batch, as the next epoch
            epoch, yielded = max(self.epoch, epoch + 1), 0
        self.sampler.epoch = epoch
        self._start(epoch, yielded)
