"""Which weights belong to a candidate (a block, or one block's attention or MLP)."""

from __future__ import annotations

import torch.nn as nn

from depthprune.models.specs import get_blocks, spec_for


def linear_weights(module: nn.Module) -> list[nn.Parameter]:
    """Weights of every linear layer inside ``module`` (norms and biases excluded)."""
    return [m.weight for m in module.modules() if isinstance(m, nn.Linear)]


def candidate_modules(model, unit: str = "block") -> list[list[nn.Module]]:
    """The modules making up each candidate, in candidate order."""
    spec = spec_for(model)
    out = []
    for block in get_blocks(model):
        if unit == "block":
            out.append([block])
        else:
            out.append([block.get_submodule(p) for p in spec.attention])
            out.append([block.get_submodule(p) for p in spec.mlp])
    return out


def candidate_weights(model, unit: str = "block") -> list[list[nn.Parameter]]:
    return [[w for m in mods for w in linear_weights(m)] for mods in candidate_modules(model, unit)]
