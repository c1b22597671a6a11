"""Remove attention/MLP modules of blocks (candidates ``"3.attn"``, ``"3.mlp"``), and save such models.

A block losing both modules is removed as a whole, so the result is then identical to block pruning.
"""

from __future__ import annotations

import inspect
from contextlib import contextmanager
from dataclasses import asdict

from depthprune.errors import DepthpruneError
from depthprune.models.specs import get_blocks, spec_for
from depthprune.pruning import modules as module_file
from depthprune.pruning.modules import REMOVED_KEY, SPEC_KEY, restore_parts, skip_part
from depthprune.pruning.surgery import remove_blocks

REMOTE_CODE_FILE = "modeling_depthprune.py"


def module_spec_dict(model) -> dict:
    spec = asdict(spec_for(model))
    missing = [part for part in ("attention", "mlp") if not spec[part]]
    if missing:
        raise DepthpruneError(
            f"module pruning needs each block's attention and MLP, but no {' or '.join(missing)} submodule was "
            f"found in the blocks of this {model.config.model_type} model; use block pruning, or name them in an "
            "ArchSpec entry of depthprune.models.specs.SPECS")
    return {k: spec[k] for k in ("blocks", "attention", "mlp", "attn_norms", "mlp_norms")}


def parse_label(label: str) -> tuple[int, str]:
    """``"3.attn"`` -> (3, "attn"); ``"3"`` -> (3, "block")."""
    idx, _, part = str(label).partition(".")
    return int(idx), part or "block"


def group_removals(labels, n_blocks: int) -> tuple[list[int], dict[str, list[int]]]:
    """Split module labels into whole blocks (both modules gone) and single skipped modules."""
    parts: dict[int, set[str]] = {}
    for label in labels:
        idx, part = parse_label(label)
        if not 0 <= idx < n_blocks:
            raise DepthpruneError(f"candidate {label} is out of range for a model with {n_blocks} blocks")
        parts.setdefault(idx, set()).update({"attn", "mlp"} if part == "block" else {part})
    whole = sorted(i for i, p in parts.items() if p == {"attn", "mlp"})
    single = {part: sorted(i for i, p in parts.items() if p == {part}) for part in ("attn", "mlp")}
    return whole, single


def remove_modules(model, labels) -> dict:
    """Remove modules (original numbering) in place; returns what was removed, in original numbering."""
    n = len(get_blocks(model))
    whole, single = group_removals(labels, n)
    existing = getattr(model.config, REMOVED_KEY, None) or {}
    if existing:
        raise DepthpruneError("the model already has removed modules; prune the original model instead")
    spec = module_spec_dict(model)
    blocks = get_blocks(model)
    for part, idxs in single.items():
        for i in idxs:
            skip_part(blocks[i], part, spec)
    if whole:
        remove_blocks(model, whole)
    new_index = {old: new for new, old in enumerate(i for i in range(n) if i not in whole)}
    renumbered = {part: [new_index[i] for i in idxs] for part, idxs in single.items()}
    if any(renumbered.values()):
        setattr(model.config, REMOVED_KEY, renumbered)
        setattr(model.config, SPEC_KEY, spec)
    return {"removed_blocks": whole, "removed_attn": single["attn"], "removed_mlp": single["mlp"]}


@contextmanager
def module_skipped(model, block_idx: int, part: str):
    """Temporarily skip one module (for scoring)."""
    block = get_blocks(model)[block_idx]
    undo = skip_part(block, part, module_spec_dict(model))
    try:
        yield model
    finally:
        restore_parts(block, undo)


def remote_code_files(model) -> dict[str, str]:
    """The ``modeling_depthprune.py`` and config ``auto_map`` entry for a module-pruned model (else nothing)."""
    if not getattr(model.config, REMOVED_KEY, None):
        return {}
    base = type(model).__name__
    footer = (
        f"\n\nfrom transformers import {base} as _Base  # noqa: E402\n\n"
        f"DepthPruned{base} = make_pruned_class(_Base)\n"
    )
    model.config.auto_map = {"AutoModelForCausalLM": f"modeling_depthprune.DepthPruned{base}"}
    return {REMOTE_CODE_FILE: inspect.getsource(module_file) + footer}
