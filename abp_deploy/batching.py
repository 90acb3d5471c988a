"""Length-grouped batches: most of a CPU training step is padding unless batches hold similar lengths.

Written here rather than taken from transformers' `LengthGroupedSampler` because that sampler draws
its permutation from the global RNG at iteration time and keeps each mega-batch's batches in
descending length order; resuming bit-identically mid-epoch needs an order that is a pure function
of (seed, epoch), and the batch order should be shuffled so lengths do not trend within an epoch.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler

MEGA_BATCH = 50  # batches per sorted group: transformers' group_by_length uses the same multiple


class LengthGroupedBatches(Sampler[list[int]]):
    """Shuffle, cut into mega-batches of `MEGA_BATCH` batches, sort each by length, batch, shuffle the batches.

    The order depends only on `seed` and the epoch set with `set_epoch`, so a resumed run that skips
    the first k batches of an epoch sees exactly the batches the uninterrupted run saw.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int, mega_batch: int = MEGA_BATCH):
        super().__init__()
        self.lengths = torch.as_tensor(lengths)
        self.batch_size, self.seed, self.mega = batch_size, seed, mega_batch * batch_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return -(-len(self.lengths) // self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(len(self.lengths), generator=generator)
        batches = []
        for start in range(0, len(order), self.mega):
            group = order[start:start + self.mega]
            group = group[torch.argsort(self.lengths[group], descending=True, stable=True)]
            batches += [group[i:i + self.batch_size].tolist() for i in range(0, len(group), self.batch_size)]
        for b in torch.randperm(len(batches), generator=generator).tolist():
            yield batches[b]


def token_lengths(ds) -> list[int]:
    """Tokens per example of a tokenised dataset (its `input_ids`)."""
    return [len(ids) for ids in ds["input_ids"]]


def by_length(lengths: Sequence[int]) -> list[int]:
    """Indices ordered by length (stable), for evaluation: batches of similar lengths pad least."""
    return torch.argsort(torch.as_tensor(lengths), stable=True).tolist()
