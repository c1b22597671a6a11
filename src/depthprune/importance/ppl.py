"""PPL: calibration perplexity with one candidate removed (forward passes only).

Each block's input is computed once per calibration batch; removing block n then re-runs only blocks
n+1..N and the head. ``cache_prefix=False`` does it the naive way (a full forward per candidate) and
is kept to check the cached path.
"""

from __future__ import annotations

import math

import torch
from tqdm.auto import tqdm

from depthprune.evaluation.loss import chunked_nll, sequence_nll, shifted_labels
from depthprune.importance.base import register
from depthprune.importance.runner import run_tail, trace_blocks
from depthprune.models.loading import input_device
from depthprune.models.specs import num_blocks


@register("ppl", units=("block",), description="calibration perplexity without the block (Shortened LLaMA, SLEB)")
@torch.no_grad()
def ppl_scores(model, input_ids: torch.Tensor, unit: str = "block", batch_size: int = 16,
               cache_prefix: bool = True, progress: bool = True) -> list[float]:
    n_blocks = num_blocks(model)
    nll = [0.0] * n_blocks
    count = 0
    device = input_device(model)
    bar = tqdm(total=n_blocks * math.ceil(input_ids.shape[0] / batch_size), desc="ppl scores",
               disable=not progress, leave=False)
    for start in range(0, input_ids.shape[0], batch_size):
        batch = input_ids[start : start + batch_size].to(device)
        labels = shifted_labels(batch)
        if cache_prefix:
            trace = trace_blocks(model, batch)
            for n in range(n_blocks):
                hidden = run_tail(model, trace, trace.inputs[n], range(n + 1, n_blocks))
                s, c = chunked_nll(model, hidden, labels)
                nll[n] += float(s)
                bar.update()
        else:
            from depthprune.pruning.surgery import blocks_removed

            for n in range(n_blocks):
                with blocks_removed(model, [n]):
                    s, c = sequence_nll(model, batch)
                nll[n] += float(s)
                bar.update()
        count += c
    bar.close()
    return [math.exp(v / count) for v in nll]
