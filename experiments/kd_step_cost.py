"""Cost of one KD training step vs one CPT step on a pruned Gemma 3 270M, measured interleaved in one process.

On a shared CPU, separate runs see different loads; here CPT and KD steps (and their bf16-autocast versions)
alternate on the same batch (4 sequences of 256 tokens of the C4 sample), so they share the conditions, and
both wall time and this process's CPU time are recorded (tokens per CPU-second does not depend on how busy
the other jobs keep the cores). A step = forward, backward and an AdamW update of every student parameter;
KD's includes the frozen teacher's forward (the unpruned model, float32), also timed alone.

    python experiments/kd_step_cost.py --model runs/compensation_gemma/k4_linear_10 --rounds 3

Writes ``docs/results/kd_step_cost_gemma3_270m.{md,json}``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS  # noqa: E402

from depthprune.core.kd_loss import final_hidden_states  # noqa: E402
from depthprune.models import load_model  # noqa: E402
from depthprune.retraining.data import packed_text_dataset  # noqa: E402
from depthprune.retraining.engine import CausalLMLoss  # noqa: E402
from depthprune.retraining.kd import DistillLoss, default_teacher  # noqa: E402


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--no-docs", action="store_true")
    return p.parse_args()


def timed(fn) -> tuple[float, float]:
    w0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w0, time.process_time() - c0


def main() -> None:
    a = parse_args()
    student = load_model(a.model, dtype="float32", device="cpu")
    teacher_src = default_teacher(a.model)
    teacher = load_model(teacher_src, dtype="float32", device="cpu").model.requires_grad_(False).eval()
    lm = student.model.train()
    for p in lm.parameters():
        p.requires_grad_(True)
    batch = packed_text_dataset("c4_sample", student.tokenizer, a.seq_len).batch(list(range(a.batch)))
    tokens = batch["input_ids"].numel()
    modules = {"cpt": CausalLMLoss(lm), "kd": DistillLoss(lm, teacher)}
    opt = torch.optim.AdamW(lm.parameters(), lr=1e-7)  # the update's cost, not its effect, is measured

    def step(module, bf16: bool) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss, n = module(**batch)
        (loss / n).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def teacher_forward(bf16: bool) -> None:
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            final_hidden_states(teacher, batch["input_ids"])

    times: dict[str, list[tuple[float, float]]] = {}
    for r in range(a.rounds + 1):  # round 0 warms up and is dropped
        for prec in ("no", "bf16"):
            for name, module in modules.items():
                t = timed(lambda m=module, b=prec == "bf16": step(m, b))
                if r:
                    times.setdefault(f"{name}/{prec}", []).append(t)
                print(f"round {r} {name} {prec}: {t[0]:.1f} s wall, {t[1]:.1f} s CPU", flush=True)
            t = timed(lambda b=prec == "bf16": teacher_forward(b))
            if r:
                times.setdefault(f"teacher-forward/{prec}", []).append(t)
    rows = []
    for key, ts in times.items():
        what, prec = key.split("/")
        wall, cpu = statistics.median(x[0] for x in ts), statistics.median(x[1] for x in ts)
        rows.append({"what": what, "precision": prec, "wall_s": wall, "cpu_s": cpu,
                     "tokens_per_s": tokens / wall, "tokens_per_cpu_s": tokens / cpu, "samples": ts})
    by = {(r["what"], r["precision"]): r for r in rows}
    lines = [f"One training step on {a.model} (Gemma 3 270M, depth-pruned; teacher {teacher_src}, float32), batch "
             f"{a.batch} x {a.seq_len} tokens of the C4 sample, forward + backward + AdamW over every student "
             f"parameter; CPT and KD steps alternate in one process ({a.rounds} rounds after a warm-up round, "
             f"median), torch threads {torch.get_num_threads()}, on a CPU shared with other jobs. CPU time is this "
             "process's (all threads), so tokens per CPU-second does not depend on the other jobs.",
             "", "| step | autocast | wall s | CPU s | tokens/s | tokens per CPU-s | KD / CPT (CPU time) |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        cpt = by.get(("cpt", r["precision"]))
        ratio = f"{r['cpu_s'] / cpt['cpu_s']:.2f}" if r["what"] != "cpt" else "1.00"
        lines.append(f"| {r['what']} | {'bf16' if r['precision'] == 'bf16' else 'no'} | {r['wall_s']:.1f} | "
                     f"{r['cpu_s']:.1f} | {r['tokens_per_s']:.1f} | {r['tokens_per_cpu_s']:.2f} | {ratio} |")
    lines += ["", f"Reproduce: `python experiments/kd_step_cost.py --model {a.model} --rounds {a.rounds}`"]
    text = "\n".join(lines) + "\n"
    print(text)
    if not a.no_docs:
        (RESULTS / "kd_step_cost_gemma3_270m.md").write_text(text)
        (RESULTS / "kd_step_cost_gemma3_270m.json").write_text(json.dumps(
            {"model": a.model, "teacher": teacher_src, "tokens_per_step": tokens, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
