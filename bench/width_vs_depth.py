"""Width vs depth pruning on the embedded model (the paper's Table 2 at this scale), no retraining.

At the parameter counts of K = 4 and 6 blocks removed by depth pruning, compares depth pruning (taylor+,
ppl) with the width baselines (wanda-sp, taylor-sp: fewer heads / MLP channels in every block, --round-to 8,
target = the depth-pruned model's exact parameter count). Reports parameters, WikiText-2 and PTB perplexity
on the first 200 windows of 128 tokens, and batch-1 latency / throughput (12 input tokens, L = 128 new
tokens, greedy, 10 warm-up runs then the mean of 20; depthprune.speed.measure_setting).
Calibration: War and Peace, 10 x 128 tokens, seed 0 (as bench/criteria_table.py, whose PPL cache it shares
when run with the default 200 windows). Writes <results-dir>/width_vs_depth_gemma3_270m.md and .json.
Resumable for perplexities; latencies are measured again on every run.

    python bench/width_vs_depth.py                      # full run (roughly 30-60 min on 2 CPU cores)
    python bench/width_vs_depth.py --windows 2 --levels 4 --warmup 0 --runs 1 --new-tokens 8 \\
        --calib-samples 2 --results-dir /tmp/wvd        # smoke run
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import gc
import json
import sys
import time
from pathlib import Path

from _common import RESULTS, WINDOWS, PPLCache, paper_windows

from depthprune.data import CalibrationSpec, build_calibration
from depthprune.importance import score_model
from depthprune.models import block_params, count_params, load_model
from depthprune.pruning import Target, blocks_removed, resolve_protection, select_blocks
from depthprune.pruning.width import plan_width, prune_width, score_width
from depthprune.speed import make_prompt, measure_setting

DEPTH = ["taylor+", "ppl"]
WIDTH = ["wanda-sp", "taylor-sp"]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="gemma-3-270m")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--levels", default="4,6", help="depth-pruned block counts whose parameter counts are matched")
    p.add_argument("--windows", type=int, default=WINDOWS, help="perplexity windows of 128 tokens per dataset")
    p.add_argument("--calib-samples", type=int, default=10)
    p.add_argument("--round-to", type=int, default=8)
    p.add_argument("--input-tokens", type=int, default=12)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--no-speed", action="store_true",
                   help="perplexities only (e.g. while other jobs load the CPU); rerun without it for the speed")
    p.add_argument("--speed-only", action="store_true",
                   help="measure the speed of the rows of an earlier --no-speed run (models rebuilt from its JSON: "
                        "removed blocks / kept heads and channels), without scoring or perplexity again")
    p.add_argument("--results-dir", type=Path, default=RESULTS)
    return p.parse_args(argv)


def speed(model, prompt, args) -> dict:
    if args.no_speed:
        return {"latency_s": None, "throughput": None, "speed_status": "not measured (--no-speed)"}
    rec = measure_setting(model, prompt, 1, args.new_tokens, args.warmup, args.runs)
    if rec["status"] != "ok":
        return {"latency_s": None, "throughput": None, "speed_status": rec["status"]}
    return {"latency_s": rec["latency_mean_s"], "throughput": rec["throughput_tok_s"], "timer": rec["timer"]}


def _check_rebuilt(model, row: dict, path: Path) -> None:
    if count_params(model) != row["params"]:
        raise SystemExit(f"the rebuilt {row['criterion']} K={row['level']} model differs from {path}: "
                         "rerun with --no-speed")


def speed_only(args) -> int:
    """Fill in the latency/throughput of the rows of an earlier run, rebuilding each model from its JSON."""
    from depthprune.models.width_layout import model_dims
    from depthprune.pruning.width_surgery import BlockKeep, apply_width

    path = args.results_dir / "width_vs_depth_gemma3_270m.json"
    if not path.is_file():
        raise SystemExit(f"--speed-only needs {path} from an earlier run: run `python bench/width_vs_depth.py "
                         f"--no-speed --results-dir {args.results_dir}` first")
    if args.no_speed:
        raise SystemExit("--speed-only and --no-speed exclude each other: pick one")
    old = json.loads(path.read_text())
    lm = load_model(args.model, dtype="float32", device=args.device)
    model, tok = lm.model, lm.tokenizer
    prompt = make_prompt(tok, args.input_tokens, model.config.vocab_size)
    before = model_dims(model)
    rows = []
    for r in old["rows"]:
        if r["method"] == "width":
            pruned = copy.deepcopy(model)
            keeps = [BlockKeep(k["heads"], k["kv_heads"], k["channels"]) for k in r["kept"]]
            after = dataclasses.replace(before, heads=len(keeps[0].heads), kv_heads=len(keeps[0].kv_heads),
                                        channels=len(keeps[0].channels))
            apply_width(pruned, keeps, before, after)
            _check_rebuilt(pruned, r, path)
            rows.append(r | speed(pruned, prompt, args))
            del pruned
            gc.collect()
        else:
            removed = json.loads(r["shape"].removeprefix("removed ")) if r["method"] == "depth" else []
            with blocks_removed(model, removed):
                _check_rebuilt(model, r, path)
                rows.append(r | speed(model, prompt, args))
        print(f"{r['method']} {r['criterion']} K={r['level']}: {rows[-1]['latency_s']} s", flush=True)
    write(rows, old["score_seconds"], args)
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.speed_only:
        return speed_only(args)
    levels = [int(x) for x in args.levels.split(",")]
    args.results_dir.mkdir(parents=True, exist_ok=True)
    lm = load_model(args.model, dtype="float32", device=args.device)
    model, tok = lm.model, lm.tokenizer
    calib = build_calibration(tok, CalibrationSpec("war_and_peace", args.calib_samples, 128, 0))
    windows = paper_windows(tok, args.windows)
    suffix = "" if (args.windows, args.calib_samples) == (WINDOWS, 10) else f"_w{args.windows}_c{args.calib_samples}"
    cache = PPLCache(args.results_dir / f"ppl_cache_gemma3_270m{suffix}.json")
    prompt = make_prompt(tok, args.input_tokens, model.config.vocab_size)
    total, bparams = count_params(model), block_params(model)
    rows = [{"method": "dense", "criterion": "-", "level": 0, "shape": f"{len(bparams)} blocks", "params": total,
             **cache.get("dense", model, windows), **speed(model, prompt, args)}]
    times = {}
    depth_scores = {}
    for crit in DEPTH:
        base = crit.rstrip("+")
        t0 = time.perf_counter()
        depth_scores[crit] = score_model(model, base, calib)
        times[crit] = time.perf_counter() - t0
    width_scores = {}
    for crit in WIDTH:
        width_scores[crit] = score_width(model, crit, calib)
        times[crit] = width_scores[crit].wall_s
    print("scoring seconds: " + ", ".join(f"{k}={v:.1f}" for k, v in times.items()), flush=True)
    for k in levels:
        matched = None
        for crit in DEPTH:
            sel = select_blocks(depth_scores[crit], bparams, total, Target(num_blocks=k),
                                *resolve_protection(crit, None, None))
            matched = sel.params_after if matched is None else matched
            with blocks_removed(model, sel.removed):
                ppl = cache.get("remove:" + ",".join(map(str, sel.removed)), model, windows)
                rows.append({"method": "depth", "criterion": crit, "level": k, "shape": f"removed {sel.removed}",
                             "params": sel.params_after, **ppl, **speed(model, prompt, args)})
        for crit in WIDTH:
            plan = plan_width(model, Target(target_params=matched), round_to=args.round_to)
            pruned = copy.deepcopy(model)
            res = prune_width(pruned, width_scores[crit], plan)
            a = plan.after
            key = f"width:{crit}:params={plan.params_after}:round{args.round_to}"
            rows.append({"method": "width", "criterion": crit, "level": k,
                         "shape": f"heads {a.heads}/kv {a.kv_heads}/ffn {a.channels}", "params": plan.params_after,
                         "kept": res.info["kept"], **cache.get(key, pruned, windows), **speed(pruned, prompt, args)})
            del pruned, res
            gc.collect()
    write(rows, times, args)
    return 0


def _fmt(v, spec: str) -> str:
    return "n/a" if v is None else format(v, spec)


def write(rows: list[dict], times: dict, args) -> None:
    lines = [
        "# Width vs depth pruning on Gemma 3 270M (no retraining)",
        "",
        f"Width baselines are matched to the parameter count of K blocks removed by depth pruning "
        f"(uniform width, dims multiples of {args.round_to}). Calibration: War and Peace, {args.calib_samples} "
        f"x 128 tokens, seed 0. Perplexity: first {args.windows} windows of 128 tokens (BOS prepended) of "
        "WikiText-2 and PTB, float32. Speed: batch 1, "
        f"{args.input_tokens} input tokens, {args.new_tokens} new tokens (greedy), {args.warmup} warm-up runs, "
        f"mean of {args.runs}. Reproduce: `python bench/width_vs_depth.py`.",
        "",
        "| K | method | criterion | shape | params | WikiText-2 PPL | PTB PPL | latency (s) | throughput (tok/s) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['level']} | {r['method']} | {r['criterion']} | {r['shape']} | {r['params'] / 1e6:.2f}M "
                     f"| {r['wikitext2']:.2f} | {r['ptb']:.2f} | {_fmt(r['latency_s'], '.3f')} "
                     f"| {_fmt(r['throughput'], '.1f')} |")
    lines += ["", "Scoring wall time (seconds): " + ", ".join(f"{k} {v:.1f}" for k, v in times.items())]
    if rows and rows[0].get("timer"):
        lines.append(f"Timer: {rows[0]['timer']}.")
    out = args.results_dir / "width_vs_depth_gemma3_270m"
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps({"rows": rows, "score_seconds": times, "args": {
        k: str(v) for k, v in vars(args).items()}}, indent=2))
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
