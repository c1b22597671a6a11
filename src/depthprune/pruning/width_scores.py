"""Width-pruning scores: one number per attention head (query and key/value) and per MLP channel of every block.

A *layout* says which rows/columns of which linear layers make up each prunable unit:

- query head h: rows ``h*d..(h+1)*d`` of the query projection and the same columns of the output projection;
- key/value head g: the matching rows of the key and value projections;
- MLP channel c: row c of the gate and up projections and column c of the down projection.

Fused projections (phi3's ``qkv_proj`` and ``gate_up_proj``) are the same units at row offsets. The
projections' names come from the model's spec (``ArchSpec.q_proj`` ... ``gate_up_proj``, named or inferred); a
family is width-prunable when it has separate or fused q/k/v, an output projection, separate or fused
gate/up, a down projection, and no other per-head or per-channel weights (such as OLMo 2's ``q_norm`` over
all heads) that slicing would miss.

Criteria (lower = less important), summed over the unit's weights (biases excluded):

- ``wanda-sp`` (structured Wanda, as FLAP's authors ran it): ``|W_ij| * ||X_j||_2`` summed over the unit's
  columns of the output projection (heads) or down projection (channels), ``X_j`` being the unit's own
  activation (that layer's input feature j) over every calibration token. Key/value heads score 0 (they go
  only with their whole query group). ``scope="all"`` also adds the q/k/v/gate/up rows with their layer's
  input norms; on Gemma 3 270M (K=4 blocks' worth of parameters, 4 calibration windows) it gave WikiText-2
  PPL 714 against 209 for the default ``"out"``, so the reference choice stays the default.
- ``taylor-sp`` (LLM-Pruner's element-wise first order): ``|dL/dW_ij * W_ij|``, the gradient summed over one
  calibration batch before ``|.|`` (as ``taylor`` block scores); gradients are folded into scores as soon as
  each one is complete, then freed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from depthprune.errors import DepthpruneError
from depthprune.evaluation.loss import final_hidden
from depthprune.importance.taylor import stream_grad_products
from depthprune.models.loading import input_device
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


@dataclass
class WidthScores:
    """Per block: ``q`` (one score per query head), ``kv`` (per key/value head), ``ch`` (per MLP channel)."""

    criterion: str
    blocks: list[dict[str, torch.Tensor]]
    calibration: dict = field(default_factory=dict)
    wall_s: float = 0.0

    def heads_json(self) -> list[dict]:
        return [{"q": b["q"].tolist(), "kv": b["kv"].tolist()} for b in self.blocks]


def _zeros(n_blocks: int, d: Dims) -> list[dict[str, torch.Tensor]]:
    sizes = {"q": d.heads, "kv": d.kv_heads, "ch": d.channels}
    return [{k: torch.zeros(n, dtype=torch.float64) for k, n in sizes.items()} for _ in range(n_blocks)]


def _fold(target: dict[str, torch.Tensor], s: Slice, per_line: torch.Tensor) -> None:
    """Add per-row (or per-column) importance of one slice into its units' scores."""
    seg = per_line[s.offset : s.offset + s.count * s.size]
    target[s.kind] += seg.reshape(s.count, s.size).sum(1).double().cpu()


def _by_module(slices: list[Slice]) -> dict[str, list[Slice]]:
    out: dict[str, list[Slice]] = {}
    for s in slices:
        out.setdefault(s.module, []).append(s)
    return out


def _batches(input_ids: torch.Tensor, batch_size: int, device):
    for start in range(0, input_ids.shape[0], batch_size):
        yield input_ids[start : start + batch_size].to(device)


@torch.no_grad()
def wanda_sp(model, input_ids: torch.Tensor, batch_size: int = 16, scope: str = "out") -> list[dict]:
    """Structured Wanda: sum of ``|W| * ||X||`` over each unit's weights (see the module docstring)."""
    if scope not in ("all", "out"):
        raise ValueError(f"scope must be 'all' or 'out', got {scope!r}")
    d = model_dims(model)
    slices = [s for s in layout(model, d) if scope == "all" or s.dim == 1]
    mods = _by_module(slices)
    blocks = get_blocks(model)
    sumsq: dict[tuple[int, str], torch.Tensor] = {}
    handles = []

    def hook(key):
        def fn(module, args):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).float()
            sq = x.pow(2).sum(0).double()
            sumsq[key] = sq if key not in sumsq else sumsq[key] + sq

        return fn

    for i, block in enumerate(blocks):
        for name in mods:
            handles.append(block.get_submodule(name).register_forward_pre_hook(hook((i, name))))
    try:
        for batch in _batches(input_ids, batch_size, input_device(model)):
            final_hidden(model, batch)
    finally:
        for h in handles:
            h.remove()
    scores = _zeros(len(blocks), d)
    for i, block in enumerate(blocks):
        for name, ss in mods.items():
            w = block.get_submodule(name).weight.detach()
            norm = sumsq[(i, name)].sqrt().to(w.device, torch.float32)
            for s in ss:
                if s.dim == 0:
                    per_line = w.abs().float() @ norm
                else:
                    per_line = w.abs().float().sum(0) * norm
                _fold(scores[i], s, per_line)
    return scores


def taylor_sp(model, input_ids: torch.Tensor, batch_size: int = 16) -> list[dict]:
    """LLM-Pruner's element-wise first-order score: sum of ``|dL/dW * W|`` over each unit's weights."""
    d = model_dims(model)
    mods = _by_module(layout(model, d))
    blocks = get_blocks(model)
    scores = _zeros(len(blocks), d)
    owner: dict[int, tuple[int, list[Slice]]] = {}
    for i, block in enumerate(blocks):
        for name, ss in mods.items():
            owner[id(block.get_submodule(name).weight)] = (i, ss)

    def fold(param, product):
        i, ss = owner[id(param)]
        for s in ss:
            _fold(scores[i], s, product.sum(1 - s.dim))

    params = [block.get_submodule(name).weight for block in blocks for name in mods]
    stream_grad_products(model, params, input_ids, batch_size, fold)
    return scores


WIDTH_CRITERIA = {"wanda-sp": wanda_sp, "taylor-sp": taylor_sp}


def check_width_criterion(name: str | None) -> str:
    if name not in WIDTH_CRITERIA:
        raise DepthpruneError(
            f"--criterion {name} is not a width criterion; with --method width choose one of: "
            f"{', '.join(WIDTH_CRITERIA)}"
        )
    return name


def score_width(model, criterion: str, calibration, batch_size: int = 16, **options) -> WidthScores:
    """Score every head and MLP channel of ``model`` on the calibration inputs."""
    fn = WIDTH_CRITERIA[check_width_criterion(criterion)]
    if calibration is None:
        raise DepthpruneError(f"criterion '{criterion}' needs calibration data")
    check_layout(model, layout(model))
    was_training = model.training
    model.eval()
    t0 = time.perf_counter()
    try:
        blocks = fn(model, calibration.input_ids, batch_size=batch_size, **options)
    finally:
        model.train(was_training)
    return WidthScores(criterion, blocks, calibration.to_json(), time.perf_counter() - t0)
