"""Arguments and helpers shared by CLI commands."""

from __future__ import annotations

import argparse
from pathlib import Path

from depthprune.core.options import add_options, parse_options
from depthprune.errors import DepthpruneError
from depthprune.models.loading import LoadedModel, load_model
from depthprune.models.options import ModelOptions


def add_model_args(p: argparse.ArgumentParser) -> None:
    add_options(p, ModelOptions)


def add_eval_parser(sub, name: str, help: str, options_cls, func, exclude: tuple[str, ...] = (),
                    description: str | None = None) -> argparse.ArgumentParser:
    """An ``eval`` subcommand: the model flags, the stage's options, ``--json``."""
    p = sub.add_parser(name, help=help, description=description)
    add_model_args(p)
    add_options(p, options_cls, exclude=exclude)
    p.add_argument("--json", default=None, help="write the result as JSON here")
    p.set_defaults(func=func)
    return p


def model_options(args) -> ModelOptions:
    return parse_options(ModelOptions, args)


def load_from_args(args) -> LoadedModel:
    m = model_options(args)
    return load_model(m.source, dtype=m.dtype, device=m.device, cache_dir=m.cache_dir)


def quantization_record(model) -> dict:
    """``{"quantization": ...}`` for a model loaded from a quantized checkpoint (dequantized at load), else {}."""
    info = getattr(model, "depthprune_quantization", None)
    return {"quantization": info} if info else {}


def positive_int(name: str, value: int | None, allow_none: bool = True) -> None:
    if value is None and allow_none:
        return
    if value is None or value < 1:
        raise DepthpruneError(f"{name} must be a positive integer, got {value}")


def check_output_file(flag: str, value: str | None) -> None:
    """Fail before any work when a file output cannot be written: a directory, or under a file."""
    if value is None:
        return
    path = Path(value)
    if path.is_dir():
        raise DepthpruneError(f"{flag} {value} is a directory; give a file path")
    blocker = next((a for a in path.parents if a.exists() and not a.is_dir()), None)
    if blocker is not None:
        raise DepthpruneError(f"{flag} {value}: {blocker} is a file, not a folder; give a path in a folder")
