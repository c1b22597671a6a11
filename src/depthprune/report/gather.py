"""``collect_inputs``: every experiment and standalone output under the paths given to ``depthprune report``."""

from __future__ import annotations

from pathlib import Path

from depthprune.errors import DepthpruneError
from depthprune.report.collect import collect_experiment, is_experiment
from depthprune.report.inputs import READABLE, Collected, Found, _nothing_read, _why_empty, group_root, scan
from depthprune.report.standalone import build_group


def collect_inputs(paths: list[str | Path]) -> Collected:
    """Experiments and standalone outputs under ``paths``: experiments first, the standalone group last."""
    found: list[Found] = []
    notes: list[str] = []
    seen: set[Path] = set()
    given: list[Path] = []
    empty: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise DepthpruneError(f"{path}: no such file or directory. {READABLE}")
        here: list[Found] = []
        scan(path, here, notes)
        if not here:  # an error when nothing at all is readable, else a note
            empty.append(path)
            continue
        given.append(path)
        for f in here:
            if f.path.resolve() not in seen:
                seen.add(f.path.resolve())
                found.append(f)
    if not found:
        raise _nothing_read(empty, notes)
    notes += [f"skipped {_why_empty(p)}" for p in empty if p.is_dir()]
    experiments = [collect_experiment(f.path) for f in found if f.kind == "experiment"]
    rest = [f for f in found if f.kind != "experiment"]
    if rest:
        root = group_root([p for p in given if not is_experiment(p)] or given)
        group = build_group(rest, experiments, root, notes)
        if group.results or group.score_sets or group.benches:
            experiments.append(group)
    return Collected(experiments, notes)
