"""Dense perplexity of the embedded model on the full WikiText-2 and PTB test sets (paper conventions).

Also checks that batch size 1 and 16 give the same PPL on the first 20 WikiText-2 windows.

    python experiments/full_ppl.py
"""

from __future__ import annotations

import sys

import torch
from _common import PeakRSS

from depthprune.evaluation import evaluate_perplexity
from depthprune.models import load_model


def main() -> None:
    lm = load_model("gemma-3-270m", dtype="float32", device="cpu")
    print(f"threads: {torch.get_num_threads()}")
    for bs in (1, 16):
        r = evaluate_perplexity(lm.model, lm.tokenizer, "wikitext2", limit=20, batch_size=bs, progress=False)
        print(f"first 20 windows, batch {bs}: PPL {r.ppl:.6f}")
    print("| dataset | PPL | tokens | windows | wall s | tokens/s | peak RSS GB |\n|---|---|---|---|---|---|---|")
    for ds in ("wikitext2", "ptb"):
        with PeakRSS() as mem:
            r = evaluate_perplexity(lm.model, lm.tokenizer, ds, batch_size=16, progress=False)
        print(f"| {ds} | {r.ppl:.3f} | {r.tokens} | {r.windows} | {r.wall_s:.0f} | {r.tokens_per_s:.1f} | "
              f"{mem.peak / 2**30:.2f} |", flush=True)


if __name__ == "__main__":
    sys.exit(main())
