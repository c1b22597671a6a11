"""``depthprune prune``: remove the least important blocks and save a checkpoint plain transformers loads."""

from __future__ import annotations

from pathlib import Path

from depthprune.commands.common import add_model_args, load_from_args, positive_int
from depthprune.commands.score import add_scoring_args, compute_scores


def register(sub) -> None:
    p = sub.add_parser("prune", help="depth-prune a model and save it")
    add_model_args(p)
    add_scoring_args(p)
    t = p.add_mutually_exclusive_group(required=True)
    t.add_argument("--num-blocks", type=int, help="number of blocks to remove")
    t.add_argument("--ratio", type=float, help="fraction of all parameters to remove, in (0, 1)")
    t.add_argument("--target-params", type=int, help="parameter count to reach or go below")
    p.add_argument("--protect-first", type=int, default=None, help="never remove the first N blocks (+ names: 4)")
    p.add_argument("--protect-last", type=int, default=None, help="never remove the last M blocks (+ names: 2)")
    p.add_argument("--scores", default=None, help="reuse a scores JSON from 'depthprune score' instead of scoring")
    p.add_argument("--output", required=True, help="directory for the pruned checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --output")
    p.add_argument("--eval-windows", type=int, default=20,
                   help="WikiText-2 windows for the before/after perplexity printout (0: skip)")
    p.set_defaults(func=run)


def run(args) -> int:
    from depthprune.data.tokens import check_seq_len
    from depthprune.errors import DepthpruneError
    from depthprune.evaluation import evaluate_perplexity
    from depthprune.importance import BlockScores, resolve_criterion
    from depthprune.pruning import Target, prune_blocks, resolve_protection
    from depthprune.pruning.save import check_output_dir, library_versions, save_checkpoint
    from depthprune.report.plots import plot_block_scores

    target = Target(args.num_blocks, args.ratio, args.target_params)
    check_output_dir(args.output, args.overwrite)
    check_seq_len(args.calib_seq_len, "--calib-seq-len")
    positive_int("--calib-samples", args.calib_samples, allow_none=False)
    if args.eval_windows < 0:
        raise DepthpruneError(f"--eval-windows must be >= 0, got {args.eval_windows}")
    if args.scores:
        scores = BlockScores.load(args.scores)
        criterion = scores.criterion
    else:
        resolve_criterion(args.criterion)
        criterion = args.criterion
    protect = resolve_protection(criterion, args.protect_first, args.protect_last)

    lm = load_from_args(args)
    before = None
    if args.eval_windows:
        before = evaluate_perplexity(lm.model, lm.tokenizer, "wikitext2", limit=args.eval_windows)
    if not args.scores:
        scores = compute_scores(args, lm)
    result = prune_blocks(lm.model, scores, target, protect)
    sel = result.selection
    print(f"Removed blocks {sel.removed} (criterion {criterion}, protected {sel.protected or 'none'})")
    print(f"Parameters: {sel.params_before:,} -> {sel.params_after:,} ({sel.ratio:.1%} removed), "
          f"blocks {result.info['num_blocks_before']} -> {result.info['num_blocks_after']}")
    info = result.info | {"source_model": lm.source, "seed": args.seed, "versions": library_versions()}
    if before is not None:
        after = evaluate_perplexity(lm.model, lm.tokenizer, "wikitext2", limit=args.eval_windows)
        info["wikitext2_ppl_preview"] = {"windows": args.eval_windows, "before": before.ppl, "after": after.ppl}
        print(f"WikiText-2 PPL (first {args.eval_windows} windows of 128 tokens): "
              f"{before.ppl:.2f} -> {after.ppl:.2f}")
    out = save_checkpoint(lm.model, lm.tokenizer, args.output, info, overwrite=args.overwrite)
    plot_block_scores(scores, Path(out) / "scores.png", removed=sel.removed, protected=sel.protected)
    print(f"Saved pruned model to {out} (loads with AutoModelForCausalLM.from_pretrained)")
    return 0
