"""``depthprune eval zeroshot``: the paper's 7 commonsense tasks, zero-shot, through lm-evaluation-harness."""

from __future__ import annotations

from depthprune.commands.common import add_eval_parser, check_output_file, load_from_args, quantization_record
from depthprune.core.io import write_json_atomic
from depthprune.core.options import build, given_options
from depthprune.errors import DepthpruneError
from depthprune.evaluation.options import ZeroShotOptions
from depthprune.evaluation.run import zeroshot
from depthprune.evaluation.zeroshot import resolve_sources


def register(sub) -> None:
    p = add_eval_parser(sub, "zeroshot", "zero-shot accuracy on BoolQ, PIQA, HellaSwag, WinoGrande, ARC-e/c, OBQA",
                        ZeroShotOptions, run)
    p.add_argument("--resume", action="store_true",
                   help="resume an interrupted run: the same as --eval-cache <JSON>.cache")


def run(args) -> int:
    options = given_options(args, ZeroShotOptions)
    if args.resume and "cache_dir" not in options:
        if not args.json:
            raise DepthpruneError("--resume needs --json (the cache goes next to it) or --eval-cache DIR")
        options["cache_dir"] = args.json + ".cache"
    opts = build(ZeroShotOptions, options, flags=True)  # bad input fails before the model loads
    check_output_file("--json", args.json)
    sources = resolve_sources(opts.tasks, opts.source)
    print("data: " + ", ".join(f"{t}={s}" for t, s in sources.items()))
    lm = load_from_args(args)
    res = zeroshot(lm.model, lm.tokenizer, quiet=not args.verbose, **options)
    print(f"\nzero-shot, {lm.source} (lm-eval {res.lm_eval_version}, {res.backend}, {res.dtype}, data: {res.source}"
          + (f", first {opts.limit} examples per task" if opts.limit else "") + ")\n")
    print(res.to_markdown())
    if res.requests_from_cache:
        print(f"\nresumed: {res.requests_from_cache:,} of {res.requests:,} requests answered from {res.cache_dir}")
    if args.json:
        write_json_atomic(args.json, res.to_json() | {"model": lm.source} | quantization_record(lm.model))
        print(f"\nwrote {args.json}")
    return 0
