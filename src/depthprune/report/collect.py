"""Read finished experiments back from their JSON files (no model is loaded): models, scores, evaluations, speed."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from depthprune.errors import DepthpruneError
from depthprune.pruning.options import target_label

CONFIG_FILE = "config.yaml"
STAGES_FILE = "stages.json"


@dataclass
class ModelResult:
    """One model of an experiment: the baseline, a pruned model, or a retraining step's output."""

    experiment: str
    variant: str | None
    target: str | None
    stage: str  # base | pruned | retrained/<i>-<kind> | quantized
    chain: str = ""  # retraining (and quantization) up to this stage, e.g. "cpt→lora", "cpt→w4"
    source: str = ""
    method: str | None = None
    criterion: str | None = None
    unit: str | None = None
    schedule: str | None = None
    calib_samples: int | None = None
    params: int | None = None
    params_before: int | None = None
    num_blocks: int | None = None
    removed: list = field(default_factory=list)
    shape: dict | None = None  # width pruning: heads / channels kept
    ppl: dict[str, float] = field(default_factory=dict)
    zeroshot: dict[str, float] = field(default_factory=dict)  # task -> accuracy in %
    zeroshot_avg: float | None = None
    zeroshot_complete: bool = False
    tokens_seen: int | None = None
    samples: dict | None = None  # generation examples: {"decoding", "max_new_tokens", "samples": [...]}
    path: str = ""  # where the model is (a checkpoint directory, or the hub id / source of a baseline)
    name: str = ""  # a standalone model's display name (experiments' models are named by variant / target)

    @property
    def is_base(self) -> bool:
        return self.stage == "base"

    @property
    def ratio(self) -> float | None:
        if self.params is None or not self.params_before:
            return None
        return 1 - self.params / self.params_before


@dataclass
class ScoreSet:
    """Per-candidate scores of one recipe and what each of its targets removed."""

    experiment: str
    variant: str | None
    scores: dict  # BlockScores JSON
    protected: list[int] = field(default_factory=list)
    removed: dict[str, list] = field(default_factory=dict)  # target label -> removed candidates
    note: str = ""


@dataclass
class ExperimentData:
    name: str
    root: Path
    config: dict
    results: list[ModelResult] = field(default_factory=list)
    score_sets: list[ScoreSet] = field(default_factory=list)
    bench: dict | None = None
    pending: list[str] = field(default_factory=list)  # stages not (or no longer) done
    standalone: bool = False  # outputs of the single commands (prune, eval, bench, ...), not a 'depthprune run'
    inputs: list[tuple[str, str]] = field(default_factory=list)  # standalone: (path, what it was read as)
    benches: list[tuple[str, dict]] = field(default_factory=list)  # standalone: (title, bench JSON)


def is_experiment(path: Path) -> bool:
    return (path / CONFIG_FILE).is_file() and (path / STAGES_FILE).is_file()


def find_experiments(path: str | Path) -> list[Path]:
    """``path`` itself when it is an experiment directory, else its experiment subdirectories."""
    path = Path(path)
    if is_experiment(path):
        return [path]
    if path.is_dir():
        found = sorted(p for p in path.iterdir() if is_experiment(p))
        if found:
            return found
    raise DepthpruneError(f"{path}: not an experiment directory (config.yaml + stages.json written by "
                          "'depthprune run') nor a directory of them")


def _json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None


def _done_stages(root: Path) -> tuple[set[str], list[str]]:
    """Stage ids done with the settings of the last run's plan (the same check as a rerun), and the others.

    ``stages.json`` holds the plan (each stage's settings hash and dependencies) and one record per stage run;
    a stage is current when its record is done with the planned hash, on the current runs of its dependencies,
    and its marker file exists. Directories from before the plan was recorded: the records are trusted.
    """
    data = _json(root / STAGES_FILE) or {}
    records, plan = data.get("stages", {}), data.get("plan")
    if not plan:
        return {sid for sid, rec in records.items() if rec.get("status") == "done"}, []

    def run_id(sid: str):
        return (records.get(sid) or {}).get("run_id")

    done = set()
    for sid, p in plan.items():
        rec = records.get(sid) or {}
        if (rec.get("status") == "done" and rec.get("hash") == p["hash"] and (root / p["marker"]).exists()
                and rec.get("upstream") == {d: run_id(d) for d in p["deps"]}):
            done.add(sid)
    return done, [sid for sid in plan if sid not in done]


def _recipes(config: dict) -> list[tuple[str | None, dict]]:
    if config.get("variants"):
        return [(name, v) for name, v in config["variants"].items()]
    return [(None, config)]


def _join(*parts) -> str:
    return "/".join(p for p in parts if p)


def _from_eval(r: ModelResult, entry: dict | None) -> None:
    if not entry:
        return
    r.params = entry.get("params", r.params)
    r.num_blocks = entry.get("num_blocks", r.num_blocks)
    r.ppl = {ds: v["ppl"] for ds, v in (entry.get("ppl") or {}).items()}
    zs = entry.get("zeroshot")
    if zs:
        r.zeroshot = {t: v["score"] * 100 for t, v in zs["tasks"].items()}
        r.zeroshot_avg = zs["average"] * 100
        r.zeroshot_complete = bool(zs.get("average_complete"))
    if entry.get("samples"):
        r.samples = entry["samples"]


def collect_experiment(root: str | Path) -> ExperimentData:
    """Everything the report shows about one experiment directory."""
    root = Path(root)
    config = yaml.safe_load((root / CONFIG_FILE).read_text())
    name = config.get("name", root.name)
    done, pending = _done_stages(root)
    exp = ExperimentData(name, root, config, pending=pending)
    source = (config.get("model") or {}).get("source", "")
    base = _json(root / "base" / "eval.json") if "base/eval" in done else None
    if base:
        r = ModelResult(name, None, None, "base", source=source, path=source)
        _from_eval(r, base["results"][0])
        r.params_before = r.params
        exp.results.append(r)
    for variant, recipe in _recipes(config):
        prune = recipe.get("prune") or {}
        ldir = root / variant if variant else root
        targets = [target_label(t) for t in prune.get("targets", [])]
        scores = _json(ldir / "scores.json") if _join(variant, "score") in done else None
        sset = ScoreSet(name, variant, scores) if scores else None
        for t in targets:
            multi = len(targets) > 1
            key = _join(variant, t if multi else "")
            tdir = ldir / t if multi else ldir
            pruning = _json(tdir / "pruned" / "pruning.json") if _join(key, "prune") in done else None
            if pruning is None:
                continue
            if sset is None and pruning.get("scores") and pruning.get("unit") in ("block", "module"):
                sset = ScoreSet(name, variant, pruning["scores"], note="first-round scores (iterative)")
            if sset is not None:
                sset.removed[t] = pruning.get("removed_candidates", pruning.get("removed_blocks", []))
                sset.protected = pruning.get("protected_blocks", [])
            evals = _json(tdir / "eval.json") if _join(key, "eval") in done else None
            by_label = {e["label"]: e for e in (evals or {}).get("results", [])}
            common = dict(
                experiment=name, variant=variant, target=t,
                source=source, method=pruning.get("method"), criterion=pruning.get("criterion"),
                unit=pruning.get("unit"), schedule=pruning.get("schedule", "one-shot"),
                calib_samples=(recipe.get("calibration") or {}).get("samples"),
                params=pruning.get("params_after"), params_before=pruning.get("params_before"),
                num_blocks=pruning.get("num_blocks_after"),
                removed=pruning.get("removed_candidates", pruning.get("removed_blocks", [])),
                shape=pruning.get("shape_after"),
            )
            r = ModelResult(stage="pruned", path=str(tdir / "pruned"), **common)
            _from_eval(r, by_label.get("pruned"))
            exp.results.append(r)
            kinds: list[str] = []
            for i, step in enumerate(recipe.get("retrain") or [], 1):
                label = f"retrained/{i}-{step['kind']}"
                kinds.append(step["kind"])
                if _join(key, "retrain", f"{i}-{step['kind']}") not in done:
                    break
                info = _json(tdir / label / "retrain.json") or {}
                r = ModelResult(stage=label, chain="→".join(kinds), path=str(tdir / label), **common)
                r.tokens_seen = (info.get("result") or {}).get("tokens_seen")
                _from_eval(r, by_label.get(label))
                exp.results.append(r)
            else:  # every step done: the final model's quantized copy, when the experiment made one
                quant = _json(tdir / "quantized" / "quantization.json") if _join(key, "quantize") in done else None
                if quant:
                    r = ModelResult(stage="quantized", chain="→".join(kinds + [f"w{quant.get('bits')}"]),
                                    path=str(tdir / "quantized"), **common)
                    _from_eval(r, by_label.get("quantized"))
                    exp.results.append(r)
        if sset is not None:
            exp.score_sets.append(sset)
    if "bench" in done:
        exp.bench = _json(root / "bench.json")
    return exp



