"""``depthprune eval samples``: greedy continuations of a few prompts (generation examples for reports)."""

from __future__ import annotations

import json

from depthprune.commands.common import add_model_args, load_from_args


def register(sub) -> None:
    from depthprune.evaluation.samples import DEFAULT_MAX_NEW_TOKENS

    p = sub.add_parser("samples", help="greedy continuations of fixed prompts (generation examples)",
                       description=__doc__ + " Greedy, exactly --max-new-tokens new tokens per prompt (EOS cannot "
                                             "stop it); 'depthprune report' shows the --json file.")
    add_model_args(p)
    p.add_argument("--prompt", action="append", default=None,
                   help="repeatable; default: three fixed prompts (depthprune.evaluation.samples.DEFAULT_PROMPTS)")
    p.add_argument("--max-new-tokens", type=int, default=DEFAULT_MAX_NEW_TOKENS,
                   help="new tokens per prompt (default %(default)s)")
    p.add_argument("--json", default=None, help="write the result as JSON here")
    p.set_defaults(func=run)


def run(args) -> int:
    from depthprune.evaluation.samples import DEFAULT_PROMPTS, check_prompts, samples_json

    prompts = check_prompts(args.prompt or DEFAULT_PROMPTS, args.max_new_tokens)  # before loading the model
    lm = load_from_args(args)
    out = samples_json(lm.model, lm.tokenizer, prompts, args.max_new_tokens) | {"model": lm.source}
    for s in out["samples"]:
        print(f"{s['prompt']!r} -> {s['continuation']!r}")
    if args.json:
        _write_json(args.json, out)
        print(f"wrote {args.json}")
    else:
        print(json.dumps(out, indent=2))
    return 0


def _write_json(path: str, data: dict) -> None:
    try:  # main moves the atomic writers to depthprune.core.io (commit 3bd63fa); this branch predates that
        from depthprune.core.io import write_json_atomic
    except ImportError:
        from depthprune.commands.common import write_json_atomic
    write_json_atomic(path, data)
