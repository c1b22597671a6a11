"""How much compute the full 7-task zero-shot table needs: requests and tokens per task, and a time estimate.

Builds every loglikelihood request of the paper's 7 tasks (local data, lm-eval's own request builder), counts
the tokens the model must read (BOS + context + continuation, with the Gemma tokenizer), and, with
``--time N``, times lm-eval on the first N examples of each task to turn the token count into hours.

    python experiments/zeroshot_cost.py              # counts only (a minute)
    python experiments/zeroshot_cost.py --time 8     # plus a timed lm-eval run on 8 examples per task
"""

from __future__ import annotations

import argparse
import json
import time

from _common import RESULTS

from depthprune.evaluation.zeroshot import PAPER_TASKS, _load_tasks, evaluate_zeroshot, resolve_sources
from depthprune.models import load_model


def count(tokenizer) -> dict[str, dict]:
    tasks, _ = _load_tasks(PAPER_TASKS, resolve_sources(list(PAPER_TASKS), "local"))
    out = {}
    for name, task in tasks.items():
        task.build_all_requests(limit=None, rank=0, world_size=1)
        ctx = [inst.args[0] for inst in task.instances]
        cont = [inst.args[1] for inst in task.instances]
        n_ctx = [len(x) for x in tokenizer(ctx, add_special_tokens=False)["input_ids"]]
        n_cont = [len(x) for x in tokenizer(cont, add_special_tokens=False)["input_ids"]]
        tokens = sum(n_ctx) + sum(n_cont) + len(ctx)
        unique_ctx = len(set(ctx))
        out[name] = {"docs": len(task.eval_docs), "requests": len(ctx), "tokens": tokens,
                     "unique_contexts": unique_ctx, "mean_context_tokens": sum(n_ctx) / len(n_ctx),
                     "mean_continuation_tokens": sum(n_cont) / len(n_cont)}
        print(name, out[name], flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--time", type=int, default=0, help="examples per task for a timed lm-eval run (0: skip)")
    ap.add_argument("--batch-size", type=int, default=8)
    a = ap.parse_args()
    lm = load_model("gemma-3-270m", dtype="float32", device="cpu")
    counts = count(lm.tokenizer)
    total = sum(c["tokens"] for c in counts.values())
    res = {"tasks": counts, "total_requests": sum(c["requests"] for c in counts.values()), "total_tokens": total}
    if a.time:
        t0 = time.perf_counter()
        evaluate_zeroshot(lm.model, lm.tokenizer, limit=a.time, batch_size=a.batch_size, source="local")
        wall = time.perf_counter() - t0
        per_task = {}
        for name, task in _load_tasks(PAPER_TASKS, resolve_sources(list(PAPER_TASKS), "local"))[0].items():
            task.build_all_requests(limit=a.time, rank=0, world_size=1)
            per_task[name] = sum(len(lm.tokenizer(i.args[0] + i.args[1]).input_ids) for i in task.instances)
        timed = sum(per_task.values())
        res |= {"timed_examples_per_task": a.time, "timed_tokens": timed, "timed_wall_s": wall,
                "tokens_per_s": timed / wall, "estimated_full_hours": total / (timed / wall) / 3600}
    print(json.dumps({k: v for k, v in res.items() if k != "tasks"}, indent=2))
    (RESULTS / "zeroshot_cost_gemma3_270m.json").write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
