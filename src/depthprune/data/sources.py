"""Text sources: named corpora of the data directory, local .txt/.jsonl files, and hub datasets.

Local data is found through ``$DEPTHPRUNE_DATA``, then ``../shared/data`` next to the project (or the
working directory); named corpora fall back to the Hugging Face hub when online.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from depthprune.errors import DataNotFoundError, DepthpruneError

_PROJECT_ROOT = Path(__file__).resolve().parents[3]


@dataclass(frozen=True)
class NamedSource:
    """A corpus of the data directory, with the way its rows are joined and its hub fallback."""

    relpath: str
    joiner: str
    hub: tuple[str, str | None, str, str] | None = None  # (path, config name, split, text column)
    kind: str = "lines"  # lines | text | jsonl
    description: str = ""


NAMED_SOURCES: dict[str, NamedSource] = {
    "wikitext2": NamedSource(
        "wikitext2/wiki.test.raw", "\n\n", ("wikitext", "wikitext-2-raw-v1", "test", "text"),
        description="WikiText-2 raw test split, rows joined with '\\n\\n' (LLM-Pruner / Shortened LLaMA)",
    ),
    "ptb": NamedSource(
        "ptb/ptb.test.txt", " ", ("ptb_text_only", "penn_treebank", "test", "sentence"),
        description="Penn Treebank test sentences joined with ' '",
    ),
    "war_and_peace": NamedSource(
        "calibration/war_and_peace.txt", "", kind="text", description="War and Peace (Project Gutenberg)"
    ),
    "c4_sample": NamedSource(
        "pretrain_sample/c4_demo.jsonl", "\n\n", kind="jsonl", description="300 C4 documents"
    ),
    "wiki_sample": NamedSource(
        "pretrain_sample/wiki_demo.txt", "\n\n", kind="lines", description="30 Wikipedia articles"
    ),
}


def data_dir_candidates() -> list[Path]:
    """Where local data is looked for, in order."""
    out = []
    if os.environ.get("DEPTHPRUNE_DATA"):
        env = Path(os.environ["DEPTHPRUNE_DATA"]).expanduser()
        if not env.is_dir():  # a typo must not silently fall back to other data
            raise DataNotFoundError(f"DEPTHPRUNE_DATA={env} is not a directory; point it at a directory laid out "
                                    "like shared/data (see its MANIFEST.md), or unset it")
        out.append(env)
    out += [_PROJECT_ROOT.parent / "shared" / "data", Path.cwd().parent / "shared" / "data",
            Path.cwd() / "shared" / "data"]
    seen, unique = set(), []
    for p in out:
        key = str(p.resolve()) if p.exists() else str(p)
        if key not in seen:
            seen.add(key)
            unique.append(p)
    return unique


def find_data_file(relpath: str) -> Path | None:
    """The first data directory holding ``relpath``, or None."""
    for d in data_dir_candidates():
        if (d / relpath).is_file():
            return d / relpath
    return None


def require_data_file(relpath: str) -> Path:
    path = find_data_file(relpath)
    if path is None:
        tried = ", ".join(str(d / relpath) for d in data_dir_candidates())
        raise DataNotFoundError(
            f"data file {relpath} not found (tried {tried}); set DEPTHPRUNE_DATA to a directory laid out "
            "like shared/data (see its MANIFEST.md)"
        )
    return path


def _named_rows(name: str, src: NamedSource, path: Path) -> list[str]:
    raw = path.read_text(encoding="utf-8")
    if src.kind == "text":
        return [raw]
    if src.kind == "jsonl":
        return [json.loads(line)["text"] for line in raw.splitlines() if line.strip()]
    lines = raw.splitlines(keepends=True)
    if name == "wikitext2":  # HF rows: each line with its newline, blank lines as ""
        return ["" if not line.strip() else line for line in lines]
    return [line.strip() for line in lines if line.strip()]


def hub_dataset(path: str, config: str | None = None, split: str = "train"):
    """``datasets.load_dataset`` (imported here: the hub is only a fallback, and ``datasets`` is slow to import)."""
    import datasets  # heavy and rarely needed: only when a dataset is not found locally

    return datasets.load_dataset(path, config, split=split)


def _hub_rows(name: str, src: NamedSource) -> list[str]:
    path, cfg, split, column = src.hub
    try:
        ds = hub_dataset(path, cfg, split)
    except Exception as exc:  # offline, missing, ...
        tried = ", ".join(str(d / src.relpath) for d in data_dir_candidates())
        raise DataNotFoundError(
            f"dataset '{name}' not found locally (tried {tried}) and the hub copy {path}/{cfg} failed "
            f"({type(exc).__name__}). Set DEPTHPRUNE_DATA to a directory laid out like shared/data."
        ) from None
    return list(ds[column])


def load_text(source: str, text_field: str = "text") -> str:
    """The text of a named corpus, a local .txt/.jsonl/.json file, or a hub dataset (its 'train' split)."""
    if source in NAMED_SOURCES:
        spec = NAMED_SOURCES[source]
        path = find_data_file(spec.relpath)
        if path is not None:
            rows = _named_rows(source, spec, path)
        elif spec.hub is not None:
            rows = _hub_rows(source, spec)
        else:
            require_data_file(spec.relpath)
            raise AssertionError  # unreachable
        return spec.joiner.join(rows)
    path = Path(source).expanduser()
    if path.suffix in (".txt", ".jsonl", ".json") or path.exists():
        return _load_local(path, text_field)
    if "/" in source:
        return _load_hub_dataset(source, text_field)
    raise DepthpruneError(
        f"unknown dataset '{source}': use one of {', '.join(NAMED_SOURCES)}, a .txt/.jsonl file, "
        "or a hub dataset id (owner/name)"
    )


def _load_local(path: Path, text_field: str) -> str:
    if not path.is_file():
        raise DepthpruneError(f"dataset file {path} does not exist")
    if path.suffix == ".txt":
        return path.read_text(encoding="utf-8")
    if path.suffix in (".jsonl", ".json"):
        if path.suffix == ".json":
            records = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(records, list):
                raise DepthpruneError(f"{path}: expected a JSON array of objects")
        else:
            records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        texts = []
        for i, rec in enumerate(records):
            if not isinstance(rec, dict) or text_field not in rec:
                raise DepthpruneError(
                    f"{path}: record {i} has no '{text_field}' field; pass --text-field NAME to choose the field"
                )
            texts.append(str(rec[text_field]))
        return "\n\n".join(texts)
    raise DepthpruneError(f"dataset file {path}: unsupported extension (use .txt, .jsonl or .json)")


def _load_hub_dataset(name: str, text_field: str) -> str:
    try:
        ds = hub_dataset(name)
    except Exception as exc:
        raise DataNotFoundError(
            f"dataset '{name}' is not a local file and could not be loaded from the hub ({type(exc).__name__}); "
            "pass a local .txt/.jsonl path instead"
        ) from None
    if text_field not in ds.column_names:
        raise DepthpruneError(f"hub dataset {name} has no '{text_field}' column (has {ds.column_names})")
    return "\n\n".join(ds[text_field])
