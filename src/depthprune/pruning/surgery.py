"""Surgery: remove blocks so the model stays a stock, consistent transformers model.

The block list shrinks, the config's block count is lowered, every ``layer_idx`` is renumbered so the KV
cache addresses the right layer, and the config's per-layer settings follow, generically:

- every list of scalars whose length is the block count is sliced (``layer_types``, ``no_rope_layers``, ...);
  one not named in ``KNOWN_PER_LAYER`` or the architecture spec is sliced with a warning;
- lists of block indices (``mlp_only_layers``, ...) keep the kept blocks' indices, renumbered;
- ``max_window_layers`` (Qwen 2: blocks below it use full attention) becomes the count of kept blocks below it.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass

import torch.nn as nn

from depthprune.core.skip import REMOVED_KEY, SPEC_KEY
from depthprune.errors import DepthpruneError
from depthprune.models.specs import get_blocks, spec_for

log = logging.getLogger(__name__)

KNOWN_PER_LAYER = ("layer_types", "no_rope_layers", "attention_chunk_sizes", "sliding_window_layers")
INDEX_LISTS = ("mlp_only_layers", "full_attn_idxs", "swa_layers")
COUNT_BELOW = ("max_window_layers",)
NOT_PER_LAYER = ("architectures", "eos_token_id", "bad_words_ids", "suppress_tokens", "begin_suppress_tokens",
                 "forced_decoder_ids", "label2id", "id2label")


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
    saved |= _update_layer_settings(cfg, len(blocks), keep, spec.per_layer_keys)
    setattr(cfg, spec.num_layers_key, len(keep))
    kept = [blocks[i] for i in keep]
    _set_blocks(model, kept)
    return _Undo(blocks, saved, _renumber(kept))


def _update_layer_settings(cfg, n: int, keep: list[int], spec_keys: tuple[str, ...]) -> dict:
    """Slice / renumber the config's per-layer settings for the blocks ``keep`` of ``n``; returns the old values."""
    saved = {}
    new_index = {old: new for new, old in enumerate(keep)}
    for key, value in list(vars(cfg).items()):
        if key.startswith("_") or key in NOT_PER_LAYER:
            continue
        if key == REMOVED_KEY and isinstance(value, dict):  # a module-pruned model: {"attn": [i], "mlp": [j]}
            new = {part: [new_index[i] for i in idxs if i in new_index] for part, idxs in value.items()}
            saved[key] = value
            if any(new.values()):
                setattr(cfg, key, new)
            else:  # no skipped module left: the model is a plain block-pruned one again
                delattr(cfg, key)
                saved[SPEC_KEY] = getattr(cfg, SPEC_KEY, None)
                if hasattr(cfg, SPEC_KEY):
                    delattr(cfg, SPEC_KEY)
            continue
        if key in INDEX_LISTS and isinstance(value, (list, tuple)):
            new = [new_index[i] for i in value if isinstance(i, int) and i in new_index]
        elif key in COUNT_BELOW and isinstance(value, int) and not isinstance(value, bool):
            new = sum(1 for i in keep if i < value)
        elif (isinstance(value, (list, tuple)) and len(value) == n
              and all(v is None or isinstance(v, (str, int, float, bool)) for v in value)):
            if key not in KNOWN_PER_LAYER and key not in spec_keys:
                log.warning("config.%s has one entry per block (%d); sliced it to the kept blocks", key, n)
            new = [value[i] for i in keep]
        else:
            continue
        saved[key] = value
        setattr(cfg, key, type(value)(new) if isinstance(value, tuple) else new)
    return saved


def restore_blocks(model, undo: _Undo) -> None:
    for key, value in undo.config.items():
        if value is not None:
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
