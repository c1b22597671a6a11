"""Inference benchmark: exact output length, all settings in the JSON, OOM handling, the bytes/FLOPs model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tiny import tiny_config, tiny_model, tiny_tokenizer
from transformers import AutoConfig, AutoModelForCausalLM

import depthprune.speed.measure as measure
from depthprune.cli import main
from depthprune.errors import DepthpruneError
from depthprune.models.options import ModelOptions
from depthprune.pruning import remove_blocks
from depthprune.speed import (
    BenchOptions,
    attention_flops_per_token,
    cost_model,
    generate_exact,
    is_oom,
    make_prompt,
    measure_setting,
    parse_int_list,
    run_benchmark,
)

REPO = Path(__file__).resolve().parents[1]
LLAMA_7B = REPO / "experiments" / "configs" / "llama-7b.json"


@pytest.fixture(autouse=True)
def _restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def dense_and_pruned(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny 6-block LLaMA and the same model with blocks 1 and 3 removed, both saved with a tokenizer."""
    root = tmp_path_factory.mktemp("bench")
    dirs = []
    for name, drop in (("dense", []), ("pruned", [1, 3])):
        model = tiny_model("llama", 6)
        if drop:
            remove_blocks(model, drop)
        model.save_pretrained(root / name)
        tiny_tokenizer().save_pretrained(root / name)
        dirs.append(root / name)
    return dirs[0], dirs[1]


def test_exact_length_even_when_eos_is_the_greedy_token():
    model = tiny_model("llama", 2)
    prompt = make_prompt(tiny_tokenizer(), 12, 320)
    assert prompt.shape == (1, 12)
    with torch.inference_mode():
        first = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=1, do_sample=False)
    greedy = int(first[0, -1])
    model.generation_config.eos_token_id = greedy
    with torch.inference_mode():  # the unforced generation stops at once: the test below is meaningful
        plain = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=6, do_sample=False)
    assert plain.shape[1] - 12 < 6
    out = generate_exact(model, prompt.repeat(3, 1), 6)
    assert out.shape == (3, 12 + 6)
    rec = measure_setting(model, prompt, batch_size=2, new_tokens=5, warmup=0, runs=1)
    assert rec["status"] == "ok" and rec["new_tokens_per_sequence"] == [5]


def test_prompt_without_tokenizer_is_fixed_length():
    ids = make_prompt(None, 12, 320, bos_token_id=1)
    assert ids.shape == (1, 12) and int(ids[0, 0]) == 1 and int(ids.max()) < 320
    assert torch.equal(ids, make_prompt(None, 12, 320, bos_token_id=1))


def _bench_args(models, tmp_path, *extra) -> list[str]:
    args = ["bench"]
    for m in models:
        args += ["--model", str(m)]
    return args + ["--device", "cpu", "--threads", "1", "--batch-sizes", "1,2", "--output-lengths", "2,4",
                   "--warmup", "1", "--runs", "2", "--json", str(tmp_path / "bench.json"),
                   "--plot", str(tmp_path / "bench.png"), "--markdown", str(tmp_path / "bench.md"), *extra]


def test_cli_writes_every_setting(dense_and_pruned, tmp_path, capsys):
    dense, pruned = dense_and_pruned
    assert main(_bench_args([dense, pruned], tmp_path)) == 0
    res = json.loads((tmp_path / "bench.json").read_text())
    assert res["complete"] and res["baseline"] == "dense"
    got = {(s["model"], s["batch_size"], s["output_length"]) for s in res["settings"]}
    assert got == {(m, b, n) for m in ("dense", "pruned") for b in (1, 2) for n in (2, 4)}
    for s in res["settings"]:
        assert s["status"] == "ok" and len(s["latencies_s"]) == 2
        assert s["new_tokens_per_sequence"] == [s["output_length"]]
        assert s["throughput_tok_s"] == pytest.approx(s["batch_size"] * s["output_length"] / s["latency_mean_s"])
        assert s["peak_memory_bytes"] > 0 and "RSS" in s["memory_method"]
        assert s["speedup"] > 0
    dense_m, pruned_m = res["models"]
    assert (dense_m["num_blocks"], pruned_m["num_blocks"]) == (6, 4)
    assert pruned_m["ideal_speedup_bytes"] == pytest.approx(970240 / 674304)  # hand count below
    assert [s["speedup"] for s in res["settings"] if s["model"] == "dense"] == [1.0] * 4
    assert res["protocol"]["input_tokens"] == 12 and res["environment"]["torch_threads"] == 1
    md = (tmp_path / "bench.md").read_text()
    assert "| pruned | 188.99K | 4 | 2 | 4 |" in md and "1.44× / 1.44×" in md
    assert (tmp_path / "bench.png").read_bytes()[:4] == b"\x89PNG"
    assert "| dense |" in capsys.readouterr().out


def test_oom_setting_is_reported_and_run_continues(dense_and_pruned, tmp_path, monkeypatch, capsys):
    real = measure.generate_exact

    def fake(model, input_ids, new_tokens, pad_token_id=None):
        if input_ids.shape[0] == 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(model, input_ids, new_tokens, pad_token_id)

    monkeypatch.setattr(measure, "generate_exact", fake)
    dense, pruned = dense_and_pruned
    assert main(_bench_args([dense, pruned], tmp_path, "--output-lengths", "3")) == 0
    res = json.loads((tmp_path / "bench.json").read_text())
    status = {(s["model"], s["batch_size"]): s["status"] for s in res["settings"]}
    assert status == {("dense", 1): "ok", ("dense", 2): "OOM", ("pruned", 1): "ok", ("pruned", 2): "OOM"}
    assert "OutOfMemoryError" in next(s["error"] for s in res["settings"] if s["status"] == "OOM")
    table = capsys.readouterr().out
    assert "| dense | 262.98K | 6 | 2 | 3 | OOM | OOM | OOM | — |" in table
    assert (tmp_path / "bench.png").exists()


def test_is_oom_and_other_errors_propagate(monkeypatch):
    assert is_oom(torch.OutOfMemoryError("x"))
    assert is_oom(RuntimeError("CUDA error: out of memory"))
    assert is_oom(MemoryError())
    assert not is_oom(RuntimeError("shape mismatch"))
    assert not is_oom(ValueError("out of memory"))

    def boom(*a, **k):
        raise RuntimeError("shape mismatch")

    monkeypatch.setattr(measure, "generate_exact", boom)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        measure_setting(tiny_model("llama", 1), make_prompt(None, 4, 320), 1, 2, 0, 1)


def test_bytes_and_flops_match_hand_count():
    # tiny LLaMA: hidden 64, 4 heads x head_dim 16 (q/o: 64x64), 2 KV heads (k/v: 64x32), MLP 128, vocab 320, fp32
    q = o = 64 * 64
    k = v = 64 * 32
    mlp = 3 * 64 * 128
    block_params = q + k + v + o + mlp + 2 * 64  # + input/post-attention RMSNorm weights = 36992
    block_macs = q + k + v + o + mlp  # 36864
    head = 320 * 64
    for layers in (6, 4):
        cost = cost_model(tiny_model("llama", layers))
        assert cost.bytes_blocks == 4 * layers * block_params
        assert cost.bytes_embedding_rows == 4 * 64  # one row of the input embedding
        assert cost.bytes_final_norm == 4 * 64
        assert cost.bytes_lm_head == 4 * head
        assert cost.bytes_other == 0
        assert cost.bytes_per_token == 4 * (layers * block_params + 64 + 64 + head)
        assert cost.flops_per_token == 2 * (layers * block_macs + head)
    assert cost_model(tiny_model("llama", 6)).bytes_per_token == 970240
    assert cost_model(tiny_model("llama", 4)).bytes_per_token == 674304
    assert cost_model(tiny_model("llama", 6)).flops_per_token == 483328

    # tied embeddings: one parameter matrix fewer, but the head still reads all of it per token
    tied = cost_model(tiny_model("llama", 6, tie_word_embeddings=True))
    assert tied.num_params == cost_model(tiny_model("llama", 6)).num_params - head
    assert tied.bytes_per_token == 970240 and tied.bytes_lm_head == 4 * head


def test_attention_flops_hand_count():
    # full attention: 4 x heads x head_dim x context per block (QK^T and AV, 2 FLOPs per multiply-add)
    assert attention_flops_per_token(tiny_model("llama", 6), 10) == 6 * 4 * 4 * 16 * 10
    # Gemma 3 tiny: layer_types S S F S S F, sliding_window 8 -> sliding blocks see min(20, 8) positions
    gemma = tiny_model("gemma3_text", 6)
    assert attention_flops_per_token(gemma, 20) == 4 * (4 * 4 * 16 * 8) + 2 * (4 * 4 * 16 * 20)


def test_llama_7b_config_hand_count():
    fields = json.loads(LLAMA_7B.read_text())
    config = AutoConfig.for_model(fields.pop("model_type"), **fields)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float16)
    cost = cost_model(model)
    block = 4 * 4096 * 4096 + 3 * 4096 * 11008  # q, k, v, o + gate, up, down: 202,375,168 multiply-adds
    assert cost.num_params == 6_738_415_616  # LLaMA-7B
    assert cost.bytes_per_token == 2 * (32 * (block + 2 * 4096) + 32000 * 4096 + 4096 + 4096) == 13_214_695_424
    assert cost.flops_per_token == 2 * (32 * block + 32000 * 4096) == 13_214_154_752


def test_config_source_random_weights(tmp_path):
    cfg = tiny_config("llama", 6)
    cfg.save_pretrained(tmp_path)
    src = f"config:{tmp_path / 'config.json'},num_hidden_layers=2"
    opts = BenchOptions(batch_sizes=[1], output_lengths=[3], input_tokens=5, warmup=0, runs=1)
    res = run_benchmark([src], opts, ModelOptions(device="cpu"), log=lambda s: None)
    (m,) = res["models"]
    assert m["random_weights"] and m["label"] == f"{tmp_path.name} (random, 2 blocks)"
    assert m["num_blocks"] == 2 and m["dtype"] == "torch.float32"
    (s,) = res["settings"]
    assert s["status"] == "ok" and s["input_tokens"] == 5 and s["new_tokens_per_sequence"] == [3]


def test_parse_int_list():
    assert parse_int_list("--batch-sizes", "16, 1,4,4") == [1, 4, 16]
    with pytest.raises(DepthpruneError, match="--batch-sizes"):
        parse_int_list("--batch-sizes", "1,,2")


@pytest.mark.parametrize("extra, message", [
    (["--batch-sizes", "0"], "--batch-sizes must be positive"),
    (["--output-lengths", "-5"], "--output-lengths must be positive"),
    (["--runs", "0"], "--runs must be >= 1, got 0"),
    (["--warmup", "-1"], "--warmup must be >= 0, got -1"),
    (["--input-tokens", "0"], "--input-tokens must be >= 1, got 0"),
    (["--batch-sizes", "1,x"], "'x' is not an integer"),
    (["--output-lengths", "2.5"], "'2.5' is not an integer"),
    (["--batch-sizes", ""], "--batch-sizes is empty"),
    (["--threads", "0"], "--threads must be >= 1, got 0"),
    (["--plot", "out.txt"], "--plot out.txt: use one of the suffixes"),
    (["--model", "config:/no/such/config.json"], "no such config file"),
    (["--model", "./no/such/dir"], "no such file or directory"),
])
def test_bad_input(extra, message, tmp_path, capsys):
    out = tmp_path / "out.json"
    args = ["bench", "--model", "gemma-3-270m", "--json", str(out), *extra]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("depthprune: error:") and message in err
    assert not out.exists()


def test_bad_config_override(tmp_path, capsys):
    tiny_config("llama", 2).save_pretrained(tmp_path)
    assert main(["bench", "--model", f"config:{tmp_path / 'config.json'},layers"]) == 2
    assert "is not key=value" in capsys.readouterr().err


@pytest.mark.real_model
def test_embedded_gemma_cost_and_one_setting(embedded):
    model = embedded.model
    cost = cost_model(model)
    vocab, hidden = model.config.vocab_size, model.config.hidden_size
    assert model.config.tie_word_embeddings
    assert cost.bytes_lm_head == 4 * vocab * hidden  # tied: the head reads the whole (shared) matrix
    assert cost.bytes_embedding_rows == 4 * hidden
    assert cost.bytes_per_token == 4 * (cost.num_params - vocab * hidden) + 4 * vocab * hidden + 4 * hidden
    prompt = make_prompt(embedded.tokenizer, 12, vocab)
    assert int(prompt[0, 0]) == embedded.tokenizer.bos_token_id
    rec = measure_setting(model, prompt, batch_size=1, new_tokens=4, warmup=0, runs=1)
    assert rec["status"] == "ok" and rec["new_tokens_per_sequence"] == [4]
