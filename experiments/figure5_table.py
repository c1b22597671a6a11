"""Figure 5 of Shortened LLaMA (pruned vs random initialisation) from a (partial) run of examples/figure5_init.yaml.

Reads ``runs/figure5-init/<variant>/eval.json`` (``evaluate.every_stage``: the model after every 25k-token CPT
chunk) and each chunk's ``retrain.json`` (tokens seen), and writes ``docs/results/figure5_init.{md,json,png}``:
perplexity against training tokens for both initialisations. A variant the run directory lacks keeps its
committed figures, so the two variants can run in different sittings:

    depthprune run examples/figure5_init.yaml --only 'pruned-init/*'    # ~1 h 10 min on 2 idle cores
    depthprune run examples/figure5_init.yaml --only 'random-init/*'
    python experiments/figure5_table.py [--run runs/figure5-init]

Accuracy where affordable: the last chunk's model of each variant scored on the paper's 7 tasks (first 200
documents each) into ``docs/results/figure5_zeroshot/<variant>.json``, e.g.

    depthprune eval zeroshot --model runs/figure5-init/pruned-init/retrained/4-cpt --limit 200 \
        --json docs/results/figure5_zeroshot/pruned-init.json
"""

from __future__ import annotations

import json
from pathlib import Path

from _common import RESULTS, run_table_cli
from paper_tables import constant_answer_tasks, stage_walls
from recovery_table import zeroshot_summary

from depthprune.core.figures import plt, save_figure

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = {"pruned-init": "pruned initialisation", "random-init": "random initialisation"}
NAME = "figure5_init"
ZEROSHOT = RESULTS / "figure5_zeroshot"
UNIFORM_GUESS = 35.7  # the 7-task average of picking an option uniformly at random (paper_zeroshot_gemma3_270m.md)


def untrained_zeroshot() -> dict | None:
    """Table 3's none/k6 row (the same PPL-criterion 6-block selection, no retraining), when it is committed."""
    f = RESULTS / "paper_zeroshot_gemma3_270m.json"
    rows = json.loads(f.read_text())["3"]["rows"] if f.is_file() else []
    return next((r for r in rows if (r["variant"], r["target"]) == ("none", "k6") and "zeroshot_avg" in r), None)


def constant_tasks(variant: str) -> list[str]:
    """Tasks on which the variant's last model picked the same option for every document."""
    f = ZEROSHOT / f"{variant}.json"
    return constant_answer_tasks(json.loads(f.read_text())["tasks"] if f.is_file() else {})


def collect(run: Path) -> dict:
    rows = []
    for variant in VARIANTS:
        ev = run / variant / "eval.json"
        if not ev.is_file():
            rows.append({"variant": variant, "label": "pruned", "tokens": 0})
            continue
        tokens = 0
        for res in json.loads(ev.read_text())["results"]:
            info = run / variant / res["label"] / "retrain.json"
            if res["label"] != "pruned":
                result = json.loads(info.read_text())["result"]
                tokens += result["tokens_seen"]
            elif variant == "random-init":
                continue  # its starting point is the random model of the first chunk, not the pruned one
            rows.append({"variant": variant, "label": res["label"], "tokens": tokens,
                         "wikitext2": res["ppl"]["wikitext2"]["ppl"], "ptb": res["ppl"]["ptb"]["ppl"],
                         "wall_s": json.loads(info.read_text())["result"]["wall_s"] if info.is_file() else 0.0})
    base = run / "base" / "eval.json"
    dense = json.loads(base.read_text())["results"][0] if base.is_file() else {}
    walls = stage_walls(run)
    totals = {v: sum(w for k, w in walls.items() if k.startswith(f"{v}/")) for v in VARIANTS}
    return {"dense": {d: v["ppl"] for d, v in dense.get("ppl", {}).items()}, "rows": rows,
            "variant_wall_s": {v: w for v, w in totals.items() if w}}


def merge(data: dict, committed: Path) -> dict:
    """Per variant: this run's rows when it has the variant's evaluation, else the committed ones."""
    if not committed.is_file():
        return data
    old = json.loads(committed.read_text())
    have = {r["variant"] for r in data["rows"] if "wikitext2" in r}
    rows = [r for r in data["rows"] if r["variant"] in have] + [r for r in old["rows"] if r["variant"] not in have]
    rows.sort(key=lambda r: list(VARIANTS).index(r["variant"]))  # stable: each variant's rows keep their order
    walls = {v: w for v, w in old.get("variant_wall_s", {}).items() if v not in have}
    walls |= {v: w for v, w in data.get("variant_wall_s", {}).items() if v in have}
    return {"dense": old.get("dense", {}) | data["dense"], "rows": rows, "variant_wall_s": walls}


def with_zeroshot(data: dict) -> dict:
    """Each variant's last row with the 7-task average of its committed zero-shot file, when there is one."""
    for variant in VARIANTS:
        f = ZEROSHOT / f"{variant}.json"
        rows = [r for r in data["rows"] if r["variant"] == variant and "wikitext2" in r]
        if f.is_file() and rows:
            max(rows, key=lambda r: r["tokens"]).update(zeroshot_summary(json.loads(f.read_text())))
    return data


def verdicts(data: dict) -> list[str]:
    """The paper's finding (the pruned network trained on reaches a lower PPL than the same architecture from
    random weights at equal tokens) checked at every token count both variants reached, and why."""
    by = {v: {r["tokens"]: r for r in data["rows"] if r["variant"] == v and "wikitext2" in r} for v in VARIANTS}
    pruned, rand = by["pruned-init"], by["random-init"]
    shared = sorted(set(pruned) & set(rand))
    if not shared:
        return ["Verdict: pending (both initialisations must reach a common token count)."]
    wins = [t for t in shared if all(pruned[t][d] < rand[t][d] for d in ("wikitext2", "ptb"))]
    word = "holds" if len(wins) == len(shared) else "holds partly" if wins else "does not hold here"
    last = shared[-1]
    out = [f"- **Pruned initialisation beats random initialisation at equal tokens: {word}** — lower WikiText-2 and "
           f"PTB PPL at {len(wins)} of {len(shared)} token counts; at {last:,} tokens "
           f"{pruned[last]['wikitext2']:.2f} vs {rand[last]['wikitext2']:.2f} (WikiText-2), "
           f"{pruned[last]['ptb']:.2f} vs {rand[last]['ptb']:.2f} (PTB)."]
    start = pruned.get(0)
    if start is not None:
        beaten = [t for t in sorted(rand) if rand[t]["wikitext2"] <= start["wikitext2"]]
        out.append(f"- **Faster convergence**: the pruned model before any training ({start['wikitext2']:.2f}) is "
                   + (f"matched by random initialisation after {beaten[0]:,} tokens." if beaten else
                      f"not matched by random initialisation within {max(rand):,} tokens "
                      f"(its best: {min(r['wikitext2'] for r in rand.values()):.2f})."))
    zs = {v: next((r for r in by[v].values() if "zeroshot_avg" in r), None) for v in VARIANTS}
    if all(zs.values()):
        p, r = zs["pruned-init"], zs["random-init"]
        before = untrained_zeroshot()
        constant = {v: constant_tasks(v) for v in VARIANTS}
        out.append(f"- **Accuracy** (7-task average, first {p['zeroshot_docs']} documents per task, last chunk): "
                   f"pruned {p['zeroshot_avg']:.2f} ± {p['zeroshot_se']:.2f}, random {r['zeroshot_avg']:.2f} ± "
                   f"{r['zeroshot_se']:.2f} (a uniform guess: {UNIFORM_GUESS})"
                   + (f"; the same 6-block model before CPT: {before['zeroshot_avg']:.2f} ± {before['zeroshot_se']:.2f}"
                      " (Table 3's none/k6 row, same criterion and calibration)" if before else "")
                   + "".join(f"; {VARIANTS[v]} gives one answer to every document of {', '.join(c)}"
                             for v, c in constant.items() if c) + ".")
    first, end = min(rand), max(rand)
    trained = {t: r for t, r in pruned.items() if t}
    best = min(trained, key=lambda t: trained[t]["wikitext2"]) if trained else None
    drift = (f" The pruned model's WikiText-2 PPL was lowest after {best:,} tokens ({trained[best]['wikitext2']:.2f}) "
             f"and ended at {trained[max(trained)]['wikitext2']:.2f} while its PTB PPL went "
             f"{trained[min(trained)]['ptb']:.2f} → {trained[max(trained)]['ptb']:.2f}: at a constant learning rate "
             "with 4 sequences per step the chunks after the first mostly trade one domain for another (C4 is "
             "neither WikiText nor PTB) rather than converge." if best is not None and best != max(trained) else "")
    out += ["", "Why: the pruned model keeps 12 pretrained blocks and the pretrained 262k-token embedding (most of "
            "its parameters), so CPT only has to repair the junctions where blocks were removed; random weights "
            "have to learn language from the CPT tokens alone. Random initialisation moved WikiText-2 from "
            f"{rand[first]['wikitext2']:,.0f} to {rand[end]['wikitext2']:,.0f} over {end - first:,} tokens; "
            "the paper trains both for billions of tokens, and a budget this small cannot show whether the gap "
            "closes with far more data." + drift]
    return out


def plot(data: dict, path: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, ds in zip(axes, ("wikitext2", "ptb")):
        for variant, name in VARIANTS.items():
            pts = sorted((r["tokens"], r[ds]) for r in data["rows"] if r["variant"] == variant and ds in r)
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
        if ds in data["dense"]:
            ax.axhline(data["dense"][ds], color="k", ls=":", label="dense (18 blocks)")
        ax.xaxis.set_major_formatter(lambda x, _: f"{x / 1000:.0f}k")
        ax.set(title=f"{ds}: 12-block Gemma 3 270M, CPT", xlabel="training tokens", ylabel="PPL", yscale="log")
        ax.legend(fontsize=8)
    save_figure(fig, path)


def markdown(data: dict, run: Path) -> str:
    dense = data["dense"]
    lines = ["# Figure 5: pruned vs random initialisation (Gemma 3 270M, 6 of 18 blocks removed, CPT)", "",
             "`depthprune run examples/figure5_init.yaml` (settings and expected time in its header): the 12-block "
             "model left by removing 6 blocks (`ppl`, one-shot) and the same architecture with every weight drawn "
             "afresh, each trained on the same C4 tokens in 25k-token chunks at a constant learning rate and "
             "evaluated after every chunk (PPL on the first 200 windows of 128 tokens). Dense: "
             f"{dense.get('wikitext2', float('nan')):.2f} / {dense.get('ptb', float('nan')):.2f}.", "",
             "| initialisation | training tokens | WikiText-2 | PTB | zero-shot avg (7 tasks) | chunk wall (min) |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in data["rows"]:
        if "wikitext2" not in r:
            lines.append(f"| {VARIANTS[r['variant']]} | – | – | – | – | – |")
            continue
        zs = (f"{r['zeroshot_avg']:.2f} ± {r['zeroshot_se']:.2f} ({r.get('zeroshot_dtype') or '?'})"
              if "zeroshot_avg" in r else "–")
        lines.append(f"| {VARIANTS[r['variant']]} | {r['tokens']:,} | {r['wikitext2']:.2f} | {r['ptb']:.2f} | {zs} | "
                     f"{r['wall_s'] / 60:.1f} |")
    walls = data.get("variant_wall_s", {})
    if walls:
        lines += ["", "Wall time per variant (scoring, pruning, the 4 CPT chunks and the evaluation of every model, "
                      "one thread on the shared 2-core CPU): " +
                  ", ".join(f"{name} {walls[v] / 60:.0f} min" for v, name in VARIANTS.items() if v in walls) +
                  "; the zero-shot scoring of each last model is in its JSON (`wall_s`) under `figure5_zeroshot/`."]
    lines += ["", f"![PPL vs training tokens]({NAME}.png)", "",
              "Verdict (the paper: CPT of the pruned network converges faster and to a better model than the same "
              "architecture trained from random weights):", "", *verdicts(data), "",
              f"Generated by `python experiments/figure5_table.py --run {run}`."]
    return "\n".join(lines) + "\n"


def pending(data: dict) -> list[str]:
    return [f"{v}/*" for v in VARIANTS if not any(r["variant"] == v and "wikitext2" in r for r in data["rows"])]


def main() -> None:
    def build(run: Path) -> dict:
        return with_zeroshot(merge(collect(run), RESULTS / f"{NAME}.json"))

    run_table_cli(__doc__, NAME, "figure5-init", build, pending, markdown, plot)


if __name__ == "__main__":
    main()
