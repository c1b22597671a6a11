"""Language-model loss computed from hidden states in chunks, so full vocab-size logits never exist at once."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

LOGITS_CHUNK_BYTES = 64 * 2**20
"""Float32 logits held at once under autograd (Gemma's 262k vocabulary: 64 tokens a chunk)."""
EVAL_LOGITS_BYTES = 32 * 2**20
"""Float32 logits held at once without gradients (a vocabulary slice for every token of the batch)."""
GRAD_LOGITS_BYTES = 8 * 2**20
"""The same under autograd, where backward keeps a few slice-sized temporaries alive at once."""


def softcap_of(model) -> float | None:
    return getattr(model.config, "final_logit_softcapping", None)


def _chunk_nll(hidden: torch.Tensor, labels: torch.Tensor, head: torch.nn.Module, softcap: float | None):
    logits = head(hidden).float()
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    return F.cross_entropy(logits, labels, reduction="sum")


def _slice_width(n_tokens: int, chunk_bytes: int) -> int:
    return max(1024, chunk_bytes // (4 * max(n_tokens, 1)))


def compute_dtype(hidden: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    """The dtype the head's matmuls run in: autocast's when it is on for this device, else the inputs' type."""
    kind = hidden.device.type
    if torch.is_autocast_enabled(kind):
        return torch.get_autocast_dtype(kind)
    return torch.promote_types(hidden.dtype, weight.dtype)


def _slice_logits(hidden, weight, bias, v0: int, step: int, softcap: float | None, dtype: torch.dtype):
    """Float32 logits of one vocabulary slice; the matmul runs in ``dtype`` (``hidden`` already in it)."""
    b = None if bias is None else bias[v0 : v0 + step].to(dtype)
    with torch.autocast(hidden.device.type, enabled=False):
        logits = F.linear(hidden, weight[v0 : v0 + step].to(dtype), b).float()
    return torch.tanh(logits / softcap) * softcap if softcap else logits


def _lse_and_target(hidden, labels, weight, bias, softcap, chunk_bytes) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-sum-exp over the vocabulary and the target's logit, one vocabulary slice at a time."""
    n = hidden.shape[0]
    step = _slice_width(n, chunk_bytes)
    dtype = compute_dtype(hidden, weight)
    hidden = hidden.to(dtype)
    run_max = torch.full((n,), float("-inf"), device=hidden.device)
    run_sum = torch.zeros(n, device=hidden.device)
    target = torch.zeros(n, device=hidden.device)
    rows = torch.arange(n, device=hidden.device)
    for v0 in range(0, weight.shape[0], step):
        logits = _slice_logits(hidden, weight, bias, v0, step, softcap, dtype)
        new_max = torch.maximum(run_max, logits.max(dim=1).values)
        run_sum = run_sum * torch.exp(run_max - new_max) + torch.exp(logits - new_max[:, None]).sum(dim=1)
        run_max = new_max
        inside = (labels >= v0) & (labels < v0 + logits.shape[1])
        target[inside] = logits[rows[inside], labels[inside] - v0]
    return run_max + torch.log(run_sum), target


class _VocabSlicedNLL(torch.autograd.Function):
    """Summed NLL whose forward and backward both walk the vocabulary in slices.

    Only per-token log-sum-exp values are saved; backward recomputes each slice's logits, so at most
    ``chunk_bytes`` of float32 logits exist at once and the head's weight is read twice per step, not once
    per token chunk. Gradients flow to the hidden states and, when they require it, the head's weight/bias.

    Forward and backward compute the logits in the same dtype (autocast's when it is on in forward: backward
    runs outside autocast), so the softmax of backward is the one whose log-sum-exp forward saved.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, softcap, chunk_bytes):
        lse, target = _lse_and_target(hidden, labels, weight, bias, softcap, chunk_bytes)
        ctx.save_for_backward(hidden, weight, bias, labels, lse)
        ctx.softcap, ctx.chunk_bytes = softcap, chunk_bytes
        ctx.dtype = compute_dtype(hidden, weight)
        return (lse - target).sum()

    @staticmethod
    def backward(ctx, grad_out):
        hidden, weight, bias, labels, lse = ctx.saved_tensors
        softcap, dtype = ctx.softcap, ctx.dtype
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        n = hidden.shape[0]
        step = _slice_width(n, ctx.chunk_bytes)
        h = hidden.to(dtype)
        rows = torch.arange(n, device=hidden.device)
        grad_h = torch.zeros(hidden.shape, dtype=torch.float32, device=hidden.device) if need_h else None
        grad_w = torch.zeros_like(weight) if need_w else None
        grad_b = torch.zeros_like(bias) if need_b and bias is not None else None
        for v0 in range(0, weight.shape[0], step):
            logits = _slice_logits(h, weight, bias, v0, step, softcap, dtype)
            g = torch.exp(logits - lse[:, None])
            inside = (labels >= v0) & (labels < v0 + logits.shape[1])
            g[rows[inside], labels[inside] - v0] -= 1.0
            if softcap:
                g = g * (1.0 - (logits / softcap) ** 2)
            g = g * grad_out
            gc = g.to(dtype)
            w_slice = weight[v0 : v0 + logits.shape[1]].to(dtype)
            if need_h:
                grad_h += (gc @ w_slice).float()
            if need_w:
                grad_w[v0 : v0 + logits.shape[1]] = (gc.t() @ h).to(weight.dtype)
            if grad_b is not None:
                grad_b[v0 : v0 + logits.shape[1]] = g.sum(dim=0).to(bias.dtype)
        return (grad_h.to(hidden.dtype) if need_h else None), grad_w, grad_b, None, None, None


def chunked_nll(
    model, hidden: torch.Tensor, labels: torch.Tensor, chunk_tokens: int | None = None
) -> tuple[torch.Tensor, int]:
    """Sum of token NLLs for ``labels`` (same shape as ``hidden[..., 0]``, -100 = ignore), and their count.

    ``hidden`` is the final (normed) hidden state; position t predicts ``labels[t]``. With a linear head the
    vocabulary is sliced, with or without autograd (:class:`_VocabSlicedNLL`), so full logits never exist.
    Other heads, or an explicit ``chunk_tokens``, slice tokens instead and recompute each chunk's logits in
    backward.
    """
    head = model.get_output_embeddings()
    softcap = softcap_of(model)
    h = hidden.reshape(-1, hidden.shape[-1])
    y = labels.reshape(-1).to(h.device)
    keep = y != -100
    h, y = h[keep], y[keep]
    if isinstance(head, torch.nn.Linear) and chunk_tokens is None:
        weight, bias = head.weight, head.bias
        h, y = h.to(weight.device), y.to(weight.device)
        if torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad):
            return _VocabSlicedNLL.apply(h, weight, bias, y, softcap, GRAD_LOGITS_BYTES), int(y.numel())
        with torch.no_grad():
            lse, target = _lse_and_target(h, y, weight, bias, softcap, EVAL_LOGITS_BYTES)
        return (lse - target).sum(), int(y.numel())
    if chunk_tokens is None:
        chunk_tokens = max(16, LOGITS_CHUNK_BYTES // (4 * head.weight.shape[0]))
    total = h.new_zeros((), dtype=torch.float32)
    for start in range(0, y.numel(), chunk_tokens):
        hs, ys = h[start : start + chunk_tokens], y[start : start + chunk_tokens]
        if torch.is_grad_enabled() and hs.requires_grad:
            total = total + checkpoint(_chunk_nll, hs, ys, head, softcap, use_reentrant=False)
        else:
            total = total + _chunk_nll(hs, ys, head, softcap)
    return total, int(y.numel())


def shifted_labels(input_ids: torch.Tensor) -> torch.Tensor:
    """Labels aligned with hidden states: position t predicts token t+1; the last position predicts nothing."""
    labels = torch.full_like(input_ids, -100)
    labels[:, :-1] = input_ids[:, 1:]
    return labels


def final_hidden(model, input_ids: torch.Tensor) -> torch.Tensor:
    """Last hidden state after the final norm (the LM head's input)."""
    out = model.base_model(input_ids=input_ids, use_cache=False)
    return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]


def sequence_nll(model, input_ids: torch.Tensor, chunk_tokens: int | None = None):
    """Summed next-token NLL over a batch of sequences, and the number of predicted tokens."""
    return chunked_nll(model, final_hidden(model, input_ids), shifted_labels(input_ids), chunk_tokens)
