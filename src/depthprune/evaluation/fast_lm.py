"""An lm-eval model for multiple-choice loglikelihoods: exact, context-sharing, and memory-bounded.

:class:`FastHFLM` is lm-eval's ``HFLM`` (tokenisation through ``_encode_pair``, BOS, left truncation to
``max_length``, the cache hook, the evaluator: all lm-eval's) with ``_loglikelihood_tokens`` (and the ``auto``
batch-size probe) replaced. It computes what ``HFLM`` computes in another order: float32 results differ by
kernel rounding only (tiny test models: within 1e-4 of a float64-summed reference; Gemma 3 270M: at most
1.4e-3, mean 1.7e-4, on 880 loglikelihoods of 20-40 tokens, no is_greedy or accuracy difference; HFLM against
itself at another batch size differs by 3e-5: docs/results/zeroshot_fast_vs_hf_gemma3_270m.md).

**Context sharing by packing** (``fast_lm_pack``). Requests are grouped by their context tokens as they enter
the model (after the truncation). A row holds a group's context once, then every choice's continuation
(without its last token, as lm-eval does), each at the positions it would have alone (restarting after the
context), under a 4D mask: key ``k`` is visible from query ``q`` when ``k`` is in the context or in ``q``'s
own continuation, and ``pos[k] <= pos[q]`` (and ``pos[q] - pos[k] < sliding_window`` on sliding layers,
transformers' rule). Padding sees only padding, so no row is fully masked. A 4-choice HellaSwag document
costs one pass over its context instead of four.

**Head at scored positions only, vocabulary sliced.** The body (``get_decoder()``: final normed hidden
states) runs on the rows; the LM head runs only at positions that predict continuation tokens, collected over
body calls (``head_positions``), one vocabulary slice at a time, with the final-logit softcap (in the head's
dtype, as transformers applies it) and an online float32 log-sum-exp. ``is_greedy``'s argmax is tracked
slice by slice, a later slice winning only with a strictly larger logit: ties go to the lowest index, like
``torch.argmax``.

**Memory budget.** ``memory_budget_bytes`` (default 1 GiB) bounds what one model call allocates besides the
weights: an eighth (``logits_budget_bytes``) for vocabulary-slice temporaries (a slice's head output and its
float32 copy), the rest for activations, estimated from the config (per token: residual stream, q/k/v, MLP;
per query-key pair: attention scores, masks). Batches are cut by requests (``batch_size``) *and* by this
estimate, so a larger ``batch_size`` never exceeds it; a group too big for one row is split over rows (the
context repeated). ``batch_size="auto"`` lets the budget alone decide (no OOM probing). A request whose row
alone exceeds the budget still runs, alone (``stats.over_budget_rows``).

**Fallbacks (per model).** Packing needs a body that takes ``position_ids`` and ready 4D masks and derives
nothing else from positions: ``fast_lm_pack.PACKED_FAMILIES`` (llama, mistral, qwen2, qwen3, gemma, gemma2,
gemma3_text, phi3, gpt_neox) with eager or sdpa attention. Others (OPT's learned positions, flash attention,
unknown families) run unpacked: one right-padded row per request, no mask, as ``HFLM`` does, still with the
head at scored positions only. On first use ``fast_lm_pack.probe`` checks packed rows against unpacked ones
and those against the model's own logits; a disagreement falls back to unpacked rows, or to ``HFLM``'s code,
with a warning. Heads that are not a Linear layer, and seq2seq models, use ``HFLM``'s code.

Inputs go to the input embedding's device, hidden states to the head weight's; bf16/fp16 weights work on CPU
and GPU (masks in the model's dtype, log-sum-exp in float32).
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from lm_eval.models.huggingface import HFLM
from tqdm import tqdm

from depthprune.errors import DepthpruneError
from depthprune.evaluation import fast_lm_pack as pk

log = logging.getLogger(__name__)

DEFAULT_BUDGET_BYTES = 2**30
"""Activations + vocabulary-slice temporaries of one model call, on top of the weights."""
LOGITS_FRACTION = 8
"""The vocabulary-slice temporaries get budget // LOGITS_FRACTION (128 MiB of 1 GiB), activations the rest."""
MIN_SLICE = 4096
"""Narrowest vocabulary slice a batch is allowed to force (caps the scored tokens per call)."""
HEAD_POSITIONS = 1024
"""Scored positions collected over body calls before one pass of the head over the vocabulary: the head's
weight is streamed once per pass, so on CPU a few hundred positions a pass are ~3x cheaper per position
than the ~50 of one batch of 8 requests. Their hidden states are small (1024 x hidden)."""
MAX_SLICE = 16384
"""Widest vocabulary slice: on CPU a 16k-column head GEMM is faster than one over a 262k vocabulary, and smaller."""



@dataclass
class FastStats:
    """Bookkeeping of the model calls made so far (tests and benchmarks read it)."""

    mode: str = ""  # packed | unpacked | hf
    requests: int = 0  # requests scored by the model (duplicates and cache hits excluded)
    model_calls: int = 0
    rows: int = 0
    tokens: int = 0  # padded input tokens fed to the body
    scored_tokens: int = 0
    head_positions: int = 0  # distinct positions the head ran at (choices share the first)
    head_calls: int = 0  # vocabulary passes (scored positions of several body calls go through the head together)
    head_slices: int = 0  # vocabulary slices over all passes
    max_call_tokens: int = 0  # padded tokens of the largest call (rows x length)
    max_est_activation_bytes: int = 0  # the largest per-call activation estimate
    max_logits_bytes: int = 0  # largest vocabulary-slice temporaries alive at once, from the real tensors
    over_budget_rows: int = 0  # single rows whose estimate alone exceeded the activation budget
    probe_s: float = 0.0  # time the first-use probe took

    def to_json(self) -> dict:
        return asdict(self)


class FastHFLM(HFLM):
    """``HFLM`` whose loglikelihoods share contexts and never hold full-vocabulary logits; see the module doc.

    Extra keyword arguments (everything else goes to ``HFLM``):

    ``memory_budget_bytes``: activations + logits temporaries per model call (default 1 GiB).
    ``logits_budget_bytes``: the vocabulary-slice part of it (default an eighth); tests set it small to
    exercise slicing.
    ``pack``: None (default) packs when the family supports it and the probe agrees; False never packs;
    True packs for a supported family even if the probe disagrees (for debugging only).
    ``verify``: run the probe on first use (default True).
    ``head_positions``: scored positions per head pass (default HEAD_POSITIONS; answers are final, and go to
    the cache hook, when their head pass has run).
    """

    def __init__(self, pretrained, *, memory_budget_bytes: int = DEFAULT_BUDGET_BYTES,
                 logits_budget_bytes: int | None = None, pack: bool | None = None, verify: bool = True,
                 head_positions: int = HEAD_POSITIONS, **kwargs):
        if memory_budget_bytes <= 0 or (logits_budget_bytes is not None and not
                                        0 < logits_budget_bytes < memory_budget_bytes):
            raise DepthpruneError(f"memory budget {memory_budget_bytes} / logits budget {logits_budget_bytes}: "
                                  "need 0 < logits budget < memory budget")
        super().__init__(pretrained, **kwargs)
        self.memory_budget_bytes = int(memory_budget_bytes)
        self.logits_budget_bytes = int(logits_budget_bytes or memory_budget_bytes // LOGITS_FRACTION)
        self.activation_budget_bytes = self.memory_budget_bytes - self.logits_budget_bytes
        self._pack_request = pack
        self.head_positions = max(1, int(head_positions))
        self._verify = verify
        self._mode: str | None = None  # decided on first use
        self.stats = FastStats()
        self.probe_diffs: dict[str, float] = {}

    @property
    def _body(self):
        """The decoder stack with its final norm (its last_hidden_state is the head's input)."""
        try:
            body = self.model.get_decoder()
        except (AttributeError, NotImplementedError):
            body = None
        return body if body is not None and body is not self.model else self.model.base_model

    @property
    def _input_device(self) -> torch.device:
        return self.model.get_input_embeddings().weight.device

    @property
    def _compute_dtype(self) -> torch.dtype:
        return self.mixed_precision_dtype or self.model.get_input_embeddings().weight.dtype

    def _mask_layout(self):
        return pk.mask_layout(self.model.config)

    def _masks(self, pos: torch.Tensor, seg: torch.Tensor, layout):
        eager = getattr(self.model.config, "_attn_implementation", "eager") == "eager"
        return pk.packed_masks(pos, seg, layout, self._compute_dtype, eager)

    # --- cost model -----------------------------------------------------------------------------------------

    def _cost(self) -> tuple[float, float]:
        """Estimated activation bytes per token and per (query, key) pair of one forward pass."""
        cfg = self.model.config
        elem = torch.empty((), dtype=self._compute_dtype).element_size()
        hidden = cfg.hidden_size
        inter = getattr(cfg, "intermediate_size", None) or getattr(cfg, "ffn_dim", None) or 4 * hidden
        heads = cfg.num_attention_heads
        kv = getattr(cfg, "num_key_value_heads", None) or heads
        head_dim = getattr(cfg, "head_dim", None) or hidden // heads
        n_masks = len(set(getattr(cfg, "layer_types", None) or ["full_attention"]))
        per_token = elem * (6 * hidden + 3 * inter + 2 * (heads + 2 * kv) * head_dim) + 4 * head_dim * n_masks + 64
        per_pair = heads * (2 * elem + 4) + n_masks * max(elem, 1) + 8
        return float(per_token), float(per_pair)

    def _est_bytes(self, rows: int, length: int) -> int:
        per_token, per_pair = self._cost()
        return int(rows * (length * per_token + length * length * per_pair))

    def _row_cap(self) -> int:
        """Longest row (tokens) whose activation estimate fits the budget."""
        per_token, per_pair = self._cost()
        b = self.activation_budget_bytes
        return max(1, int((-per_token + math.sqrt(per_token**2 + 4 * per_pair * b)) / (2 * per_pair)))

    def _vocab(self) -> int:
        return int(self.model.get_output_embeddings().weight.shape[0])

    def _slice_bytes_per_entry(self) -> int:
        """A slice's head output (weight dtype) plus its float32 copy, per entry."""
        elem = self.model.get_output_embeddings().weight.element_size()
        return 4 + (elem if elem != 4 else 0)

    def _score_cap(self) -> int:
        """Most scored tokens per call: their slice of MIN_SLICE columns must fit the logits budget."""
        vocab = self._vocab()
        return max(1, self.logits_budget_bytes // (self._slice_bytes_per_entry() * min(MIN_SLICE, vocab)))

    def _detect_batch_size(self, requests=None, pos: int = 0):
        """``auto`` for lm-eval's own paths (rolling, generation): rows of max_length that fit the budget."""
        fits = self.activation_budget_bytes // max(1, self._est_bytes(1, self.max_length))
        return int(max(1, min(fits, self.max_batch_size or fits)))

    # --- scoring: vocabulary-sliced head ---------------------------------------------------------------------

    def _head_logits(self, h: torch.Tensor, v0: int, v1: int) -> torch.Tensor:
        head = self.model.get_output_embeddings()
        softcap = getattr(self.model.config, "final_logit_softcapping", None)
        with pk.autocast(h.device, self.mixed_precision_dtype):
            logits = F.linear(h, head.weight[v0:v1], None if head.bias is None else head.bias[v0:v1])
        if softcap:  # transformers applies it to the head's output, in the head's dtype
            logits = logits / softcap
            logits = torch.tanh(logits)
            logits = logits * softcap
        return logits

    def _score_hidden(self, h: torch.Tensor, pos: torch.Tensor, targets: torch.Tensor):
        """Log p(target) (float32) and "target is the argmax over the whole vocabulary" for (position, target) pairs.

        ``h`` holds each scored position once (choices share their first one, the context's last token);
        ``pos[j]`` indexes the row of ``h`` that predicts ``targets[j]``.
        """
        dev = self.model.get_output_embeddings().weight.device
        h, pos, targets = h.to(dev), pos.to(dev), targets.to(dev)
        n = h.shape[0]
        vocab = self._vocab()
        per_entry = self._slice_bytes_per_entry()
        step = max(1, min(vocab, MAX_SLICE, self.logits_budget_bytes // (per_entry * max(n, 1))))
        run_max = torch.full((n,), float("-inf"), device=dev)
        run_sum = torch.zeros(n, device=dev)
        arg = torch.zeros(n, dtype=torch.long, device=dev)
        tgt = torch.zeros(targets.shape, device=dev)
        for v0 in range(0, vocab, step):
            v1 = min(vocab, v0 + step)
            raw = self._head_logits(h, v0, v1)
            logits = raw.float()
            alive = raw.numel() * raw.element_size() + (0 if logits is raw else logits.numel() * 4)
            self.stats.max_logits_bytes = max(self.stats.max_logits_bytes, alive)
            self.stats.head_slices += 1
            del raw
            m, idx = logits.max(dim=1)  # the first maximal index within the slice
            arg = torch.where(m > run_max, idx + v0, arg)  # strictly greater: an earlier slice keeps a tie
            inside = (targets >= v0) & (targets < v1)
            tgt[inside] = logits[pos[inside], targets[inside] - v0]
            new_max = torch.maximum(run_max, m)
            run_sum = run_sum * torch.exp(run_max - new_max) + logits.sub_(new_max[:, None]).exp_().sum(dim=1)
            run_max = new_max
            del logits
        lse = run_max + torch.log(run_sum)
        return tgt - lse[pos], arg[pos] == targets

    # --- rows and batches ------------------------------------------------------------------------------------

    def _plan(self, requests, packed: bool, req_cap: int) -> list[pk.Row]:
        rows, truncated = pk.plan_rows(requests, self.max_length, packed, req_cap, self._row_cap())
        if truncated:
            log.warning("%d of %d requests are longer than max_length %d + 1 tokens: their contexts were "
                        "left-truncated, as HFLM does", truncated, len(requests), self.max_length)
        return rows

    def _batches(self, rows: list[pk.Row], req_cap: int):
        score_cap = self._score_cap()
        batch: list[pk.Row] = []
        n_req = n_score = 0
        for row in rows:
            if batch and (n_req + row.n_requests > req_cap or n_score + row.n_scored > score_cap
                          or self._est_bytes(len(batch) + 1, len(batch[0].tokens)) > self.activation_budget_bytes):
                yield batch
                batch, n_req, n_score = [], 0, 0
            batch.append(row)
            n_req += row.n_requests
            n_score += row.n_scored
        if batch:
            yield batch

    def _hidden_batch(self, batch: list[pk.Row], packed: bool) -> pk.Pending:
        """One body call: the final hidden state at each distinct scored position of the batch."""
        dev = self._input_device
        length = len(batch[0].tokens)
        ids = torch.zeros((len(batch), length), dtype=torch.long)
        pos = torch.zeros_like(ids)
        seg = torch.full_like(ids, -1)  # padding: its own segment at position 0, invisible to real tokens
        for r, row in enumerate(batch):
            n = len(row.tokens)
            ids[r, :n] = torch.tensor(row.tokens)
            pos[r, :n] = torch.tensor(row.positions)
            seg[r, :n] = torch.tensor(row.segments)
        ids = ids.to(dev)
        kwargs = {}
        if packed:
            pos, seg = pos.to(dev), seg.to(dev)
            kwargs = {"attention_mask": self._masks(pos, seg, self._layout), "position_ids": pos}
        with torch.no_grad(), pk.autocast(dev, self.mixed_precision_dtype):
            out = self._body(input_ids=ids, use_cache=False, **kwargs)
        hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
        del out, kwargs
        unique: dict[tuple[int, int], int] = {}
        part = pk.Pending([], [], [], None)
        for r, row in enumerate(batch):
            for e in row.endings:
                part.pair_pos += [unique.setdefault((r, c), len(unique)) for c in e.cols]
                part.targets += e.targets
                part.endings.append(e)
        rr, cc = zip(*unique, strict=True)
        part.h = hidden[torch.tensor(rr, device=hidden.device), torch.tensor(cc, device=hidden.device)]
        s = self.stats
        s.model_calls += 1
        s.rows += len(batch)
        s.tokens += ids.numel()
        s.max_call_tokens = max(s.max_call_tokens, ids.numel())
        est = self._est_bytes(len(batch), length)
        s.max_est_activation_bytes = max(s.max_est_activation_bytes, est)
        if len(batch) == 1 and est > self.activation_budget_bytes:
            s.over_budget_rows += 1
        return part

    def _score_pending(self, parts: list[pk.Pending]) -> list[tuple[pk.Ending, torch.Tensor, torch.Tensor]]:
        """The head over the scored positions of several body calls at once: per ending, log-probs and greedy."""
        offsets, n = [], 0
        for p in parts:
            offsets.append(n)
            n += p.h.shape[0]
        h = torch.cat([p.h for p in parts])
        pair_pos = torch.tensor([i + off for p, off in zip(parts, offsets) for i in p.pair_pos])
        targets = torch.tensor([t for p in parts for t in p.targets])
        with torch.no_grad():
            lp, greedy = self._score_hidden(h, pair_pos, targets)
        lp, greedy = lp.cpu(), greedy.cpu()
        self.stats.scored_tokens += len(targets)
        self.stats.head_positions += n
        self.stats.head_calls += 1
        out, k = [], 0
        for p in parts:
            for e in p.endings:
                out.append((e, lp[k:k + len(e.targets)], greedy[k:k + len(e.targets)]))
                k += len(e.targets)
        return out

    def _run_batch(self, batch: list[pk.Row], packed: bool) -> list[tuple[pk.Ending, torch.Tensor, torch.Tensor]]:
        """Body and head for one batch."""
        return self._score_pending([self._hidden_batch(batch, packed)])

    # --- mode selection --------------------------------------------------------------------------------------

    def _decide_mode(self) -> str:
        layout = self._mask_layout() if self._pack_request is not False else None
        self._layout = layout
        mode = "packed" if layout is not None else "unpacked"
        if not isinstance(self.model.get_output_embeddings(), torch.nn.Linear):
            warnings.warn("FastHFLM: the LM head is not a Linear layer; using HFLM's stock code", stacklevel=3)
            mode = "hf"
        elif self._verify:
            t0 = time.perf_counter()
            mode = pk.probe(self, mode)
            self.stats.probe_s = time.perf_counter() - t0
        self.stats.mode = mode
        return mode

    # --- lm-eval entry point ---------------------------------------------------------------------------------

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, override_bs: int | None = None):
        if self.backend != "causal":
            return super()._loglikelihood_tokens(requests, disable_tqdm=disable_tqdm, override_bs=override_bs)
        if self._mode is None:
            self._mode = self._decide_mode()
        if self._mode == "hf":
            return super()._loglikelihood_tokens(requests, disable_tqdm=disable_tqdm, override_bs=override_bs)
        packed = self._mode == "packed"
        if override_bs:
            req_cap = int(override_bs)
        elif str(self.batch_size).startswith("auto"):
            req_cap = len(requests) or 1
        else:
            req_cap = int(self.batch_size)
        rows = self._plan(requests, packed, req_cap)
        res: list[tuple[float, bool] | None] = [None] * len(requests)
        pbar = tqdm(total=len(requests), disable=disable_tqdm or self.rank != 0, unit="req",
                    desc=f"loglikelihood ({self._mode})", smoothing=0.05)
        pending: list[pk.Pending] = []

        def flush():
            done = 0
            for ending, lp, greedy in self._score_pending(pending):
                answer = (float(lp.double().sum()), bool(greedy.all()))
                self.stats.requests += 1
                for i in ending.requests:
                    res[i] = answer
                    if requests[i][0] is not None:
                        self.cache_hook.add_partial("loglikelihood", requests[i][0], answer)
                    done += 1
            pending.clear()
            pbar.update(done)

        head_batch = min(self.head_positions, self._score_cap())
        for batch in self._batches(rows, req_cap):
            pending.append(self._hidden_batch(batch, packed))
            if sum(p.h.shape[0] for p in pending) >= head_batch:
                flush()
        if pending:
            flush()
        pbar.close()
        return res
