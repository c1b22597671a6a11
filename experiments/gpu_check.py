"""The GPU check: every GPU path of depthprune on one CUDA GPU, in a few minutes, with nothing downloaded.

A random-weight model from the LLaMA-7B config in fp16 (speed and memory do not depend on weight values) and a
small BPE tokenizer trained here on built-in text. Steps, each timed and recorded (a failure is recorded and
the next step runs):

1. score with ``ppl`` and ``taylor`` (peak GPU memory / weight bytes);
2. prune 20% of the parameters (ppl), save, reload with plain transformers, cached = uncached greedy generation;
3. ``bench`` dense vs pruned at batch 1 and 16, L = 128 (the paper's Table 2 setting);
4. 5 LoRA steps in bf16 mixed precision, loss decreasing;
5. the vocabulary-sliced loss under CUDA bf16 autocast against autocast cross-entropy (gradients, softmax sum);
6. FSDP (one process) on a 4-block model: 2 CPT steps, the model gathered and saved.

It prints one table and writes it with the raw figures to ``--out`` (default docs/results/gpu_check_<gpu>.{md,json}).

    python experiments/gpu_check.py                  # on a machine with a CUDA GPU
    python experiments/gpu_check.py --smoke          # tiny shapes on CPU: checks the script itself
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

import depthprune as dp
from depthprune.core import loss as loss_mod

ROOT = Path(__file__).resolve().parents[1]
LLAMA_7B = ROOT / "experiments" / "configs" / "llama-7b.json"
TEXT = ("Depth pruning removes whole transformer blocks from a large language model, and the smaller model then "
        "generates text faster on the same hardware. Width pruning narrows every block instead. ") * 400


def tokenizer() -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=["<pad>", "<s>", "</s>", "<unk>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([TEXT], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>")


def build(smoke: bool, layers: int | None = None, device: str = "cuda"):
    fields = json.loads(LLAMA_7B.read_text())
    if smoke:
        fields |= {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 10, "num_attention_heads": 4,
                   "num_key_value_heads": 4, "vocab_size": 1024}
    if layers:
        fields["num_hidden_layers"] = layers
    config = AutoConfig.for_model(fields.pop("model_type"), **fields)
    dtype = torch.float32 if smoke else torch.float16
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.eval()


def peak(fn, device: str):
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    out = fn()
    wall = time.perf_counter() - t0
    mem = torch.cuda.max_memory_allocated() if device == "cuda" else None
    return out, wall, mem


def weight_bytes(model) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def step_scoring(ctx):
    model, tok, device, data = ctx["model"], ctx["tok"], ctx["device"], ctx["text"]
    rows = {}
    for crit in ("ppl", "taylor"):
        scores, wall, mem = peak(lambda c=crit: dp.score(model, tok, criterion=c, calibration=data, samples=10,
                                                          progress=False), device)
        ratio = mem / weight_bytes(model) if mem else None
        rows[crit] = {"wall_s": wall, "peak_bytes": mem, "peak_over_weights": ratio,
                      "finite": all(s == s for s in scores.scores)}
    return rows


def step_prune(ctx):
    model, tok, out = ctx["model"], ctx["tok"], ctx["work"] / "pruned"
    result = dp.prune(model, tok, criterion="ppl", ratio=0.2, calibration=ctx["text"], samples=10, log=None,
                      progress=False)
    result.save(out)
    reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=next(model.parameters()).dtype).to(ctx["device"])
    ids = tok("Depth pruning removes", return_tensors="pt").input_ids.to(ctx["device"])
    kw = dict(attention_mask=torch.ones_like(ids), max_new_tokens=24, min_new_tokens=24, do_sample=False,
              pad_token_id=0)
    cached = reloaded.generate(ids, use_cache=True, **kw)
    uncached = reloaded.generate(ids, use_cache=False, **kw)
    ctx["pruned_dir"] = out
    del reloaded
    return {"removed": result.removed, "params_before": result.params_before, "params_after": result.params_after,
            "ratio": 1 - result.params_after / result.params_before, "cached_equals_uncached": bool(
                torch.equal(cached, uncached))}


def step_bench(ctx):
    dense = build(ctx["smoke"], device=ctx["device"])
    res = dp.bench([(dense, ctx["tok"]), str(ctx["pruned_dir"])], batch_sizes=[1, 16], output_lengths=[128],
                   warmup=2 if not ctx["smoke"] else 0, runs=5 if not ctx["smoke"] else 1, device=ctx["device"],
                   dtype="float16" if not ctx["smoke"] else "float32", log=None)
    del dense
    return [{k: s.get(k) for k in ("model", "batch_size", "latency_mean_s", "throughput_tok_s", "speedup",
                                   "peak_memory_bytes", "status")} for s in res["settings"]]


def step_lora(ctx):
    tok = ctx["tok"]
    model = AutoModelForCausalLM.from_pretrained(ctx["pruned_dir"], dtype=torch.float32)
    res = dp.retrain(model, tok, kind="lora", data=_alpaca(ctx), max_steps=5, batch_size=8,
                     micro_batch_size=4, lr=1e-3, warmup_steps=0, log_every=1, mixed_precision=ctx["mp"],
                     device=ctx["device"], progress=False, output=str(ctx["work"] / "lora"))
    log = [json.loads(line) for line in (ctx["work"] / "lora" / "train_log.jsonl").read_text().splitlines()]
    del model
    return {"losses": [r["loss"] for r in log], "decreasing": log[-1]["loss"] < log[0]["loss"],
            "mixed_precision": res.summary.get("mixed_precision")}


def _alpaca(ctx) -> str:
    path = ctx["work"] / "alpaca.json"
    sentences = [s.strip() + "." for s in TEXT.split(".") if s.strip()][:64]
    path.write_text(json.dumps([{"instruction": "Repeat the sentence.", "input": "", "output": s}
                                for s in sentences]))
    return str(path)


def step_autocast_loss(ctx):
    device = ctx["device"]
    torch.manual_seed(0)
    head = torch.nn.Linear(512, 32000, bias=True, device=device)
    with torch.no_grad():
        head.weight.normal_(0, 8 / 512**0.5)
    hidden = torch.randn(2048, 512, device=device, requires_grad=True)
    labels = torch.randint(0, 32000, (2048,), device=device)

    class Fake:
        config = type("C", (), {"final_logit_softcapping": None})()

        def get_output_embeddings(self):
            return head

    def grads(fn):
        hidden.grad = head.weight.grad = head.bias.grad = None
        fn().backward()
        return hidden.grad.clone(), head.weight.grad.clone(), head.bias.grad.clone()

    kind = "cuda" if device == "cuda" else "cpu"

    def ours():
        with torch.autocast(kind, dtype=torch.bfloat16):
            return loss_mod.chunked_nll(Fake(), hidden, labels)[0]

    def ref():
        with torch.autocast(kind, dtype=torch.bfloat16):
            return torch.nn.functional.cross_entropy(head(hidden).float(), labels, reduction="sum")

    a, b = grads(ours), grads(ref)
    rel = [float((x - y).float().norm() / y.float().norm()) for x, y in zip(a, b)]
    return {"rel_diff_hidden": rel[0], "rel_diff_weight": rel[1], "bias_grad_sum_per_token": float(a[2].sum()) / 2048}


def step_fsdp(ctx):
    if ctx["device"] != "cuda":
        return {"skipped": "accelerate runs FSDP only on accelerators ('no available devices' on CPU)"}
    work = ctx["work"]
    src = work / "fsdp_src"
    model = build(ctx["smoke"], layers=4, device="cpu").float()
    model.save_pretrained(src)
    ctx["tok"].save_pretrained(src)
    (work / "fsdp.txt").write_text(TEXT)
    cfg = (ROOT / "configs" / "accelerate" / "fsdp.yaml").read_text().replace("num_processes: 2", "num_processes: 1")
    (work / "fsdp.yaml").write_text(cfg)
    cmd = [str(Path(sys.executable).parent / "accelerate"), "launch", "--config_file", str(work / "fsdp.yaml"),
           "-m", "depthprune.cli", "retrain", "cpt", "--model", str(src), "--data", str(work / "fsdp.txt"),
           "--seq-len", "256", "--batch-size", "4", "--micro-batch-size", "2", "--max-steps", "2",
           "--save-every", "0", "--no-progress", "--output", str(work / "fsdp_out")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    ok = proc.returncode == 0 and (work / "fsdp_out" / "retrain.json").is_file()
    reloads = ok and AutoModelForCausalLM.from_pretrained(work / "fsdp_out") is not None
    return {"returncode": proc.returncode, "saved": ok, "reloads": bool(reloads), "stderr_tail": proc.stderr[-800:]}


STEPS = [("scoring", step_scoring), ("prune_save_reload", step_prune), ("bench", step_bench),
         ("lora_bf16", step_lora), ("autocast_loss", step_autocast_loss), ("fsdp", step_fsdp)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU (checks the script, not the GPU)")
    ap.add_argument("--out", default=None, help="output prefix (default docs/results/gpu_check_<device>)")
    args = ap.parse_args()
    device = "cpu" if args.smoke else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        sys.exit("no CUDA GPU: run with --smoke to check the script on the CPU")
    name = torch.cuda.get_device_name(0).replace(" ", "_") if device == "cuda" else "cpu_smoke"
    out = Path(args.out or ROOT / "docs" / "results" / f"gpu_check_{name}")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "calib.txt").write_text(TEXT)
        ctx = {"smoke": args.smoke, "device": device, "work": work, "tok": tokenizer(), "text": str(work / "calib.txt"),
               "mp": "no" if args.smoke else "bf16"}
        ctx["model"], wall, _ = peak(lambda: build(args.smoke, device=device), device)
        results = {"device": name, "torch": torch.__version__, "weights_bytes": weight_bytes(ctx["model"]),
                   "build_s": wall, "steps": {}}
        for step, fn in STEPS:
            t0 = time.perf_counter()
            try:
                results["steps"][step] = {"ok": True, "result": fn(ctx)}
            except Exception as exc:  # noqa: BLE001 - record and go on: one table of what works
                results["steps"][step] = {"ok": False, "error": f"{type(exc).__name__}: {exc}",
                                          "trace": traceback.format_exc()[-1500:]}
            results["steps"][step]["wall_s"] = time.perf_counter() - t0
            print(f"{step}: {'ok' if results['steps'][step]['ok'] else 'FAILED'} "
                  f"({results['steps'][step]['wall_s']:.1f} s)", flush=True)
    table = ["| step | ok | wall s | result |", "|---|---|---:|---|"]
    for step, rec in results["steps"].items():
        shown = json.dumps(rec.get("result", rec.get("error")), default=str)[:300]
        table.append(f"| {step} | {'yes' if rec['ok'] else 'NO'} | {rec['wall_s']:.1f} | `{shown}` |")
    print("\n".join(table))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    out.with_suffix(".md").write_text(f"# GPU check on {name}\n\n`python experiments/gpu_check.py`\n\n"
                                      + "\n".join(table) + "\n")
    return 0 if all(r["ok"] for r in results["steps"].values()) else 1


if __name__ == "__main__":
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    sys.exit(main())
