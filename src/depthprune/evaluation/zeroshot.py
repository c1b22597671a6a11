"""Zero-shot commonsense accuracy (the paper's 7 tasks) through lm-evaluation-harness.

The model is wrapped in lm-eval's ``HFLM`` (a live, possibly pruned, model object) and scored with
``simple_evaluate``, zero-shot. Each task runs on the local copy of its data when the data directory has it
(tasks ``depthprune_<name>`` defined in ``lm_eval_tasks/``, same prompts as lm-eval's), else on lm-eval's
standard hub task. Results are reported under the standard names either way.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from importlib.metadata import version

import torch

from depthprune.data.sources import data_dir_candidates
from depthprune.errors import DataNotFoundError, DepthpruneError
from depthprune.evaluation.lm_eval_tasks import TASKS_DIR
from depthprune.evaluation.lm_eval_tasks.local_data import DATA_FILES, data_files
from depthprune.evaluation.zeroshot_answers import answer_counts, count_computed
from depthprune.evaluation.zeroshot_cache import cache_identity, close_cache, open_cache

PAPER_TASKS: tuple[str, ...] = (
    "boolq", "piqa", "hellaswag", "winogrande", "arc_easy", "arc_challenge", "openbookqa",
)
# The paper's metric per task: acc for BoolQ, PIQA, WinoGrande, ARC-e; acc_norm for HellaSwag, ARC-c, OBQA.
PAPER_METRIC: dict[str, str] = {
    "boolq": "acc", "piqa": "acc", "winogrande": "acc", "arc_easy": "acc",
    "hellaswag": "acc_norm", "arc_challenge": "acc_norm", "openbookqa": "acc_norm",
}
SHORT_NAMES: dict[str, str] = {
    "boolq": "BoolQ", "piqa": "PIQA", "hellaswag": "HellaSwag", "winogrande": "WinoGrande",
    "arc_easy": "ARC-e", "arc_challenge": "ARC-c", "openbookqa": "OBQA",
}
SOURCES = ("auto", "local", "hub")
BACKENDS = ("fast", "hf")  # fast: FastHFLM (fast_lm.py); hf: lm-eval's stock HFLM
LOCAL_PREFIX = "depthprune_"


@dataclass
class TaskScore:
    """One task's accuracies (fractions in [0, 1]; None where the task does not define the metric)."""
    task: str
    source: str  # local | hub
    lm_eval_task: str
    task_version: float | str | None
    n: int  # examples scored
    n_total: int  # examples in the split
    metric: str  # the paper's metric for this task
    score: float
    acc: float | None
    acc_stderr: float | None
    acc_norm: float | None
    acc_norm_stderr: float | None
    data_files: list[str] = field(default_factory=list)
    docs: list[int] | None = None  # [start, end) of the documents scored, when a --docs shard
    # documents whose answer (by the paper's metric: highest loglikelihood, per character for acc_norm) was
    # option 0, 1, ...: a model that always picks one option shows as a single nonzero count
    answer_counts: list[int] | None = None
    weights_sha256: str | None = None  # the scored model's weights fingerprint (zeroshot_cache.weights_fingerprint)


@dataclass
class ZeroShotResult:
    tasks: dict[str, TaskScore]
    average: float  # mean of the paper's metric over the evaluated tasks
    average_complete: bool  # True when all 7 paper tasks were evaluated on their full sets
    limit: int | None
    batch_size: int | str
    lm_eval_version: str
    add_bos_token: bool
    bos_prepended: bool  # whether the tokenizer actually starts its encodings with BOS
    wall_s: float
    backend: str = "hf"
    dtype: str = ""  # the model's weights dtype
    cache_dir: str | None = None  # the resumable per-request cache, when one was used
    requests: int = 0  # loglikelihood requests of the run
    requests_from_cache: int = 0  # of them answered from cache_dir (a resumed run): wall_s is the rest's time

    @property
    def source(self) -> str:
        kinds = {t.source for t in self.tasks.values()}
        return kinds.pop() if len(kinds) == 1 else "mixed"

    def to_json(self) -> dict:
        out = asdict(self)
        out["tasks"] = {name: asdict(t) for name, t in self.tasks.items()}
        out["source"] = self.source
        out["num_fewshot"] = 0
        out["average_metric"] = {t: PAPER_METRIC[t] for t in self.tasks}
        return out

    def to_markdown(self) -> str:
        """Per-task table (percentages, ± standard error)."""
        lines = ["| task | source | n | acc | acc_norm | paper metric |", "|---|---|---:|---:|---:|---:|"]
        for t in self.tasks.values():
            lines.append(f"| {SHORT_NAMES[t.task]} | {t.source} | {t.n} | {_pct(t.acc, t.acc_stderr)} | "
                         f"{_pct(t.acc_norm, t.acc_norm_stderr)} | {t.score * 100:.2f} ({t.metric}) |")
        label = "average" if self.average_complete else "average (partial: subset or --limit)"
        lines.append(f"| **{label}** | | | | | **{self.average * 100:.2f}** |")
        constant = [t for t in self.tasks.values() if t.answer_counts and t.n > 1 and max(t.answer_counts) == t.n]
        lines += [f"\nnote: {SHORT_NAMES[t.task]}: the same answer (option {t.answer_counts.index(t.n) + 1}) for "
                  f"all {t.n} documents; its accuracy is that option's share, not a sign of skill" for t in constant]
        return "\n".join(lines)


def _pct(value: float | None, stderr: float | None) -> str:
    if value is None:
        return "–"
    return f"{value * 100:.2f}" + (f" ± {stderr * 100:.2f}" if stderr is not None else "")


def comparison_table(results: Sequence[tuple[str, ZeroShotResult]]) -> str:
    """The paper's table: one row per model, the paper's metric per task (%) and the average."""
    tasks = [t for t in PAPER_TASKS if any(t in r.tasks for _, r in results)]
    head = "| model | " + " | ".join(SHORT_NAMES[t] for t in tasks) + " | Avg |"
    lines = [head, "|---|" + "---:|" * (len(tasks) + 1)]
    for name, r in results:
        cells = [f"{r.tasks[t].score * 100:.2f}" if t in r.tasks else "–" for t in tasks]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {r.average * 100:.2f} |")
    return "\n".join(lines)


# --- task selection --------------------------------------------------------------------------------------------


def parse_tasks(tasks: str | Iterable[str] | None) -> list[str]:
    """Task names from a comma-separated string or a list; None means all 7. Unknown names raise."""
    if tasks is None:
        return list(PAPER_TASKS)
    names = [t.strip() for t in (tasks.split(",") if isinstance(tasks, str) else tasks)]
    names = [n.removeprefix(LOCAL_PREFIX) for n in names if n]
    if not names:
        raise DepthpruneError(f"--tasks is empty; choose from: {', '.join(PAPER_TASKS)}")
    unknown = [n for n in names if n not in PAPER_TASKS]
    if unknown:
        raise DepthpruneError(f"unknown task(s) {', '.join(unknown)}; available: {', '.join(PAPER_TASKS)}")
    return list(dict.fromkeys(names))


def parse_docs(docs: str | Sequence[int] | None) -> tuple[int, int] | None:
    """``"START:END"`` (or a pair) as a (start, end) document range, 0 <= START < END; None stays None."""
    if docs is None:
        return None
    try:
        start, end = (int(x) for x in (docs.split(":") if isinstance(docs, str) else docs))
    except (TypeError, ValueError):
        raise DepthpruneError(f"--docs {docs!r}: expected START:END, e.g. 0:1000") from None
    if not 0 <= start < end:
        raise DepthpruneError(f"--docs {docs!r}: needs 0 <= START < END (END exclusive), e.g. 0:1000")
    return start, end


def _shard_samples(loaded: dict, docs: tuple[int, int] | None) -> dict[str, list[int]] | None:
    """lm-eval's ``samples`` (document indices per task) for a --docs range, clipped to each split."""
    if docs is None:
        return None
    out = {}
    for t, obj in loaded.items():
        n = len(obj.eval_docs)
        if docs[0] >= n:
            raise DepthpruneError(f"--docs {docs[0]}:{docs[1]}: {t} has only {n} documents")
        out[obj.task_name] = list(range(docs[0], min(docs[1], n)))
    return out


def merge_scores(parts: Sequence[TaskScore]) -> TaskScore:
    """One task's score over contiguous --docs shards from document 0: the same as scoring their union at once.

    Accuracies are 0/1 per document, so the mean and lm-eval's standard error (sample standard deviation over
    sqrt(n)) follow from each shard's n and mean: SE = sqrt(p (1 - p) / (n - 1)). Shards that tile the split
    give the full-set score (``docs`` None).
    """
    if not parts:
        raise DepthpruneError("merge_scores: no shards given")
    parts = sorted(parts, key=lambda p: (p.docs or [0])[0])
    first = parts[0]
    if len({(p.task, p.source, p.n_total) for p in parts}) != 1:
        raise DepthpruneError("merge_scores: the shards are not of one task, source and split")
    edges = [p.docs or [0, p.n] for p in parts]
    if edges[0][0] != 0 or any(a[1] != b[0] for a, b in zip(edges, edges[1:])):
        raise DepthpruneError(f"merge_scores: shards {edges} are not contiguous from document 0")
    weights = {p.weights_sha256 for p in parts if p.weights_sha256}
    if len(weights) > 1:
        raise DepthpruneError("merge_scores: the shards were scored on different weights (weights_sha256 "
                              f"{', '.join(sorted(w[:12] for w in weights))}); rescore them on one model")
    n = sum(p.n for p in parts)

    def mean_se(metric: str) -> tuple[float | None, float | None]:
        values = [getattr(p, metric) for p in parts]
        if any(v is None for v in values):
            return None, None
        mean = sum(v * p.n for v, p in zip(values, parts)) / n
        return mean, math.sqrt(mean * (1 - mean) / (n - 1)) if n > 1 else None

    acc, acc_se = mean_se("acc")
    acc_norm, acc_norm_se = mean_se("acc_norm")
    score = acc if first.metric == "acc" else acc_norm
    counts = None
    if all(p.answer_counts is not None for p in parts):
        width = max(len(p.answer_counts) for p in parts)
        counts = [sum(p.answer_counts[k] for p in parts if k < len(p.answer_counts)) for k in range(width)]
    return replace(first, n=n, score=score, acc=acc, acc_stderr=acc_se, acc_norm=acc_norm,
                   acc_norm_stderr=acc_norm_se, docs=None if n == first.n_total else [0, n], answer_counts=counts)


def resolve_sources(tasks: Sequence[str], source: str = "auto") -> dict[str, str]:
    """``local`` or ``hub`` per task: local when the data directory holds the task's files (auto)."""
    if source not in SOURCES:
        raise DepthpruneError(f"--source {source!r} is not one of: {', '.join(SOURCES)}")
    out = {}
    for t in tasks:
        found = source != "hub" and data_files(t) is not None
        if source == "local" and not found:

            wanted = " or ".join("+".join(opt) for opt in DATA_FILES[t])
            raise DataNotFoundError(
                f"--source local: no local data for {t} (looked for {wanted} under "
                f"{', '.join(str(d) for d in data_dir_candidates())}); set DEPTHPRUNE_DATA or use --source hub"
            )
        out[t] = "local" if found else "hub"
    return out


@contextlib.contextmanager
def _quiet_lm_eval(quiet: bool):
    logger = logging.getLogger("lm_eval")
    old = logger.level
    if quiet:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(old)


def _load_tasks(tasks: Sequence[str], sources: dict[str, str]):
    """lm-eval Task objects, keyed by the standard name, and the TaskManager that built them."""
    from lm_eval.tasks import TaskManager  # heavy (~2 s): imported when zero-shot runs


    need_hub = any(s == "hub" for s in sources.values())
    tm = TaskManager(include_path=str(TASKS_DIR), include_defaults=need_hub)
    loaded = {}
    for t in tasks:
        name = LOCAL_PREFIX + t if sources[t] == "local" else t
        try:
            (obj,) = tm.load(name)["tasks"].values()
        except DepthpruneError:
            raise
        except Exception as exc:
            if sources[t] == "local":
                raise
            raise DataNotFoundError(
                f"task {t}: lm-eval's hub dataset could not be loaded ({type(exc).__name__}: {str(exc)[:200]}); "
                "offline? Put the data directory in place (DEPTHPRUNE_DATA, see shared/data/MANIFEST.md) "
                "and use --source local"
            ) from None
        loaded[t] = obj
    return loaded, tm


def make_lm(model, tokenizer, batch_size: int | str = 8, max_length: int | None = None, backend: str = "hf", **kw):
    """Wrap a live model and its tokenizer in lm-eval's HFLM (BOS requested; log-softmax in float32).

    ``backend="fast"`` gives :class:`~depthprune.evaluation.fast_lm.FastHFLM` (same numbers, shared contexts,
    bounded memory; ``kw`` are its options).
    """
    from lm_eval.models.huggingface import HFLM  # heavy (~2 s): imported when zero-shot runs

    if backend not in BACKENDS:
        raise DepthpruneError(f"--backend {backend!r} is not one of: {', '.join(BACKENDS)}")
    cls = HFLM
    if backend == "fast":
        from depthprune.evaluation.fast_lm import FastHFLM as cls  # heavy: subclasses lm-eval's HFLM (~2 s)
    return cls(pretrained=model, tokenizer=tokenizer, backend="causal", batch_size=batch_size,
               max_length=max_length, add_bos_token=True, softmax_dtype=torch.float32, **kw)


def _bos_prepended(tokenizer) -> bool:
    bos = getattr(tokenizer, "bos_token_id", None)
    return bos is not None and tokenizer("Hello").input_ids[:1] == [bos]


def _num(value) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):  # lm-eval writes "N/A" when a stderr cannot be computed
        return None
    return None if out != out else out


def _task_files(task: str, source: str) -> list[str]:
    if source != "local":
        return []

    return [str(p) for p in data_files(task) or []]


def evaluate_zeroshot(model, tokenizer, tasks: str | Iterable[str] | None = None, limit: int | None = None,
                      docs: str | Sequence[int] | None = None, batch_size: int | str = 8, source: str = "auto",
                      max_length: int | None = None, quiet: bool = True, backend: str = "fast",
                      cache_dir: str | None = None) -> ZeroShotResult:
    """Zero-shot accuracy of a live model on the paper's commonsense tasks (all 7 by default).

    ``limit`` scores only the first N examples of each task (a quick look; the average is then partial);
    ``docs`` (``"START:END"``) only that range of each split, a shard that :func:`merge_scores` combines exactly.
    ``source``: ``auto`` (local data when found, else lm-eval's hub tasks), ``local`` or ``hub``.
    ``backend``: ``fast`` (FastHFLM, fast_lm.py) or ``hf`` (lm-eval's stock HFLM). ``batch_size`` may be
    ``"auto"`` (fast: as large as its memory budget allows). ``cache_dir`` keeps every answer as it is computed
    (lm-eval's SQLite cache) so a stopped run resumes where it was; a directory made for another model is
    refused (zeroshot_cache.py).
    """
    from lm_eval import simple_evaluate  # heavy (~2 s): imported when zero-shot runs

    names = parse_tasks(tasks)
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise DepthpruneError(f"--limit must be a positive integer (examples per task), got {limit!r}")
    doc_range = parse_docs(docs)
    if doc_range is not None and limit is not None:
        raise DepthpruneError("give --limit (the first N documents) or --docs START:END, not both")
    if batch_size != "auto" and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise DepthpruneError(f"--batch-size must be a positive integer or 'auto', got {batch_size!r}")
    if backend not in BACKENDS:
        raise DepthpruneError(f"--backend {backend!r} is not one of: {', '.join(BACKENDS)}")
    sources = resolve_sources(names, source)
    was_training = model.training
    model.eval()
    t0 = time.perf_counter()
    try:
        with _quiet_lm_eval(quiet):
            loaded, tm = _load_tasks(names, sources)
            samples = _shard_samples(loaded, doc_range)
            lm = make_lm(model, tokenizer, batch_size, max_length, backend=backend)
            computed = count_computed(lm)
            identity = cache_identity(model, tokenizer, backend, True, max_length)
            use_cache = None if cache_dir is None else open_cache(cache_dir, identity)
            try:
                out = simple_evaluate(model=lm, tasks=list(loaded.values()), num_fewshot=0, limit=limit,
                                      samples=samples, task_manager=tm, log_samples=True, use_cache=use_cache)
            finally:
                if use_cache is not None:
                    close_cache(lm)
    finally:
        model.train(was_training)
    wall = time.perf_counter() - t0
    n_requests = sum(len(obj.instances) for obj in loaded.values())
    scores = {t: _score(t, sources[t], obj.task_name, out) for t, obj in loaded.items()}
    for t, obj in loaded.items():
        scores[t].answer_counts = answer_counts(obj, out["samples"][obj.task_name], PAPER_METRIC[t])
        scores[t].weights_sha256 = identity["weights_sha256"]
    if samples is not None:
        for t, obj in loaded.items():
            idx = samples[obj.task_name]
            scores[t].docs = [idx[0], idx[-1] + 1]
    complete = set(names) == set(PAPER_TASKS) and all(s.n == s.n_total for s in scores.values())
    return ZeroShotResult(
        tasks=scores, average=sum(s.score for s in scores.values()) / len(scores), average_complete=complete,
        limit=limit, batch_size=batch_size, lm_eval_version=version("lm_eval"), add_bos_token=True,
        bos_prepended=_bos_prepended(tokenizer), wall_s=wall, backend=backend,
        dtype=str(next(model.parameters()).dtype).removeprefix("torch."),
        cache_dir=None if cache_dir is None else str(cache_dir),
        requests=n_requests, requests_from_cache=n_requests - computed[0],
    )


def _score(task: str, source: str, lm_name: str, out: dict) -> TaskScore:
    res = out["results"][lm_name]
    n = out.get("n-samples", {}).get(lm_name, {})
    acc, acc_norm = _num(res.get("acc,none")), _num(res.get("acc_norm,none"))
    metric = PAPER_METRIC[task]
    score = acc if metric == "acc" else acc_norm
    if score is None:
        raise DepthpruneError(f"lm-eval returned no {metric} for {lm_name} (got {sorted(res)})")
    return TaskScore(
        task=task, source=source, lm_eval_task=lm_name, task_version=out.get("versions", {}).get(lm_name),
        n=int(n.get("effective", 0)), n_total=int(n.get("original", 0)), metric=metric, score=score,
        acc=acc, acc_stderr=_num(res.get("acc_stderr,none")), acc_norm=acc_norm,
        acc_norm_stderr=_num(res.get("acc_norm_stderr,none")), data_files=_task_files(task, source),
    )
