"""Skipping a block's attention or MLP in a loaded model (module pruning and module scoring).

The skip modules themselves live in ``core/skip.py``, which is copied into module-pruned checkpoints; this
module only says where they go in a given model, from its architecture spec.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import asdict

from depthprune.core.skip import restore_parts, skip_part
from depthprune.errors import DepthpruneError
from depthprune.models.specs import get_blocks, spec_for


def module_spec_dict(model) -> dict:
    """The part of the architecture spec that skipping needs (stored in module-pruned configs)."""
    spec = asdict(spec_for(model))
    missing = [part for part in ("attention", "mlp") if not spec[part]]
    if missing:
        raise DepthpruneError(
            f"module pruning needs each block's attention and MLP, but no {' or '.join(missing)} submodule was "
            f"found in the blocks of this {model.config.model_type} model; use block pruning, or name them in an "
            "ArchSpec entry of depthprune.models.specs.SPECS")
    return {k: spec[k] for k in ("blocks", "attention", "mlp", "attn_norms", "mlp_norms")}


@contextmanager
def module_skipped(model, block_idx: int, *parts: str):
    """Temporarily skip ``parts`` (``"attn"``, ``"mlp"``) of one block; both parts = the block removed."""
    block = get_blocks(model)[block_idx]
    spec = module_spec_dict(model)
    undo = [pair for part in parts for pair in skip_part(block, part, spec)]
    try:
        yield model
    finally:
        restore_parts(block, undo)
