"""Parameter accounting, tied weights counted once (as the paper counts model size)."""

from __future__ import annotations

import torch.nn as nn

from depthprune.models.specs import get_blocks, spec_for


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


def candidate_params(model, unit: str = "block") -> list[int]:
    """Parameters each candidate removes: whole blocks, or a block's attention/MLP with the norms only it uses."""
    if unit == "block":
        return block_params(model)
    spec = spec_for(model)
    out = []
    for block in get_blocks(model):
        for paths in (spec.attention + spec.attn_norms, spec.mlp + spec.mlp_norms):
            out.append(sum(count_params(block.get_submodule(p)) for p in paths))
    return out
