"""Outputs of the single commands grouped into one set of models (the report's standalone group).

A model is identified by its path (resolved; a hub id stays as written): a PPL JSON and a zero-shot JSON of one
model fill one row, a result for a model of an experiment fills that experiment's row. A path stored in a JSON
is relative to where the command ran, so it is looked up from the working directory, then from the JSON's
directory and each directory above it, then matched by its trailing path parts against the models found.
A model without pruning.json / retrain.json counts as a baseline when it is a local checkpoint, the source of
a pruned model, or a benchmark's first model. Nothing here loads a model.
"""

from __future__ import annotations

import json
from pathlib import Path

from depthprune.report.collect import ExperimentData, ModelResult, ScoreSet
from depthprune.report.inputs import KIND_TEXT, RETRAIN, Found, read_checkpoint

EVAL_KINDS = ("eval", "ppl", "zeroshot", "samples")


def resolve_ref(ref: str, near: Path | None = None, known=()) -> str:
    """The resolved local path ``ref`` names (see the module docs), else ``ref`` itself."""
    p = Path(ref).expanduser()
    if p.is_absolute():
        cands = [p]
    else:
        ups = [near.resolve(), *near.resolve().parents] if near is not None else []
        cands = [Path.cwd() / p] + [a / p for a in ups]
    for c in cands:
        if c.exists():
            return str(c.resolve())
    parts = tuple(x for x in p.parts if x not in (".", ""))
    hits = [k for k in known if parts and Path(k).is_absolute() and Path(k).parts[-len(parts):] == parts]
    return hits[0] if len(hits) == 1 else ref


def _entries(f: Found) -> list[tuple[str | None, dict]]:
    """(model reference, eval.json-style entry) pairs of one evaluation JSON."""
    d = f.data
    if f.kind == "eval":
        return [(e.get("path"), e) for e in d["results"]]
    if f.kind == "ppl":
        return [(d.get("model"), {"ppl": {d["dataset"]: d}})]
    if f.kind == "zeroshot":
        return [(d.get("model"), {"zeroshot": d})]
    return [(d.get("model"), {"samples": {k: d[k] for k in ("decoding", "max_new_tokens", "samples") if k in d}})]


class Group:
    def __init__(self, root: Path, experiments: list[ExperimentData], notes: list[str]):
        self.root, self.notes = root, notes
        self.exp = ExperimentData(root.name or str(root), root, {}, standalone=True)
        self.rows: dict[str, ModelResult] = {}
        for e in experiments:
            for r in e.results:
                if r.path:
                    self.rows.setdefault(resolve_ref(r.path), r)
        self.sources: dict[str, tuple] = {}  # model pruned from -> (params, blocks) before pruning
        self.bench_bases: set[str] = set()
        self.records: dict[str, Found] = {}

    def display(self, key: str) -> str:
        p = Path(key)
        if not p.is_absolute():
            if not p.exists():
                return key  # a hub id, or a path that is not here
            p = p.resolve()
        try:
            rel = p.relative_to(self.root)
        except ValueError:
            return p.name
        return str(rel) if str(rel) != "." else p.name

    def key(self, ref: str | None, near: Path) -> str:
        return resolve_ref(ref, near, list(self.rows)) if ref else f"(no model recorded in {self.display(str(near))})"

    def add_checkpoint(self, f: Found, key: str, why: str = "") -> ModelResult | None:
        if key in self.rows:
            return None
        p = f.data
        stage = "pruned" if f.kind == "pruned" else "retrained"
        r = ModelResult(self.exp.name, None, None, stage, path=key, name=self.display(key))
        if p:
            r.method, r.criterion, r.unit = p.get("method"), p.get("criterion"), p.get("unit")
            r.schedule = p.get("schedule") or ("one-shot" if r.method == "depth" else None)
            r.params, r.params_before, r.num_blocks = p.get("params_after"), p.get("params_before"), \
                p.get("num_blocks_after")
            r.removed = p.get("removed_candidates", p.get("removed_blocks", []))
            r.shape = p.get("shape_after")
            r.calib_samples = (((p.get("scores") or {}) if isinstance(p.get("scores"), dict) else {})
                               .get("calibration") or {}).get("samples")
            r.source = self.key(p.get("source_model"), f.path) if p.get("source_model") else ""
        if f.retrain:
            res = f.retrain.get("result") or {}
            r.chain, r.tokens_seen = self.chain(f.path, f.retrain), res.get("tokens_seen")
            if r.params is None and res.get("total_params"):
                r.params = res["total_params"] - (res.get("trainable_params", 0) if res.get("method") == "lora" else 0)
            if not p and res.get("source_model"):
                r.source = self.key(res["source_model"], f.path)
        if r.source:
            self.sources.setdefault(r.source, (r.params_before, p.get("num_blocks_before")))
        self.rows[key] = r
        self.records[key] = f
        self.exp.results.append(r)
        self.exp.inputs.append((self.display(str(f.path)), KIND_TEXT[f.kind] + why))
        return r

    def chain(self, path: Path, retrain: dict) -> str:
        """Retraining kinds up to this checkpoint, e.g. "cpt→lora" (inputs that are retrained outputs too)."""
        kinds, info, here = [], retrain, path
        for _ in range(10):
            kinds.insert(0, info.get("method") or "?")
            src = (info.get("result") or {}).get("source_model")
            nxt = Path(resolve_ref(src, here)) if src else None
            if nxt is None or not nxt.is_absolute() or not (nxt / RETRAIN).is_file():
                break
            try:
                info, here = json.loads((nxt / RETRAIN).read_text()), nxt
            except (OSError, json.JSONDecodeError):
                break
        return "→".join(kinds)

    def row_for(self, key: str, origin: Path) -> ModelResult:
        if key in self.rows:
            return self.rows[key]
        path = Path(key)
        if path.is_absolute() and path.is_dir():
            f = read_checkpoint(path, self.notes)
            if f is not None:  # the model's own record, read to know what it is
                return self.add_checkpoint(f, key, f", the model of {self.display(str(origin))}")
        dense = (path.is_absolute() and (path / "config.json").is_file()) or key in self.sources \
            or key in self.bench_bases
        r = ModelResult(self.exp.name, None, None, "base" if dense else "model", source=key, path=key,
                        name=self.display(key))
        self.rows[key] = r
        self.exp.results.append(r)
        return r

    def merge(self, r: ModelResult, entry: dict, origin: Path) -> None:
        """Add one eval entry's results to ``r``; what ``r`` has already is kept (a note when they differ)."""
        where, name = self.display(str(origin)), r.name or self.display(r.path)

        def differs(what: str, old, new) -> None:
            if old != new:
                self.notes.append(f"{where}: {what} of {name} differs from another input's ({new} vs {old}); "
                                  "kept the first")

        for ds, v in (entry.get("ppl") or {}).items():
            ds = resolve_ref(ds, origin.parent) if ds else ds
            val = v["ppl"] if isinstance(v, dict) else v
            if ds in r.ppl:
                differs(f"{Path(ds).name} perplexity", r.ppl[ds], val)
            else:
                r.ppl[ds] = val
        zs = entry.get("zeroshot")
        if zs:
            scores = {t: v["score"] * 100 for t, v in zs["tasks"].items()}
            if r.zeroshot:
                differs("zero-shot accuracy", r.zeroshot, scores)
            else:
                r.zeroshot, r.zeroshot_avg = scores, zs["average"] * 100
                r.zeroshot_complete = bool(zs.get("average_complete"))
        self.merge_samples(r, entry.get("samples"), differs)
        r.params = r.params if r.params is not None else entry.get("params")
        r.num_blocks = r.num_blocks if r.num_blocks is not None else entry.get("num_blocks")

    @staticmethod
    def merge_samples(r: ModelResult, new: dict | None, differs) -> None:
        """Generation examples of one model from several inputs: one per prompt, each with its own settings."""
        if not new or not new.get("samples"):
            return
        settings = {k: new[k] for k in ("decoding", "max_new_tokens") if k in new}
        items = [settings | s for s in new["samples"]]
        if r.samples is None:
            r.samples = {"samples": []}
        have = {s["prompt"]: s for s in r.samples["samples"]}
        for s in items:
            if s["prompt"] in have:
                old = have[s["prompt"]]
                differs(f"the continuation of {s['prompt']!r}", old.get("continuation"), s.get("continuation"))
            else:
                r.samples["samples"].append(s)

    def score_sets(self, files: list[Found]) -> None:
        groups: dict[str, ScoreSet] = {}
        pruned_sigs: set[str] = set()
        rows = sorted(self.records.items(), key=lambda kv: kv[1].kind != "pruned")  # pruned first
        for key, f in rows:
            p = f.data
            if not isinstance(p.get("scores"), dict) or p.get("unit") not in ("block", "module"):
                continue
            removed = p.get("removed_candidates", p.get("removed_blocks", []))
            protected = p.get("protected_blocks", [])
            sig = json.dumps([p["scores"], protected, removed], sort_keys=True, default=str)
            if f.kind == "pruned":
                pruned_sigs.add(sig)
            elif sig in pruned_sigs:  # a retrained copy of a pruned model's record shown already
                continue
            gkey = json.dumps([p["scores"], protected], sort_keys=True, default=str)
            s = groups.setdefault(gkey, ScoreSet(self.exp.name, "", p["scores"], protected))
            s.removed[self.rows[key].name] = removed
        for s in groups.values():
            s.variant = ", ".join(s.removed)
        for f in files:
            name = self.display(str(f.path))
            self.exp.inputs.append((name, KIND_TEXT["scores"]))
            content = json.dumps(f.data, sort_keys=True, default=str)
            same = [s for s in groups.values() if json.dumps(s.scores, sort_keys=True, default=str) == content]
            if same:
                same[0].variant = f"{name} ({same[0].variant})"
            else:
                groups[f"file:{name}"] = ScoreSet(self.exp.name, name, f.data)
        self.exp.score_sets = list(groups.values())

    def bench(self, f: Found) -> None:
        name = self.display(str(f.path))
        self.exp.benches.append((name, f.data))
        self.exp.inputs.append((name, KIND_TEXT["bench"]))
        for m in f.data.get("models") or []:
            r = self.rows.get(self.key(m.get("source"), f.path.parent))
            if r is not None:
                r.params = r.params if r.params is not None else m.get("num_params")
                r.num_blocks = r.num_blocks if r.num_blocks is not None else m.get("num_blocks")


def build_group(found: list[Found], experiments: list[ExperimentData], root: Path, notes: list[str]) -> ExperimentData:
    """The standalone group of ``found`` (no experiments among them); see the module docs."""
    g = Group(root, experiments, notes)
    for f in found:
        if f.kind in ("pruned", "retrained"):
            g.add_checkpoint(f, str(f.path.resolve()))
    for f in found:
        if f.kind == "bench" and f.data.get("models"):
            g.bench_bases.add(g.key(f.data["models"][0].get("source"), f.path.parent))
    for f in found:
        if f.kind in EVAL_KINDS:
            names = []
            for ref, entry in _entries(f):
                r = g.row_for(g.key(ref, f.path.parent), f.path)
                g.merge(r, entry, f.path)
                names.append(r.name or g.display(r.path))
            g.exp.inputs.append((g.display(str(f.path)), f"{KIND_TEXT[f.kind]}: {', '.join(names)}"))
    g.score_sets([f for f in found if f.kind == "scores"])
    for f in found:
        if f.kind == "bench":
            g.bench(f)
    for r in g.exp.results:
        if r.is_base:
            before = g.sources.get(r.path, (None, None))
            r.params = r.params if r.params is not None else before[0]
            r.num_blocks = r.num_blocks if r.num_blocks is not None else before[1]
            r.params_before = r.params
    return g.exp
