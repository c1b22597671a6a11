"""Module-level pruning (attention / MLP) and iterative (SLEB) selection."""

import json
import logging

import pytest
import torch
from tiny import tiny_model, tiny_tokenizer
from transformers import AutoModelForCausalLM

from depthprune.cli import main
from depthprune.data import CalibrationSpec, build_calibration
from depthprune.errors import DepthpruneError
from depthprune.importance import score_model
from depthprune.models import get_blocks, load_model
from depthprune.pruning import Target, prune_blocks, remove_blocks, save_checkpoint
from depthprune.pruning.iterative import iterative_prune
from depthprune.pruning.module_surgery import remote_code_files, remove_modules

FAMILIES = ["llama", "qwen3", "gemma3_text", "opt"]


def calib(samples=4, seq_len=24):
    return build_calibration(tiny_tokenizer(), CalibrationSpec("war_and_peace", samples, seq_len, 0))


def greedy(model, n=10):
    ids = torch.tensor([[1, 40, 41, 42, 43, 44]])
    return model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                          do_sample=False, pad_token_id=0)


@pytest.mark.parametrize("model_type", FAMILIES)
def test_iterative_k1_equals_one_shot(model_type):
    cal = calib()
    one = prune_blocks(m1 := tiny_model(model_type), score_model(m1, "ppl", cal), Target(num_blocks=1))
    it = iterative_prune(tiny_model(model_type), "ppl", cal, Target(num_blocks=1), progress=False)
    assert it.selection.removed == one.selection.removed
    assert it.info["rounds"][0]["scores"] == pytest.approx(one.scores.scores, rel=1e-6)


def test_iterative_records_order_and_matches_rescoring():
    """Each round's cached-trace scores equal scoring the pruned model from scratch."""
    cal = calib()
    model = tiny_model("gemma3_text", layers=6)
    res = iterative_prune(model, "ppl", cal, Target(num_blocks=3), progress=False)
    info = res.info
    assert len(info["removal_order"]) == 3 and sorted(info["removal_order"]) == info["removed_blocks"]
    assert [r["removed"] for r in info["rounds"]] == info["removal_order"]
    ref = tiny_model("gemma3_text", layers=6)
    for r in info["rounds"]:
        current = [i for i in range(6) if i not in info["removal_order"][: r["round"] - 1]]
        assert r["blocks"] == current
        fresh = tiny_model("gemma3_text", layers=6)
        remove_blocks(fresh, [i for i in range(6) if i not in current])
        assert r["scores"] == pytest.approx(score_model(fresh, "ppl", cal).scores, rel=1e-4)
    assert model.config.num_hidden_layers == 3 and len(model.config.layer_types) == 3
    del ref


def test_iterative_with_other_criterion_and_protection():
    res = iterative_prune(tiny_model("llama"), "block_influence", calib(), Target(num_blocks=2), (1, 1),
                          progress=False)
    assert not set(res.info["removal_order"]) & {0, 5}


@pytest.mark.parametrize("model_type", FAMILIES)
def test_module_pruned_save_load_same_generation(model_type, tmp_path):
    model = tiny_model(model_type)
    info = remove_modules(model, ["1.attn", "2.mlp", "4.attn"])
    assert info == {"removed_blocks": [], "removed_attn": [1, 4], "removed_mlp": [2]}
    expected = greedy(model)
    save_checkpoint(model, tiny_tokenizer(), tmp_path / "m", info, extra_files=remote_code_files(model))
    assert torch.equal(greedy(load_model(str(tmp_path / "m"), device="cpu").model), expected)
    remote = AutoModelForCausalLM.from_pretrained(tmp_path / "m", trust_remote_code=True)
    assert torch.equal(greedy(remote), expected)
    nocache = model.generate(torch.tensor([[1, 40, 41, 42, 43, 44]]), max_new_tokens=10, min_new_tokens=10,
                             do_sample=False, use_cache=False, pad_token_id=0)
    assert torch.equal(nocache, expected)


@pytest.mark.parametrize("model_type", FAMILIES)
def test_attn_plus_mlp_equals_block_removal(model_type, tmp_path):
    a, b = tiny_model(model_type), tiny_model(model_type)
    remove_modules(a, ["2.attn", "2.mlp"])
    remove_blocks(b, [2])
    ids = torch.tensor([[1, 40, 41, 42, 43]])
    with torch.no_grad():
        assert torch.equal(a(ids).logits, b(ids).logits)
    save_checkpoint(a, None, tmp_path / "a", extra_files=remote_code_files(a))
    save_checkpoint(b, None, tmp_path / "b")
    assert json.loads((tmp_path / "a" / "config.json").read_text()) == \
        json.loads((tmp_path / "b" / "config.json").read_text())
    assert not (tmp_path / "a" / "modeling_depthprune.py").exists()


@pytest.mark.parametrize("model_type", FAMILIES)
def test_removed_modules_are_not_called(model_type):
    model = tiny_model(model_type)
    blocks = get_blocks(model)
    from depthprune.models import spec_for

    spec = spec_for(model)
    attn = blocks[1].get_submodule(spec.attention[0])
    mlp = blocks[3].get_submodule(spec.mlp[-1])
    calls = []
    attn.register_forward_hook(lambda *a: calls.append("attn"))
    mlp.register_forward_hook(lambda *a: calls.append("mlp"))
    remove_modules(model, ["1.attn", "3.mlp"])
    with torch.no_grad():
        model(torch.tensor([[1, 2, 3]]))
    assert calls == []
    assert attn not in list(model.modules()) and mlp not in list(model.modules())


@pytest.mark.parametrize("criterion", ["ppl", "magnitude", "taylor", "block_influence"])
def test_module_criteria_score_2n_candidates(criterion):
    model = tiny_model("qwen3")
    s = score_model(model, criterion, calib(), unit="module")
    assert len(s.scores) == 12 and s.candidates[:2] == ["0.attn", "0.mlp"]
    res = prune_blocks(model, s, Target(num_blocks=3))
    assert len(res.info["removed_candidates"]) == 3


def test_module_ppl_cache_equals_naive():
    model = tiny_model("gemma3_text")
    cal = calib()
    a = score_model(model, "ppl", cal, unit="module").scores
    b = score_model(model, "ppl", cal, unit="module", cache_prefix=False).scores
    assert a == pytest.approx(b, rel=1e-4)


def test_angular_cannot_score_modules(capsys, tiny_dirs, tmp_path):
    with pytest.raises(DepthpruneError, match="cannot score unit 'module'"):
        score_model(tiny_model("llama"), "angular", calib(), unit="module")
    code = main(["prune", "--model", str(tiny_dirs["llama"]), "--criterion", "angular", "--unit", "module",
                 "--num-blocks", "2", "--output", str(tmp_path / "o"), "--eval-windows", "0"])
    assert code == 2 and "--unit criterion 'angular' cannot score unit 'module'" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_module_index_out_of_range_fails_clearly(tmp_path):
    model = tiny_model("llama")
    remove_modules(model, ["1.attn"])
    save_checkpoint(model, tiny_tokenizer(), tmp_path / "m", extra_files=remote_code_files(model))
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    cfg["depthprune_removed_modules"]["attn"] = [17]
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(DepthpruneError, match="out of range"):
        load_model(str(tmp_path / "m"), device="cpu")


def test_cli_module_and_iterative(capsys, tiny_dirs, tmp_path):
    common = ["--model", str(tiny_dirs["gemma3_text"]), "--calib", "wikitext2", "--calib-samples", "4",
              "--calib-seq-len", "16", "--eval-windows", "0"]
    assert main(["prune", *common, "--criterion", "ppl", "--unit", "module", "--num-blocks", "3",
                 "--output", str(tmp_path / "mod")]) == 0
    info = json.loads((tmp_path / "mod" / "pruning.json").read_text())
    assert info["unit"] == "module" and len(info["removed_candidates"]) == 3
    assert (tmp_path / "mod" / "scores.png").exists()
    assert load_model(str(tmp_path / "mod"), device="cpu").model is not None
    assert main(["prune", *common, "--criterion", "ppl", "--schedule", "iterative", "--num-blocks", "2",
                 "--output", str(tmp_path / "it")]) == 0
    info = json.loads((tmp_path / "it" / "pruning.json").read_text())
    assert info["schedule"] == "iterative" and len(info["rounds"]) == 2
    assert "Removal order" in capsys.readouterr().out


def test_block_pruning_a_module_pruned_model_renumbers_its_removed_modules(tmp_path):
    model = tiny_model("llama")
    remove_modules(model, ["1.attn", "3.mlp", "4.attn"])
    expected_blocks = [0, 1, 3, 4, 5]  # original indices kept after also removing block 2
    remove_blocks(model, [2])
    assert model.config.depthprune_removed_modules == {"attn": [1, 3], "mlp": [2]}
    out = greedy(model)
    save_checkpoint(model, tiny_tokenizer(), tmp_path / "m", extra_files=remote_code_files(model))
    assert torch.equal(greedy(load_model(str(tmp_path / "m"), device="cpu").model), out)
    remove_blocks(model, [1])  # the block holding a skipped attention goes: its entry goes too
    assert model.config.depthprune_removed_modules == {"attn": [2], "mlp": [1]}
    assert len(expected_blocks) - 1 == model.config.num_hidden_layers


def test_loading_a_module_pruned_checkpoint_reports_no_missing_weights(tmp_path):
    import transformers

    model = tiny_model("gemma3_text")
    remove_modules(model, ["1.attn", "2.mlp"])
    save_checkpoint(model, tiny_tokenizer(), tmp_path / "m", extra_files=remote_code_files(model))
    old = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_warning()
    records = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    handler = Keep()
    logging.getLogger("transformers").addHandler(handler)
    try:
        AutoModelForCausalLM.from_pretrained(tmp_path / "m", trust_remote_code=True)
        load_model(str(tmp_path / "m"), device="cpu")
    finally:
        logging.getLogger("transformers").removeHandler(handler)
        transformers.logging.set_verbosity(old)
    text = "\n".join(records)
    assert "MISSING" not in text and "newly initialized" not in text, text


def test_retraining_a_module_pruned_model_keeps_its_remote_code(tmp_path):
    model = tiny_model("llama")
    remove_modules(model, ["1.attn"])
    save_checkpoint(model, tiny_tokenizer(), tmp_path / "m", extra_files=remote_code_files(model))
    assert main(["retrain", "cpt", "--model", str(tmp_path / "m"), "--data", "wiki_sample", "--seq-len", "32",
                 "--batch-size", "2", "--micro-batch-size", "2", "--max-steps", "1", "--save-every", "0",
                 "--output", str(tmp_path / "r"), "--no-progress"]) == 0
    assert (tmp_path / "r" / "modeling_depthprune.py").is_file()
    remote = AutoModelForCausalLM.from_pretrained(tmp_path / "r", trust_remote_code=True)
    assert torch.equal(greedy(remote), greedy(load_model(str(tmp_path / "r"), device="cpu").model))
