"""Training throughput of KD (full and LoRA) vs CPT on a depth-pruned Gemma 3 270M (a few steps each).

Every run is ``depthprune retrain {cpt,kd}`` on the C4 sample, sequences of 256 tokens, batch 4 (one
micro-batch of 4), for ``--steps`` optimizer steps, with ``--mixed-precision no`` and ``bf16`` (CPU autocast).
Tokens/s is the median over the steps after the first (the first includes one-time set-up) of the
per-step figure in ``train_log.jsonl``. KD's teacher is the unpruned model (float32, same device).

    python experiments/kd_speed.py --model runs/prune_k4          # a pruned checkpoint (pruning.json names the teacher)

Writes ``docs/results/kd_speed_gemma3_270m.{md,json}``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS  # noqa: E402

METHODS = {"cpt": ["retrain", "cpt"], "kd": ["retrain", "kd"], "kd-lora": ["retrain", "kd", "--lora"]}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="a pruned checkpoint of gemma-3-270m")
    p.add_argument("--work", default="runs/kd_speed")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--precisions", nargs="+", default=["no", "bf16"], choices=["no", "bf16"])
    p.add_argument("--no-docs", action="store_true")
    return p.parse_args()


def main() -> None:
    a = parse_args()
    work = Path(a.work)
    rows = []
    for prec in a.precisions:
        for method in a.methods:
            out = work / f"{method}_{prec}"
            argv = [*METHODS[method], "--model", a.model, "--data", "c4_sample", "--seq-len", "256",
                    "--batch-size", "4", "--micro-batch-size", "4", "--max-steps", str(a.steps), "--warmup-steps",
                    "1", "--mixed-precision", prec, "--save-every", "0", "--log-every", "1", "--no-progress",
                    "--cpu", "--output", str(out), "--overwrite"]
            t0 = time.perf_counter()
            # one process per run: Accelerate's mixed-precision setting is fixed once per process
            rc = subprocess.run([sys.executable, "-m", "depthprune.cli", *argv]).returncode
            wall = time.perf_counter() - t0
            if rc != 0:
                rows.append({"method": method, "precision": prec, "error": f"exit {rc}"})
                continue
            log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
            tps = [r["tokens_per_s"] for r in log]
            steady = tps[1:] or tps
            rows.append({"method": method, "precision": prec, "steps": len(log), "tokens_per_step": 4 * 256,
                         "tokens_per_s_median": statistics.median(steady), "tokens_per_s_steps": tps,
                         "first_loss": log[0]["loss"], "last_loss": log[-1]["loss"], "wall_s_with_loading": wall})
            print(json.dumps(rows[-1]), flush=True)
    by = {(r["method"], r["precision"]): r for r in rows}
    lines = [f"Training throughput on {a.model} (Gemma 3 270M depth-pruned), C4 sample, sequences of 256 tokens, "
             f"batch 4 (one micro-batch), {a.steps} steps each, CPU ({os.cpu_count()} cores, shared with other "
             "jobs while measured), float32 weights. tokens/s = median per-step figure after the first step. KD: "
             "teacher = the unpruned model in float32; loss = KL(teacher || student) over vocabulary slices.",
             "", "| method | mixed precision | tokens/s | vs CPT (same precision) | loss first -> last |",
             "|---|---|---:|---:|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['method']} | {r['precision']} | failed ({r['error']}) | | |")
            continue
        cpt = by.get(("cpt", r["precision"]))
        ratio = (f"{r['tokens_per_s_median'] / cpt['tokens_per_s_median']:.2f}x"
                 if cpt and "error" not in cpt else "—")
        lines.append(f"| {r['method']} | {r['precision']} | {r['tokens_per_s_median']:.1f} | {ratio} | "
                     f"{r['first_loss']:.3f} -> {r['last_loss']:.3f} |")
    lines += ["", "On a shared CPU each run sees a different load; experiments/kd_step_cost.py compares the steps "
                  "interleaved in one process, in CPU time.",
              "", f"Reproduce: `python experiments/kd_speed.py --model {a.model} --steps {a.steps}`"]
    text = "\n".join(lines) + "\n"
    print(text)
    if not a.no_docs:
        (RESULTS / "kd_speed_gemma3_270m.md").write_text(text)
        (RESULTS / "kd_speed_gemma3_270m.json").write_text(json.dumps({"model": a.model, "rows": rows}, indent=2)
                                                           + "\n")


if __name__ == "__main__":
    main()
