"""``depthprune eval samples``: greedy continuations of a few prompts (generation examples for reports)."""

from __future__ import annotations

import json

from depthprune.commands.common import add_eval_parser, check_output_file, load_from_args
from depthprune.core.io import write_json_atomic
from depthprune.core.options import build, given_options
from depthprune.evaluation.options import SamplesOptions
from depthprune.evaluation.samples import samples_json


def register(sub) -> None:
    p = add_eval_parser(sub, "samples", "greedy continuations of fixed prompts (generation examples)",
                        SamplesOptions, run, exclude=("prompts",),
                        description=__doc__ + " Greedy, exactly --max-new-tokens new tokens per prompt (EOS cannot "
                                              "stop it); 'depthprune report' shows the --json file.")
    p.add_argument("--prompt", action="append", default=None,
                   help="repeatable; default: three fixed prompts (depthprune.evaluation.samples.DEFAULT_PROMPTS)")


def run(args) -> int:
    fields = given_options(args, SamplesOptions) | ({"prompts": args.prompt} if args.prompt else {})
    opts = build(SamplesOptions, fields, flags=True)  # before loading the model
    check_output_file("--json", args.json)
    lm = load_from_args(args)
    out = samples_json(lm.model, lm.tokenizer, opts.prompts, opts.max_new_tokens) | {"model": lm.source}
    for s in out["samples"]:
        print(f"{s['prompt']!r} -> {s['continuation']!r}")
    if args.json:
        write_json_atomic(args.json, out)
        print(f"wrote {args.json}")
    else:
        print(json.dumps(out, indent=2))
    return 0
