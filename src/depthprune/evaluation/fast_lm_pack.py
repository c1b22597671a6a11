"""Packing for FastHFLM: rows that hold a context once and its continuations, their masks, and the probe."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from depthprune.errors import DepthpruneError

if TYPE_CHECKING:
    from depthprune.evaluation.fast_lm import FastHFLM

DICT_MASK_FAMILIES = frozenset({"qwen2", "qwen3", "gemma2", "gemma3_text"})
"""Bodies that take a dict of 4D masks keyed by ``config.layer_types``."""
TENSOR_MASK_FAMILIES = frozenset({"llama", "gemma", "gpt_neox", "mistral", "phi3"})
"""Bodies that take one 4D mask (sliding when ``config.sliding_window`` is set, as mistral/phi3 build it)."""
PACKED_FAMILIES = DICT_MASK_FAMILIES | TENSOR_MASK_FAMILIES
MASK_TYPES = frozenset({"full_attention", "sliding_attention"})


@dataclass
class Ending:
    """One continuation in a row: the requests it answers, the columns that predict it, its target ids."""

    requests: list[int]
    cols: list[int]
    targets: list[int]


@dataclass
class Row:
    """One model-input row: a context once, then continuations (see the fast_lm module doc)."""

    tokens: list[int]
    positions: list[int]
    segments: list[int]  # 0: context, e >= 1: the row's e-th continuation
    endings: list[Ending]

    @classmethod
    def start(cls, ctx) -> Row:
        return cls(list(ctx), list(range(len(ctx))), [0] * len(ctx), [])

    @property
    def n_ctx(self) -> int:
        return self.segments.count(0)

    def add(self, cont, requests: list[int]) -> None:
        """Append a continuation: its tokens but the last, at positions right after the context."""
        n_ctx, tail, start = self.n_ctx, list(cont[:-1]), len(self.tokens)
        self.tokens += tail
        self.positions += range(n_ctx, n_ctx + len(tail))
        self.segments += [len(self.endings) + 1] * len(tail)
        self.endings.append(Ending(requests, [n_ctx - 1] + list(range(start, start + len(tail))), list(cont)))

    @property
    def n_requests(self) -> int:
        return len(self.endings)

    @property
    def n_scored(self) -> int:
        return sum(len(e.targets) for e in self.endings)


@dataclass
class Pending:
    """Scored positions of one body call, waiting for the head: hidden states and (position, target) pairs."""

    endings: list[Ending]
    pair_pos: list[int]
    targets: list[int]
    h: torch.Tensor | None


def autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device_type=device.type, dtype=dtype, enabled=dtype is not None)


def mask_layout(cfg) -> tuple[str, dict[str, int | None]] | None:
    """How a body takes a packed mask: ("dict" | "tensor", {mask name: sliding window or None}); None: it can't."""
    if cfg.model_type not in PACKED_FAMILIES:
        return None
    if getattr(cfg, "_attn_implementation", "eager") not in ("eager", "sdpa"):
        return None
    window = getattr(cfg, "sliding_window", None)
    if cfg.model_type in DICT_MASK_FAMILIES:
        types = set(getattr(cfg, "layer_types", None) or ["full_attention"])
        if not types <= MASK_TYPES or ("sliding_attention" in types and not window):
            return None
        return "dict", {t: (window if t == "sliding_attention" else None) for t in types}
    if getattr(cfg, "layer_types", None) and set(cfg.layer_types) != {"full_attention"}:
        return None  # a tensor-mask family with mixed layer types: transformers would differ by version
    sliding = cfg.model_type in ("mistral", "phi3") and window is not None
    return "tensor", {"full_attention": window if sliding else None}


def plan_rows(requests, max_length: int, packed: bool, req_cap: int, row_cap: int) -> tuple[list[Row], int]:
    """Group requests by model-input context, drop duplicates, lay the groups out in rows (longest first).

    Also returns how many requests HFLM's left truncation shortened.
    """
    groups: dict[tuple[int, ...], dict[tuple[int, ...], list[int]]] = {}
    truncated = 0
    for i, (_, context_enc, continuation_enc) in enumerate(requests):
        if not context_enc or not continuation_enc or len(continuation_enc) > max_length:
            raise DepthpruneError(
                f"request {i}: context of {len(context_enc)} and continuation of {len(continuation_enc)} tokens "
                f"(need both non-empty, continuation <= max_length {max_length})")
        inp = (context_enc + continuation_enc)[-(max_length + 1):][:-1]  # HFLM's left truncation
        truncated += len(context_enc) + len(continuation_enc) > max_length + 1
        ctx = tuple(inp[: len(inp) - len(continuation_enc) + 1])
        groups.setdefault(ctx, {}).setdefault(tuple(continuation_enc), []).append(i)
    rows: list[Row] = []
    for ctx, conts in groups.items():
        row = None
        for cont, ids in conts.items():
            if row is None or not packed or row.n_requests >= req_cap or len(row.tokens) + len(cont) - 1 > row_cap:
                if row is not None:
                    rows.append(row)
                row = Row.start(ctx)
            row.add(cont, ids)
        rows.append(row)
    rows.sort(key=lambda r: (-len(r.tokens), r.tokens))
    return rows, truncated


def packed_masks(pos: torch.Tensor, seg: torch.Tensor, layout, dtype: torch.dtype, eager: bool):
    """The 4D masks (a dict per layer type, or one tensor) for rows of positions ``pos`` and segments ``seg``."""
    kind, windows = layout
    pq, pk = pos[:, :, None], pos[:, None, :]
    sq, sk = seg[:, :, None], seg[:, None, :]
    base = ((sk == 0) | (sk == sq)) & (pk <= pq)
    out = {}
    for name, window in windows.items():
        allowed = (base & (pq - pk < window) if window else base)[:, None]
        if eager:  # eager attention adds the mask to the scores
            out[name] = torch.zeros(allowed.shape, dtype=dtype, device=pos.device).masked_fill_(
                ~allowed, torch.finfo(dtype).min)
        else:
            out[name] = allowed
    return out if kind == "dict" else out["full_attention"]


def probe(lm: FastHFLM, mode: str) -> str:
    """Check the scoring paths on random tokens before the first real request; return the mode to use.

    1. unpacked rows against the model's own logits (body, head, softcap), on a short request;
    2. isolation: the second continuation B scores the same after two different first continuations
       (A, A' of one length; exactly equal when the mask hides A, in any precision);
    3. mask semantics: a packed row [ctx, B] (our mask and positions) against an unpacked one (the model's
       own causal / sliding-window masks), the context longer than the sliding window (up to 600 tokens);
    4. positions: B after A against B first.
    Checks 2 and 4 use a 24-token context; only 3 needs one longer than the window.
    In float32 every check must agree within 1e-3. In half precision 2 must within 1e-2 but 1, 3 and 4 only
    within 0.5: different kernel shapes alone move bf16 log-probs by ~0.1 (the logits are rounded to
    bf16), so subtler faults go unseen there; the families in PACKED_FAMILIES are tested in float32.
    Costs about two forward passes of that length.
    """
    cfg = lm.model.config
    fp32 = lm._compute_dtype == torch.float32
    tight, loose = (1e-3, 1e-3) if fp32 else (1e-2, 0.5)
    window = getattr(cfg, "sliding_window", None) or 0
    n_ctx = max(2, min(max(24, window + 12), lm.max_length - 8, 600))
    gen = torch.Generator().manual_seed(1234)
    toks = torch.randint(0, lm._vocab(), (n_ctx + 16,), generator=gen).tolist()
    ctx, a, a2, b = toks[:n_ctx], toks[n_ctx:n_ctx + 5], toks[n_ctx + 5:n_ctx + 10], toks[n_ctx + 10:]
    saved = lm.stats
    lm.stats = type(saved)()

    def run(rows: list[Row], packed: bool) -> list[list[torch.Tensor]]:
        out = lm._run_batch(rows, packed)
        it = iter(lp for _, lp, _ in out)
        return [[next(it) for _ in r.endings] for r in rows]

    def row(*conts, context=ctx[-24:]) -> Row:
        r = Row.start(context)
        for c in conts:
            r.add(c, [0])
        return r

    def maxdiff(x, y) -> float:
        return float((x - y).abs().max())

    try:
        short = Row.start(ctx[:6])
        short.add(b, [0])
        inp = torch.tensor([short.tokens], device=lm._input_device)
        with torch.no_grad(), autocast(inp.device, lm.mixed_precision_dtype):
            full = torch.log_softmax(lm.model(inp).logits[0, -len(b):].float(), dim=-1)
        ref = full.gather(1, torch.tensor(b, device=full.device)[:, None]).squeeze(1).cpu()
        del full
        d = lm.probe_diffs
        d["unpacked_vs_model"] = maxdiff(ref, run([short], False)[0][0])
        if not d["unpacked_vs_model"] <= loose:
            warnings.warn(f"FastHFLM: {cfg.model_type} body+head disagree with the model's own logits "
                          f"(max |diff| {d['unpacked_vs_model']:.3g}); using HFLM's stock code", stacklevel=3)
            return "hf"
        if mode == "packed":
            ab, a2b, ba = run([row(a, b), row(a2, b), row(b, a)], True)
            d["isolation"] = maxdiff(ab[1], a2b[1])
            d["positions"] = maxdiff(ab[1], ba[0])
            d["packed_vs_unpacked"] = maxdiff(run([row(b, context=ctx)], True)[0][0],
                                              run([row(b, context=ctx)], False)[0][0])
            bad = [k for k, tol in (("isolation", tight), ("positions", loose), ("packed_vs_unpacked", loose))
                   if not d[k] <= tol]
            if bad and lm._pack_request is not True:
                warnings.warn(f"FastHFLM: packed contexts fail the {', '.join(bad)} check for {cfg.model_type} "
                              f"({', '.join(f'{k} {d[k]:.3g}' for k in bad)}); running unpacked (slower, exact)",
                              stacklevel=3)
                return "unpacked"
        return mode
    finally:
        lm.stats = saved
