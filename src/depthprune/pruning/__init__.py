"""Selection, surgery, compensation and saving of pruned models; ``prune`` does it all in one call."""

from depthprune.pruning.iterative import iterative_prune
from depthprune.pruning.options import PruneOptions, TargetOptions
from depthprune.pruning.prune import PruneResult, prune_blocks, resolve_protection
from depthprune.pruning.run import prune
from depthprune.pruning.save import PRUNING_FILE, save_checkpoint
from depthprune.pruning.selection import Selection, Target, select_blocks
from depthprune.pruning.surgery import blocks_removed, remove_blocks

__all__ = [
    "PRUNING_FILE", "PruneOptions", "PruneResult", "Selection", "Target", "TargetOptions", "blocks_removed",
    "iterative_prune", "prune", "prune_blocks", "remove_blocks", "resolve_protection", "save_checkpoint",
    "select_blocks",
]
