"""``depthprune report`` over the single commands' outputs, and generation examples (pipeline + ``eval samples``)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import yaml
from tiny import SAMPLE_TEXT

from depthprune.cli import main

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ["Well, Prince, so Genoa", "Depth pruning removes"]


@pytest.fixture
def no_model(monkeypatch):
    """Every way to a model fails: the report must read stored JSON only."""
    import transformers

    import depthprune.models
    import depthprune.models.loading
    import depthprune.speed.sources

    def fail(*args, **kwargs):
        raise AssertionError("the report must not load a model")

    for mod, name in ((depthprune.models, "load_model"), (depthprune.models.loading, "load_model"),
                      (depthprune.speed.sources, "load_bench_model")):
        monkeypatch.setattr(mod, name, fail)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", fail)


@pytest.fixture(scope="module")
def work(tiny_dirs, tmp_path_factory) -> dict:
    """A runs/ folder as a user makes it: a 'depthprune run' experiment beside the single commands' outputs."""
    root = tmp_path_factory.mktemp("outputs")
    model = str(tiny_dirs["llama"])
    text = root / "text.txt"
    text.write_text(SAMPLE_TEXT)
    sentences = [s.strip() for s in SAMPLE_TEXT.split(". ") if s.strip()][:4]
    alpaca = root / "alpaca.json"
    alpaca.write_text(json.dumps([{"instruction": "Repeat.", "input": "", "output": s} for s in sentences]))
    cfg = {"name": "tiny", "model": {"source": model, "device": "cpu"},
           "calibration": {"source": str(text), "samples": 4, "seq_len": 16, "batch_size": 4},
           "prune": {"criterion": "ppl", "targets": [{"num_blocks": 1}]},
           "retrain": [{"kind": "lora", "data": str(alpaca), "max_steps": 1, "batch_size": 1, "micro_batch_size": 1,
                        "seq_len": 128, "rank": 2, "save_every": 0}],
           "evaluate": {"every_stage": True, "ppl": {"datasets": [str(text)], "seq_len": 16, "limit": 2},
                        "samples": {"prompts": PROMPTS, "max_new_tokens": 5}}}
    (root / "tiny.yaml").write_text(yaml.safe_dump(cfg))
    mp = pytest.MonkeyPatch()
    mp.chdir(root)  # the commands store paths as given, relative to here
    try:
        assert main(["run", "tiny.yaml", "--runs-dir", "runs"]) == 0
        cpu = ["--device", "cpu"]
        ppl = ["--dataset", "text.txt", "--seq-len", "16", "--limit", "2"]
        for argv in (["score", "--model", model, *cpu, "--calib", "text.txt", "--calib-samples", "4",
                      "--calib-seq-len", "16", "--output", "runs/scores.json"],
                     ["prune", "--model", model, *cpu, "--scores", "runs/scores.json", "--num-blocks", "2",
                      "--eval-windows", "0", "--output", "runs/p2"],
                     ["retrain", "lora", "--model", "runs/p2", "--data", "alpaca.json", "--max-steps", "1",
                      "--batch-size", "1", "--micro-batch-size", "1", "--rank", "2", "--max-len", "128", "--merge",
                      "--save-every", "0", "--no-progress", "--cpu", "--output", "runs/p2-lora"],
                     ["eval", "ppl", "--model", model, *cpu, *ppl, "--json", "runs/ppl_dense.json"],
                     ["eval", "ppl", "--model", "runs/p2", *cpu, *ppl, "--json", "runs/ppl_p2.json"],
                     ["eval", "ppl", "--model", "runs/p2-lora", *cpu, *ppl, "--json", "runs/ppl_p2-lora.json"],
                     ["eval", "samples", "--model", model, *cpu, "--max-new-tokens", "4", "--json",
                      "runs/samples_dense.json"],
                     ["eval", "samples", "--model", "runs/p2", *cpu, "--max-new-tokens", "4", "--json",
                      "runs/samples_p2.json"],
                     ["bench", "--model", model, "--model", "runs/p2", *cpu, "--batch-sizes", "1",
                      "--output-lengths", "2", "--warmup", "0", "--runs", "1", "--json", "runs/bench.json"]):
            assert main(argv) == 0, argv
    finally:
        mp.undo()
    runs = root / "runs"
    # `eval zeroshot --json` needs lm-eval and its data: the same JSON, written from the same dataclasses
    from depthprune.evaluation.zeroshot import TaskScore, ZeroShotResult

    tasks = {t: TaskScore(t, "local", f"depthprune_{t}", 1.0, 10, 100, m, s, s, 0.1, None, None)
             for t, m, s in (("piqa", "acc", 0.625), ("boolq", "acc", 0.5))}
    zs = ZeroShotResult(tasks, 0.5625, False, 10, 8, "0.4", True, True, 1.0).to_json() | {"model": "runs/p2"}
    (runs / "zs_p2.json").write_text(json.dumps(zs))
    (runs / "notes.json").write_text(json.dumps({"comment": "not a depthprune output"}))
    return {"root": root, "runs": runs, "exp": runs / "tiny", "model": model, "text": text}


def rows_of(text: str, section: str) -> list[str]:
    """The table rows (first cell onwards) of one ``## section``."""
    body = text.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    return [line for line in body.splitlines() if line.startswith("| ") and not line.startswith("| model")]


def test_generation_samples_are_greedy_and_exact(tiny_dirs):
    from depthprune.evaluation.samples import generation_samples, prompt_ids
    from depthprune.models import load_model

    lm = load_model(str(tiny_dirs["llama"]), device="cpu")
    first = generation_samples(lm.model, lm.tokenizer, PROMPTS, max_new_tokens=6)
    # the checkpoint asks for sampling and names the first greedy token as EOS: neither may change the output
    lm.model.generation_config.update(do_sample=True, temperature=2.0, top_k=3)
    lm.model.generation_config.eos_token_id = first[0]["new_token_ids"][0]
    again = generation_samples(lm.model, lm.tokenizer, PROMPTS, max_new_tokens=6)
    assert again == first
    for s, prompt in zip(first, PROMPTS):
        ids = torch.tensor([prompt_ids(lm.tokenizer, prompt)])
        assert ids[0, 0].item() == lm.tokenizer.bos_token_id
        with torch.no_grad():
            for _ in range(6):  # argmax, no cache: what greedy decoding means
                ids = torch.cat([ids, lm.model(ids).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
        new = ids[0, -6:].tolist()
        assert s["new_token_ids"] == new and s["new_tokens"] == 6
        assert s["continuation"] == lm.tokenizer.decode(new, skip_special_tokens=True)


def test_pipeline_report_shows_a_continuation_per_prompt_and_model(work, tmp_path, no_model):
    from depthprune.pipeline import plan_experiment
    from depthprune.report.generation import plain

    exp = work["exp"]
    stored = {}
    for rel in ("base/eval.json", "eval.json"):
        for entry in json.loads((exp / rel).read_text())["results"]:
            assert [s["prompt"] for s in entry["samples"]["samples"]] == PROMPTS
            assert all(s["new_tokens"] == 5 == len(s["new_token_ids"]) for s in entry["samples"]["samples"])
            stored[entry["label"]] = entry["samples"]["samples"]
    assert set(stored) == {"base", "pruned", "retrained/1-lora"}
    assert main(["report", str(exp), "--output", str(tmp_path)]) == 0
    text = (tmp_path / "report.md").read_text()
    section = text.split("## Generation examples\n", 1)[1]
    for i, prompt in enumerate(PROMPTS):
        sub = section.split(f"### Prompt {i + 1}: {plain(prompt)}\n", 1)[1].split("###", 1)[0]
        rows = [r for r in sub.splitlines() if r.startswith("| ") and not r.startswith("| model")]
        assert len(rows) == 3
        for label, name in (("base", "baseline"), ("pruned", "k1"), ("retrained/1-lora", "k1 +lora")):
            want = plain(stored[label][i]["continuation"]).replace("|", "\\|")
            assert any(r.startswith(f"| {name} |") and r.endswith(f"| {want} |") for r in rows), (name, rows)
    # an experiment without samples hashes its eval stages as before (finished runs stay done)
    cfg = yaml.safe_load((exp / "config.yaml").read_text())
    cfg["evaluate"].pop("samples")
    (tmp_path / "old.yaml").write_text(yaml.safe_dump(cfg))
    plan = plan_experiment(tmp_path / "old.yaml", tmp_path / "runs")
    assert all("samples" not in s.config["evaluate"] for s in plan.stages if s.kind in ("eval", "baseline"))


def test_report_over_prune_eval_zeroshot_and_bench_outputs(work, tmp_path, monkeypatch, no_model):
    from depthprune.core.format import fmt_params

    runs = work["runs"]
    monkeypatch.chdir(tmp_path)  # the JSON files say "runs/p2": found from their own directory
    paths = [runs / "p2", runs / "ppl_p2.json", runs / "zs_p2.json", runs / "bench.json", runs / "ppl_dense.json"]
    assert main(["report", *map(str, paths), "--output", "rep"]) == 0
    text = (tmp_path / "rep" / "report.md").read_text()
    pruning = json.loads((runs / "p2" / "pruning.json").read_text())
    ppl = {n: json.loads((runs / f"ppl_{n}.json").read_text())["ppl"] for n in ("p2", "dense")}
    removed = ", ".join(map(str, pruning["removed_blocks"]))
    assert [r.split(" | ")[:4] for r in rows_of(text, "Removed blocks and parameters")] == [
        ["| baseline", "–", "–", "–"], ["| p2", "depth", "ppl (one-shot, block)", removed]]
    # one row per model: the PPL and zero-shot JSONs of runs/p2 merged into the checkpoint's row
    before, after = fmt_params(pruning["params_before"]), fmt_params(pruning["params_after"])
    ratio = f"{1 - pruning['params_after'] / pruning['params_before']:.1%}"
    assert rows_of(text, "Perplexity") == [f"| baseline | {before} | – | {ppl['dense']:.2f} |",
                                           f"| p2 | {after} | {ratio} | {ppl['p2']:.2f} |"]
    assert rows_of(text, "Zero-shot accuracy") == [f"| p2 | {after} | 50.00 | 62.50 | 56.25* |"]
    speed = rows_of(text, "Inference speed")
    assert len(speed) == 2 and speed[1].startswith(f"| p2 | {after} | {pruning['num_blocks_after']} |")
    assert "## Generation examples" not in text and "## Experiments" not in text
    assert "`zs_p2.json` | zero-shot JSON (eval zeroshot --json): p2 |" in text


def test_report_walks_a_directory_of_mixed_outputs(work, capsys, no_model):
    from depthprune.core.format import fmt_params
    from depthprune.report.generation import plain

    runs = work["runs"]
    assert main(["report", str(runs)]) == 0
    out = capsys.readouterr().out
    assert f"note: skipped {runs / 'notes.json'}: not an output report reads" in out
    text = (runs / "report" / "report.md").read_text()
    assert "# depthprune report: `tiny`, `runs`" in text and "## Experiments" in text
    for kind in ("pruned checkpoint (pruning.json)", "retrained checkpoint (retrain.json)",
                 "speed JSON (bench --json)", "block scores JSON (score --output)"):
        assert kind in text, kind
    # the experiment's models and the standalone ones side by side; the dense model is one baseline row
    ppl = [r.split(" | ")[0] for r in rows_of(text, "Perplexity")]
    assert ppl == ["| baseline (llama)", "| tiny/k1", "| tiny/k1 +lora", "| runs/p2", "| runs/p2-lora"]
    # score --output and the prune --scores checkpoint that used it: one scores table
    assert text.count("### runs/scores.json (p2): ppl (blocks)") == 1 and "removed (p2)" in text
    # eval samples of the dense model join the experiment's baseline row (same model), with their own settings
    gen = text.split("## Generation examples\n", 1)[1].split("\n## ", 1)[0]
    assert gen.count("### Prompt") == len(PROMPTS) + 3  # the experiment's prompts and the 3 default ones
    pruning = json.loads((runs / "p2" / "pruning.json").read_text())
    before, after = fmt_params(pruning["params_before"]), fmt_params(pruning["params_after"])
    dense = json.loads((runs / "samples_dense.json").read_text())["samples"]
    for i, (mine, base) in enumerate(zip(json.loads((runs / "samples_p2.json").read_text())["samples"], dense)):
        sub = gen.split(f"### Prompt {len(PROMPTS) + i + 1}: {plain(mine['prompt'])} (greedy, 4 new tokens)\n")[1]
        rows = [r for r in sub.split("###")[0].splitlines() if r.startswith("| ") and not r.startswith("| model")]
        assert rows == [f"| baseline (llama) | {before} | {cell(base['continuation'])} |",
                        f"| runs/p2 | {after} | {cell(mine['continuation'])} |"]
    notes = text.split("Notes (inputs skipped, results read twice):", 1)[1].split("\n## ", 1)[0]
    assert "notes.json: not an output report reads" in notes and "differs" not in notes


def test_report_only_directory_and_unknown_json_give_clear_messages(work, tmp_path, capsys, no_model):
    committed = ROOT / "docs" / "results" / "table5_criteria"
    assert (committed / "report.md").is_file() and not list(committed.glob("*.json"))
    for path in (committed, work["exp"] / "report-not-there"):
        assert main(["report", str(path), "--output", str(tmp_path / "x")]) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err and "'depthprune report' reads:" in err
        assert all(k in err for k in ("config.yaml + stages.json", "pruning.json", "retrain.json", "eval ppl",
                                      "eval zeroshot", "eval samples", "bench", "score --output")), err
    assert "holds a rendered report (report.md" in main_err(committed, tmp_path, capsys)
    unknown = work["runs"] / "notes.json"
    err = main_err(unknown, tmp_path, capsys)
    assert re.search(r"skipped .*notes\.json: not an output report reads", err)
    # beside a readable input an unknown JSON is one note, the report is written
    assert main(["report", str(unknown), str(work["runs"] / "ppl_p2.json"), "--output", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    assert out.count("note: ") == 1 and "notes.json" in out
    assert not (tmp_path / "x").exists()


def cell(text: str) -> str:
    from depthprune.report.generation import plain

    return plain(text).replace("|", "\\|")


def main_err(path: Path, tmp_path: Path, capsys) -> str:
    assert main(["report", str(path), "--output", str(tmp_path / "x")]) == 2
    return capsys.readouterr().err
