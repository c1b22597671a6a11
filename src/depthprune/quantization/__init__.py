"""Weight quantization after pruning (GPTQ through llmcompressor; compressed-tensors checkpoints)."""

from depthprune.quantization.options import SUPPORTED_BITS, QuantizeOptions
from depthprune.quantization.run import QUANT_FILE, QuantizeResult, quantize

__all__ = ["QUANT_FILE", "SUPPORTED_BITS", "QuantizeOptions", "QuantizeResult", "quantize"]
