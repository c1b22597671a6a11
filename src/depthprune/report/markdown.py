"""``report.md`` and its PNG plots, rendered from collected experiments (stored JSON only, no model)."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path

from depthprune.core.format import fmt_params
from depthprune.evaluation.zeroshot import PAPER_TASKS, SHORT_NAMES
from depthprune.importance.base import BlockScores
from depthprune.importance.plot import plot_block_scores
from depthprune.report.collect import ExperimentData, ModelResult, ScoreSet
from depthprune.report.generation import generation_section, sample_models
from depthprune.report.plots import plot_metric_vs_params
from depthprune.speed.report import markdown_report, plot_latency_throughput

REPORT_FILE = "report.md"


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{x:.1%}"


def _slug(text: str) -> str:
    """A file-name-safe form of ``text``; ``+`` becomes ``-plus`` so that "taylor" and "taylor+" differ."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text.replace("+", "-plus")).strip("_") or "run"


def plot_name(prefix: str, text: str, taken: dict[str, Path]) -> str:
    """``<prefix>_<slug>.png``, numbered when another plot of this report already has that name."""
    stem, n = f"{prefix}_{_slug(text)}", 1
    name = f"{stem}.png"
    while name in taken:
        n += 1
        name = f"{stem}-{n}.png"
    return name


def _dataset_name(ds: str) -> str:
    return Path(ds).name if ("/" in ds or os.sep in ds) else ds


def table(head: list[str], rows: list[list[str]], right: set[int] | None = None) -> str:
    """A Markdown table; columns in ``right`` are right-aligned (numbers)."""
    right = right or set()
    sep = ["---:" if i in right else "---" for i in range(len(head))]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(sep) + "|"]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


class Labeller:
    """Short names for models: the parts (experiment, variant, target) that tell them apart."""
    def __init__(self, experiments: list[ExperimentData]):
        self.multi = len(experiments) > 1
        self.many_bases = len({r.source for r in _baselines(experiments)}) > 1

    def recipe(self, r: ModelResult | ScoreSet) -> str:
        parts = [r.experiment if self.multi else "", r.variant or ""]
        return "/".join(p for p in parts if p) or (r.experiment if isinstance(r, ScoreSet) else "pruned")

    def model(self, r: ModelResult) -> str:
        if r.is_base:
            name = r.name or Path(r.source).name or r.source
            return f"baseline ({name})" if self.multi or self.many_bases else "baseline"
        if r.name:  # a standalone model: its path
            return "/".join(p for p in [r.experiment if self.multi else "", r.name] if p)
        parts = [r.experiment if self.multi else "", r.variant or "", r.target or ""]
        name = "/".join(p for p in parts if p) or "pruned"
        return name + (f" +{r.chain}" if r.chain else "")

    def series(self, r: ModelResult) -> str:
        if r.stage == "model":  # neither known to be pruned nor dense: a point of its own
            return self.model(r)
        parts = [r.experiment if self.multi else "", r.variant or ""]
        name = "/".join(p for p in parts if p) or (r.criterion or "pruned")
        return name + (f" +{r.chain}" if r.chain else "")


def _baselines(experiments: list[ExperimentData]) -> list[ModelResult]:
    """Baseline rows, one per distinct (model, results): experiments sharing a model share the row."""
    seen, out = set(), []
    for exp in experiments:
        for r in exp.results:
            if r.is_base:
                key = (r.source, tuple(sorted(r.ppl.items())), tuple(sorted(r.zeroshot.items())))
                if key not in seen:
                    seen.add(key)
                    out.append(r)
    return out


def _retrain_summary(steps: list[dict]) -> str:
    parts = []
    for s in steps or []:
        if s.get("max_tokens"):
            budget = f"{s['max_tokens']:,} tok"
        elif s.get("max_steps"):
            budget = f"{s['max_steps']} steps"
        else:
            budget = f"{s.get('epochs', 1)} ep"
        parts.append(f"{s['kind']} ({_dataset_name(str(s.get('data')))}, {budget}, lr {s.get('lr')})")
    return " → ".join(parts) or "none"


def experiments_section(experiments: list[ExperimentData]) -> str:
    experiments = [e for e in experiments if not e.standalone]
    if not experiments:
        return ""
    rows = []
    for exp in experiments:
        recipes = ([(n, v) for n, v in exp.config["variants"].items()] if exp.config.get("variants")
                   else [(None, exp.config)])
        for variant, rec in recipes:
            p, c = rec.get("prune") or {}, rec.get("calibration") or {}
            targets = ", ".join(_target_text(t) for t in p.get("targets", []))
            calib = f"{_dataset_name(c.get('source') or 'default')}, {c.get('samples')} × {c.get('seq_len')}"
            protect = f"{p.get('protect_first', 0)} / {p.get('protect_last', 0)}"
            unit = p.get("unit") if p.get("method") == "depth" else "heads + channels"
            rows.append([exp.name, variant or "–", p.get("method"), p.get("criterion"), unit,
                         p.get("schedule"), protect, calib, _retrain_summary(rec.get("retrain")), targets])
    head = ["experiment", "variant", "method", "criterion", "unit", "schedule", "protected first / last",
            "calibration", "retraining", "targets"]
    out = ["## Experiments", "", table(head, rows), ""]
    for exp in experiments:
        model = exp.config.get("model") or {}
        line = f"- **{exp.name}** (`{exp.root}`): model `{model.get('source')}`, dtype {model.get('dtype')}"
        if exp.config.get("description"):
            line += f". {' '.join(exp.config['description'].split())}"
        out.append(line)
        if exp.pending:
            out.append(f"  - not (yet) done with the current settings: {', '.join(exp.pending)}")
    return "\n".join(out)


def _target_text(t: dict) -> str:
    if t.get("num_blocks") is not None:
        text = f"{t['num_blocks']} block{'s' if t['num_blocks'] != 1 else ''}"
    elif t.get("ratio") is not None:
        text = f"{t['ratio']:.0%} params"
    else:
        text = f"≤ {fmt_params(t.get('target_params'))} params"
    return text + (f" ({t['name']})" if t.get("name") else "")


def scores_section(experiments: list[ExperimentData], lab: Labeller, plots: dict[str, Path], tmp: Path) -> str:
    sets = [s for exp in experiments for s in exp.score_sets]
    if not sets:
        return ""
    out = ["## Per-block scores", "",
           "Lower = less important. `×` marks the candidates each target removed, `P` the protected blocks."]
    groups: dict[str, list] = {}  # variants that reused one scoring and removed the same: shown once
    for s in sets:
        key = json.dumps([s.scores, s.protected, s.removed, s.note], sort_keys=True, default=str)
        groups.setdefault(key, []).append(s)
    for same in groups.values():
        s = same[0]
        sc = BlockScores.from_json(s.scores)
        name = ", ".join(lab.recipe(x) for x in same)
        out += ["", f"### {name}: {sc.criterion} ({sc.unit}s)" + (f", {s.note}" if s.note else ""), ""]
        head = [""] + list(sc.candidates)
        rows = [["score"] + [f"{v:.4g}" for v in sc.scores]]
        owner = [int(str(c).split(".")[0]) for c in sc.candidates]
        if s.protected:
            rows.append(["protected"] + ["P" if o in s.protected else "" for o in owner])
        for label, removed in s.removed.items():
            marks = {str(x) for x in removed}
            rows.append([f"removed ({label})"] + ["×" if str(c) in marks else "" for c in sc.candidates])
        out.append(table(head, rows, set(range(1, len(head)))))
        removed = list(s.removed.values())[0] if len(s.removed) == 1 else ()
        if sc.unit == "block":
            removed = [int(x) for x in removed]
        png = plot_name("scores", name, plots)
        plot_block_scores(sc, tmp / png, removed=removed, protected=s.protected)
        plots[png] = tmp / png
        out += ["", f"![{name} scores]({png})"]
    return "\n".join(out)


def pruned_section(experiments: list[ExperimentData], lab: Labeller) -> str:
    rows = []
    for r in _baselines(experiments):
        rows.append([lab.model(r), "–", "–", "–", str(r.num_blocks or "–"), fmt_params(r.params), "–"])
    for exp in experiments:
        for r in exp.results:
            if r.stage != "pruned":
                continue
            if r.shape:
                removed = (f"heads {r.shape.get('num_attention_heads')} / kv {r.shape.get('num_key_value_heads')} / "
                           f"MLP {r.shape.get('intermediate_size')} kept per block")
            else:
                removed = ", ".join(str(x) for x in r.removed) or "–"
            rows.append([lab.model(r), r.method or "–", f"{r.criterion} ({r.schedule}, {r.unit})", removed,
                         str(r.num_blocks or "–"), fmt_params(r.params), _pct(r.ratio)])
    if not rows:
        return ""
    head = ["model", "method", "criterion", "removed (original numbering)", "#blocks", "#params", "params removed"]
    return "\n".join(["## Removed blocks and parameters", "", table(head, rows, {4, 5, 6})])


def _with(results: list[ModelResult], attr: str) -> list[ModelResult]:
    return [r for r in results if getattr(r, attr)]


def ppl_section(experiments: list[ExperimentData], lab: Labeller, plots: dict[str, Path], tmp: Path) -> str:
    models = _with(_baselines(experiments), "ppl") + [r for e in experiments for r in _with(e.results, "ppl")
                                                      if not r.is_base]
    if not models:
        return ""
    datasets = list(dict.fromkeys(ds for r in models for ds in r.ppl))
    rows = [[lab.model(r), fmt_params(r.params), _pct(r.ratio) if not r.is_base else "–"]
            + [f"{r.ppl[ds]:.2f}" if ds in r.ppl else "–" for ds in datasets] for r in models]
    head = ["model", "#params", "params removed"] + [f"{_dataset_name(ds)} PPL" for ds in datasets]
    panels: dict[str, dict[str, list]] = {}
    bases: dict[str, list] = {}
    for ds in datasets:
        name = f"{_dataset_name(ds)} PPL"
        for r in models:
            if ds in r.ppl and r.params:
                if r.is_base:
                    bases.setdefault(name, []).append((lab.model(r), r.params, r.ppl[ds]))
                else:
                    panels.setdefault(name, {}).setdefault(lab.series(r), []).append((r.params, r.ppl[ds]))
        panels.setdefault(name, {})
    png = "ppl_vs_params.png"
    plot_metric_vs_params(panels, tmp / png, "perplexity (lower is better)", bases, log_y=True)
    plots[png] = tmp / png
    return "\n".join(["## Perplexity", "", table(head, rows, set(range(1, len(head)))), "",
                      f"![PPL vs parameters]({png})"])


def zeroshot_section(experiments: list[ExperimentData], lab: Labeller, plots: dict[str, Path], tmp: Path) -> str:
    models = _with(_baselines(experiments), "zeroshot") + [
        r for e in experiments for r in _with(e.results, "zeroshot") if not r.is_base]
    if not models:
        return ""
    tasks = [t for t in PAPER_TASKS if any(t in r.zeroshot for r in models)]
    rows = [[lab.model(r), fmt_params(r.params)] + [f"{r.zeroshot[t]:.2f}" if t in r.zeroshot else "–" for t in tasks]
            + [f"{r.zeroshot_avg:.2f}" + ("" if r.zeroshot_complete else "*")] for r in models]
    head = ["model", "#params"] + [SHORT_NAMES[t] for t in tasks] + ["average"]
    panel: dict[str, list] = {}
    bases = []
    for r in models:
        if r.params:
            if r.is_base:
                bases.append((lab.model(r), r.params, r.zeroshot_avg))
            else:
                panel.setdefault(lab.series(r), []).append((r.params, r.zeroshot_avg))
    png = "accuracy_vs_params.png"
    plot_metric_vs_params({"zero-shot average": panel}, tmp / png, "accuracy % (higher is better)",
                          {"zero-shot average": bases})
    plots[png] = tmp / png
    note = ("Accuracy in % (acc for BoolQ, PIQA, WinoGrande, ARC-e; acc_norm for HellaSwag, ARC-c, OBQA). "
            "`*`: average over a subset of the tasks or of their examples (limit).")
    return "\n".join(["## Zero-shot accuracy", "", note, "", table(head, rows, set(range(1, len(head)))), "",
                      f"![accuracy vs parameters]({png})"])


def speed_section(experiments: list[ExperimentData], lab: Labeller, plots: dict[str, Path], tmp: Path) -> str:
    out = []
    for exp in experiments:
        for title, bench in [(exp.name, exp.bench)] + exp.benches:
            if not bench or not bench.get("settings"):
                continue
            body = markdown_report(bench).replace("## Inference efficiency", f"### {title}", 1)
            png = plot_name("speed", title, plots)
            plot_latency_throughput(bench, tmp / png)
            plots[png] = tmp / png
            out += [body.rstrip(), "", f"![latency vs throughput, {title}]({png})", ""]
    return "\n".join(["## Inference speed", ""] + out).rstrip() if out else ""


def inputs_section(experiments: list[ExperimentData], notes: list[str]) -> str:
    """What was read besides experiment directories, and what was skipped."""
    rows = [[f"`{path}`", what] for e in experiments if e.standalone for path, what in e.inputs]
    out = []
    if rows:
        root = next(e.root for e in experiments if e.standalone)
        out += ["## Inputs", "", f"Outputs of the single commands, under `{root}`:", "",
                table(["input", "read as"], rows)]
    if notes:
        out += ["", "Notes (inputs skipped, results read twice):", ""] + [f"- {n}" for n in notes]
    return "\n".join(out).strip()


def render_report(experiments: list[ExperimentData], output: str | os.PathLike, notes: list[str] | None = None) -> Path:
    """Write ``report.md`` and its PNGs into ``output``; files appear only once all were rendered."""
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".report-", dir=out))
    try:
        lab = Labeller(experiments)
        plots: dict[str, Path] = {}
        names = ", ".join(f"`{e.name}`" for e in experiments)
        intro = ("Rendered from the stored JSON files of each run directory (config.yaml, stages.json, scores.json, "
                 "pruning.json, retrain.json, eval.json, bench.json).")
        if any(e.standalone for e in experiments):
            runs = "the run directories' files (config.yaml, stages.json, eval.json, ...) and " \
                if any(not e.standalone for e in experiments) else ""
            intro = f"Rendered from stored JSON files only (no model was loaded): {runs}the files listed under Inputs."
        sections = [
            f"# depthprune report: {names}",
            intro,
            experiments_section(experiments),
            inputs_section(experiments, notes or []),
            scores_section(experiments, lab, plots, tmp),
            pruned_section(experiments, lab),
            ppl_section(experiments, lab, plots, tmp),
            zeroshot_section(experiments, lab, plots, tmp),
            generation_section(sample_models(experiments, _baselines(experiments)), lab, table),
            speed_section(experiments, lab, plots, tmp),
        ]
        (tmp / REPORT_FILE).write_text("\n\n".join(s for s in sections if s) + "\n")
        for name in [*plots, REPORT_FILE]:  # report.md last: it is complete only when its images are there
            os.replace(tmp / name, out / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out / REPORT_FILE
