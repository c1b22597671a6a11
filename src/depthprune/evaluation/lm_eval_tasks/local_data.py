"""Local copies of the 7 commonsense tasks, shaped like the documents lm-eval's own tasks read.

Each loader is the ``custom_dataset`` of one task YAML in this directory (lm-eval imports this file by path,
so it uses absolute imports only). Files are found through the data directory (``$DEPTHPRUNE_DATA``, then
``../shared/data``; see its MANIFEST.md), so the YAMLs hold no absolute paths.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import datasets

from depthprune.data.sources import find_data_file, require_data_file

_STYLE = "commonsense/lm_eval_style"

# Per task: alternative sets of data files, in order of preference (the first complete set is used).
DATA_FILES: dict[str, list[tuple[str, ...]]] = {
    "boolq": [(f"{_STYLE}/boolq.jsonl",)],
    "piqa": [("commonsense/piqa/valid.jsonl", "commonsense/piqa/valid-labels.lst"), (f"{_STYLE}/piqa.jsonl",)],
    "hellaswag": [(f"{_STYLE}/hellaswag.jsonl",), ("commonsense/hellaswag/hellaswag_val_full.txt",)],
    "winogrande": [(f"{_STYLE}/winogrande.jsonl",)],
    "arc_easy": [(f"{_STYLE}/arc_easy.jsonl",)],
    "arc_challenge": [(f"{_STYLE}/arc_challenge.jsonl",)],
    "openbookqa": [(f"{_STYLE}/openbook_qa.jsonl",)],
}


def data_files(task: str) -> list[Path] | None:
    """The local files of ``task`` (first complete alternative), or None when the data directory lacks them."""
    for option in DATA_FILES[task]:
        paths = [find_data_file(rel) for rel in option]
        if all(p is not None for p in paths):
            return paths
    return None


def _files(task: str) -> list[Path]:
    paths = data_files(task)
    if paths is None:
        require_data_file(DATA_FILES[task][0][0])  # raises DataNotFoundError naming the directories tried
    return paths


def _jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _split(name: str, docs: list[dict]):
    return datasets.DatasetDict({name: datasets.Dataset.from_list(docs)})


# --- document builders (pure functions on the raw records; tested directly) ----------------------------------


def boolq_doc(rec: dict) -> dict:
    """llm-foundry ``"Passage: {passage}\\nQuestion: {question}?"`` -> lm-eval's {passage, question, label}."""
    query = rec["query"]
    if not query.startswith("Passage: ") or "\nQuestion: " not in query:
        raise ValueError(f"unexpected BoolQ query layout: {query[:60]!r}")
    passage, question = query[len("Passage: "):].rsplit("\nQuestion: ", 1)  # a passage may contain the marker
    return {"passage": passage, "question": question.removesuffix("?"), "label": int(rec["gold"])}


def lettered_doc(rec: dict, text_key: str, prefix: str = "") -> dict:
    """llm-foundry {query, choices, gold} -> the ai2 schema {<text_key>, choices: {text, label}, answerKey}."""
    query = rec["query"]
    if prefix and not query.startswith(prefix):
        raise ValueError(f"expected the query to start with {prefix!r}: {query[:60]!r}")
    letters = [chr(ord("A") + i) for i in range(len(rec["choices"]))]
    return {
        text_key: query[len(prefix):],
        "choices": {"text": list(rec["choices"]), "label": letters},
        "answerKey": letters[int(rec["gold"])],
    }


def winogrande_doc(rec: dict) -> dict:
    """Partial evaluation: each context option is scored with the shared continuation."""
    return {"context_options": list(rec["context_options"]), "continuation": rec["continuation"],
            "gold": int(rec["gold"])}


def hellaswag_preprocess(text: str) -> str:
    """lm-eval's HellaSwag text cleaning: drop WikiHow [tags], " [title]" -> ". ", collapse double spaces."""
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


_SENTENCE_END = re.compile(r"(?<=[.!?]) ")


def hellaswag_doc(query: str, endings: list[str], gold: int) -> dict:
    """Rebuild lm-eval's query ``preprocess(activity_label + ": " + ctx_a + " " + ctx_b.capitalize())``.

    The local data holds ``ctx_a + " " + ctx_b`` with ctx_b uncapitalized. ctx_b is the unfinished last
    sentence of ActivityNet items (lowercase start); WikiHow items have an empty ctx_b. So the text after the
    last sentence end is taken as ctx_b when it starts with a lowercase letter, and capitalized as lm-eval does
    (3243 of the 10042 validation items, the ActivityNet share). Not recoverable: lm-eval keeps the space a
    leading ``[step]``-like tag leaves in a WikiHow ending; the local file trimmed it.
    """
    label, _, ctx = query.partition(": ")
    parts = _SENTENCE_END.split(ctx)
    if len(parts) > 1 and parts[-1][:1].islower():
        ctx = " ".join(parts[:-1]) + " " + parts[-1].capitalize()
    return {"query": hellaswag_preprocess(f"{label}: {ctx}"),
            "choices": [hellaswag_preprocess(e) for e in endings], "label": int(gold)}


# --- loaders referenced by the YAMLs (``custom_dataset``; lm-eval passes the task metadata as kwargs) ---------


def boolq(**_kwargs):
    (path,) = _files("boolq")
    return _split("validation", [boolq_doc(r) for r in _jsonl(path)])


def piqa(**_kwargs):
    paths = _files("piqa")
    if len(paths) == 2:  # the original release: {goal, sol1, sol2} + a labels file
        recs = _jsonl(paths[0])
        labels = [int(x) for x in paths[1].read_text(encoding="utf-8").split()]
        if len(labels) != len(recs):
            raise ValueError(f"{paths[1]}: {len(labels)} labels for {len(recs)} examples")
        docs = [{"goal": r["goal"], "sol1": r["sol1"], "sol2": r["sol2"], "label": y} for r, y in zip(recs, labels)]
    else:  # llm-foundry's "Question: {goal}\n"
        docs = [{"goal": r["query"].removeprefix("Question: ").removesuffix("\n"), "sol1": r["choices"][0],
                 "sol2": r["choices"][1], "label": int(r["gold"])} for r in _jsonl(paths[0])]
    return _split("validation", docs)


def hellaswag(**_kwargs):
    (path,) = _files("hellaswag")
    if path.suffix == ".jsonl":
        docs = [hellaswag_doc(r["query"], r["choices"], r["gold"]) for r in _jsonl(path)]
    else:  # six lines per item: context, gold index, four endings
        lines = path.read_text(encoding="utf-8").splitlines()
        docs = [hellaswag_doc(lines[i], lines[i + 2:i + 6], int(lines[i + 1])) for i in range(0, len(lines) - 5, 6)]
    return _split("validation", docs)


def winogrande(**_kwargs):
    (path,) = _files("winogrande")
    return _split("validation", [winogrande_doc(r) for r in _jsonl(path)])


def arc_easy(**_kwargs):
    (path,) = _files("arc_easy")
    return _split("test", [lettered_doc(r, "question", "Question: ") for r in _jsonl(path)])


def arc_challenge(**_kwargs):
    (path,) = _files("arc_challenge")
    return _split("test", [lettered_doc(r, "question", "Question: ") for r in _jsonl(path)])


def openbookqa(**_kwargs):
    (path,) = _files("openbookqa")
    return _split("test", [lettered_doc(r, "question_stem") for r in _jsonl(path)])
