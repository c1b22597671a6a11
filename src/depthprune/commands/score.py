"""``depthprune score``: score every block with a criterion and save the scores (+ a plot)."""

from __future__ import annotations

from pathlib import Path

from depthprune.commands.common import add_model_args, load_from_args


def add_scoring_args(p) -> None:
    p.add_argument("--criterion", default="ppl",
                   help="magnitude, magnitude+, taylor, taylor+, ppl, block_influence, angular (default: ppl)")
    p.add_argument("--calib", default=None,
                   help="calibration text: war_and_peace, wikitext2, a .txt/.jsonl path, a hub dataset, or 'self' "
                        "(default: war_and_peace when found, else self)")
    p.add_argument("--calib-samples", type=int, default=10)
    p.add_argument("--calib-seq-len", type=int, default=128)
    p.add_argument("--text-field", default="text", help="text field of .jsonl/.json calibration records")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--score-batch-size", type=int, default=16, help="calibration samples per forward pass")
    p.add_argument("--unit", choices=["block", "module"], default="block",
                   help="candidates: whole blocks, or each block's attention and MLP separately")


def build_calibration_from_args(args, lm):
    """The calibration set the arguments ask for; prints where it came from."""
    from depthprune.data import CalibrationSpec, build_calibration

    spec = CalibrationSpec(args.calib, args.calib_samples, args.calib_seq_len, args.seed, args.text_field)
    calib = build_calibration(lm.tokenizer, spec, model=lm.model)
    print(f"Calibration: {calib.spec.source}, {calib.spec.samples} x {calib.spec.seq_len} tokens, "
          f"seed {calib.spec.seed}", flush=True)
    return calib


def compute_scores(args, lm):
    """Calibration + scoring from parsed arguments; prints where the calibration came from."""
    from depthprune.importance import resolve_criterion, score_model

    crit, _ = resolve_criterion(args.criterion)
    if args.unit not in crit.units:
        from depthprune.errors import DepthpruneError

        raise DepthpruneError(f"criterion '{args.criterion}' cannot score --unit {args.unit} "
                              f"(it scores: {', '.join(crit.units)})")
    calib = build_calibration_from_args(args, lm) if crit.needs_calibration else None
    scores = score_model(lm.model, args.criterion, calib, unit=args.unit, batch_size=args.score_batch_size)
    print(f"Scored {len(scores.scores)} {args.unit}s with {args.criterion} in {scores.wall_s:.1f}s", flush=True)
    return scores


def register(sub) -> None:
    p = sub.add_parser("score", help="score every block with an importance criterion")
    add_model_args(p)
    add_scoring_args(p)
    p.add_argument("--output", required=True, help="scores JSON path (a PNG plot is written beside it)")
    p.set_defaults(func=run)


def run(args) -> int:
    from depthprune.report.plots import plot_block_scores

    lm = load_from_args(args)
    scores = compute_scores(args, lm)
    scores.save(args.output)
    png = plot_block_scores(scores, Path(args.output).with_suffix(".png"))
    print(" ".join(f"{c}:{s:.4g}" for c, s in zip(scores.candidates, scores.scores)))
    print(f"Wrote {args.output} and {png}")
    return 0
