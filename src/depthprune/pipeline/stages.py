"""The stages of an experiment: what each one computes, from which settings, into which files.

Layout (``root`` = ``runs/<name>``; ``<leaf>`` = ``root`` or ``root/<variant>``; ``<t>`` = ``<leaf>`` for one
target, ``<leaf>/<target label>`` for several)::

    root/config.yaml, stages.json, base/eval.json, bench.json
    <leaf>/config.yaml, scores.json (+ scores.png)      one-shot depth pruning: scored once for every target
    <t>/pruned/                                         checkpoint + pruning.json (+ scores.png)
    <t>/retrained/<i>-<kind>/                           checkpoint, retrain.json, train_log.jsonl, checkpoints/
    <t>/eval.json                                       PPL / zero-shot of the final model (or of every stage)

Each stage writes its outputs atomically and has one file (``marker``) whose presence says it finished.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from depthprune.pipeline.config import ExperimentConfig, Leaf, ModelConfig, TargetSpec

KINDS = ("baseline", "score", "prune", "retrain", "eval", "bench")
SCORES_FILE = "scores.json"
EVAL_FILE = "eval.json"
BENCH_FILE = "bench.json"
BASE_DIR = "base"


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


def join(*parts: str) -> str:
    return "/".join(p for p in parts if p)


def model_config(m: ModelConfig) -> dict:
    return m.model_dump(mode="json")


def load(m: ModelConfig, src: str | Path | None = None):
    from depthprune.models import load_model

    return load_model(str(src) if src is not None else m.source, dtype=m.dtype, device=m.device,
                      cache_dir=m.cache_dir)


def _calibration(c: ExperimentConfig, lm):
    from depthprune.data import CalibrationSpec, build_calibration

    cc = c.calibration
    calib = build_calibration(lm.tokenizer, CalibrationSpec(cc.source, cc.samples, cc.seq_len, cc.seed,
                                                            cc.text_field), model=lm.model)
    log(f"  calibration: {calib.spec.source}, {calib.spec.samples} x {calib.spec.seq_len} tokens, "
        f"seed {calib.spec.seed}")
    return calib


def _needs_calibration(c: ExperimentConfig) -> bool:
    from depthprune.importance import resolve_criterion

    p = c.prune
    return p.method == "width" or resolve_criterion(p.criterion)[0].needs_calibration


# --- stage bodies ------------------------------------------------------------------------------------------------


def run_score(c: ExperimentConfig, out: Path, ctx: StageContext, stage: Stage) -> None:
    from depthprune.importance import score_model
    from depthprune.report.plots import plot_block_scores

    same = ctx.log.find_done(stage.kind, stage.id, _hash_of(stage))
    if same is not None and same.is_file():  # another variant scored with identical settings: reuse
        from depthprune.importance import BlockScores

        scores = BlockScores.load(same)
        scores.save(out)
        log(f"  reused identical scores from {same}")
    else:
        lm = load(c.model)
        calib = _calibration(c, lm) if _needs_calibration(c) else None
        scores = score_model(lm.model, c.prune.criterion, calib, unit=c.prune.unit,
                             batch_size=c.calibration.batch_size)
        scores.save(out)
        log(f"  scored {len(scores.scores)} {c.prune.unit}s with {c.prune.criterion} in {scores.wall_s:.1f}s")
    plot_block_scores(scores, out.with_suffix(".png"))


def run_prune(c: ExperimentConfig, t: TargetSpec, scores_path: Path | None, out: Path, extra: dict) -> None:
    from depthprune.pruning import Target, prune_blocks, save_checkpoint
    from depthprune.pruning.provenance import source_record
    from depthprune.pruning.save import library_versions

    p = c.prune
    target = Target(**t.as_dict())
    protect = (p.protect_first, p.protect_last)
    lm = load(c.model)
    files: dict[str, str] = {}
    comp = _compensation(c, lm) if p.compensate == "linear" else None
    if p.method == "width":
        from depthprune.pruning.width import plan_width, prune_width, score_width

        plan = plan_width(lm.model, target, protect, p.round_to)
        calib = _calibration(c, lm)
        result = prune_width(lm.model, score_width(lm.model, p.criterion, calib, c.calibration.batch_size), plan)
        log(f"  width-pruned ({p.criterion}): {plan.describe()}")
    else:
        from depthprune.pruning.module_surgery import remote_code_files

        if p.schedule == "iterative":
            from depthprune.pruning.iterative import iterative_prune

            calib = _calibration(c, lm) if _needs_calibration(c) else None
            result = iterative_prune(lm.model, p.criterion, calib, target, protect, c.calibration.batch_size)
        else:
            from depthprune.importance import BlockScores

            result = prune_blocks(lm.model, BlockScores.load(scores_path), target, protect)
        files = remote_code_files(lm.model)
        log(f"  removed {result.info['unit']}s {result.selection.removed} ({p.criterion}, {p.schedule})")
    info = result.info | {"source_model": c.model.source, "seed": c.calibration.seed,
                          "versions": library_versions(), "experiment": extra}
    info |= source_record(c.model.source, lm.model)
    if comp is not None:
        info["compensation"] = comp.apply(lm.model, result.info["removed_blocks"])
        log(f"  compensated spans {[s['removed'] for s in info['compensation']['spans']]} (linear, "
            f"{info['compensation']['mode']})")
    log(f"  parameters {info['params_before']:,} -> {info['params_after']:,} ({info['ratio_removed']:.1%} removed)")
    saved = save_checkpoint(lm.model, lm.tokenizer, out, info, overwrite=True, extra_files=files)
    if p.method == "depth":
        from depthprune.report.plots import plot_block_scores

        sel = result.selection
        plot_block_scores(result.scores, saved / "scores.png", removed=sel.removed, protected=sel.protected)


def _compensation(c: ExperimentConfig, lm):
    """Checks, calibration and a snapshot of the blocks for ``compensate: linear`` (before pruning)."""
    from depthprune.data import CalibrationSpec
    from depthprune.pruning.compensate import CompensationRun

    cc, p = c.calibration, c.prune
    spec = CalibrationSpec(cc.source, p.compensate_samples or cc.samples, cc.seq_len, cc.seed, cc.text_field)
    return CompensationRun(lm, spec, p.compensate_ridge, cc.batch_size, p.unit)


def train_config(step, output: Path, resume: bool, device: str):
    from depthprune.retrain.config import TrainConfig

    return TrainConfig(
        output=str(output), lr=step.lr, batch_size=step.batch_size, micro_batch_size=step.micro_batch_size,
        epochs=step.epochs, max_steps=step.max_steps, max_tokens=step.max_tokens, schedule=step.schedule,
        warmup_ratio=step.warmup_ratio, warmup_steps=step.warmup_steps, min_lr_ratio=step.min_lr_ratio,
        weight_decay=step.weight_decay, betas=tuple(step.betas), max_grad_norm=step.max_grad_norm, seed=step.seed,
        save_every=step.save_every, keep_checkpoints=step.keep_checkpoints, log_every=step.log_every,
        resume=resume, overwrite=not resume, mixed_precision=step.mixed_precision,
        gradient_checkpointing=step.gradient_checkpointing, cpu=device == "cpu", progress=True,
    )


def run_retrain(c: ExperimentConfig, step, src: Path, out: Path, ctx: StageContext) -> None:
    from depthprune.retrain.checkpoint import list_checkpoints

    resume = ctx.resume and bool(list_checkpoints(out))
    if resume:
        log(f"  resuming from {list_checkpoints(out)[-1]}")
    cfg = train_config(step, out, resume, c.model.device)
    dtype = c.model.dtype
    if step.kind == "lora":
        from depthprune.retrain.lora import LoraOptions, run_lora

        opts = LoraOptions(data=step.data, rank=step.rank, alpha=step.alpha, dropout=step.dropout,
                           target_modules=step.target_modules, max_len=step.seq_len,
                           train_on_inputs=step.train_on_inputs, merge=True, save_dtype=step.save_dtype)
        run_lora(str(src), cfg, opts, dtype=dtype, cache_dir=c.model.cache_dir)
    elif step.kind == "kd":
        from depthprune.retrain.kd import KdOptions, run_kd

        lora = dict(rank=step.rank, alpha=step.alpha, dropout=step.dropout, target_modules=step.target_modules,
                    merge=True) if step.lora else {}
        opts = KdOptions(data=step.data, seq_len=step.seq_len, text_field=step.text_field, teacher=step.teacher,
                         teacher_dtype=step.teacher_dtype, temperature=step.temperature, ce_weight=step.ce_weight,
                         lora=step.lora, save_dtype=step.save_dtype, **lora)
        run_kd(str(src), cfg, opts, dtype=dtype, cache_dir=c.model.cache_dir)
    else:
        from depthprune.retrain.cpt import CptOptions, run_cpt

        opts = CptOptions(data=step.data, seq_len=step.seq_len, text_field=step.text_field,
                          save_dtype=step.save_dtype)
        run_cpt(str(src), cfg, opts, dtype=dtype, cache_dir=c.model.cache_dir)


def evaluate_model(c: ExperimentConfig, label: str, src: str | Path) -> dict:
    """PPL on every dataset (and zero-shot accuracy) of one model, as a JSON-ready dict."""
    from depthprune.evaluation import evaluate_perplexity
    from depthprune.models.specs import num_blocks
    from depthprune.pruning import count_params

    ev = c.evaluate
    lm = load(c.model, src)
    entry = {"label": label, "path": str(src), "params": count_params(lm.model), "num_blocks": num_blocks(lm.model),
             "ppl": {}, "zeroshot": None}
    if ev.ppl is not None:
        for ds in ev.ppl.datasets:
            res = evaluate_perplexity(lm.model, lm.tokenizer, ds, ev.ppl.seq_len, ev.ppl.limit, ev.ppl.batch_size,
                                      text_field=ev.ppl.text_field)
            entry["ppl"][ds] = res.to_json()
            log(f"  {label}: {ds} PPL {res.ppl:.3f} ({res.windows} windows of {res.seq_len})")
    if ev.zeroshot is not None:
        from depthprune.evaluation.zeroshot import evaluate_zeroshot

        zs = ev.zeroshot
        res = evaluate_zeroshot(lm.model, lm.tokenizer, zs.tasks, limit=zs.limit, batch_size=zs.batch_size,
                                source=zs.source)
        entry["zeroshot"] = res.to_json()
        log(f"  {label}: zero-shot average {res.average * 100:.2f} over {', '.join(zs.tasks)}")
    return entry


def run_eval(c: ExperimentConfig, models: list[tuple[str, Path | str]], out: Path, extra: dict) -> None:
    from depthprune.commands.common import write_json_atomic
    from depthprune.pruning.save import library_versions

    results = [evaluate_model(c, label, src) for label, src in models]
    write_json_atomic(out, {"experiment": extra, "final": models[-1][0], "results": results,
                            "settings": c.evaluate.model_dump(mode="json"), "seed": c.calibration.seed,
                            "versions": library_versions()})


def run_bench(c: ExperimentConfig, models: list[tuple[str, str]], out: Path) -> None:
    import torch

    from depthprune.bench import BenchOptions, run_benchmark
    from depthprune.commands.common import write_json_atomic

    b = c.bench
    opts = BenchOptions(list(b.batch_sizes), list(b.output_lengths), b.input_tokens, b.warmup, b.runs,
                        c.model.dtype, c.model.device, c.model.cache_dir)
    labels = [label for label, _ in models]

    def save(result: dict) -> None:
        write_json_atomic(out, relabel(result, labels))

    threads = torch.get_num_threads()
    if b.threads:
        torch.set_num_threads(b.threads)
    try:
        result = run_benchmark([src for _, src in models], opts, on_model_done=save, log=log)
    finally:
        torch.set_num_threads(threads)
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
    from depthprune.pipeline.stagelog import config_hash

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
        if p.compensate != "none":
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
            cfg = {"step": step.model_dump(mode="json", exclude_none=True), "input": chain[-1][0],
                   "model": {"dtype": c.model.dtype, "device": c.model.device}}
            sid = join(key, "retrain", name)
            stages.append(Stage(sid, "retrain", cfg, [chain[-1][2]], rdir / "retrain.json",
                                lambda ctx, step=step, src=src, rdir=rdir: run_retrain(c, step, src, rdir, ctx),
                                [rdir]))
            chain.append((f"retrained/{name}", rdir, sid))
        final = chain[-1]
        if c.evaluate is not None:
            models = [(label, path) for label, path, _ in (chain if c.evaluate.every_stage else [final])]
            cfg = {"evaluate": c.evaluate.model_dump(mode="json", exclude={"baseline"}),
                   "models": [label for label, _ in models],
                   "model": {"dtype": c.model.dtype, "device": c.model.device}}
            out = tdir / EVAL_FILE
            stages.append(Stage(join(key, "eval"), "eval", cfg, [final[2]], out,
                                lambda ctx, models=models, out=out, extra=extra: run_eval(c, models, out, extra),
                                [out]))
        finals.append(FinalModel(key, final[0], final[1], final[2]))
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
                "evaluate": first.evaluate.model_dump(mode="json", exclude={"baseline", "every_stage"})}
        stages.append(Stage(join(BASE_DIR, "eval"), "baseline", conf, [], out,
                            lambda ctx, out=out: run_eval(first, [("base", first.model.source)], out, extra),
                            [out]))
    for leaf in leaves:
        stages += leaf_stages(root, leaf, finals)
    if first.bench is not None:
        models = ([("base", first.model.source)] if first.bench.baseline else [])
        models += [(f.key or "pruned", str(f.path)) for f in finals]
        out = root / BENCH_FILE
        conf = {"bench": first.bench.model_dump(mode="json"), "model": model_config(first.model),
                "models": [label for label, _ in models]}
        stages.append(Stage("bench", "bench", conf, [f.stage_id for f in finals], out,
                            lambda ctx, out=out: run_bench(first, models, out), [out]))
    return stages, finals

