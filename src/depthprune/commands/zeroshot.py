"""``depthprune eval zeroshot``: the paper's 7 commonsense tasks, zero-shot, through lm-evaluation-harness."""

from __future__ import annotations

from depthprune.commands.common import add_model_args, load_from_args, positive_int
from depthprune.core.io import write_json_atomic


def register(sub) -> None:
    from depthprune.evaluation.zeroshot import PAPER_TASKS, SOURCES

    p = sub.add_parser("zeroshot", help="zero-shot accuracy on BoolQ, PIQA, HellaSwag, WinoGrande, ARC-e/c, OBQA")
    add_model_args(p)
    p.add_argument("--tasks", default=",".join(PAPER_TASKS), help="comma-separated task names (default: all 7)")
    p.add_argument("--limit", type=int, default=None, help="score only the first N examples of each task")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--source", default="auto", choices=SOURCES,
                   help="auto: the local data directory when it has the task, else lm-eval's hub task")
    p.add_argument("--json", default=None, help="write the result as JSON here")
    p.set_defaults(func=run)


def run(args) -> int:
    from depthprune.evaluation.zeroshot import evaluate_zeroshot, parse_tasks, resolve_sources

    tasks = parse_tasks(args.tasks)  # fail on bad input before loading the model
    positive_int("--limit", args.limit)
    positive_int("--batch-size", args.batch_size, allow_none=False)
    sources = resolve_sources(tasks, args.source)
    print("data: " + ", ".join(f"{t}={s}" for t, s in sources.items()))
    lm = load_from_args(args)
    res = evaluate_zeroshot(lm.model, lm.tokenizer, tasks, limit=args.limit, batch_size=args.batch_size,
                            source=args.source, quiet=not args.verbose)
    print(f"\nzero-shot, {lm.source} (lm-eval {res.lm_eval_version}, data: {res.source}"
          + (f", first {args.limit} examples per task" if args.limit else "") + ")\n")
    print(res.to_markdown())
    if args.json:
        write_json_atomic(args.json, res.to_json() | {"model": lm.source})
        print(f"\nwrote {args.json}")
    return 0
