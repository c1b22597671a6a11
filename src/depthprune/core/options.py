"""Options are pydantic models, defined once next to their stage; the CLI flags and the YAML schema come from them.

``add_options(parser, Model)`` turns each field into a flag (``--field-name``, or the field's ``cli`` name),
with its type, choices (``Literal``), help (the field's description) and the model's default shown in the help;
``parse_options(Model, args)`` builds the model from the parsed flags, so a default lives only in the model.
Validation errors become one ``DepthpruneError`` naming every bad flag (CLI) or dotted field path (YAML). Written
by hand because argparse and pydantic have no bridge in our dependency set.
"""

from __future__ import annotations

import argparse
import types
import typing
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from depthprune.errors import DepthpruneError


class Options(BaseModel):
    """Base of every options model: unknown keys refused, values validated on assignment, and a comma-separated
    string accepted wherever a list is expected (``--tasks piqa,boolq``, ``batch_sizes: "1,4"``)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @model_validator(mode="before")
    @classmethod
    def _comma_lists(cls, data):
        if not isinstance(data, dict):
            return data
        out = dict(data)
        for name, value in data.items():
            info = cls.model_fields.get(name)
            if info is not None and isinstance(value, str) and typing.get_origin(_inner(info.annotation)) is list:
                out[name] = [p.strip() for p in value.split(",")]
        return out


class FieldProblems(ValueError):
    """Problems found by a cross-field check: (path below the failing object, message) pairs."""

    def __init__(self, problems: list[tuple[tuple, str]]):
        self.problems = problems
        super().__init__("; ".join(msg for _, msg in problems))


_BOUNDS = {"greater_than_equal": (">=", "ge"), "greater_than": (">", "gt"), "less_than": ("<", "lt"),
           "less_than_equal": ("<=", "le")}


def validation_messages(exc: ValidationError) -> list[tuple[tuple, str]]:
    """(location, readable message) for every error of ``exc``, cross-field problems expanded."""
    out = []
    for err in exc.errors():
        loc = tuple(p for p in err["loc"] if p != "[key]")
        cause = (err.get("ctx") or {}).get("error")
        if isinstance(cause, FieldProblems):
            out += [(loc + sub, msg) for sub, msg in cause.problems]
            continue
        msg = err["msg"]
        for prefix in ("Value error, ", "Assertion failed, "):
            msg = msg.removeprefix(prefix)
        kind, ctx = err["type"], err.get("ctx") or {}
        if kind == "extra_forbidden":
            msg = "unknown field"
        elif kind == "missing":
            msg = "required"
        elif kind in _BOUNDS and ctx:
            op, key = _BOUNDS[kind]
            msg = f"must be {op} {ctx[key]}, got {err.get('input')!r}"
        elif kind == "literal_error" and ctx:
            msg = f"must be one of {ctx['expected']}, got {err.get('input')!r}"
        elif kind in ("model_type", "dict_type", "model_attributes_type"):
            msg = f"must be a mapping of fields, got {type(err.get('input')).__name__}"
        elif kind == "list_type":
            msg = f"must be a list, got {type(err.get('input')).__name__}"
        elif kind == "too_short":
            msg = "must not be empty"
        out.append((loc, msg))
    return out


def flag_of(model: type[BaseModel], name: str) -> str:
    extra = model.model_fields[name].json_schema_extra or {}
    return extra.get("cli") or "--" + name.replace("_", "-")


def _inner(annotation):
    """``X`` of ``X | None``; the annotation itself otherwise."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if _is_union(annotation) and args:
        return args[0] if len(args) == 1 else annotation  # several types: the caller reads it as text
    return annotation


def _is_union(annotation) -> bool:
    return typing.get_origin(annotation) in (typing.Union, types.UnionType)


def add_options(parser, model: type[BaseModel], exclude: tuple[str, ...] = (), only: tuple[str, ...] = (),
                group: str | None = None) -> None:
    """Add one flag per field of ``model`` (``exclude``/``only`` select fields) to ``parser``."""
    target = parser.add_argument_group(group) if group else parser
    for name, info in model.model_fields.items():
        if name in exclude or (only and name not in only) or (info.json_schema_extra or {}).get("cli") is False:
            continue
        kind = _inner(info.annotation)
        if _is_union(kind):
            kind = str  # e.g. int | Literal["auto"]: the model converts the text
        origin = typing.get_origin(kind)
        default = info.get_default(call_default_factory=True)
        shown = "" if default is None or isinstance(default, BaseModel) else f" (default: {_show(default)})"
        kw: dict[str, Any] = {"dest": _dest(model, name), "default": argparse.SUPPRESS,
                              "help": (info.description or "") + shown}
        if kind is bool:
            kw["action"] = argparse.BooleanOptionalAction
        elif origin is Literal:
            kw["choices"] = list(typing.get_args(kind))
            kw["type"] = type(kw["choices"][0])
        elif origin in (list, tuple) and typing.get_args(kind):
            item = typing.get_args(kind)[0]
            if origin is tuple:
                kw.update(nargs=len(typing.get_args(kind)), type=item, metavar=name.upper())
            else:
                kw["type"] = str  # split (and checked) by the model
        elif kind in (int, float, str):
            kw["type"] = kind
        if "type" in kw and "choices" not in kw:
            kw.setdefault("metavar", flag_of(model, name).lstrip("-").replace("-", "_").upper())
        target.add_argument(flag_of(model, name), **kw)


def _dest(model: type[BaseModel], name: str) -> str:
    """The argparse destination of a field: prefixed by the model, so two models' ``source`` never collide."""
    return f"{model.__name__}__{name}"


def given_options(args: argparse.Namespace, *models: type[BaseModel]) -> dict:
    """The fields of ``models`` the user gave on the command line (the others keep the models' defaults)."""
    out = {}
    for m in models:
        prefix = f"{m.__name__}__"
        out |= {k[len(prefix):]: v for k, v in vars(args).items() if k.startswith(prefix)}
    return out


def _show(value) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value)


def parse_options(model: type[BaseModel], args: argparse.Namespace, **fixed):
    """``model`` from the flags the user gave (others keep the model's defaults) plus ``fixed`` values."""
    return build(model, given_options(args, model) | fixed, flags=True)


def build(model: type[BaseModel], values: dict, flags: bool = False, where: str = ""):
    """Validate ``values`` into ``model``; every problem named (by flag, or by dotted field path)."""
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        problems = []
        for loc, msg in validation_messages(exc):
            if flags and loc and loc[0] in model.model_fields:
                problems.append(f"{flag_of(model, loc[0])} {msg}")
            else:  # a check across fields (no location) is named by where it sits, or by its message alone
                path = (where + ".".join(str(p) for p in loc)).rstrip(". :")
                problems.append(f"{path}: {msg}" if path else msg)
        raise DepthpruneError("; ".join(problems)) from None
