"""Retraining pruned models: LoRA, continued pretraining (CPT), and CPT then LoRA; ``retrain`` in one call.

One Accelerate-driven loop serves a CPU, one GPU, and many GPUs under ``accelerate launch`` (DDP or FSDP),
with atomic checkpoints, exact resume and Ctrl-C checkpointing.
"""

from depthprune.retraining.cpt import run_cpt
from depthprune.retraining.data import instruction_dataset, load_instructions, packed_text_dataset
from depthprune.retraining.engine import LOG_FILE, CausalLMLoss, Trainer
from depthprune.retraining.lora import default_targets, run_lora
from depthprune.retraining.options import CptOptions, LoraOptions, TrainOptions
from depthprune.retraining.run import KINDS, RetrainResult, retrain

__all__ = [
    "KINDS", "LOG_FILE", "CausalLMLoss", "CptOptions", "LoraOptions", "RetrainResult", "TrainOptions", "Trainer",
    "default_targets", "instruction_dataset", "load_instructions", "packed_text_dataset", "retrain", "run_cpt",
    "run_lora",
]
