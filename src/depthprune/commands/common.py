"""Arguments and helpers shared by CLI commands."""

from __future__ import annotations

import argparse

from depthprune.errors import DepthpruneError
from depthprune.models.loading import DEVICE_HELP, DEVICES


def add_model_args(p: argparse.ArgumentParser, required: bool = False) -> None:
    p.add_argument("--model", default=None if not required else argparse.SUPPRESS, required=required,
                   help="local HF directory, .gguf file, hub id, or 'gemma-3-270m' (the embedded default)")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                   help="weights dtype (auto: float32 on CPU, the checkpoint's dtype on GPU)")
    p.add_argument("--device", default="auto", choices=list(DEVICES), help=DEVICE_HELP)
    p.add_argument("--cache-dir", default=None, help="where the embedded model's HF checkpoint is cached")


def load_from_args(args):
    from depthprune.models import load_model

    return load_model(args.model, dtype=args.dtype, device=args.device, cache_dir=args.cache_dir)


def positive_int(name: str, value: int | None, allow_none: bool = True) -> None:
    if value is None and allow_none:
        return
    if value is None or value < 1:
        raise DepthpruneError(f"{name} must be a positive integer, got {value}")
