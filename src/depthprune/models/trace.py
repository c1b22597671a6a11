"""Run a model block by block: capture each block's input (and call kwargs) once, then replay any suffix.

This is what makes ``ppl`` scoring cheap (removing block n only re-runs blocks n+1..N and the head),
lets ``block_influence``/``angular`` read every block's input and output from one forward pass, and
lets iterative pruning resume from the earliest changed block.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from depthprune.models.specs import final_modules, get_blocks


@dataclass
class BlockCall:
    """How the model called one block: positional args (hidden states first) and keyword args."""

    args: tuple
    kwargs: dict


@dataclass
class Trace:
    """Hidden states entering each block, the output of the last block, and each block's call."""

    inputs: list[torch.Tensor]
    output: torch.Tensor
    calls: list[BlockCall]

    def state(self, i: int) -> torch.Tensor:
        """Hidden state at boundary i: the input of block i, or the last block's output for i == N."""
        return self.inputs[i] if i < len(self.inputs) else self.output


def _first(out):
    return out[0] if isinstance(out, (tuple, list)) else out


@torch.no_grad()
def trace_blocks(model, input_ids: torch.Tensor) -> Trace:
    """One forward pass recording every block's input hidden state and call arguments."""
    blocks = get_blocks(model)
    inputs: list = [None] * len(blocks)
    calls: list = [None] * len(blocks)
    last_out: list = [None]

    def pre_hook(idx):
        def hook(module, args, kwargs):
            if args:
                hidden, rest = args[0], args[1:]
            else:
                kwargs = dict(kwargs)
                hidden, rest = kwargs.pop("hidden_states"), ()
            inputs[idx] = hidden.detach()
            calls[idx] = BlockCall(rest, {k: v for k, v in kwargs.items() if k != "hidden_states"})

        return hook

    def post_hook(module, args, kwargs, out):
        last_out[0] = _first(out).detach()

    handles = [b.register_forward_pre_hook(pre_hook(i), with_kwargs=True) for i, b in enumerate(blocks)]
    handles.append(blocks[-1].register_forward_hook(post_hook, with_kwargs=True))
    try:
        model.base_model(input_ids=input_ids, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return Trace(inputs, last_out[0], calls)


def run_block(model, trace: Trace, idx: int, hidden: torch.Tensor) -> torch.Tensor:
    """Apply block ``idx`` (original numbering of ``trace``) to ``hidden`` with the call it got in the trace."""
    call = trace.calls[idx]
    kwargs = dict(call.kwargs)
    for key in ("past_key_values", "past_key_value", "cache"):
        if key in kwargs:
            kwargs[key] = None
    kwargs["use_cache"] = False if "use_cache" in kwargs else kwargs.get("use_cache", False)
    if "use_cache" not in call.kwargs:
        kwargs.pop("use_cache")
    return _first(get_blocks(model)[idx](hidden, *call.args, **kwargs))


def run_tail(model, trace: Trace, start_hidden: torch.Tensor, block_ids) -> torch.Tensor:
    """Run ``block_ids`` in order from ``start_hidden`` and apply the final norm(s)."""
    h = start_hidden
    for j in block_ids:
        h = run_block(model, trace, j, h)
    return apply_final(model, h)


def apply_final(model, hidden: torch.Tensor) -> torch.Tensor:
    for mod in final_modules(model):
        hidden = mod(hidden)
    return hidden
