"""The paper's 7-task zero-shot table on Gemma 3 270M: dense, ppl one-shot 4 and 6 blocks, iterative 4, 4 + CPT.

Each (model, task) is one ``depthprune eval zeroshot --resume`` process (full task set, FastHFLM, ``--dtype``
bfloat16 by default, ``--batch-size auto``) writing ``docs/results/zeroshot/<dtype>/<model>/<task>.json``; HellaSwag
(10,042 documents, ~2 h a model on one thread) runs as ``--docs`` shards of 1000 documents (``<task>.docsSTART-
END.json``, merged exactly by ``merge_scores`` once they tile the split). A finished file is skipped and an
interrupted one resumes from its answer cache (``.cache``, gitignored), so the table fills in over several sittings
and checkouts; every model's small tasks run before the sharded ones. Missing models are made first with the
commands below (the CPT recipe of docs/results/retrain_gemma3_270m.md). Then
``docs/results/zeroshot_gemma3_270m.md`` is written from whatever is finished (a model's average only once all 7
tasks are), with every (model, task) run in both dtypes compared. The dtype is bfloat16 on a CPU with native bf16
(AVX-512 BF16 / AMX: ~4.5x faster than float32 there) and float32 elsewhere (on an AVX2-only CPU emulated bf16
matmuls are ~7x slower than float32); the comparison shows whether bf16 accuracies stay within a standard error of
float32's.

    nice -n 10 python experiments/zeroshot_tables.py                 # many hours on a 2-core CPU; rerun resumes
    python experiments/zeroshot_tables.py --report-only              # rewrite the Markdown from the JSON
    python experiments/zeroshot_tables.py --answer-counts            # add answer counts to older results (caches)
    python experiments/zeroshot_tables.py --models dense --tasks piqa,boolq   # a part
    python experiments/zeroshot_tables.py --dtype float32 --models dense     # one dtype, whatever the CPU
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

from _common import RESULTS

from depthprune.core.io import write_json_atomic
from depthprune.data.sources import find_data_file
from depthprune.evaluation.lm_eval_tasks.local_data import DATA_FILES
from depthprune.evaluation.zeroshot import PAPER_METRIC, PAPER_TASKS, SHORT_NAMES, TaskScore, merge_scores
from depthprune.models.placement import NATIVE_BF16, native_bf16_or_float32

ROOT = Path(__file__).resolve().parent.parent
OUT = RESULTS / "zeroshot"
RUNS = ROOT / "runs"
# label -> (model source, the commands that make it when missing)
MODELS: dict[str, tuple[str, list[list[str]]]] = {
    "dense": ("gemma-3-270m", []),
    "ppl-4": ("runs/p4", [["prune", "--criterion", "ppl", "--num-blocks", "4", "--output", "runs/p4"]]),
    "ppl-4+cpt20k": ("runs/p4-cpt", [["retrain", "cpt", "--model", "runs/p4", "--data", "c4_sample", "--seq-len",
                                      "256", "--batch-size", "4", "--micro-batch-size", "4", "--max-tokens",
                                      "20000", "--output", "runs/p4-cpt"]]),
    "ppl-6": ("runs/p6", [["prune", "--scores", "runs/p4/pruning.json", "--num-blocks", "6", "--output", "runs/p6"]]),
    "ppl-4-iterative": ("runs/i4", [["prune", "--criterion", "ppl", "--schedule", "iterative", "--num-blocks", "4",
                                     "--output", "runs/i4"]]),
}
ORDER = ("piqa", "boolq", "arc_easy", "arc_challenge", "openbookqa", "winogrande", "hellaswag")  # card's first
CARD = {"piqa": 67.7, "boolq": 61.4, "arc_easy": 57.7}  # Google's gemma-3-270m model card, zero-shot


def depthprune(args: list[str]) -> None:
    cmd = [sys.executable, "-m", "depthprune.cli", *args]
    print("$ depthprune " + " ".join(args), flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True)


def ensure_model(label: str) -> str:
    """The model's source, made first when missing, with the models its commands read (``--model``/``--scores``)."""
    source, make = MODELS[label]
    if make and not (ROOT / source / "config.json").exists():
        for args in make:
            for flag in ("--model", "--scores"):
                if flag in args:
                    needed = args[args.index(flag) + 1]
                    for other, (other_source, _) in MODELS.items():
                        if other != label and (needed == other_source or needed.startswith(other_source + "/")):
                            ensure_model(other)
            if not (ROOT / args[args.index("--output") + 1] / "config.json").exists():
                depthprune(args)
    return source


DTYPES = ("bfloat16", "float32")


SHARD_DOCS = {"hellaswag": 1000}  # documents per --docs shard: each ~10-15 min on one thread, committed as it ends


def evaluate(label: str, task: str, dtype: str, out: Path, docs: str | None = None) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    source = ensure_model(label)
    t0 = time.time()
    depthprune(["eval", "zeroshot", "--model", source, "--tasks", task, "--dtype", dtype, "--backend", "fast",
                "--batch-size", "auto", "--json", str(out), "--resume", *(["--docs", docs] if docs else [])])
    print(f"{label}/{task}{' ' + docs if docs else ''}: {time.time() - t0:.0f} s", flush=True)


def backfill_answer_counts(labels: list[str]) -> None:
    """Add ``answer_counts`` to committed results made before it existed, by replaying their answer caches: a
    result whose ``.cache`` is here is scored again from it (the model must be here too; nothing is built), its
    accuracy checked against the committed one, and only the counts copied in (wall times stay the first run's)."""
    for path in sorted(OUT.glob("*/*/*.json")):
        label, res = path.parent.name, json.loads(path.read_text())
        (task, score), = res["tasks"].items()
        cache, source = Path(str(path) + ".cache"), MODELS.get(label, ("",))[0]
        if label not in labels or score.get("answer_counts") is not None or not cache.is_dir() or \
                not (source == "gemma-3-270m" or (ROOT / source).exists()):
            continue
        tmp = path.with_name(path.name + ".replay.json")
        docs = score.get("docs")
        depthprune(["eval", "zeroshot", "--model", source, "--tasks", task, "--dtype", res["dtype"], "--backend",
                    "fast", "--batch-size", "auto", "--json", str(tmp), "--eval-cache", str(cache),
                    *(["--docs", f"{docs[0]}:{docs[1]}"] if docs else [])])
        again = json.loads(tmp.read_text())
        tmp.unlink()
        new = again["tasks"][task]
        if new["score"] != score["score"] or new["n"] != score["n"]:
            raise SystemExit(f"{path}: the replay scored {new['score']} on {new['n']} documents, the committed "
                             f"result {score['score']} on {score['n']}; not copying")
        score["answer_counts"] = new["answer_counts"]
        write_json_atomic(path, res)
        print(f"{path.relative_to(ROOT)}: answer counts {new['answer_counts']} "
              f"({again['requests_from_cache']} of {again['requests']} requests from the cache)", flush=True)


def shard_files(label: str, task: str, dtype: str) -> list[Path]:
    return sorted((OUT / dtype / label).glob(f"{task}.docs*.json"))


def wall_cell(r: dict) -> str:
    """Minutes; a run resumed from an earlier sitting's answer cache says so (its wall time is only the rest's)."""
    cached, total = r.get("requests_from_cache", 0), r.get("requests", 0)
    if cached and total:
        return f"{r['wall_s'] / 60:.1f} (resumed: {cached / total:.0%} of requests cached)"
    return f"{r['wall_s'] / 60:.1f}" + (" (resumed: only the final run's part)" if r.get("resumed") else "")


def merge_shards(label: str, task: str, dtype: str) -> dict | None:
    """The task's result over its finished shards (contiguous from document 0), as one result JSON; None if none."""
    files = shard_files(label, task, dtype)
    if not files:
        return None
    parts = [json.loads(f.read_text()) for f in files]
    merged = merge_scores([TaskScore(**p["tasks"][task]) for p in parts])
    wall = sum(p["wall_s"] for p in parts)
    counts = {k: sum(p.get(k, 0) for p in parts) for k in ("requests", "requests_from_cache")}
    return parts[0] | {"tasks": {task: asdict(merged)}, "average": merged.score, "wall_s": wall,
                       "shards": [f.name for f in files], "resumed": any(p.get("resumed") for p in parts)} | counts


def run_task(label: str, task: str, dtype: str) -> None:
    """One (model, task) on its full set: in one process, or for big tasks in committed --docs shards, merged."""
    out = OUT / dtype / label / f"{task}.json"
    if out.exists():
        return
    size = SHARD_DOCS.get(task)
    if size is None:
        evaluate(label, task, dtype, out)
        return
    while True:
        merged = merge_shards(label, task, dtype)
        start = 0 if merged is None else merged["tasks"][task]["n"]
        if merged is not None and merged["tasks"][task]["docs"] is None:  # the shards tile the split
            write_json_atomic(out, merged)
            return
        end = start + size
        evaluate(label, task, dtype, OUT / dtype / label / f"{task}.docs{start:05d}-{end:05d}.json", f"{start}:{end}")
        report()


def done_in_other_dtype(label: str, task: str, dtype: str) -> bool:
    """The full task already ran for this model in the other dtype: its long shards wait until the rest's are done."""
    return any((OUT / d / label / f"{task}.json").exists() for d in DTYPES if d != dtype)


def load(label: str, dtype: str) -> dict[str, dict]:
    """Each task's result JSON: the full set, else its finished shards merged (``docs`` then says how far)."""
    d = OUT / dtype / label
    out = {}
    for t in PAPER_TASKS:
        if (d / f"{t}.json").exists():
            out[t] = json.loads((d / f"{t}.json").read_text())
        elif (merged := merge_shards(label, t, dtype)) is not None:
            out[t] = merged
    return out


def full(res: dict, task: str) -> bool:
    return res[task]["tasks"][task].get("docs") is None


def pct(v, se) -> str:
    return "–" if v is None else f"{v * 100:.2f} ± {se * 100:.2f}" if se is not None else f"{v * 100:.2f}"


def score_table(dtype: str) -> list[str]:
    """The paper-metric table and the per-task detail for one dtype (empty when nothing ran in it)."""
    if not any(load(label, dtype) for label in MODELS):
        return []
    lines = [f"## {dtype}", "", "| model | " + " | ".join(SHORT_NAMES[t] for t in PAPER_TASKS) + " | Avg |",
             "|---|" + "---:|" * (len(PAPER_TASKS) + 1)]
    detail = []
    for label in MODELS:
        res = load(label, dtype)
        cells = ["–" if t not in res else f"{res[t]['tasks'][t]['score'] * 100:.2f}" + ("" if full(res, t) else "*")
                 for t in PAPER_TASKS]
        scores = [res[t]["tasks"][t]["score"] for t in PAPER_TASKS if t in res and full(res, t)]
        avg = f"**{sum(scores) / len(scores) * 100:.2f}**" if len(scores) == len(PAPER_TASKS) else "–"
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {avg} |")
        for t, r in res.items():
            s = r["tasks"][t]
            n = f"{s['n']}" if full(res, t) else f"{s['n']} of {s['n_total']} (shards so far)"
            detail.append(f"| {label} | {SHORT_NAMES[t]} | {n} | {pct(s['acc'], s['acc_stderr'])} | "
                          f"{pct(s['acc_norm'], s['acc_norm_stderr'])} | {wall_cell(r)} |")
    if any(not full(load(label, dtype), t) for label in MODELS for t in load(label, dtype)):
        lines += ["", "\\* partial: the first documents of the split only (its finished `--docs` shards, merged "
                      "exactly; the rest runs in later sittings); not in the average."]
    return [*lines, "", f"Per task ({dtype}; %, ± standard error) and wall time on the shared 2-core CPU:", "",
            "| model | task | n | acc | acc_norm | wall (min) |", "|---|---|---:|---:|---:|---:|", *detail, ""]


def dtype_comparison() -> list[str]:
    """bfloat16 against float32 wherever the same (model, task) ran in both."""
    rows = []
    for label in MODELS:
        ref, low = load(label, "float32"), load(label, "bfloat16")
        for t in PAPER_TASKS:
            if t in ref and t in low and full(ref, t) and full(low, t):
                r, b = ref[t]["tasks"][t], low[t]["tasks"][t]
                for metric in ("acc", "acc_norm"):
                    if r.get(metric) is None or b.get(metric) is None:
                        continue
                    diff, se = (b[metric] - r[metric]) * 100, r[f"{metric}_stderr"] * 100
                    rows.append(f"| {label} | {SHORT_NAMES[t]} | {metric} | {r[metric] * 100:.2f} | "
                                f"{b[metric] * 100:.2f} | {diff:+.2f} | {se:.2f} | "
                                f"{'yes' if abs(diff) <= se else 'no'} | {ref[t]['wall_s'] / low[t]['wall_s']:.2f}x |")
    if not rows:
        return []
    return ["## bfloat16 against float32", "",
            "The same full task set in both dtypes (FastHFLM; bfloat16 weights and activations, float32 "
            "log-sum-exp). Speed is float32's wall time over bfloat16's on the shared CPU, so it moves with load.",
            "", "| model | task | metric | float32 | bfloat16 | diff | float32 SE | within 1 SE | speed |",
            "|---|---|---|---:|---:|---:|---:|---|---:|", *rows, ""]


def weights_notes() -> list[str]:
    """Which models' tasks were scored on weights that differ (each result records its model's fingerprint since
    2026-12-04: a model that a later sitting makes again, e.g. by retraining, must come out identical)."""
    notes = []
    for dtype in DTYPES:
        for label in MODELS:
            files = sorted((OUT / dtype / label).glob("*.json"))
            shas = {}
            for f in files:
                res = json.loads(f.read_text())
                for s in res["tasks"].values():
                    shas.setdefault(s.get("weights_sha256"), []).append(f.stem)
            known = {k: v for k, v in shas.items() if k}
            if len(known) > 1:
                notes.append(f"- **{label} ({dtype}) was scored on different weights**: " + "; ".join(
                    f"`{k[:12]}` for {', '.join(v)}" for k, v in known.items()) + ". Its average mixes models.")
            elif known and None in shas:
                notes.append(f"- {label} ({dtype}): weights `{next(iter(known))[:12]}` for "
                             f"{', '.join(next(iter(known.values())))}; {', '.join(shas[None])} predate fingerprints.")
    return ["Weights fingerprints (`weights_sha256` in each result):", "", *notes, ""] if notes else []


NEAR_CONSTANT = 0.95  # a model picking one option this often is flagged under the table


def constant_answers(task: str) -> tuple[float, dict[str, float]] | None:
    """A task's uniform-guess accuracy and the accuracy of always picking each option (%), from its local
    lm-eval-style file; options are named by their text where every document has the same ones (BoolQ)."""
    rel = next((f[0] for f in DATA_FILES[task] if f[0].startswith("commonsense/lm_eval_style/")), None)
    path = rel and find_data_file(rel)
    if path is None:
        return None
    docs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    options = [d.get("choices") or d["context_options"] for d in docs]
    same = all(o == options[0] for o in options)
    width = max(len(o) for o in options)
    shares = {(options[0][k] if same else f"option {k + 1}"): 100 * sum(d["gold"] == k for d in docs) / len(docs)
              for k in range(width)}
    return 100 * sum(1 / len(o) for o in options) / len(docs), shares


def baselines() -> list[str]:
    """Chance and constant-answer accuracies, and the (model, task) scores that equal a constant answer's."""
    rows, notes = [], []
    for t in PAPER_TASKS:
        ref = constant_answers(t)
        if ref is None:
            continue
        chance, shares = ref
        rows.append(f"| {SHORT_NAMES[t]} | {chance:.2f} | " + ", ".join(f"{k} {v:.2f}" for k, v in shares.items())
                    + " |")
        for dtype in DTYPES:
            for label in MODELS:
                res = load(label, dtype)
                if t in res and full(res, t):
                    s = res[t]["tasks"][t]
                    counts = s.get("answer_counts")
                    if counts:
                        if max(counts) >= NEAR_CONSTANT * s["n"]:
                            k = list(shares)[counts.index(max(counts))]
                            share = "every document" if max(counts) == s["n"] else \
                                f"{max(counts) / s['n']:.1%} of the documents"
                            notes.append(f"- {label} ({dtype}) {SHORT_NAMES[t]} {100 * s['score']:.2f}: it picks "
                                         f"'{k}' for {share} (answer counts {counts}).")
                        continue
                    for k, v in shares.items():  # equal counts of correct documents, not just close
                        if abs(s["score"] * s["n"] - v / 100 * s["n"]) < 0.5:
                            notes.append(f"- {label} ({dtype}) {SHORT_NAMES[t]} {100 * s['score']:.2f}: exactly the "
                                         f"score of always picking '{k}' (the same count of correct documents; a "
                                         "constant answer would explain it; this result predates answer counts).")
    if not rows:
        return []
    return ["## Reference: chance and constant answers", "",
            "Accuracy of a uniform guess and of always picking the same option, from the task files (a score at "
            "or below these carries no signal).", "", "| task | uniform guess | always the same option |",
            "|---|---:|---|", *rows, "", *notes, *([""] if notes else [])]


def report() -> None:
    lines = ["# Zero-shot, 7 commonsense tasks (Gemma 3 270M, full task sets)", "",
             "lm-eval 0.4 through `depthprune eval zeroshot` (FastHFLM backend, whose per-request answers equal "
             "lm-eval's HFLM: tests/test_zeroshot_fast.py), local task files over `../shared/data`, zero-shot, BOS "
             "before every request. Paper metric per task: "
             + ", ".join(f"{PAPER_METRIC[t]} for {SHORT_NAMES[t]}" for t in PAPER_TASKS)
             + ". Rows fill in as the runs finish; a dash is a task not yet run.", ""]
    for dtype in DTYPES:
        lines += score_table(dtype)
    lines += weights_notes()
    lines += dtype_comparison()
    lines += baselines()
    for dtype in DTYPES:
        dense = load("dense", dtype)
        if any(t in dense for t in CARD):
            lines += [f"Dense model ({dtype}) against Google's card for gemma-3-270m (zero-shot):", "",
                      "| task | card | here (paper metric) | gap | acc / acc_norm here |", "|---|---:|---:|---:|---|"]
            for t, card in CARD.items():
                if t in dense:
                    s = dense[t]["tasks"][t]
                    here = s["score"] * 100
                    lines.append(f"| {SHORT_NAMES[t]} | {card:.1f} | {here:.2f} | {here - card:+.2f} | "
                                 f"{pct(s['acc'], s['acc_stderr'])} / {pct(s['acc_norm'], s['acc_norm_stderr'])} |")
            lines.append("")
    lines += ["Models: " + "; ".join(f"**{k}** `{v[0]}`" + (" from `depthprune " + " ".join(v[1][0]) + "`"
                                                             if v[1] else "") for k, v in MODELS.items()),
              "", "A model missing from `runs/` (which does not survive sittings here) is made again by its command: "
                  "pruning keeps the same weights, and retraining is bit-reproducible on this CPU "
                  "(2026-12-04: 2 CPT steps on 1 and on 2 threads, run twice, gave identical weights), and each "
                  "result records its model's weights fingerprint so that a difference would be flagged above (a whole "
                  "recovery unit rerun in a later sitting matched its PPL to 1e-7 relative, not bit for bit: "
                  "docs/results/recovery_gemma3_270m.json, 4-block compensate+KD 20k). ppl-4+cpt20k, whose six "
                  "small tasks predate fingerprints, was remade on 2026-12-07 on another machine (Intel Xeon with "
                  "AMX) for its HellaSwag shards; its WikiText-2 / PTB PPL on the first 200 windows of 128 tokens, "
                  "113.42 / 626.76, equals that of the same recipe's model of an earlier sitting "
                  "(docs/results/quantization_gemma3_270m.md) to two decimals.",
              "", "Reproduce: `nice -n 10 python experiments/zeroshot_tables.py` (bfloat16 on a CPU with native bf16, "
                  "float32 elsewhere; `--dtype` to choose; resumes; `--report-only` rewrites this file)."]
    path = RESULTS / "zeroshot_gemma3_270m.md"
    path.write_text("\n".join(lines) + "\n")
    print(f"wrote {path}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=",".join(MODELS), help="labels, comma-separated")
    p.add_argument("--tasks", default=",".join(ORDER), help="in the order run (the card's tasks first)")
    p.add_argument("--dtype", default=NATIVE_BF16, choices=(NATIVE_BF16, *DTYPES),
                   help="default: bfloat16 on a CPU with native bf16 (AVX-512 BF16 / AMX), float32 elsewhere "
                        "(emulated bf16 is ~7x slower than float32 on AVX2-only CPUs)")
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--answer-counts", action="store_true",
                   help="only add answer counts to committed results that lack them, replayed from their caches")
    a = p.parse_args()
    if a.answer_counts:
        backfill_answer_counts(a.models.split(","))
        a.report_only = True
    if a.dtype == NATIVE_BF16:
        a.dtype = native_bf16_or_float32("cpu")
        print(f"dtype: {a.dtype} (native bf16 on this CPU: {a.dtype == 'bfloat16'})", flush=True)
    if not a.report_only:
        tasks = a.tasks.split(",")
        labels = a.models.split(",")
        for sharded in (False, True):  # every model's small tasks first, then the long, sharded ones
            for label in sorted(labels, key=lambda m: sharded and all(done_in_other_dtype(m, t, a.dtype)
                                                                           for t in tasks if t in SHARD_DOCS)):
                for task in tasks:
                    if (task in SHARD_DOCS) == sharded:
                        run_task(label, task, a.dtype)
                        report()
    report()


if __name__ == "__main__":
    main()
