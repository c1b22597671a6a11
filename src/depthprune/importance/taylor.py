"""Taylor: sum over a candidate's linear weights of |dL/dW * W| on the calibration set.

Gradients never exist for the whole model at once: embeddings and the head are frozen, and each
weight's contribution is folded into its candidate's score the moment its gradient is complete
(``register_post_accumulate_grad_hook``), then the gradient is freed. The loss is computed from
hidden states in chunks, so vocabulary-size logits are never all in memory.

As in the official Shortened-LLaMA code, grad*W is summed (signed) over all calibration samples before
|.| is taken, the loss being the token mean over all of them: the score does not depend on ``batch_size``.
With one batch the products are folded as they come (no extra memory); with several, a float32
accumulator per weight holds the signed sums until the last batch (one more float32 copy of the scored
weights).

Blocks behind accelerate hooks (a ``device_map`` over several devices) keep their hooked ``forward``:
the checkpointing wrapper goes around it and is removed afterwards, restoring exactly what was there.
Weights offloaded by accelerate (on the meta device between forwards) cannot carry gradients: such models
are refused with a message, not scored wrong.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.checkpoint import checkpoint
from tqdm.auto import tqdm

from depthprune.core.loss import chunked_nll, final_hidden, shifted_labels
from depthprune.errors import DepthpruneError
from depthprune.importance.base import Criterion, register
from depthprune.importance.weights import candidate_weights
from depthprune.models.loading import input_device
from depthprune.models.specs import get_blocks


def check_weights_in_memory(model, what: str) -> None:
    """Refuse a model whose weights accelerate offloaded (meta tensors between forwards): no gradients there."""
    if any(p.device.type == "meta" for p in model.parameters()):
        raise DepthpruneError(
            f"{what} needs gradients, but this model has weights offloaded by its device_map (on the meta device "
            "between forwards); load it without CPU/disk offload (e.g. --device cpu or more GPU memory), or use a "
            "forward-only criterion such as ppl, block_influence or angular"
        )


def stream_grad_products(model, params, input_ids: torch.Tensor, batch_size: int,
                         fold: Callable[[torch.nn.Parameter, torch.Tensor], None], progress: bool = True) -> None:
    """Back-propagate the calibration loss and call ``fold(param, |sum over samples of grad * W|)`` per weight.

    The loss is the token-mean NLL over all of ``input_ids``, so the products do not depend on ``batch_size``.
    Only ``params`` get gradients, each freed as soon as it is complete (one batch: folded at once; several:
    added to a float32 accumulator, folded after the last batch); requires_grad is restored. Blocks are
    activation-checkpointed, so activations are kept for one block at a time.
    """
    check_weights_in_memory(model, "this criterion")
    wanted = {id(p) for p in params}
    saved = {id(p): p.requires_grad for p in model.parameters()}
    labels = shifted_labels(input_ids)
    total = int((labels != -100).sum())
    starts = list(range(0, input_ids.shape[0], batch_size))
    sums: dict[int, torch.Tensor] = {}
    handles = []

    bar = tqdm(total=len(params) * len(starts), desc="taylor gradients", unit="weight", leave=False,
               disable=not progress)

    def on_grad(param: torch.Tensor) -> None:
        with torch.no_grad():
            product = param.grad.float() * param.detach().float()
            if len(starts) == 1:
                fold(param, product.abs())
            elif id(param) in sums:
                sums[id(param)] += product
            else:
                sums[id(param)] = product
        param.grad = None
        bar.update()

    blocks = list(get_blocks(model))
    own = [(b, "forward" in b.__dict__, b.__dict__.get("forward")) for b in blocks]
    try:
        for block in blocks:
            block.forward = _checkpointed(block.forward)
        for p in model.parameters():
            p.requires_grad_(id(p) in wanted)
        for p in params:
            handles.append(p.register_post_accumulate_grad_hook(on_grad))
        device = input_device(model)
        for start in starts:
            batch = input_ids[start : start + batch_size].to(device)
            with torch.enable_grad():
                nll, _ = chunked_nll(model, final_hidden(model, batch), labels[start : start + batch_size])
                (nll / total).backward()
        with torch.no_grad():
            for p in params:
                if id(p) in sums:
                    fold(p, sums.pop(id(p)).abs_())
    finally:
        bar.close()
        for block, had, forward in own:
            if had:
                block.forward = forward  # e.g. accelerate's hooked forward
            else:
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


@register
class Taylor(Criterion):
    name = "taylor"
    description = "sum of |dL/dW * W| over the linear weights (Shortened LLaMA)"
    units = ("block", "module")

    def score(self, model, input_ids, unit="block", batch_size=16, progress=True):
        groups = candidate_weights(model, unit)
        owner = {id(w): i for i, ws in enumerate(groups) for w in ws}
        scores = torch.zeros(len(groups), dtype=torch.float64)

        def fold(param, product):
            scores[owner[id(param)]] += float(product.sum())

        stream_grad_products(model, [w for ws in groups for w in ws], input_ids, batch_size, fold, progress)
        return scores.tolist()
