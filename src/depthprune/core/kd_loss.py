"""Logit distillation loss computed slice by slice over the vocabulary, for teacher and student together.

Per predicted token, with student logits ``s``, teacher logits ``t`` (each after its model's final-logit
softcap, when set), temperature ``T`` and cross-entropy weight ``w``::

    loss = (1 - w) * T**2 * KL(softmax(t / T) || softmax(s / T)) + w * CE(softmax(s), label)

(forward KL, teacher first: the student is pulled towards every token the teacher finds likely). The
``T**2`` keeps the gradient's size independent of ``T`` (Hinton et al.); ``w = 0`` (the default) is the
logit loss alone, which Minitron found best for depth-pruned models.

Neither model's full-vocabulary logits ever exist: :class:`_VocabSlicedKD` walks the vocabulary in slices,
computing both heads' logits for one slice at a time. Forward keeps a running log-sum-exp for each head
(and, with ``w > 0`` and ``T != 1``, a second one for the student at temperature 1) plus the running
teacher-weighted sum of ``(t - s) / T``, rescaled like the log-sum-exp, so that at the end
``KL = sum_v p_v (t_v - s_v) / T - lse_t + lse_s``. Only the per-token log-sum-exps are saved; backward
recomputes each slice's logits of both heads and produces gradients for the student's hidden states and,
when it requires one, the student's head weight/bias. The teacher gets no gradient. As in
:mod:`depthprune.evaluation.loss`, each head's logits are computed in the same dtype in forward and backward
(autocast's when it is on in forward), so the softmax of backward is the one whose log-sum-exp forward saved.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from depthprune.core import loss as _loss
from depthprune.core.loss import _slice_logits, _slice_width, compute_dtype, shifted_labels, softcap_of

KD_GRAD_LOGITS_BYTES = 8 * 2**20
"""Float32 logits of ONE head held at once under autograd (the two heads together hold twice this)."""
KD_EVAL_LOGITS_BYTES = 16 * 2**20
"""The same without gradients."""


def _kd_stats(hs, ws, bs, ht, wt, bt, labels, cap_s, cap_t, tau: float, ce_weight: float, chunk_bytes: int):
    """One pass over the vocabulary: per-token (loss, lse_s at T, lse_t at T, lse_s at 1)."""
    n = hs.shape[0]
    dev = hs.device
    step = _slice_width(n, chunk_bytes)
    dts, dtt = compute_dtype(hs, ws), compute_dtype(ht, wt)
    hs, ht = hs.to(dts), ht.to(dtt)
    ninf = float("-inf")
    m_t, s_t, u_t = torch.full((n,), ninf, device=dev), torch.zeros(n, device=dev), torch.zeros(n, device=dev)
    m_s, s_s = torch.full((n,), ninf, device=dev), torch.zeros(n, device=dev)
    need_ce = ce_weight > 0
    separate = need_ce and tau != 1.0
    m_1, s_1 = torch.full((n,), ninf, device=dev), torch.zeros(n, device=dev)
    target = torch.zeros(n, device=dev)
    rows = torch.arange(n, device=dev)
    for v0 in range(0, ws.shape[0], step):
        zs = _slice_logits(hs, ws, bs, v0, step, cap_s, dts)
        zt = _slice_logits(ht, wt, bt, v0, step, cap_t, dtt)
        a_s, a_t = (zs, zt) if tau == 1.0 else (zs / tau, zt / tau)
        new = torch.maximum(m_t, a_t.max(dim=1).values)
        scale = torch.exp(m_t - new)
        e = torch.exp(a_t - new[:, None])
        s_t = s_t * scale + e.sum(dim=1)
        u_t = u_t * scale + (e * (a_t - a_s)).sum(dim=1)
        m_t = new
        new = torch.maximum(m_s, a_s.max(dim=1).values)
        s_s = s_s * torch.exp(m_s - new) + torch.exp(a_s - new[:, None]).sum(dim=1)
        m_s = new
        if separate:
            new = torch.maximum(m_1, zs.max(dim=1).values)
            s_1 = s_1 * torch.exp(m_1 - new) + torch.exp(zs - new[:, None]).sum(dim=1)
            m_1 = new
        if need_ce:
            inside = (labels >= v0) & (labels < v0 + zs.shape[1])
            target[inside] = zs[rows[inside], labels[inside] - v0]
    lse_t, lse_s = m_t + torch.log(s_t), m_s + torch.log(s_s)
    lse_1 = (m_1 + torch.log(s_1)) if separate else lse_s
    kl = u_t / s_t - lse_t + lse_s
    loss = kl * ((1.0 - ce_weight) * tau * tau)
    if need_ce:
        loss = loss + ce_weight * (lse_1 - target)
    return loss, lse_s, lse_t, lse_1


class _VocabSlicedKD(torch.autograd.Function):
    """Summed distillation loss; forward and backward both walk the vocabulary in slices (see module doc)."""

    @staticmethod
    def forward(ctx, hs, ws, bs, ht, wt, bt, labels, cap_s, cap_t, tau, ce_weight, chunk_bytes):
        loss, lse_s, lse_t, lse_1 = _kd_stats(hs, ws, bs, ht, wt, bt, labels, cap_s, cap_t, tau, ce_weight,
                                              chunk_bytes)
        ctx.save_for_backward(hs, ws, bs, ht, wt, bt, labels, lse_s, lse_t, lse_1)
        ctx.cfg = (cap_s, cap_t, tau, ce_weight, chunk_bytes, compute_dtype(hs, ws), compute_dtype(ht, wt))
        return loss.sum()

    @staticmethod
    def backward(ctx, grad_out):
        hs, ws, bs, ht, wt, bt, labels, lse_s, lse_t, lse_1 = ctx.saved_tensors
        cap_s, cap_t, tau, w, chunk_bytes, dts, dtt = ctx.cfg
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        n = hs.shape[0]
        step = _slice_width(n, chunk_bytes)
        h, t = hs.to(dts), ht.to(dtt)
        rows = torch.arange(n, device=hs.device)
        grad_h = torch.zeros(hs.shape, dtype=torch.float32, device=hs.device) if need_h else None
        grad_w = torch.zeros_like(ws) if need_w else None
        grad_b = torch.zeros_like(bs) if need_b and bs is not None else None
        kd_scale = (1.0 - w) * tau
        for v0 in range(0, ws.shape[0], step):
            zs = _slice_logits(h, ws, bs, v0, step, cap_s, dts)
            width = zs.shape[1]
            g = 0.0
            if kd_scale:
                zt = _slice_logits(t, wt, bt, v0, step, cap_t, dtt)
                a_s, a_t = (zs, zt) if tau == 1.0 else (zs / tau, zt / tau)
                q = torch.exp(a_s - lse_s[:, None])
                p = torch.exp(a_t - lse_t[:, None])
                g = (q - p) * kd_scale
            if w > 0:
                q1 = torch.exp(zs - lse_1[:, None])
                inside = (labels >= v0) & (labels < v0 + width)
                q1[rows[inside], labels[inside] - v0] -= 1.0
                g = g + w * q1
            if cap_s:
                g = g * (1.0 - (zs / cap_s) ** 2)
            g = g * grad_out
            gc = g.to(dts)
            if need_h:
                grad_h += (gc @ ws[v0 : v0 + width].to(dts)).float()
            if need_w:
                grad_w[v0 : v0 + width] = (gc.t() @ h).to(ws.dtype)
            if grad_b is not None:
                grad_b[v0 : v0 + width] = g.sum(dim=0).to(bs.dtype)
        grads = ((grad_h.to(hs.dtype) if need_h else None), grad_w, grad_b)
        return grads + (None,) * 9


def _full_kd(hs, ht, head_s, head_t, labels, cap_s, cap_t, tau, ce_weight):
    """The same loss from full logits of a chunk of tokens (heads that are not a plain Linear)."""
    zs, zt = head_s(hs).float(), head_t(ht).float()
    if cap_s:
        zs = torch.tanh(zs / cap_s) * cap_s
    if cap_t:
        zt = torch.tanh(zt / cap_t) * cap_t
    kl = F.kl_div(F.log_softmax(zs / tau, -1), F.log_softmax(zt / tau, -1), log_target=True, reduction="sum")
    loss = kl * ((1.0 - ce_weight) * tau * tau)
    if ce_weight > 0:
        loss = loss + ce_weight * F.cross_entropy(zs, labels, reduction="sum")
    return loss


def sliced_kd_loss(hs, ws, bs, ht, wt, bt, labels, cap_s=None, cap_t=None, temperature: float = 1.0,
                   ce_weight: float = 0.0, chunk_bytes: int | None = None) -> torch.Tensor:
    """Summed loss over tokens (rows of ``hs``/``ht``) from hidden states and head weights; see the module doc.

    ``ht``/``wt``/``bt`` (the teacher's) never get gradients. Under autograd the vocabulary-sliced Function
    is used; without it, one forward pass over the slices.
    """
    ht, wt = ht.detach(), wt.detach()
    bt = bt.detach() if bt is not None else None
    tau, w = float(temperature), float(ce_weight)
    if torch.is_grad_enabled() and (hs.requires_grad or ws.requires_grad or (bs is not None and bs.requires_grad)):
        return _VocabSlicedKD.apply(hs, ws, bs, ht, wt, bt, labels, cap_s, cap_t, tau, w,
                                    chunk_bytes or KD_GRAD_LOGITS_BYTES)
    with torch.no_grad():
        return _kd_stats(hs, ws, bs, ht, wt, bt, labels, cap_s, cap_t, tau, w,
                         chunk_bytes or KD_EVAL_LOGITS_BYTES)[0].sum()


def distill_loss(student, teacher, hidden_s: torch.Tensor, hidden_t: torch.Tensor, labels: torch.Tensor,
                 temperature: float = 1.0, ce_weight: float = 0.0, teacher_head: tuple | None = None
                 ) -> tuple[torch.Tensor, int]:
    """Summed distillation loss over the positions with a label (``-100`` = ignored), and their count.

    ``hidden_s``/``hidden_t`` are the two models' final (normed) hidden states for the same tokens; the
    teacher's are moved to the student's device. ``teacher_head`` = (weight, bias) already on that device
    (a cached copy when the teacher lives elsewhere); default: the teacher's own head.
    """
    head_s, head_t = student.get_output_embeddings(), teacher.get_output_embeddings()
    cap_s, cap_t = softcap_of(student), softcap_of(teacher)
    hs = hidden_s.reshape(-1, hidden_s.shape[-1])
    ht = hidden_t.reshape(-1, hidden_t.shape[-1])
    y = labels.reshape(-1).to(hs.device)
    keep = y != -100
    hs, y = hs[keep], y[keep]
    ht = ht.to(hs.device)[keep]
    if isinstance(head_s, torch.nn.Linear) and isinstance(head_t, torch.nn.Linear):
        ws, bs = head_s.weight, head_s.bias
        wt, bt = teacher_head if teacher_head is not None else (head_t.weight, head_t.bias)
        hs, y = hs.to(ws.device), y.to(ws.device)
        return sliced_kd_loss(hs, ws, bs, ht.to(ws.device), wt, bt, y, cap_s, cap_t, temperature,
                              ce_weight), int(y.numel())
    chunk = max(16, _loss.LOGITS_CHUNK_BYTES // (8 * head_s.weight.shape[0]))
    total = hs.new_zeros((), dtype=torch.float32)
    for i in range(0, y.numel(), chunk):
        args = (hs[i : i + chunk], ht[i : i + chunk], head_s, head_t, y[i : i + chunk], cap_s, cap_t,
                float(temperature), float(ce_weight))
        if torch.is_grad_enabled() and hs.requires_grad:
            total = total + checkpoint(_full_kd, *args, use_reentrant=False)
        else:
            total = total + _full_kd(*args)
    return total, int(y.numel())


def final_hidden_states(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None):
    """The last hidden state after the final norm (the LM head's input)."""
    out = model.base_model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]


@torch.no_grad()
def sequence_kl(student, teacher, input_ids: torch.Tensor, temperature: float = 1.0,
                batch_size: int = 8) -> float:
    """Mean per-token KL(teacher || student) of next-token distributions over ``input_ids`` (no T**2 factor)."""
    total, count = 0.0, 0
    for i in range(0, input_ids.shape[0], batch_size):
        batch = input_ids[i : i + batch_size]
        hs = final_hidden_states(student, batch.to(student.get_input_embeddings().weight.device))
        ht = final_hidden_states(teacher, batch.to(teacher.get_input_embeddings().weight.device))
        s, c = distill_loss(student, teacher, hs, ht, shifted_labels(batch), temperature)
        total += float(s) / (temperature * temperature)
        count += c
    return total / max(count, 1)
