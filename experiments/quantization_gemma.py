"""4-bit GPTQ after depth pruning on the embedded model (the paper's section 5.3 / Figure 6, at this scale).

Runs the exact ``depthprune`` commands below (each as its own process, wall-clocked), skipping those whose
outputs exist, then writes docs/results/quantization_gemma3_270m.{md,json}:

* ``depthprune prune --criterion ppl --num-blocks 4 --output runs/p4``
* ``depthprune retrain cpt --model runs/p4 --data c4_sample --seq-len 256 --batch-size 4 --max-tokens 20000
  --output runs/p4-cpt``
* ``depthprune quantize --model M --calib-samples 32 --output M-w4`` for M = gemma-3-270m (dense), runs/p4,
  runs/p4-cpt (GPTQ W4A16, group 128, c4_sample calibration of 32 x 512 tokens instead of the default 128: at
  the default each block's calibration pass took 5 min on the shared CPU, ~2.5 h per model; bfloat16 scales
  and float parts)
* ``depthprune eval ppl --model M --limit 200 --dataset D --json ...`` for the six models, D = wikitext2, ptb
* ``depthprune bench`` of the dense model and its 4-bit copy (weight memory and disk; one short setting)

    python experiments/quantization_gemma.py                 # hours on a shared 2-core CPU
    python experiments/quantization_gemma.py --report-only   # rewrite the docs from the finished runs
    python experiments/quantization_gemma.py --only 'quantize dense' --only 'ppl dense *'   # some steps (in parallel)
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS  # noqa: E402

NAME = "quantization_gemma3_270m"
DATASETS = ("wikitext2", "ptb")
FLOAT = {"dense": "gemma-3-270m", "p4": "p4", "p4-cpt": "p4-cpt"}
CALIB = 32


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", default="runs", help="directory of the checkpoints (default: runs, as in the README)")
    p.add_argument("--nice", type=int, default=10, help="niceness of every command (the CPU is shared)")
    p.add_argument("--report-only", action="store_true", help="only write the docs from what has finished")
    p.add_argument("--only", action="append", default=[], metavar="GLOB",
                   help="run only the steps whose name matches (repeatable), e.g. 'quantize dense' 'ppl p4 *'")
    return p.parse_args()


def source(work: Path, key: str) -> str:
    return FLOAT[key] if key == "dense" else str(work / FLOAT[key])


def quantized(work: Path, key: str) -> str:
    return str(work / f"{'dense' if key == 'dense' else FLOAT[key]}-w4")


def plan(work: Path) -> list[tuple[str, list[str], Path]]:
    """(step name, depthprune arguments, file whose presence means done), in run order."""
    steps = [("prune p4", ["prune", "--criterion", "ppl", "--num-blocks", "4", "--output", str(work / "p4")],
              work / "p4" / "pruning.json"),
             ("cpt p4", ["retrain", "cpt", "--model", str(work / "p4"), "--data", "c4_sample", "--seq-len", "256",
                         "--batch-size", "4", "--max-tokens", "20000", "--output", str(work / "p4-cpt")],
              work / "p4-cpt" / "retrain.json")]
    for key in FLOAT:
        steps.append((f"quantize {key}", ["quantize", "--model", source(work, key), "--calib-samples", str(CALIB),
                                          "--output", quantized(work, key)],
                      Path(quantized(work, key)) / "quantization.json"))
    for key in FLOAT:
        for kind, model in (("w4", quantized(work, key)), ("float32", source(work, key))):
            for ds in DATASETS:
                out = work / "quant_ppl" / f"{key}-{kind}-{ds}.json"
                steps.append((f"ppl {key} {kind} {ds}", ["eval", "ppl", "--model", model, "--limit", "200",
                                                          "--dataset", ds, "--json", str(out)], out))
    bench = work / "quant_ppl" / "bench.json"
    steps.append(("bench dense", ["bench", "--model", "gemma-3-270m", "--model", quantized(work, "dense"),
                                  "--batch-sizes", "1", "--output-lengths", "16", "--warmup", "1", "--runs", "2",
                                  "--json", str(bench)], bench))
    return steps


def read_timings(work: Path) -> dict:
    path = work / "quant_ppl" / "timings.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def run(work: Path, nice: int, only: list[str]) -> dict:
    timings_path = work / "quant_ppl" / "timings.json"
    timings_path.parent.mkdir(parents=True, exist_ok=True)
    for name, args, done in plan(work):
        if done.is_file() or (only and not any(fnmatch.fnmatchcase(name, g) for g in only)):
            continue
        cmd = ["nice", "-n", str(nice), sys.executable, "-m", "depthprune.cli", *args]
        print(f"[{time.strftime('%H:%M:%S')}] {name}: depthprune {' '.join(args)}", flush=True)
        start = time.time()
        subprocess.run(cmd, check=True)
        timings = read_timings(work)  # re-read: another instance may run other steps (--only)
        timings[name] = {"command": "depthprune " + " ".join(args), "wall_s": time.time() - start,
                         "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
        timings_path.write_text(json.dumps(timings, indent=2) + "\n")
    return read_timings(work)


def _json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _mib(n: int | None) -> str:
    return "—" if n is None else f"{n / 2**20:,.1f} MiB"


def collect(work: Path, timings: dict) -> dict:
    rows = {}
    for key in FLOAT:
        q = _json(Path(quantized(work, key)) / "quantization.json")
        ppl = {kind: {ds: (_json(work / "quant_ppl" / f"{key}-{kind}-{ds}.json") or {}).get("ppl") for ds in DATASETS}
               for kind in ("float32", "w4")}
        rows[key] = {"float_model": source(work, key), "quantized_model": quantized(work, key), "ppl": ppl,
                     "ratio_w4_over_float": {ds: (ppl["w4"][ds] / ppl["float32"][ds]
                                                  if ppl["w4"][ds] and ppl["float32"][ds] else None)
                                             for ds in DATASETS},
                     "quantization": q}
    return {"rows": rows, "timings": timings, "bench": _json(work / "quant_ppl" / "bench.json")}


def f(x: float | None, digits: int = 2) -> str:
    return "—" if x is None else f"{x:,.{digits}f}"


def bench_lines(bench: dict | None) -> list[str]:
    """The weights table of the bench JSON: in-memory bytes (what CPU kernels read) and bytes on disk."""
    if not bench:
        return []
    out = ["", "## Weight memory and disk (`depthprune bench`)", "",
           "| model | in memory | dtype | on disk | stored as | latency M=1, L=16 |", "|---|---:|---|---:|---|---:|"]
    for m in bench["models"]:
        w = m["weights"]
        lat = [s["latency_mean_s"] for s in bench["settings"] if s["model"] == m["label"] and s["status"] == "ok"]
        out.append(f"| {m['label']} | {_mib(w['in_memory_bytes'])} | {', '.join(w['in_memory_dtypes'])} | "
                   f"{_mib(w['on_disk_bytes'])} | {w['stored_as']} | {f(lat[0] if lat else None, 3)} s |")
    return out + ["", w["note"] if bench["models"] else ""]


def claim_lines(rows: dict) -> list[str]:
    """The paper's check: does 4-bit cost the pruned models about as little (relative PPL) as the dense one?"""
    ratios = {key: r["ratio_w4_over_float"] for key, r in rows.items()}
    if any(v is None for r in ratios.values() for v in r.values()):
        return []
    out = ["", "## Claim check: PPL ratio 4-bit / float32", "",
           "| | dense | pruned (4 blocks) | pruned + CPT |", "|---|---:|---:|---:|"]
    for ds, name in (("wikitext2", "WikiText-2"), ("ptb", "PTB")):
        out.append(f"| {name} | " + " | ".join(f"{ratios[k][ds]:.3f}" for k in ("dense", "p4", "p4-cpt")) + " |")
    return out


def verdict_lines(rows: dict) -> list[str]:
    """Whether the paper's two claims hold here, from the numbers above."""
    try:
        ppl = {k: (r["ppl"]["float32"]["wikitext2"], r["ppl"]["w4"]["wikitext2"]) for k, r in rows.items()}
        disk = {k: r["quantization"]["disk_bytes"]["output_weights"] for k, r in rows.items()}
        ratio = {k: r["ratio_w4_over_float"]["wikitext2"] for k, r in rows.items()}
    except (KeyError, TypeError):
        return []
    best = min(("p4", "p4-cpt"), key=lambda k: ppl[k][1])
    cheap = max(ratio[k] for k in ("dense", best)) < 1.1  # the paper: a few percent
    ahead = ppl[best][1] < ppl["dense"][1]
    return ["", "## Verdict", "",
            f"- *4-bit costs little on top of pruning*: **{'holds' if cheap else 'holds partly'} here**. WikiText-2 "
            f"PPL grows x{ratio['dense']:.2f} for the dense model and x{ratio['p4-cpt']:.2f} for the retrained "
            f"pruned one, but x{ratio['p4']:.2f} for the pruned model before retraining: a model already far "
            "from its training distribution loses more to rounding. A 270M model with 32 calibration sequences is "
            "more sensitive than the paper's 7B ones.",
            f"- *At equal memory the pruned model stays ahead*: **{'holds' if ahead else 'does not hold'} here**. "
            f"The best 4-bit pruned model ({_mib(disk[best])}, WikiText-2 {ppl[best][1]:.1f}) is "
            f"{'better' if ahead else 'much worse'} than the 4-bit dense one ({_mib(disk['dense'])}, "
            f"{ppl['dense'][1]:.1f}). At this size 63% of the parameters are the (unquantized, tied) embedding, so "
            "removing 4 of 18 blocks saves 8% of the parameters and 3% of the 4-bit checkpoint, while the quality "
            "cost of pruning stays large after 20k tokens of CPT; the paper's 7B models spend ~4% on embeddings "
            "and LM head."]


def markdown(data: dict) -> str:
    rows, timings = data["rows"], data["timings"]
    out = ["# 4-bit GPTQ after depth pruning (Gemma 3 270M, shared 2-core CPU)", "",
           "Paper (Shortened LLaMA, section 5.3 / Figure 6): GPTQ 4-bit weights on top of depth pruning cost little "
           "perplexity, and the pruned model stays ahead at equal memory. Here: WikiText-2 / PTB perplexity on the "
           "first 200 windows of 128 tokens (BOS at every window), float32 vs 4-bit (GPTQ W4A16, group 128, "
           "symmetric, llmcompressor; 32 x 512 calibration tokens of c4_sample, seed 0). The 4-bit models are "
           "evaluated dequantized to float32 (transformers has no int4 CPU kernels), so the PPL is that of the "
           "4-bit weights exactly.", "",
           "| model | params | quantized share | WikiText-2 float32 | WikiText-2 4-bit | ratio | PTB float32 "
           "| PTB 4-bit | ratio | weights on disk: float32 → 4-bit | GPTQ wall time |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|"]
    names = {"dense": "dense", "p4": "ppl one-shot, 4 of 18 blocks", "p4-cpt": "same + CPT 20k tokens"}
    for key, r in rows.items():
        q = r["quantization"] or {}
        params = q.get("params") or {}
        disk = q.get("disk_bytes") or {}
        wall = (timings.get(f"quantize {key}") or {}).get("wall_s")
        out.append(f"| {names[key]} | {f(params.get('total', 0) / 1e6, 1)}M | "
                   f"{f(100 * params['share_quantized'], 1) + '%' if params else '—'} | "
                   f"{f(r['ppl']['float32']['wikitext2'])} | {f(r['ppl']['w4']['wikitext2'])} | "
                   f"{f(r['ratio_w4_over_float']['wikitext2'], 3)} | {f(r['ppl']['float32']['ptb'])} | "
                   f"{f(r['ppl']['w4']['ptb'])} | {f(r['ratio_w4_over_float']['ptb'], 3)} | "
                   f"{_mib(disk.get('source_weights'))} → {_mib(disk.get('output_weights'))} | "
                   f"{'—' if wall is None else f'{wall / 60:.1f} min'} |")
    out += claim_lines(rows)
    out += verdict_lines(rows)
    out += bench_lines(data.get("bench"))
    out += ["", "## What is measured where", "",
            "- **Perplexity** of a 4-bit model: its checkpoint is loaded with "
            "`CompressedTensorsConfig(dequantize=True)`, i.e. every packed weight becomes `int4 x bf16 scale` as a "
            "float32 `nn.Linear` weight; the embeddings, "
            "norms and (tied) LM head are the checkpoint's bfloat16 values cast to float32. The PPL is that of the "
            "stored model exactly; the forward pass is float32 like the float rows.",
            "- **Disk**: the weight files (`*.safetensors`) of each checkpoint; the float32 ones as `prune`/"
            "`retrain` wrote them (the dense one is the embedded model's float32 cache). Part of the shrink is the "
            "unquantized tensors going from float32 to bfloat16 (the embedding alone is 63% of the parameters); "
            "`float_weights_at_dtype` in the JSON is the same model all in bfloat16, for the 4-bit-only part.",
            "- **Memory and speed** on this CPU: those of the float model (see the bench table); int4 kernels "
            "exist in vLLM on GPUs, not in transformers on CPUs. Not measured here.", ""]
    out += ["", "## Commands and wall times", "",
            "Each command ran as its own process under `nice -n 10` on a 2-core CPU shared with other jobs, so "
            "wall times are upper bounds of what the same commands take alone.", "",
            "| step | command | wall time |", "|---|---|---:|"]
    for name, t in timings.items():
        out.append(f"| {name} | `{t['command']}` | {t['wall_s'] / 60:.1f} min |")
    out.append("")
    return "\n".join(out)


def main() -> None:
    a = parse_args()
    work = Path(a.work)
    timings = read_timings(work) if a.report_only else run(work, a.nice, a.only)
    # steps run in a fixed order in the table
    order = [name for name, _, _ in plan(work)]
    timings = dict(sorted(timings.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else -1))
    data = collect(work, timings)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{NAME}.json").write_text(json.dumps(data, indent=2) + "\n")
    (RESULTS / f"{NAME}.md").write_text(markdown(data))
    print(markdown(data))


if __name__ == "__main__":
    main()
