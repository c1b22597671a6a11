"""Cost of the scoring criteria: ``ppl`` with vs without prefix caching, and ``taylor``'s peak memory.

Each measurement runs in a fresh subprocess. Models: Gemma 3 270M (float32) and a random LLaMA-shaped
model with a small vocabulary (hidden 512, 16 blocks, vocab 32000). Calibration: War and Peace,
10 x 128 tokens, seed 0.

    python experiments/scoring_cost.py
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import psutil
import torch
from _common import PeakRSS, weight_bytes


def _model(name: str):
    from depthprune.models import load_model

    if name == "gemma":
        lm = load_model("gemma-3-270m", dtype="float32", device="cpu")
        return lm.model, lm.tokenizer
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=512, intermediate_size=1376, num_hidden_layers=16, num_attention_heads=8,
                      num_key_value_heads=8, vocab_size=32000, max_position_embeddings=512)
    return LlamaForCausalLM(cfg).eval(), load_model("gemma-3-270m", device="cpu").tokenizer


def measure(what: str, name: str, batch_size: int = 16) -> dict:
    from depthprune.data import CalibrationSpec, build_calibration
    from depthprune.importance import score_model

    model, tok = _model(name)
    calib = build_calibration(tok, CalibrationSpec("war_and_peace", 10, 128, 0))
    if name != "gemma":
        calib.input_ids = calib.input_ids % model.config.vocab_size
    crit, opts = {"ppl_cached": ("ppl", {"cache_prefix": True}), "ppl_naive": ("ppl", {"cache_prefix": False}),
                  "taylor": ("taylor", {})}[what]
    before = psutil.Process().memory_info().rss
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        scores = score_model(model, crit, calib, batch_size=batch_size, **opts).scores
        wall = time.perf_counter() - t0
    return {"what": what, "model": name, "wall_s": wall, "peak_rss_gb": mem.peak / 2**30,
            "rss_before_gb": before / 2**30,
            "weight_gb": weight_bytes(model) / 2**30, "batch_size": batch_size,
            "batches": -(-calib.input_ids.shape[0] // batch_size), "scores": scores}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--what")
    ap.add_argument("--model")
    ap.add_argument("--batch-size", type=int, default=16, help="calibration samples per backward (10 samples: "
                                                                "16 = one batch, 3 = four batches)")
    args = ap.parse_args()
    if args.what:
        print(json.dumps(measure(args.what, args.model, args.batch_size)))
        return
    res = {}
    for name in ("llama-small-vocab", "gemma"):
        for what in ("ppl_cached", "ppl_naive", "taylor"):
            out = subprocess.run([sys.executable, __file__, "--what", what, "--model", name],
                                 capture_output=True, text=True, check=True)
            res[(name, what)] = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"{name} {what}: {res[(name, what)]['wall_s']:.1f}s, peak {res[(name, what)]['peak_rss_gb']:.2f} GB",
                  file=sys.stderr, flush=True)
    print("| model | ppl cached s | ppl naive s | cached/naive | max rel. score diff | taylor s | taylor peak RSS GB "
          "| RSS before taylor GB | weights GB | peak/weights |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in ("llama-small-vocab", "gemma"):
        c, n, t = res[(name, "ppl_cached")], res[(name, "ppl_naive")], res[(name, "taylor")]
        diff = max(abs(a - b) / b for a, b in zip(c["scores"], n["scores"]))
        print(f"| {name} | {c['wall_s']:.1f} | {n['wall_s']:.1f} | {c['wall_s'] / n['wall_s']:.2f} | {diff:.1e} | "
              f"{t['wall_s']:.1f} | {t['peak_rss_gb']:.2f} | {t['rss_before_gb']:.2f} | {t['weight_gb']:.2f} | "
              f"{t['peak_rss_gb'] / t['weight_gb']:.2f} |")


if __name__ == "__main__":
    sys.exit(main())
