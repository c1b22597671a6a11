"""Criteria comparison on the embedded model (the paper's Table 5 at this scale), no retraining.

Scores all 18 blocks of Gemma 3 270M with every criterion (War and Peace, 10 x 128, seed 0), removes 2,
4 and 6 blocks, and evaluates WikiText-2 / PTB perplexity on the first 200 windows of 128 tokens.
Writes docs/results/criteria_gemma3_270m.md and .json. Resumable (PPL per removed set is cached).
About an hour on 2 CPU cores.

    python bench/criteria_table.py
"""

from __future__ import annotations

import json
import sys
import time

from _common import RESULTS, PaperSetup

from depthprune.importance import score_model
from depthprune.importance.plot import plot_block_scores
from depthprune.pruning import Target, blocks_removed, resolve_protection, select_blocks

CRITERIA = ["magnitude", "magnitude+", "taylor", "taylor+", "ppl", "block_influence", "angular"]
LEVELS = [2, 4, 6]


def main() -> None:
    setup = PaperSetup()
    model, calib, windows, cache = setup.model, setup.calib, setup.windows, setup.cache
    total, bparams = setup.total, setup.bparams
    rows, score_times, all_scores = [], {}, {}
    dense = cache.get("dense", model, windows)
    rows.append({"criterion": "dense", "blocks_removed": 0, "removed": [], "params": total, **dense})
    scores_by_base = {}
    for crit in CRITERIA:
        base = crit.rstrip("+")
        if base not in scores_by_base:
            t0 = time.perf_counter()
            scores_by_base[base] = score_model(model, base, calib)
            score_times[base] = time.perf_counter() - t0
            print(f"{base}: scored in {score_times[base]:.1f}s", flush=True)
            plot_block_scores(scores_by_base[base], RESULTS / f"scores_{base}_gemma3_270m.png")
        scores = scores_by_base[base]
        all_scores[base] = scores.scores
        protect = resolve_protection(crit, None, None)
        for k in LEVELS:
            sel = select_blocks(scores, bparams, total, Target(num_blocks=k), *protect)
            key = "remove:" + ",".join(map(str, sel.removed))
            with blocks_removed(model, sel.removed):
                ppl = cache.get(key, model, windows)
            rows.append({"criterion": crit, "blocks_removed": k, "removed": sel.removed,
                         "params": sel.params_after, **ppl})
    write(rows, score_times, all_scores)


def write(rows, score_times, all_scores) -> None:
    lines = [
        "# Criteria comparison on Gemma 3 270M (no retraining)",
        "",
        "Calibration: War and Peace, 10 random windows x 128 tokens, seed 0. Perplexity: first 200",
        "non-overlapping windows of 128 tokens (BOS prepended) of WikiText-2 (raw test) and PTB (test),",
        "float32, CPU. `+` = first 4 and last 2 blocks protected. Reproduce: `python bench/criteria_table.py`.",
        "",
        "| criterion | blocks removed | removed (0-based) | params | WikiText-2 PPL | PTB PPL |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['criterion']} | {r['blocks_removed']} | {r['removed']} | {r['params'] / 1e6:.1f}M "
                     f"| {r['wikitext2']:.2f} | {r['ptb']:.2f} |")
    lines += ["", "Scoring wall time on this 2-core machine (upper bounds when other bench jobs share the CPU; "
              "uncontended 2-thread figures: docs/results/scoring_cost_gemma3_270m.md):", "",
              "| criterion | seconds |", "|---|---|"]
    lines += [f"| {k} | {v:.1f} |" for k, v in score_times.items()]
    (RESULTS / "criteria_gemma3_270m.md").write_text("\n".join(lines) + "\n")
    (RESULTS / "criteria_gemma3_270m.json").write_text(json.dumps(
        {"rows": rows, "score_seconds": score_times, "scores": all_scores}, indent=2))
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
