"""``depthprune eval ppl``: perplexity on WikiText-2, PTB or a text file."""

from __future__ import annotations

import json

from depthprune.commands.common import add_model_args, load_from_args, positive_int
from depthprune.core.io import write_json_atomic
from depthprune.data.tokens import BOS_MODES, check_seq_len


def register(sub) -> None:
    p = sub.add_parser("ppl", help="perplexity on non-overlapping windows (BOS at each window's start)")
    add_model_args(p)
    p.add_argument("--dataset", default="wikitext2", help="wikitext2, ptb, or a .txt/.jsonl path or hub id")
    p.add_argument("--text-field", default="text", help="text field of .jsonl/.json records")
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N windows")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--bos", default="every", choices=BOS_MODES,
                   help="BOS before every window (default; Gemma needs it), once before the whole text (the paper's "
                        "LLaMA numbers), or none")
    p.add_argument("--json", default=None, help="write the result as JSON here")
    p.set_defaults(func=run)


def run(args) -> int:
    from depthprune.evaluation import evaluate_perplexity

    check_seq_len(args.seq_len)
    positive_int("--limit", args.limit)
    positive_int("--batch-size", args.batch_size, allow_none=False)
    lm = load_from_args(args)
    res = evaluate_perplexity(lm.model, lm.tokenizer, args.dataset, args.seq_len, args.limit,
                              args.batch_size, text_field=args.text_field, bos=args.bos)
    out = res.to_json() | {"model": lm.source}
    print(json.dumps(out, indent=2))
    if args.json:
        write_json_atomic(args.json, out)
    return 0
