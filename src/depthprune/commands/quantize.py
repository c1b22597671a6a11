"""``depthprune quantize``: 4-bit (or 8-bit) GPTQ weight quantization of a (pruned, retrained) model.

Needs the quantization extra (llmcompressor); writes a compressed-tensors checkpoint that transformers loads
with compressed-tensors installed and vLLM runs with integer kernels.
"""

from __future__ import annotations

from depthprune.core.options import add_options, build, given_options
from depthprune.models.options import ModelOptions
from depthprune.pruning.save import check_output_dir
from depthprune.quantization.gptq import require_library
from depthprune.quantization.options import QuantizeOptions
from depthprune.quantization.run import quantize


def register(sub) -> None:
    p = sub.add_parser("quantize", help="quantize a model's weights (GPTQ, 4-bit by default) after pruning",
                       description=__doc__)
    add_options(p, ModelOptions, only=("source", "cache_dir"))
    add_options(p, QuantizeOptions)
    p.add_argument("--output", required=True, help="directory for the quantized checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --output")
    p.set_defaults(func=run)


def run(args) -> int:
    options = given_options(args, QuantizeOptions)
    build(QuantizeOptions, options, flags=True)  # every bad option fails before the model loads
    check_output_dir(args.output, args.overwrite)
    require_library()
    model = build(ModelOptions, given_options(args, ModelOptions), flags=True)
    result = quantize(model.source, output=args.output, overwrite=args.overwrite, cache_dir=model.cache_dir,
                      verbose=args.verbose, **options)
    info = result.info
    print(f"Quantized {info['params']['share_quantized']:.1%} of the parameters ({info['params']['quantized_layers']} "
          f"Linear layers) to {info['bits']} bits; loads with AutoModelForCausalLM.from_pretrained (compressed-tensors "
          "installed), or depthprune eval/bench --model " + str(result.output))
    return 0
