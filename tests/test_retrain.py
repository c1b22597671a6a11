"""Retraining (LoRA, CPT, CPT then LoRA) on tiny random models, on the CPU."""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tiny import SAMPLE_TEXT, save_tiny
from train_helpers import (
    ACCELERATE,
    ROOT,
    TRAIN_ARGS,
    assert_ddp_matches_single,
    assert_resumed_equals_uninterrupted,
    log_of,
    run,
)

from depthprune.core.options import build
from depthprune.errors import DepthpruneError
from depthprune.retraining import engine
from depthprune.retraining.data import IGNORE, instruction_dataset, load_instructions
from depthprune.retraining.options import TrainOptions
from depthprune.retraining.plan import DataPlan

CPT_ARGS = TRAIN_ARGS
LORA_ARGS = ["--max-len", "240", "--batch-size", "4", "--micro-batch-size", "2", "--lr", "1e-2", "--log-every", "1",
             "--warmup-steps", "2", "--no-progress", "--save-every", "0", "--rank", "4"]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict:
    """A tiny 2-block Gemma 3 (tied embeddings, BOS) with a pruning.json, a text file and Alpaca records."""
    root = tmp_path_factory.mktemp("retrain")
    model = save_tiny("gemma3_text", root / "model", layers=2)
    (model / "pruning.json").write_text(json.dumps({"removed": [2, 3]}))
    text = root / "text.txt"
    text.write_text(SAMPLE_TEXT)
    sentences = [s.strip() for s in SAMPLE_TEXT.split(". ") if s.strip()][:24]
    records = [{"instruction": "Repeat the sentence.", "input": "fox" if i % 3 == 0 else "", "output": s}
               for i, s in enumerate(sentences)]
    instr = root / "alpaca.json"
    instr.write_text(json.dumps(records))
    return {"root": root, "model": model, "text": text, "instr": instr}




def interrupt_at(monkeypatch, call: int, how: str) -> None:
    """Make the ``call``-th forward of the training module send SIGINT (Ctrl-C) or raise KeyboardInterrupt."""
    original = engine.CausalLMLoss.forward
    count = {"n": 0}

    def forward(self, *args, **kwargs):
        count["n"] += 1
        if count["n"] == call:
            if how == "raise":
                raise KeyboardInterrupt
            os.kill(os.getpid(), signal.SIGINT)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(engine.CausalLMLoss, "forward", forward)


@pytest.fixture(scope="module")
def cpt_run(files) -> Path:
    out = files["root"] / "cpt"
    assert run("retrain", "cpt", "--model", files["model"], "--data", files["text"], "--output", out,
               "--max-steps", 24, *CPT_ARGS) == 0
    return out


def test_cpt_lowers_loss_and_writes_run(cpt_run):
    log = log_of(cpt_run)
    assert [r["step"] for r in log] == list(range(1, 25))
    assert log[-1]["loss"] < log[0]["loss"] - 0.5
    assert {"lr", "tokens_seen", "tokens_per_s", "grad_norm"} <= set(log[0])
    info = json.loads((cpt_run / "retrain.json").read_text())
    assert info["result"]["steps"] == 24 and info["result"]["tokens_seen"] == 24 * 4 * 24
    assert json.loads((cpt_run / "pruning.json").read_text()) == {"removed": [2, 3]}
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(cpt_run)


def test_cpt_ctrl_c_then_resume_matches_uninterrupted(files, cpt_run, monkeypatch):
    out = files["root"] / "cpt_resumed"
    args = ["retrain", "cpt", "--model", files["model"], "--data", files["text"], "--output", out,
            "--max-steps", 24, *CPT_ARGS]
    interrupt_at(monkeypatch, 2 * 5 + 1, "sigint")  # Ctrl-C during step 6: it finishes, checkpoints, stops
    assert run(*args) == 130
    assert (out / "checkpoints" / "step-00000006").is_dir() and not (out / "model.safetensors").exists()
    monkeypatch.undo()
    assert run(*args, "--resume") == 0
    assert_resumed_equals_uninterrupted(cpt_run, out, 24)


def test_lora_merge_and_mid_step_interrupt(files, monkeypatch):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = files["root"] / "lora"
    args = ["retrain", "lora", "--model", files["model"], "--data", files["instr"], "--max-steps", 20, *LORA_ARGS]
    assert run(*args, "--output", out, "--merge") == 0
    log = log_of(out)
    assert log[-1]["loss"] < log[0]["loss"] - 0.5
    assert json.loads((out / "pruning.json").read_text()) == {"removed": [2, 3]}
    cfg = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert set(cfg["target_modules"]) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}

    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    base = AutoModelForCausalLM.from_pretrained(files["model"])
    peft_model = PeftModel.from_pretrained(base, out / "adapter").eval()
    ids = torch.randint(3, 300, (2, 20))
    with torch.no_grad():
        diff = (merged(ids).logits - peft_model(ids).logits).abs().max()
    assert float(diff) < 1e-4

    # a KeyboardInterrupt inside step 5 (its 2nd micro-batch): step 4 is saved, RNG rewound, dropout replayed
    out2 = files["root"] / "lora_resumed"
    interrupt_at(monkeypatch, 2 * 4 + 2, "raise")
    assert run(*args, "--output", out2) == 130
    assert (out2 / "checkpoints" / "step-00000004").is_dir()
    monkeypatch.undo()
    assert run(*args, "--output", out2, "--resume") == 0
    a, b = load_file(out / "adapter" / "adapter_model.safetensors"), load_file(out2 / "adapter_model.safetensors")
    assert a.keys() == b.keys() and max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5
    assert abs(log_of(out)[-1]["loss"] - log_of(out2)[-1]["loss"]) < 1e-5


def test_cpt_then_lora(files, cpt_run):
    out = files["root"] / "cpt_lora"
    assert run("retrain", "lora", "--model", cpt_run, "--data", files["instr"], "--output", out,
               "--max-steps", 2, "--target-modules", "q_proj,v_proj", *LORA_ARGS) == 0
    assert json.loads((out / "pruning.json").read_text()) == {"removed": [2, 3]}
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert set(cfg["target_modules"]) == {"q_proj", "v_proj"}
    assert Path(cfg["base_model_name_or_path"]).resolve() == cpt_run.resolve()



@pytest.mark.skipif(not ACCELERATE.exists(), reason="accelerate CLI not installed")
def test_ddp_two_cpu_processes_match_one(files):
    common = ["retrain", "cpt", "--model", files["model"], "--data", files["text"], "--max-steps", 4,
              *CPT_ARGS, "--micro-batch-size", "1", "--cpu"]
    single = files["root"] / "ddp1"
    double = files["root"] / "ddp2"
    assert_ddp_matches_single(common, single, double)


@pytest.mark.parametrize("case", ["fields", "lr", "target", "resume", "batch"])
def test_bad_input_is_a_clear_error(files, case, capsys):
    out = files["root"] / f"bad_{case}"
    bad = files["root"] / "bad.json"
    bad.write_text(json.dumps([{"instruction": "hi", "response": "no output field"}]))
    base = ["retrain", "lora", "--model", files["model"], "--output", out, "--no-progress"]
    argv, expected = {
        "fields": (base + ["--data", bad], "lacks the field(s) output"),
        "lr": (base + ["--data", files["instr"], "--lr", "0"], "--lr must be > 0"),
        "target": (base + ["--data", files["instr"], "--target-modules", "q_proj,qq_proj"],
                   "qq_proj not a linear layer"),
        "resume": (base + ["--data", files["instr"], "--resume"], "no checkpoint under"),
        "batch": (base + ["--data", files["instr"], "--batch-size", "6", "--micro-batch-size", "4"],
                  "must be a multiple of --micro-batch-size"),
    }[case]
    assert run(*argv) == 2
    assert expected in capsys.readouterr().err
    assert not out.exists()


def test_data_plan_and_alpaca_masking(files):
    from tiny import tiny_tokenizer

    tok = tiny_tokenizer()
    records = load_instructions(str(files["instr"]))
    ds = instruction_dataset(records, tok, max_len=256)
    batch = ds.batch([0, 1])
    assert batch["labels"].shape == batch["input_ids"].shape
    n_prompt = len(tok(records[0]["instruction"], add_special_tokens=False)["input_ids"])
    assert (batch["labels"][0, :n_prompt] == IGNORE).all()  # no loss on the prompt
    plan = DataPlan(ds, batch_size=4, seed=3)
    assert plan.step(0) == DataPlan(ds, 4, 3).step(0) and plan.step(0) != DataPlan(ds, 4, 4).step(0)
    assert sorted(sum((plan.step(s)[1] for s in range(plan.steps_per_epoch)), [])) == list(range(len(ds)))
    budget = int(ds.tokens.sum()) + 1  # one epoch is just short of it
    assert plan.total_steps(None, None, budget) == plan.steps_per_epoch + 1
    assert plan.total_steps(2, 5, None) == 5
    with pytest.raises(DepthpruneError, match="fewer than one batch"):
        DataPlan(ds, batch_size=1000, seed=0)
    with pytest.raises(DepthpruneError, match="--lr"):
        build(TrainOptions, {"output": "x", "lr": float("nan")}, flags=True)


def test_accelerate_configs_parse():
    from accelerate.commands.config.config_args import ClusterConfig

    for name, kind in (("ddp.yaml", "MULTI_GPU"), ("fsdp.yaml", "FSDP")):
        cfg = ClusterConfig.from_yaml_file(ROOT / "configs" / "accelerate" / name)
        assert str(cfg.distributed_type).endswith(kind)


def test_interrupt_in_first_step_then_resume(files, monkeypatch):
    """Interrupted before the first step finished: a step-0 checkpoint, from which --resume starts over."""
    out = files["root"] / "early"
    interrupt_at(monkeypatch, 1, "raise")
    assert run("retrain", "cpt", "--model", files["model"], "--data", files["text"], "--output", out,
               "--max-steps", 2, *CPT_ARGS) == 130
    monkeypatch.undo()
    assert run("retrain", "cpt", "--model", files["model"], "--data", files["text"], "--output", out,
               "--max-steps", 2, *CPT_ARGS, "--resume") == 0
    assert len(log_of(out)) == 2
    shutil.rmtree(out)


def test_cpt_keeps_checkpoints_only_while_unfinished_and_can_freeze_embeddings(files):
    """A finished run deletes its resume checkpoints unless --keep-checkpoints; frozen embeddings stay bitwise."""
    out = files["root"] / "frozen"
    assert run("retrain", "cpt", "--model", files["model"], "--data", files["text"], "--output", out,
               "--max-steps", 3, *CPT_ARGS[:-2], "--save-every", "1", "--freeze-embeddings") == 0
    assert not (out / "checkpoints").exists()
    before, after = load_file(files["model"] / "model.safetensors"), load_file(out / "model.safetensors")
    emb = next(k for k in before if "embed_tokens" in k)
    assert torch.equal(before[emb], after[emb])
    assert any(not torch.equal(before[k], after[k]) for k in before if "layers" in k)
    kept = files["root"] / "kept"
    assert run("retrain", "cpt", "--model", files["model"], "--data", files["text"], "--output", kept,
               "--max-steps", 3, *CPT_ARGS[:-2], "--save-every", "1", "--keep-checkpoints", "2") == 0
    assert sorted(p.name for p in (kept / "checkpoints").iterdir()) == ["step-00000002", "step-00000003"]


def test_cpt_random_init_trains_the_architecture_from_fresh_weights(files):
    out = files["root"] / "random"
    args = [a if a != "3e-3" else "1e-12" for a in CPT_ARGS]  # a vanishing lr: the saved weights are the init
    assert run("retrain", "cpt", "--model", files["model"], "--data", files["text"], "--output", out,
               "--max-steps", 1, *args, "--random-init") == 0
    before, after = load_file(files["model"] / "model.safetensors"), load_file(out / "model.safetensors")
    key = next(k for k in before if k.endswith("mlp.down_proj.weight"))
    assert not torch.equal(before[key], after[key])
    assert abs(float(after[key].float().std()) - 0.02) < 0.003  # the config's initializer_range
    assert json.loads((out / "retrain.json").read_text())["cpt"]["random_init"] is True
