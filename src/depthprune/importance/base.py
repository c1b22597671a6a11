"""The importance-criterion interface, the registry, and the scores it produces."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from depthprune.errors import DepthpruneError


@dataclass
class BlockScores:
    """One score per candidate (lower = less important) and how they were obtained."""

    criterion: str
    scores: list[float]
    candidates: list[str]
    """Candidate labels: ``"3"`` for block 3 (original numbering), ``"3.attn"``/``"3.mlp"`` for modules."""
    unit: str = "block"
    model: dict = field(default_factory=dict)
    calibration: dict = field(default_factory=dict)
    wall_s: float = 0.0
    metadata: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> BlockScores:
        return cls(**data)

    def save(self, path: str | Path) -> None:
        from depthprune.core.io import write_json_atomic

        write_json_atomic(path, self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> BlockScores:
        path = Path(path)
        if not path.is_file():
            raise DepthpruneError(f"--scores {path}: no such file")
        try:
            return cls.from_json(json.loads(path.read_text()))
        except (json.JSONDecodeError, TypeError) as exc:
            raise DepthpruneError(f"--scores {path}: not a depthprune scores file ({exc})") from None


ScoreFn = Callable[..., "list[float] | tuple[list[float], dict]"]


@dataclass(frozen=True)
class Criterion:
    """A registered criterion: ``fn(model, input_ids, unit=...)`` returns scores (and optional metadata)."""

    name: str
    fn: ScoreFn
    units: tuple[str, ...] = ("block",)
    needs_calibration: bool = True
    description: str = ""


CRITERIA: dict[str, Criterion] = {}
PLUS_ALIASES = {"magnitude+": "magnitude", "taylor+": "taylor"}
PLUS_PROTECT = (4, 2)


def register(name: str, units=("block",), needs_calibration=True, description=""):
    def deco(fn: ScoreFn) -> ScoreFn:
        CRITERIA[name] = Criterion(name, fn, tuple(units), needs_calibration, description)
        return fn

    return deco


def resolve_criterion(name: str) -> tuple[Criterion, tuple[int, int] | None]:
    """The criterion for ``name``, and the (first, last) protection implied by a ``+`` alias."""
    from depthprune import importance  # noqa: F401  (registers the built-in criteria)

    base = PLUS_ALIASES.get(name, name)
    if base not in CRITERIA:
        names = sorted(CRITERIA) + sorted(PLUS_ALIASES)
        raise DepthpruneError(f"unknown criterion '{name}'; choose one of: {', '.join(names)}")
    return CRITERIA[base], (PLUS_PROTECT if name in PLUS_ALIASES else None)


def model_fingerprint(model) -> dict:
    """What identifies the model the scores belong to (checked when scores are reused)."""
    from depthprune.models.specs import num_blocks
    from depthprune.pruning.params import count_params

    cfg = model.config
    return {
        "model_type": cfg.model_type,
        "num_blocks": num_blocks(model),
        "hidden_size": getattr(cfg, "hidden_size", None),
        "vocab_size": getattr(cfg, "vocab_size", None),
        "num_params": count_params(model),
        "name_or_path": getattr(cfg, "_name_or_path", ""),
    }


def block_labels(n: int, unit: str = "block") -> list[str]:
    if unit == "block":
        return [str(i) for i in range(n)]
    return [f"{i}.{part}" for i in range(n) for part in ("attn", "mlp")]


def score_model(model, criterion: str, calibration=None, unit: str = "block", **options) -> BlockScores:
    """Score every candidate of ``model`` with ``criterion`` on the calibration inputs."""
    from depthprune.models.specs import num_blocks

    crit, _ = resolve_criterion(criterion)
    if unit not in crit.units:
        raise DepthpruneError(
            f"criterion '{crit.name}' cannot score unit '{unit}' (it scores: {', '.join(crit.units)})"
        )
    input_ids = calibration.input_ids if calibration is not None else None
    if crit.needs_calibration and input_ids is None:
        raise DepthpruneError(f"criterion '{crit.name}' needs calibration data")
    was_training = model.training
    model.eval()
    t0 = time.perf_counter()
    try:
        out = crit.fn(model, input_ids, unit=unit, **options)
    finally:
        model.train(was_training)
    wall = time.perf_counter() - t0
    scores, meta = out if isinstance(out, tuple) else (out, {})
    scores = [float(s) for s in (scores.tolist() if isinstance(scores, torch.Tensor) else scores)]
    return BlockScores(
        criterion=criterion, scores=scores, candidates=block_labels(num_blocks(model), unit), unit=unit,
        model=model_fingerprint(model), calibration=calibration.to_json() if calibration is not None else {},
        wall_s=wall, metadata=meta,
    )
