"""Retraining comparison on the embedded model (the paper's LoRA vs CPT vs CPT->LoRA, at this scale).

Gemma 3 270M is pruned by the PPL criterion (4 and 6 of its 18 blocks removed), then each pruned model is
retrained three ways at the same token budget B (tokens fed to the model, padding excluded):

* LoRA      — Alpaca demo set (instruct/alpaca_en_demo.json), rank 8, alpha 16, lr 1e-4, batch 64, B tokens
* CPT       — all parameters on the C4 sample, AdamW (0.9, 0.95), wd 0.1, lr 1e-4, cosine, B tokens
* CPT->LoRA — CPT on B/2 tokens, then LoRA on B/2 tokens

and every model (dense, pruned, retrained) is scored by WikiText-2 and PTB perplexity on the first 200
windows of 128 tokens. Prints a Markdown table and writes it, with a JSON of all figures, to --work and
docs/results/retrain_gemma3_270m.{md,json}. Resumable: finished stages (retrain.json present) and measured
perplexities are reused; an interrupted retraining stage continues from its checkpoint.

    python experiments/retrain_gemma.py                              # full run: hours on a CPU, minutes on a GPU
    python experiments/retrain_gemma.py --smoke --model tests_tiny_dir --work /tmp/rb   # plumbing check only
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, SEQ_LEN, WINDOWS  # noqa: E402

from depthprune.cli import main as cli  # noqa: E402
from depthprune.evaluation.perplexity import perplexity_of_windows, windows_for  # noqa: E402
from depthprune.models import (
    count_params,  # noqa: E402
    load_model,  # noqa: E402
)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="gemma-3-270m")
    p.add_argument("--work", default="runs/retrain_gemma", help="directory for checkpoints and results")
    p.add_argument("--blocks", type=int, nargs="+", default=[4, 6], help="blocks removed (default 4 6)")
    p.add_argument("--tokens", type=int, default=320_000,
                   help="token budget B per retraining method (default 320k: 2 epochs of the Alpaca demo, "
                        "2 of the C4 sample at 512 tokens)")
    p.add_argument("--windows", type=int, default=WINDOWS, help="PPL windows of 128 tokens per dataset")
    p.add_argument("--cpt-seq-len", type=int, default=512)
    p.add_argument("--cpt-batch", type=int, default=16, help="CPT global batch in sequences")
    p.add_argument("--lora-batch", type=int, default=64, help="LoRA global batch in examples (paper: 64)")
    p.add_argument("--micro-batch", type=int, default=4, help="sequences per forward pass")
    p.add_argument("--warmup-steps", type=int, default=None, help="warmup steps (default: the CLI's ratio)")
    p.add_argument("--smoke", action="store_true",
                   help="tiny budgets (2k tokens, 5 windows, short sequences): checks the plumbing in minutes")
    p.add_argument("--no-docs", action="store_true", help="do not write docs/results/")
    a = p.parse_args()
    for name in ("tokens", "windows", "cpt_seq_len", "cpt_batch", "lora_batch", "micro_batch"):
        if getattr(a, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(a, name)}")
    return a


def run_cli(argv: list) -> None:
    code = cli([str(a) for a in argv])
    if code != 0:
        raise SystemExit(f"depthprune {' '.join(map(str, argv))} failed with exit code {code}")


def pruned_ok(path: Path) -> bool:
    return (path / "pruning.json").is_file() and (path / "config.json").is_file()


def retrain(method: str, model: Path | str, out: Path, tokens: int, a: argparse.Namespace) -> None:
    """One retraining stage, resumed when a checkpoint exists, skipped when finished."""
    if (out / "retrain.json").is_file():
        return
    if method == "lora":
        argv = ["retrain", "lora", "--model", model, "--data", "alpaca_demo", "--merge", "--max-tokens", tokens,
                "--micro-batch-size", a.micro_batch, "--batch-size", 4 if a.smoke else a.lora_batch]
    else:
        argv = ["retrain", "cpt", "--model", model, "--data", "c4_sample", "--max-tokens", tokens,
                "--seq-len", a.cpt_seq_len, "--batch-size", a.cpt_batch, "--micro-batch-size", a.micro_batch]
    argv += ["--output", out, "--save-every", 50, "--log-every", 5]
    if a.warmup_steps is not None:
        argv += ["--warmup-steps", a.warmup_steps]
    has_ckpt = (out / "checkpoints").is_dir() and any((out / "checkpoints").glob("step-*"))
    argv += ["--resume"] if has_ckpt else (["--overwrite"] if out.exists() else [])
    print(f"\n== {method} -> {out}", flush=True)
    run_cli(argv)


def measure(path: Path | str, key: str, cache: dict, cache_path: Path, a: argparse.Namespace) -> dict:
    """WikiText-2 / PTB perplexity (first windows) and parameter count of the model at ``path``."""
    if key in cache:
        return cache[key]
    shared = _shared_ppl(path, a)
    if shared is not None:
        cache[key] = shared
        return shared
    lm = load_model(str(path), dtype="float32" if not torch.cuda.is_available() else "bfloat16")
    res = {"params": count_params(lm.model)}
    for name in ("wikitext2", "ptb"):
        w = windows_for(lm.tokenizer, name, SEQ_LEN, a.windows)
        total, count = perplexity_of_windows(lm.model, w, batch_size=16, progress=False)
        res[name] = float(torch.tensor(total / count).exp())
    info = Path(path) / "retrain.json"
    if info.is_file():
        r = json.loads(info.read_text())["result"]
        res |= {"tokens_seen": r["tokens_seen"], "train_s": r["wall_s"], "final_loss": r["final_loss"]}
    cache[key] = res
    tmp = cache_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(cache, indent=2))
    os.replace(tmp, cache_path)
    print(f"  {key}: " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                  for k, v in res.items()), flush=True)
    return res


def _shared_ppl(path: Path | str, a: argparse.Namespace) -> dict | None:
    """PPL of a not-retrained pruned model from the pruning tables' cache (same windows), when it is there."""
    info, cache_file = Path(path) / "pruning.json", RESULTS / "ppl_cache_gemma3_270m.json"
    if a.smoke or a.model != "gemma-3-270m" or a.windows != WINDOWS or (Path(path) / "retrain.json").exists():
        return None
    if not cache_file.is_file():
        return None
    if str(path) == "gemma-3-270m" and "dense" in (table := json.loads(cache_file.read_text())):
        return {"params": 268_098_176, "wikitext2": table["dense"]["wikitext2"], "ptb": table["dense"]["ptb"],
                "from": "pruning-table cache"}
    if not info.is_file():
        return None
    meta = json.loads(info.read_text())
    removed = meta.get("removed_blocks") or []
    hit = json.loads(cache_file.read_text()).get("remove:" + ",".join(map(str, removed)))
    if hit is None:
        return None
    return {"params": meta["params_after"], "wikitext2": hit["wikitext2"], "ptb": hit["ptb"],
            "from": "pruning-table cache"}


def table(rows: list[dict], a: argparse.Namespace) -> str:
    lines = [
        f"Retraining after PPL-criterion depth pruning ({a.model}); WikiText-2 / PTB perplexity on the first "
        f"{a.windows} windows of {SEQ_LEN} tokens (lower is better). Token budget B = {a.tokens:,} tokens per "
        "method (CPT->LoRA: B/2 + B/2). LoRA: Alpaca demo (999 examples), rank 8, alpha 16, lr 1e-4, "
        f"batch {a.lora_batch}. "
        f"CPT: C4 sample (300 documents), seq {a.cpt_seq_len}, batch {a.cpt_batch}, lr 1e-4, AdamW (0.9, 0.95), "
        f"wd 0.1, cosine{f', {a.warmup_steps} warm-up steps' if a.warmup_steps is not None else ''}. Train time is "
        "wall clock on this machine (shared with other jobs when they ran concurrently).",
        "",
        "| blocks removed | params | retraining | tokens seen | WikiText-2 PPL | PTB PPL | train time (s) |",
        "|---:|---:|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        tokens = f"{r['tokens_seen']:,}" if r.get("tokens_seen") else "—"
        train = f"{r['train_s']:.0f}" if r.get("train_s") else "—"
        lines.append(f"| {r['removed']} | {r['params'] / 1e6:.1f}M | {r['method']} | {tokens} | "
                     f"{r['wikitext2']:.2f} | {r['ptb']:.2f} | {train} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    a = parse_args()
    if a.smoke:
        a.tokens, a.windows, a.cpt_seq_len, a.cpt_batch, a.micro_batch = 2_000, 5, 64, 4, 2
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    cache_path = work / "ppl.json"
    cache = json.loads(cache_path.read_text()) if cache_path.exists() else {}
    t0 = time.perf_counter()
    rows = [{"removed": 0, "method": "none (dense)"} | measure(a.model, "dense", cache, cache_path, a)]
    for k in a.blocks:
        pruned = work / f"pruned-{k}"
        if not pruned_ok(pruned):
            run_cli(["prune", "--model", a.model, "--criterion", "ppl", "--num-blocks", k, "--output", pruned,
                     "--overwrite", "--eval-windows", 0])
        rows.append({"removed": k, "method": "none"} | measure(pruned, f"pruned-{k}", cache, cache_path, a))
        half = a.tokens // 2
        stages = [
            ("LoRA", [("lora", pruned, work / f"lora-{k}", a.tokens)]),
            ("CPT", [("cpt", pruned, work / f"cpt-{k}", a.tokens)]),
            ("CPT->LoRA", [("cpt", pruned, work / f"cpt-half-{k}", half),
                           ("lora", work / f"cpt-half-{k}", work / f"cpt-lora-{k}", a.tokens - half)]),
        ]
        for label, steps in stages:
            for method, src, out, budget in steps:
                retrain(method, src, out, budget, a)
            res = measure(steps[-1][2], f"{label}-{k}", cache, cache_path, a)
            if len(steps) > 1:  # tokens and time of the whole chain
                first = json.loads((steps[0][2] / "retrain.json").read_text())["result"]
                res = res | {"tokens_seen": res["tokens_seen"] + first["tokens_seen"],
                             "train_s": res["train_s"] + first["wall_s"]}
            rows.append({"removed": k, "method": label} | res)
    md = table(rows, a)
    print("\n" + md)
    (work / "retrain_table.md").write_text(md)
    (work / "retrain_results.json").write_text(json.dumps({"args": vars(a), "rows": rows}, indent=2))
    if not a.smoke and not a.no_docs:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "retrain_gemma3_270m.md").write_text(md)
        (RESULTS / "retrain_gemma3_270m.json").write_text(json.dumps({"args": vars(a), "rows": rows}, indent=2))
    print(f"Total {time.perf_counter() - t0:.0f}s; results in {work}")


if __name__ == "__main__":
    main()
