"""Criteria from hidden-state similarity: ShortGPT's block influence and Gromov et al.'s angular distance."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from depthprune.importance.base import BlockScores, Criterion, register
from depthprune.models.loading import input_device
from depthprune.models.skipping import module_skipped
from depthprune.models.specs import num_blocks
from depthprune.models.trace import run_block, trace_blocks


def _batches(input_ids: torch.Tensor, batch_size: int, desc: str, progress: bool):
    starts = range(0, input_ids.shape[0], batch_size)
    for start in tqdm(starts, desc=desc, unit="batch", leave=False, disable=not progress or len(starts) == 1):
        yield input_ids[start : start + batch_size]


def _influence(x: torch.Tensor, y: torch.Tensor) -> float:
    """Sum over tokens of 1 - cos(x, y)."""
    return float((1 - F.cosine_similarity(x.float(), y.float().to(x.device), dim=-1)).sum())


@register
class BlockInfluence(Criterion):
    name = "block_influence"
    description = ("1 - cos(input, output) of the block (or of a module's residual branch), mean over tokens "
                   "(ShortGPT)")
    units = ("block", "module")

    @torch.no_grad()
    def score(self, model, input_ids, unit="block", batch_size=16, progress=True):
        n = num_blocks(model)
        per_block = 1 if unit == "block" else 2
        sums = torch.zeros(n * per_block, dtype=torch.float64)
        tokens = 0
        for batch in _batches(input_ids, batch_size, self.name, progress):
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


@register
class Angular(Criterion):
    """Per-block distance (span 1) as the scores; every span's distance in metadata['span_distances'].

    ``span_distances[n][l]`` is the mean over samples of arccos(cos(x_l, x_{l+n})) / pi at the last token;
    selecting k blocks removes the contiguous span of k allowed blocks minimising it.
    """

    name = "angular"
    description = "angular distance between a span's input and output at the last token (Gromov et al.)"

    @torch.no_grad()
    def score(self, model, input_ids, unit="block", batch_size=16, progress=True):
        n = num_blocks(model)
        states = []
        for batch in _batches(input_ids, batch_size, self.name, progress):
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

    def select(self, scores: BlockScores, allowed: Sequence[int], k: int) -> list[int] | None:
        """The contiguous span of ``k`` allowed blocks with the smallest angular distance (None if none)."""
        ok = set(allowed)
        spans = scores.metadata.get("span_distances", {}).get(str(k), [])
        options = [(d, start) for start, d in enumerate(spans) if all(i in ok for i in range(start, start + k))]
        if not options:
            return None
        start = min(options)[1]
        return list(range(start, start + k))
