"""Ideal-speedup model: weight bytes read and FLOPs spent per generated token.

Decoding one token reads every weight of the kept blocks, one row of the input embedding (plus one row of
any learned position table), the final norm and the whole LM head. With tied embeddings the LM head still
reads the whole embedding matrix, so a tied model costs the same bytes per token as an untied one.
At batch size 1 decoding is memory-bound, so the ratio of these bytes bounds the speedup from removing
blocks; at large batches it becomes compute-bound, and the ratio of FLOPs does.

FLOPs per token are ``2 x`` the multiply-adds of the ``nn.Linear`` layers of the kept blocks, the LM head
and any linear layer outside the blocks (OPT's ``project_in``/``project_out``). Attention-score FLOPs
(``QK^T`` and ``AV``, which grow with the context) are **not** in ``flops_per_token``;
:func:`attention_flops_per_token` gives them separately for a given context length. KV-cache reads,
which also grow with the context, are not counted in the bytes either.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch.nn as nn

from depthprune.models.params import count_params
from depthprune.models.specs import final_modules, get_blocks


@dataclass
class CostModel:
    """Per-token weight traffic (bytes) and linear FLOPs of one model."""

    num_params: int
    num_blocks: int
    bytes_blocks: int
    bytes_embedding_rows: int
    bytes_final_norm: int
    bytes_lm_head: int
    bytes_other: int
    flops_blocks: int
    flops_lm_head: int
    flops_other: int

    @property
    def bytes_per_token(self) -> int:
        return (self.bytes_blocks + self.bytes_embedding_rows + self.bytes_final_norm + self.bytes_lm_head
                + self.bytes_other)

    @property
    def flops_per_token(self) -> int:
        return self.flops_blocks + self.flops_lm_head + self.flops_other

    def to_json(self) -> dict:
        return asdict(self) | {"bytes_per_token": self.bytes_per_token, "flops_per_token": self.flops_per_token}


def _param_bytes(params) -> int:
    return sum(p.numel() * p.element_size() for p in params)


def _linear_flops(module: nn.Module) -> int:
    return sum(2 * m.in_features * m.out_features for m in module.modules() if isinstance(m, nn.Linear))


def _row_bytes(emb: nn.Embedding) -> int:
    return emb.weight.shape[1] * emb.weight.element_size()


def cost_model(model: nn.Module) -> CostModel:
    """Count bytes of weights read and linear FLOPs per generated token (see the module docstring)."""
    seen: set[int] = set()

    def fresh(module: nn.Module, recurse: bool = True) -> list:
        out = [p for p in module.parameters(recurse=recurse) if id(p) not in seen]
        seen.update(id(p) for p in out)
        return out

    head = model.get_output_embeddings()
    bytes_head = _param_bytes(fresh(head)) if head is not None else 0
    flops_head = _linear_flops(head) if head is not None else 0
    emb = model.get_input_embeddings()
    fresh(emb)  # tied: already counted in full by the head; the lookup still reads one row
    bytes_rows = _row_bytes(emb)

    blocks = get_blocks(model)
    bytes_blocks = _param_bytes(fresh(blocks))
    flops_blocks = _linear_flops(blocks)
    bytes_final, flops_other = 0, 0
    for mod in final_modules(model):
        bytes_final += _param_bytes(fresh(mod))
        flops_other += _linear_flops(mod)

    bytes_other = 0
    for mod in model.modules():  # whatever is left: learned positions (one row), project_in (full), ...
        params = fresh(mod, recurse=False)
        if not params:
            continue
        if isinstance(mod, nn.Embedding):
            bytes_rows += _row_bytes(mod)
        else:
            bytes_other += _param_bytes(params)
            if isinstance(mod, nn.Linear):
                flops_other += 2 * mod.in_features * mod.out_features
    return CostModel(count_params(model), len(blocks), bytes_blocks, bytes_rows, bytes_final, bytes_head,
                     bytes_other, flops_blocks, flops_head, flops_other)


def _layer_windows(config, n_blocks: int) -> list[int | None]:
    """Per kept block, the attention window (None = full attention)."""
    window = getattr(config, "sliding_window", None)
    types = getattr(config, "layer_types", None)
    if types is not None and len(types) == n_blocks:
        return [window if t == "sliding_attention" else None for t in types]
    return [window] * n_blocks


def attention_flops_per_token(model: nn.Module, context: float) -> float:
    """FLOPs of the attention scores (QK^T and AV) for one token attending to ``context`` positions.

    ``2 x 2 x heads x head_dim x min(context, window)`` per kept block; the window comes from
    ``config.sliding_window`` for blocks whose ``layer_types`` entry is ``sliding_attention`` (or for all
    blocks when the config has a window but no ``layer_types``). An approximation for cost ratios.
    """
    cfg = model.config
    heads = cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    windows = _layer_windows(cfg, len(get_blocks(model)))
    return sum(4 * heads * head_dim * (min(context, w) if w else context) for w in windows)
