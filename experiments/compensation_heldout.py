"""Held-out check of ``prune --compensate linear`` on a pre-norm family (LLaMA: the full-matrix fit).

A tiny LLaMA (6 blocks, hidden 128) with a BPE tokenizer of its own is trained from scratch on the English
Wikipedia sample (``wiki_sample``: the first 27 of its 30 articles) with ``depthprune retrain cpt``, so that
it is not random. Then 1, 2 and 3 blocks are removed by the PPL criterion (calibration: windows of the training
articles), without and with compensation (fit on 16 or 128 calibration windows of 128 tokens), and every
model's NLL / perplexity is measured on the 3 held-out articles (never seen in training nor calibration).

    python experiments/compensation_heldout.py                     # ~10 min on 2 CPU cores
    python experiments/compensation_heldout.py --steps 50 --work /tmp/ch --no-docs   # plumbing check

Writes ``docs/results/compensation_heldout_tiny_llama.{md,json}``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS  # noqa: E402

from depthprune.cli import main as cli  # noqa: E402
from depthprune.data.sources import load_text  # noqa: E402

VOCAB = 2048


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", default="runs/compensation_heldout")
    p.add_argument("--steps", type=int, default=400, help="training steps of 16 x 128 tokens (default 400)")
    p.add_argument("--blocks", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--fit-samples", type=int, nargs="+", default=[16, 128])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-docs", action="store_true")
    return p.parse_args()


def run(*argv) -> None:
    rc = cli([str(a) for a in argv])
    if rc != 0:
        raise SystemExit(f"depthprune {' '.join(map(str, argv))} failed ({rc})")


def make_model(work: Path, train_text: str, seed: int) -> Path:
    """A randomly initialised tiny LLaMA with a BPE tokenizer trained on the training articles."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out = work / "init"
    if (out / "config.json").is_file():
        return out
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=["<pad>", "<s>", "</s>", "<unk>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([train_text], trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>")
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=128, intermediate_size=384, num_hidden_layers=6,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=32, max_position_embeddings=256,
                      pad_token_id=0, bos_token_id=1, eos_token_id=2, tie_word_embeddings=True)
    LlamaForCausalLM(cfg).save_pretrained(out)
    fast.save_pretrained(out)
    return out


def heldout_nll(model_dir: Path, heldout: Path) -> dict:
    out = model_dir / "heldout_ppl.json"
    if not out.is_file():
        run("eval", "ppl", "--model", model_dir, "--dataset", heldout, "--seq-len", 128, "--json", out,
            "--device", "cpu")
    res = json.loads(out.read_text())
    return {"ppl": res["ppl"], "nll": math.log(res["ppl"]), "windows": res["windows"]}


def main() -> None:
    a = parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    articles = [line for line in load_text("wiki_sample").split("\n") if line.strip()]
    train, held = articles[:27], articles[27:]
    train_txt, held_txt = work / "train.txt", work / "heldout.txt"
    train_txt.write_text("\n".join(train))
    held_txt.write_text("\n".join(held))
    init = make_model(work, train_txt.read_text(), a.seed)
    trained = work / "trained"
    if not (trained / "retrain.json").is_file():
        run("retrain", "cpt", "--model", init, "--data", train_txt, "--output", trained, "--overwrite",
            "--max-steps", a.steps, "--seq-len", 128, "--batch-size", 16, "--micro-batch-size", 16, "--lr", "3e-3",
            "--warmup-steps", 20, "--weight-decay", 0.0, "--save-every", 0, "--log-every", 50, "--no-progress",
            "--cpu", "--seed", a.seed)
    rows = [{"blocks": 0, "compensation": "dense", **heldout_nll(trained, held_txt)}]
    scores = work / "scores.json"
    if not scores.is_file():
        run("score", "--model", trained, "--criterion", "ppl", "--calib", train_txt, "--calib-samples", 16,
            "--calib-seq-len", 128, "--output", scores, "--device", "cpu")
    for k in a.blocks:
        variants = [("none", None)] + [("linear", n) for n in a.fit_samples]
        for mode, n in variants:
            name = f"k{k}_{mode}" + (f"_{n}" if n else "")
            out = work / name
            if not (out / "pruning.json").is_file():
                extra = ["--compensate", "linear", "--compensate-samples", n] if n else []
                run("prune", "--model", trained, "--scores", scores, "--num-blocks", k, "--calib", train_txt,
                    "--calib-seq-len", 128, "--eval-windows", 0, "--output", out, "--overwrite", "--device", "cpu",
                    *extra)
            info = json.loads((out / "pruning.json").read_text())
            comp = info.get("compensation") or {}
            rows.append({"blocks": k, "removed": info["removed_blocks"],
                         "compensation": f"linear ({n} x 128 tokens)" if n else "none",
                         "fit_relative_residual": [round(s["relative_residual"], 4) for s in comp.get("spans", [])],
                         "skipped": [s["removed"] for s in comp.get("skipped", [])],
                         "params": info["params_after"], **heldout_nll(out, held_txt)})
            print(json.dumps(rows[-1]), flush=True)
    dense = rows[0]
    log = [json.loads(line) for line in (trained / "train_log.jsonl").read_text().splitlines()]
    lines = [
        "Held-out check of `prune --compensate linear` on a pre-norm family (LLaMA, full-matrix fit into "
        "`down_proj`). A tiny LLaMA (6 blocks, hidden 128, BPE vocabulary 2,048, tied embeddings) trained from "
        f"scratch with `depthprune retrain cpt` for {a.steps} steps of 16 x 128 tokens on the first 27 of the 30 "
        f"articles of `wiki_sample` (training loss {log[0]['loss']:.2f} -> {log[-1]['loss']:.2f}); blocks removed "
        "by the PPL criterion (16 calibration windows of the training articles); the compensation fit uses 16 or "
        "128 windows of 128 tokens of the training articles (ridge 1e-4). NLL = mean next-token NLL on the 3 "
        f"held-out articles ({dense['windows']} windows of 128 tokens), never seen in training or calibration.",
        "",
        "| blocks removed | removed | compensation | fit residual (after / before) | held-out NLL | held-out PPL |",
        "|---:|---|---|---|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['blocks']} | {r.get('removed', '—')} | {r['compensation']} | "
                     f"{', '.join(map(str, r.get('fit_relative_residual', []))) or '—'} | {r['nll']:.4f} | "
                     f"{r['ppl']:.2f} |")
    train_wall = json.loads((trained / "retrain.json").read_text())["result"]["wall_s"]
    lines += ["", f"Reproduce: `python experiments/compensation_heldout.py --steps {a.steps} --blocks "
                  f"{' '.join(map(str, a.blocks))} --fit-samples {' '.join(map(str, a.fit_samples))}` (training "
                  f"{train_wall:.0f} s on 2 shared CPU cores; finished steps are reused by a rerun)."]
    text = "\n".join(lines) + "\n"
    print(text)
    (work / "result.md").write_text(text)
    if not a.no_docs:
        (RESULTS / "compensation_heldout_tiny_llama.md").write_text(text)
        (RESULTS / "compensation_heldout_tiny_llama.json").write_text(json.dumps(
            {"steps": a.steps, "seed": a.seed, "rows": rows, "train_log_first_last": [log[0], log[-1]]},
            indent=2) + "\n")


if __name__ == "__main__":
    main()
