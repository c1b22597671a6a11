"""``depthprune report RUN_DIR ...``: Markdown tables and PNG plots comparing experiments, from their JSON files.

No model is loaded: scores, removed blocks, parameters, perplexity, zero-shot accuracy and speed are read
from what ``depthprune run`` stored.
"""

from __future__ import annotations

import os
from pathlib import Path

from depthprune.errors import DepthpruneError
from depthprune.report.collect import collect
from depthprune.report.markdown import render_report


def register(sub) -> None:
    p = sub.add_parser("report", help="report.md + plots comparing one or more 'depthprune run' directories",
                       description=__doc__)
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                   help="experiment directories (runs/<name>) or a directory holding them (runs)")
    p.add_argument("--output", default=None,
                   help="directory for report.md and the PNGs (default: the run directory when there is one, "
                        "else <common parent>/report)")
    p.set_defaults(func=run)


def default_output(roots: list[Path]) -> Path:
    if len(roots) == 1:
        return roots[0]
    return Path(os.path.commonpath([str(r.resolve()) for r in roots])) / "report"


def run(args) -> int:
    experiments = collect(args.run_dirs)
    out = Path(args.output) if args.output else default_output([e.root for e in experiments])
    if out.exists() and not out.is_dir():

        raise DepthpruneError(f"--output {out} is a file; give a directory")
    path = render_report(experiments, out)
    models = sum(len(e.results) for e in experiments)
    print(f"Wrote {path} ({len(experiments)} experiment(s), {models} model(s))")
    return 0
