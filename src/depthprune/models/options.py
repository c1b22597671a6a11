"""Which model to load, in which dtype, on which devices: the options every model-loading command shares."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from depthprune.core.options import Options
from depthprune.models.placement import AUTO_BF16_ON_CPU, DEVICE_HELP

Dtype = Literal["auto", "float32", "bfloat16", "float16"]
Device = Literal["auto", "cpu", "cuda", "multi"]
DTYPE_HELP = ("weights dtype (auto: the checkpoint's dtype on GPUs; on CPUs "
              + ("bfloat16 where the CPU has native bf16 instructions, else float32)" if AUTO_BF16_ON_CPU else
                 "float32; pass bfloat16 on a CPU with AVX-512 BF16 / AMX for faster evaluation, but keep scoring "
                 "in float32)"))


class ModelOptions(Options):
    source: str = Field("gemma-3-270m", json_schema_extra={"cli": "--model"},
                        description="local HF directory, .gguf file, hub id, or 'gemma-3-270m' (the embedded default)")
    dtype: Dtype = Field("auto", description=DTYPE_HELP)
    device: Device = Field("auto", description=DEVICE_HELP)
    cache_dir: str | None = Field(None, description="where the embedded model's HF checkpoint is cached")
