"""Width pruning baselines (Wanda-sp, LLM-Pruner-style Taylor): fewer heads and MLP channels in every block.

Uniform width, as Wanda-sp and LLM-Pruner prune: every block keeps the same number of query heads, key/value
heads and MLP channels, so the result is a stock config. Targets are those of depth pruning (``Target``:
a parameter ratio, a parameter budget, or ``num_blocks`` = as many parameters as that many blocks hold) and
parameters are counted with ``count_params``, so width and depth models can be matched at equal size.

How the target becomes a shape:

1. ``r`` = parameters to remove / parameters held by all heads and MLP channels; attention and MLP are both
   pruned at that fraction.
2. Heads are discrete: the kept query-head count is ``heads * (1 - r)`` rounded to the nearest feasible
   count (rounding to 0 is an error). Feasible: ``g`` key/value heads each keeping the same number ``q`` of
   its query heads (transformers' grouped-query layout), ``g * q`` query heads in all; a key/value head goes
   only with its whole query group. Among equally close counts the larger wins, and for one count the shape
   keeping more key/value heads wins (query heads are pruned before key/value heads). With ``round_to`` the
   projection widths ``g * q * head_dim`` and ``g * head_dim`` must be multiples of it (always true when
   ``head_dim`` is, e.g. 64, 128, 256). The model's config class must also accept the count: transformers
   validates some families on save and load (LLaMA and Gemma 3 require ``hidden_size % num_attention_heads
   == 0`` even with an explicit ``head_dim``), so Gemma 3 270M (hidden 640, 4 heads) keeps 4, 2 or 1 heads.
3. MLP channels absorb the rest: the largest multiple of ``round_to`` that brings the model to or below the
   target (all channels when the heads alone reach it).

Protected blocks are refused: a stock config has one ``num_attention_heads``/``intermediate_size`` for every
block, so a dense protected block next to narrower ones cannot be saved as a model plain transformers loads.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

from depthprune.errors import DepthpruneError
from depthprune.importance.width import WidthScores, score_width
from depthprune.models.params import block_params, count_params
from depthprune.models.specs import num_blocks
from depthprune.models.width_layout import Dims, check_layout, layout, model_dims, unit_costs
from depthprune.pruning.selection import Target, protected_blocks
from depthprune.pruning.width_surgery import BlockKeep, apply_width, select_units

__all__ = ["BlockKeep", "Dims", "WidthPlan", "WidthResult", "WidthScores", "plan_width",
           "prune_width", "score_width"]


@dataclass
class WidthPlan:
    """The uniform shape every block is cut to, and the parameter count that results."""

    before: Dims
    after: Dims
    params_before: int
    params_after: int
    target: Target
    round_to: int
    num_blocks: int
    costs: dict = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        return 1 - self.params_after / self.params_before

    def describe(self) -> str:
        b, a = self.before, self.after
        return (f"query heads {b.heads} -> {a.heads}, key/value heads {b.kv_heads} -> {a.kv_heads}, "
                f"MLP channels {b.channels} -> {a.channels} (head_dim {a.head_dim}) in all {self.num_blocks} blocks")


@dataclass
class WidthResult:
    plan: WidthPlan
    keeps: list[BlockKeep]
    info: dict


def target_goal(model, target: Target, total: int) -> int:
    """Parameter count to reach; ``num_blocks`` K means: as many parameters as K blocks hold."""
    if target.num_blocks is not None:
        bp = block_params(model)
        if target.num_blocks >= len(bp):
            raise DepthpruneError(f"--num-blocks {target.num_blocks}: the model has only {len(bp)} blocks")
        return total - round(target.num_blocks * sum(bp) / len(bp))
    if target.ratio is not None:
        return math.ceil(total * (1 - target.ratio))
    return target.target_params


def config_accepts(config, heads: int, kv_heads: int) -> bool:
    """Whether ``config``'s class validates with ``heads`` query and ``kv_heads`` key/value heads."""
    if not callable(getattr(config, "validate", None)):
        return True
    trial = copy.deepcopy(config)
    trial.num_attention_heads, trial.num_key_value_heads = heads, kv_heads
    try:
        trial.validate()
    except Exception:  # noqa: BLE001 - any validation failure means transformers would refuse the shape
        return False
    return True


def head_shapes(d: Dims, round_to: int, config=None) -> list[tuple[int, int]]:
    """Feasible (query heads, key/value heads) pairs, see the module docstring."""
    out = []
    for g in range(1, d.kv_heads + 1):
        for q in range(1, d.group + 1):
            if (g * q * d.head_dim) % round_to == 0 and (g * d.head_dim) % round_to == 0:
                if config is None or config_accepts(config, g * q, g):
                    out.append((g * q, g))
    return out


def _channels(d: Dims, rest: int, n: int, cost_ch: int, round_to: int) -> int:
    if rest <= 0:
        return d.channels
    keep = d.channels - math.ceil(rest / (n * cost_ch))
    return max(keep, 0) // round_to * round_to


def plan_width(model, target: Target, protect: tuple[int, int] = (0, 0), round_to: int = 8) -> WidthPlan:
    """Turn ``target`` into one shape for every block (no scores needed, nothing modified)."""
    if round_to < 1:
        raise DepthpruneError(f"--round-to must be >= 1, got {round_to}")
    d = model_dims(model)
    slices = layout(model, d)
    check_layout(model, slices)
    n = num_blocks(model)
    if protected_blocks(n, *protect):
        raise DepthpruneError(
            f"--protect-first/--protect-last cannot be used with --method width: the stock "
            f"{model.config.model_type} config has one num_attention_heads/intermediate_size for all blocks, so "
            "protected blocks cannot stay dense while the others narrow; drop --protect-* (Wanda-sp and "
            "LLM-Pruner prune every block uniformly) or use --method depth"
        )
    total = count_params(model)
    goal = target_goal(model, target, total)
    need = total - goal
    if need <= 0:
        raise DepthpruneError(f"target {target.describe()} is not below the model's {total:,} parameters; "
                              "nothing to prune")
    cost = unit_costs(model, slices)
    prunable = n * (d.heads * cost["q"] + d.kv_heads * cost["kv"] + d.channels * cost["ch"])
    r = need / prunable
    if r >= 1:
        raise DepthpruneError(
            f"target {target.describe()} would remove {need:,} parameters, but the heads and MLP channels hold "
            f"only {prunable:,} (the rest is embeddings, head, norms); width pruning cannot reach it"
        )
    want = d.heads * (1 - r)
    if math.floor(want + 0.5) < 1:
        raise DepthpruneError(
            f"target {target.describe()} would remove every attention head of a block (keeping "
            f"{want:.2f} of {d.heads} query heads rounds to 0); lower --ratio or raise --target-params"
        )
    shapes = sorted(head_shapes(d, round_to, model.config), key=lambda s: (abs(s[0] - want), -s[0], -s[1]))
    if not shapes:
        raise DepthpruneError(f"--round-to {round_to}: no head count keeps head_dim {d.head_dim} multiples of it "
                              f"and passes the {model.config.model_type} config's validation; use --round-to 1 "
                              "or a divisor of head_dim")
    for heads, kv in shapes:
        rest = need - n * ((d.heads - heads) * cost["q"] + (d.kv_heads - kv) * cost["kv"])
        channels = _channels(d, rest, n, cost["ch"], round_to)
        if channels >= 1:
            break
    else:
        raise DepthpruneError(
            f"target {target.describe()} would remove every MLP channel of a block (intermediate_size "
            f"{d.channels}, --round-to {round_to}); lower --ratio or raise --target-params"
        )
    after = Dims(heads, kv, d.head_dim, channels)
    removed = n * ((d.heads - heads) * cost["q"] + (d.kv_heads - kv) * cost["kv"]
                   + (d.channels - channels) * cost["ch"])
    return WidthPlan(d, after, total, total - removed, target, round_to, n, cost)


def prune_width(model, scores: WidthScores, plan: WidthPlan) -> WidthResult:
    """Keep the best heads/channels of every block (by ``scores``) at ``plan``'s shape, in place."""
    if len(scores.blocks) != plan.num_blocks or any(
        (len(b["q"]), len(b["kv"]), len(b["ch"])) != (plan.before.heads, plan.before.kv_heads, plan.before.channels)
        for b in scores.blocks
    ):
        raise DepthpruneError("width scores do not match the model (block count or heads/channels differ)")
    keeps = select_units(scores, plan.before, plan.after)
    apply_width(model, keeps, plan.before, plan.after)
    after = count_params(model)
    if after != plan.params_after:
        raise RuntimeError(f"width surgery left {after:,} parameters, the plan expected {plan.params_after:,}")
    info = {
        "method": "width",
        "unit": "heads+channels",
        "criterion": scores.criterion,
        "target": {k: v for k, v in vars(plan.target).items() if v is not None},
        "round_to": plan.round_to,
        "protect_first": 0,
        "protect_last": 0,
        "shape_before": plan.before.to_config(),
        "shape_after": plan.after.to_config(),
        "params_before": plan.params_before,
        "params_after": after,
        "ratio_removed": plan.ratio,
        "unit_params": plan.costs,
        "kept": [{"block": i} | k.to_json() for i, k in enumerate(keeps)],
        "head_scores": scores.heads_json(),
        "calibration": scores.calibration,
        "score_wall_s": scores.wall_s,
    }
    return WidthResult(plan, keeps, info)
