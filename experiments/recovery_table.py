"""The recovery comparison's table and PPL-vs-training-tokens plot, from a (partial) run of the recovery config.

Reads ``runs/recovery-gemma3-270m/<variant>/k<K>/eval.json`` (and each retraining's ``retrain.json`` for the
tokens seen and wall time) of ``depthprune run examples/recovery_gemma3_270m.yaml`` as far as it has got, and
writes ``docs/results/recovery_gemma3_270m.{md,json,png}``; rows not run yet are listed as such. A row the run
directory lacks (runs/ is not committed, so a new checkout starts empty) keeps its figures from the committed JSON,
so the table grows across sittings and machines.

    python experiments/recovery_table.py [--run runs/recovery-gemma3-270m]
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from _common import RESULTS, merge_committed_rows, run_table_cli

from depthprune.core.figures import plt, save_figure

ROOT = Path(__file__).resolve().parent.parent
METHODS = {"none": "none", "compensate": "compensate", "lora": "LoRA", "cpt": "CPT", "kd": "KD",
           "kd-lora": "KD-LoRA", "compensate-kd": "compensate+KD"}
BUDGETS = {"": 0, "-20k": 20_000, "-100k": 100_000}
GOAL = 64.0  # the goal for 4 blocks at 100k tokens: within 1.5x of dense WikiText-2 PPL (42.4)


def zeroshot_summary(zs: dict | None) -> dict:
    """The paper-metric average over the tasks scored, with its standard error (tasks independent), as %."""
    if not zs:
        return {}
    tasks = zs["tasks"].values()
    ses = [t["acc_norm_stderr"] if t["metric"] == "acc_norm" else t["acc_stderr"] for t in tasks]
    return {"zeroshot_avg": 100 * zs["average"], "zeroshot_se": 100 * math.sqrt(sum(e * e for e in ses)) / len(ses),
            "zeroshot_docs": min(t["n"] for t in tasks), "zeroshot_tasks": len(ses), "zeroshot_dtype": zs.get("dtype")}


def collect(run: Path) -> dict:
    rows = []
    for method in METHODS:
        for suffix, budget in BUDGETS.items():
            variant = method + suffix
            if (budget == 0) != (method in ("none", "compensate")):
                continue
            for k in (4, 6):
                ev = run / variant / f"k{k}" / "eval.json"
                row = {"method": METHODS[method], "variant": variant, "blocks_removed": k, "budget": budget}
                if ev.is_file():
                    res = json.loads(ev.read_text())["results"][-1]
                    row |= {"wikitext2": res["ppl"]["wikitext2"]["ppl"], "ptb": res["ppl"]["ptb"]["ppl"],
                            "params": res["params"]} | zeroshot_summary(res.get("zeroshot"))
                    info = sorted((run / variant / f"k{k}" / "retrained").glob("*/retrain.json"))
                    if info:
                        r = json.loads(info[-1].read_text())["result"]
                        row |= {"tokens_seen": r["tokens_seen"], "train_wall_s": r["wall_s"]}
                rows.append(row)
    base = run / "base" / "eval.json"
    dense = json.loads(base.read_text())["results"][0] if base.is_file() else {}
    return {"dense": {d: v["ppl"] for d, v in dense.get("ppl", {}).items()} | zeroshot_summary(dense.get("zeroshot")),
            "rows": rows}


def markdown(data: dict, run: Path) -> str:
    dense = data["dense"]
    lines = ["# Recovery after removing blocks (Gemma 3 270M, `ppl` criterion, one-shot)", "",
             "`depthprune run examples/recovery_gemma3_270m.yaml` (the config's header has every setting); "
             "WikiText-2 / PTB perplexity on the first 200 windows of 128 tokens. Dense: "
             f"{dense.get('wikitext2', float('nan')):.2f} / {dense.get('ptb', float('nan')):.2f}"
             + (f", zero-shot {dense['zeroshot_avg']:.2f} ± {dense['zeroshot_se']:.2f}. " if "zeroshot_avg" in dense
                else ". ") +
             f"Goal (4 blocks, 100k tokens): WikiText-2 <= {GOAL:.0f}. Zero-shot: the paper's 7-task average "
             "(its metric per task) on the first 200 documents of each task, ± its standard error, scored in "
             "bfloat16 where the CPU has native bf16 and in float32 elsewhere (marked fp32; the two agree within a "
             "standard error); rows run before it was in the config have none. A dash: not run yet (the run resumes; "
             "`--only` runs a part).", "",
             "| blocks removed | method | training tokens | WikiText-2 | PTB | zero-shot avg (7 tasks) | "
             "train wall (min, shared CPU) |",
             "|---:|---|---:|---:|---:|---:|---:|"]
    for r in sorted(data["rows"], key=lambda r: (r["blocks_removed"], r["budget"], list(METHODS.values())
                                                 .index(r["method"]))):
        ppl = (f"{r['wikitext2']:.2f} | {r['ptb']:.2f}") if "wikitext2" in r else "– | –"
        wall = f"{r['train_wall_s'] / 60:.1f}" if "train_wall_s" in r else "–"
        tokens = f"{r.get('tokens_seen', r['budget']):,}" if r["budget"] else "0"
        zs = f"{r['zeroshot_avg']:.2f} ± {r['zeroshot_se']:.2f}" if "zeroshot_avg" in r else "–"
        zs += " (fp32)" if r.get("zeroshot_dtype") == "float32" else ""
        lines.append(f"| {r['blocks_removed']} | {r['method']} | {tokens} | {ppl} | {zs} | {wall} |")
    lines += ["", "![PPL vs training tokens](recovery_gemma3_270m.png)", "",
              f"Generated by `python experiments/recovery_table.py --run {run}`. The rows ran over several sittings "
              "and machines (runs/ is not kept between them), so no single `depthprune report` covers them all: "
              "[recovery_gemma3_270m/](recovery_gemma3_270m/report.md) is the first sitting's (4 blocks, 20k "
              "tokens: per-block scores, removed blocks), "
              "[recovery_gemma3_270m_100k/](recovery_gemma3_270m_100k/report.md) the 4-block KD 100k part's "
              "(with generation examples); every row's figures are kept in `recovery_gemma3_270m.json`."]
    return "\n".join(lines) + "\n"


def plot(data: dict, path: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, k in zip(axes, (4, 6)):
        for method in METHODS.values():
            start = "compensate" if method == "compensate+KD" else "none"  # where training starts from
            pts = sorted((r["budget"], r["wikitext2"]) for r in data["rows"] if r["blocks_removed"] == k
                         and "wikitext2" in r and (r["method"] == method or (r["method"] == start and
                                                                             method not in ("none", "compensate"))))
            if len(pts) > (0 if method in ("none", "compensate") else 1):
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=method)
        if data["dense"]:
            ax.axhline(data["dense"]["wikitext2"], color="k", ls=":", label="dense")
        ax.axhline(GOAL, color="gray", ls="--", lw=0.8, label="goal (<= 64)")
        ax.xaxis.set_major_formatter(lambda x, _: f"{x / 1000:.0f}k")
        ax.set(title=f"{k} of 18 blocks removed", xlabel="training tokens", ylabel="WikiText-2 PPL", yscale="log")
        ax.legend(fontsize=7)
    save_figure(fig, path)


# Training seconds per token relative to CPT (the config header's measured costs), so that the cheapest pending
# rows run first and more of them land within one sitting.
COST = {"none": 0, "compensate": 0, "LoRA": 0.8, "CPT": 1.0, "KD-LoRA": 1.6, "KD": 1.75, "compensate+KD": 1.8}


def pending(data: dict) -> list[str]:
    """Rows not measured yet, cheapest first; then rows measured before zero-shot was in the config (rebuilt and
    evaluated again, for their zero-shot average)."""
    order = lambda r: (r["budget"], COST[r["method"]], r["blocks_removed"])  # noqa: E731
    todo = sorted((r for r in data["rows"] if "wikitext2" not in r), key=order)
    todo += sorted((r for r in data["rows"] if "wikitext2" in r and "zeroshot_avg" not in r), key=order)
    return [f"{r['variant']}/k{r['blocks_removed']}/*" for r in todo]


def main() -> None:
    def build(run: Path) -> dict:
        return merge_committed_rows(collect(run), RESULTS / "recovery_gemma3_270m.json",
                                    lambda r: (r["variant"], r["blocks_removed"]), "wikitext2")

    run_table_cli(__doc__, "recovery_gemma3_270m", "recovery-gemma3-270m", build, pending, markdown, plot)


if __name__ == "__main__":
    main()
