"""Language-model loss computed from hidden states in chunks, so full vocab-size logits never exist at once."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

LOGITS_CHUNK_BYTES = 64 * 2**20
"""Float32 logits held at once under autograd (Gemma's 262k vocabulary: 64 tokens a chunk)."""
EVAL_LOGITS_BYTES = 32 * 2**20
"""Float32 logits held at once without gradients (a vocabulary slice for every token of the batch)."""


def softcap_of(model) -> float | None:
    return getattr(model.config, "final_logit_softcapping", None)


def _chunk_nll(hidden: torch.Tensor, labels: torch.Tensor, head: torch.nn.Module, softcap: float | None):
    logits = head(hidden).float()
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    return F.cross_entropy(logits, labels, reduction="sum")


def _vocab_chunked_nll(hidden: torch.Tensor, labels: torch.Tensor, head: torch.nn.Module, softcap: float | None,
                       chunk_bytes: int) -> torch.Tensor:
    """Summed NLL without gradients: logits for all tokens but a slice of the vocabulary at a time.

    The head's weight is read once per call (memory-bound on CPU) and a running log-sum-exp keeps at most
    ``chunk_bytes`` of float32 logits alive.
    """
    weight, bias = head.weight, getattr(head, "bias", None)
    hidden, labels = hidden.to(weight.device), labels.to(weight.device)
    n = hidden.shape[0]
    step = max(1024, chunk_bytes // (4 * max(n, 1)))
    run_max = torch.full((n,), float("-inf"), device=hidden.device)
    run_sum = torch.zeros(n, device=hidden.device)
    target = torch.zeros(n, device=hidden.device)
    rows = torch.arange(n, device=hidden.device)
    for v0 in range(0, weight.shape[0], step):
        logits = F.linear(hidden, weight[v0 : v0 + step], None if bias is None else bias[v0 : v0 + step]).float()
        if softcap:
            logits = torch.tanh(logits / softcap) * softcap
        new_max = torch.maximum(run_max, logits.max(dim=1).values)
        run_sum = run_sum * torch.exp(run_max - new_max) + torch.exp(logits - new_max[:, None]).sum(dim=1)
        run_max = new_max
        inside = (labels >= v0) & (labels < v0 + logits.shape[1])
        target[inside] = logits[rows[inside], labels[inside] - v0]
    return (run_max + torch.log(run_sum) - target).sum()


def chunked_nll(
    model, hidden: torch.Tensor, labels: torch.Tensor, chunk_tokens: int | None = None
) -> tuple[torch.Tensor, int]:
    """Sum of token NLLs for ``labels`` (same shape as ``hidden[..., 0]``, -100 = ignore), and their count.

    ``hidden`` is the final (normed) hidden state; position t predicts ``labels[t]``. Without gradients the
    vocabulary is sliced (the head's weight is read once); under autograd tokens are sliced and each chunk's
    logits are recomputed in backward instead of being stored.
    """
    head = model.get_output_embeddings()
    if chunk_tokens is None:
        chunk_tokens = max(16, LOGITS_CHUNK_BYTES // (4 * head.weight.shape[0]))
    softcap = softcap_of(model)
    h = hidden.reshape(-1, hidden.shape[-1])
    y = labels.reshape(-1).to(h.device)
    keep = y != -100
    h, y = h[keep], y[keep]
    if not (torch.is_grad_enabled() and h.requires_grad) and isinstance(head, torch.nn.Linear):
        return _vocab_chunked_nll(h, y, head, softcap, EVAL_LOGITS_BYTES), int(y.numel())
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
