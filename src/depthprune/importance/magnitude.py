"""Magnitude: the sum of |W| over a candidate's linear weights (data-free)."""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from depthprune.importance.base import Criterion, register
from depthprune.importance.weights import candidate_weights


@register
class Magnitude(Criterion):
    name = "magnitude"
    description = "sum of |W| over the linear weights (Shortened LLaMA)"
    units = ("block", "module")
    needs_calibration = False

    @torch.no_grad()
    def score(self, model, input_ids=None, unit="block", batch_size=16, progress=True):
        groups = candidate_weights(model, unit)
        return [sum(float(w.detach().abs().float().sum()) for w in ws)
                for ws in tqdm(groups, desc="magnitude", unit=unit, leave=False, disable=not progress)]
