"""Taylor: sum over a candidate's linear weights of |dL/dW * W| on the calibration set.

Gradients never exist for the whole model at once: embeddings and the head are frozen, and each
weight's contribution is folded into its candidate's score the moment its gradient is complete
(``register_post_accumulate_grad_hook``), then the gradient is freed. The loss is computed from
hidden states in chunks, so vocabulary-size logits are never all in memory.

As in the official Shortened-LLaMA code, grad*W is summed (signed) over the calibration samples
before |.| is taken: all samples of a batch go through one backward pass. With more samples than
``batch_size`` the |.| is taken per batch (the official code would need every gradient kept).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.checkpoint import checkpoint

from depthprune.evaluation.loss import chunked_nll, final_hidden, shifted_labels
from depthprune.importance.base import register
from depthprune.importance.weights import candidate_weights
from depthprune.models.loading import input_device
from depthprune.models.specs import get_blocks


def stream_grad_products(model, params, input_ids: torch.Tensor, batch_size: int,
                         fold: Callable[[torch.nn.Parameter, torch.Tensor], None]) -> None:
    """Back-propagate the calibration loss and call ``fold(param, |grad * W|)`` as each gradient completes.

    Only ``params`` get gradients, and each one is freed right after ``fold``; requires_grad is restored.
    Blocks are activation-checkpointed, so activations are kept for one block at a time, not all of them.
    """
    wanted = {id(p) for p in params}
    saved = {id(p): p.requires_grad for p in model.parameters()}
    handles = []

    def on_grad(param: torch.Tensor) -> None:
        with torch.no_grad():
            fold(param, (param.grad.float() * param.detach().float()).abs())
        param.grad = None

    blocks = list(get_blocks(model))
    try:
        for block in blocks:
            block.forward = _checkpointed(block.forward)
        for p in model.parameters():
            p.requires_grad_(id(p) in wanted)
        for p in params:
            handles.append(p.register_post_accumulate_grad_hook(on_grad))
        device = input_device(model)
        for start in range(0, input_ids.shape[0], batch_size):
            batch = input_ids[start : start + batch_size].to(device)
            with torch.enable_grad():
                nll, count = chunked_nll(model, final_hidden(model, batch), shifted_labels(batch))
                (nll / count).backward()
    finally:
        for block in blocks:
            block.__dict__.pop("forward", None)
        for h in handles:
            h.remove()
        for p in model.parameters():
            p.requires_grad_(saved[id(p)])
            p.grad = None


def _checkpointed(forward):
    def run(*args, **kwargs):
        return checkpoint(forward, *args, use_reentrant=False, **kwargs)

    return run


@register("taylor", units=("block", "module"),
          description="sum of |dL/dW * W| over the linear weights (Shortened LLaMA)")
def taylor_scores(model, input_ids: torch.Tensor, unit: str = "block", batch_size: int = 16) -> list[float]:
    groups = candidate_weights(model, unit)
    owner = {id(w): i for i, ws in enumerate(groups) for w in ws}
    scores = torch.zeros(len(groups), dtype=torch.float64)

    def fold(param, product):
        scores[owner[id(param)]] += float(product.sum())

    stream_grad_products(model, [w for ws in groups for w in ws], input_ids, batch_size, fold)
    return scores.tolist()
