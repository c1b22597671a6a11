"""Selection, surgery and saving of depth-pruned models."""

from depthprune.pruning.params import block_params, count_params
from depthprune.pruning.prune import PruneResult, prune_blocks, resolve_protection
from depthprune.pruning.save import PRUNING_FILE, save_checkpoint
from depthprune.pruning.selection import Selection, Target, select_blocks
from depthprune.pruning.surgery import blocks_removed, remove_blocks

__all__ = [
    "PRUNING_FILE", "PruneResult", "Selection", "Target", "block_params", "blocks_removed", "count_params",
    "prune_blocks", "remove_blocks", "resolve_protection", "save_checkpoint", "select_blocks",
]
