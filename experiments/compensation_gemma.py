"""``prune --compensate linear`` on Gemma 3 270M: WikiText-2 / PTB perplexity with and without compensation.

Blocks are chosen by the ``ppl`` criterion on the default calibration (10 War-and-Peace windows of 128
tokens), scored once with ``depthprune score`` and reused with ``prune --scores`` (the same removal as
``prune --criterion ppl --num-blocks K``, without scoring four times). Gemma's blocks end in
``post_feedforward_layernorm``, so the fit is a per-channel scale folded into that norm. The fit uses the
scoring calibration (10 windows) or 128 windows of the same source. PPL: first 200 windows of 128 tokens
(``depthprune eval ppl --limit 200``). The dense and uncompensated rows are the figures of
``docs/results/ppl_cache_gemma3_270m.json`` for the same removed blocks (checked below).

    python experiments/compensation_gemma.py --work runs/compensation_gemma      # ~1 h on 2 shared CPU cores

Resumable: finished checkpoints and measured perplexities are reused. Writes
``docs/results/compensation_gemma3_270m.{md,json}``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS  # noqa: E402

from depthprune.cli import main as cli  # noqa: E402

REFERENCE = {"dense": (42.39, 213.63), (9, 12, 14, 15): (295.43, 2043.86), (7, 8, 9, 12, 14, 15): (482.17, 2971.10)}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", default="runs/compensation_gemma")
    p.add_argument("--blocks", type=int, nargs="+", default=[4, 6])
    p.add_argument("--fit-samples", type=int, nargs="+", default=[10, 128])
    p.add_argument("--windows", type=int, default=200)
    p.add_argument("--no-docs", action="store_true")
    return p.parse_args()


COMMANDS: list[str] = []


def run(*argv, done: bool = False) -> None:
    """Record the command (every one that produced the results, also when reused) and run it unless ``done``."""
    argv = [str(a) for a in argv]
    COMMANDS.append("depthprune " + shlex.join(argv))
    if done:
        return
    print("+", COMMANDS[-1], flush=True)
    rc = cli(argv)
    if rc != 0:
        raise SystemExit(f"failed ({rc}): {COMMANDS[-1]}")


def ppl(model: Path, dataset: str, windows: int) -> float:
    out = model / f"ppl_{dataset}_{windows}.json"
    run("eval", "ppl", "--model", model, "--dataset", dataset, "--limit", windows, "--json", out, done=out.is_file())
    return json.loads(out.read_text())["ppl"]


def main() -> None:
    a = parse_args()
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    scores = work / "scores_ppl.json"
    run("score", "--criterion", "ppl", "--output", scores, done=scores.is_file())
    rows = [{"blocks": 0, "compensation": "dense", "wikitext2": REFERENCE["dense"][0], "ptb": REFERENCE["dense"][1],
             "source": "ppl_cache_gemma3_270m.json"}]
    for k in a.blocks:
        for n in a.fit_samples:
            out = work / f"k{k}_linear_{n}"
            extra = [] if n == 10 else ["--compensate-samples", n]
            run("prune", "--scores", scores, "--num-blocks", k, "--compensate", "linear", *extra, "--eval-windows", 0,
                "--output", out, "--overwrite", done=(out / "pruning.json").is_file())
            info = json.loads((out / "pruning.json").read_text())
            removed = tuple(info["removed_blocks"])
            if rows[-1].get("removed") != list(removed) and removed in REFERENCE:
                ref = REFERENCE[removed]
                rows.append({"blocks": k, "removed": list(removed), "compensation": "none",
                             "wikitext2": ref[0], "ptb": ref[1], "source": "ppl_cache_gemma3_270m.json"})
            comp = info["compensation"]
            rows.append({"blocks": k, "removed": list(removed), "compensation": f"linear, fit on {n} x 128 tokens",
                         "spans": [{"removed": s["removed"], "into": s["fused_into"],
                                    "relative_residual": round(s["relative_residual"], 4),
                                    "scale_range": [round(s["scale_min"], 3), round(s["scale_max"], 3)]}
                                   for s in comp["spans"]],
                         "fit_s": comp["wall_s"], "params": info["params_after"],
                         "wikitext2": ppl(out, "wikitext2", a.windows), "ptb": ppl(out, "ptb", a.windows)})
            print(json.dumps(rows[-1]), flush=True)
    lines = [
        "`prune --compensate linear` on Gemma 3 270M (per-channel scale folded into `post_feedforward_layernorm` "
        "of the block before each removed span; ridge 1e-4 towards the identity). Blocks removed by the `ppl` "
        "criterion on 10 War-and-Peace windows of 128 tokens; the fit uses 10 (the scoring calibration) or 128 "
        f"windows of 128 tokens of War and Peace. Perplexity on the first {a.windows} windows of 128 tokens. Dense "
        "and uncompensated rows: `docs/results/ppl_cache_gemma3_270m.json` (same removed blocks).",
        "",
        "| blocks removed | removed | compensation | fit residual after/before per span | WikiText-2 PPL | PTB PPL |",
        "|---:|---|---|---|---:|---:|",
    ]
    for r in rows:
        spans = ", ".join(f"{s['removed']}→{s['into']}: {s['relative_residual']}" for s in r.get("spans", []))
        lines.append(f"| {r['blocks']} | {r.get('removed', '—')} | {r['compensation']} | {spans or '—'} | "
                     f"{r['wikitext2']:.2f} | {r['ptb']:.2f} |")
    lines += ["", f"Commands (run by `python experiments/compensation_gemma.py --work {a.work}`; "
                  f"{time.perf_counter() - t0:.0f} s in its last invocation, finished steps reused):", "",
              "```"] + COMMANDS + ["```"]
    text = "\n".join(lines) + "\n"
    print(text)
    (work / "result.md").write_text(text)
    if not a.no_docs:
        (RESULTS / "compensation_gemma3_270m.md").write_text(text)
        (RESULTS / "compensation_gemma3_270m.json").write_text(json.dumps({"rows": rows, "commands": COMMANDS},
                                                                          indent=2) + "\n")


if __name__ == "__main__":
    main()
