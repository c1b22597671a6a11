"""``depthprune prune --method width``: the Wanda-sp / LLM-Pruner-style width baselines.

``add_width_args`` adds only the options depth pruning lacks; ``run_width`` reuses the prune parser's
``--criterion``, target, ``--protect-*``, calibration, ``--output``/``--overwrite`` and ``--eval-windows``.
Targets mean what they mean for depth pruning: ``--ratio`` of all parameters, ``--target-params``, and
``--num-blocks K`` = remove as many parameters as K blocks hold (to match a depth-pruned model).
"""

from __future__ import annotations

WIDTH_CRITERIA_HELP = "wanda-sp or taylor-sp"


def add_width_args(p) -> None:
    p.add_argument("--method", choices=["depth", "width"], default="depth",
                   help="depth: remove whole blocks (default); width: remove attention heads and MLP channels "
                        f"in every block (criterion {WIDTH_CRITERIA_HELP})")
    p.add_argument("--round-to", type=int, default=8,
                   help="width only: keep MLP channels (and head projections) multiples of this (default 8; "
                        "1 = exact)")


def run_width(args) -> int:
    from depthprune.commands.common import load_from_args, positive_int
    from depthprune.commands.score import build_calibration_from_args
    from depthprune.core.versions import library_versions
    from depthprune.data.tokens import check_seq_len
    from depthprune.errors import DepthpruneError
    from depthprune.evaluation import evaluate_perplexity
    from depthprune.pruning import Target, save_checkpoint
    from depthprune.pruning.save import check_output_dir
    from depthprune.pruning.width import plan_width, prune_width, score_width
    from depthprune.pruning.width_scores import check_width_criterion

    target = Target(args.num_blocks, args.ratio, args.target_params)
    criterion = check_width_criterion(args.criterion)
    if getattr(args, "scores", None):
        raise DepthpruneError("--scores holds block scores for depth pruning; --method width scores heads and "
                              "channels itself, drop --scores")
    for opt, value, default in (("--unit", getattr(args, "unit", "block"), "block"),
                                ("--schedule", getattr(args, "schedule", "one-shot"), "one-shot")):
        if value != default:
            raise DepthpruneError(f"{opt} {value} applies to depth pruning only; drop it with --method width")
    check_output_dir(args.output, args.overwrite)
    check_seq_len(args.calib_seq_len, "--calib-seq-len")
    positive_int("--calib-samples", args.calib_samples, allow_none=False)
    positive_int("--score-batch-size", args.score_batch_size, allow_none=False)
    if args.eval_windows < 0:
        raise DepthpruneError(f"--eval-windows must be >= 0, got {args.eval_windows}")
    protect = (args.protect_first or 0, args.protect_last or 0)

    lm = load_from_args(args)
    plan = plan_width(lm.model, target, protect, args.round_to)  # bad targets fail before any scoring
    before = None
    if args.eval_windows:
        before = evaluate_perplexity(lm.model, lm.tokenizer, "wikitext2", limit=args.eval_windows)
    calib = build_calibration_from_args(args, lm)
    scores = score_width(lm.model, criterion, calib, batch_size=args.score_batch_size)
    print(f"Scored heads and MLP channels of {plan.num_blocks} blocks with {criterion} in {scores.wall_s:.1f}s",
          flush=True)
    result = prune_width(lm.model, scores, plan)
    print(f"Width-pruned ({criterion}): {plan.describe()}")
    print(f"Parameters: {plan.params_before:,} -> {result.info['params_after']:,} ({plan.ratio:.1%} removed)")
    info = result.info | {"source_model": lm.source, "seed": args.seed, "versions": library_versions()}
    if before is not None:
        after = evaluate_perplexity(lm.model, lm.tokenizer, "wikitext2", limit=args.eval_windows)
        info["wikitext2_ppl_preview"] = {"windows": args.eval_windows, "before": before.ppl, "after": after.ppl}
        print(f"WikiText-2 PPL (first {args.eval_windows} windows of 128 tokens): "
              f"{before.ppl:.2f} -> {after.ppl:.2f}")
    out = save_checkpoint(lm.model, lm.tokenizer, args.output, info, overwrite=args.overwrite)
    print(f"Saved width-pruned model to {out} (loads with AutoModelForCausalLM.from_pretrained)")
    return 0
