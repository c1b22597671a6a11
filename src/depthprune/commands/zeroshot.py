"""``depthprune eval zeroshot``: the paper's 7 commonsense tasks, zero-shot, through lm-evaluation-harness."""

from __future__ import annotations

import argparse

from depthprune.commands.common import add_model_args, load_from_args, positive_int, write_json_atomic
from depthprune.errors import DepthpruneError


def _batch_size(value: str) -> int | str:
    try:
        return value if value == "auto" else int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a positive integer or 'auto', got {value!r}") from None


def register(sub) -> None:
    from depthprune.evaluation.zeroshot import BACKENDS, PAPER_TASKS, SOURCES

    p = sub.add_parser("zeroshot", help="zero-shot accuracy on BoolQ, PIQA, HellaSwag, WinoGrande, ARC-e/c, OBQA")
    add_model_args(p)
    p.add_argument("--tasks", default=",".join(PAPER_TASKS), help="comma-separated task names (default: all 7)")
    p.add_argument("--limit", type=int, default=None, help="score only the first N examples of each task")
    p.add_argument("--batch-size", type=_batch_size, default=8,
                   help="requests per model call, or 'auto' (fast backend: the largest its memory budget allows)")
    p.add_argument("--backend", default="fast", choices=BACKENDS,
                   help="fast: shared contexts, LM head at scored tokens only, bounded memory (same numbers); "
                        "hf: lm-eval's stock HFLM")
    p.add_argument("--eval-cache", default=None, metavar="DIR",
                   help="keep every answer in DIR as it is computed; a rerun with the same DIR resumes (a DIR made "
                        "for another model is refused). (--cache-dir is the model checkpoint cache.)")
    p.add_argument("--resume", action="store_true",
                   help="resume an interrupted run: same as --eval-cache <--json>.cache")
    p.add_argument("--source", default="auto", choices=SOURCES,
                   help="auto: the local data directory when it has the task, else lm-eval's hub task")
    p.add_argument("--json", default=None, help="write the result as JSON here")
    p.set_defaults(func=run)


def run(args) -> int:
    from depthprune.evaluation.zeroshot import evaluate_zeroshot, parse_tasks, resolve_sources

    tasks = parse_tasks(args.tasks)  # fail on bad input before loading the model
    positive_int("--limit", args.limit)
    if args.batch_size != "auto":
        positive_int("--batch-size", args.batch_size, allow_none=False)
    cache = args.eval_cache
    if args.resume and cache is None:
        if not args.json:
            raise DepthpruneError("--resume needs --json (the cache goes next to it) or --eval-cache DIR")
        cache = args.json + ".cache"
    sources = resolve_sources(tasks, args.source)
    print("data: " + ", ".join(f"{t}={s}" for t, s in sources.items()))
    lm = load_from_args(args)
    res = evaluate_zeroshot(lm.model, lm.tokenizer, tasks, limit=args.limit, batch_size=args.batch_size,
                            source=args.source, quiet=not args.verbose, backend=args.backend, cache_dir=cache)
    print(f"\nzero-shot, {lm.source} (lm-eval {res.lm_eval_version}, {res.backend}, {res.dtype}, data: {res.source}"
          + (f", first {args.limit} examples per task" if args.limit else "") + ")\n")
    print(res.to_markdown())
    if args.json:
        write_json_atomic(args.json, res.to_json() | {"model": lm.source})
        print(f"\nwrote {args.json}")
    return 0
