"""``depthprune prune``: remove the least important blocks and save a checkpoint plain transformers loads."""

from __future__ import annotations

from pathlib import Path

from depthprune.commands.common import add_model_args, load_from_args, positive_int
from depthprune.commands.compensate import Compensation, add_compensate_args
from depthprune.commands.prune_width import add_width_args, run_width
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
    p.add_argument("--schedule", choices=["one-shot", "iterative"], default="one-shot",
                   help="one-shot: remove the lowest-scored at once; iterative: remove one, re-score, repeat (SLEB)")
    p.add_argument("--scores", default=None, help="reuse a scores JSON from 'depthprune score' instead of scoring")
    p.add_argument("--output", required=True, help="directory for the pruned checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --output")
    p.add_argument("--eval-windows", type=int, default=20,
                   help="WikiText-2 windows for the before/after perplexity printout (0: skip)")
    add_width_args(p)
    add_compensate_args(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from depthprune.errors import DepthpruneError
    from depthprune.evaluation import evaluate_perplexity
    from depthprune.importance import BlockScores, resolve_criterion
    from depthprune.pruning import Target, prune_blocks, resolve_protection
    from depthprune.pruning.module_surgery import remote_code_files
    from depthprune.pruning.provenance import source_record
    from depthprune.pruning.save import check_output_dir, library_versions, save_checkpoint
    from depthprune.report.plots import plot_block_scores

    comp = Compensation.from_args(args)
    if args.method == "width":
        return run_width(args)
    target = Target(args.num_blocks, args.ratio, args.target_params)
    check_output_dir(args.output, args.overwrite)
    _check_numbers(args)
    if args.scores:
        if args.schedule == "iterative":
            raise DepthpruneError("--scores cannot be reused with --schedule iterative (it re-scores every round)")
        scores = BlockScores.load(args.scores)
        criterion = scores.criterion
        if comp:
            comp.check_scores(scores)
    else:
        crit, _ = resolve_criterion(args.criterion)
        criterion = args.criterion
        if args.unit not in crit.units:
            raise DepthpruneError(f"criterion '{criterion}' cannot score --unit {args.unit} "
                                  f"(it scores: {', '.join(crit.units)})")
    if args.schedule == "iterative" and args.unit != "block":
        raise DepthpruneError("--schedule iterative supports --unit block only")
    protect = resolve_protection(criterion, args.protect_first, args.protect_last)

    lm = load_from_args(args)
    if comp:
        comp.before_pruning(lm)
    before = None
    if args.eval_windows:
        before = evaluate_perplexity(lm.model, lm.tokenizer, "wikitext2", limit=args.eval_windows)
    if args.schedule == "iterative":
        from depthprune.commands.score import build_calibration_from_args
        from depthprune.pruning.iterative import iterative_prune

        calib = build_calibration_from_args(args, lm) if resolve_criterion(criterion)[0].needs_calibration else None
        result = iterative_prune(lm.model, criterion, calib, target, protect, args.score_batch_size)
        print(f"Removal order: {result.info['removal_order']}")
    else:
        if not args.scores:
            scores = compute_scores(args, lm)
        result = prune_blocks(lm.model, scores, target, protect)
    sel, info = result.selection, result.info
    print(f"Removed {info['unit']}s {sel.removed} (criterion {criterion}, {args.schedule}, "
          f"protected blocks {sel.protected or 'none'})")
    print(f"Parameters: {sel.params_before:,} -> {sel.params_after:,} ({sel.ratio:.1%} removed), "
          f"blocks {info['num_blocks_before']} -> {info['num_blocks_after']}")
    info = info | {"source_model": lm.source, "seed": args.seed, "versions": library_versions()}
    info |= source_record(lm.source, lm.model)
    if comp:
        info["compensation"] = comp.after_pruning(lm, info["removed_blocks"])
    if before is not None:
        after = evaluate_perplexity(lm.model, lm.tokenizer, "wikitext2", limit=args.eval_windows)
        info["wikitext2_ppl_preview"] = {"windows": args.eval_windows, "before": before.ppl, "after": after.ppl}
        print(f"WikiText-2 PPL (first {args.eval_windows} windows of 128 tokens): "
              f"{before.ppl:.2f} -> {after.ppl:.2f}")
    files = remote_code_files(lm.model)
    out = save_checkpoint(lm.model, lm.tokenizer, args.output, info, overwrite=args.overwrite, extra_files=files)
    plot_block_scores(result.scores, Path(out) / "scores.png", removed=sel.removed, protected=sel.protected)
    how = ("depthprune's load_model, or AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)"
           if files else "AutoModelForCausalLM.from_pretrained")
    print(f"Saved pruned model to {out} (loads with {how})")
    return 0


def _check_numbers(args) -> None:
    from depthprune.data.tokens import check_seq_len
    from depthprune.errors import DepthpruneError

    check_seq_len(args.calib_seq_len, "--calib-seq-len")
    positive_int("--calib-samples", args.calib_samples, allow_none=False)
    positive_int("--score-batch-size", args.score_batch_size, allow_none=False)
    if args.eval_windows < 0:
        raise DepthpruneError(f"--eval-windows must be >= 0, got {args.eval_windows}")
