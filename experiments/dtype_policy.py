"""bfloat16 vs float32 on this CPU (AVX-512 BF16): do scores, selections, perplexity and training agree?

On Gemma 3 270M, in a fresh process per dtype: every criterion's block scores (War and Peace, 10 x 128) and the
blocks it removes at K = 2, 4, 6 ("+" variants from the same scores with the first 4 / last 2 protected), the
WikiText-2 / PTB perplexity on the first 64 windows of 128 tokens, wall times and peak RSS; and a short CPT loss
curve (8 steps, C4 sample, seq 256, batch 4) with float32 weights without and with bf16 autocast. Writes
docs/results/dtype_gemma3_270m.{json,md}; resumable (finished parts are kept in the JSON).

    python experiments/dtype_policy.py
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import RESULTS, PeakRSS

CRITERIA = ["magnitude", "taylor", "ppl", "block_influence", "angular"]
KS = (2, 4, 6)
OUT = RESULTS / "dtype_gemma3_270m"


def score_part(dtype: str) -> dict:
    import depthprune as dp
    from depthprune.models import block_params, count_params
    from depthprune.pruning import Target, select_blocks

    with PeakRSS() as mem:
        model, tok = dp.load("gemma-3-270m", dtype=dtype, device="cpu")
        out = {"criteria": {}, "ppl": {}}
        params, total = block_params(model), count_params(model)
        for crit in CRITERIA:
            t0 = time.perf_counter()
            s = dp.score(model, tok, criterion=crit, calibration="war_and_peace", samples=10, progress=False)
            entry = {"scores": s.scores, "wall_s": time.perf_counter() - t0, "removed": {}}
            for plus in ("", "+"):
                if plus and crit not in ("magnitude", "taylor"):
                    continue
                protect = (4, 2) if plus else (0, 0)
                for k in KS:
                    sel = select_blocks(s, params, total, Target(num_blocks=k), *protect)
                    entry["removed"][f"{crit}{plus}/k{k}"] = sel.removed
            out["criteria"][crit] = entry
        for ds in ("wikitext2", "ptb"):
            r = dp.perplexity(model, tok, dataset=ds, limit=64, progress=False)
            out["ppl"][ds] = {"ppl": r.ppl, "wall_s": r.wall_s, "tokens_per_s": r.tokens_per_s}
    out["peak_rss_gib"] = mem.peak / 2**30
    return out


def train_part(mixed: str) -> dict:
    import depthprune as dp

    work = Path(tempfile.mkdtemp(prefix="dtype-cpt-"))
    t0 = time.perf_counter()
    dp.retrain("gemma-3-270m", kind="cpt", data="c4_sample", seq_len=256, batch_size=4, micro_batch_size=2,
               max_steps=8, warmup_steps=1, log_every=1, save_every=0, mixed_precision=mixed, device="cpu",
               progress=False, output=str(work / "run"))
    log = [json.loads(line) for line in (work / "run" / "train_log.jsonl").read_text().splitlines()]
    return {"losses": [r["loss"] for r in log], "tokens_per_s": [r["tokens_per_s"] for r in log],
            "wall_s": time.perf_counter() - t0}


def agreement(a: dict, b: dict) -> list[str]:
    rows = []
    for crit in CRITERIA:
        sa, sb = a["criteria"][crit], b["criteria"][crit]
        rel = max(abs(x - y) / max(abs(x), 1e-12) for x, y in zip(sa["scores"], sb["scores"]))
        same = [key for key in sa["removed"] if sa["removed"][key] == sb["removed"][key]]
        differ = [f"{key}: {sa['removed'][key]} vs {sb['removed'][key]}" for key in sa["removed"]
                  if sa["removed"][key] != sb["removed"][key]]
        rows.append(f"| {crit} | {rel:.2e} | {len(same)}/{len(sa['removed'])} | {'; '.join(differ) or '–'} | "
                    f"{sa['wall_s']:.1f} / {sb['wall_s']:.1f} |")
    return rows


def render(res: dict) -> str:
    a, b = res["score/float32"], res["score/bfloat16"]
    lines = ["# bfloat16 vs float32 on the CPU (Gemma 3 270M)", "",
             "`python experiments/dtype_policy.py`; each part in a fresh process on the shared 2-core CPU "
             "(AVX-512 BF16).", "",
             "| criterion | max rel. score diff | same blocks removed (K=2,4,6, and +) | differences | "
             "scoring s fp32 / bf16 |", "|---|---:|---:|---|---:|", *agreement(a, b), "",
             "| | float32 | bfloat16 |", "|---|---:|---:|"]
    for ds in ("wikitext2", "ptb"):
        lines.append(f"| {ds} PPL (64 windows) | {a['ppl'][ds]['ppl']:.3f} | {b['ppl'][ds]['ppl']:.3f} |")
        lines.append(f"| {ds} tokens/s | {a['ppl'][ds]['tokens_per_s']:.0f} | {b['ppl'][ds]['tokens_per_s']:.0f} |")
    lines.append(f"| peak RSS (load, score, PPL) GiB | {a['peak_rss_gib']:.2f} | {b['peak_rss_gib']:.2f} |")
    if "train/no" in res and "train/bf16" in res:
        n, m = res["train/no"], res["train/bf16"]
        lines += ["", "CPT, 8 steps of 4 x 256 tokens, float32 weights (`--mixed-precision no` vs `bf16`):", "",
                  "| step | loss fp32 | loss bf16 autocast |", "|---:|---:|---:|"]
        lines += [f"| {i + 1} | {x:.4f} | {y:.4f} |" for i, (x, y) in enumerate(zip(n["losses"], m["losses"]))]
        tps = [sum(r["tokens_per_s"][1:]) / max(1, len(r["tokens_per_s"]) - 1) for r in (n, m)]
        lines.append(f"| tokens/s (steps 2-8) | {tps[0]:.0f} | {tps[1]:.0f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--part", default=None)
    args = ap.parse_args()
    if args.part:
        kind, value = args.part.split("/")
        print(json.dumps(score_part(value) if kind == "score" else train_part(value)))
        return
    path = OUT.with_suffix(".json")
    res = json.loads(path.read_text()) if path.is_file() else {}
    for part in ("score/float32", "score/bfloat16", "train/no", "train/bf16"):
        if part in res:
            continue
        proc = subprocess.run([sys.executable, __file__, "--part", part], capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(f"{part} failed:\n{proc.stderr[-3000:]}")
        res[part] = json.loads(proc.stdout.strip().splitlines()[-1])
        path.write_text(json.dumps(res, indent=2) + "\n")
        print(f"{part}: done", file=sys.stderr, flush=True)
    OUT.with_suffix(".md").write_text(render(res))
    print(render(res))


if __name__ == "__main__":
    main()
