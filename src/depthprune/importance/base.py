"""The importance-criterion interface, its registry, and the scores a criterion produces.

A criterion is an object with ``score`` (one number per candidate, lower = less important), an optional
``select`` (which candidates to remove for a given count; angular's contiguous-span rule lives there) and an
optional ``incremental`` scorer (re-scores cheaply after each removal; ppl's cached prefix, used by iterative
pruning). Depth criteria (blocks or modules) and width criteria (heads and channels) share the registry.
A "+" name (``taylor+``) is the base criterion plus a protection rule (first 4 / last 2 blocks) that is carried
with its scores into selection.
"""

from __future__ import annotations

import abc
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from depthprune.core.io import write_json_atomic
from depthprune.errors import DepthpruneError
from depthprune.models.params import count_params
from depthprune.models.specs import num_blocks

PLUS_PROTECT = (4, 2)
"""Blocks a "+" criterion never removes: the first 4 and the last 2 (Shortened LLaMA)."""


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
    protect: list[int] = field(default_factory=lambda: [0, 0])
    """(first, last) blocks the criterion's name protects: [4, 2] for "+" names."""

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> BlockScores:
        data = dict(data)
        data.setdefault("protect", list(implied_protection(data.get("criterion", ""))))
        return cls(**data)

    def save(self, path: str | Path) -> None:
        write_json_atomic(path, self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> BlockScores:
        """Scores from a ``depthprune score`` file, or from a pruned model's ``pruning.json``."""
        path = Path(path)
        if not path.is_file():
            raise DepthpruneError(f"--scores {path}: no such file")
        try:
            data = json.loads(path.read_text())
            if isinstance(data, dict) and isinstance(data.get("scores"), dict):  # a pruned model's pruning.json
                data = data["scores"]
            return cls.from_json(data)
        except (json.JSONDecodeError, TypeError) as exc:
            raise DepthpruneError(f"--scores {path}: not a depthprune scores file ({exc})") from None


class Incremental(abc.ABC):
    """Scores of the current model, kept up to date cheaply as blocks are removed one by one."""

    @abc.abstractmethod
    def scores(self) -> list[float]:
        """One score per block of the model as it is now."""

    @abc.abstractmethod
    def removed(self, index: int) -> None:
        """Block ``index`` (current numbering) was just removed from the model."""


class Criterion(abc.ABC):
    """Base class of every importance criterion; subclasses set the attributes and implement ``score``."""

    name: str = ""
    description: str = ""
    units: tuple[str, ...] = ("block",)
    needs_calibration: bool = True
    method: str = "depth"
    """``depth``: one score per block or module (BlockScores); ``width``: per head and channel (WidthScores)."""
    resumable: bool = False
    """``score`` takes ``resume=path`` (partial scores saved per calibration batch, continued on rerun)."""

    @abc.abstractmethod
    def score(self, model, input_ids: torch.Tensor | None, unit: str = "block", batch_size: int = 16,
              progress: bool = True):
        """Scores (lower = less important) of every candidate, or (scores, metadata)."""

    def select(self, scores: BlockScores, allowed: Sequence[int], k: int) -> list[int] | None:
        """The ``k`` candidates to remove among ``allowed`` (None: no valid set of k). Default: the k lowest."""
        return lowest_first(scores, allowed, k)

    def incremental(self, model, input_ids: torch.Tensor | None, batch_size: int = 16,
                    progress: bool = True) -> Incremental | None:
        """An incremental scorer for iterative pruning, or None (re-score from scratch every round)."""
        return None


def lowest_first(scores: BlockScores, allowed: Sequence[int], k: int) -> list[int] | None:
    """The ``k`` lowest-scored of ``allowed`` (ties: lower index), or None when there are fewer."""
    if k > len(allowed):
        return None
    return sorted(sorted(allowed, key=lambda i: (scores.scores[i], i))[:k])


CRITERIA: dict[str, Criterion] = {}


def register(cls: type[Criterion]) -> type[Criterion]:
    CRITERIA[cls.name] = cls()
    return cls


def implied_protection(name: str) -> tuple[int, int]:
    return PLUS_PROTECT if str(name).endswith("+") else (0, 0)


def criterion_names(method: str | None = None) -> list[str]:
    """Registered names (with the "+" variants of depth criteria that score whole blocks' weights)."""
    names = [n for n, c in CRITERIA.items() if method in (None, c.method)]
    plus = [f"{n}+" for n in ("magnitude", "taylor") if n in CRITERIA and method in (None, "depth")]
    return sorted(names) + plus


def resolve_criterion(name: str, method: str | None = None) -> tuple[Criterion, tuple[int, int] | None]:
    """The criterion for ``name``, and the (first, last) protection implied by a "+" name (None otherwise)."""
    base = name[:-1] if str(name).endswith("+") else name
    if base not in CRITERIA or (name.endswith("+") and name not in criterion_names()):
        raise DepthpruneError(f"unknown criterion '{name}'; choose one of: {', '.join(criterion_names(method))}")
    crit = CRITERIA[base]
    if method is not None and crit.method != method:
        raise DepthpruneError(f"criterion '{name}' is a {crit.method} criterion; with method {method} choose one "
                              f"of: {', '.join(criterion_names(method))}")
    return crit, (PLUS_PROTECT if name.endswith("+") else None)


def model_fingerprint(model) -> dict:
    """What identifies the model the scores belong to (checked when scores are reused)."""
    cfg = model.config
    return {
        "model_type": cfg.model_type,
        "num_blocks": num_blocks(model),
        "hidden_size": getattr(cfg, "hidden_size", None),
        "vocab_size": getattr(cfg, "vocab_size", None),
        "num_params": count_params(model),
        "name_or_path": getattr(cfg, "_name_or_path", ""),
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
    }


def block_labels(n: int, unit: str = "block") -> list[str]:
    if unit == "block":
        return [str(i) for i in range(n)]
    return [f"{i}.{part}" for i in range(n) for part in ("attn", "mlp")]


def timed_eval(model, fn: Callable):
    """``fn()`` with the model in eval mode (restored after), and its wall time."""
    was_training = model.training
    model.eval()
    t0 = time.perf_counter()
    try:
        out = fn()
    finally:
        model.train(was_training)
    return out, time.perf_counter() - t0


def score_model(model, criterion: str, calibration=None, unit: str = "block", batch_size: int = 16,
                progress: bool = True, **options) -> BlockScores:
    """Score every candidate of ``model`` (blocks, or modules) with a depth criterion on the calibration inputs."""
    crit, implied = resolve_criterion(criterion, "depth")
    if unit not in crit.units:
        raise DepthpruneError(
            f"criterion '{crit.name}' cannot score unit '{unit}' (it scores: {', '.join(crit.units)})"
        )
    input_ids = calibration.input_ids if calibration is not None else None
    if crit.needs_calibration and input_ids is None:
        raise DepthpruneError(f"criterion '{crit.name}' needs calibration data")
    out, wall = timed_eval(model, lambda: crit.score(model, input_ids, unit=unit, batch_size=batch_size,
                                                     progress=progress, **options))
    scores, meta = out if isinstance(out, tuple) else (out, {})
    scores = [float(s) for s in (scores.tolist() if isinstance(scores, torch.Tensor) else scores)]
    return BlockScores(
        criterion=criterion, scores=scores, candidates=block_labels(num_blocks(model), unit), unit=unit,
        model=model_fingerprint(model), calibration=calibration.to_json() if calibration is not None else {},
        wall_s=wall, metadata=meta, protect=list(implied or (0, 0)),
    )
