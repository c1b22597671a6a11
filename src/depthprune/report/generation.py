"""The report's "Generation examples" section (the paper's Tables 4, 10, 11), from stored continuations only."""

from __future__ import annotations

import unicodedata

from depthprune.core.format import fmt_params
from depthprune.report.collect import ExperimentData, ModelResult

MARKDOWN_SPECIAL = set("\\`*_[]<>~")


def plain(text: str) -> str:
    """``text`` as literal Markdown on one line: line breaks as ⏎, control characters as \\xNN, markup escaped."""
    out = []
    for ch in text.replace("\r\n", "\n"):
        if ch == "\n":
            out.append(" ⏎ ")
        elif ch == "\t":
            out.append(" ")
        elif unicodedata.category(ch) in ("Cc", "Cf", "Cs"):
            out.append(f"\\x{ord(ch):02x}")  # a backslash before a letter stays literal in Markdown
        elif ch in MARKDOWN_SPECIAL:
            out.append("\\" + ch)
        else:
            out.append(ch)
    return "".join(out)


def _settings(r: ModelResult, item: dict) -> str:
    """How one continuation was made: the record's own settings, else those stored beside it."""
    s = r.samples or {}
    return (f"{item.get('decoding', s.get('decoding', 'greedy'))}, "
            f"{item.get('max_new_tokens', s.get('max_new_tokens', '?'))} new tokens")


def generation_section(models: list[ModelResult], lab, table) -> str:
    """One subsection per prompt, one row per model that has a continuation of it."""
    models = [r for r in models if r.samples and r.samples.get("samples")]
    if not models:
        return ""
    prompts = list(dict.fromkeys(s["prompt"] for r in models for s in r.samples["samples"]))
    settings = list(dict.fromkeys(_settings(r, s) for r in models for s in r.samples["samples"]))
    how = settings[0] if len(settings) == 1 else "settings in each table"
    out = ["## Generation examples", "",
           f"Greedy continuations of fixed prompts ({how}; no sampling, exactly that many tokens, EOS does not "
           "stop them), read from the stored evaluation JSON. ⏎ marks a line break, \\xNN a control character."]
    for i, prompt in enumerate(prompts, 1):
        rows = [(r, s) for r in models for s in r.samples["samples"] if s["prompt"] == prompt]
        used = list(dict.fromkeys(_settings(r, s) for r, s in rows))
        head = ["model", "#params"] + (["decoding"] if len(used) > 1 else []) + ["continuation"]
        body = [[lab.model(r), fmt_params(r.params)] + ([_settings(r, s)] if len(used) > 1 else [])
                + [plain(s["continuation"])] for r, s in rows]
        title = f"### Prompt {i}: {plain(prompt)}" + (f" ({used[0]})" if len(settings) > 1 and len(used) == 1 else "")
        out += ["", title, "", table(head, body, {1})]
    return "\n".join(out)


def sample_models(experiments: list[ExperimentData], baselines: list[ModelResult]) -> list[ModelResult]:
    """Baselines first, then every other model in report order."""
    return baselines + [r for e in experiments for r in e.results if not r.is_base]
