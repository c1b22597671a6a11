"""Versions of the libraries that produced a result (written into every JSON output)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version


def library_versions(*extra: str) -> dict:
    """depthprune, torch and transformers versions, plus any ``extra`` distributions that are installed."""
    out = {}
    for name in ("depthprune", "torch", "transformers", *extra):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue
    return out
