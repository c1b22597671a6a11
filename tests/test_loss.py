"""The vocabulary-sliced loss: value and gradients equal plain cross-entropy over full logits."""

from __future__ import annotations

import types

import pytest
import torch
import torch.nn.functional as F

from depthprune.core import loss as loss_mod
from depthprune.core.loss import chunked_nll


def _fake_model(head: torch.nn.Module, softcap: float | None):
    model = types.SimpleNamespace(config=types.SimpleNamespace(final_logit_softcapping=softcap))
    model.get_output_embeddings = lambda: head
    return model


def _reference(hidden, labels, head, softcap):
    logits = head(hidden.reshape(-1, hidden.shape[-1])).float()
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    return F.cross_entropy(logits, labels.reshape(-1), reduction="sum", ignore_index=-100)


@pytest.mark.parametrize("softcap,bias", [(None, False), (30.0, False), (None, True)])
def test_vocab_sliced_loss_matches_full_logits_in_value_and_gradients(monkeypatch, softcap, bias):
    # Slices of 1024 columns over a 3000-word vocabulary: three slices, the last one partial.
    monkeypatch.setattr(loss_mod, "GRAD_LOGITS_BYTES", 1)
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 3000, bias=bias)
    hidden = torch.randn(2, 9, 16, requires_grad=True)
    labels = torch.randint(0, 3000, (2, 9))
    labels[0, -1] = -100
    ours, count = chunked_nll(_fake_model(head, softcap), hidden, labels)
    ours.backward()
    got = [hidden.grad.clone(), head.weight.grad.clone()] + ([head.bias.grad.clone()] if bias else [])
    hidden.grad, head.weight.grad = None, None
    if bias:
        head.bias.grad = None
    ref = _reference(hidden, labels, head, softcap)
    ref.backward()
    want = [hidden.grad, head.weight.grad] + ([head.bias.grad] if bias else [])
    assert count == 17
    assert torch.allclose(ours, ref, rtol=1e-5)
    for g, w in zip(got, want):
        assert torch.allclose(g, w, rtol=1e-4, atol=1e-6)


def test_frozen_head_gets_no_gradient_but_hidden_does():
    torch.manual_seed(0)
    head = torch.nn.Linear(8, 1500, bias=False).requires_grad_(False)
    hidden = torch.randn(1, 5, 8, requires_grad=True)
    labels = torch.randint(0, 1500, (1, 5))
    total, _ = chunked_nll(_fake_model(head, None), hidden, labels)
    total.backward()
    assert head.weight.grad is None
    assert hidden.grad is not None and hidden.grad.abs().sum() > 0


def _autocast_reference(hidden, labels, head):
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = F.linear(hidden.reshape(-1, hidden.shape[-1]), head.weight, head.bias).float()
        return F.cross_entropy(logits, labels.reshape(-1), reduction="sum", ignore_index=-100)


def test_vocab_sliced_loss_under_bf16_autocast_matches_autocast_cross_entropy(monkeypatch):
    """Forward and backward see the same (bf16) logits: gradients match plain autocast cross-entropy, and the
    softmax used in backward sums to 1 per token (so the bias gradient sums to 0 over the vocabulary)."""
    monkeypatch.setattr(loss_mod, "GRAD_LOGITS_BYTES", 1)
    torch.manual_seed(0)
    head = torch.nn.Linear(32, 3000, bias=True)
    with torch.no_grad():  # logits of standard deviation ~8, where a mismatch shows
        head.weight.normal_(0, 8 / 32**0.5)
    hidden = torch.randn(3, 11, 32, requires_grad=True)
    labels = torch.randint(0, 3000, (3, 11))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours, count = chunked_nll(_fake_model(head, None), hidden, labels)
    ours.backward()
    got = [hidden.grad.clone(), head.weight.grad.clone(), head.bias.grad.clone()]
    hidden.grad = head.weight.grad = head.bias.grad = None
    ref = _autocast_reference(hidden, labels, head)
    ref.backward()
    want = [hidden.grad, head.weight.grad, head.bias.grad]
    assert count == 33
    assert torch.allclose(ours, ref, rtol=2e-3)
    assert abs(float(got[2].sum())) < 1e-3 * count  # softmax sums to 1 per token (bf16 rounding only)
    for g, w in zip(got, want):
        rel = float((g.float() - w.float()).norm() / w.float().norm())
        assert rel < 0.01, rel
