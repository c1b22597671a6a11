"""``depthprune run CONFIG.yaml``: a whole experiment (prune → retrain → evaluate → bench) from one YAML file.

Outputs go to ``RUNS_DIR/<name>/``. A rerun skips every stage already done with the same settings and
resumes at the stage it reached (Ctrl-C keeps finished stages; training resumes from its checkpoint).
"""

from __future__ import annotations

from depthprune.pipeline import run_experiment


def register(sub) -> None:
    p = sub.add_parser("run", help="run an experiment described by a YAML file (resumable)", description=__doc__)
    p.add_argument("config", help="experiment YAML (see examples/)")
    p.add_argument("--runs-dir", default="runs", help="where runs/<name>/ is created (default: runs)")
    p.add_argument("--force", action="append", default=[], metavar="STAGE",
                   help="redo this stage and what depends on it, even if done: a kind (score, prune, retrain, eval, "
                        "baseline, bench), a stage id (k4/prune) or a glob ('magnitude/*'); repeatable")
    p.add_argument("--only", action="append", default=[], metavar="STAGE",
                   help="run only these stages (kind, id or glob, as for --force) and the stages they need; the "
                        "rest wait for a later run; repeatable")
    p.add_argument("--dry-run", action="store_true", help="validate and list the stages with their status; run nothing")
    p.set_defaults(func=run)


def run(args) -> int:
    run_experiment(args.config, args.runs_dir, force=args.force, dry_run=args.dry_run, only=args.only)
    return 0
