"""Importance criteria behind one interface and one registry (lower score = less important)."""

from depthprune.importance import magnitude, ppl, similarity, taylor, width  # noqa: F401  (register criteria)
from depthprune.importance.base import (
    CRITERIA,
    PLUS_PROTECT,
    BlockScores,
    Criterion,
    Incremental,
    criterion_names,
    implied_protection,
    resolve_criterion,
    score_model,
)
from depthprune.importance.width import WidthScores, score_width

__all__ = ["CRITERIA", "PLUS_PROTECT", "BlockScores", "Criterion", "Incremental", "WidthScores", "criterion_names",
           "implied_protection", "resolve_criterion", "score_model", "score_width"]
