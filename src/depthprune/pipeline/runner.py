"""Run an experiment: validate, plan the stages, skip the finished ones, run the rest, record each in stages.json."""

from __future__ import annotations

import contextlib
import fnmatch
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from depthprune.core.io import write_text_atomic
from depthprune.errors import DepthpruneError
from depthprune.pipeline.config import ExperimentConfig, Leaf, resolved_config
from depthprune.pipeline.load import load_config
from depthprune.pipeline.stagelog import StageLog, config_hash
from depthprune.pipeline.stages import KINDS, FinalModel, Stage, StageContext, build_stages, log

CONFIG_FILE = "config.yaml"
LOCK_FILE = ".lock"


@dataclass
class Plan:
    config: ExperimentConfig
    leaves: list[Leaf]
    root: Path
    stages: list[Stage]
    finals: list[FinalModel]


@dataclass
class RunSummary:
    root: Path
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    not_selected: list[str] = field(default_factory=list)  # left out by ``only``


def plan_experiment(config: str | os.PathLike, runs_dir: str | os.PathLike = "runs") -> Plan:
    """Validate ``config`` (nothing is written) and list its stages in run order."""
    cfg, leaves = load_config(config)
    root = Path(runs_dir) / cfg.name
    stages, finals = build_stages(root, cfg, leaves)
    return Plan(cfg, leaves, root, stages, finals)


def matching_stages(stages: list[Stage], patterns: Iterable[str], flag: str = "--force") -> set[str]:
    """Stage ids named by ``patterns``: a kind (prune, eval, ...), a stage id, or a glob over ids."""
    out: set[str] = set()
    for pat in patterns:
        hit = {s.id for s in stages if pat in (s.kind, s.id) or fnmatch.fnmatchcase(s.id, pat)}
        if not hit:
            kinds = sorted({s.kind for s in stages}, key=KINDS.index)
            ids = ", ".join(s.id for s in stages[:12]) + (", ..." if len(stages) > 12 else "")
            raise DepthpruneError(f"{flag} {pat}: no such stage in this experiment; give a kind "
                                  f"({', '.join(kinds)}), a stage id ({ids}) or a glob such as 'k4/*'")
        out |= hit
    return out


def forced_stages(stages: list[Stage], patterns: Iterable[str]) -> set[str]:
    """Stage ids named by ``--force``."""
    return matching_stages(stages, patterns, "--force")


def selected_stages(stages: list[Stage], patterns: Iterable[str]) -> set[str] | None:
    """Stages named by ``--only`` and everything they depend on; None (all stages) without patterns."""
    patterns = list(patterns)
    if not patterns:
        return None
    chosen = matching_stages(stages, patterns, "--only")
    deps = {s.id: s.deps for s in stages}
    todo = list(chosen)
    while todo:
        for d in deps[todo.pop()]:
            if d not in chosen:
                chosen.add(d)
                todo.append(d)
    return chosen


@contextlib.contextmanager
def _locked(root: Path) -> Iterator[None]:
    """One ``depthprune run`` per experiment directory at a time."""
    try:
        import fcntl  # POSIX only: the lock is skipped where it is missing
    except ImportError:  # Windows: no advisory lock
        yield
        return
    with open(root / LOCK_FILE, "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise DepthpruneError(f"{root} is in use by another 'depthprune run'; wait for it to finish") from None
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _write_yaml(path: Path, data: dict) -> None:
    write_text_atomic(path, yaml.safe_dump(data, sort_keys=False, allow_unicode=True))


def stage_status(plan: Plan, stage: Stage, log_: StageLog, forced: set[str]) -> str:
    """done / forced / resume / new / changed, as ``depthprune run --dry-run`` shows it (upstream assumed fixed)."""
    upstream = {d: log_.run_id(d) for d in stage.deps}
    rec = log_.get(stage.id)
    if stage.id in forced:
        return "forced"
    if log_.is_done(stage, upstream):
        return "done"
    if rec is None:
        return "new"
    if log_.can_resume(stage, upstream):
        return f"resume ({rec.get('status')})"
    if rec.get("hash") != config_hash(stage.config):
        return "changed settings"
    return "inputs changed" if rec.get("upstream") != upstream else "output missing"


def run_experiment(config: str | os.PathLike, runs_dir: str | os.PathLike = "runs", force: Iterable[str] = (),
                   dry_run: bool = False, only: Iterable[str] = ()) -> RunSummary:
    """Run every stage of ``config`` that is not already done with the same settings; see the module docs.

    ``only`` (globs, kinds or ids, like ``force``) restricts the run to those stages and what they depend on.
    """
    plan = plan_experiment(config, runs_dir)
    forced = forced_stages(plan.stages, force)
    selected = selected_stages(plan.stages, only)
    root, total = plan.root, len(plan.stages)
    summary = RunSummary(root)
    if dry_run:
        stage_log = StageLog(root)
        for n, stage in enumerate(plan.stages, 1):
            status = stage_status(plan, stage, stage_log, forced)
            if selected is not None and stage.id not in selected:
                status += ", not selected by --only"
            log(f"[{n}/{total}] {stage.id}: {status}")
        return summary
    root.mkdir(parents=True, exist_ok=True)
    with _locked(root):
        _write_yaml(root / CONFIG_FILE, resolved_config(plan.config, plan.leaves))
        stage_log = StageLog(root)
        stage_log.set_plan(plan.stages)
        for n, stage in enumerate(plan.stages, 1):
            if selected is not None and stage.id not in selected:
                summary.not_selected.append(stage.id)
                continue
            upstream = {d: stage_log.run_id(d) for d in stage.deps}
            if stage.id not in forced and stage_log.is_done(stage, upstream):
                log(f"[{n}/{total}] {stage.id}: done at {stage_log.get(stage.id)['finished']}, skipped")
                summary.skipped.append(stage.id)
                continue
            resume = stage.id not in forced and stage_log.can_resume(stage, upstream)
            log(f"[{n}/{total}] {stage.id}: running" + (" (forced)" if stage.id in forced else ""))
            stage_log.start(stage, upstream)
            try:
                stage.run(StageContext(resume, stage_log))
            except KeyboardInterrupt:
                stage_log.stop(stage, "interrupted")
                log(f"[{n}/{total}] {stage.id}: interrupted; finished stages are kept, rerun to continue")
                raise
            except BaseException as exc:
                stage_log.stop(stage, "failed", f"{type(exc).__name__}: {exc}")
                raise
            stage_log.finish(stage)
            log(f"[{n}/{total}] {stage.id}: done in {stage_log.get(stage.id)['wall_s']:.1f}s")
            summary.ran.append(stage.id)
    left = f", {len(summary.not_selected)} not selected (--only)" if summary.not_selected else ""
    log(f"{root}: {len(summary.ran)} stage(s) run, {len(summary.skipped)} already done{left}. "
        f"Report: depthprune report {root}")
    return summary
