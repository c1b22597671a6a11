"""Width surgery: keep the chosen heads and channels of every block by physically slicing the matrices.

The result is a stock model of the same class: the config gets the new ``num_attention_heads``,
``num_key_value_heads`` and ``intermediate_size`` plus an explicit ``head_dim`` (unchanged), so
``save_pretrained`` output loads with plain transformers. Per-head norms (Gemma 3 / Qwen 3 ``q_norm``/``k_norm``)
act over ``head_dim`` and are untouched; biases of sliced rows (Qwen 2's q/k/v) are sliced with them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn as nn

from depthprune.errors import DepthpruneError
from depthprune.importance.width import WidthScores
from depthprune.models.specs import get_blocks, spec_for
from depthprune.models.width_layout import Dims, Slice, layout


@dataclass
class BlockKeep:
    """Original indices kept in one block: query heads, key/value heads, MLP channels (ascending)."""

    heads: list[int]
    kv_heads: list[int]
    channels: list[int]

    def units(self, kind: str) -> list[int]:
        return {"q": self.heads, "kv": self.kv_heads, "ch": self.channels}[kind]

    def to_json(self) -> dict:
        return asdict(self)


def _top(scores: torch.Tensor, k: int, among: list[int] | None = None) -> list[int]:
    """Indices of the ``k`` highest scores (ties: lower index first), ascending."""
    ids = among if among is not None else list(range(len(scores)))
    return sorted(sorted(ids, key=lambda i: (-float(scores[i]), i))[:k])


def select_units(scores: WidthScores, before: Dims, after: Dims) -> list[BlockKeep]:
    """Per block: the best ``after.heads // after.kv_heads`` query heads of each key/value group, then the
    ``after.kv_heads`` groups with the highest total (key/value score + kept query scores), then the
    ``after.channels`` best MLP channels."""
    per_group = after.heads // after.kv_heads
    keeps = []
    for b in scores.blocks:
        groups = []
        for g in range(before.kv_heads):
            top = _top(b["q"], per_group, list(range(g * before.group, (g + 1) * before.group)))
            groups.append((float(b["kv"][g]) + sum(float(b["q"][h]) for h in top), g, top))
        kept = sorted(sorted(groups, key=lambda t: (-t[0], t[1]))[: after.kv_heads], key=lambda t: t[1])
        keeps.append(BlockKeep([h for *_, top in kept for h in top], [g for _, g, _ in kept],
                               _top(b["ch"], after.channels)))
    return keeps


def check_keeps(keeps: list[BlockKeep], before: Dims, after: Dims) -> None:
    """Every block keeps the planned counts, and each kept query head sits in a kept, equally sized group."""
    for i, k in enumerate(keeps):
        if (len(k.heads), len(k.kv_heads), len(k.channels)) != (after.heads, after.kv_heads, after.channels):
            raise DepthpruneError(f"block {i}: kept {len(k.heads)} heads / {len(k.kv_heads)} kv heads / "
                                  f"{len(k.channels)} channels, expected {after.heads}/{after.kv_heads}/"
                                  f"{after.channels}")
        groups = [h // before.group for h in k.heads]
        if sorted(set(groups)) != k.kv_heads or any(groups.count(g) != after.group for g in k.kv_heads):
            raise DepthpruneError(f"block {i}: query heads {k.heads} do not form {after.kv_heads} equal groups "
                                  f"over key/value heads {k.kv_heads}")
        for name, ids, n in (("heads", k.heads, before.heads), ("channels", k.channels, before.channels)):
            if ids != sorted(set(ids)) or (ids and not 0 <= ids[0] <= ids[-1] < n):
                raise DepthpruneError(f"block {i}: kept {name} must be distinct ascending indices below {n}")


def _index(length: int, slices: list[Slice], keep: BlockKeep) -> torch.Tensor:
    """Rows (or columns) of a ``length``-long dimension that survive; lines outside every slice are kept."""
    idx: list[int] = []
    pos = 0
    for s in sorted(slices, key=lambda s: s.offset):
        idx.extend(range(pos, s.offset))
        for u in keep.units(s.kind):
            start = s.offset + u * s.size
            idx.extend(range(start, start + s.size))
        pos = s.offset + s.count * s.size
    idx.extend(range(pos, length))
    return torch.tensor(idx, dtype=torch.long)


def _slice_linear(mod: nn.Linear, rows: torch.Tensor | None, cols: torch.Tensor | None) -> None:
    w = mod.weight
    new = w.detach()
    if rows is not None:
        new = new.index_select(0, rows.to(w.device))
    if cols is not None:
        new = new.index_select(1, cols.to(w.device))
    mod.weight = nn.Parameter(new.contiguous(), requires_grad=w.requires_grad)
    if rows is not None and mod.bias is not None:
        b = mod.bias
        mod.bias = nn.Parameter(b.detach().index_select(0, rows.to(b.device)).contiguous(),
                                requires_grad=b.requires_grad)
    mod.out_features, mod.in_features = mod.weight.shape


def _update_modules(block: nn.Module, after: Dims, spec) -> None:
    """Attributes transformers derives from the config at construction time (on the modules holding the output
    and down projections: the attention and the MLP)."""
    attn, mlp = (block.get_submodule(p.rpartition(".")[0]) for p in (spec.o_proj, spec.down_proj))
    values = {"num_key_value_groups": after.group, "num_key_value_heads": after.kv_heads,
              "num_heads": after.heads, "head_dim": after.head_dim}
    for key, value in values.items():
        if isinstance(getattr(attn, key, None), int):
            setattr(attn, key, value)
    if isinstance(getattr(mlp, "intermediate_size", None), int):
        mlp.intermediate_size = after.channels


def apply_width(model, keeps: list[BlockKeep], before: Dims, after: Dims) -> None:
    """Slice every block of ``model`` in place to ``keeps`` and rewrite the config to ``after``."""
    blocks = get_blocks(model)
    if len(keeps) != len(blocks):
        raise DepthpruneError(f"{len(keeps)} width selections for a model with {len(blocks)} blocks")
    check_keeps(keeps, before, after)
    slices = layout(model, before)
    by_module: dict[str, list[Slice]] = {}
    for s in slices:
        by_module.setdefault(s.module, []).append(s)
    for block, keep in zip(blocks, keeps):
        for name, ss in by_module.items():
            mod = block.get_submodule(name)
            out_dim, in_dim = mod.weight.shape
            rows = [s for s in ss if s.dim == 0]
            cols = [s for s in ss if s.dim == 1]
            _slice_linear(mod, _index(out_dim, rows, keep) if rows else None,
                          _index(in_dim, cols, keep) if cols else None)
        _update_modules(block, after, spec_for(model))
    for key, value in after.to_config().items():
        setattr(model.config, key, value)
