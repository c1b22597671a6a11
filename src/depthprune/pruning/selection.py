"""Selection: scores + target + protected blocks -> which blocks to remove, and the resulting size."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from depthprune.errors import DepthpruneError
from depthprune.importance.base import BlockScores


@dataclass(frozen=True)
class Target:
    """How much to remove: exactly one of a block count, a parameter ratio, or a parameter budget."""

    num_blocks: int | None = None
    ratio: float | None = None
    target_params: int | None = None

    def __post_init__(self):
        given = [x for x in (self.num_blocks, self.ratio, self.target_params) if x is not None]
        if len(given) != 1:
            raise DepthpruneError("give exactly one target: --num-blocks K, --ratio R or --target-params P")
        if self.num_blocks is not None and self.num_blocks < 1:
            raise DepthpruneError(f"--num-blocks must be >= 1, got {self.num_blocks}")
        if self.ratio is not None and not 0 < self.ratio < 1:
            raise DepthpruneError(f"--ratio must lie in (0, 1) (fraction of parameters to remove), got {self.ratio}")
        if self.target_params is not None and self.target_params < 1:
            raise DepthpruneError(f"--target-params must be positive, got {self.target_params}")

    def describe(self) -> str:
        if self.num_blocks is not None:
            return f"{self.num_blocks} blocks"
        if self.ratio is not None:
            return f"{self.ratio:.1%} of parameters"
        return f"{self.target_params:,} parameters"


@dataclass
class Selection:
    removed: list[int]
    protected: list[int]
    params_before: int
    params_after: int

    @property
    def ratio(self) -> float:
        return 1 - self.params_after / self.params_before

    def to_json(self) -> dict:
        return asdict(self) | {"ratio": self.ratio}


def protected_blocks(n_blocks: int, first: int = 0, last: int = 0) -> list[int]:
    if first < 0 or last < 0:
        raise DepthpruneError("--protect-first/--protect-last must be >= 0")
    return sorted(set(range(min(first, n_blocks))) | set(range(max(0, n_blocks - last), n_blocks)))


def select_blocks(scores: BlockScores, block_params: list[int], total_params: int, target: Target,
                  protect_first: int = 0, protect_last: int = 0) -> Selection:
    """Remove the lowest-scored unprotected candidates until the target is met (one shot).

    ``block_params`` holds one parameter count per candidate (per block, or per module with
    ``unit='module'``, where ``--num-blocks`` counts modules). Candidates of protected blocks are never
    removed. ``Selection.removed`` holds block indices for blocks and candidate positions for modules.
    """
    n = len(scores.scores)
    if len(block_params) != n:
        raise DepthpruneError(f"scores have {n} {scores.unit} candidates; the model has {len(block_params)}")
    n_blocks = n if scores.unit == "block" else n // 2
    protected = protected_blocks(n_blocks, protect_first, protect_last)
    owner = [int(str(c).split(".")[0]) for c in scores.candidates]
    candidates = [i for i in range(n) if owner[i] not in protected]
    if not candidates:
        raise DepthpruneError(
            f"--protect-first {protect_first} and --protect-last {protect_last} protect all {n_blocks} blocks; "
            "nothing left to remove"
        )
    spans = scores.metadata.get("span_distances") if scores.criterion == "angular" else None
    orders = _span_orders(spans, candidates, n) if spans else None
    order = sorted(candidates, key=lambda i: (scores.scores[i], i))
    k = _blocks_needed(target, candidates, order, orders, block_params, total_params, n)
    removed = sorted(orders[k] if orders else order[:k])
    after = total_params - sum(block_params[i] for i in removed)
    return Selection(removed, protected, total_params, after)


def _span_orders(spans: dict, candidates: list[int], n: int) -> dict[int, list[int]]:
    """For each k, the contiguous span of k unprotected blocks with the smallest angular distance."""
    allowed = set(candidates)
    out = {}
    for k in range(1, n + 1):
        options = [
            (d, start) for start, d in enumerate(spans.get(str(k), []))
            if all(i in allowed for i in range(start, start + k))
        ]
        if options:
            out[k] = list(range(min(options)[1], min(options)[1] + k))
    return out


def _blocks_needed(target, candidates, order, orders, block_params, total, n) -> int:
    limit = max(orders) if orders else len(candidates)
    if target.num_blocks is not None:
        if target.num_blocks > limit:
            raise DepthpruneError(
                f"--num-blocks {target.num_blocks} exceeds the {limit} removable blocks "
                f"({n} blocks, {n - len(candidates)} protected)"
            )
        return target.num_blocks
    goal = total * (1 - target.ratio) if target.ratio is not None else target.target_params
    non_block = total - sum(block_params)
    if goal < non_block:
        raise DepthpruneError(
            f"target of {int(goal):,} parameters is below the {non_block:,} parameters outside the blocks "
            "(embeddings, head, norms); depth pruning cannot reach it"
        )
    for k in range(1, limit + 1):
        chosen = orders[k] if orders else order[:k]
        if total - sum(block_params[i] for i in chosen) <= goal:
            return k
    raise DepthpruneError(
        f"target {target.describe()} needs more than the {limit} removable blocks; "
        "lower the target or protect fewer blocks"
    )
