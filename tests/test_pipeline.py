"""``depthprune run`` (YAML experiments, resumable stages) and ``depthprune report``, on a tiny random model."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml
from tiny import SAMPLE_TEXT, save_tiny

from depthprune.cli import main
from depthprune.errors import DepthpruneError
from depthprune.pipeline import load_config, plan_experiment

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("pipeline")
    model = save_tiny("llama", root / "model", layers=4)
    text = root / "text.txt"
    text.write_text(SAMPLE_TEXT)
    sentences = [s.strip() for s in SAMPLE_TEXT.split(". ") if s.strip()][:8]
    alpaca = root / "alpaca.json"
    alpaca.write_text(json.dumps([{"instruction": "Repeat.", "input": "", "output": s} for s in sentences]))
    return {"root": root, "model": model, "text": text, "alpaca": alpaca}


def tiny_config(files: dict, **changes) -> dict:
    cfg = {
        "name": "tiny",
        "model": {"source": str(files["model"]), "device": "cpu"},
        "calibration": {"source": str(files["text"]), "samples": 4, "seq_len": 16, "batch_size": 4},
        "prune": {"criterion": "ppl", "targets": [{"num_blocks": 1}, {"num_blocks": 2}]},
        "retrain": [{"kind": "lora", "data": str(files["alpaca"]), "max_steps": 2, "batch_size": 2,
                     "micro_batch_size": 1, "seq_len": 128, "rank": 2, "log_every": 1, "save_every": 1}],
        "evaluate": {"ppl": {"datasets": [str(files["text"])], "seq_len": 16, "limit": 2, "batch_size": 2}},
        "bench": {"batch_sizes": [1], "output_lengths": [2], "warmup": 0, "runs": 1},
    }
    return cfg | changes


def write(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg))
    return path


def stages_of(run: Path) -> dict:
    return json.loads((run / "stages.json").read_text())["stages"]


def test_bad_config_names_every_field_and_writes_nothing(files, tmp_path, capsys):
    cfg = tiny_config(files)
    cfg["prune"] = {"criterion": "nope", "targets": [{"num_blocks": 1}, {"ratio": 1.5}], "schedul": "iterative"}
    cfg["retrain"] = [{"kind": "lora", "lr": -1, "text_field": "text"}]
    cfg["evaluate"] = {"zeroshot": {"tasks": ["piqa", "chess"]}}
    cfg["bench"] = {"runs": 0}
    path = write(tmp_path / "bad.yaml", cfg)
    runs = tmp_path / "runs"
    assert main(["run", str(path), "--runs-dir", str(runs)]) == 2
    err = capsys.readouterr().err
    for expected in ("prune.targets.1.ratio: must be in (0, 1)", "prune.criterion: unknown criterion 'nope'",
                     "prune.schedul: unknown field; did you mean 'schedule'?", "retrain.0.lr: must be > 0",
                     "retrain.0.text_field: applies to kinds cpt, kd only", "evaluate.zeroshot.tasks.1: unknown task",
                     "bench.runs: must be >= 1", "7 invalid fields"):
        assert expected in err, (expected, err)
    assert not runs.exists()
    # a variant's own mistake is reported under variants.<name>
    cfg = tiny_config(files, variants={"a": {"prune": {"criterion": "taylor"}},
                                       "b": {"prune": {"unit": "module", "criterion": "angular"}}})
    with pytest.raises(DepthpruneError, match=r"variants\.b\.prune\.unit: criterion 'angular' cannot score"):
        load_config(write(tmp_path / "variants.yaml", cfg))


@pytest.fixture(scope="module")
def finished_run(files, tmp_path_factory) -> Path:
    """The tiny pipeline, interrupted in its first retraining stage, then rerun to the end."""
    from depthprune.pipeline import stages

    tmp = tmp_path_factory.mktemp("run")
    path = write(tmp / "tiny.yaml", tiny_config(files))
    runs = tmp / "runs"

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    mp = pytest.MonkeyPatch()
    mp.setattr(stages, "run_retrain", interrupted)
    assert main(["run", str(path), "--runs-dir", str(runs)]) == 130
    mp.undo()
    run = runs / "tiny"
    first = stages_of(run)
    assert first["score"]["status"] == "done" and first["k1/prune"]["status"] == "done"
    assert first["k1/retrain/1-lora"]["status"] == "interrupted"
    assert "k2/prune" not in first and not (run / "k1" / "eval.json").exists()
    assert (run / "k1" / "pruned" / "pruning.json").is_file()
    (run / "first_attempt.json").write_text(json.dumps(first))

    start = time.perf_counter()
    assert main(["run", str(path), "--runs-dir", str(runs)]) == 0
    # prune -> LoRA -> PPL -> one bench setting, for two targets, well under a minute on 2 CPU cores
    assert time.perf_counter() - start < 60
    return run


def test_pipeline_runs_end_to_end_and_resumes(finished_run):
    run = finished_run
    first = json.loads((run / "first_attempt.json").read_text())
    done = stages_of(run)
    # the rerun resumed at the interrupted stage: scoring and the first pruning were not redone
    for sid in ("score", "k1/prune", "base/eval"):
        assert done[sid]["started"] == first[sid]["started"] and done[sid]["run_id"] == first[sid]["run_id"]
    assert done["k1/retrain/1-lora"]["attempt"] == 2
    assert all(rec["status"] == "done" for rec in done.values())
    assert set(done) == {"base/eval", "score", "k1/prune", "k1/retrain/1-lora", "k1/eval", "k2/prune",
                         "k2/retrain/1-lora", "k2/eval", "bench"}
    for rel in ("config.yaml", "scores.json", "scores.png", "k1/pruned/pruning.json", "k2/pruned/config.json",
                "k1/retrained/1-lora/retrain.json", "k2/retrained/1-lora/adapter/adapter_config.json",
                "k1/eval.json", "k2/eval.json", "base/eval.json", "bench.json"):
        assert (run / rel).exists(), rel
    assert not list(run.glob(".scores-*.partial.json"))  # the resumable partial scores go once scores.json exists
    assert json.loads((run / "k2" / "pruned" / "pruning.json").read_text())["num_blocks_after"] == 2
    ev = json.loads((run / "k2" / "eval.json").read_text())
    assert ev["final"] == "retrained/1-lora" and ev["results"][0]["num_blocks"] == 2
    assert ev["results"][0]["ppl"][next(iter(ev["results"][0]["ppl"]))]["windows"] == 2
    bench = json.loads((run / "bench.json").read_text())
    assert bench["complete"] and [m["label"] for m in bench["models"]] == ["base", "k1", "k2"]
    resolved = yaml.safe_load((run / "config.yaml").read_text())
    assert resolved["retrain"][0]["lr"] == 1e-4 and resolved["prune"]["protect_first"] == 0
    load_config(run / "config.yaml")  # the resolved config is itself a valid config


def test_rerun_skips_everything_and_force_redoes_prune(finished_run, capsys):
    from depthprune.pipeline import run_experiment

    path = finished_run.parent.parent / "tiny.yaml"
    before = stages_of(finished_run)
    summary = run_experiment(path, finished_run.parent)
    assert summary.ran == [] and len(summary.skipped) == len(before)
    assert stages_of(finished_run) == before
    with pytest.raises(DepthpruneError, match="--force nothing: no such stage"):
        run_experiment(path, finished_run.parent, force=["nothing"])

    summary = run_experiment(path, finished_run.parent, force=["k2/prune"])
    after = stages_of(finished_run)
    assert summary.ran == ["k2/prune", "k2/retrain/1-lora", "k2/eval", "bench"]  # it and what depends on it
    assert after["k2/prune"]["started"] > before["k2/prune"]["started"]
    assert after["k1/prune"] == before["k1/prune"] and after["score"] == before["score"]
    main(["run", str(path), "--runs-dir", str(finished_run.parent), "--dry-run"])
    out = capsys.readouterr().out
    assert "[6/9] k2/prune: done" in out


def test_report_from_stored_json_only(finished_run, tmp_path, monkeypatch, capsys):
    import depthprune.models
    import depthprune.models.loading

    def no_model(*args, **kwargs):
        raise AssertionError("the report must not load a model")

    monkeypatch.setattr(depthprune.models, "load_model", no_model)
    monkeypatch.setattr(depthprune.models.loading, "load_model", no_model)
    out = tmp_path / "report"
    assert main(["report", str(finished_run), str(finished_run.parent), "--output", str(out)]) == 0
    text = (out / "report.md").read_text()
    for section in ("## Experiments", "## Per-block scores", "## Removed blocks and parameters", "## Perplexity",
                    "## Inference speed", "| k2 +lora |", "| baseline |", "removed (k2)"):
        assert section in text, section
    for png in ("scores_tiny.png", "ppl_vs_params.png", "speed_tiny.png"):
        assert (out / png).stat().st_size > 1000 and f"]({png})" in text
    assert not list(out.glob(".report-*"))
    # one directory given: the report goes into it
    assert main(["report", str(finished_run)]) == 0
    assert (finished_run / "report.md").is_file()


def test_variants_layout_and_shared_scores(files, tmp_path, capsys):
    from depthprune.pipeline import run_experiment

    cfg = tiny_config(files, name="var", retrain=[], evaluate=None, bench=None,
                      variants={"a": {}, "b": {"prune": {"protect_last": 1, "target": {"ratio": 0.3}}},
                                "c": {"description": "same recipe as a"}})
    summary = run_experiment(write(tmp_path / "var.yaml", cfg), tmp_path / "runs")
    run = tmp_path / "runs" / "var"
    assert summary.ran == ["a/score", "a/k1/prune", "a/k2/prune", "b/score", "b/prune",
                           "c/score", "c/k1/prune", "c/k2/prune"]
    # the report shows a and c's shared scores once, b's (other protection, other removals) apart
    assert main(["report", str(run), "--output", str(tmp_path / "rep")]) == 0
    text = (tmp_path / "rep" / "report.md").read_text()
    assert text.count("### ") == 2 and "### a, c: " in text and "### b: " in text
    assert "reused identical scores" in capsys.readouterr().out
    assert (run / "a" / "scores.json").read_text() == (run / "b" / "scores.json").read_text()
    info = json.loads((run / "b" / "pruned" / "pruning.json").read_text())
    assert info["protected_blocks"] == [3] and info["experiment"] == {"name": "var", "variant": "b", "target": "r30"}
    resolved = yaml.safe_load((run / "config.yaml").read_text())
    assert resolved["variants"]["b"]["prune"]["targets"] == [{"ratio": 0.3}]


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_examples_validate(path):
    plan = plan_experiment(path, "unused-runs-dir")
    assert plan.stages and not Path("unused-runs-dir").exists()
    header = path.read_text().split("\n\n")[0]
    assert "2-core CPU" in header and "Expected run time" in header


def test_examples_exist():
    names = {p.stem for p in EXAMPLES}
    assert len(names) >= 6


def test_report_plot_names_never_collide():
    from pathlib import Path

    from depthprune.report.markdown import plot_name

    taken: dict[str, Path] = {}
    for name in ("taylor", "taylor+", "magnitude+", "taylor"):
        png = plot_name("scores", name, taken)
        assert png not in taken
        taken[png] = Path(png)
    assert list(taken) == ["scores_taylor.png", "scores_taylor-plus.png", "scores_magnitude-plus.png",
                           "scores_taylor-2.png"]


def test_only_runs_the_named_stages_and_what_they_need(files, tmp_path, capsys):
    from depthprune.pipeline import run_experiment

    cfg = tiny_config(files, name="only")
    cfg.pop("retrain")
    cfg.pop("bench")
    path = write(tmp_path / "only.yaml", cfg)
    with pytest.raises(DepthpruneError, match="--only k9/eval: no such stage"):
        run_experiment(path, tmp_path / "runs", only=["k9/eval"])
    summary = run_experiment(path, tmp_path / "runs", only=["k1/eval"])
    assert summary.ran == ["score", "k1/prune", "k1/eval"]
    assert sorted(summary.not_selected) == ["base/eval", "k2/eval", "k2/prune"]
    main(["run", str(path), "--runs-dir", str(tmp_path / "runs"), "--dry-run", "--only", "k2/*"])
    out = capsys.readouterr().out
    assert "k1/eval: done, not selected by --only" in out and "k2/prune: new" in out
    summary = run_experiment(path, tmp_path / "runs")  # the rest, later: what was done is kept
    assert sorted(summary.ran) == ["base/eval", "k2/eval", "k2/prune"]
    assert sorted(summary.skipped) == ["k1/eval", "k1/prune", "score"]


def test_same_weights_are_evaluated_once_per_run(files, tmp_path, monkeypatch, capsys):
    """Variants that remove the same blocks, and a rerun that only adds zero-shot, reuse the run's PPL results."""
    from depthprune.pipeline import run_experiment, stages

    computed = []
    real = stages.perplexity
    monkeypatch.setattr(stages, "perplexity", lambda model, tok, **kw: computed.append(kw["dataset"]) or
                        real(model, tok, **kw))
    cfg = tiny_config(files, name="once", retrain=[], bench=None, prune={"criterion": "ppl",
                                                                         "target": {"num_blocks": 1}},
                      variants={"a": {}, "b": {"description": "same recipe as a"},
                                "c": {"prune": {"target": {"num_blocks": 2}}}})
    path = write(tmp_path / "once.yaml", cfg)
    run_experiment(path, tmp_path / "runs")
    run = tmp_path / "runs" / "once"
    assert len(computed) == 3  # base, a (b has a's weights), c
    results = {v: json.loads((run / v / "eval.json").read_text())["results"][-1]["ppl"] for v in "abc"}
    assert results["a"] == results["b"] != results["c"]
    assert "from the run's ppl-cache" in capsys.readouterr().out

    cfg["evaluate"]["zeroshot"] = {"tasks": ["piqa"], "limit": 2, "batch_size": 2}
    run_experiment(write(path, cfg), tmp_path / "runs")  # eval stages rerun for zero-shot; PPL is not recomputed
    assert len(computed) == 3
    again = json.loads((run / "c" / "eval.json").read_text())["results"][-1]
    assert again["ppl"] == results["c"] and again["zeroshot"]["tasks"]["piqa"]["n"] == 2

    for f in (run / "ppl-cache").glob("*.json"):  # an unreadable entry is computed again, not trusted
        f.write_text("{")
    run_experiment(path, tmp_path / "runs", force=["eval", "baseline"])
    assert len(computed) == 6  # base, a and c again; b finds the entry a has just rewritten


def test_zeroshot_in_its_own_dtype_after_float32_ppl(files, tmp_path):
    from depthprune.pipeline import run_experiment

    zs = {"tasks": ["piqa"], "limit": 2, "batch_size": 2}
    plain, _ = load_config(write(tmp_path / "a.yaml", tiny_config(files, evaluate={"zeroshot": zs})))
    assert "dtype" not in plain.evaluate.stage_dump(set())["zeroshot"]  # runs made before the option keep hashes
    cfg = tiny_config(files, name="zsdt", retrain=[], bench=None, prune={"criterion": "magnitude",
                                                                         "target": {"num_blocks": 1}},
                      evaluate={"baseline": False, "ppl": {"datasets": [str(files["text"])], "seq_len": 16,
                                                           "limit": 2}, "zeroshot": zs | {"dtype": "bfloat16"}})
    cfg["model"]["dtype"] = "float32"
    run_experiment(write(tmp_path / "zsdt.yaml", cfg), tmp_path / "runs")
    result = json.loads((tmp_path / "runs" / "zsdt" / "eval.json").read_text())["results"][-1]
    assert result["ppl"][str(files["text"])]["dtype"] == "float32"
    assert result["zeroshot"]["dtype"] == "bfloat16"
    with pytest.raises(DepthpruneError, match="dtype"):
        load_config(write(tmp_path / "bad.yaml", tiny_config(files, evaluate={"zeroshot": zs | {"dtype": "fp8"}})))


@pytest.mark.parametrize("native, want", [(True, "bfloat16"), (False, "float32")])
def test_zeroshot_bfloat16_if_native_follows_the_cpu(files, tmp_path, monkeypatch, native, want):
    """``bfloat16-if-native``: bf16 where the CPU computes it natively, float32 where bf16 would be emulated."""
    from depthprune.models import placement
    from depthprune.pipeline import run_experiment

    monkeypatch.setattr(placement, "cpu_has_native_bf16", lambda: native)
    assert placement.native_bf16_or_float32("cpu") == want
    zs = {"tasks": ["piqa"], "limit": 2, "batch_size": 2, "dtype": "bfloat16-if-native"}
    cfg = tiny_config(files, name="zsnative", retrain=[], bench=None, prune={"criterion": "magnitude",
                                                                             "target": {"num_blocks": 1}},
                      evaluate={"baseline": False, "ppl": None, "zeroshot": zs})
    cfg["model"]["dtype"] = "float32"
    run_experiment(write(tmp_path / "zsnative.yaml", cfg), tmp_path / "runs")
    result = json.loads((tmp_path / "runs" / "zsnative" / "eval.json").read_text())["results"][-1]
    assert result["zeroshot"]["dtype"] == want
