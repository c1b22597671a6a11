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

The names are bound here once the stage packages are imported, so ``dp.retrain`` is the function even though
``depthprune.retraining`` is also the retraining package.
"""

from depthprune.data.calibration import CalibrationSpec
from depthprune.errors import DepthpruneError
from depthprune.evaluation.run import perplexity, zeroshot
from depthprune.importance.base import BlockScores
from depthprune.importance.scoring import score
from depthprune.models.loading import load
from depthprune.pipeline.runner import run_experiment as run
from depthprune.pruning.prune import PruneResult
from depthprune.pruning.run import prune
from depthprune.quantization.run import QuantizeResult, quantize
from depthprune.retraining.run import RetrainResult, retrain
from depthprune.speed.runner import bench

__version__ = "0.1.0"
__all__ = ["BlockScores", "CalibrationSpec", "DepthpruneError", "PruneResult", "QuantizeResult", "RetrainResult",
           "__version__", "bench", "load", "perplexity", "prune", "quantize", "retrain", "run", "score", "zeroshot"]
