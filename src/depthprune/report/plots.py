"""Plots (PNG, no display needed)."""

from __future__ import annotations

from pathlib import Path

from matplotlib.ticker import FuncFormatter, NullFormatter

from depthprune.core.figures import plt, save_figure


def plot_metric_vs_params(panels: dict[str, dict[str, list[tuple[float, float]]]], path: str | Path,
                          ylabel: str, baselines: dict[str, list[tuple[str, float, float]]] | None = None,
                          log_y: bool = False, title: str = "") -> Path:
    """One panel per key of ``panels`` (e.g. per dataset): a line per series of (parameters, value) points,
    baselines as stars (the paper's Figure 1, right: quality vs model size for every method)."""
    path = Path(path)
    names = list(panels)
    fig, axes = plt.subplots(1, max(1, len(names)), figsize=(5.8 * max(1, len(names)), 4.4), squeeze=False)
    for ax, name in zip(axes[0], names):
        for label, pts in panels[name].items():
            pts = sorted(pts)
            ax.plot([x / 1e6 for x, _ in pts], [y for _, y in pts], marker="o", label=label)
        for label, x, y in (baselines or {}).get(name, []):
            ax.plot([x / 1e6], [y], marker="*", markersize=14, linestyle="none", color="black", label=label)
        ax.set_xlabel("parameters (M)")
        ax.set_ylabel(ylabel)
        ax.set_title(name)
        ys = [y for pts in panels[name].values() for _, y in pts] + [y for _, _, y in (baselines or {}).get(name, [])]
        if log_y and ys and min(ys) > 0 and max(ys) > 3 * min(ys):

            ax.set_yscale("log")
            fmt = FuncFormatter(lambda y, _: f"{y:g}")
            ax.yaxis.set_major_formatter(fmt)
            # minor ticks labelled only within about a decade, where there are few major ticks to read
            ax.yaxis.set_minor_formatter(fmt if max(ys) < 30 * min(ys) else NullFormatter())
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)
