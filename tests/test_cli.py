"""The command line: happy paths on tiny models and one-line errors for bad input."""

import json
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
    ],
)
def test_bad_input_is_one_line_error(capsys, tmp_path, tiny_dirs, argv, pattern):
    (tmp_path / "empty").mkdir()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("keep me")
    (tmp_path / "bad.jsonl").write_text(json.dumps({"body": "x"}) + "\n")
    subs = {"{tiny}": str(tiny_dirs["llama"]), "{empty}": str(tmp_path / "empty"), "{out}": str(tmp_path / "out"),
            "{full}": str(tmp_path / "full"), "{badjsonl}": str(tmp_path / "bad.jsonl")}
    code, _, err = run_cli(capsys, *[subs.get(a, a) for a in argv])
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
