"""Criteria from hidden-state similarity: ShortGPT's block influence and Gromov et al.'s angular distance."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from depthprune.core.trace import run_block, trace_blocks
from depthprune.importance.base import register
from depthprune.models.loading import input_device
from depthprune.models.specs import num_blocks


def _batches(input_ids: torch.Tensor, batch_size: int):
    for start in range(0, input_ids.shape[0], batch_size):
        yield input_ids[start : start + batch_size]


def _influence(x: torch.Tensor, y: torch.Tensor) -> float:
    """Sum over tokens of 1 - cos(x, y)."""
    return float((1 - F.cosine_similarity(x.float(), y.float().to(x.device), dim=-1)).sum())


@register("block_influence", units=("block", "module"),
          description="1 - cos(input, output) of the block (or of a module's residual branch), mean over tokens "
                      "(ShortGPT)")
@torch.no_grad()
def block_influence_scores(model, input_ids: torch.Tensor, unit: str = "block", batch_size: int = 16):
    from depthprune.pruning.module_surgery import module_skipped

    n = num_blocks(model)
    per_block = 1 if unit == "block" else 2
    sums = torch.zeros(n * per_block, dtype=torch.float64)
    tokens = 0
    for batch in _batches(input_ids, batch_size):
        trace = trace_blocks(model, batch.to(input_device(model)))
        for i in range(n):
            if unit == "block":
                sums[i] += _influence(trace.state(i), trace.state(i + 1))
                continue
            with module_skipped(model, i, "mlp"):  # output of the attention branch alone
                mid = run_block(model, trace, i, trace.state(i))
            sums[2 * i] += _influence(trace.state(i), mid)
            sums[2 * i + 1] += _influence(mid, trace.state(i + 1))
        tokens += batch.numel()
    return (sums / tokens).tolist()


@register("angular", units=("block",),
          description="angular distance between a span's input and output at the last token (Gromov et al.)")
@torch.no_grad()
def angular_scores(model, input_ids: torch.Tensor, unit: str = "block", batch_size: int = 16):
    """Per-block distance (span 1) as the scores; every span's distance in metadata['span_distances'].

    ``span_distances[n][l]`` is the mean over samples of arccos(cos(x_l, x_{l+n})) / pi at the last token;
    selection of k blocks by this criterion removes the contiguous span minimising it.
    """
    n = num_blocks(model)
    states = []
    for batch in _batches(input_ids, batch_size):
        trace = trace_blocks(model, batch.to(input_device(model)))
        states.append(torch.stack([trace.state(i)[:, -1].float().cpu() for i in range(n + 1)]))
    last = torch.cat(states, dim=1)  # (n+1, samples, hidden)
    spans = {}
    for span in range(1, n + 1):
        dists = []
        for start in range(0, n - span + 1):
            cos = F.cosine_similarity(last[start], last[start + span], dim=-1).clamp(-1, 1)
            dists.append(float(torch.arccos(cos).mean() / math.pi))
        spans[str(span)] = dists
    return spans["1"], {"span_distances": spans}
