"""PPL: calibration perplexity with one candidate removed (forward passes only).

Each block's input is computed once per calibration batch; removing block n then re-runs only blocks
n+1..N and the head. ``cache_prefix=False`` does it the naive way (a full forward per candidate, the
candidate skipped) and is kept to check the cached path. For modules, the candidate's block runs with that
module skipped. Iterative pruning updates the traces in place after each removal (``PplIncremental``).
"""

from __future__ import annotations

import math

import torch
from tqdm.auto import tqdm

from depthprune.core.loss import chunked_nll, sequence_nll, shifted_labels
from depthprune.importance.base import Criterion, Incremental, register
from depthprune.models.loading import input_device
from depthprune.models.skipping import module_skipped
from depthprune.models.specs import num_blocks
from depthprune.models.trace import Trace, run_block, run_tail, trace_blocks


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


@torch.no_grad()
def _naive_ppl(model, input_ids, unit, batch_size) -> list[float]:
    """A full forward per candidate with it skipped (both modules skipped = the block removed)."""
    n_blocks = num_blocks(model)
    device = input_device(model)
    parts = [("attn", "mlp")] if unit == "block" else [("attn",), ("mlp",)]
    nll = [0.0] * (n_blocks * len(parts))
    count = 0
    for start in range(0, input_ids.shape[0], batch_size):
        batch = input_ids[start : start + batch_size].to(device)
        for n in range(n_blocks):
            for k, skip in enumerate(parts):
                with module_skipped(model, n, *skip):
                    s, c = sequence_nll(model, batch)
                nll[n * len(parts) + k] += float(s)
        count += c
    return [math.exp(v / count) for v in nll]


class PplIncremental(Incremental):
    """Calibration traces kept in step with the model: inputs before a removed block are reused."""
    def __init__(self, model, input_ids: torch.Tensor, batch_size: int, progress: bool = True):
        self.model, self.progress = model, progress
        self.traces = calibration_traces(model, input_ids, batch_size)

    def scores(self) -> list[float]:
        return ppl_from_traces(self.model, self.traces, progress=self.progress)

    @torch.no_grad()
    def removed(self, index: int) -> None:
        n = num_blocks(self.model)
        for trace, _ in self.traces:
            del trace.calls[index]
            h = trace.inputs[index]
            del trace.inputs[index:]
            for i in range(index, n):
                trace.inputs.append(h)
                h = run_block(self.model, trace, i, h)
            trace.output = h


@register
class Ppl(Criterion):
    name = "ppl"
    description = "calibration perplexity without the candidate (Shortened LLaMA, SLEB)"
    units = ("block", "module")

    @torch.no_grad()
    def score(self, model, input_ids, unit="block", batch_size=16, progress=True, cache_prefix: bool = True):
        if cache_prefix:
            return ppl_from_traces(model, calibration_traces(model, input_ids, batch_size), unit, progress)
        return _naive_ppl(model, input_ids, unit, batch_size)

    def incremental(self, model, input_ids, batch_size=16, progress=True):
        return PplIncremental(model, input_ids, batch_size, progress)
