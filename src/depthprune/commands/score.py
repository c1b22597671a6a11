"""``depthprune score``: score every block with a criterion and save the scores (+ a plot).

A resumable criterion (``ppl``) saves its partial sums beside the output (``<output>.partial.json``) after every
calibration batch; a rerun of the same command continues from them, and the file goes once the scores are saved.
"""

from __future__ import annotations

from pathlib import Path

from depthprune.commands.common import add_model_args, check_output_file, load_from_args
from depthprune.core.options import add_options, build, given_options
from depthprune.data.calibration import CalibrationSpec
from depthprune.importance.base import resolve_criterion
from depthprune.importance.plot import plot_block_scores
from depthprune.importance.scoring import score
from depthprune.pruning.options import PruneOptions


def register(sub) -> None:
    p = sub.add_parser("score", help="score every block with an importance criterion")
    add_model_args(p)
    add_options(p, PruneOptions, only=("criterion", "unit"))
    add_options(p, CalibrationSpec, group="calibration")
    p.add_argument("--output", required=True, help="scores JSON path (a PNG plot is written beside it)")
    p.set_defaults(func=run)


def run(args) -> int:
    opts = build(PruneOptions, given_options(args, PruneOptions), flags=True)
    calib = given_options(args, CalibrationSpec)
    build(CalibrationSpec, calib, flags=True)
    check_output_file("--output", args.output)
    resume = None
    if resolve_criterion(opts.criterion, "depth")[0].resumable:
        resume = Path(args.output).with_suffix(".partial.json")
        if resume.is_file():
            print(f"Resuming from {resume}", flush=True)
    lm = load_from_args(args)
    scores = score(lm.model, lm.tokenizer, criterion=opts.criterion, unit=opts.unit,
                   calibration=calib.pop("source", None), resume=resume, **calib)
    print(f"Scored {len(scores.scores)} {opts.unit}s with {opts.criterion} in {scores.wall_s:.1f}s", flush=True)
    scores.save(args.output)
    if resume is not None:
        resume.unlink(missing_ok=True)
    png = plot_block_scores(scores, Path(args.output).with_suffix(".png"))
    print(" ".join(f"{c}:{s:.4g}" for c, s in zip(scores.candidates, scores.scores)))
    print(f"Wrote {args.output} and {png}")
    return 0
