"""Benchmark options, defined once (the paper's protocol by default): the API, ``depthprune bench`` and the YAML."""

from __future__ import annotations

import re

from pydantic import Field, field_validator

from depthprune.core.options import Options


def int_list(value) -> list[int]:
    """``"1,4,16"`` (or a list) -> ``[1, 4, 16]``, sorted and unique; anything but positive integers is refused."""
    parts = [p.strip() for p in value.split(",")] if isinstance(value, str) else list(value)
    if not parts or not any(str(p) for p in parts):
        raise ValueError("is empty; give positive integers separated by commas, e.g. 1,4,16")
    out = []
    for part in parts:
        if isinstance(part, bool) or not re.fullmatch(r"[+-]?\d+", str(part)):
            raise ValueError(f"{part!r} is not an integer; give positive integers like 1,4,16")
        if int(part) < 1:
            raise ValueError(f"must be positive integers, got {int(part)}; e.g. 1,4,16")
        out.append(int(part))
    return sorted(set(out))


class BenchOptions(Options):
    """Speed protocol (Sheng et al., as in Shortened LLaMA): 12 input tokens, greedy decoding of exactly L tokens."""

    batch_sizes: list[int] = Field([1, 4, 16], description="batch sizes M, comma-separated")
    output_lengths: list[int] = Field([128, 512], description="output lengths L, comma-separated")
    input_tokens: int = Field(12, ge=1, description="prompt length")
    warmup: int = Field(10, ge=0, description="untimed runs per setting")
    runs: int = Field(20, ge=1, description="timed runs per setting")
    threads: int | None = Field(None, ge=1, description="CPU threads for torch (default: torch's choice)")

    @field_validator("batch_sizes", "output_lengths", mode="before")
    @classmethod
    def _ints(cls, v):
        return int_list(v)
