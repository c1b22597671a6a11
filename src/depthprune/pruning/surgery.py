"""Surgery: remove blocks so the model stays a stock, consistent transformers model.

The block list shrinks, the config's block count and per-layer lists (``layer_types``...) are sliced,
and every ``layer_idx`` is renumbered so the KV cache addresses the right layer.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch.nn as nn

from depthprune.errors import DepthpruneError
from depthprune.models.specs import get_blocks, spec_for


@dataclass
class _Undo:
    blocks: list[nn.Module]
    config: dict
    layer_idx: list[tuple[nn.Module, int]]


def _set_blocks(model, blocks: list[nn.Module]) -> None:
    path = spec_for(model).blocks
    parent_path, _, attr = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, attr, nn.ModuleList(blocks))


def _renumber(blocks: list[nn.Module]) -> list[tuple[nn.Module, int]]:
    old = []
    for new_idx, block in enumerate(blocks):
        for mod in block.modules():
            if isinstance(getattr(mod, "layer_idx", None), int):
                old.append((mod, mod.layer_idx))
                mod.layer_idx = new_idx
    return old


def remove_blocks(model, indices) -> _Undo:
    """Remove blocks ``indices`` (current numbering) in place; returns what ``restore_blocks`` needs."""
    spec = spec_for(model)
    blocks = list(get_blocks(model))
    drop = sorted(set(int(i) for i in indices))
    if any(i < 0 or i >= len(blocks) for i in drop):
        raise DepthpruneError(f"block indices {drop} out of range for a model with {len(blocks)} blocks")
    if len(drop) >= len(blocks):
        raise DepthpruneError("cannot remove every block of the model")
    keep = [i for i in range(len(blocks)) if i not in drop]
    cfg = model.config
    saved = {spec.num_layers_key: getattr(cfg, spec.num_layers_key)}
    for key in spec.per_layer_keys:
        value = getattr(cfg, key, None)
        if value is not None:
            saved[key] = value
            setattr(cfg, key, [value[i] for i in keep])
    setattr(cfg, spec.num_layers_key, len(keep))
    kept = [blocks[i] for i in keep]
    _set_blocks(model, kept)
    return _Undo(blocks, saved, _renumber(kept))


def restore_blocks(model, undo: _Undo) -> None:
    for key, value in undo.config.items():
        setattr(model.config, key, value)
    _set_blocks(model, undo.blocks)
    _renumber(undo.blocks)


@contextmanager
def blocks_removed(model, indices):
    """Temporarily remove blocks (e.g. to score a candidate the naive way)."""
    undo = remove_blocks(model, indices)
    try:
        yield model
    finally:
        restore_blocks(model, undo)
