"""Iterative depth pruning (SLEB): remove the least important block, re-score the rest, repeat.

With the ``ppl`` criterion the calibration traces are updated in place after each removal: block
inputs before the removed block are kept, only the blocks after it are re-run.
"""

from __future__ import annotations

import math
import time

from tqdm.auto import tqdm

from depthprune.errors import DepthpruneError
from depthprune.importance.base import BlockScores, model_fingerprint, resolve_criterion, score_model
from depthprune.models.params import block_params, count_params
from depthprune.models.specs import num_blocks
from depthprune.pruning.prune import PruneResult
from depthprune.pruning.selection import Selection, Target, protected_blocks
from depthprune.pruning.surgery import remove_blocks


def iterative_prune(model, criterion: str, calibration, target: Target, protect: tuple[int, int] | None = None,
                    batch_size: int = 16, progress: bool = True) -> PruneResult:
    """Remove blocks one at a time, re-scoring the remaining ones after every removal.

    ``protect`` (first, last) defaults to what the criterion's name implies ('+' names: 4 and 2).
    """
    crit, implied = resolve_criterion(criterion)
    if protect is None:
        protect = implied or (0, 0)
    n0 = num_blocks(model)
    params = block_params(model)
    total = count_params(model)
    protected = set(protected_blocks(n0, *protect))
    if len(protected) >= n0:
        raise DepthpruneError(f"--protect-first {protect[0]} and --protect-last {protect[1]} protect all {n0} "
                              "blocks; nothing left to remove")
    fingerprint = model_fingerprint(model)
    original = list(range(n0))  # original index of each current block
    goal = _goal(target, total, params, n0 - len(protected))
    input_ids = calibration.input_ids if calibration is not None else None
    incremental = crit.incremental(model, input_ids, batch_size, progress)
    rounds, order = [], []
    bar = tqdm(total=_rounds_expected(target, goal, total, params), desc="iterative pruning", unit="round",
               disable=not progress)
    t0 = time.perf_counter()
    while not _met(target, goal, order, total, params):
        candidates = [i for i, o in enumerate(original) if o not in protected]
        if not candidates:
            raise DepthpruneError(f"target {target.describe()} needs more than the {n0 - len(protected)} "
                                  "removable blocks")
        if incremental is not None:
            scores = incremental.scores()
        else:
            scores = score_model(model, criterion, calibration, batch_size=batch_size, progress=progress).scores
        r = min(candidates, key=lambda i: (scores[i], original[i]))
        rounds.append({"round": len(rounds) + 1, "blocks": list(original), "scores": scores,
                       "removed": original[r], "elapsed_s": time.perf_counter() - t0})
        order.append(original[r])
        remove_blocks(model, [r])
        del original[r]
        if incremental is not None:
            incremental.removed(r)
        bar.update()
        bar.set_postfix(removed=original and order[-1])
    bar.close()
    removed = sorted(order)
    sel = Selection(removed, sorted(protected), total, count_params(model))
    first = BlockScores(criterion, rounds[0]["scores"], [str(i) for i in range(n0)], model=fingerprint,
                        calibration=calibration.to_json() if calibration is not None else {},
                        metadata={"schedule": "iterative"}, protect=list(protect))
    info = {
        "method": "depth", "unit": "block", "schedule": "iterative", "criterion": criterion,
        "target": {k: v for k, v in vars(target).items() if v is not None},
        "protect_first": protect[0], "protect_last": protect[1], "protected_blocks": sorted(protected),
        "removed_blocks": removed, "removed_attn": [], "removed_mlp": [], "removed_candidates": removed,
        "removal_order": order, "rounds": rounds,
        "kept_blocks": [i for i in range(n0) if i not in removed],
        "num_blocks_before": n0, "num_blocks_after": num_blocks(model),
        "params_before": total, "params_after": sel.params_after, "ratio_removed": sel.ratio,
        "scores": first.to_json(),
    }
    return PruneResult(sel, first, protect, info)


def _rounds_expected(target: Target, goal, total: int, params: list[int]) -> int:
    """Rounds the target needs if blocks are of average size (the bar's total; exact for --num-blocks)."""
    if target.num_blocks is not None:
        return target.num_blocks
    return max(1, math.ceil((total - goal) / (sum(params) / len(params))))


def _goal(target: Target, total: int, params: list[int], removable: int) -> float | None:
    if target.num_blocks is not None:
        if target.num_blocks > removable:
            raise DepthpruneError(f"--num-blocks {target.num_blocks} exceeds the {removable} removable blocks")
        return None
    goal = total * (1 - target.ratio) if target.ratio is not None else target.target_params
    if goal < total - sum(params):
        raise DepthpruneError(f"target of {int(goal):,} parameters is below the parameters outside the blocks")
    return goal


def _met(target: Target, goal, order: list[int], total: int, params: list[int]) -> bool:
    if target.num_blocks is not None:
        return len(order) >= target.num_blocks
    return total - sum(params[i] for i in order) <= goal
