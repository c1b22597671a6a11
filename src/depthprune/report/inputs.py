"""What ``depthprune report`` reads: experiment directories and the outputs of the single commands, by their keys.

Directories: an experiment (``config.yaml`` + ``stages.json``), a retrained checkpoint (``retrain.json``), a
pruned checkpoint (``pruning.json``); any other directory is walked (hidden entries skipped; a model checkpoint
without those records is not entered). JSON files are recognised by their keys (see :func:`json_kind`); others
are skipped with a one-line note. Nothing here loads a model.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from depthprune.errors import DepthpruneError
from depthprune.report.collect import ExperimentData, is_experiment

PRUNING = "pruning.json"
RETRAIN = "retrain.json"
MAX_JSON_BYTES = 64 * 2**20
READABLE = ("'depthprune report' reads: experiment directories of 'depthprune run' (config.yaml + stages.json); "
            "checkpoints of 'depthprune prune --output' (pruning.json) and 'depthprune retrain --output' "
            "(retrain.json); the --json files of 'depthprune eval ppl', 'eval zeroshot', 'eval samples' and "
            "'depthprune bench'; 'depthprune score --output' files; an experiment's eval.json; "
            "or a directory holding any of these")
KIND_TEXT = {
    "experiment": "experiment directory (config.yaml + stages.json)",
    "pruned": "pruned checkpoint (pruning.json)",
    "retrained": "retrained checkpoint (retrain.json)",
    "ppl": "perplexity JSON (eval ppl --json)",
    "zeroshot": "zero-shot JSON (eval zeroshot --json)",
    "samples": "generation examples JSON (eval samples --json)",
    "bench": "speed JSON (bench --json)",
    "scores": "block scores JSON (score --output)",
    "eval": "evaluation JSON of an experiment (eval.json)",
}


@dataclass
class Found:
    kind: str  # a key of KIND_TEXT
    path: Path
    data: dict = field(default_factory=dict)  # the JSON; for checkpoints: the pruning record
    retrain: dict | None = None  # retrained checkpoints: retrain.json


@dataclass
class Collected:
    experiments: list[ExperimentData]
    notes: list[str]


def _is_list_of(value, *keys: str) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(x, dict) and all(k in x for k in keys)
                                                           for x in value)


def json_kind(data) -> str | None:
    """Which output ``data`` is, from its keys; None for anything else."""
    if not isinstance(data, dict):
        return None
    if isinstance(data.get("ppl"), (int, float)) and "dataset" in data and "windows" in data:
        return "ppl"  # PerplexityResult.to_json() (+ "model")
    tasks = data.get("tasks")
    if isinstance(tasks, dict) and tasks and "average" in data and all(
            isinstance(t, dict) and "score" in t for t in tasks.values()):
        return "zeroshot"  # ZeroShotResult.to_json() (+ "model")
    if _is_list_of(data.get("samples"), "prompt", "continuation"):
        return "samples"  # evaluation/samples.py samples_json() (+ "model")
    if isinstance(data.get("models"), list) and isinstance(data.get("settings"), list) and "protocol" in data:
        return "bench"  # experiments/runner.py run_benchmark()
    if isinstance(data.get("scores"), list) and isinstance(data.get("candidates"), list) and \
            "criterion" in data and "unit" in data:
        return "scores"  # BlockScores.to_json()
    if _is_list_of(data.get("results"), "label", "path"):
        return "eval"  # pipeline/stages.py run_eval()
    return None


def read_json(path: Path, notes: list[str]) -> dict | list | None:
    try:
        if path.stat().st_size > MAX_JSON_BYTES:
            notes.append(f"skipped {path}: larger than {MAX_JSON_BYTES >> 20} MiB")
            return None
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        notes.append(f"skipped {path}: not readable JSON ({type(exc).__name__})")
        return None


def read_checkpoint(path: Path, notes: list[str]) -> Found | None:
    """A retrained or pruned checkpoint directory (its records read), or None when it is neither."""
    retrain = read_json(path / RETRAIN, notes) if (path / RETRAIN).is_file() else None
    pruning = read_json(path / PRUNING, notes) if (path / PRUNING).is_file() else None
    if isinstance(retrain, dict):
        return Found("retrained", path, pruning if isinstance(pruning, dict) else {}, retrain)
    if isinstance(pruning, dict):
        return Found("pruned", path, pruning)
    return None


def scan(path: Path, found: list[Found], notes: list[str]) -> None:
    """Append to ``found`` what ``path`` is or holds (walking directories); unknown JSON files become notes."""
    if path.is_file():
        if path.name in (PRUNING, RETRAIN, "stages.json", "config.yaml"):  # a record: read its directory
            return scan(path.parent, found, notes)
        if path.suffix.lower() != ".json":
            return
        data = read_json(path, notes)
        kind = json_kind(data)
        if kind is None:
            if data is not None:
                notes.append(f"skipped {path}: not an output report reads (unknown JSON keys)")
            return
        found.append(Found(kind, path, data))
        return
    if not path.is_dir():
        return
    if is_experiment(path):
        found.append(Found("experiment", path))
        return
    ckpt = read_checkpoint(path, notes)
    if ckpt is not None:
        found.append(ckpt)
        return
    if (path / "config.json").is_file():
        notes.append(f"skipped {path}: a model checkpoint without pruning.json / retrain.json "
                     "(report reads results, it loads no model)")
        return
    if (path / "train_log.jsonl").is_file():
        notes.append(f"skipped {path}: retraining not finished (no retrain.json)")
        return
    try:
        entries = sorted(path.iterdir())
    except OSError as exc:
        notes.append(f"skipped {path}: {exc.strerror or exc}")
        return
    for entry in entries:
        if not entry.name.startswith("."):
            scan(entry, found, notes)


def _why_empty(path: Path) -> str:
    if path.is_dir() and (path / "report.md").is_file():
        return (f"{path} holds a rendered report (report.md and its plots), not the files it was made from; "
                "report the run directory it came from (e.g. runs/<name>) instead")
    return f"{path}: nothing here that 'depthprune report' can read"


def _nothing_read(empty: list[Path], notes: list[str]) -> DepthpruneError:
    why = "; ".join(_why_empty(p) for p in empty)
    skipped = "".join(f"\n  {n}" for n in notes[:3]) + (f"\n  ... {len(notes) - 3} more" if len(notes) > 3 else "")
    return DepthpruneError(f"{why}. {READABLE}{skipped}")


def group_root(paths: list[Path]) -> Path:
    """Where the standalone inputs live: the common directory of the given paths (a file's own directory)."""
    dirs = [p.resolve() if p.is_dir() and not _is_record_dir(p) else p.resolve().parent for p in paths]
    return Path(os.path.commonpath([str(d) for d in dirs]))


def _is_record_dir(p: Path) -> bool:
    return (p / PRUNING).is_file() or (p / RETRAIN).is_file()
