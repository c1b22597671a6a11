"""The data order: a pure function of (seed, epoch, step), so resuming needs only the step number."""

from __future__ import annotations

import math

import torch

from depthprune.errors import DepthpruneError
from depthprune.retraining.data import TokenDataset


class DataPlan:
    """Which examples form global step ``s``: a seeded permutation per epoch, cut into global batches."""

    def __init__(self, dataset: TokenDataset, batch_size: int, seed: int):
        self.n, self.batch_size, self.seed = len(dataset), batch_size, seed
        self.steps_per_epoch = self.n // batch_size
        if self.steps_per_epoch == 0:
            raise DepthpruneError(
                f"the training data has {self.n} {dataset.kind} examples, fewer than one batch of {batch_size}; "
                "lower --batch-size or add data"
            )
        self.tokens, self.predicted = dataset.tokens, dataset.predicted
        self._cache: tuple[int, torch.Tensor] | None = None

    def _perm(self, epoch: int) -> torch.Tensor:
        if self._cache is None or self._cache[0] != epoch:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._cache = (epoch, torch.randperm(self.n, generator=gen))
        return self._cache[1]

    def step(self, step: int) -> tuple[int, list[int]]:
        epoch, i = divmod(step, self.steps_per_epoch)
        return epoch, self._perm(epoch)[i * self.batch_size : (i + 1) * self.batch_size].tolist()

    def total_steps(self, epochs: int | None, max_steps: int | None, max_tokens: int | None) -> int:
        """Steps to run: the first of ``max_steps`` and ``max_tokens`` reached, else ``epochs`` (default 1)."""
        if max_steps is None and max_tokens is None:
            return (epochs or 1) * self.steps_per_epoch
        limit = max_steps if max_steps is not None else math.inf
        if max_tokens is None:
            return int(limit)
        seen, step, epoch = 0, 0, 0
        while step < limit:
            perm = self._perm(epoch)[: self.steps_per_epoch * self.batch_size]
            per_step = self.tokens[perm].view(self.steps_per_epoch, self.batch_size).sum(1)
            cum = seen + per_step.cumsum(0)
            hit = torch.nonzero(cum >= max_tokens)
            if len(hit):
                return int(min(limit, step + int(hit[0]) + 1))
            seen, step, epoch = int(cum[-1]), step + self.steps_per_epoch, epoch + 1
        return int(limit)
