"""The per-block score bar chart (the paper's Figure 4), written beside every scores file and pruned checkpoint."""

from __future__ import annotations

from pathlib import Path

from depthprune.core.figures import plt, save_figure


def plot_block_scores(scores, path: str | Path, removed=(), protected=()) -> Path:
    """Bar chart of per-block scores (the paper's Figure 4): removed blocks red, protected ones hatched."""
    path = Path(path)
    fig, ax = plt.subplots(figsize=(max(6, 0.4 * len(scores.scores)), 3.5))
    if scores.unit == "block":
        xs = list(range(len(scores.scores)))
        colors = ["tab:red" if i in removed else "tab:blue" for i in xs]
        bars = ax.bar(xs, scores.scores, color=colors)
        for i in protected:
            bars[i].set_hatch("//")
            bars[i].set_alpha(0.5)
        ax.set_xticks(xs)
    else:  # module: attention and MLP side by side per block
        n = len(scores.scores) // 2
        xs = list(range(n))
        attn, mlp = scores.scores[0::2], scores.scores[1::2]
        ax.bar([x - 0.2 for x in xs], attn, width=0.4, label="attention",
               color=["tab:red" if f"{i}.attn" in removed else "tab:blue" for i in xs])
        ax.bar([x + 0.2 for x in xs], mlp, width=0.4, label="MLP",
               color=["tab:red" if f"{i}.mlp" in removed else "tab:green" for i in xs])
        ax.legend()
        ax.set_xticks(xs)
    ax.set_xlabel("block index")
    ax.set_ylabel(f"{scores.criterion} score")
    notes = (["red = removed"] if removed else []) + (["hatched = protected"] if protected else [])
    ax.set_title(f"Block importance ({scores.criterion})" + (f"; {', '.join(notes)}" if notes else ""))
    if scores.criterion.startswith("ppl"):
        ax.set_yscale("log")
    return save_figure(fig, path)
