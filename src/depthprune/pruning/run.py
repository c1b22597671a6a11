"""``prune``: the one call that prunes a model — depth (blocks or modules, one-shot or iterative) or width.

Loading (when given a source), calibration, scoring, target checks (before any scoring), selection, surgery
and the record written to ``pruning.json`` all happen here; the CLI and the pipeline call this function.
"""

from __future__ import annotations

from collections.abc import Callable

from depthprune.core.options import build
from depthprune.core.versions import library_versions
from depthprune.data.calibration import CalibrationSpec, calibration_for
from depthprune.errors import DepthpruneError
from depthprune.importance.base import BlockScores, score_model
from depthprune.importance.width import score_width
from depthprune.models.loading import ensure_loaded, model_source
from depthprune.models.params import candidate_params, count_params
from depthprune.models.specs import num_blocks
from depthprune.pruning.compensate import CompensationRun
from depthprune.pruning.iterative import iterative_prune
from depthprune.pruning.options import PruneOptions, TargetOptions
from depthprune.pruning.provenance import source_record
from depthprune.pruning.prune import PruneResult, check_scores_match, prune_blocks
from depthprune.pruning.selection import Target, select_blocks
from depthprune.pruning.width import plan_width, prune_width

LOAD_FIELDS = ("dtype", "device", "cache_dir")


def split_fields(options: dict) -> tuple[dict, dict, dict, dict]:
    """Prune, target, calibration and loading fields of ``options``; anything else is an error naming it."""
    parts: tuple[dict, dict, dict, dict] = ({}, {}, {}, {})
    models = (PruneOptions, TargetOptions, CalibrationSpec)
    for key, value in options.items():
        for i, m in enumerate(models):
            if key in m.model_fields:
                parts[i][key] = value
                break
        else:
            if key not in LOAD_FIELDS:
                known = sorted({f for m in models for f in m.model_fields} | set(LOAD_FIELDS))
                raise DepthpruneError(f"prune() got an unknown option {key!r}; options: {', '.join(known)}")
            parts[3][key] = value
    return parts


def prune_options(options: dict, scores: BlockScores | None = None, flags: bool = False):
    """Validated (PruneOptions, Target, calibration fields, loading fields) from keyword options."""
    p_fields, t_fields, c_fields, l_fields = split_fields(options)
    if scores is not None:
        if "criterion" in p_fields and p_fields["criterion"] not in (None, scores.criterion):
            raise DepthpruneError(f"--criterion {p_fields['criterion']} contradicts --scores, which hold "
                                  f"{scores.criterion} scores; drop --criterion (or --scores)")
        p_fields["criterion"] = scores.criterion
        p_fields.setdefault("unit", scores.unit)
    opts = build(PruneOptions, p_fields, flags=flags, where="prune.")
    target = build(TargetOptions, t_fields, flags=flags, where="prune.").target()
    build(CalibrationSpec, c_fields, flags=flags, where="calibration.")
    if scores is not None and opts.schedule == "iterative":
        raise DepthpruneError("--scores cannot be reused with --schedule iterative (it re-scores every round)")
    if scores is not None and opts.method == "width":
        raise DepthpruneError("--scores holds block scores for depth pruning; --method width scores heads and "
                              "channels itself, drop --scores")
    return opts, target, c_fields, l_fields


def check_target(model, opts: PruneOptions, target: Target) -> None:
    """Fail on a target the model cannot reach before anything is scored (with protection applied)."""
    if opts.method == "width":
        plan_width(model, target, opts.protect, opts.round_to)
        return
    params = candidate_params(model, opts.unit)
    labels = [str(i) for i in range(len(params))]
    dummy = BlockScores("", [0.0] * len(params), labels if opts.unit == "block" else
                        [f"{i // 2}.{'attn' if i % 2 == 0 else 'mlp'}" for i in range(len(params))], unit=opts.unit)
    select_blocks(dummy, params, count_params(model), target, *opts.protect)


def prune(model, tokenizer=None, *, scores: BlockScores | str | None = None, calibration=None,
          progress: bool = True, log: Callable[[str], None] | None = print, **options) -> PruneResult:
    """Prune ``model`` (a loaded model, or a source to load) in place and return what was done.

    Options (each defined once in ``PruneOptions`` / ``TargetOptions`` / ``CalibrationSpec``): ``criterion``,
    ``num_blocks`` | ``ratio`` | ``target_params``, ``schedule`` ("one-shot" | "iterative"), ``unit`` ("block"
    | "module"), ``method`` ("depth" | "width"), ``protect_first``/``protect_last`` (a "+" criterion implies 4
    and 2), ``round_to``, ``compensate``; calibration: a source name / spec / Calibration plus ``samples``,
    ``seq_len``, ``seed``, ``text_field``, ``batch_size`` (samples per forward pass while scoring); loading a
    source: ``dtype``, ``device``, ``cache_dir``.
    ``scores`` reuses a BlockScores (or its JSON path) instead of scoring.
    """
    say = log or (lambda _msg: None)
    if isinstance(scores, str):
        scores = BlockScores.load(scores)
    opts, target, c_fields, l_fields = prune_options(options, scores)
    model, tokenizer = ensure_loaded(model, tokenizer, **l_fields)
    source = model_source(model)
    check_target(model, opts, target)
    calib = None
    if opts.needs_calibration and (scores is None or opts.compensate != "none"):
        calib = calibration_for(tokenizer, model, calibration, **c_fields)
        say(f"Calibration: {calib.spec.source}, {calib.spec.samples} x {calib.spec.seq_len} tokens, "
            f"seed {calib.spec.seed}")
    batch = calib.spec.batch_size if calib is not None else build(CalibrationSpec, c_fields).batch_size
    compensation = None
    if opts.compensate == "linear":
        fit = calib if opts.compensate_samples is None else calibration_for(
            tokenizer, model, calib.spec.model_copy(update={"samples": opts.compensate_samples}))
        compensation = CompensationRun(model, fit, opts.compensate_ridge, batch, opts.unit, progress=progress)
    if opts.method == "width":
        result = _prune_width(model, opts, target, calib, batch, progress, say)
    elif opts.schedule == "iterative":
        result = iterative_prune(model, opts.criterion, calib, target, opts.protect, batch, progress)
        say(f"Removal order: {result.info['removal_order']}")
    else:
        if scores is None:
            scores = score_model(model, opts.criterion, calib, unit=opts.unit, batch_size=batch,
                                 progress=progress)
            say(f"Scored {len(scores.scores)} {opts.unit}s with {opts.criterion} in {scores.wall_s:.1f}s")
        else:
            check_scores_match(scores, model)
        result = prune_blocks(model, scores, target, opts.protect)
    info = result.info
    if compensation is not None:
        info["compensation"] = compensation.apply(model, info["removed_blocks"])
        for span in info["compensation"]["spans"]:
            say(f"Compensated blocks {span['removed']} in block {span['fused_into']} ({info['compensation']['mode']}"
                f" map into {info['compensation']['writer']}): residual MSE {span['mse_before']:.4g} -> "
                f"{span['mse_after']:.4g}")
        for skip in info["compensation"]["skipped"]:
            say(f"Not compensated: blocks {skip['removed']} ({skip['reason']})")
    if opts.method == "depth":
        say(f"Removed {info['unit']}s {result.selection.removed} (criterion {opts.criterion}, {opts.schedule}, "
            f"protected blocks {result.selection.protected or 'none'})")
    say(f"Parameters: {info['params_before']:,} -> {info['params_after']:,} ({info['ratio_removed']:.1%} removed)"
        + (f", blocks {info['num_blocks_before']} -> {info['num_blocks_after']}" if "num_blocks_after" in info else ""))
    if target.num_blocks is None:  # whole blocks (or heads/channels) go: the target is reached or passed
        asked = target.ratio if target.ratio is not None else 1 - target.target_params / info["params_before"]
        say(f"Target {asked:.1%} of the parameters; removed {info['ratio_removed']:.1%} (the smallest number of "
            f"whole {'units' if opts.method == 'width' else 'blocks'} that reaches it)")
    result.info = info | source_record(source, model) | {"source_model": source,
                                                         "seed": calib.spec.seed if calib else None,
                          "calibration": calib.to_json() if calib else None,
                          "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
                          "versions": library_versions()}
    result.model, result.tokenizer = model, tokenizer
    return result


def _prune_width(model, opts: PruneOptions, target: Target, calib, batch: int, progress: bool,
                 say) -> PruneResult:
    plan = plan_width(model, target, opts.protect, opts.round_to)
    widths = score_width(model, opts.criterion, calib, batch, progress=progress)
    say(f"Scored heads and MLP channels of {plan.num_blocks} blocks with {opts.criterion} in {widths.wall_s:.1f}s")
    res = prune_width(model, widths, plan)
    say(f"Width-pruned ({opts.criterion}): {plan.describe()}")
    info = res.info | {"num_blocks_before": num_blocks(model), "num_blocks_after": num_blocks(model)}
    return PruneResult(None, None, (0, 0), info)
