"""Pruning options, defined once: the Python API, ``depthprune prune`` and the YAML ``prune:`` block read them."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from depthprune.core.options import FieldProblems, Options
from depthprune.errors import DepthpruneError
from depthprune.importance.base import criterion_names, resolve_criterion
from depthprune.pruning.compensate import DEFAULT_RIDGE
from depthprune.pruning.selection import Target

DEFAULT_CRITERION = {"depth": "ppl", "width": "wanda-sp"}


class PruneOptions(Options):
    """How to prune (the target is separate: one run may prune to several targets)."""

    method: Literal["depth", "width"] = Field(
        "depth", description="depth: remove whole blocks (or modules); width: remove attention heads and MLP "
                             "channels in every block (the Wanda-sp / LLM-Pruner baselines)")
    criterion: str | None = Field(None, validate_default=True, description="importance criterion; depth: " + ", ".join(
        ["magnitude", "magnitude+", "taylor", "taylor+", "ppl", "block_influence", "angular"])
        + "; width: wanda-sp, taylor-sp (default: ppl for depth, wanda-sp for width)")
    unit: Literal["block", "module"] = Field("block", description="candidates: whole blocks, or each block's "
                                                                    "attention and MLP separately")
    schedule: Literal["one-shot", "iterative"] = Field(
        "one-shot", description="one-shot: remove the lowest-scored at once; iterative: remove one, re-score, "
                                "repeat (SLEB)")
    protect_first: int | None = Field(None, ge=0, description="never remove the first N blocks (+ names: 4)")
    protect_last: int | None = Field(None, ge=0, description="never remove the last M blocks (+ names: 2)")
    round_to: int = Field(8, ge=1, description="width only: keep MLP channels (and head projections) multiples "
                                               "of this (1 = exact)")
    compensate: Literal["none", "linear"] = Field(
        "none", description="linear: after removal, fit a linear map of each removed span on calibration "
                            "activations and fuse it into the block before the cut (training-free)")
    compensate_ridge: float = Field(DEFAULT_RIDGE, ge=0, description="ridge of the compensation fit, towards the "
                                                                     "identity, relative to the mean diagonal of "
                                                                     "M^T M")
    compensate_samples: int | None = Field(None, ge=1, description="calibration samples for the compensation fit, "
                                                                   "drawn like the scoring ones (default: "
                                                                   "--calib-samples)")

    @field_validator("criterion")
    @classmethod
    def _criterion(cls, v: str | None, info: ValidationInfo) -> str:
        method = info.data.get("method", "depth")
        v = v or DEFAULT_CRITERION[method]
        try:
            resolve_criterion(v, method)
        except DepthpruneError as exc:
            raise ValueError(str(exc)) from None
        return v

    @model_validator(mode="after")
    def _consistent(self) -> PruneOptions:
        problems: list[tuple[tuple, str]] = []
        crit, _ = resolve_criterion(self.criterion, self.method)
        depth = self.method == "depth"
        if depth and self.unit not in crit.units:
            problems.append((("unit",), f"criterion {self.criterion!r} cannot score unit {self.unit!r} "
                                        f"(it scores: {', '.join(crit.units)})"))
        if not depth:
            for name, value, default in (("unit", self.unit, "block"), ("schedule", self.schedule, "one-shot")):
                if value != default:
                    problems.append(((name,), "applies to depth pruning only; drop it with method width"))
            if self.protect_first or self.protect_last:
                problems.append((("protect_first",), "width pruning narrows every block uniformly; protected "
                                                     "blocks cannot stay dense (drop it, or use method depth)"))
        elif self.round_to != 8:
            problems.append((("round_to",), "applies to method width only"))
        if self.schedule == "iterative" and self.unit == "module":
            problems.append((("schedule",), "iterative pruning supports unit block only"))
        if self.compensate != "none" and (not depth or self.unit != "block"):
            problems.append((("compensate",), "compensation fits removed blocks; it needs method depth and unit "
                                              "block (a module-pruned model keeps every block)"))
        if problems:
            raise FieldProblems(problems)
        return self

    @property
    def protect(self) -> tuple[int, int]:
        """(first, last) protected blocks: explicit values win over what a "+" name implies."""
        if self.method == "width":
            return (0, 0)
        _, implied = resolve_criterion(self.criterion, self.method)
        first, last = implied or (0, 0)
        return (first if self.protect_first is None else self.protect_first,
                last if self.protect_last is None else self.protect_last)

    @property
    def needs_calibration(self) -> bool:
        return resolve_criterion(self.criterion, self.method)[0].needs_calibration or self.compensate != "none"


class TargetOptions(Options):
    """How much to remove: exactly one of a block count, a parameter ratio, or a parameter budget."""

    num_blocks: int | None = Field(None, ge=1, description="blocks (or, with unit module, modules) to remove")
    ratio: float | None = Field(None, description="fraction of all parameters to remove, in (0, 1)")
    target_params: int | None = Field(None, ge=1, description="parameter count to reach or go below")

    @field_validator("ratio")
    @classmethod
    def _ratio(cls, v: float | None) -> float | None:
        if v is not None and not 0 < v < 1:
            raise ValueError(f"must be in (0, 1) (the fraction of parameters to remove), got {v}")
        return v

    @model_validator(mode="after")
    def _one(self) -> TargetOptions:
        if sum(x is not None for x in (self.num_blocks, self.ratio, self.target_params)) != 1:
            raise ValueError("give exactly one of num_blocks, ratio, target_params")
        return self

    def target(self) -> Target:
        return Target(self.num_blocks, self.ratio, self.target_params)

    @property
    def label(self) -> str:
        return target_label(self.model_dump())


def target_label(target: dict) -> str:
    """Directory name of a target: its ``name`` when given, else k4 / r20 / p150000000."""
    if target.get("name"):
        return target["name"]
    if target.get("num_blocks") is not None:
        return f"k{target['num_blocks']}"
    if target.get("ratio") is not None:
        return f"r{target['ratio'] * 100:g}"
    return f"p{target['target_params']}"


__all__ = ["DEFAULT_CRITERION", "PruneOptions", "TargetOptions", "criterion_names", "target_label"]
