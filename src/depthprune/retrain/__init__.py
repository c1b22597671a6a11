"""Retraining pruned models: LoRA, continued pretraining (CPT), and CPT then LoRA.

One Accelerate-driven loop serves a CPU, one GPU, and many GPUs under ``accelerate launch`` (DDP or FSDP),
with atomic checkpoints, exact resume and Ctrl-C checkpointing.
"""

from depthprune.retrain.config import TrainConfig
from depthprune.retrain.cpt import CPT_TRAIN_DEFAULTS, CptOptions, run_cpt
from depthprune.retrain.data import instruction_dataset, load_instructions, packed_text_dataset
from depthprune.retrain.engine import LOG_FILE, CausalLMLoss, Trainer
from depthprune.retrain.lora import LORA_TRAIN_DEFAULTS, LoraOptions, default_targets, run_lora

__all__ = [
    "CPT_TRAIN_DEFAULTS", "LOG_FILE", "LORA_TRAIN_DEFAULTS", "CausalLMLoss", "CptOptions", "LoraOptions",
    "TrainConfig", "Trainer", "default_targets", "instruction_dataset", "load_instructions",
    "packed_text_dataset", "run_cpt", "run_lora",
]
