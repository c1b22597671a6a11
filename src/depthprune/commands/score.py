"""``depthprune score``: score every block with a criterion and save the scores (+ a plot)."""

from __future__ import annotations

from pathlib import Path

from depthprune.commands.common import add_model_args, load_from_args
from depthprune.core.options import add_options, build, given_options
from depthprune.data.calibration import CalibrationSpec
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
    lm = load_from_args(args)
    scores = score(lm.model, lm.tokenizer, criterion=opts.criterion, unit=opts.unit,
                   calibration=calib.pop("source", None), **calib)
    print(f"Scored {len(scores.scores)} {opts.unit}s with {opts.criterion} in {scores.wall_s:.1f}s", flush=True)
    scores.save(args.output)
    png = plot_block_scores(scores, Path(args.output).with_suffix(".png"))
    print(" ".join(f"{c}:{s:.4g}" for c, s in zip(scores.candidates, scores.scores)))
    print(f"Wrote {args.output} and {png}")
    return 0
