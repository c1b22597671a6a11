"""The stages of an experiment: what each one computes, from which settings, into which files.

Layout (``root`` = ``runs/<name>``; ``<leaf>`` = ``root`` or ``root/<variant>``; ``<t>`` = ``<leaf>`` for one
target, ``<leaf>/<target label>`` for several)::

    root/config.yaml, stages.json, base/eval.json, bench.json
    <leaf>/config.yaml, scores.json (+ scores.png)      one-shot depth pruning: scored once for every target
    <t>/pruned/                                         checkpoint + pruning.json (+ scores.png)
    <t>/retrained/<i>-<kind>/                           checkpoint, retrain.json, train_log.jsonl, checkpoints/
    <t>/quantized/                                      the final model quantized (quantization.json), if asked
    <t>/eval.json                                       PPL / zero-shot of the final model (or of every stage),
                                                        and of its quantized copy

Each stage writes its outputs atomically and has one file (``marker``) whose presence says it finished.
"""

from __future__ import annotations

import copy
import gc
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from depthprune.core.io import write_json_atomic
from depthprune.core.versions import library_versions
from depthprune.evaluation.ppl_cache import cached, model_identity
from depthprune.evaluation.run import perplexity, zeroshot
from depthprune.evaluation.samples import samples_json
from depthprune.evaluation.zeroshot_cache import cache_identity, cache_key
from depthprune.importance.base import BlockScores, resolve_criterion
from depthprune.importance.plot import plot_block_scores
from depthprune.importance.scoring import score
from depthprune.models.loading import load_model
from depthprune.models.params import count_params
from depthprune.models.placement import NATIVE_BF16, native_bf16_or_float32
from depthprune.models.specs import num_blocks
from depthprune.pipeline.config import ExperimentConfig, Leaf, ModelConfig, TargetSpec, step_dump
from depthprune.pipeline.stagelog import config_hash
from depthprune.pruning.options import PruneOptions
from depthprune.pruning.run import prune
from depthprune.quantization.run import QUANT_FILE, quantize
from depthprune.retraining.checkpoint import list_checkpoints
from depthprune.retraining.run import KINDS as RETRAIN_KINDS
from depthprune.speed.options import BenchOptions
from depthprune.speed.runner import run_benchmark

KINDS = ("baseline", "score", "prune", "retrain", "quantize", "eval", "bench")
SCORES_FILE = "scores.json"
EVAL_FILE = "eval.json"
BENCH_FILE = "bench.json"
BASE_DIR = "base"
PPL_CACHE_DIR = "ppl-cache"  # PPL results by model identity, shared by every stage of the run
ZEROSHOT_CACHE_DIR = "zeroshot-cache"  # zero-shot answers, a directory per model identity, shared likewise


def log(msg: str) -> None:
    print(msg, flush=True)


@dataclass
class StageContext:
    """What a stage's ``run`` gets: whether its previous attempt (same settings) may be resumed, the log."""

    resume: bool
    log: object


@dataclass
class Stage:
    id: str
    kind: str
    config: dict
    deps: list[str]
    marker: Path
    run: Callable[[StageContext], None]
    outputs: list[Path] = field(default_factory=list)


@dataclass
class FinalModel:
    """The last model of one (variant, target): benchmarked and shown in reports."""

    key: str  # "" or "k4" or "magnitude/k4"
    label: str  # "pruned" or "retrained/2-lora"
    path: Path
    stage_id: str
    quantized: tuple[Path, str] | None = None  # (directory, stage id) of its quantized copy


def join(*parts: str) -> str:
    return "/".join(p for p in parts if p)


def model_config(m: ModelConfig) -> dict:
    return m.model_dump(mode="json")


def load(m: ModelConfig, src: str | Path | None = None):
    return load_model(str(src) if src is not None else m.source, dtype=m.dtype, device=m.device,
                      cache_dir=m.cache_dir)


def _needs_calibration(c: ExperimentConfig) -> bool:
    return c.prune.needs_calibration


def _prune_fields(p) -> dict:
    return p.model_dump(include=set(PruneOptions.model_fields))


# --- stage bodies ------------------------------------------------------------------------------------------------


def run_score(c: ExperimentConfig, out: Path, ctx: StageContext, stage: Stage) -> None:
    same = ctx.log.find_done(stage.kind, stage.id, _hash_of(stage))
    if same is not None and same.is_file():  # another variant scored with identical settings: reuse
        scores = BlockScores.load(same)
        scores.save(out)
        log(f"  reused identical scores from {same}")
    else:
        lm = load(c.model)
        resume = None
        if resolve_criterion(c.prune.criterion, "depth")[0].resumable:  # hours of scoring survive a stop
            resume = out.with_name(f".scores-{_hash_of(stage)[:12]}.partial.json")
            for stale in out.parent.glob(".scores-*.partial.json"):
                if stale != resume:
                    stale.unlink()
            if resume.is_file():
                log(f"  resuming the scores from {resume}")
        scores = score(lm.model, lm.tokenizer, criterion=c.prune.criterion, unit=c.prune.unit,
                       calibration=c.calibration, resume=resume)
        scores.save(out)
        if resume is not None:
            resume.unlink(missing_ok=True)
        log(f"  scored {len(scores.scores)} {c.prune.unit}s with {c.prune.criterion} in {scores.wall_s:.1f}s")
    plot_block_scores(scores, out.with_suffix(".png"))


def run_prune(c: ExperimentConfig, t: TargetSpec, scores_path: Path | None, out: Path, extra: dict) -> None:
    p = c.prune
    lm = load(c.model)
    one_shot = p.method == "depth" and p.schedule == "one-shot"
    result = prune(lm.model, lm.tokenizer, scores=BlockScores.load(scores_path) if one_shot else None,
                   calibration=c.calibration, log=lambda msg: log(f"  {msg}"), **_prune_fields(p), **t.as_dict())
    result.info = result.info | {"source_model": c.model.source, "experiment": extra}
    result.save(out, overwrite=True)


def run_retrain(c: ExperimentConfig, step, src: Path, out: Path, ctx: StageContext) -> None:
    resume = ctx.resume and bool(list_checkpoints(out))
    if resume:
        log(f"  resuming from {list_checkpoints(out)[-1]}")
    device = "auto" if c.model.device == "multi" else c.model.device
    dtype = "float32" if c.model.dtype == "auto" else c.model.dtype
    run_fields = {"model": str(src), "output": str(out), "resume": resume, "overwrite": not resume,
                  "dtype": dtype, "cache_dir": c.model.cache_dir, "device": device}
    given = step.model_dump(exclude={"kind"}, exclude_unset=True)  # the kind's defaults stay its own
    opts = RETRAIN_KINDS[step.kind][0].model_validate(given | run_fields)
    RETRAIN_KINDS[step.kind][1](opts)


def run_quantize(c: ExperimentConfig, src: Path, out: Path) -> None:
    quantize(str(src), output=out, overwrite=True, cache_dir=c.model.cache_dir, log=lambda msg: log(f"  {msg}"),
             **c.quantize.model_dump())


def evaluate_model(c: ExperimentConfig, label: str, src: str | Path, cache_root: Path | None = None,
                   ppl_cache: Path | None = None) -> dict:
    """PPL on every dataset (zero-shot accuracy, generation examples) of one model, as a JSON-ready dict.

    Zero-shot answers are kept in ``cache_root/<identity key>`` (unless the config names a cache) so an interrupted
    evaluation resumes and the same weights under another label (two calibration volumes that pick the same
    blocks) are answered from the cache. PPL results are kept in ``ppl_cache`` by model identity
    (``evaluation.ppl_cache``): the same weights are evaluated once.
    """
    ev = c.evaluate
    lm = load(c.model, src)
    entry = {"label": label, "path": str(src), "params": count_params(lm.model), "num_blocks": num_blocks(lm.model),
             "ppl": {}, "zeroshot": None}
    if getattr(lm.model, "depthprune_quantization", None):  # evaluated dequantized to float (see models/quantized)
        entry["quantization"] = lm.model.depthprune_quantization
    if ev.ppl is not None:
        settings = ev.ppl.model_dump(exclude={"datasets"})
        identity = ppl_cache and model_identity(lm.model, lm.tokenizer)
        for ds in ev.ppl.datasets:
            def compute(ds=ds) -> dict:
                return perplexity(lm.model, lm.tokenizer, dataset=ds, **settings).to_json()

            res, hit = cached(ppl_cache, identity, ds, settings, compute) if ppl_cache else (compute(), False)
            entry["ppl"][ds] = res
            log(f"  {label}: {ds} PPL {res['ppl']:.3f} ({res['windows']} windows of {res['seq_len']})"
                + (" (same weights evaluated before: from the run's ppl-cache)" if hit else ""))
    if ev.zeroshot is not None:
        zs = ev.zeroshot.model_dump(exclude={"dtype"})
        dtype = ev.zeroshot.dtype
        if dtype == NATIVE_BF16:
            dtype = native_bf16_or_float32(c.model.device)
        if dtype is not None and dtype != c.model.dtype:
            del lm  # PPL is done: load the zero-shot dtype in its place, not beside it
            gc.collect()
            lm = load(c.model.model_copy(update={"dtype": dtype}), src)
        if zs["cache_dir"] is None and cache_root is not None:
            key = cache_key(cache_identity(lm.model, lm.tokenizer, zs["backend"]))
            zs["cache_dir"] = str(cache_root / key)
            if (cache_root / key).is_dir():
                log(f"  {label}: zero-shot cache {key} exists (these weights were scored before): reusing it")
        res = zeroshot(lm.model, lm.tokenizer, **zs)
        entry["zeroshot"] = res.to_json()
        log(f"  {label}: zero-shot average {res.average * 100:.2f} over {', '.join(ev.zeroshot.tasks)}")
    if ev.samples is not None:
        entry["samples"] = samples_json(lm.model, lm.tokenizer, ev.samples.prompts, ev.samples.max_new_tokens)
        log(f"  {label}: {len(ev.samples.prompts)} generation example(s) of {ev.samples.max_new_tokens} tokens")
    return entry


def run_eval(c: ExperimentConfig, models: list[tuple[str, Path | str]], out: Path, extra: dict,
             ppl_cache: Path | None = None, zeroshot_cache: Path | None = None) -> None:
    results = [evaluate_model(c, label, src, zeroshot_cache, ppl_cache) for label, src in models]
    write_json_atomic(out, {"experiment": extra, "final": models[-1][0], "results": results,
                            "settings": c.evaluate.model_dump(mode="json"), "seed": c.calibration.seed,
                            "versions": library_versions()})


def run_bench(c: ExperimentConfig, models: list[tuple[str, str]], out: Path) -> None:
    opts = BenchOptions.model_validate(c.bench.model_dump(include=set(BenchOptions.model_fields)))
    labels = [label for label, _ in models]

    def save(result: dict) -> None:
        write_json_atomic(out, relabel(result, labels))

    result = run_benchmark([src for _, src in models], opts, c.model, on_model_done=save, log=log)
    save(result)


def relabel(result: dict, labels: list[str]) -> dict:
    """A copy of a benchmark result with the models renamed (in their order) to the experiment's names."""
    result = copy.deepcopy(result)
    names = {m["label"]: labels[i] for i, m in enumerate(result["models"])}
    for m in result["models"]:
        m["label"] = names[m["label"]]
    for s in result["settings"]:
        s["model"] = names.get(s["model"], s["model"])
    result["baseline"] = names.get(result.get("baseline"), result.get("baseline"))
    return result


# --- the plan ----------------------------------------------------------------------------------------------------


def _hash_of(stage: Stage) -> str:
    return config_hash(stage.config)


def leaf_dir(root: Path, leaf: Leaf) -> Path:
    return root / leaf.rel if leaf.rel else root


def target_dir(root: Path, leaf: Leaf, t: TargetSpec) -> Path:
    ldir = leaf_dir(root, leaf)
    return ldir / t.label if len(leaf.config.prune.targets) > 1 else ldir


def target_key(leaf: Leaf, t: TargetSpec) -> str:
    return join(leaf.rel, t.label if len(leaf.config.prune.targets) > 1 else "")


def leaf_stages(root: Path, leaf: Leaf, finals: list[FinalModel]) -> list[Stage]:
    c, p = leaf.config, leaf.config.prune
    ldir = leaf_dir(root, leaf)
    model = model_config(c.model)
    calib = c.calibration.model_dump(mode="json") if _needs_calibration(c) else None
    stages: list[Stage] = []
    score_id = None
    scores_path = ldir / SCORES_FILE
    if p.method == "depth" and p.schedule == "one-shot":
        score_id = join(leaf.rel, "score")
        cfg = {"model": model, "criterion": p.criterion, "unit": p.unit, "calibration": calib}
        st = Stage(score_id, "score", cfg, [], scores_path, lambda ctx: None, [scores_path])
        st.run = lambda ctx, st=st: run_score(c, scores_path, ctx, st)
        stages.append(st)
    for t in p.targets:
        key, tdir = target_key(leaf, t), target_dir(root, leaf, t)
        extra = {"name": c.name, "variant": leaf.variant, "target": t.label}
        cfg = {"model": model, "method": p.method, "criterion": p.criterion, "unit": p.unit, "schedule": p.schedule,
               "protect": [p.protect_first, p.protect_last], "target": t.as_dict()}
        if p.method == "width":
            cfg["round_to"] = p.round_to
        if p.compensate != "none":  # only then: older runs keep their hashes
            cfg["compensate"] = {"mode": p.compensate, "ridge": p.compensate_ridge, "samples": p.compensate_samples,
                                 "calibration": c.calibration.model_dump(mode="json")}
        if score_id is None:
            cfg["calibration"] = calib
        pruned = tdir / "pruned"
        stages.append(Stage(join(key, "prune"), "prune", cfg, [score_id] if score_id else [], pruned / "pruning.json",
                            lambda ctx, t=t, pruned=pruned, extra=extra: run_prune(c, t, scores_path, pruned, extra),
                            [pruned]))
        chain = [("pruned", pruned, join(key, "prune"))]
        for i, step in enumerate(c.retrain, 1):
            name = f"{i}-{step.kind}"
            rdir = tdir / "retrained" / name
            src = chain[-1][1]
            cfg = {"step": step_dump(step), "input": chain[-1][0],
                   "model": {"dtype": c.model.dtype, "device": c.model.device}}
            sid = join(key, "retrain", name)
            stages.append(Stage(sid, "retrain", cfg, [chain[-1][2]], rdir / "retrain.json",
                                lambda ctx, step=step, src=src, rdir=rdir: run_retrain(c, step, src, rdir, ctx),
                                [rdir]))
            chain.append((f"retrained/{name}", rdir, sid))
        final = chain[-1]
        quantized = None
        if c.quantize is not None:
            qdir, sid = tdir / "quantized", join(key, "quantize")
            cfg = {"quantize": c.quantize.model_dump(mode="json"), "input": final[0]}
            stages.append(Stage(sid, "quantize", cfg, [final[2]], qdir / QUANT_FILE,
                                lambda ctx, src=final[1], qdir=qdir: run_quantize(c, src, qdir), [qdir]))
            quantized = ("quantized", qdir, sid)
        if c.evaluate is not None:
            evaluated = (chain if c.evaluate.every_stage else [final]) + ([quantized] if quantized else [])
            models = [(label, path) for label, path, _ in evaluated]
            cfg = {"evaluate": c.evaluate.stage_dump({"baseline"}),
                   "models": [label for label, _ in models],
                   "model": {"dtype": c.model.dtype, "device": c.model.device}}
            out = tdir / EVAL_FILE
            deps = [final[2]] + ([quantized[2]] if quantized else [])
            stages.append(Stage(join(key, "eval"), "eval", cfg, deps, out,
                                lambda ctx, models=models, out=out, extra=extra: run_eval(
                                    c, models, out, extra, root / PPL_CACHE_DIR, root / ZEROSHOT_CACHE_DIR), [out]))
        finals.append(FinalModel(key, final[0], final[1], final[2], quantized[1:] if quantized else None))
    return stages


def build_stages(root: Path, cfg: ExperimentConfig, leaves: list[Leaf]) -> tuple[list[Stage], list[FinalModel]]:
    """Every stage of the experiment in run order: baseline evaluation, each leaf's stages, the benchmark."""
    stages: list[Stage] = []
    finals: list[FinalModel] = []
    first = leaves[0].config
    if first.evaluate is not None and first.evaluate.baseline:
        out = root / BASE_DIR / EVAL_FILE
        extra = {"name": cfg.name, "variant": None, "target": None}
        conf = {"model": model_config(first.model),
                "evaluate": first.evaluate.stage_dump({"baseline", "every_stage"})}
        stages.append(Stage(join(BASE_DIR, "eval"), "baseline", conf, [], out,
                            lambda ctx, out=out: run_eval(first, [("base", first.model.source)], out, extra,
                                                          root / PPL_CACHE_DIR, root / ZEROSHOT_CACHE_DIR), [out]))
    for leaf in leaves:
        stages += leaf_stages(root, leaf, finals)
    if first.bench is not None:
        models = ([("base", first.model.source)] if first.bench.baseline else [])
        for f in finals:
            models.append((f.key or "pruned", str(f.path)))
            if f.quantized is not None:
                models.append((join(f.key, "quantized"), str(f.quantized[0])))
        out = root / BENCH_FILE
        conf = {"bench": first.bench.model_dump(mode="json"), "model": model_config(first.model),
                "models": [label for label, _ in models]}
        deps = [f.stage_id for f in finals] + [f.quantized[1] for f in finals if f.quantized is not None]
        stages.append(Stage("bench", "bench", conf, deps, out,
                            lambda ctx, out=out: run_bench(first, models, out), [out]))
    return stages, finals

