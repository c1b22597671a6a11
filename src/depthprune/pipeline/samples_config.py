"""``evaluate.samples`` of the experiment YAML: generation examples stored in eval.json (see evaluation/samples.py)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator


def _text(value: str) -> str:
    if not value.strip():
        raise ValueError("must be non-empty text")
    return value


def _default_prompts() -> list[str]:
    from depthprune.evaluation.samples import DEFAULT_PROMPTS

    return list(DEFAULT_PROMPTS)


class SamplesSpec(BaseModel):
    """Greedy continuations of ``prompts``, exactly ``max_new_tokens`` each; ``samples: true`` takes the defaults."""

    model_config = ConfigDict(extra="forbid")

    prompts: list[Annotated[str, AfterValidator(_text)]] = Field(default_factory=_default_prompts, min_length=1)
    max_new_tokens: int = Field(32, ge=1, le=1024)

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        return {} if data is True else data
