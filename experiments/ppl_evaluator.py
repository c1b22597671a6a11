"""Perplexity evaluator vs a plain ``model(x, labels=x)`` loop: tokens/s and peak resident memory.

Each variant runs in a fresh subprocess so its peak RSS is its own. Default: Gemma 3 270M, float32,
48 WikiText-2 windows of 128 tokens (BOS prepended), batch size 16.

    python experiments/ppl_evaluator.py [--windows 48] [--batch-size 16]
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time

import psutil
import torch
from _common import PeakRSS, weight_bytes

from depthprune.evaluation.perplexity import perplexity_of_windows, windows_for
from depthprune.models import load_model


def run_variant(variant: str, windows: int, batch_size: int) -> dict:
    lm = load_model("gemma-3-270m", dtype="float32", device="cpu")
    w = windows_for(lm.tokenizer, "wikitext2", 128, windows)
    perplexity_of_windows(lm.model, w[:2], 2, progress=False)  # warm-up
    loaded = psutil.Process().memory_info().rss
    with PeakRSS() as mem, torch.no_grad():
        t0 = time.perf_counter()
        if variant == "depthprune":
            total, count = perplexity_of_windows(lm.model, w, batch_size, progress=False)
            ppl = math.exp(total / count)
        else:
            losses = []
            for s in range(0, w.shape[0], batch_size):
                x = w[s : s + batch_size]
                losses.append(float(lm.model(x, labels=x).loss) * x.shape[0])
            ppl, count = math.exp(sum(losses) / w.shape[0]), w.shape[0] * (w.shape[1] - 1)
        wall = time.perf_counter() - t0
    return {"variant": variant, "ppl": ppl, "tokens": count, "wall_s": wall, "tokens_per_s": count / wall,
            "peak_rss_gb": mem.peak / 2**30, "loaded_rss_gb": loaded / 2**30,
            "weight_gb": weight_bytes(lm.model) / 2**30,
            "threads": torch.get_num_threads()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--windows", type=int, default=48)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--variant", choices=["depthprune", "plain"])
    args = ap.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args.variant, args.windows, args.batch_size)))
        return
    rows = []
    for variant in ("depthprune", "plain"):
        out = subprocess.run([sys.executable, __file__, "--variant", variant, "--windows", str(args.windows),
                              "--batch-size", str(args.batch_size)], capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"Gemma 3 270M float32, {args.windows} WikiText-2 windows x 128 tokens, batch {args.batch_size}, "
          f"{rows[0]['threads']} threads\n")
    print("| loop | PPL | tokens/s | wall s | peak RSS GB | RSS before the loop GB | weights GB |\n"
          "|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {r['ppl']:.3f} | {r['tokens_per_s']:.1f} | {r['wall_s']:.1f} | "
              f"{r['peak_rss_gb']:.2f} | {r['loaded_rss_gb']:.2f} | {r['weight_gb']:.2f} |")
    print(f"\nspeed ratio depthprune/plain: {rows[0]['tokens_per_s'] / rows[1]['tokens_per_s']:.2f}")


if __name__ == "__main__":
    sys.exit(main())
