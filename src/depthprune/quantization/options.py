"""Quantization options, defined once: the Python API, ``depthprune quantize`` and the YAML ``quantize:`` block."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from depthprune.core.options import Options

METHODS = ("gptq",)
SUPPORTED_BITS = {4: "W4A16", 8: "W8A16"}
"""Weight bits GPTQ supports here, with llmcompressor's scheme name (16-bit activations, integer weights in
compressed-tensors' pack-quantized format, the format vLLM runs)."""
QuantDtype = Literal["bfloat16", "float16", "float32"]


class QuantizeOptions(Options):
    """Post-training weight quantization (GPTQ through llmcompressor) of every Linear layer but the LM head."""

    method: Literal[METHODS] = Field("gptq", description="quantization method (GPTQ, Frantar et al. 2022)")
    bits: int = Field(4, description="weight bits: " + ", ".join(f"{b} ({s})" for b, s in SUPPORTED_BITS.items()))
    group_size: int = Field(128, ge=1, description="weights per quantization scale along the input dimension; "
                                                   "must divide the input features of every quantized layer")
    calib: str = Field("c4_sample", json_schema_extra={"cli": "--calib"},
                       description="calibration text: c4_sample, wikitext2, war_and_peace, a .txt/.jsonl path or a "
                                   "hub dataset")
    calib_samples: int = Field(128, ge=1, description="calibration windows")
    seq_len: int = Field(512, ge=2, description="tokens per calibration window (BOS is added in front)")
    seed: int = Field(0, description="random seed of the calibration windows")
    text_field: str = Field("text", description="text field of .jsonl/.json calibration records")
    dtype: QuantDtype = Field("bfloat16", description="dtype the model is quantized in: of the scales and of the "
                                                      "weights left unquantized (embeddings, norms, LM head)")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="where calibration runs (auto: a GPU "
                                                                        "when there is one)")
    dampening: float = Field(0.01, gt=0, lt=1, description="GPTQ dampening, as a fraction of the mean diagonal "
                                                           "of the Hessian")

    @field_validator("bits")
    @classmethod
    def _bits(cls, v: int) -> int:
        if v not in SUPPORTED_BITS:
            works = ", ".join(f"{b} ({s})" for b, s in SUPPORTED_BITS.items())
            raise ValueError(f"must be one of {works}, got {v}: GPTQ here writes the integer weights "
                             "compressed-tensors packs and vLLM runs")
        return v

    @property
    def scheme(self) -> str:
        return SUPPORTED_BITS[self.bits]


__all__ = ["METHODS", "SUPPORTED_BITS", "QuantizeOptions"]
