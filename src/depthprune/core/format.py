"""Number formatting shared by the Markdown tables."""

from __future__ import annotations


def fmt_params(n: int | None) -> str:
    """A parameter count as 268.10M / 6.74B ("–" when unknown)."""
    if n is None:
        return "–"
    for div, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= div:
            return f"{n / div:.2f}{unit}"
    return str(n)
