"""Zero-shot commonsense table (the paper's 7 tasks, lm-eval, local data) for the embedded model and pruned dirs.

Evaluates each model on BoolQ, PIQA, HellaSwag, WinoGrande, ARC-e, ARC-c and OpenBookQA (acc / acc_norm as in
the paper) and prints a Markdown table; writes JSON (every task's acc, acc_norm, stderr, versions) and the
table. Resumable: a model already in the JSON with the same tasks and limit is not evaluated again.
The full sets are ~69K loglikelihood requests per model: many hours on 2 CPU cores (minutes on a GPU).

    python bench/zeroshot_gemma.py                                   # the embedded Gemma 3 270M
    python bench/zeroshot_gemma.py gemma-3-270m runs/gemma-ppl-6/pruned --batch-size 16
    python bench/zeroshot_gemma.py --limit 2 --out /tmp/zs_smoke     # smoke run
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from _common import RESULTS

from depthprune.evaluation.zeroshot import PAPER_TASKS, TaskScore, ZeroShotResult, comparison_table, evaluate_zeroshot
from depthprune.models import load_model


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="*", default=["gemma-3-270m"], help="model sources (first = baseline)")
    p.add_argument("--tasks", default=",".join(PAPER_TASKS))
    p.add_argument("--limit", type=int, default=None, help="first N examples per task (default: full sets)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--dtype", default="auto")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default=str(RESULTS / "zeroshot_gemma3_270m"), help="output stem (.json and .md)")
    return p.parse_args()


def from_json(d: dict) -> ZeroShotResult:
    fields = ZeroShotResult.__dataclass_fields__
    kw = {k: v for k, v in d.items() if k in fields and k != "tasks"}
    return ZeroShotResult(tasks={t: TaskScore(**s) for t, s in d["tasks"].items()}, **kw)


def main() -> None:
    args = parse_args()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    store_path = out.with_suffix(".json")
    store = json.loads(store_path.read_text()) if store_path.exists() else {}
    rows = []
    for src in args.models:
        key = f"{src}|{args.tasks}|{args.limit}"
        if key not in store:
            lm = load_model(src, dtype=args.dtype, device=args.device)
            n_params = sum(p.numel() for p in lm.model.parameters())
            print(f"== {src} ({n_params / 1e6:.1f}M params)", flush=True)
            res = evaluate_zeroshot(lm.model, lm.tokenizer, args.tasks, limit=args.limit, batch_size=args.batch_size)
            store[key] = res.to_json() | {"model": src, "params": n_params}
            tmp = store_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(store, indent=2))
            os.replace(tmp, store_path)
            print(res.to_markdown(), flush=True)
            del lm
        rows.append((src, from_json(store[key])))
    scope = "full sets" if args.limit is None else f"first {args.limit} examples per task"
    first = rows[0][1]
    table = (f"Zero-shot accuracy (%), lm-eval {first.lm_eval_version}, data: {first.source}, {scope}; "
             "acc for BoolQ/PIQA/WinoGrande/ARC-e, acc_norm for HellaSwag/ARC-c/OBQA.\n\n"
             + comparison_table(rows))
    out.with_suffix(".md").write_text(table + "\n")
    print("\n" + table)
    print(f"\nwrote {store_path} and {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
