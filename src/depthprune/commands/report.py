"""``depthprune report PATH ...``: Markdown tables and PNG plots comparing models, from their stored JSON files.

No model is loaded. PATH may be an experiment directory of ``depthprune run`` (or a directory of them), a
checkpoint of ``depthprune prune --output`` (pruning.json) or ``depthprune retrain --output`` (retrain.json),
a ``--json`` file of ``depthprune eval ppl``, ``eval zeroshot``, ``eval samples`` or ``depthprune bench``, a
``depthprune score --output`` file, or a directory holding any of these (walked). Results of one model (its
path or hub id) share one row; JSON files of other kinds are skipped with a note.
"""

from __future__ import annotations

import os
from pathlib import Path

from depthprune.errors import DepthpruneError
from depthprune.report.gather import collect_inputs
from depthprune.report.inputs import group_root
from depthprune.report.markdown import render_report


def register(sub) -> None:
    p = sub.add_parser("report", help="report.md + plots from 'depthprune run' directories and the other commands' "
                                      "outputs", description=__doc__)
    p.add_argument("run_dirs", nargs="+", metavar="PATH",
                   help="experiment directories (runs/<name>), pruned / retrained checkpoints, eval / bench / "
                        "score JSON files, or directories holding them (runs)")
    p.add_argument("--output", default=None,
                   help="directory for report.md and the PNGs (default: the experiment directory when only one "
                        "is given, else <common parent>/report)")
    p.set_defaults(func=run)


def default_output(roots: list[Path]) -> Path:
    if len(roots) == 1:
        return roots[0]
    return Path(os.path.commonpath([str(r.resolve()) for r in roots])) / "report"


def output_for(paths: list[Path], experiments) -> Path:
    """The experiment directory when the inputs are experiments only and there is one; else <common dir>/report."""
    if not any(e.standalone for e in experiments):
        return default_output([e.root for e in experiments])
    return group_root(paths) / "report"


def run(args) -> int:
    got = collect_inputs(args.run_dirs)
    experiments = got.experiments
    out = Path(args.output) if args.output else output_for([Path(p) for p in args.run_dirs], experiments)
    if out.exists() and not out.is_dir():

        raise DepthpruneError(f"--output {out} is a file; give a directory")
    for note in got.notes:
        print(f"note: {note}")
    path = render_report(experiments, out, got.notes)
    runs = sum(not e.standalone for e in experiments)
    models = sum(len(e.results) for e in experiments)
    inputs = sum(len(e.inputs) for e in experiments if e.standalone)
    extra = f", {inputs} other input(s)" if inputs else ""
    print(f"Wrote {path} ({runs} experiment(s){extra}, {models} model(s))")
    return 0
