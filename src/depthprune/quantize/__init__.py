"""Weight quantization after pruning (GPTQ through llmcompressor; compressed-tensors checkpoints).

The package is callable (``depthprune.quantize(...)`` is ``depthprune.quantize.run.quantize(...)``): importing it
makes ``depthprune.quantize`` this package rather than the API function, and both must work.
"""

import sys
import types

from depthprune.quantize.options import SUPPORTED_BITS, QuantizeOptions
from depthprune.quantize.run import QUANT_FILE, QuantizeResult, quantize

__all__ = ["QUANT_FILE", "SUPPORTED_BITS", "QuantizeOptions", "QuantizeResult", "quantize"]


class _CallablePackage(types.ModuleType):
    def __call__(self, *args, **kwargs) -> QuantizeResult:
        return quantize(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
