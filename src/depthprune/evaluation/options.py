"""Evaluation options, defined once: perplexity and zero-shot settings for the API, the CLI and the YAML."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, field_validator, model_validator

from depthprune.core.options import FieldProblems, Options
from depthprune.data.tokens import BOS_MODES
from depthprune.errors import DepthpruneError
from depthprune.evaluation.samples import DEFAULT_MAX_NEW_TOKENS, DEFAULT_PROMPTS
from depthprune.evaluation.zeroshot import BACKENDS, PAPER_TASKS, SOURCES, parse_docs, parse_tasks


class PerplexitySettings(Options):
    """How perplexity is measured: non-overlapping windows, BOS placement, batch."""
    seq_len: int = Field(128, ge=2, description="text tokens per window")
    limit: int | None = Field(None, ge=1, description="evaluate only the first N windows (default: all)")
    batch_size: int = Field(8, ge=1, description="windows per forward pass")
    text_field: str = Field("text", description="text field of .jsonl/.json records")
    bos: Literal[BOS_MODES] = Field("every", description="BOS before every window (Gemma needs it), once before "
                                                         "the whole text (the paper's LLaMA numbers), or none")


class PerplexityOptions(PerplexitySettings):
    dataset: str = Field("wikitext2", description="wikitext2, ptb, or a .txt/.jsonl path or hub id")


class ZeroShotOptions(Options):
    """The paper's 7 commonsense tasks through lm-evaluation-harness."""
    tasks: list[str] | None = Field(None, validate_default=True,
                                    description="task names (default: all 7: " + ", ".join(PAPER_TASKS) + ")")
    limit: int | None = Field(None, ge=1, description="score only the first N examples of each task")
    docs: str | None = Field(None, description="score only documents START:END of each task (0-based, END "
                                               "exclusive, clipped to the split), e.g. 0:1000: shards of a split "
                                               "that merge exactly into the full-set result (merge_scores)")
    batch_size: int | Literal["auto"] = Field(
        8, description="requests per model call, or auto (fast backend: the largest its memory budget allows)")
    backend: Literal[BACKENDS] = Field("fast", description="fast: shared contexts, LM head at scored tokens only, "
                                                           "bounded memory (same numbers); hf: lm-eval's stock HFLM")
    cache_dir: str | None = Field(None, json_schema_extra={"cli": "--eval-cache"},
                                  description="keep every answer here as it is computed; a rerun with the same "
                                              "directory resumes (one made for another model is refused)")
    source: Literal[SOURCES] = Field("auto", json_schema_extra={"cli": "--source"},
                                     description="auto: the local data directory when it has the task, else "
                                                 "lm-eval's hub task")

    @field_validator("batch_size")
    @classmethod
    def _positive(cls, v: int | str) -> int | str:
        if v != "auto" and v < 1:
            raise ValueError(f"must be a positive integer or auto, got {v!r}")
        return v

    @field_validator("docs")
    @classmethod
    def _range(cls, v: str | None) -> str | None:
        if v is not None:
            parse_docs(v)
        return v

    @model_validator(mode="after")
    def _one_selection(self):
        if self.docs is not None and self.limit is not None:
            raise ValueError("give --limit (the first N documents) or --docs START:END, not both")
        return self

    @field_validator("tasks", mode="before")
    @classmethod
    def _split(cls, v):
        return [s.strip() for s in v.split(",") if s.strip()] if isinstance(v, str) else v

    @field_validator("tasks")
    @classmethod
    def _known(cls, v: list[str] | None) -> list[str]:
        if v is None:
            return list(PAPER_TASKS)
        bad = [((i,), f"unknown task {t!r}; available: {', '.join(PAPER_TASKS)}")
               for i, t in enumerate(v) if t.removeprefix("depthprune_") not in PAPER_TASKS]
        if bad:
            raise FieldProblems(bad)
        try:
            return parse_tasks(v)
        except DepthpruneError as exc:
            raise ValueError(str(exc)) from None


def _text(value: str) -> str:
    if not value.strip():
        raise ValueError("must be non-empty text")
    return value


class SamplesOptions(Options):
    """Greedy continuations of ``prompts``, exactly ``max_new_tokens`` each (YAML ``samples: true``: defaults)."""

    prompts: list[Annotated[str, AfterValidator(_text)]] = Field(
        default_factory=lambda: list(DEFAULT_PROMPTS), min_length=1, description="prompts to continue")
    max_new_tokens: int = Field(DEFAULT_MAX_NEW_TOKENS, ge=1, le=1024, description="new tokens per prompt")

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        return {} if data is True else data
