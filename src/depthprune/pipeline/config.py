"""The experiment YAML schema: the stages' own options composed (unknown keys refused); loading is in load.py.

Each block reuses the options model of its stage (``model:`` = ModelOptions, ``calibration:`` = CalibrationSpec,
``prune:`` = PruneOptions + targets, ``retrain:`` = LoraOptions / CptOptions by ``kind``, ``quantize:`` =
QuantizeOptions, ``evaluate:`` = perplexity and zero-shot settings, ``bench:`` = BenchOptions), so a default or a
rule is defined once, beside its stage. Only what the pipeline adds lives here: several targets, variants,
directory names, local paths.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    Field,
    ValidationError,
    ValidationInfo,
    create_model,
    field_validator,
    model_validator,
)

from depthprune.core.options import FieldProblems, Options, validation_messages
from depthprune.data.calibration import CalibrationSpec
from depthprune.evaluation.options import PerplexitySettings, SamplesOptions, ZeroShotOptions
from depthprune.models.options import Dtype, ModelOptions
from depthprune.pruning.options import PruneOptions, TargetOptions, target_label
from depthprune.quantization.options import QuantizeOptions
from depthprune.retraining.run import KINDS
from depthprune.speed.options import BenchOptions

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._+-]*$"
RECIPE_KEYS = ("calibration", "prune", "retrain")
RESERVED_NAMES = {"base", "pruned", "retrained", "checkpoints", "report"}
RUN_FIELDS = ("model", "output", "overwrite", "resume", "dtype", "cache_dir", "device", "progress")
"""Retraining fields the pipeline sets itself (from ``model:`` and the run directory)."""


def _check_name(value: str, what: str) -> str:
    if not re.match(NAME_PATTERN, value):
        raise ValueError(f"{what} {value!r} must be letters, digits, '.', '_', '+' or '-' (a directory name)")
    if value in RESERVED_NAMES:
        raise ValueError(f"{what} {value!r} is reserved ({', '.join(sorted(RESERVED_NAMES))}); choose another")
    return value


def local_path(value: str | None, info: ValidationInfo) -> str | None:
    """An existing local path (relative to the working directory, else to the config file) made absolute."""
    if not value:
        return value
    path = Path(value).expanduser()
    if path.exists():
        return str(path.resolve())
    base = (info.context or {}).get("base_dir")
    if base is not None and not path.is_absolute() and (Path(base) / path).exists():
        return str((Path(base) / path).resolve())
    return value


class ModelConfig(ModelOptions):
    """The model to prune; ``model: NAME`` is short for ``model: {source: NAME}``."""

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        return {"source": data} if isinstance(data, str) else data

    @field_validator("source", "cache_dir")
    @classmethod
    def _paths(cls, v: str | None, info: ValidationInfo) -> str | None:
        return local_path(v, info)


class CalibrationConfig(CalibrationSpec):
    @field_validator("source")
    @classmethod
    def _paths(cls, v: str | None, info: ValidationInfo) -> str | None:
        return local_path(v, info)


class TargetSpec(TargetOptions):
    name: str | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, v: str | None) -> str | None:
        return None if v is None else _check_name(v, "target name")

    @property
    def label(self) -> str:
        """Directory name of this target: its ``name``, else k4 / r20 / p150000000."""
        return target_label(self.model_dump())

    def as_dict(self) -> dict:
        return self.model_dump(exclude={"name"}, exclude_none=True)


class PruneSpec(PruneOptions):
    """Depth (blocks or modules; one-shot or iterative) or width pruning, at one or several targets."""

    target: TargetSpec | None = None
    targets: list[TargetSpec] | None = None

    @model_validator(mode="after")
    def _targets(self) -> PruneSpec:
        problems: list[tuple[tuple, str]] = []
        if self.target is not None and self.targets is not None:
            problems.append(((), "give target or targets, not both"))
        elif self.target is None and not self.targets:
            problems.append(((), "give a target ({num_blocks: K}, {ratio: R} or {target_params: P}) or a "
                                 "non-empty list of targets"))
        seen: dict[str, int] = {}
        for i, t in enumerate(self.targets or []):
            if t.label in seen:
                problems.append((("targets", i), f"duplicate target {t.label!r} (same as targets.{seen[t.label]}); "
                                                 "give it a distinct name"))
            seen.setdefault(t.label, i)
        if problems:
            raise FieldProblems(problems)
        if self.target is not None:
            self.__dict__["targets"], self.__dict__["target"] = [self.target], None
        first, last = self.protect
        self.__dict__["protect_first"], self.__dict__["protect_last"] = first, last
        return self


STEP_CLASSES = {kind: create_model(f"{kind.capitalize()}Step", __base__=cls, kind=(Literal[kind], kind))
                for kind, (cls, _) in KINDS.items()}
"""Each kind's retraining options plus its ``kind`` tag, as written in the YAML."""


def retrain_step(data: Any):
    """One retraining step, validated by its kind's options (LoRA, CPT); run fields are the pipeline's."""
    if not isinstance(data, dict):
        raise FieldProblems([((), f"must be a mapping of fields, got {type(data).__name__}")])
    kind = data.get("kind")
    if kind not in KINDS:
        raise FieldProblems([(("kind",), f"must be one of {', '.join(repr(k) for k in KINDS)}, got {kind!r}")])
    cls = STEP_CLASSES[kind]
    problems = []
    for key in data:
        owners = [other for other, (c, _) in KINDS.items() if key in c.model_fields]
        if key != "kind" and key not in cls.model_fields and owners:
            problems.append(((key,), f"applies to kind{'s' if len(owners) > 1 else ''} {', '.join(owners)} only"))
    problems += [((key,), "is set by the pipeline (from model: and the run directory); drop it")
                 for key in data if key in RUN_FIELDS]
    adapters = kind == "lora" or (kind == "kd" and data.get("lora") is True)  # trains LoRA adapters
    if adapters and data.get("merge") is False:
        problems.append((("merge",), "must be true: evaluation, benchmark and later steps load the merged "
                                     "checkpoint (the adapter is kept in adapter/ as well)"))
    fields = {k: v for k, v in data.items() if not any(k == p[0][0] for p in problems)}
    if adapters:
        fields.setdefault("merge", True)
    try:
        step = cls.model_validate(fields)
    except ValidationError as exc:
        problems += validation_messages(exc)
    if problems:
        raise FieldProblems(problems)
    return step


def step_dump(step) -> dict:
    """A retraining step as written in the resolved config (kind first, run fields left out)."""
    return {"kind": step.kind} | step.model_dump(mode="json", exclude=set(RUN_FIELDS) | {"kind"}, exclude_none=True)


class PplSpec(PerplexitySettings):
    datasets: list[str] = Field(default_factory=lambda: ["wikitext2", "ptb"], min_length=1)

    @field_validator("datasets")
    @classmethod
    def _paths(cls, v: list[str], info: ValidationInfo) -> list[str]:
        return [local_path(s, info) for s in v if s]


class ZeroShotSpec(ZeroShotOptions):
    dtype: Dtype | Literal["bfloat16-if-native"] | None = Field(
        None, description="score the tasks with the model loaded in this dtype (default: model.dtype, as PPL); "
                          "bfloat16 is ~4x faster on CPUs with AVX-512 BF16 and agrees with float32 within a "
                          "standard error (docs/results/zeroshot_gemma3_270m.md), but ~7x slower than float32 on "
                          "AVX2-only CPUs; bfloat16-if-native takes bfloat16 on GPUs and native-bf16 CPUs, float32 "
                          "elsewhere (eval.json records which)")


class EvaluateSpec(Options):
    baseline: bool = Field(True, description="also evaluate the unpruned model (runs/<name>/base/eval.json)")
    every_stage: bool = Field(False, description="evaluate the pruned model and every retraining step, "
                                                 "not only the final model")
    ppl: PplSpec | None = Field(default_factory=PplSpec)
    zeroshot: ZeroShotSpec | None = None
    samples: SamplesOptions | None = Field(None, description="generation examples stored in eval.json (null: none)")

    def stage_dump(self, exclude: set[str]) -> dict:
        """The settings an evaluation stage hashes; ``samples``, ``zeroshot.dtype`` and ``.docs`` only when set
        (older runs keep their hashes)."""
        out = self.model_dump(mode="json", exclude=exclude)
        if out.get("samples") is None:
            out.pop("samples", None)
        for key in ("dtype", "docs"):
            if out.get("zeroshot") and out["zeroshot"].get(key) is None:
                out["zeroshot"].pop(key)
        return out


class QuantizeSpec(QuantizeOptions):
    """Quantize the final model of every target (after retraining) into ``<t>/quantized/``."""

    @field_validator("calib")
    @classmethod
    def _paths(cls, v: str, info: ValidationInfo) -> str:
        return local_path(v, info)


class BenchSpec(BenchOptions):
    baseline: bool = Field(True, description="benchmark the unpruned model first (speedups are against it)")


class VariantSpec(Options):
    """Partial overrides merged into the experiment (dicts merge, lists and values replace)."""

    description: str = ""
    calibration: dict[str, Any] | None = None
    prune: dict[str, Any] | None = None
    retrain: list[Any] | None = None


VariantName = Annotated[str, AfterValidator(lambda v: _check_name(v, "variant name"))]


class ExperimentConfig(Options):
    name: str
    description: str = ""
    model: ModelConfig = Field(default_factory=ModelConfig)
    calibration: CalibrationConfig = Field(default_factory=CalibrationConfig)
    prune: PruneSpec | None = None
    retrain: list[Any] = Field(default_factory=list)
    quantize: QuantizeSpec | None = None
    evaluate: EvaluateSpec | None = None
    bench: BenchSpec | None = None
    variants: dict[VariantName, VariantSpec] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return _check_name(v, "name")

    @field_validator("retrain")
    @classmethod
    def _steps(cls, v: list, info: ValidationInfo) -> list:
        steps, problems = [], []
        for i, data in enumerate(v):
            if isinstance(data, dict) and data.get("data"):
                data = data | {"data": local_path(data["data"], info)}
            try:
                steps.append(retrain_step(data))
            except FieldProblems as exc:
                problems += [((i,) + loc, msg) for loc, msg in exc.problems]
        if problems:
            raise FieldProblems(problems)
        return steps

    @model_validator(mode="after")
    def _needs_prune(self) -> ExperimentConfig:
        if self.prune is None and not self.variants:
            raise FieldProblems([(("prune",), "required: what to prune and how much")])
        return self

    def recipe_dump(self) -> dict:
        """The resolved calibration, prune and retrain settings (what a variant may change)."""
        prune = self.prune.model_dump(mode="json", exclude={"target"}) if self.prune else None
        if prune and prune["method"] == "depth":
            prune.pop("round_to")
        if prune:
            prune["targets"] = [{k: v for k, v in t.items() if v is not None} for t in prune["targets"]]
        return {"calibration": self.calibration.model_dump(mode="json"), "prune": prune,
                "retrain": [step_dump(s) for s in self.retrain]}


def resolved_config(cfg: ExperimentConfig, leaves: list[Leaf]) -> dict:
    """The experiment with every default filled in (written as ``config.yaml``; it loads back as a config)."""
    out = cfg.model_dump(mode="json", exclude={"calibration", "prune", "retrain", "variants"})
    if len(leaves) == 1 and leaves[0].variant is None:
        return out | leaves[0].config.recipe_dump()
    out["variants"] = {leaf.variant: {"description": leaf.description} | leaf.config.recipe_dump()
                       for leaf in leaves}
    return out


@dataclass
class Leaf:
    """One pruning recipe of an experiment: the whole experiment, or one of its variants (merged)."""

    variant: str | None
    config: ExperimentConfig
    description: str = ""

    @property
    def rel(self) -> str:
        return self.variant or ""


__all__ = ["RECIPE_KEYS", "ExperimentConfig", "FieldProblems", "Leaf", "resolved_config"]
