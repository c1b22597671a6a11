"""Width layout: which rows/columns of which linear layers make up each prunable unit of a block.

- query head h: rows ``h*d..(h+1)*d`` of the query projection and the same columns of the output projection;
- key/value head g: the matching rows of the key and value projections;
- MLP channel c: row c of the gate and up projections and column c of the down projection.

Fused projections (phi3's ``qkv_proj`` and ``gate_up_proj``) are the same units at row offsets. The
projections' names come from the model's spec (``ArchSpec.q_proj`` ... ``gate_up_proj``, named or inferred); a
family is width-prunable when it has separate or fused q/k/v, an output projection, separate or fused
gate/up, a down projection, and no other per-head or per-channel weights (such as OLMo 2's ``q_norm`` over
all heads) that slicing would miss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn

from depthprune.errors import DepthpruneError
from depthprune.models.specs import ArchSpec, get_blocks, spec_for

KINDS = ("q", "kv", "ch")


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


def spec_width_problem(spec: ArchSpec) -> str | None:
    """Why a spec's projections do not fit width pruning (None: they do)."""
    missing = []
    if not (spec.qkv_proj or (spec.q_proj and spec.k_proj and spec.v_proj)):
        missing.append("separate or fused (qkv_proj) query/key/value projections")
    if not spec.o_proj:
        missing.append("an attention output projection")
    if not (spec.gate_up_proj or (spec.gate_proj and spec.up_proj)):
        missing.append("separate or fused (gate_up_proj) MLP gate/up projections")
    if not spec.down_proj:
        missing.append("an MLP down projection")
    return f"its blocks have no {' or '.join(missing)}" if missing else None


def _int(cfg, key) -> int | None:
    value = getattr(cfg, key, None)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _stray_weights(model, spec: ArchSpec, d: Dims) -> str | None:
    """A weight of the attention or MLP, outside the sliced projections, sized by heads or channels."""
    block = get_blocks(model)[0]
    sliced = {id(p) for s in layout(model, d) for p in block.get_submodule(s.module).parameters()}
    head_sizes = {s for s in (d.heads, d.kv_heads, d.heads * d.head_dim, d.kv_heads * d.head_dim)
                  if s > 1 and s != d.head_dim}
    for parent, sizes in ((spec.o_proj, head_sizes), (spec.down_proj, {d.channels})):
        prefix = parent.rpartition(".")[0]
        if not prefix:
            continue
        for name, p in block.get_submodule(prefix).named_parameters():
            if id(p) not in sliced and sizes & set(p.shape):
                return (f"{prefix}.{name} has shape {tuple(p.shape)}, sized by heads or channels; slicing the "
                        "projections would not follow it")
    return None


def model_dims(model) -> Dims:
    cfg = model.config
    spec = spec_for(model)
    problem = spec_width_problem(spec)
    heads, channels = _int(cfg, "num_attention_heads"), _int(cfg, "intermediate_size")
    if problem is None and (heads is None or channels is None):
        problem = "its config has no num_attention_heads/intermediate_size"
    d = None
    if problem is None:
        kv = _int(cfg, "num_key_value_heads") or heads
        head_dim = _int(cfg, "head_dim") or cfg.hidden_size // heads
        d = Dims(heads, kv, head_dim, channels)
        problem = _stray_weights(model, spec, d)
    if problem is not None:
        raise DepthpruneError(f"width pruning does not support model_type '{cfg.model_type}' ({problem}); "
                              "use --method depth")
    return d


def layout(model, dims: Dims | None = None) -> list[Slice]:
    """The prunable slices of every block of ``model`` (all blocks share one layout)."""
    d = dims or model_dims(model)
    spec = spec_for(model)
    q, kv = d.heads * d.head_dim, d.kv_heads * d.head_dim
    if spec.qkv_proj:
        out = [Slice(spec.qkv_proj, 0, "q", 0, d.heads, d.head_dim),
               Slice(spec.qkv_proj, 0, "kv", q, d.kv_heads, d.head_dim),
               Slice(spec.qkv_proj, 0, "kv", q + kv, d.kv_heads, d.head_dim)]
    else:
        out = [Slice(spec.q_proj, 0, "q", 0, d.heads, d.head_dim),
               Slice(spec.k_proj, 0, "kv", 0, d.kv_heads, d.head_dim),
               Slice(spec.v_proj, 0, "kv", 0, d.kv_heads, d.head_dim)]
    if spec.gate_up_proj:
        out += [Slice(spec.gate_up_proj, 0, "ch", 0, d.channels, 1),
                Slice(spec.gate_up_proj, 0, "ch", d.channels, d.channels, 1)]
    else:
        out += [Slice(spec.gate_proj, 0, "ch", 0, d.channels, 1),
                Slice(spec.up_proj, 0, "ch", 0, d.channels, 1)]
    return out + [Slice(spec.o_proj, 1, "q", 0, d.heads, d.head_dim),
                  Slice(spec.down_proj, 1, "ch", 0, d.channels, 1)]


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
