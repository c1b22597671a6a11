"""Zero-shot commonsense evaluation through lm-eval: local task files, prompts, end to end, bad input."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import lm_eval
import pytest
from tiny import save_tiny, tiny_model, tiny_tokenizer

from depthprune.cli import main
from depthprune.errors import DataNotFoundError, DepthpruneError
from depthprune.evaluation.lm_eval_tasks import local_data
from depthprune.evaluation.zeroshot import (
    PAPER_METRIC,
    PAPER_TASKS,
    _load_tasks,
    evaluate_zeroshot,
    make_lm,
    parse_tasks,
    resolve_sources,
)

EXPECTED_COUNTS = {"boolq": 3270, "piqa": 1838, "hellaswag": 10042, "winogrande": 1267, "arc_easy": 2376,
                   "arc_challenge": 1172, "openbookqa": 500}
HAVE_DATA = all(local_data.data_files(t) is not None for t in PAPER_TASKS)
needs_data = pytest.mark.skipif(not HAVE_DATA, reason="local commonsense data not found (set DEPTHPRUNE_DATA)")
LM_EVAL_TASKS = Path(lm_eval.__file__).parent / "tasks"


@pytest.fixture(scope="module")
def local_tasks() -> dict:
    """The 7 local lm-eval tasks, loaded through lm-eval's TaskManager from our YAMLs."""
    if not HAVE_DATA:
        pytest.skip("local commonsense data not found")
    tasks, _ = _load_tasks(PAPER_TASKS, {t: "local" for t in PAPER_TASKS})
    return tasks


def first_requests(task) -> list[tuple[str, str]]:
    """(context, continuation) pairs lm-eval builds for the task's first document, zero-shot."""
    task.build_all_requests(limit=1)
    return [inst.arguments for inst in task.instances]


def lm_eval_module(relpath: str):
    spec = importlib.util.spec_from_file_location("lm_eval_task_utils", LM_EVAL_TASKS / relpath)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# --- local task files ------------------------------------------------------------------------------------------


@needs_data
def test_local_tasks_load_expected_counts(local_tasks):
    assert {t: len(obj.eval_docs) for t, obj in local_tasks.items()} == EXPECTED_COUNTS
    for t, obj in local_tasks.items():
        assert obj.task_name == f"depthprune_{t}"
        assert obj.config.num_fewshot in (None, 0)


BOOLQ_PASSAGE = (
    "All biomass goes through at least some of these steps: it needs to be grown, collected, dried, fermented, "
    "distilled, and burned. All of these steps require resources and an infrastructure. The total amount of energy "
    "input into the process compared to the energy released by burning the resulting ethanol fuel is known as the "
    "energy balance (or ``energy returned on energy invested''). Figures compiled in a 2007 report by National "
    "Geographic Magazine point to modest results for corn ethanol produced in the US: one unit of fossil-fuel "
    "energy is required to create 1.3 energy units from the resulting ethanol. The energy balance for sugarcane "
    "ethanol produced in Brazil is more favorable, with one unit of fossil-fuel energy required to create 8 from "
    "the ethanol. Energy balance estimates are not easily produced, thus numerous such reports have been generated "
    "that are contradictory. For instance, a separate survey reports that production of ethanol from sugarcane, "
    "which requires a tropical climate to grow productively, returns from 8 to 9 units of energy for each unit "
    "expended, as compared to corn, which only returns about 1.34 units of fuel energy for each unit of energy "
    "expended. A 2006 University of California Berkeley study, after analyzing six separate studies, concluded "
    "that producing ethanol from corn uses much less petroleum than producing gasoline."
)


@needs_data
def test_local_prompts_match_lm_eval_templates(local_tasks):
    # super_glue/boolq: "{{passage}}\nQuestion: {{question}}?\nAnswer:", choices no/yes, target delimiter " "
    ctx = f"{BOOLQ_PASSAGE}\nQuestion: does ethanol take more energy make that produces?\nAnswer:"
    assert first_requests(local_tasks["boolq"]) == [(ctx, " no"), (ctx, " yes")]
    assert local_tasks["boolq"].doc_to_target(local_tasks["boolq"].eval_docs[0]) == 0

    # arc/arc_easy.yaml: "Question: {{question}}\nAnswer:", choices = choices.text
    arc_e = "Question: Which statement best explains why photosynthesis is the foundation of most food webs?\nAnswer:"
    assert first_requests(local_tasks["arc_easy"]) == [
        (arc_e, " Sunlight is the source of energy for nearly all ecosystems."),
        (arc_e, " Most ecosystems are found on land instead of in water."),
        (arc_e, " Carbon dioxide is more available than other gases."),
        (arc_e, " The producers in all ecosystems are plants."),
    ]
    arc_c = ("Question: An astronomer observes that a planet rotates faster after a meteorite impact. Which is the "
             "most likely effect of this increase in rotation?\nAnswer:")
    reqs = first_requests(local_tasks["arc_challenge"])
    assert [c for c, _ in reqs] == [arc_c] * 4
    assert reqs[2][1] == " Planetary days will become shorter."
    assert local_tasks["arc_challenge"].doc_to_target(local_tasks["arc_challenge"].eval_docs[0]) == 2

    # piqa.yaml: "Question: {{goal}}\nAnswer:"; openbookqa: the bare question_stem
    piqa_ctx = first_requests(local_tasks["piqa"])[0][0]
    assert piqa_ctx == "Question: How do I ready a guinea pig cage for it's new occupants?\nAnswer:"
    obqa = first_requests(local_tasks["openbookqa"])
    assert obqa[1] == ("A person wants to start saving money so that they can afford a nice vacation at the end of "
                       "the year. After looking over their budget and expenses, they decide the best way to save "
                       "money is to", " quit eating lunch out")


@needs_data
def test_winogrande_and_hellaswag_match_lm_eval_processing(local_tasks):
    import datasets

    # WinoGrande: lm-eval's own functions on the original record give the same partial-evaluation requests.
    wino = lm_eval_module("winogrande/preprocess_winogrande.py")
    orig = {"sentence": "Sarah was a much better surgeon than Maria so _ always got the easier cases.",
            "option1": "Sarah", "option2": "Maria", "answer": "2"}
    reqs = first_requests(local_tasks["winogrande"])
    assert reqs == [(c, " " + wino.doc_to_target(orig)) for c in wino.doc_to_choice(orig)]
    assert local_tasks["winogrande"].doc_to_text(local_tasks["winogrande"].eval_docs[0]) == wino.doc_to_text(orig)

    # HellaSwag: lm-eval's process_docs on the original row (ctx_b capitalised) gives our query and endings.
    hs = lm_eval_module("hellaswag/utils.py")
    row = {"activity_label": "Roof shingle removal", "ctx_a": "A man is sitting on a roof.", "ctx_b": "he",
           "label": "3", "endings": ["is using wrap to wrap a pair of skis.", "is ripping level tiles off.",
                                     "is holding a rubik's cube.", "starts pulling up roofing on a roof."]}
    theirs = hs.process_docs(datasets.Dataset.from_list([row]))[0]
    ours = local_tasks["hellaswag"].eval_docs[0]
    assert (ours["query"], ours["choices"], ours["label"]) == (theirs["query"], theirs["choices"], theirs["gold"])


def test_doc_builders_edge_cases():
    # BoolQ: split on the LAST "\nQuestion: " (a passage may contain it), one trailing "?" removed
    rec = {"query": "Passage: A\nQuestion: inside?\nQuestion: is it?", "gold": 1}
    assert local_data.boolq_doc(rec) == {"passage": "A\nQuestion: inside?", "question": "is it", "label": 1}
    # HellaSwag: WikiHow items (no lowercase tail) are left alone; [tags] are stripped as lm-eval does
    doc = local_data.hellaswag_doc("Home: [header] How to x [title] Do it. Then rest.", ["[step] a  b"], 0)
    assert doc["query"] == "Home: How to x. Do it. Then rest."
    assert doc["choices"] == [lm_eval_module("hellaswag/utils.py").preprocess("[step] a  b")] == [" a b"]
    assert local_data.hellaswag_doc("Dance: A man dances. the man", ["x"], 0)["query"] == "Dance: A man dances. The man"


def test_sources_fall_back_to_hub_without_data(monkeypatch):
    monkeypatch.setattr(local_data, "find_data_file", lambda rel: None)
    assert resolve_sources(["piqa", "boolq"], "auto") == {"piqa": "hub", "boolq": "hub"}
    with pytest.raises(DataNotFoundError, match="--source local"):
        resolve_sources(["piqa"], "local")


# --- end to end -------------------------------------------------------------------------------------------------


@needs_data
def test_cli_all_seven_tasks_limit5(tmp_path, capsys):
    model_dir = save_tiny("llama", tmp_path / "tiny", layers=2)
    out = tmp_path / "zs.json"
    assert main(["eval", "zeroshot", "--model", str(model_dir), "--limit", "5", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "data: boolq=local" in printed and "| HellaSwag | local | 5 |" in printed
    res = json.loads(out.read_text())
    assert list(res["tasks"]) == list(PAPER_TASKS)
    assert res["lm_eval_version"] == lm_eval.__version__ and res["num_fewshot"] == 0 and res["limit"] == 5
    assert res["source"] == "local" and res["average_complete"] is False
    for name, t in res["tasks"].items():
        assert t["lm_eval_task"] == f"depthprune_{name}" and t["source"] == "local"
        assert t["n"] == 5 and t["n_total"] == EXPECTED_COUNTS[name]
        assert t["task_version"] == (2.0 if name == "boolq" else 1.0)
        assert t["metric"] == PAPER_METRIC[name] and t["score"] == t[PAPER_METRIC[name]]
        assert 0.0 <= t["acc"] <= 1.0 and t["acc_stderr"] is not None
        if name not in ("boolq", "winogrande"):  # lm-eval defines only acc for these two
            assert 0.0 <= t["acc_norm"] <= 1.0
        assert all(Path(f).is_file() for f in t["data_files"])
    assert res["average"] == pytest.approx(sum(t["score"] for t in res["tasks"].values()) / 7)


@needs_data
def test_python_api_on_pruned_live_model():
    from depthprune.pruning import remove_blocks

    model = tiny_model("gemma3_text", layers=6)
    remove_blocks(model, [2, 3])
    res = evaluate_zeroshot(model, tiny_tokenizer(), tasks="piqa,arc_challenge", limit=3, batch_size=4)
    assert list(res.tasks) == ["piqa", "arc_challenge"] and res.tasks["arc_challenge"].metric == "acc_norm"
    assert all(0 <= t.score <= 1 and t.n == 3 for t in res.tasks.values())
    assert "| ARC-c | local | 3 |" in res.to_markdown()


# --- bad input ---------------------------------------------------------------------------------------------------


def test_unknown_task_lists_available(capsys):
    with pytest.raises(DepthpruneError, match="available: boolq, piqa, hellaswag"):
        parse_tasks("piqa,mmlu")
    assert main(["eval", "zeroshot", "--model", "/nonexistent", "--tasks", "mmlu"]) == 2
    err = capsys.readouterr().err
    assert "--tasks unknown task 'mmlu'" in err and "openbookqa" in err


def test_limit_zero_rejected(capsys):
    assert main(["eval", "zeroshot", "--model", "/nonexistent", "--limit", "0"]) == 2
    assert "--limit must be >= 1, got 0" in capsys.readouterr().err
    with pytest.raises(DepthpruneError, match="--limit"):
        evaluate_zeroshot(tiny_model("llama", layers=2), tiny_tokenizer(), tasks="piqa", limit=0)
    with pytest.raises(DepthpruneError, match="--source"):
        resolve_sources(["piqa"], "web")


# --- the real embedded model (one short check) -------------------------------------------------------------------


@needs_data
@pytest.mark.real_model
def test_embedded_gemma_piqa_smoke(embedded):
    assert make_lm(embedded.model, embedded.tokenizer).tok_encode("Hi")[0] == embedded.tokenizer.bos_token_id
    res = evaluate_zeroshot(embedded.model, embedded.tokenizer, tasks="piqa", limit=6, batch_size=6)
    assert res.bos_prepended and res.tasks["piqa"].n == 6
    assert res.tasks["piqa"].acc >= 0.5  # model card: 67.7 on the full set; chance is 0.5
