"""Training settings, their validation, the run directory check, the Accelerator, optimizer and schedule."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from depthprune.errors import DepthpruneError
from depthprune.retrain.checkpoint import latest_checkpoint, list_checkpoints

SCHEDULES = ("cosine", "linear", "constant")
MIXED_PRECISION = ("auto", "no", "bf16", "fp16")


@dataclass
class TrainConfig:
    """Optimisation, schedule, checkpointing and hardware settings shared by LoRA and CPT."""

    output: str
    lr: float = 1e-4
    batch_size: int = 64
    """Global (effective) batch in examples: micro_batch_size x processes x accumulation steps."""
    micro_batch_size: int = 4
    epochs: int | None = None
    max_steps: int | None = None
    max_tokens: int | None = None
    schedule: str = "cosine"
    warmup_ratio: float = 0.03
    warmup_steps: int | None = None
    min_lr_ratio: float = 0.0
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    max_grad_norm: float = 1.0
    seed: int = 0
    save_every: int = 200
    keep_checkpoints: int = 2
    log_every: int = 10
    resume: bool = False
    overwrite: bool = False
    mixed_precision: str = "auto"
    gradient_checkpointing: bool = False
    cpu: bool = False
    progress: bool = True

    def validate(self) -> None:
        def positive(name: str, value, optional: bool = True) -> None:
            if (value is None and not optional) or (value is not None and (value != value or value <= 0)):
                raise DepthpruneError(f"{name} must be > 0, got {value}")

        positive("--lr", self.lr, optional=False)
        if not math.isfinite(self.lr):
            raise DepthpruneError(f"--lr must be a finite number, got {self.lr}")
        for name, value in (("--batch-size", self.batch_size), ("--micro-batch-size", self.micro_batch_size),
                            ("--log-every", self.log_every), ("--keep-checkpoints", self.keep_checkpoints)):
            positive(name, value, optional=False)
        for name, value in (("--epochs", self.epochs), ("--max-steps", self.max_steps),
                            ("--max-tokens", self.max_tokens)):
            positive(name, value)
        if self.schedule not in SCHEDULES:
            raise DepthpruneError(f"--schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if self.mixed_precision not in MIXED_PRECISION:
            raise DepthpruneError(f"--mixed-precision must be one of {', '.join(MIXED_PRECISION)}")
        if not 0 <= self.warmup_ratio < 1:
            raise DepthpruneError(f"--warmup-ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.warmup_steps is not None and self.warmup_steps < 0:
            raise DepthpruneError(f"--warmup-steps must be >= 0, got {self.warmup_steps}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise DepthpruneError(f"--min-lr-ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.weight_decay < 0 or self.max_grad_norm < 0 or self.save_every < 0:
            raise DepthpruneError("--weight-decay, --max-grad-norm and --save-every must be >= 0")
        if not all(0 <= b < 1 for b in self.betas):
            raise DepthpruneError(f"--betas must be two numbers in [0, 1), got {self.betas}")
        if self.resume and self.overwrite:
            raise DepthpruneError("--resume continues the run in --output; --overwrite would delete it: pick one")


def check_output(cfg: TrainConfig, model_src: str | None = None) -> Path | None:
    """Validate ``--output`` for a fresh run or ``--resume`` without writing anything; the checkpoint to resume."""
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


def use_cpu(cfg: TrainConfig) -> bool:
    """``--cpu``, or several launched processes (torchrun / accelerate launch) on a machine without GPUs."""
    if cfg.cpu:
        return True
    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1 or int(os.environ.get("LOCAL_RANK", "-1")) >= 0
    return launched and not torch.cuda.is_available() and not (hasattr(torch, "xpu") and torch.xpu.is_available())


def make_accelerator(cfg: TrainConfig):
    """The Accelerator for this process: device, process group (gloo on CPUs) and mixed precision."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    cpu = use_cpu(cfg)
    acc = Accelerator(cpu=cpu, mixed_precision=resolve_mixed_precision(cfg.mixed_precision, cpu),
                      step_scheduler_with_optimizer=False)
    set_seed(cfg.seed)
    return acc


def build_optimizer(module: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
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


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, total: int):
    from transformers.optimization import (
        get_constant_schedule_with_warmup,
        get_cosine_with_min_lr_schedule_with_warmup,
        get_linear_schedule_with_warmup,
    )

    warm = cfg.warmup_steps if cfg.warmup_steps is not None else int(round(cfg.warmup_ratio * total))
    warm = min(warm, max(total - 1, 0))
    if cfg.schedule == "cosine":
        return get_cosine_with_min_lr_schedule_with_warmup(optimizer, warm, total, min_lr_rate=cfg.min_lr_ratio)
    if cfg.schedule == "linear":
        return get_linear_schedule_with_warmup(optimizer, warm, total)
    return get_constant_schedule_with_warmup(optimizer, warm)
