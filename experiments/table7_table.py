"""Table 7 of Shortened LLaMA (calibration volume) from a (partial) run of examples/table7_calibration.yaml.

Reads ``runs/table7-calibration/<criterion>-n<N>/k<K>/`` (``pruned/pruning.json`` for the blocks chosen,
``eval.json`` for PPL and the zero-shot average) and writes ``docs/results/table7_calibration.{md,json}``. Rows
the run directory lacks keep their committed figures (runs/ is not committed), so the table grows across
sittings: run a part with ``depthprune run examples/table7_calibration.yaml --only 'ppl-n10/*'``, then this.

    python experiments/table7_table.py [--run runs/table7-calibration]
"""

from __future__ import annotations

import json
from pathlib import Path

from _common import RESULTS, merge_committed_rows, run_table_cli
from recovery_table import zeroshot_summary

ROOT = Path(__file__).resolve().parent.parent
CRITERIA = ("ppl", "taylor+")
SAMPLES = (10, 50, 100, 1000)
TARGETS = (4, 6)
NAME = "table7_calibration"


def stage_walls(run: Path) -> dict[str, float]:
    """Wall seconds of each finished stage of the run (``stages.json``), by stage id."""
    path = run / "stages.json"
    stages = json.loads(path.read_text())["stages"] if path.is_file() else {}
    return {sid: st["wall_s"] for sid, st in stages.items() if st.get("status") == "done" and st.get("wall_s")}


def collect(run: Path) -> dict:
    rows = []
    walls = stage_walls(run)
    for crit in CRITERIA:
        for n in SAMPLES:
            for k in TARGETS:
                tdir = run / f"{crit}-n{n}" / f"k{k}"
                row = {"criterion": crit, "samples": n, "blocks_removed": k}
                for what, sid in (("score_s", f"{crit}-n{n}/score"), ("eval_s", f"{crit}-n{n}/k{k}/eval")):
                    if sid in walls:
                        row[what] = walls[sid]
                scores = run / f"{crit}-n{n}" / "scores.json"
                if scores.is_file():
                    sc = json.loads(scores.read_text())
                    row["scores"] = sc["scores"]
                    if "scoring_wall_s" in sc.get("metadata", {}):  # resumed: every sitting's share
                        row["score_s"] = sc["metadata"]["scoring_wall_s"]
                pruning, ev = tdir / "pruned" / "pruning.json", tdir / "eval.json"
                if pruning.is_file():
                    row["removed"] = sorted(json.loads(pruning.read_text())["removed_blocks"])
                if ev.is_file():
                    res = json.loads(ev.read_text())["results"][-1]
                    row |= {"wikitext2": res["ppl"]["wikitext2"]["ppl"], "ptb": res["ppl"]["ptb"]["ppl"]}
                    row |= zeroshot_summary(res.get("zeroshot"))
                rows.append(row)
    base = run / "base" / "eval.json"
    dense = json.loads(base.read_text())["results"][0] if base.is_file() else {}
    return {"dense": {d: v["ppl"] for d, v in dense.get("ppl", {}).items()} | zeroshot_summary(dense.get("zeroshot")),
            "rows": rows}


def cut_gap(row: dict) -> float | None:
    """Relative gap between the last candidate removed and the first kept (lower scores go first; "+" criteria
    never remove the first 4 and last 2 blocks): how close the selection is to flipping."""
    if "scores" not in row:
        return None
    s, k = row["scores"], row["blocks_removed"]
    allowed = range(4, len(s) - 2) if row["criterion"].endswith("+") else range(len(s))
    ranked = sorted(s[i] for i in allowed)
    return (ranked[k] - ranked[k - 1]) / abs(ranked[k - 1])


def verdicts(rows: list[dict]) -> list[str]:
    """Per criterion and target, whether the paper's finding holds: PPL picks the same blocks from 10 samples on,
    Taylor+ picks differently as the volume changes. Judged on the volumes measured so far (named in the line)."""
    out = []
    for crit in CRITERIA:
        for k in TARGETS:
            mine = [r for r in rows if r["criterion"] == crit and r["blocks_removed"] == k and "removed" in r]
            picks = {r["samples"]: tuple(r["removed"]) for r in mine}
            if len(picks) < 2:
                continue
            ns = sorted(picks)
            distinct = len(set(picks.values()))
            ppls = [r["wikitext2"] for r in mine if "wikitext2" in r]
            spread = f"; WikiText-2 {min(ppls):.1f}–{max(ppls):.1f}" if len(ppls) > 1 else ""
            if crit == "ppl":
                verdict = "holds" if distinct == 1 else ("holds partly" if picks[ns[-1]] == picks[ns[-2]]
                                                         else "does not hold here")
            else:
                verdict = "holds" if distinct == len(picks) else ("holds partly" if distinct > 1
                                                                  else "does not hold here")
            what = "the same blocks every time" if distinct == 1 else f"{distinct} different selections"
            gaps = {r["samples"]: cut_gap(r) for r in mine if cut_gap(r) is not None}
            why = (" Gap at the cut (last removed vs first kept score): "
                   + ", ".join(f"{n}: {100 * g:.2f}%" for n, g in sorted(gaps.items())) + ".") if gaps else ""
            out.append(f"- **{crit}, {k} blocks**, over {', '.join(map(str, ns))} samples: {what} "
                       f"({'; '.join(f'{n}: {list(picks[n])}' for n in ns)}){spread}. **{verdict}**.{why}")
    if out:
        out += ["", "Why: one-shot scores rank each block alone. The gap at the cut says how near the selection is "
                    "to a tie: where it is a fraction of a percent, another calibration sample can swap the blocks "
                    "at the cut, and sets of blocks that are near-tied one by one can differ a lot once removed "
                    "together (the WikiText-2 spread of each line)."]
    return out


def markdown(data: dict, run: Path) -> str:
    dense = data["dense"]
    lines = ["# Table 7: calibration volume (Gemma 3 270M, one-shot, no retraining)", "",
             "`depthprune run examples/table7_calibration.yaml` (the config's header has the settings and the "
             "expected time): 10 / 50 / 100 / 1000 calibration samples of 128 War-and-Peace tokens for the "
             "`ppl` and `taylor+` criteria, 4 and 6 of 18 blocks removed. PPL on the first 200 windows of 128 "
             "tokens of WikiText-2 / PTB; zero-shot: the paper's 7-task average (its metric per task) on the "
             "first 200 documents of each task, ± its standard error (bfloat16 where the CPU has native bf16, "
             "else float32, marked fp32). Dense: "
             + (f"{dense['wikitext2']:.2f} / {dense['ptb']:.2f}" if "wikitext2" in dense else
                "not evaluated in this run yet (42.39 / 213.64 on the same windows in recovery_gemma3_270m.md)")
             + (f", zero-shot {dense['zeroshot_avg']:.2f} ± {dense['zeroshot_se']:.2f}" if "zeroshot_avg" in dense
                else "") + ". A dash: not run yet (the run resumes; `--only` runs a part).", "",
             "Wall times on the shared 2-core CPU, one thread: scoring (once per criterion and volume, for both "
             "targets) and the evaluation of each pruned model (PPL + zero-shot; under a minute when another row "
             "removed the same blocks and its answers came from the run's caches).", "",
             "| criterion | samples | blocks removed | removed (0-based) | WikiText-2 | PTB | "
             "zero-shot avg (7 tasks) | scoring (min) | eval (min) |",
             "|---|---:|---:|---|---:|---:|---:|---:|---:|"]
    for r in data["rows"]:
        removed = ", ".join(map(str, r["removed"])) if "removed" in r else "–"
        ppl = f"{r['wikitext2']:.2f} | {r['ptb']:.2f}" if "wikitext2" in r else "– | –"
        zs = f"{r['zeroshot_avg']:.2f} ± {r['zeroshot_se']:.2f}" if "zeroshot_avg" in r else "–"
        zs += " (fp32)" if r.get("zeroshot_dtype") == "float32" else ""
        walls = " | ".join(f"{r[k] / 60:.1f}" if k in r else "–" for k in ("score_s", "eval_s"))
        lines.append(f"| {r['criterion']} | {r['samples']} | {r['blocks_removed']} | {removed} | {ppl} | {zs} "
                     f"| {walls} |")
    found = verdicts(data["rows"])
    if found:
        lines += ["", "Verdicts, on the volumes measured so far (the paper: the PPL criterion picks the same blocks "
                      "from 10 samples on; Taylor+ moves with the volume):", "", *found]
    lines += ["", f"Generated by `python experiments/table7_table.py --run {run}`."]
    return "\n".join(lines) + "\n"


def pending(data: dict) -> list[str]:
    """The score stage of variants measured before their per-block scores were kept (minutes to an hour each, for
    the gap at the cut); then the variants not evaluated yet."""
    todo = {(r["samples"], r["criterion"]) for r in data["rows"] if "wikitext2" not in r}
    rescore = {(r["samples"], r["criterion"]) for r in data["rows"] if "scores" not in r} - todo
    return [f"{c}-n{n}/score" for n, c in sorted(rescore)] + [f"{c}-n{n}/*" for n, c in sorted(todo)]


def main() -> None:
    def build(run: Path) -> dict:
        key = lambda r: (r["criterion"], r["samples"], r["blocks_removed"])  # noqa: E731
        fresh = collect(run)
        data = merge_committed_rows(fresh, RESULTS / f"{NAME}.json", key, "wikitext2")
        scores = {key(r): r["scores"] for r in fresh["rows"] if "scores" in r}
        for r in data["rows"]:  # a committed row gets the scores of a later rescoring
            if "scores" not in r and key(r) in scores:
                r["scores"] = scores[key(r)]
        return data

    run_table_cli(__doc__, NAME, "table7-calibration", build, pending, markdown)


if __name__ == "__main__":
    main()
