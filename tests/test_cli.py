"""The command line: happy paths on tiny models and one-line errors for bad input."""

import json
import re
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM

from depthprune.cli import main


def run_cli(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def assert_user_error(code, err, pattern):
    import re

    assert code == 2
    lines = err.strip().splitlines()
    assert lines and lines[-1].startswith("depthprune: error:") and "Traceback" not in err
    assert re.search(pattern, lines[-1]), lines[-1]


@pytest.mark.parametrize(
    "argv, pattern",
    [
        (["eval", "ppl", "--model", "/no/such/dir"], "no such file or directory"),
        (["eval", "ppl", "--model", "{empty}"], "no config.json"),
        (["eval", "ppl", "--model", "{tiny}", "--seq-len", "0"], "--seq-len must be"),
        (["eval", "ppl", "--model", "{tiny}", "--limit", "-1"], "--limit must be"),
        (["eval", "ppl", "--model", "{tiny}", "--dataset", "nope"], "unknown dataset 'nope'"),
        (["eval", "ppl", "--model", "{tiny}", "--dataset", "{badjsonl}"], "no 'text' field"),
        (["prune", "--model", "{tiny}", "--criterion", "nope", "--num-blocks", "1", "--output", "{out}"],
         "unknown criterion 'nope'"),
        (["prune", "--model", "{tiny}", "--criterion", "magnitude", "--num-blocks", "9", "--output", "{out}",
          "--eval-windows", "0"], "exceeds the 6 removable"),
        (["prune", "--model", "{tiny}", "--criterion", "magnitude", "--ratio", "1.5", "--output", "{out}"],
         r"--ratio must be in \(0, 1\)"),
        (["prune", "--model", "{tiny}", "--criterion", "magnitude", "--num-blocks", "1", "--protect-first", "4",
          "--protect-last", "3", "--output", "{out}", "--eval-windows", "0"], "nothing left to remove"),
        (["prune", "--model", "{tiny}", "--criterion", "magnitude", "--num-blocks", "1", "--output", "{full}"],
         "exists and is not empty; pass --overwrite"),
        (["score", "--model", "{tiny}", "--criterion", "ppl", "--output", "{full}/x/scores.json"],
         "full/x is a file, not a folder"),
        (["score", "--model", "{tiny}", "--criterion", "ppl", "--output", "{full}"], "is a directory; give a file"),
        (["eval", "ppl", "--model", "{tiny}", "--json", "{full}/x/ppl.json"], "full/x is a file, not a folder"),
        (["eval", "zeroshot", "--model", "{tiny}", "--json", "{full}"], "is a directory; give a file"),
        (["eval", "samples", "--model", "{tiny}", "--json", "{full}/x/s.json"], "full/x is a file, not a folder"),
    ],
)
def test_bad_input_is_one_line_error(capsys, tmp_path, tiny_dirs, argv, pattern):
    (tmp_path / "empty").mkdir()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("keep me")
    (tmp_path / "bad.jsonl").write_text(json.dumps({"body": "x"}) + "\n")
    subs = {"{tiny}": str(tiny_dirs["llama"]), "{empty}": str(tmp_path / "empty"), "{out}": str(tmp_path / "out"),
            "{full}": str(tmp_path / "full"), "{badjsonl}": str(tmp_path / "bad.jsonl")}
    code, _, err = run_cli(capsys, *[a.replace("{full}", subs["{full}"]) if a.startswith("{full}/") else
                                     subs.get(a, a) for a in argv])
    assert_user_error(code, err, pattern)
    assert not (tmp_path / "out").exists()
    assert (tmp_path / "full" / "x").read_text() == "keep me"


def test_unsupported_model_type_cli(capsys, tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.for_model("xlm", emb_dim=32, n_layers=2, n_heads=2, vocab_size=100)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(tmp_path)
    code, _, err = run_cli(capsys, "eval", "ppl", "--model", str(tmp_path))
    assert_user_error(code, err, r"model_type 'xlm'\) keeps its decoder blocks.*ArchSpec")


def test_score_then_prune_with_reused_scores(capsys, tmp_path, tiny_dirs):
    scores = tmp_path / "scores.json"
    code, out, _ = run_cli(capsys, "score", "--model", str(tiny_dirs["qwen3"]), "--criterion", "ppl",
                           "--calib", "wikitext2", "--calib-samples", "4", "--calib-seq-len", "16",
                           "--output", str(scores))
    assert code == 0 and scores.exists() and scores.with_suffix(".png").exists()
    assert not scores.with_suffix(".partial.json").exists()  # the resumable partial sums go with success
    data = json.loads(scores.read_text())
    assert data["criterion"] == "ppl" and len(data["scores"]) == 6 and data["calibration"]["source"] == "wikitext2"
    for k in (1, 3):
        out_dir = tmp_path / f"k{k}"
        code, out, _ = run_cli(capsys, "prune", "--model", str(tiny_dirs["qwen3"]), "--scores", str(scores),
                               "--num-blocks", str(k), "--output", str(out_dir), "--eval-windows", "2")
        assert code == 0 and "Removed blocks" in out and "WikiText-2 PPL" in out
        info = json.loads((out_dir / "pruning.json").read_text())
        assert len(info["removed_blocks"]) == k and info["scores"]["scores"] == data["scores"]
        assert info["scores"]["calibration"]["samples"] == 4
        model = AutoModelForCausalLM.from_pretrained(out_dir)
        assert model.config.num_hidden_layers == 6 - k and len(model.config.layer_types) == 6 - k
        assert (out_dir / "scores.png").exists()
    # a pruned model's pruning.json serves as a scores file for the next target of the same source
    code, out, _ = run_cli(capsys, "prune", "--model", str(tiny_dirs["qwen3"]), "--scores",
                           str(tmp_path / "k1" / "pruning.json"), "--num-blocks", "3", "--output",
                           str(tmp_path / "k3b"), "--eval-windows", "2")
    assert code == 0
    again = json.loads((tmp_path / "k3b" / "pruning.json").read_text())
    assert again["removed_blocks"] == json.loads((tmp_path / "k3" / "pruning.json").read_text())["removed_blocks"]


def test_scores_from_another_model_rejected(capsys, tmp_path, tiny_dirs):
    scores = tmp_path / "scores.json"
    assert run_cli(capsys, "score", "--model", str(tiny_dirs["llama"]), "--criterion", "magnitude",
                   "--output", str(scores))[0] == 0
    code, _, err = run_cli(capsys, "prune", "--model", str(tiny_dirs["mistral"]), "--scores", str(scores),
                           "--num-blocks", "1", "--output", str(tmp_path / "out"), "--eval-windows", "0")
    assert_user_error(code, err, "computed on another model.*model_type llama vs mistral")
    assert not (tmp_path / "out").exists()


def test_prune_cli_self_calibration_and_plus(capsys, tmp_path, tiny_dirs):
    out_dir = tmp_path / "p"
    code, out, _ = run_cli(capsys, "prune", "--model", str(tiny_dirs["gemma3_text"]), "--criterion", "taylor+",
                           "--num-blocks", "2", "--protect-first", "1", "--protect-last", "1", "--calib", "self",
                           "--calib-samples", "3", "--calib-seq-len", "8", "--output", str(out_dir),
                           "--eval-windows", "0")
    assert code == 0
    info = json.loads((out_dir / "pruning.json").read_text())
    assert info["protected_blocks"] == [0, 5] and not set(info["removed_blocks"]) & {0, 5}
    assert info["scores"]["calibration"]["source"] == "self" and info["versions"]["transformers"]
    model = AutoModelForCausalLM.from_pretrained(out_dir)
    ids = torch.tensor([[1, 50, 51]])
    assert model.generate(ids, max_new_tokens=4, do_sample=False).shape == (1, 7)


def test_console_script_exit_code(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "depthprune.cli", "eval", "ppl", "--model", str(tmp_path / "x")],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.strip().startswith("depthprune: error:")
    assert "Traceback" not in proc.stderr


def test_impossible_target_fails_before_any_scoring(capsys, tmp_path, tiny_dirs, monkeypatch):
    from depthprune.importance import base

    def boom(*args, **kwargs):
        raise AssertionError("scored before checking the target")

    monkeypatch.setattr(base.CRITERIA["ppl"], "score", boom)
    code, _, err = run_cli(capsys, "prune", "--model", str(tiny_dirs["llama"]), "--criterion", "ppl", "--num-blocks",
                           "20", "--output", str(tmp_path / "o"), "--eval-windows", "0")
    assert_user_error(code, err, "--num-blocks 20 exceeds the 6 removable blocks")
    assert not (tmp_path / "o").exists()


def test_criterion_contradicting_reused_scores_is_an_error(capsys, tmp_path, tiny_dirs):
    scores = tmp_path / "s.json"
    assert run_cli(capsys, "score", "--model", str(tiny_dirs["llama"]), "--criterion", "magnitude",
                   "--output", str(scores))[0] == 0
    code, _, err = run_cli(capsys, "prune", "--model", str(tiny_dirs["llama"]), "--scores", str(scores),
                           "--criterion", "ppl", "--num-blocks", "1", "--output", str(tmp_path / "o"))
    assert_user_error(code, err, "--criterion ppl contradicts --scores, which hold magnitude scores")


def test_eval_ppl_prints_a_summary_line_and_records_the_dtype(capsys, tmp_path, tiny_dirs):
    code, out, _ = run_cli(capsys, "eval", "ppl", "--model", str(tiny_dirs["llama"]), "--limit", "2",
                           "--seq-len", "16", "--json", str(tmp_path / "p.json"))
    assert code == 0 and re.search(r"^wikitext2: PPL [\d.]+ on 2 windows of 16 tokens \(BOS every, float32\)", out,
                                   re.M)
    assert json.loads((tmp_path / "p.json").read_text())["dtype"] == "float32"


def test_retrain_takes_device_and_defaults_seq_len_to_the_model(capsys, tmp_path, tiny_dirs):
    out = tmp_path / "r"
    code, stdout, _ = run_cli(capsys, "retrain", "cpt", "--model", str(tiny_dirs["llama"]), "--data", "wiki_sample",
                              "--batch-size", "2", "--micro-batch-size", "2", "--max-steps", "1", "--device", "cpu",
                              "--no-progress", "--output", str(out))
    assert code == 0  # the tiny model has max_position_embeddings 256: CPT's default 1024 would not fit
    assert json.loads((out / "retrain.json").read_text())["cpt"]["seq_len"] == 256
    if not torch.cuda.is_available():
        code, _, err = run_cli(capsys, "retrain", "cpt", "--model", str(tiny_dirs["llama"]), "--device", "cuda",
                               "--max-steps", "1", "--output", str(tmp_path / "c"))
        assert_user_error(code, err, "--device cuda was asked for but no CUDA device is available")


def test_score_resumes_from_its_partial_file_and_refuses_another_runs(capsys, tmp_path, tiny_dirs):
    """A finished partial file (as left by a run stopped after its last batch) is taken as it is; the partial
    sums of another calibration set are refused with the fix named."""
    from depthprune.data import CalibrationSpec, build_calibration
    from depthprune.importance import score_model
    from depthprune.models.loading import load

    model, tokenizer = load(str(tiny_dirs["qwen3"]))
    cal = build_calibration(tokenizer, CalibrationSpec("wikitext2", 4, 16))
    scores = tmp_path / "scores.json"
    partial = scores.with_suffix(".partial.json")
    ref = score_model(model, "ppl", cal, batch_size=16, resume=partial).scores
    argv = ["score", "--model", str(tiny_dirs["qwen3"]), "--criterion", "ppl", "--calib", "wikitext2",
            "--calib-samples", "4", "--calib-seq-len", "16", "--output", str(scores)]
    code, out, _ = run_cli(capsys, *argv)
    assert code == 0 and f"Resuming from {partial}" in out and not partial.exists()
    assert json.loads(scores.read_text())["scores"] == pytest.approx(ref, rel=1e-9)
    score_model(model, "ppl", cal, batch_size=16, resume=partial)
    code, _, err = run_cli(capsys, *argv[:-4], "--calib-seq-len", "12", "--output", str(scores))
    assert_user_error(code, err, "another model or calibration set; delete it")
    partial.write_text("{not json")
    code, _, err = run_cli(capsys, *argv)
    assert_user_error(code, err, "unreadable .*; delete it to score afresh")
