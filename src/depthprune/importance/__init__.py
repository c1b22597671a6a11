"""Block importance criteria behind one interface and a registry (lower score = less important)."""

from depthprune.importance import magnitude, ppl, similarity, taylor  # noqa: F401  (register criteria)
from depthprune.importance.base import CRITERIA, PLUS_ALIASES, BlockScores, resolve_criterion, score_model

__all__ = ["CRITERIA", "PLUS_ALIASES", "BlockScores", "resolve_criterion", "score_model"]
