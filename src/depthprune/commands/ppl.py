"""``depthprune eval ppl``: perplexity on WikiText-2, PTB or a text file."""

from __future__ import annotations

import json

from depthprune.commands.common import add_eval_parser, check_output_file, load_from_args, quantization_record
from depthprune.core.io import write_json_atomic
from depthprune.core.options import build, given_options
from depthprune.evaluation.options import PerplexityOptions
from depthprune.evaluation.run import perplexity


def register(sub) -> None:
    add_eval_parser(sub, "ppl", "perplexity on non-overlapping windows (BOS at each window's start)",
                    PerplexityOptions, run)


def run(args) -> int:
    options = given_options(args, PerplexityOptions)
    build(PerplexityOptions, options, flags=True)  # bad numbers fail before the model loads
    check_output_file("--json", args.json)
    lm = load_from_args(args)
    res = perplexity(lm.model, lm.tokenizer, **options)
    out = res.to_json() | {"model": lm.source} | quantization_record(lm.model)
    print(json.dumps(out, indent=2))
    print(res.summary())
    if args.json:
        write_json_atomic(args.json, out)
    return 0
