"""A sampler whose order and per-sample seeds depend only on (seed, epoch, index).

It yields ``(index, sample_seed)`` tuples; :class:`~landseg.data.dataset.SegmentationDataset`
draws a sample's augmentation from ``sample_seed`` alone. So an epoch is the same whatever the
number of workers or processes, and a run resumed mid-epoch (:meth:`SeededSampler.skip_next`)
sees exactly the samples the interrupted run would have seen.

It shards itself across ``torch.distributed`` ranks like torch's ``DistributedSampler`` (the
Trainer runs with ``use_distributed_sampler=False``), so Lightning must not wrap it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch.distributed as dist
from torch.utils.data import Sampler


def derive_seed(seed: int, epoch: int, index: int) -> int:
    """A well-mixed 64-bit seed for one sample of one epoch."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1, np.uint64)[0])


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


class SeededSampler(Sampler[tuple[int, int]]):
    """Epoch-seeded, distributed-aware sampler of ``(index, sample_seed)``.

    ``num_replicas`` and ``rank`` default to ``torch.distributed`` at iteration time (1 and 0
    when it is not initialised). Without ``drop_last`` the order is padded by repeating its
    head so every rank gets the same count; with it, the tail is dropped instead. Evaluation
    samplers use ``pad=False``: ranks get uneven shares, so no sample is counted twice in the
    metrics (validation has no per-step collective that would need equal counts).
    """

    def __init__(
        self,
        length: int,
        *,
        seed: int,
        shuffle: bool,
        drop_last: bool = False,
        num_replicas: int | None = None,
        rank: int | None = None,
        pad: bool = True,
    ):
        self.length = length
        self.seed = seed
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.num_replicas = num_replicas
        self.rank = rank
        self.pad = pad
        self.epoch = 0
        self._skip = 0

    def set_epoch(self, epoch: int) -> None:
        """Lightning calls this at the start of every epoch."""
        self.epoch = epoch

    def skip_next(self, n: int) -> None:
        """Make the next iteration skip its first ``n`` items (samples, not batches).

        Used to resume mid-epoch; ``len()`` is unchanged, since Lightning reads it once for all
        epochs.
        """
        self._skip = max(0, int(n))

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "seed": self.seed, "skip": self._skip}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch = int(state["epoch"])
        self._skip = int(state.get("skip", 0))

    def _replicas(self) -> tuple[int, int]:
        world, rank = _world()
        replicas = self.num_replicas if self.num_replicas is not None else world
        rank = self.rank if self.rank is not None else rank
        if not 0 <= rank < replicas:
            raise ValueError(f"rank {rank} is not in [0, {replicas})")
        return replicas, rank

    def _total(self, replicas: int) -> int:
        if not self.pad:
            return self.length
        if self.drop_last:
            return (self.length // replicas) * replicas
        return math.ceil(self.length / replicas) * replicas

    def __len__(self) -> int:
        replicas, rank = self._replicas()
        return len(range(rank, self._total(replicas), replicas))

    def __iter__(self) -> Iterator[tuple[int, int]]:
        replicas, rank = self._replicas()
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(self.length)
        else:
            order = np.arange(self.length)
        total = self._total(replicas)
        if total > self.length and self.length:
            order = np.resize(order, total)  # repeats the head, like DistributedSampler
        share = order[:total][rank::replicas][self._skip :].tolist()
        self._skip = 0
        seed, epoch = self.seed, self.epoch
        return ((index, derive_seed(seed, epoch, index)) for index in share)
