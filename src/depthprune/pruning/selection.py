"""Selection: scores + target + protected blocks -> which blocks to remove, and the resulting size."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from depthprune.errors import DepthpruneError
from depthprune.importance.base import BlockScores, lowest_first, resolve_criterion


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


def _selector(criterion: str):
    """The criterion's ``select`` (its removal rule), or the default lowest-first rule for unknown names."""
    try:
        return resolve_criterion(criterion)[0].select
    except DepthpruneError:  # scores from elsewhere (e.g. a hand-made file): lowest scores first
        return lowest_first


def select_blocks(scores: BlockScores, block_params: list[int], total_params: int, target: Target,
                  protect_first: int | None = None, protect_last: int | None = None) -> Selection:
    """Remove the lowest-scored unprotected candidates until the target is met (one shot).

    ``block_params`` holds one parameter count per candidate (per block, or per module with
    ``unit='module'``, where ``--num-blocks`` counts modules). Candidates of protected blocks are never
    removed; protection defaults to what the scores carry ("+" criteria: first 4 / last 2). Which k
    candidates go is the criterion's ``select`` (angular: a contiguous span). ``Selection.removed`` holds block
    indices for blocks and candidate positions for modules.
    """
    n = len(scores.scores)
    if len(block_params) != n:
        raise DepthpruneError(f"scores have {n} {scores.unit} candidates; the model has {len(block_params)}")
    first, last = scores.protect if scores.protect else (0, 0)
    first = first if protect_first is None else protect_first
    last = last if protect_last is None else protect_last
    n_blocks = n if scores.unit == "block" else n // 2
    protected = protected_blocks(n_blocks, first, last)
    owner = [int(str(c).split(".")[0]) for c in scores.candidates]
    candidates = [i for i in range(n) if owner[i] not in protected]
    if not candidates:
        raise DepthpruneError(
            f"--protect-first {first} and --protect-last {last} protect all {n_blocks} blocks; nothing left to remove"
        )
    select = _selector(scores.criterion)
    sets = {k: chosen for k in range(1, len(candidates) + 1) if (chosen := select(scores, candidates, k)) is not None}
    k = _blocks_needed(target, len(candidates), sets, block_params, total_params, n)
    removed = sorted(sets[k])
    after = total_params - sum(block_params[i] for i in removed)
    return Selection(removed, protected, total_params, after)


def _blocks_needed(target, n_candidates, sets, block_params, total, n) -> int:
    limit = max(sets) if sets else 0
    if target.num_blocks is not None:
        if target.num_blocks not in sets:
            raise DepthpruneError(
                f"--num-blocks {target.num_blocks} exceeds the {limit} removable blocks "
                f"({n} blocks, {n - n_candidates} protected)"
            )
        return target.num_blocks
    goal = total * (1 - target.ratio) if target.ratio is not None else target.target_params
    non_block = total - sum(block_params)
    if goal < non_block:
        raise DepthpruneError(
            f"target of {int(goal):,} parameters is below the {non_block:,} parameters outside the blocks "
            "(embeddings, head, norms); depth pruning cannot reach it"
        )
    for k in sorted(sets):
        if total - sum(block_params[i] for i in sets[k]) <= goal:
            return k
    raise DepthpruneError(
        f"target {target.describe()} needs more than the {limit} removable blocks; "
        "lower the target or protect fewer blocks"
    )
