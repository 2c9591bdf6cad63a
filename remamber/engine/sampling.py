"""Deterministic data order: every epoch's batches, and per-sample seeds for augmentation.

The order of epoch ``e`` depends only on ``(seed, e)``, and sample ``i``'s augmentation only
on ``(seed, e, i)``; so a run resumed at any step replays exactly what an uninterrupted run
would have seen, with any number of DataLoader workers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int, rank: int = 0, world: int = 1) -> list[list[int]]:
    """This rank's batches of epoch ``epoch``: a seeded permutation, padded to a multiple of
    ``world`` (so every rank has as many batches), sharded ``rank::world``."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(n, generator=g).tolist()
    pad = (-n) % world
    order = order + order[:pad]
    shard = order[rank::world]
    return [shard[i : i + batch_size] for i in range(0, len(shard), batch_size)]


def micro_batches_per_epoch(n: int, batch_size: int, world: int = 1) -> int:
    """How many batches :func:`epoch_batches` gives each rank per epoch."""
    return math.ceil(math.ceil(n / world) / batch_size)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The augmentation seed of one sample in one epoch."""
    return (seed * 1_000_003 + epoch * 100_003 + index) % (2**63 - 1)


class BatchSource(torch.utils.data.Dataset):
    """Items are whole batches; each sample is drawn under its own seed (global RNG untouched)."""

    def __init__(self, dataset: Any, batches: Sequence[list[int]], seed: int, epoch: int, collate: Callable) -> None:
        self.dataset, self.batches, self.seed, self.epoch, self.collate = dataset, batches, seed, epoch, collate

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, j: int) -> Any:
        items = []
        for i in self.batches[j]:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(sample_seed(self.seed, self.epoch, i))
                items.append(self.dataset[i])
        return self.collate(items)
