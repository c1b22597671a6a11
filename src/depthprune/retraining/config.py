"""The run directory check, the Accelerator, the optimizer and the schedule of a retraining run."""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn as nn
from accelerate import Accelerator
from accelerate.utils import set_seed
from transformers.optimization import (
    get_constant_schedule_with_warmup,
    get_cosine_with_min_lr_schedule_with_warmup,
    get_linear_schedule_with_warmup,
)

from depthprune.errors import DepthpruneError
from depthprune.retraining.checkpoint import latest_checkpoint, list_checkpoints
from depthprune.retraining.options import TrainOptions


def check_output(cfg: TrainOptions, model_src: str | None = None) -> Path | None:
    """Validate ``--output`` for a fresh run or ``--resume`` without writing anything; the checkpoint to resume."""
    if not cfg.output:
        raise DepthpruneError("--output is required: the run directory for the model, its log and checkpoints")
    out = Path(cfg.output)
    if model_src and out.exists() and Path(model_src).expanduser().resolve() == out.resolve():
        raise DepthpruneError(f"--output {out} is the input --model directory; choose another --output")
    if cfg.resume:
        return latest_checkpoint(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not cfg.overwrite:
        hint = " or --resume to continue its checkpoint" if list_checkpoints(out) else ""
        raise DepthpruneError(f"--output {out} exists and is not empty; pass --overwrite{hint}, or choose another path")
    return None


def resolve_mixed_precision(choice: str, cpu: bool = False) -> str | None:
    """``auto``: the ``accelerate launch`` setting when there is one, else bf16 on GPUs that support it."""
    if choice == "auto":
        if os.environ.get("ACCELERATE_MIXED_PRECISION"):
            return None
        cuda = torch.cuda.is_available() and not cpu
        return "bf16" if cuda and torch.cuda.is_bf16_supported() else "no"
    if choice == "fp16" and (cpu or not torch.cuda.is_available()):
        raise DepthpruneError("--mixed-precision fp16 needs a CUDA GPU; use bf16 or no")
    return choice


def use_cpu(cfg: TrainOptions) -> bool:
    """``--device cpu``, or several launched processes (torchrun / accelerate launch) on a machine without GPUs."""
    if cfg.cpu:
        return True
    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1 or int(os.environ.get("LOCAL_RANK", "-1")) >= 0
    return launched and not torch.cuda.is_available() and not (hasattr(torch, "xpu") and torch.xpu.is_available())


def make_accelerator(cfg: TrainOptions):
    """The Accelerator for this process: device, process group (gloo on CPUs) and mixed precision."""
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise DepthpruneError("--device cuda was asked for but no CUDA device is available; use --device cpu")
    cpu = use_cpu(cfg)
    acc = Accelerator(cpu=cpu, mixed_precision=resolve_mixed_precision(cfg.mixed_precision, cpu),
                      step_scheduler_with_optimizer=False)
    set_seed(cfg.seed)
    return acc


def build_optimizer(module: nn.Module, cfg: TrainOptions) -> torch.optim.Optimizer:
    """AdamW over trainable parameters; no weight decay on biases and norm weights (1-d tensors)."""
    decay, no_decay = [], []
    for p in module.parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    if not decay and not no_decay:
        raise DepthpruneError("the model has no trainable parameters")
    groups = [g for g in ({"params": decay, "weight_decay": cfg.weight_decay},
                          {"params": no_decay, "weight_decay": 0.0}) if g["params"]]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainOptions, total: int):
    warm = cfg.warmup_steps if cfg.warmup_steps is not None else int(round(cfg.warmup_ratio * total))
    warm = min(warm, max(total - 1, 0))
    if cfg.schedule == "cosine":
        return get_cosine_with_min_lr_schedule_with_warmup(optimizer, warm, total, min_lr_rate=cfg.min_lr_ratio)
    if cfg.schedule == "linear":
        return get_linear_schedule_with_warmup(optimizer, warm, total)
    return get_constant_schedule_with_warmup(optimizer, warm)
