"""One-shot vs iterative ``ppl`` pruning, and block vs module granularity (the paper's Table 6), on Gemma 3 270M.

Same calibration (War and Peace, 10 x 128, seed 0) and perplexity windows (first 200 of WikiText-2 and PTB,
128 tokens) as bench/criteria_table.py, whose PPL cache it shares. Iterative removals at K = 2 and 4 are the
first K rounds of the K = 6 run (greedy removal does not depend on later rounds). Module pruning is matched
to the parameter count of K removed blocks (``--target-params``). Writes docs/results/schedule_unit_gemma3_270m.md.

    python bench/schedule_unit_table.py
"""

from __future__ import annotations

import copy
import json
import sys
import time
from contextlib import ExitStack

from _common import RESULTS, PaperSetup

from depthprune.importance import score_model
from depthprune.models.params import candidate_params
from depthprune.models.skipping import module_skipped
from depthprune.pruning import Target, blocks_removed, select_blocks
from depthprune.pruning.iterative import iterative_prune
from depthprune.pruning.module_surgery import parse_label

LEVELS = [2, 4, 6]


def main() -> None:
    setup = PaperSetup()
    model, calib, windows, cache = setup.model, setup.calib, setup.windows, setup.cache
    total, bparams = setup.total, setup.bparams
    sched, units = [], []

    t0 = time.perf_counter()
    block_scores = score_model(model, "ppl", calib)
    one_shot_s = time.perf_counter() - t0
    it = iterative_prune(copy.deepcopy(model), "ppl", calib, Target(num_blocks=max(LEVELS)), progress=False)
    order, rounds = it.info["removal_order"], it.info["rounds"]
    for k in LEVELS:
        one = select_blocks(block_scores, bparams, total, Target(num_blocks=k)).removed
        itr = sorted(order[:k])
        for name, removed, secs in (("one-shot", one, one_shot_s), ("iterative", itr, rounds[k - 1]["elapsed_s"])):
            with blocks_removed(model, removed):
                ppl = cache.get("remove:" + ",".join(map(str, removed)), model, windows)
            sched.append({"schedule": name, "k": k, "removed": removed, "score_s": secs,
                          "params": total - sum(bparams[i] for i in removed), **ppl})

    t0 = time.perf_counter()
    mod_scores = score_model(model, "ppl", calib, unit="module")
    module_s = time.perf_counter() - t0
    cparams = candidate_params(model, "module")
    for k in LEVELS:
        goal = total - sum(sorted(bparams)[:k])
        sel = select_blocks(mod_scores, cparams, total, Target(target_params=goal))
        labels = [mod_scores.candidates[i] for i in sel.removed]
        with ExitStack() as stack:
            for label in labels:
                idx, part = parse_label(label)
                stack.enter_context(module_skipped(model, idx, part))
            ppl = cache.get("modules:" + ",".join(labels), model, windows)
        one = select_blocks(block_scores, bparams, total, Target(num_blocks=k)).removed
        units.append({"k": k, "block_removed": one, "block_params": total - sum(bparams[i] for i in one),
                      "modules": labels, "module_params": sel.params_after, "module_score_s": module_s, **ppl,
                      "block_ppl": cache.data["remove:" + ",".join(map(str, one))]})
    write(sched, units, one_shot_s, module_s)


def write(sched, units, one_shot_s, module_s) -> None:
    lines = ["# One-shot vs iterative, block vs module (Gemma 3 270M, `ppl` criterion, no retraining)", "",
             "Calibration: War and Peace, 10 x 128 tokens, seed 0. PPL: first 200 windows of 128 tokens (BOS "
             "prepended), float32, CPU. Reproduce: `python bench/schedule_unit_table.py`.", "",
             "## One-shot vs iterative (SLEB)", "",
             "| schedule | blocks removed | removed (0-based) | params | scoring s | WikiText-2 | PTB |",
             "|---|---|---|---|---|---|---|"]
    for r in sched:
        lines.append(f"| {r['schedule']} | {r['k']} | {r['removed']} | {r['params'] / 1e6:.1f}M | {r['score_s']:.0f} "
                     f"| {r['wikitext2']:.2f} | {r['ptb']:.2f} |")
    lines += ["", "## Block vs module granularity at matched parameter counts", "",
              f"Module scoring (36 candidates): {module_s:.0f} s; block scoring: {one_shot_s:.0f} s.", "",
              "| target (blocks' params) | unit | removed | params | WikiText-2 | PTB |", "|---|---|---|---|---|---|"]
    for r in units:
        lines.append(f"| {r['k']} blocks | block | {r['block_removed']} | {r['block_params'] / 1e6:.2f}M | "
                     f"{r['block_ppl']['wikitext2']:.2f} | {r['block_ppl']['ptb']:.2f} |")
        lines.append(f"| {r['k']} blocks | module | {', '.join(r['modules'])} | {r['module_params'] / 1e6:.2f}M | "
                     f"{r['wikitext2']:.2f} | {r['ptb']:.2f} |")
    (RESULTS / "schedule_unit_gemma3_270m.md").write_text("\n".join(lines) + "\n")
    (RESULTS / "schedule_unit_gemma3_270m.json").write_text(json.dumps({"schedule": sched, "unit": units}, indent=2))
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
