"""Width layout: which rows/columns of which linear layers make up each prunable unit of a block.

- query head h: rows ``h*d..(h+1)*d`` of the query projection and the same columns of the output projection;
- key/value head g: the matching rows of the key and value projections;
- MLP channel c: row c of the gate and up projections and column c of the down projection.

Fused projections (phi3's ``qkv_proj`` and ``gate_up_proj``) are the same units at row offsets.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn

from depthprune.errors import DepthpruneError
from depthprune.models.specs import get_blocks

KINDS = ("q", "kv", "ch")
SEPARATE = ("llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3_text")
FUSED = ("phi3",)
WIDTH_MODEL_TYPES = SEPARATE + FUSED


@dataclass(frozen=True)
class Dims:
    """Width of one block: query heads, key/value heads, head size, MLP channels."""

    heads: int
    kv_heads: int
    head_dim: int
    channels: int

    @property
    def group(self) -> int:
        """Query heads sharing one key/value head."""
        return self.heads // self.kv_heads

    def to_config(self) -> dict:
        return {"num_attention_heads": self.heads, "num_key_value_heads": self.kv_heads,
                "head_dim": self.head_dim, "intermediate_size": self.channels}


@dataclass(frozen=True)
class Slice:
    """``count`` units of ``kind`` occupying ``count * size`` rows (dim 0) or columns (dim 1) of ``module``."""

    module: str
    dim: int
    kind: str
    offset: int
    count: int
    size: int


def model_dims(model) -> Dims:
    cfg = model.config
    if cfg.model_type not in WIDTH_MODEL_TYPES:
        raise DepthpruneError(
            f"width pruning does not support model_type '{cfg.model_type}' (supported: "
            f"{', '.join(WIDTH_MODEL_TYPES)}); use --method depth"
        )
    heads = cfg.num_attention_heads
    kv = getattr(cfg, "num_key_value_heads", None) or heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    return Dims(heads, kv, head_dim, cfg.intermediate_size)


def layout(model, dims: Dims | None = None) -> list[Slice]:
    """The prunable slices of every block of ``model`` (all blocks share one layout)."""
    d = dims or model_dims(model)
    q, kv = d.heads * d.head_dim, d.kv_heads * d.head_dim
    if model.config.model_type in FUSED:
        out = [Slice("self_attn.qkv_proj", 0, "q", 0, d.heads, d.head_dim),
               Slice("self_attn.qkv_proj", 0, "kv", q, d.kv_heads, d.head_dim),
               Slice("self_attn.qkv_proj", 0, "kv", q + kv, d.kv_heads, d.head_dim),
               Slice("mlp.gate_up_proj", 0, "ch", 0, d.channels, 1),
               Slice("mlp.gate_up_proj", 0, "ch", d.channels, d.channels, 1)]
    else:
        out = [Slice("self_attn.q_proj", 0, "q", 0, d.heads, d.head_dim),
               Slice("self_attn.k_proj", 0, "kv", 0, d.kv_heads, d.head_dim),
               Slice("self_attn.v_proj", 0, "kv", 0, d.kv_heads, d.head_dim),
               Slice("mlp.gate_proj", 0, "ch", 0, d.channels, 1),
               Slice("mlp.up_proj", 0, "ch", 0, d.channels, 1)]
    return out + [Slice("self_attn.o_proj", 1, "q", 0, d.heads, d.head_dim),
                  Slice("mlp.down_proj", 1, "ch", 0, d.channels, 1)]


def check_layout(model, slices: list[Slice]) -> None:
    """Refuse a model whose matrices do not match its config (e.g. already pruned unevenly)."""
    for i, block in enumerate(get_blocks(model)):
        for s in slices:
            mod = block.get_submodule(s.module)
            if not isinstance(mod, nn.Linear):
                raise DepthpruneError(f"block {i}: {s.module} is not a linear layer; width pruning cannot slice it")
            if mod.weight.shape[s.dim] < s.offset + s.count * s.size:
                raise DepthpruneError(f"block {i}: {s.module} has shape {tuple(mod.weight.shape)}, "
                                      "which does not match the config's heads/intermediate_size")


def unit_costs(model, slices: list[Slice]) -> dict[str, int]:
    """Parameters one unit of each kind holds in one block (weights and the biases of sliced rows)."""
    block = get_blocks(model)[0]
    cost = dict.fromkeys(KINDS, 0)
    for s in slices:
        mod = block.get_submodule(s.module)
        cost[s.kind] += s.size * mod.weight.shape[1 - s.dim]
        if s.dim == 0 and mod.bias is not None:
            cost[s.kind] += s.size
    return cost
