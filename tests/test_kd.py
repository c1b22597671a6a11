"""Logit distillation: the vocabulary-sliced KL loss, and ``retrain kd`` on tiny models (CPU)."""

from __future__ import annotations

import json
import os
import signal
import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from tiny import SAMPLE_TEXT, save_tiny, tiny_tokenizer
from train_helpers import (
    ACCELERATE,
    TRAIN_ARGS,
    assert_ddp_matches_single,
    assert_resumed_equals_uninterrupted,
    log_of,
    run,
)

from depthprune.core import kd_loss
from depthprune.core.kd_loss import distill_loss, sequence_kl, sliced_kd_loss
from depthprune.retraining import kd as kd_mod

KD_ARGS = TRAIN_ARGS
HELD_OUT = ("Napoleon's army crossed the Niemen in June; the emperor watched from a hill as regiments marched. "
            "Rostov rode ahead with the hussars, thinking of home and of the letters he had not written. ") * 6


# ---------------------------------------------------------------------------------------------- the loss


def _reference(hs, ws, bs, ht, wt, bt, labels, cap, tau, w, autocast=False):
    """The same loss from full logits, in plain PyTorch (optionally the head matmuls under bf16 autocast)."""
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        zs = F.linear(hs, ws, bs).float()
        zt = F.linear(ht, wt, bt).float()
    if cap:
        zs, zt = torch.tanh(zs / cap) * cap, torch.tanh(zt / cap) * cap
    kl = F.kl_div(F.log_softmax(zs / tau, -1), F.log_softmax(zt / tau, -1), log_target=True, reduction="sum")
    return (1 - w) * tau * tau * kl + w * F.cross_entropy(zs, labels, reduction="sum")


def _count_slices(monkeypatch) -> dict:
    calls = {"n": 0}
    original = kd_loss._slice_logits

    def counted(*args, **kwargs):
        calls["n"] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(kd_loss, "_slice_logits", counted)
    return calls


@pytest.mark.parametrize("cap,tau,w,bias", [(None, 1.0, 0.0, False), (30.0, 1.0, 0.0, False),
                                            (30.0, 2.0, 0.3, True), (None, 0.7, 1.0, False)])
def test_sliced_kl_matches_full_logits_in_value_and_gradients(monkeypatch, cap, tau, w, bias):
    # slices of 1024 columns over a 3000-word vocabulary: 3 per head, the last one partial
    monkeypatch.setattr(kd_loss, "KD_GRAD_LOGITS_BYTES", 1)
    calls = _count_slices(monkeypatch)
    torch.manual_seed(0)
    V = 3000
    ws = (torch.randn(V, 16) * 0.5).requires_grad_(True)
    bs = torch.randn(V, requires_grad=True) if bias else None
    wt, bt = torch.randn(V, 24) * 0.5, (torch.randn(V) if bias else None)  # the teacher is wider: fine
    hs = torch.randn(19, 16, requires_grad=True)
    ht, labels = torch.randn(19, 24), torch.randint(0, V, (19,))
    ours = sliced_kd_loss(hs, ws, bs, ht, wt, bt, labels, cap, cap, tau, w)
    assert calls["n"] == 6  # forward: 3 slices x 2 heads
    ours.backward()
    got = [hs.grad.clone(), ws.grad.clone()] + ([bs.grad.clone()] if bias else [])
    hs.grad = ws.grad = None
    if bias:
        bs.grad = None
    ref = _reference(hs, ws, bs, ht, wt, bt, labels, cap, tau, w)
    ref.backward()
    want = [hs.grad, ws.grad] + ([bs.grad] if bias else [])
    assert float(ref) > 1.0
    assert abs(float(ours) - float(ref)) <= 1e-4 * abs(float(ref))
    for g, r in zip(got, want):
        assert float((g - r).abs().max()) <= 1e-4 * max(1.0, float(r.abs().max()))


def test_teacher_equal_to_student_gives_zero_loss_and_gradient(monkeypatch):
    monkeypatch.setattr(kd_loss, "KD_GRAD_LOGITS_BYTES", 1)
    torch.manual_seed(1)
    w = torch.randn(2500, 8, requires_grad=True)
    h = torch.randn(7, 8, requires_grad=True)
    labels = torch.randint(0, 2500, (7,))
    loss = sliced_kd_loss(h, w, None, h.detach(), w.detach(), None, labels, 30.0, 30.0, temperature=2.0)
    loss.backward()
    assert abs(float(loss)) < 1e-5
    assert float(h.grad.abs().max()) == 0.0 and float(w.grad.abs().max()) == 0.0
    # and a different teacher does give a loss and gradients (so the zero above is not vacuous)
    h.grad = w.grad = None
    loss = sliced_kd_loss(h, w, None, h.detach() + 0.5, w.detach(), None, labels, 30.0, 30.0, temperature=2.0)
    loss.backward()
    assert float(loss) > 1e-3 and float(h.grad.abs().max()) > 1e-4


def test_sliced_kl_under_bf16_autocast_matches_autocast_full_logits(monkeypatch):
    """Both heads' logits are bf16 matmuls in forward AND backward: gradients match full-logit autocast KL."""
    monkeypatch.setattr(kd_loss, "KD_GRAD_LOGITS_BYTES", 1)
    torch.manual_seed(0)
    V, d = 3000, 32
    ws = (torch.randn(V, d) * 8 / d**0.5).requires_grad_(True)  # logits of std ~8, where a mismatch shows
    wt = ws.detach() + 0.3 * torch.randn(V, d) * 8 / d**0.5
    hs = torch.randn(33, d, requires_grad=True)
    ht = hs.detach() + 0.2 * torch.randn(33, d)
    labels = torch.randint(0, V, (33,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = sliced_kd_loss(hs, ws, None, ht, wt, None, labels, None, None, 1.0, 0.0)
    ours.backward()
    got = [hs.grad.clone(), ws.grad.clone()]
    hs.grad = ws.grad = None
    ref = _reference(hs, ws, None, ht, wt, None, labels, None, 1.0, 0.0, autocast=True)
    ref.backward()
    assert abs(float(ours) - float(ref)) <= 5e-3 * float(ref)
    for g, r in zip(got, [hs.grad, ws.grad]):
        rel = float((g.float() - r.float()).norm() / r.float().norm())
        assert rel < 0.01, rel


def _fake_model(head, cap=None):
    model = types.SimpleNamespace(config=types.SimpleNamespace(final_logit_softcapping=cap))
    model.get_output_embeddings = lambda: head
    return model


class _WrappedHead(torch.nn.Module):
    """A head that is not a plain Linear (the token-chunked fallback path)."""

    def __init__(self, linear):
        super().__init__()
        self.inner = linear
        self.weight = linear.weight

    def forward(self, x):
        return self.inner(x)


def test_distill_loss_masks_labels_and_fallback_head_agrees():
    torch.manual_seed(0)
    head_s, head_t = torch.nn.Linear(16, 1500), torch.nn.Linear(16, 1500)
    hs = torch.randn(2, 6, 16, requires_grad=True)
    ht = torch.randn(2, 6, 16)
    labels = torch.randint(0, 1500, (2, 6))
    labels[:, -1] = -100
    sliced, n = distill_loss(_fake_model(head_s, 20.0), _fake_model(head_t, 20.0), hs, ht, labels, 1.5, 0.2)
    full, m = distill_loss(_fake_model(_WrappedHead(head_s), 20.0), _fake_model(_WrappedHead(head_t), 20.0),
                           hs, ht, labels, 1.5, 0.2)
    keep = labels.reshape(-1) != -100
    ref = _reference(hs.reshape(-1, 16)[keep], head_s.weight, head_s.bias, ht.reshape(-1, 16)[keep],
                     head_t.weight, head_t.bias, labels.reshape(-1)[keep], 20.0, 1.5, 0.2)
    assert n == m == 10
    assert torch.allclose(sliced, ref, rtol=1e-5) and torch.allclose(full, ref, rtol=1e-5)


# ------------------------------------------------------------------------------------------ retrain kd




@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict:
    """A tiny 4-block Gemma 3 teacher, the student = it with 2 blocks removed (by 'depthprune prune')."""
    root = tmp_path_factory.mktemp("kd")
    teacher = save_tiny("gemma3_text", root / "teacher", layers=4)
    student = root / "student"
    assert run("prune", "--model", teacher, "--criterion", "magnitude", "--num-blocks", 2, "--eval-windows", 0,
               "--output", student) == 0
    text = root / "text.txt"
    text.write_text(SAMPLE_TEXT)
    return {"root": root, "teacher": teacher, "student": student, "text": text}


@pytest.fixture(scope="module")
def kd_run(files) -> Path:
    out = files["root"] / "kd"
    assert run("retrain", "kd", "--model", files["student"], "--data", files["text"], "--output", out,
               "--max-steps", 16, *KD_ARGS) == 0
    return out


def _held_out_ids():
    tok = tiny_tokenizer()
    ids = tok(HELD_OUT, add_special_tokens=False)["input_ids"]
    width = 32
    rows = [ids[i : i + width] for i in range(0, len(ids) - width, width)][:8]
    return torch.tensor([[tok.bos_token_id] + r for r in rows])


def test_kd_lowers_held_out_kl_and_records_teacher(files, kd_run):
    from transformers import AutoModelForCausalLM

    teacher = AutoModelForCausalLM.from_pretrained(files["teacher"]).eval()
    before = AutoModelForCausalLM.from_pretrained(files["student"]).eval()
    after = AutoModelForCausalLM.from_pretrained(kd_run).eval()  # a stock checkpoint
    assert after.config.num_hidden_layers == 2
    ids = _held_out_ids()
    kl_before, kl_after = sequence_kl(before, teacher, ids), sequence_kl(after, teacher, ids)
    assert kl_after < 0.7 * kl_before, (kl_before, kl_after)
    assert sequence_kl(teacher, teacher, ids) < 1e-6
    log = log_of(kd_run)
    assert [r["step"] for r in log] == list(range(1, 17)) and log[-1]["loss"] < log[0]["loss"]
    info = json.loads((kd_run / "retrain.json").read_text())
    assert info["method"] == "kd" and info["kd"]["temperature"] == 1.0 and info["kd"]["ce_weight"] == 0.0
    assert info["teacher"]["from"] == "pruning.json"
    assert Path(info["teacher"]["source"]).resolve() == files["teacher"].resolve()
    assert info["result"]["trainable_params"] == info["result"]["total_params"]  # the teacher is not counted
    pruning = json.loads((kd_run / "pruning.json").read_text())
    assert Path(pruning["source_model_path"]) == files["teacher"].resolve()


def _interrupt_at(monkeypatch, call: int) -> None:
    original = kd_mod.DistillLoss.forward
    count = {"n": 0}

    def forward(self, *args, **kwargs):
        count["n"] += 1
        if count["n"] == call:
            os.kill(os.getpid(), signal.SIGINT)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(kd_mod.DistillLoss, "forward", forward)


def test_kd_ctrl_c_then_resume_matches_uninterrupted(files, kd_run, monkeypatch, capsys):
    out = files["root"] / "kd_resumed"
    args = ["retrain", "kd", "--model", files["student"], "--data", files["text"], "--output", out,
            "--max-steps", 16, *KD_ARGS, "--keep-checkpoints", 1]  # kept after the end: resumed once more below
    _interrupt_at(monkeypatch, 2 * 5 + 1)  # Ctrl-C during step 6: it finishes, checkpoints, stops
    assert run(*args) == 130
    assert (out / "checkpoints" / "step-00000006").is_dir() and not (out / "model.safetensors").exists()
    ckpt = load_file(out / "checkpoints" / "step-00000006" / "trainable.safetensors")
    assert ckpt and all(k.startswith("lm.") for k in ckpt)  # the student only: no teacher tensors
    monkeypatch.undo()
    assert run(*args, "--resume") == 0
    assert_resumed_equals_uninterrupted(kd_run, out, 16)
    # resuming with another temperature is refused (the fingerprint holds the distillation settings)
    assert run(*args, "--resume", "--temperature", 2) == 2
    assert "temperature: 1.0 then, 2.0 now" in capsys.readouterr().err


def test_kd_lora_merge_writes_a_stock_checkpoint(files):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = files["root"] / "kd_lora"
    assert run("retrain", "kd", "--model", files["student"], "--teacher", files["teacher"], "--data", files["text"],
               "--output", out, "--max-steps", 6, *KD_ARGS, "--lora", "--rank", 4, "--merge", "--lr", "1e-2",
               "--temperature", 2, "--ce-weight", 0.25) == 0
    keys = load_file(out / "model.safetensors").keys()
    assert keys and not [k for k in keys if "lora" in k or "base_model" in k]
    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(merged).__name__ == "Gemma3ForCausalLM" and merged.config.num_hidden_layers == 2
    base = AutoModelForCausalLM.from_pretrained(files["student"])
    peft_model = PeftModel.from_pretrained(base, out / "adapter").eval()
    ids = torch.randint(3, 300, (2, 20))
    with torch.no_grad():
        assert float((merged(ids).logits - peft_model(ids).logits).abs().max()) < 1e-4
        untrained = AutoModelForCausalLM.from_pretrained(files["student"]).eval()  # (peft wrapped `base` in place)
        assert float((merged(ids).logits - untrained(ids).logits).abs().max()) > 1e-3  # training changed it
    info = json.loads((out / "retrain.json").read_text())
    assert info["method"] == "kd-lora" and info["teacher"]["from"] == "--teacher"
    assert info["kd"]["temperature"] == 2.0 and info["kd"]["ce_weight"] == 0.25
    assert info["result"]["trainable_params"] < info["result"]["total_params"] / 10


def _other_tokenizer_teacher(root: Path) -> Path:
    """Same vocabulary size, another tokenizer (trained on other text)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    path = save_tiny("gemma3_text", root / "other_tok", layers=2)
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=["<pad>", "<s>", "</s>", "<unk>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([HELD_OUT], trainer)
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                            bos_token="<s>").save_pretrained(path)
    return path


@pytest.mark.parametrize("case", ["vocab", "tokenizer", "temperature", "negative", "ce", "no_teacher", "merge"])
def test_bad_kd_input_is_a_clear_error_and_writes_nothing(files, case, capsys):
    root = files["root"]
    out = root / f"bad_{case}"
    base = ["retrain", "kd", "--model", files["student"], "--data", files["text"], "--output", out, *KD_ARGS,
            "--max-steps", 1]
    if case == "vocab":
        teacher = save_tiny("gemma3_text", root / "big_vocab", layers=2, vocab_size=400)
        argv, expected = base + ["--teacher", teacher], "its vocabulary has 400 tokens, the student's 320"
    elif case == "tokenizer":
        argv, expected = base + ["--teacher", _other_tokenizer_teacher(root)], "its tokenizer encodes"
    elif case == "temperature":
        argv, expected = base + ["--temperature", 0], "--temperature must be > 0.0, got 0.0"
    elif case == "negative":
        argv, expected = base + ["--temperature", -1], "--temperature must be > 0.0, got -1.0"
    elif case == "ce":
        argv, expected = base + ["--ce-weight", 1.5], "--ce-weight must be <= 1.0, got 1.5"
    elif case == "no_teacher":
        argv = ["retrain", "kd", "--model", files["teacher"], "--data", files["text"], "--output", out, *KD_ARGS]
        expected = "has no pruning.json naming the model it was pruned from; pass --teacher"
    else:
        argv, expected = base + ["--merge"], "--merge applies with lora: true (--lora) only"
    assert run(*argv) == 2
    err = capsys.readouterr().err
    assert expected in err, err
    if case in ("vocab", "tokenizer"):
        assert "--teacher" in err
    assert not out.exists()



@pytest.mark.skipif(not ACCELERATE.exists(), reason="accelerate CLI not installed")
def test_kd_ddp_two_cpu_processes_match_one(files):
    common = ["retrain", "kd", "--model", files["student"], "--data", files["text"], "--max-steps", 3,
              *KD_ARGS, "--micro-batch-size", "1", "--cpu"]
    single = files["root"] / "kd_ddp1"
    double = files["root"] / "kd_ddp2"
    assert_ddp_matches_single(common, single, double)
