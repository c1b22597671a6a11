"""``depthprune prune``: remove the least important blocks (or modules, or heads and channels) and save a
checkpoint plain transformers loads."""

from __future__ import annotations

from depthprune.commands.common import add_model_args, load_from_args
from depthprune.core.options import add_options, given_options
from depthprune.data.calibration import CalibrationSpec
from depthprune.errors import DepthpruneError
from depthprune.evaluation.perplexity import evaluate_perplexity
from depthprune.importance.base import BlockScores
from depthprune.pruning.options import PruneOptions, TargetOptions
from depthprune.pruning.run import prune, prune_options
from depthprune.pruning.save import check_output_dir, load_instructions_for


def register(sub) -> None:
    p = sub.add_parser("prune", help="prune a model (depth: blocks or modules; width: heads and channels) and save it")
    add_model_args(p)
    add_options(p, PruneOptions)
    add_options(p.add_mutually_exclusive_group(required=True), TargetOptions)
    add_options(p, CalibrationSpec, group="calibration")
    p.add_argument("--scores", default=None, help="reuse a scores JSON from 'depthprune score' instead of scoring")
    p.add_argument("--output", required=True, help="directory for the pruned checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --output")
    p.add_argument("--eval-windows", type=int, default=20,
                   help="WikiText-2 windows for the before/after perplexity printout (0: skip)")
    p.set_defaults(func=run)


def run(args) -> int:
    check_output_dir(args.output, args.overwrite)
    if args.eval_windows < 0:
        raise DepthpruneError(f"--eval-windows must be >= 0, got {args.eval_windows}")
    scores = BlockScores.load(args.scores) if args.scores else None
    options = given_options(args, PruneOptions, TargetOptions, CalibrationSpec)
    prune_options(options, scores, flags=True)  # every bad option fails before the model loads
    lm = load_from_args(args)
    before = evaluate_perplexity(lm.model, lm.tokenizer, limit=args.eval_windows) if args.eval_windows else None
    calibration = options.pop("source", None)
    result = prune(lm.model, lm.tokenizer, scores=scores, calibration=calibration, **options)
    if before is not None:
        after = evaluate_perplexity(lm.model, lm.tokenizer, limit=args.eval_windows)
        result.info["wikitext2_ppl_preview"] = {"windows": args.eval_windows, "before": before.ppl, "after": after.ppl}
        print(f"WikiText-2 PPL (first {args.eval_windows} windows of 128 tokens): {before.ppl:.2f} -> {after.ppl:.2f}")
    out = result.save(args.output, overwrite=args.overwrite)
    print(f"Saved pruned model to {out} (loads with {load_instructions_for(out)})")
    return 0
