"""``depthprune eval ppl``: perplexity on WikiText-2, PTB or a text file."""

from __future__ import annotations

import json

from depthprune.commands.common import add_model_args, load_from_args, quantization_record
from depthprune.core.io import write_json_atomic
from depthprune.core.options import add_options, build, given_options
from depthprune.evaluation.options import PerplexityOptions
from depthprune.evaluation.run import perplexity


def register(sub) -> None:
    p = sub.add_parser("ppl", help="perplexity on non-overlapping windows (BOS at each window's start)")
    add_model_args(p)
    add_options(p, PerplexityOptions)
    p.add_argument("--json", default=None, help="write the result as JSON here")
    p.set_defaults(func=run)


def run(args) -> int:
    options = given_options(args, PerplexityOptions)
    build(PerplexityOptions, options, flags=True)  # bad numbers fail before the model loads
    lm = load_from_args(args)
    res = perplexity(lm.model, lm.tokenizer, **options)
    out = res.to_json() | {"model": lm.source} | quantization_record(lm.model)
    print(json.dumps(out, indent=2))
    print(res.summary())
    if args.json:
        write_json_atomic(args.json, out)
    return 0
