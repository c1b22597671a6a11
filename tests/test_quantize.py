"""``depthprune quantize`` (GPTQ through llmcompressor) on tiny models: the checkpoint, its record, loading it with
plain transformers and through depthprune, evaluation and bench on it, bad inputs, and the pipeline stage.

The tests that run GPTQ need the quant extra; CI installs it (see .ci/run), so they run there.
"""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors import safe_open
from tiny import SAMPLE_TEXT, save_tiny
from transformers import AutoModelForCausalLM

import depthprune as dp
from depthprune.cli import main
from depthprune.models.params import count_params
from depthprune.quantization import gptq
from depthprune.speed import markdown_report

HAS_LIB = all(importlib.util.find_spec(m) is not None for m in ("llmcompressor", "compressed_tensors"))
needs_lib = pytest.mark.skipif(not HAS_LIB, reason="the quant extra is not installed (pip install -e '.[quant]' && "
                                                   "pip install --no-deps llmcompressor==0.14.0.1); CI installs it")
SHAPE = dict(hidden_size=128, intermediate_size=256, head_dim=32)  # every Linear input a multiple of 128
PPL_TOLERANCE = 0.05
"""|log(PPL 4-bit / PPL float)| allowed on the tiny random models (measured: 0.002-0.012)."""


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("quant")
    text = root / "text.txt"
    text.write_text(SAMPLE_TEXT)
    return {"root": root, "text": text,
            "llama": save_tiny("llama", root / "llama", layers=3, **SHAPE),
            "gemma3_text": save_tiny("gemma3_text", root / "gemma", layers=3, query_pre_attn_scalar=32, **SHAPE)}


def calib(files: dict) -> dict:
    return {"calib": str(files["text"]), "calib_samples": 16, "seq_len": 64}


def ppl(model, files: dict) -> float:
    return dp.perplexity(str(model), dataset=str(files["text"]), seq_len=32, limit=8, progress=False).ppl


def no_leftovers(out: Path) -> bool:
    """Nothing at ``out`` and no staging directory beside it."""
    return not out.exists() and not [p for p in out.parent.glob(f".{out.name}*")]


@pytest.fixture(scope="module")
def quantized(files) -> dict:
    if not HAS_LIB:
        pytest.skip("the quant extra is not installed; CI installs it")
    out = {}
    for mt in ("llama", "gemma3_text"):
        res = dp.quantize(str(files[mt]), output=files["root"] / f"{mt}-w4", log=None, **calib(files))
        out[mt] = res
    return out


@needs_lib
@pytest.mark.parametrize("mt", ["llama", "gemma3_text"])
def test_quantized_checkpoint_record_and_plain_transformers_load(files, quantized, mt):
    res, src = quantized[mt], files[mt]
    info = json.loads((res.output / "quantization.json").read_text())
    assert info == res.info
    assert (info["method"], info["scheme"], info["bits"], info["group_size"], info["format"]) == \
        ("gptq", "W4A16", 4, 128, "pack-quantized")
    assert info["calibration"]["source"] == str(files["text"])
    assert (info["calibration"]["samples"], info["calibration"]["seq_len"], info["calibration"]["seed"]) == (16, 64, 0)
    assert info["calibration"]["num_tokens"] == 16 * 65  # BOS in front of every window
    assert info["source_model"] == str(src)
    assert {"llmcompressor", "compressed-tensors", "torch", "transformers"} <= set(info["versions"])
    assert info["wall_s"]["total"] >= info["wall_s"]["gptq"] > 0
    # the share quantized: every Linear but the LM head, over the distinct parameters
    float_model = AutoModelForCausalLM.from_pretrained(src)
    head = float_model.get_output_embeddings()
    linear = sum(m.weight.numel() for m in float_model.modules() if isinstance(m, torch.nn.Linear) and m is not head)
    assert info["params"]["quantized"] == linear and info["params"]["total"] == count_params(float_model)
    assert info["params"]["share_quantized"] == pytest.approx(linear / count_params(float_model))
    assert info["params"]["quantized_layers"] == 3 * 7
    tied = mt == "gemma3_text"
    assert (info["params"]["lm_head"] == "tied to the input embedding") is tied
    # size on disk: what the record says, and smaller than the float32 source and its bfloat16 equivalent
    disk = info["disk_bytes"]
    assert disk["output_weights"] == (res.output / "model.safetensors").stat().st_size
    assert disk["source_weights"] == (src / "model.safetensors").stat().st_size
    assert disk["output_weights"] < 0.6 * disk["float_weights_at_dtype"] < 0.6 * disk["source_weights"]
    # the stored tensors: block Linears packed with scales, embeddings / LM head / norms left float
    with safe_open(res.output / "model.safetensors", "pt") as f:
        keys = set(f.keys())
        emb = f.get_tensor("model.embed_tokens.weight")
    packed = {k.rsplit(".", 1)[0] for k in keys if k.endswith(".weight_packed")}
    assert len(packed) == 21 and all(f"{p}.weight_scale" in keys and f"{p}.weight" not in keys for p in packed)
    assert not any(k.startswith(("model.embed_tokens.weight_", "lm_head.weight_")) for k in keys)
    assert ("lm_head.weight" in keys) is not tied
    assert emb.dtype == torch.bfloat16 and torch.equal(emb, float_model.get_input_embeddings().weight.bfloat16())
    config = json.loads((res.output / "config.json").read_text())["quantization_config"]
    assert config["quant_method"] == "compressed-tensors" and config["ignore"] == ["lm_head"]
    # plain transformers (compressed-tensors installed) loads it compressed, with the tie intact
    plain = AutoModelForCausalLM.from_pretrained(res.output)
    q = plain.model.layers[0].self_attn.q_proj
    assert hasattr(q, "weight_packed") and q.weight_packed.dtype == torch.int32
    assert (plain.lm_head.weight is plain.get_input_embeddings().weight) is tied
    ids = torch.tensor([[1, 40, 41, 42, 43, 44]])
    with torch.no_grad():
        assert torch.isfinite(plain(ids).logits).all()


@needs_lib
@pytest.mark.parametrize("mt", ["llama", "gemma3_text"])
def test_quantized_model_evaluates_close_to_float(files, quantized, mt):
    out = quantized[mt].output
    model, _ = dp.load(str(out))  # depthprune dequantizes at load: float Linear weights, recorded on the model
    assert model.depthprune_quantization["bits"] == 4
    assert model.depthprune_quantization["in_memory"] == "dequantized to float32 at load"
    float_model, _ = dp.load(str(files[mt]))
    for name, mod in float_model.named_modules():
        if isinstance(mod, torch.nn.Linear) and mod is not float_model.get_output_embeddings():
            deq = model.get_submodule(name).weight
            assert deq.dtype == torch.float32
            err = ((deq - mod.weight).norm() / mod.weight.norm()).item()
            assert 0 < err < 0.3, (name, err)  # changed (quantized), but by 4-bit rounding only
    p_float, p_quant = ppl(files[mt], files), ppl(out, files)
    assert math.isfinite(p_quant) and abs(math.log(p_quant / p_float)) < PPL_TOLERANCE, (p_float, p_quant)


@needs_lib
def test_eight_bits_and_smaller_groups(files, quantized, tmp_path):
    res = dp.quantize(str(files["llama"]), output=tmp_path / "w8", bits=8, group_size=64, log=None, **calib(files))
    weights = json.loads((res.output / "config.json").read_text())["quantization_config"]["config_groups"]
    assert (weights["group_0"]["weights"]["num_bits"], weights["group_0"]["weights"]["group_size"]) == (8, 64)
    assert res.info["scheme"] == "W8A16"
    f, _ = dp.load(str(files["llama"]))
    m4, _ = dp.load(str(quantized["llama"].output))
    m8, _ = dp.load(str(res.output))
    w, w4, w8 = (m.model.layers[1].mlp.down_proj.weight for m in (f, m4, m8))
    assert (w8 - w).norm() < 0.1 * (w4 - w).norm()
    assert quantized["llama"].info["disk_bytes"]["output_weights"] < res.info["disk_bytes"]["output_weights"]


@needs_lib
def test_cli_eval_ppl_zeroshot_and_bench_on_quantized_dir(files, quantized, tmp_path, capsys):
    out = quantized["llama"].output
    assert main(["quantize", "--model", str(files["llama"]), "--output", str(tmp_path / "cli"),
                 "--calib", str(files["text"]), "--calib-samples", "8", "--seq-len", "32"]) == 0
    printed = capsys.readouterr().out
    assert "of the parameters (21 Linear layers) to 4 bits" in printed
    assert json.loads((tmp_path / "cli" / "quantization.json").read_text())["calibration"]["samples"] == 8
    assert main(["eval", "ppl", "--model", str(out), "--dataset", str(files["text"]), "--seq-len", "32", "--limit",
                 "4", "--json", str(tmp_path / "ppl.json")]) == 0
    written = json.loads((tmp_path / "ppl.json").read_text())
    assert math.isfinite(written["ppl"]) and written["quantization"]["in_memory"] == "dequantized to float32 at load"
    assert main(["eval", "zeroshot", "--model", str(out), "--tasks", "piqa", "--limit", "3", "--source", "local",
                 "--json", str(tmp_path / "zs.json")]) == 0
    written = json.loads((tmp_path / "zs.json").read_text())
    assert written["tasks"]["piqa"]["n"] == 3 and written["quantization"]["bits"] == 4
    result = dp.bench([str(files["llama"]), str(out)], batch_sizes=[1], output_lengths=[2], warmup=0, runs=1,
                      log=None)
    base, quant = (m["weights"] for m in result["models"])
    assert base["stored_as"] == "float" and quant["stored_as"].startswith("4-bit pack-quantized (group 128)")
    assert quant["in_memory_bytes"] == base["in_memory_bytes"] and quant["in_memory_dtypes"] == ["float32"]
    assert quant["on_disk_bytes"] == (out / "model.safetensors").stat().st_size < base["on_disk_bytes"]
    report = markdown_report(result)
    assert "| model | in memory | dtype | on disk | stored as |" in report and "dequantized to float32" in report


@needs_lib
def test_live_model_is_quantized_from_a_copy(files, quantized, tmp_path):
    model, tok = dp.load(str(files["gemma3_text"]))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(dp.DepthpruneError, match="needs its tokenizer"):
        dp.quantize(model, output=tmp_path / "none", log=None, **calib(files))
    res = dp.quantize(model, tok, output=tmp_path / "live", log=None, **calib(files))
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # the caller's model untouched
    assert res.info["source_model"] == str(files["gemma3_text"]) and res.info["source_dir"] is None
    with safe_open(res.output / "model.safetensors", "pt") as f, \
            safe_open(quantized["gemma3_text"].output / "model.safetensors", "pt") as g:
        assert set(f.keys()) == set(g.keys())  # the same checkpoint as quantizing the directory
        assert torch.equal(f.get_tensor("model.layers.0.mlp.down_proj.weight_packed"),
                           g.get_tensor("model.layers.0.mlp.down_proj.weight_packed"))


# --- bad inputs: each fails clearly and leaves nothing at --output -------------------------------------------------


def test_unsupported_bits_and_existing_output_refused(files, tmp_path, capsys):
    out = tmp_path / "q"
    assert main(["quantize", "--model", str(files["llama"]), "--bits", "3", "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--bits must be one of 4 (W4A16), 8 (W8A16), got 3" in err
    assert no_leftovers(out)
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["quantize", "--model", str(files["llama"]), "--output", str(out)]) == 2
    assert "exists and is not empty; pass --overwrite" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    src = files["llama"]
    before = sorted(p.name for p in src.iterdir())
    assert main(["quantize", "--model", str(src), "--output", str(src), "--overwrite"]) == 2
    assert "is the source model's directory" in capsys.readouterr().err
    assert sorted(p.name for p in src.iterdir()) == before


def test_missing_library_is_one_line_naming_the_install(files, tmp_path, capsys, monkeypatch):
    real = importlib.util.find_spec
    hidden = ("llmcompressor", "compressed_tensors")
    monkeypatch.setattr(gptq.importlib.util, "find_spec", lambda name, *a: None if name in hidden else real(name, *a))
    out = tmp_path / "q"
    assert main(["quantize", "--model", str(files["llama"]), "--output", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("depthprune: error: quantization needs llmcompressor and compressed-tensors (not installed): "
                   "pip install -e '.[quant]' && pip install --no-deps llmcompressor==0.14.0.1")
    assert no_leftovers(out)


def test_nothing_else_imports_the_library():
    code = ("import sys, depthprune, depthprune.cli, depthprune.pipeline, depthprune.quantization, depthprune.speed; "
            "depthprune.cli.build_parser(); assert 'llmcompressor' not in sys.modules, 'imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


@needs_lib
@pytest.mark.parametrize("case", ["no_weights", "no_calibration", "group_size", "narrow_model"])
def test_bad_input_fails_before_writing(files, tmp_path, capsys, case):
    out, args = tmp_path / "q", []
    if case == "no_weights":
        src = tmp_path / "empty"
        src.mkdir()
        for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
            (src / name).write_bytes((files["llama"] / name).read_bytes())
        expected = "directory has config.json but no weights (*.safetensors / *.bin)"
    elif case == "no_calibration":
        src, args = files["llama"], ["--calib", str(tmp_path / "missing.jsonl")]
        expected = f"dataset file {tmp_path / 'missing.jsonl'} does not exist"
    elif case == "group_size":
        src, args = files["llama"], ["--group-size", "96"]
        expected = ("--group-size 96 does not divide the input features of 21 of 21 layers to quantize: "
                    "model.layers.0.self_attn.q_proj (128)")
    else:  # hidden size 64: the default group of 128 fits no layer
        src = save_tiny("llama", tmp_path / "narrow", layers=2)
        expected = "group sizes that divide every layer: 64, 32, 16, 8"
    assert main(["quantize", "--model", str(src), "--output", str(out), *args]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("depthprune: error:")]
    assert len(errors) == 1 and expected in errors[0], errors
    assert no_leftovers(out)


def test_quantize_options_in_yaml_are_checked(files, tmp_path):
    cfg = {"name": "q", "model": str(files["llama"]), "prune": {"criterion": "magnitude", "target": {"num_blocks": 1}},
           "quantize": {"bits": 3, "group_sze": 64}}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(dp.DepthpruneError) as exc:
        dp.run(path, runs_dir=tmp_path / "runs")
    assert "quantize.bits: must be one of 4 (W4A16), 8 (W8A16), got 3" in str(exc.value)
    assert "quantize.group_sze: unknown field" in str(exc.value)
    assert not (tmp_path / "runs").exists()


# --- the pipeline stage ---------------------------------------------------------------------------------------------


@needs_lib
def test_pipeline_prune_quantize_eval_and_resume(files, tmp_path, capsys):
    from depthprune.report.collect import collect_experiment

    cfg = {"name": "pq", "model": {"source": str(files["llama"]), "device": "cpu"},
           "prune": {"criterion": "magnitude", "target": {"num_blocks": 1}},
           "quantize": calib(files) | {"calib_samples": 8, "seq_len": 32},
           "evaluate": {"baseline": False, "ppl": {"datasets": [str(files["text"])], "seq_len": 32, "limit": 4}}}
    path = tmp_path / "pq.yaml"
    path.write_text(yaml.safe_dump(cfg))
    runs = tmp_path / "runs"
    first = dp.run(path, runs_dir=runs)
    assert first.ran == ["score", "prune", "quantize", "eval"]
    root = runs / "pq"
    qdir = root / "quantized"
    info = json.loads((qdir / "quantization.json").read_text())
    assert info["source_dir"] == str((root / "pruned").resolve()) and info["carried"] == ["pruning.json"]
    assert (qdir / "pruning.json").read_text() == (root / "pruned" / "pruning.json").read_text()
    results = json.loads((root / "eval.json").read_text())["results"]
    assert [r["label"] for r in results] == ["pruned", "quantized"]
    assert "quantization" not in results[0] and results[1]["quantization"]["bits"] == 4
    p_float, p_quant = (r["ppl"][str(files["text"])]["ppl"] for r in results)
    assert abs(math.log(p_quant / p_float)) < PPL_TOLERANCE
    rows = {r.stage: r for r in collect_experiment(root).results}
    assert rows["quantized"].chain == "w4" and rows["quantized"].ppl[str(files["text"])] == p_quant  # the report
    # rerun: every stage skipped; the checkpoint untouched
    stamp = (qdir / "model.safetensors").stat().st_mtime_ns
    again = dp.run(path, runs_dir=runs)
    assert again.ran == [] and again.skipped == ["score", "prune", "quantize", "eval"]
    assert (qdir / "model.safetensors").stat().st_mtime_ns == stamp
    # a quantize setting changed: quantize and eval rerun, pruning is kept
    cfg["quantize"]["bits"] = 8
    path.write_text(yaml.safe_dump(cfg))
    changed = dp.run(path, runs_dir=runs)
    assert changed.ran == ["quantize", "eval"] and changed.skipped == ["score", "prune"]
    assert json.loads((qdir / "quantization.json").read_text())["bits"] == 8
    assert main(["run", str(path), "--runs-dir", str(runs), "--force", "quantize"]) == 0
    assert "[3/4] quantize: running (forced)" in capsys.readouterr().out
