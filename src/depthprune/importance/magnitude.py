"""Magnitude: the sum of |W| over a candidate's linear weights (data-free)."""

from __future__ import annotations

import torch

from depthprune.importance.base import register
from depthprune.importance.weights import candidate_weights


@register("magnitude", units=("block", "module"), needs_calibration=False,
          description="sum of |W| over the linear weights (Shortened LLaMA)")
@torch.no_grad()
def magnitude_scores(model, input_ids=None, unit: str = "block", batch_size: int = 16) -> list[float]:
    """Data-free; ``batch_size`` is accepted for a uniform interface."""
    return [sum(float(w.detach().abs().float().sum()) for w in ws) for ws in candidate_weights(model, unit)]
