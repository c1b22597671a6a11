"""One-shot depth pruning of a model in place from its scores, and the result every kind of pruning returns."""

from __future__ import annotations

from dataclasses import dataclass, field

from depthprune.errors import DepthpruneError
from depthprune.importance.base import BlockScores, implied_protection, model_fingerprint
from depthprune.models.params import candidate_params, count_params
from depthprune.models.specs import num_blocks
from depthprune.pruning.module_surgery import remove_modules
from depthprune.pruning.save import save_pruned
from depthprune.pruning.selection import Selection, Target, select_blocks
from depthprune.pruning.surgery import remove_blocks


@dataclass
class PruneResult:
    """What pruning did: ``removed`` candidates, parameter counts, the pruned ``model``; ``save`` writes it."""
    selection: Selection | None
    scores: BlockScores | None
    protect: tuple[int, int]
    info: dict = field(default_factory=dict)
    model: object = None
    tokenizer: object = None

    @property
    def removed(self) -> list:
        """Removed blocks (original numbering), or module labels such as ``"3.attn"``; [] for width pruning."""
        return list(self.info.get("removed_candidates", []))

    @property
    def params_before(self) -> int:
        return int(self.info["params_before"])

    @property
    def params_after(self) -> int:
        return int(self.info["params_after"])

    def save(self, output, overwrite: bool = False):
        """A stock checkpoint (+ ``pruning.json``, ``scores.png``, remote code for module-pruned models)."""
        return save_pruned(self, output, overwrite)


def resolve_protection(criterion: str, protect_first: int | None, protect_last: int | None) -> tuple[int, int]:
    """Explicit --protect-* win; a '+' criterion name implies (4, 2); otherwise nothing is protected."""
    first, last = implied_protection(criterion)
    return (first if protect_first is None else protect_first, last if protect_last is None else protect_last)


def check_scores_match(scores: BlockScores, model) -> None:
    """Refuse scores computed on another model (block count, type, size or parameter count differ)."""
    mine = model_fingerprint(model)
    theirs = scores.model or {}
    keys = ("model_type", "num_blocks", "hidden_size", "vocab_size", "num_params")
    diff = [k for k in keys if k in theirs and theirs[k] != mine[k]]
    if diff:
        detail = ", ".join(f"{k} {theirs[k]} vs {mine[k]}" for k in diff)
        raise DepthpruneError(f"--scores were computed on another model ({detail}); score this model again")


def prune_blocks(model, scores: BlockScores, target: Target, protect: tuple[int, int] | None = None) -> PruneResult:
    """Select candidates (blocks or modules) from ``scores`` and remove them from ``model`` in place.

    ``protect`` (first, last) defaults to what the scores' criterion implies ('+' names: 4 and 2).
    """
    check_scores_match(scores, model)
    if protect is None:
        protect = tuple(scores.protect or (0, 0))
    sel = select_blocks(scores, candidate_params(model, scores.unit), count_params(model), target, *protect)
    n_before = num_blocks(model)
    if scores.unit == "block":
        remove_blocks(model, sel.removed)
        removed = {"removed_blocks": sel.removed, "removed_attn": [], "removed_mlp": []}
    else:
        labels = [scores.candidates[i] for i in sel.removed]
        removed = remove_modules(model, labels)
        sel.removed = labels
    sel.params_after = count_params(model)
    info = {
        "method": "depth",
        "unit": scores.unit,
        "schedule": "one-shot",
        "criterion": scores.criterion,
        "target": {k: v for k, v in vars(target).items() if v is not None},
        "protect_first": protect[0],
        "protect_last": protect[1],
        "protected_blocks": sel.protected,
        **removed,
        "removed_candidates": sel.removed,
        "kept_blocks": [i for i in range(n_before) if i not in removed["removed_blocks"]],
        "num_blocks_before": n_before,
        "num_blocks_after": num_blocks(model),
        "params_before": sel.params_before,
        "params_after": sel.params_after,
        "ratio_removed": sel.ratio,
        "scores": scores.to_json(),
    }
    return PruneResult(sel, scores, protect, info)
