"""Loading an experiment YAML: validation against the schema, every problem reported with its dotted path.

``variants`` are merged into the experiment (dicts merge, lists and values replace) and each merged recipe
is validated; a variant's own mistakes are reported under ``variants.<name>.``.
"""

from __future__ import annotations

import copy
import difflib
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ValidationError

from depthprune.core.options import validation_messages
from depthprune.errors import DepthpruneError
from depthprune.pipeline.config import RECIPE_KEYS, ExperimentConfig, Leaf

# --- errors ----------------------------------------------------------------------------------------------------


def _unwrap(annotation) -> tuple[type | None, bool]:
    """The pydantic model class inside ``X | None``, ``list[X]``, ``dict[str, X]``; and whether it was a container."""
    origin = typing.get_origin(annotation)
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if origin in (list, tuple):
        inner, _ = _unwrap(args[0]) if args else (None, False)
        return inner, True
    if origin is dict:
        inner, _ = _unwrap(args[1]) if len(args) == 2 else (None, False)
        return inner, True
    if args and origin is not None and origin is not Literal:
        for a in args:
            inner, container = _unwrap(a)
            if inner is not None:
                return inner, container
        return None, False
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, False
    return None, False


def _fields_at(loc: tuple) -> list[str]:
    """Field names of the schema object at ``loc`` (for 'did you mean' hints)."""
    cls: type | None = ExperimentConfig
    skip = False
    for part in loc:
        if skip:
            skip = False
            continue
        if cls is None or part not in cls.model_fields:
            return []
        cls, skip = _unwrap(cls.model_fields[part].annotation)
    return list(cls.model_fields) if cls is not None and not skip else []


def _messages(exc: ValidationError) -> list[tuple[tuple, str]]:
    """Readable messages (core.options.validation_messages), unknown fields with a 'did you mean' hint."""
    out = []
    for loc, msg in validation_messages(exc):
        if msg == "unknown field" and loc:
            names = _fields_at(loc[:-1])
            close = difflib.get_close_matches(str(loc[-1]), names, n=1)
            msg = "unknown field" + (f"; did you mean {close[0]!r}?" if close else
                                     f"; allowed: {', '.join(names)}" if names else "")
        out.append((loc, msg))
    return out


def _dotted(loc: tuple) -> str:
    return ".".join(str(p) for p in loc) or "(top level)"


def _in_override(loc: tuple, override: dict) -> bool:
    node: Any = override
    for part in loc:
        if not isinstance(node, dict):
            return True
        if part not in node:
            return False
        node = node[part]
    return True


def merge_override(base: dict, override: dict) -> dict:
    """``base`` with ``override`` merged in: dicts recursively, anything else replaced."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            sub = dict(out[key])
            if key == "prune":  # a variant's target replaces the experiment's targets and vice versa
                for a, b in (("target", "targets"), ("targets", "target")):
                    if a in value:
                        sub.pop(b, None)
            out[key] = merge_override(sub, value)
        else:
            out[key] = copy.deepcopy(value)
    return out


# --- loading ---------------------------------------------------------------------------------------------------


def parse_config(data: Any, base_dir: str | Path | None = None, origin: str = "config") -> tuple[
        ExperimentConfig, list[Leaf]]:
    """Validate a config mapping; the experiment and its leaves (one per variant, or itself)."""
    if not isinstance(data, dict):
        raise DepthpruneError(f"{origin}: expected a mapping of fields (name, model, prune, ...), "
                              f"got {type(data).__name__}")
    ctx = {"base_dir": str(base_dir) if base_dir is not None else None}
    problems: dict[str, None] = {}
    cfg = None
    variants = data.get("variants")
    top = data
    if isinstance(variants, dict) and variants:  # the recipe parts are checked merged into each variant
        top = {k: v for k, v in data.items() if k not in RECIPE_KEYS}
    try:
        cfg = ExperimentConfig.model_validate(top, context=ctx)
    except ValidationError as exc:
        problems.update({f"{_dotted(loc)}: {msg}": None for loc, msg in _messages(exc)})
    leaves: list[Leaf] = []
    if top is not data:
        base = {k: v for k, v in data.items() if k != "variants"}
        for name, over in variants.items():
            if not isinstance(over, dict):
                continue
            over = {k: v for k, v in over.items() if k in RECIPE_KEYS}
            try:
                merged = ExperimentConfig.model_validate(merge_override(base, over), context=ctx)
            except ValidationError as exc:
                for loc, msg in _messages(exc):
                    where = f"variants.{name}.{_dotted(loc)}" if _in_override(loc, over) else _dotted(loc)
                    problems[f"{where}: {msg}"] = None
                continue
            desc = variants[name].get("description", "") if isinstance(variants[name], dict) else ""
            leaves.append(Leaf(str(name), merged, desc))
    elif cfg is not None:
        leaves.append(Leaf(None, cfg, cfg.description))
    if problems:
        lines = "\n".join(f"  {p}" for p in problems)
        n = len(problems)
        raise DepthpruneError(f"{origin}: {n} invalid field{'s' if n > 1 else ''} (nothing was run or written):"
                              f"\n{lines}")
    return cfg, leaves


def load_config(path: str | Path) -> tuple[ExperimentConfig, list[Leaf]]:
    """Read and validate an experiment YAML file (paths in it may be relative to the file)."""
    path = Path(path)
    if not path.is_file():
        raise DepthpruneError(f"config {path}: no such file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or " ".join(str(exc).split())
        raise DepthpruneError(f"config {path}: not valid YAML ({where}{problem})") from None
    if data is None:
        raise DepthpruneError(f"config {path}: the file is empty; see examples/ for experiment configs")
    return parse_config(data, base_dir=path.parent, origin=f"config {path}")
