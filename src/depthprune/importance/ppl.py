"""PPL: calibration perplexity with one candidate removed (forward passes only).

Each block's input is computed once per calibration batch; removing block n then re-runs only blocks
n+1..N and the head. ``cache_prefix=False`` does it the naive way (a full forward per candidate) and
is kept to check the cached path. For modules, the candidate's block runs with that module skipped.
"""

from __future__ import annotations

import math

import torch
from tqdm.auto import tqdm

from depthprune.core.loss import chunked_nll, sequence_nll, shifted_labels
from depthprune.core.trace import Trace, run_block, run_tail, trace_blocks
from depthprune.importance.base import register
from depthprune.models.loading import input_device
from depthprune.models.specs import num_blocks


def calibration_traces(model, input_ids: torch.Tensor, batch_size: int) -> list[tuple[Trace, torch.Tensor]]:
    """One trace (block inputs + calls) and its labels per calibration batch."""
    device = input_device(model)
    out = []
    for start in range(0, input_ids.shape[0], batch_size):
        batch = input_ids[start : start + batch_size].to(device)
        out.append((trace_blocks(model, batch), shifted_labels(batch)))
    return out


@torch.no_grad()
def ppl_from_traces(model, traces, unit: str = "block", progress: bool = True) -> list[float]:
    """Calibration PPL without each candidate, replaying only the blocks after it."""
    from depthprune.pruning.module_surgery import module_skipped

    n_blocks = num_blocks(model)
    parts = [None] if unit == "block" else ["attn", "mlp"]
    nll = [0.0] * (n_blocks * len(parts))
    count = 0
    bar = tqdm(total=len(nll) * len(traces), desc="ppl scores", disable=not progress, leave=False)
    for trace, labels in traces:
        for n in range(n_blocks):
            for k, part in enumerate(parts):
                if part is None:
                    hidden = run_tail(model, trace, trace.inputs[n], range(n + 1, n_blocks))
                else:
                    with module_skipped(model, n, part):
                        h = run_block(model, trace, n, trace.inputs[n])
                    hidden = run_tail(model, trace, h, range(n + 1, n_blocks))
                s, c = chunked_nll(model, hidden, labels)
                nll[n * len(parts) + k] += float(s)
                bar.update()
        count += c
    bar.close()
    return [math.exp(v / count) for v in nll]


@register("ppl", units=("block", "module"),
          description="calibration perplexity without the candidate (Shortened LLaMA, SLEB)")
@torch.no_grad()
def ppl_scores(model, input_ids: torch.Tensor, unit: str = "block", batch_size: int = 16,
               cache_prefix: bool = True, progress: bool = True) -> list[float]:
    if cache_prefix:
        return ppl_from_traces(model, calibration_traces(model, input_ids, batch_size), unit, progress)
    return _naive_ppl(model, input_ids, unit, batch_size)


def _naive_ppl(model, input_ids, unit, batch_size) -> list[float]:
    from depthprune.pruning.module_surgery import module_skipped
    from depthprune.pruning.surgery import blocks_removed

    n_blocks = num_blocks(model)
    device = input_device(model)
    contexts = ([lambda n: blocks_removed(model, [n])] if unit == "block"
                else [lambda n: module_skipped(model, n, "attn"), lambda n: module_skipped(model, n, "mlp")])
    nll = [0.0] * (n_blocks * len(contexts))
    count = 0
    for start in range(0, input_ids.shape[0], batch_size):
        batch = input_ids[start : start + batch_size].to(device)
        for n in range(n_blocks):
            for k, ctx in enumerate(contexts):
                with ctx(n):
                    s, c = sequence_nll(model, batch)
                nll[n * len(contexts) + k] += float(s)
        count += c
    return [math.exp(v / count) for v in nll]
