"""PPL: calibration perplexity with one candidate removed (forward passes only).

Each block's input is computed once per calibration batch; removing block n then re-runs only blocks
n+1..N and the head. ``cache_prefix=False`` does it the naive way (a full forward per candidate, the
candidate skipped) and is kept to check the cached path. For modules, the candidate's block runs with that
module skipped. Iterative pruning updates the traces in place after each removal (``PplIncremental``).

One-shot scoring streams: a batch's trace is made, replayed for every candidate and dropped, so memory holds one
batch's block inputs, not the whole calibration set's (1000 x 128 tokens of a 7B model would be ~30 GiB). With
``resume=path`` the per-candidate NLL sums are written there after every batch and a rerun continues from them
(the sums are exact, so the scores equal an uninterrupted run's): scoring that takes hours can be stopped. The
file is keyed by the model's fingerprint and a hash of the calibration tokens; another model's is refused.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Iterable
from pathlib import Path

import torch
from tqdm.auto import tqdm

from depthprune.core.io import write_json_atomic
from depthprune.core.loss import chunked_nll, sequence_nll, shifted_labels
from depthprune.errors import DepthpruneError
from depthprune.importance.base import Criterion, Incremental, model_fingerprint, register
from depthprune.models.loading import input_device
from depthprune.models.skipping import module_skipped
from depthprune.models.specs import num_blocks
from depthprune.models.trace import Trace, run_block, run_tail, trace_blocks


def iter_traces(model, input_ids: torch.Tensor, batch_size: int, skip: int = 0):
    """One trace (block inputs + calls) and its labels per calibration batch, made as it is asked for."""
    device = input_device(model)
    for start in range(skip * batch_size, input_ids.shape[0], batch_size):
        batch = input_ids[start : start + batch_size].to(device)
        yield trace_blocks(model, batch), shifted_labels(batch)


def calibration_traces(model, input_ids: torch.Tensor, batch_size: int) -> list[tuple[Trace, torch.Tensor]]:
    """Every batch's trace, kept (iterative pruning updates them after each removal)."""
    return list(iter_traces(model, input_ids, batch_size))


class NllSums:
    """Per-candidate NLL sums and the token count so far; saved after every batch when it has a path."""

    def __init__(self, size: int, path: str | Path | None = None, key: dict | None = None):
        self.nll, self.count, self.batches, self.wall_s = [0.0] * size, 0, 0, 0.0
        self.path, self.key = (Path(path) if path is not None else None), key
        self._t0 = time.perf_counter()
        if self.path is not None and self.path.is_file():
            try:
                state = json.loads(self.path.read_text())
            except (OSError, ValueError) as exc:
                raise DepthpruneError(f"resume file {self.path}: unreadable ({exc}); delete it to score afresh") \
                    from None
            if not isinstance(state, dict) or state.get("key") != key or len(state.get("nll", [])) != size:
                raise DepthpruneError(f"resume file {self.path} holds the partial scores of another model or "
                                      "calibration set; delete it to score afresh")
            self.nll, self.count, self.batches = state["nll"], state["count"], state["batches"]
            self.wall_s = state.get("wall_s", 0.0)
        self.resumed_from = self.batches

    def batch_done(self, count: int) -> None:
        now = time.perf_counter()
        self.count, self.batches, self.wall_s, self._t0 = self.count + count, self.batches + 1, \
            self.wall_s + now - self._t0, now
        if self.path is not None:
            write_json_atomic(self.path, {"key": self.key, "batches": self.batches, "count": self.count,
                                          "nll": self.nll, "wall_s": self.wall_s})

    def ppl(self) -> list[float]:
        return [math.exp(v / self.count) for v in self.nll]


def resume_key(model, input_ids: torch.Tensor, unit: str, batch_size: int) -> dict:
    """What a partial-scores file must match: model, unit, batching and the calibration tokens themselves."""
    digest = hashlib.sha256(input_ids.cpu().numpy().tobytes()).hexdigest()
    return {"model": model_fingerprint(model), "unit": unit, "batch_size": batch_size,
            "calibration_sha256": digest, "shape": list(input_ids.shape)}


@torch.no_grad()
def ppl_from_traces(model, traces: Iterable, unit: str = "block", progress: bool = True,
                    sums: NllSums | None = None, total: int | None = None) -> list[float]:
    """Calibration PPL without each candidate, replaying only the blocks after it (``sums``: resumed state)."""
    n_blocks = num_blocks(model)
    parts = [None] if unit == "block" else ["attn", "mlp"]
    sums = sums or NllSums(n_blocks * len(parts))
    nll = sums.nll
    total = len(traces) if total is None else total
    bar = tqdm(total=len(nll) * total, initial=len(nll) * sums.batches, desc="ppl scores", disable=not progress,
               leave=False)
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
        sums.batch_done(c)
    bar.close()
    return sums.ppl()


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
    resumable = True

    @torch.no_grad()
    def score(self, model, input_ids, unit="block", batch_size=16, progress=True, cache_prefix: bool = True,
              resume: str | Path | None = None):
        if not cache_prefix:
            return _naive_ppl(model, input_ids, unit, batch_size)
        size = num_blocks(model) * (1 if unit == "block" else 2)
        key = resume_key(model, input_ids, unit, batch_size) if resume is not None else None
        sums = NllSums(size, resume, key)
        total = -(-input_ids.shape[0] // batch_size)
        scores = ppl_from_traces(model, iter_traces(model, input_ids, batch_size, skip=sums.batches), unit,
                                 progress, sums, total)
        if resume is None:
            return scores
        # over every sitting that worked on it (the BlockScores' own wall_s is this call's)
        return scores, {"resumed_from_batch": sums.resumed_from, "batches": total, "scoring_wall_s": sums.wall_s}

    def incremental(self, model, input_ids, batch_size=16, progress=True):
        return PplIncremental(model, input_ids, batch_size, progress)
