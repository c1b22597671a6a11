"""depthprune: depth pruning for Hugging Face causal LMs (Shortened LLaMA, Kim et al. 2024).

The public API, one call per stage (each also takes a model source string where it takes a model)::

    import depthprune as dp
    model, tok = dp.load("gemma-3-270m")
    scores = dp.score(model, tok, criterion="taylor", calibration="war_and_peace", samples=10)
    result = dp.prune(model, tok, criterion="ppl", num_blocks=4)
    result.save("runs/p4")
    dp.perplexity(model, tok, dataset="wikitext2", limit=200).ppl
    dp.zeroshot(model, tok, tasks=["piqa"], limit=100)
    dp.bench([model, "runs/p4"], batch_sizes=[1], output_lengths=[128])
    dp.retrain(model, tok, kind="lora", data="alpaca_demo", max_steps=10)
    dp.quantize("runs/p4", output="runs/p4-w4", bits=4, group_size=128)   # needs the quant extra

Names are imported on first use, so ``import depthprune`` stays light.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_API = {
    "load": "depthprune.models.loading",
    "score": "depthprune.importance.scoring",
    "prune": "depthprune.pruning.run",
    "retrain": "depthprune.retrain.run",
    "quantize": "depthprune.quantize.run",
    "perplexity": "depthprune.evaluation.run",
    "zeroshot": "depthprune.evaluation.run",
    "bench": "depthprune.speed.runner",
    "run": "depthprune.pipeline.runner",
    "BlockScores": "depthprune.importance.base",
    "CalibrationSpec": "depthprune.data.calibration",
    "PruneResult": "depthprune.pruning.prune",
    "RetrainResult": "depthprune.retrain.run",
    "QuantizeResult": "depthprune.quantize.run",
    "DepthpruneError": "depthprune.errors",
}
__all__ = sorted(_API) + ["__version__"]


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module 'depthprune' has no attribute {name!r}")
    target = "run_experiment" if name == "run" else name
    value = getattr(importlib.import_module(_API[name]), target)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
