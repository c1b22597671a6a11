"""Parameter accounting, tied weights counted once (as the paper counts model size)."""

from __future__ import annotations

import torch.nn as nn

from depthprune.models.specs import get_blocks


def count_params(module: nn.Module) -> int:
    """Number of distinct parameters (shared tensors counted once)."""
    seen, total = set(), 0
    for p in module.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total


def block_params(model) -> list[int]:
    return [count_params(b) for b in get_blocks(model)]
