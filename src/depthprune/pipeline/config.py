"""The experiment YAML schema (pydantic v2, unknown keys refused); loading and error reporting are in load.py.

Every problem is reported at once, each with the dotted path of the field (``prune.targets.1.ratio: must be
in (0, 1)``), as one ``DepthpruneError``. ``variants`` (name -> partial ``calibration``/``prune``/``retrain``
overrides) turn one file into several pruning recipes compared on the same model and yardsticks.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from depthprune.errors import DepthpruneError

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._+-]*$"
RECIPE_KEYS = ("calibration", "prune", "retrain")
RESERVED_NAMES = {"base", "pruned", "retrained", "checkpoints", "report"}
Dtype = Literal["auto", "float32", "bfloat16", "float16"]


class FieldProblems(ValueError):
    """Problems found by a cross-field check: (path below the failing object, message) pairs."""

    def __init__(self, problems: list[tuple[tuple, str]]):
        self.problems = problems
        super().__init__("; ".join(msg for _, msg in problems))


def _check_name(value: str, what: str) -> str:
    if not re.match(NAME_PATTERN, value):
        raise ValueError(f"{what} {value!r} must be letters, digits, '.', '_', '+' or '-' (a directory name)")
    if value in RESERVED_NAMES:
        raise ValueError(f"{what} {value!r} is reserved ({', '.join(sorted(RESERVED_NAMES))}); choose another")
    return value


def _local_path(value: str | None, info: ValidationInfo) -> str | None:
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


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelConfig(_Strict):
    """The model to prune; ``model: NAME`` is short for ``model: {source: NAME}``."""

    source: str = "gemma-3-270m"
    dtype: Dtype = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    cache_dir: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        return {"source": data} if isinstance(data, str) else data

    @field_validator("source", "cache_dir")
    @classmethod
    def _paths(cls, v: str | None, info: ValidationInfo) -> str | None:
        return _local_path(v, info)


class CalibrationConfig(_Strict):
    """Calibration text for scoring: ``source`` null = War and Peace when the data directory has it, else self."""

    source: str | None = None
    samples: int = Field(10, ge=1)
    seq_len: int = Field(128, ge=2)
    seed: int = 0
    text_field: str = "text"
    batch_size: int = Field(16, ge=1, description="calibration samples per forward pass while scoring")

    @field_validator("source")
    @classmethod
    def _paths(cls, v: str | None, info: ValidationInfo) -> str | None:
        return _local_path(v, info)


class TargetSpec(_Strict):
    """How much to remove: exactly one of ``num_blocks``, ``ratio`` (of all parameters), ``target_params``."""

    num_blocks: int | None = Field(None, ge=1)
    ratio: float | None = None
    target_params: int | None = Field(None, ge=1)
    name: str | None = None

    @field_validator("ratio")
    @classmethod
    def _ratio(cls, v: float | None) -> float | None:
        if v is not None and not 0 < v < 1:
            raise ValueError("must be in (0, 1)")
        return v

    @field_validator("name")
    @classmethod
    def _name(cls, v: str | None) -> str | None:
        return None if v is None else _check_name(v, "target name")

    @model_validator(mode="after")
    def _one(self) -> TargetSpec:
        if sum(x is not None for x in (self.num_blocks, self.ratio, self.target_params)) != 1:
            raise ValueError("give exactly one of num_blocks, ratio, target_params")
        return self

    @property
    def label(self) -> str:
        """Directory name of this target: its ``name``, else k4 / r20 / p150000000."""
        if self.name:
            return self.name
        if self.num_blocks is not None:
            return f"k{self.num_blocks}"
        if self.ratio is not None:
            return f"r{self.ratio * 100:g}"
        return f"p{self.target_params}"

    def as_dict(self) -> dict:
        return {k: v for k, v in (("num_blocks", self.num_blocks), ("ratio", self.ratio),
                                  ("target_params", self.target_params)) if v is not None}


class PruneSpec(_Strict):
    """Depth (blocks or modules; one-shot or iterative) or width pruning, at one or several targets."""

    method: Literal["depth", "width"] = "depth"
    criterion: str | None = Field(None, validate_default=True)
    unit: Literal["block", "module"] = "block"
    schedule: Literal["one-shot", "iterative"] = "one-shot"
    protect_first: int | None = Field(None, ge=0)
    protect_last: int | None = Field(None, ge=0)
    round_to: int = Field(8, ge=1, description="width only: keep widths multiples of this")
    target: TargetSpec | None = None
    targets: list[TargetSpec] | None = None
    compensate: Literal["none", "linear"] = Field("none", description="linear: fit and fuse a map into the kept "
                                                  "block before each removed span (depth, unit block)")
    compensate_ridge: float | None = Field(None, ge=0, description="default 1e-4 (pruning.compensate.DEFAULT_RIDGE)")
    compensate_samples: int | None = Field(None, ge=1, description="calibration samples of the fit (default: "
                                                                   "calibration.samples)")

    @field_validator("criterion")
    @classmethod
    def _criterion(cls, v: str | None, info: ValidationInfo) -> str | None:
        method = info.data.get("method")
        if method == "width":
            from depthprune.pruning.width_scores import WIDTH_CRITERIA

            v = v or "wanda-sp"
            if v not in WIDTH_CRITERIA:
                raise ValueError(f"unknown width criterion {v!r}; choose one of: {', '.join(WIDTH_CRITERIA)}")
        elif method == "depth":
            from depthprune.importance import resolve_criterion

            v = v or "ppl"
            try:
                resolve_criterion(v)
            except DepthpruneError as exc:
                raise ValueError(str(exc)) from None
        return v

    @field_validator("unit")
    @classmethod
    def _unit(cls, v: str, info: ValidationInfo) -> str:
        crit = info.data.get("criterion")
        if v == "module" and info.data.get("method") == "width":
            raise ValueError("unit module applies to depth pruning only")
        if crit and info.data.get("method") == "depth":
            from depthprune.importance import resolve_criterion

            units = resolve_criterion(crit)[0].units
            if v not in units:
                raise ValueError(f"criterion {crit!r} cannot score unit {v!r} (it scores: {', '.join(units)})")
        return v

    @field_validator("schedule")
    @classmethod
    def _schedule(cls, v: str, info: ValidationInfo) -> str:
        if v == "iterative" and info.data.get("method") == "width":
            raise ValueError("iterative applies to depth pruning only")
        if v == "iterative" and info.data.get("unit") == "module":
            raise ValueError("iterative pruning supports unit block only")
        return v

    @field_validator("protect_first", "protect_last")
    @classmethod
    def _protect(cls, v: int | None, info: ValidationInfo) -> int | None:
        if v and info.data.get("method") == "width":
            raise ValueError("width pruning narrows every block uniformly; protected blocks cannot stay dense "
                             "(drop it)")
        return v

    @field_validator("round_to")
    @classmethod
    def _round_to(cls, v: int, info: ValidationInfo) -> int:
        if v != 8 and info.data.get("method") == "depth":
            raise ValueError("applies to method width only")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> PruneSpec:
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
        problems += _compensation_problems(self)
        if problems:
            raise FieldProblems(problems)
        if self.target is not None:
            self.targets, self.target = [self.target], None
        if self.method == "depth":
            from depthprune.pruning import resolve_protection

            self.protect_first, self.protect_last = resolve_protection(self.criterion, self.protect_first,
                                                                       self.protect_last)
        else:
            self.protect_first, self.protect_last = 0, 0
        return self


def _compensation_problems(p: PruneSpec) -> list[tuple[tuple, str]]:
    if p.compensate == "none":
        return [((key,), "applies with compensate: linear only") for key in ("compensate_ridge", "compensate_samples")
                if getattr(p, key) is not None]
    if p.method != "depth":
        return [(("compensate",), "applies to depth pruning only (method: depth)")]
    if p.unit != "block":
        return [(("compensate",), "fits a map for removed whole blocks: needs unit block")]
    if p.compensate_ridge is None:
        p.compensate_ridge = 1e-4
    return []


_LORA_ONLY = ("rank", "alpha", "dropout", "target_modules", "train_on_inputs", "merge")
_CPT_ONLY = ("text_field",)
_KD_ONLY = ("teacher", "teacher_dtype", "temperature", "ce_weight", "lora")
_KD_LORA = ("rank", "alpha", "dropout", "target_modules", "merge")


class RetrainStep(_Strict):
    """One retraining step; steps run in order, each on the previous one's output (CPT then LoRA)."""

    kind: Literal["lora", "cpt", "kd"]
    data: str | None = Field(None, description="lora: alpaca_demo or an Alpaca .json/.jsonl; cpt: c4_sample, ...")
    seq_len: int | None = Field(None, ge=2, description="lora: tokens per example (max_len); cpt: per sequence")
    lr: float | None = Field(None, gt=0)
    batch_size: int | None = Field(None, ge=1)
    micro_batch_size: int | None = Field(None, ge=1)
    epochs: int | None = Field(None, ge=1)
    max_steps: int | None = Field(None, ge=1)
    max_tokens: int | None = Field(None, ge=1)
    schedule: Literal["cosine", "linear", "constant"] | None = None
    warmup_ratio: float = Field(0.03, ge=0, lt=1)
    warmup_steps: int | None = Field(None, ge=0)
    min_lr_ratio: float | None = Field(None, ge=0, le=1)
    weight_decay: float | None = Field(None, ge=0)
    betas: tuple[float, float] | None = None
    max_grad_norm: float | None = Field(None, ge=0)
    seed: int = 0
    save_every: int = Field(50, ge=0, description="checkpoint every N steps, so Ctrl-C loses little")
    keep_checkpoints: int = Field(2, ge=1)
    log_every: int = Field(10, ge=1)
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"
    gradient_checkpointing: bool = False
    save_dtype: Dtype = "auto"
    rank: int | None = Field(None, ge=1)
    alpha: float | None = Field(None, gt=0)
    dropout: float | None = Field(None, ge=0, lt=1)
    target_modules: list[str] | None = None
    train_on_inputs: bool | None = None
    merge: bool | None = Field(None, description="must stay true: later stages load the merged checkpoint")
    text_field: str | None = None
    teacher: str | None = Field(None, description="kd: default the model the input was pruned from")
    teacher_dtype: Dtype | None = None
    temperature: float | None = Field(None, gt=0)
    ce_weight: float | None = Field(None, ge=0, le=1)
    lora: bool | None = Field(None, description="kd: train LoRA adapters (merged) instead of every parameter")

    @field_validator("betas")
    @classmethod
    def _betas(cls, v):
        if v is not None and not all(0 <= b < 1 for b in v):
            raise ValueError("must be two numbers in [0, 1)")
        return v

    @field_validator("data", "teacher")
    @classmethod
    def _paths(cls, v: str | None, info: ValidationInfo) -> str | None:
        return _local_path(v, info)

    @field_validator(*_LORA_ONLY, *_CPT_ONLY, *_KD_ONLY)
    @classmethod
    def _kind_only(cls, v, info: ValidationInfo):
        kind, name = info.data.get("kind"), info.field_name
        if v is None or kind is None:
            return v
        if name in _KD_ONLY and kind != "kd":
            raise ValueError("applies to kind kd only")
        if name in _LORA_ONLY and kind != "lora" and not (kind == "kd" and name in _KD_LORA):
            raise ValueError("applies to kind lora only" + (" (or kd with lora: true)" if name in _KD_LORA else ""))
        if name in _CPT_ONLY and kind == "lora":
            raise ValueError("applies to kind cpt only (or kd)")
        return v

    @model_validator(mode="after")
    def _defaults(self) -> RetrainStep:
        from depthprune.retrain.cpt import CPT_TRAIN_DEFAULTS
        from depthprune.retrain.lora import LORA_TRAIN_DEFAULTS

        problems = []
        if self.merge is False:
            problems.append((("merge",), "must be true: evaluation, benchmark and later steps load the merged "
                                         "checkpoint (the adapter is kept in adapter/ as well)"))
        if self.micro_batch_size and self.batch_size and self.micro_batch_size > self.batch_size:
            problems.append((("micro_batch_size",), f"must be <= batch_size ({self.batch_size})"))
        if self.target_modules is not None and not [t for t in self.target_modules if t.strip()]:
            problems.append((("target_modules",), "is empty; give names such as [q_proj, v_proj] or drop it"))
        if self.kind == "kd" and not self.lora:
            problems += [((key,), "applies with lora: true only") for key in _KD_LORA if getattr(self, key) is not None]
        if problems:
            raise FieldProblems(problems)
        d = LORA_TRAIN_DEFAULTS if self.kind == "lora" else CPT_TRAIN_DEFAULTS
        for key in ("lr", "batch_size", "micro_batch_size", "schedule", "weight_decay", "max_grad_norm"):
            if getattr(self, key) is None:
                setattr(self, key, d[key])
        self.micro_batch_size = min(self.micro_batch_size, self.batch_size)
        if self.batch_size % self.micro_batch_size:
            raise FieldProblems([(("batch_size",), f"must be a multiple of micro_batch_size "
                                                   f"({self.micro_batch_size})")])
        if self.betas is None:
            self.betas = tuple(d["betas"])
        if self.min_lr_ratio is None:
            self.min_lr_ratio = d.get("min_lr_ratio", 0.0)
        if self.epochs is None and self.max_steps is None and self.max_tokens is None:
            self.epochs = d.get("epochs") or 1
        if self.kind == "lora":
            for key, value in (("data", "alpaca_demo"), ("seq_len", 256), ("rank", 8), ("alpha", 16.0),
                               ("dropout", 0.05), ("train_on_inputs", False), ("merge", True)):
                if getattr(self, key) is None:
                    setattr(self, key, value)
        elif self.kind == "kd":
            kd = (("data", "c4_sample"), ("seq_len", 1024), ("text_field", "text"), ("teacher_dtype", "auto"),
                  ("temperature", 1.0), ("ce_weight", 0.0), ("lora", False))
            lora = (("rank", 8), ("alpha", 16.0), ("dropout", 0.05), ("merge", True)) if self.lora else ()
            for key, value in kd + lora:
                if getattr(self, key) is None:
                    setattr(self, key, value)
        else:
            for key, value in (("data", "c4_sample"), ("seq_len", 1024), ("text_field", "text")):
                if getattr(self, key) is None:
                    setattr(self, key, value)
        return self


class PplSpec(_Strict):
    datasets: list[str] = Field(default_factory=lambda: ["wikitext2", "ptb"], min_length=1)
    seq_len: int = Field(128, ge=2)
    limit: int | None = Field(None, ge=1, description="first N windows per dataset (null: all)")
    batch_size: int = Field(8, ge=1)
    text_field: str = "text"

    @field_validator("datasets", mode="before")
    @classmethod
    def _split(cls, v):
        return [s.strip() for s in v.split(",") if s.strip()] if isinstance(v, str) else v

    @field_validator("datasets")
    @classmethod
    def _paths(cls, v: list[str], info: ValidationInfo) -> list[str]:
        return [_local_path(s, info) for s in v]


class ZeroShotSpec(_Strict):
    tasks: list[str] | None = Field(None, validate_default=True)
    limit: int | None = Field(None, ge=1, description="first N examples per task (null: all)")
    batch_size: int = Field(8, ge=1)
    source: Literal["auto", "local", "hub"] = "auto"

    @field_validator("tasks", mode="before")
    @classmethod
    def _split(cls, v):
        return [s.strip() for s in v.split(",") if s.strip()] if isinstance(v, str) else v

    @field_validator("tasks")
    @classmethod
    def _known(cls, v: list[str] | None) -> list[str]:
        from depthprune.evaluation.zeroshot import PAPER_TASKS, parse_tasks

        if v is None:
            return list(PAPER_TASKS)
        bad = [((i,), f"unknown task {t!r}; choose from: {', '.join(PAPER_TASKS)}")
               for i, t in enumerate(v) if t.removeprefix("depthprune_") not in PAPER_TASKS]
        if bad:
            raise FieldProblems(bad)
        try:
            return parse_tasks(v)
        except DepthpruneError as exc:
            raise ValueError(str(exc)) from None


class EvaluateSpec(_Strict):
    baseline: bool = Field(True, description="also evaluate the unpruned model (runs/<name>/base/eval.json)")
    every_stage: bool = Field(False, description="evaluate the pruned model and every retraining step, "
                                                 "not only the final model")
    ppl: PplSpec | None = Field(default_factory=PplSpec)
    zeroshot: ZeroShotSpec | None = None


class BenchSpec(_Strict):
    batch_sizes: list[int] = Field(default_factory=lambda: [1, 4, 16], min_length=1)
    output_lengths: list[int] = Field(default_factory=lambda: [128, 512], min_length=1)
    input_tokens: int = Field(12, ge=1)
    warmup: int = Field(10, ge=0)
    runs: int = Field(20, ge=1)
    threads: int | None = Field(None, ge=1, description="CPU threads for torch (null: torch's choice)")
    baseline: bool = Field(True, description="benchmark the unpruned model first (speedups are against it)")

    @field_validator("batch_sizes", "output_lengths")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        bad = [((i,), "must be >= 1") for i, x in enumerate(v) if x < 1]
        if bad:
            raise FieldProblems(bad)
        return sorted(set(v))


class VariantSpec(_Strict):
    """Partial overrides merged into the experiment (dicts merge, lists and values replace)."""

    description: str = ""
    calibration: dict[str, Any] | None = None
    prune: dict[str, Any] | None = None
    retrain: list[Any] | None = None


VariantName = Annotated[str, AfterValidator(lambda v: _check_name(v, "variant name"))]


class ExperimentConfig(_Strict):
    name: str
    description: str = ""
    model: ModelConfig = Field(default_factory=ModelConfig)
    calibration: CalibrationConfig = Field(default_factory=CalibrationConfig)
    prune: PruneSpec | None = None
    retrain: list[RetrainStep] = Field(default_factory=list)
    evaluate: EvaluateSpec | None = None
    bench: BenchSpec | None = None
    variants: dict[VariantName, VariantSpec] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return _check_name(v, "name")

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
        if prune and prune["compensate"] == "none":
            for key in ("compensate", "compensate_ridge", "compensate_samples"):
                prune.pop(key)
        if prune:
            prune["targets"] = [{k: v for k, v in t.items() if v is not None} for t in prune["targets"]]
        return {"calibration": self.calibration.model_dump(mode="json"), "prune": prune,
                "retrain": [s.model_dump(mode="json", exclude_none=True) for s in self.retrain]}


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
