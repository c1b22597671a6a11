"""Benchmark results: speedups vs the first model, the Markdown table, the latency-throughput plot."""

from __future__ import annotations

import os
from pathlib import Path

from depthprune.core.figures import plt, save_figure
from depthprune.core.format import fmt_params

PLOT_SUFFIXES = (".png", ".pdf", ".svg", ".jpg", ".jpeg")


def _ok(rec: dict | None) -> bool:
    return rec is not None and rec.get("status") == "ok"


def add_comparisons(result: dict) -> None:
    """Measured and ideal speedups of every model and setting vs the first model (in place)."""
    models = {m["label"]: m for m in result["models"]}
    base = models.get(result.get("baseline"))
    base_cost = base.get("cost") if base else None
    for m in result["models"]:
        cost = m.get("cost")
        if base_cost and cost:
            m["ideal_speedup_bytes"] = base_cost["bytes_per_token"] / cost["bytes_per_token"]
            m["ideal_speedup_flops"] = base_cost["flops_per_token"] / cost["flops_per_token"]
    base_settings = {(s["batch_size"], s["output_length"]): s for s in result["settings"]
                     if base and s["model"] == base["label"]}
    for s in result["settings"]:
        m = models[s["model"]]
        for key in ("ideal_speedup_bytes", "ideal_speedup_flops"):
            if key in m:
                s[key] = m[key]
        b = base_settings.get((s["batch_size"], s["output_length"]))
        if _ok(s) and _ok(b):
            s["speedup"] = b["latency_mean_s"] / s["latency_mean_s"]
        if b and base_cost and m.get("cost") and "attention_flops_per_token_mean_context" in s \
                and "attention_flops_per_token_mean_context" in b:
            s["ideal_speedup_flops_with_attention"] = (
                (base_cost["flops_per_token"] + b["attention_flops_per_token_mean_context"])
                / (m["cost"]["flops_per_token"] + s["attention_flops_per_token_mean_context"]))


def _fmt_bytes(n: int | None) -> str:
    if n is None:
        return "—"
    if n >= 2**30:
        return f"{n / 2**30:.2f} GiB"
    return f"{n / 2**20:.1f} MiB"


def _fmt_ratio(x: float | None) -> str:
    return "—" if x is None else f"{x:.2f}×"


def markdown_table(result: dict) -> str:
    """One row per (model, M, L): the paper's efficiency table plus measured and ideal speedups."""
    models = {m["label"]: m for m in result["models"]}
    rows = ["| model | #params | #blocks | M | L | latency (s) | throughput (tok/s) | peak memory | speedup "
            "| ideal speedup (bytes / FLOPs) |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for s in result["settings"]:
        m = models[s["model"]]
        ideal = (f"{_fmt_ratio(s.get('ideal_speedup_bytes'))} / {_fmt_ratio(s.get('ideal_speedup_flops'))}"
                 if "ideal_speedup_bytes" in s else "—")
        if _ok(s):
            lat = f"{s['latency_mean_s']:.3f} ± {s['latency_std_s']:.3f}"
            thr = f"{s['throughput_tok_s']:.1f}"
            mem = _fmt_bytes(s.get("peak_memory_bytes"))
            speed = _fmt_ratio(s.get("speedup"))
        else:
            lat = thr = mem = "OOM"
            speed = "—"
        rows.append(f"| {m['label']} | {fmt_params(m.get('num_params'))} | {m.get('num_blocks', '—')} "
                    f"| {s['batch_size']} | {s['output_length']} | {lat} | {thr} | {mem} | {speed} | {ideal} |")
    return "\n".join(rows) + "\n"


def markdown_report(result: dict) -> str:
    """The table with a header saying how it was measured."""
    p, env = result["protocol"], result["environment"]
    ok = [s for s in result["settings"] if _ok(s)]
    timer = ok[0]["timer"] if ok else "—"
    memory = ok[0].get("memory_method", "—") if ok else "—"
    dtypes = ", ".join(sorted({m["dtype"].removeprefix("torch.") for m in result["models"] if "dtype" in m})) or "—"
    used = sorted({d for m in result["models"] for d in m.get("devices", [])})
    if any(d != "cpu" for d in used):
        devices = f"{', '.join(used)} ({', '.join(env.get('cuda_devices', [])) or 'accelerator'})"
    else:
        devices = f"CPU ({env.get('cpu')}, {env.get('torch_threads')} torch threads)"
    lines = [
        "## Inference efficiency",
        "",
        f"{p['input_tokens']} input tokens repeated over the batch M, greedy decoding of exactly L new tokens; "
        f"latency = time for all M·L tokens including the prompt, mean ± std of {p['runs']} runs after "
        f"{p['warmup']} warm-ups; throughput = M·L / latency. Device: {devices}; dtype {dtypes}; "
        f"torch {env.get('torch')}, transformers {env.get('transformers')}.",
        "",
        f"Timer: {timer}. Peak memory: {memory}.",
        "",
        f"Speedup = latency of {result.get('baseline')} / latency (same M, L). Ideal speedup = ratio of weight "
        "bytes read per generated token (the bound for memory-bound batch-1 decoding) / ratio of linear-layer "
        "FLOPs per token (the bound when compute-bound; attention-score FLOPs excluded, see the JSON).",
        "",
        markdown_table(result),
    ]
    weights = [m for m in result["models"] if m.get("weights")]
    if any(m["weights"]["stored_as"] != "float" for m in weights):  # a quantized checkpoint: memory != disk
        lines += ["Weights: in memory (what the kernels read) and on disk (the checkpoint's weight files).", "",
                  "| model | in memory | dtype | on disk | stored as |", "|---|---:|---|---:|---|"]
        lines += [f"| {m['label']} | {_fmt_bytes(w['in_memory_bytes'])} | {', '.join(w['in_memory_dtypes'])} "
                  f"| {_fmt_bytes(w['on_disk_bytes'])} | {w['stored_as']} |" for m in weights for w in [m["weights"]]]
        lines.append("")
    if not result.get("complete", True):
        lines.insert(2, "**Partial results: the run did not finish.**\n")
    return "\n".join(lines)


def plot_latency_throughput(result: dict, path: str | os.PathLike) -> Path:
    """Latency (x) vs throughput (y), one curve per model, points labelled by batch size; one panel per L."""


    path = Path(path)
    lengths = sorted({s["output_length"] for s in result["settings"]})
    fig, axes = plt.subplots(1, max(1, len(lengths)), figsize=(5.5 * max(1, len(lengths)), 4.2), squeeze=False)
    for ax, length in zip(axes[0], lengths):
        xs_all, ys_all = [], []
        for m in result["models"]:
            pts = sorted((s["batch_size"], s["latency_mean_s"], s["throughput_tok_s"]) for s in result["settings"]
                         if s["model"] == m["label"] and s["output_length"] == length and _ok(s))
            if not pts:
                continue
            _, xs, ys = zip(*pts)
            ax.plot(xs, ys, marker="o", label=f"{m['label']} ({fmt_params(m.get('num_params'))})")
            for batch, x, y in pts:
                ax.annotate(f"M={batch}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
            xs_all += xs
            ys_all += ys
        if xs_all and max(xs_all) > 10 * min(xs_all):
            ax.set_xscale("log")
        if ys_all and max(ys_all) > 10 * min(ys_all):
            ax.set_yscale("log")
        ax.set_xlabel("latency (s)")
        ax.set_ylabel("throughput (tokens/s)")
        ax.set_title(f"output length L={length}")
        ax.grid(True, alpha=0.3)
        if xs_all:
            ax.legend(fontsize=8)
    return save_figure(fig, path)
