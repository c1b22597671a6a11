"""``quantize``: the one call that quantizes a model's weights after pruning (the paper's section 5.3).

Options are checked, the output refused when it exists, the library found and the group size checked against
every layer before calibration starts; the directory appears whole (``staged_dir``) or not at all. The caller's
model is never modified: GPTQ runs on a copy reloaded from disk in ``dtype``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from depthprune.core.io import staged_dir
from depthprune.core.options import build
from depthprune.core.versions import library_versions
from depthprune.data.calibration import calibration_for
from depthprune.errors import DepthpruneError
from depthprune.models.loading import load_model, model_source
from depthprune.models.params import count_params
from depthprune.models.quantized import QUANT_METHOD, checkpoint_bytes, directory_quantization
from depthprune.pruning.save import PRUNING_FILE, check_output_dir
from depthprune.quantization.gptq import (
    LIBRARIES,
    check_group_size,
    gptq_recipe,
    head_module_names,
    quantized_layers,
    require_library,
    run_gptq,
)
from depthprune.quantization.options import QuantizeOptions
from depthprune.retraining.output import RETRAIN_FILE

QUANT_FILE = "quantization.json"
CARRIED = (PRUNING_FILE, RETRAIN_FILE)
"""Records of earlier stages copied from the source directory into the quantized one."""


@dataclass
class QuantizeResult:
    """Where the quantized checkpoint is, and what ``quantization.json`` records (sizes, shares, wall time)."""

    output: Path
    info: dict

    @property
    def wall_s(self) -> float:
        return self.info["wall_s"]["total"]

    @property
    def disk_bytes(self) -> dict:
        return self.info["disk_bytes"]

    @property
    def share_quantized(self) -> float:
        return self.info["params"]["share_quantized"]


def _source_dir(src: str | None) -> Path | None:
    path = Path(src).expanduser() if src else None
    return path if path is not None and path.is_dir() else None


def _check_source(src_dir: Path | None, config=None) -> None:
    """Refuse an already quantized or a module-pruned model (from its directory, or its loaded config)."""
    quantized = src_dir is not None and directory_quantization(src_dir) is not None
    if quantized or getattr(config, "quantization_config", None) is not None:
        raise DepthpruneError(f"--model {src_dir or 'the given model'} is already quantized; quantize its float "
                              "checkpoint instead")
    if getattr(config, "depthprune_removed_modules", None):
        raise DepthpruneError("module-pruned models (depthprune_removed_modules in config.json) cannot be quantized "
                              "yet; quantize a block- or width-pruned checkpoint")


def _float_copy(model, tokenizer, opts: QuantizeOptions, tmp: Path, cache_dir) -> tuple:
    """(LoadedModel, source label, source directory): the float model in ``dtype``, loaded from a directory
    (llmcompressor reads the original config.json from ``config._name_or_path`` when it saves), via ``tmp``
    for a loaded model, a .gguf file or a hub id."""
    live = model is not None and not isinstance(model, (str, os.PathLike))
    if live:
        _check_source(None, model.config)
        if tokenizer is None:
            raise DepthpruneError("quantize() of a loaded model needs its tokenizer (calibration and the saved "
                                  "checkpoint use it); pass tokenizer=, or pass a model source string")
        source, src_dir = model_source(model), None
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        return load_model(str(tmp), dtype=opts.dtype, device=opts.device), source, src_dir
    source = str(model) if model is not None else None
    src_dir = _source_dir(source)
    if src_dir is not None:
        _check_source(src_dir)
    lm = load_model(source, dtype=opts.dtype, device=opts.device, cache_dir=cache_dir)
    _check_source(src_dir, lm.model.config)
    loaded_from = Path(getattr(lm.model.config, "_name_or_path", "") or "/nonexistent")
    if not loaded_from.is_dir():  # .gguf, hub id
        lm.model.save_pretrained(tmp)
        lm.tokenizer.save_pretrained(tmp)
        lm = load_model(str(tmp), dtype=opts.dtype, device=opts.device)
    elif src_dir is None:  # the embedded model: its cached checkpoint
        src_dir = loaded_from
    return lm, lm.source if source is None else source, src_dir


def _param_record(model, layers) -> dict:
    total = count_params(model)
    quantized = sum(mod.weight.numel() for _, mod in layers)
    emb, head = model.get_input_embeddings(), model.get_output_embeddings()
    tied = head is not None and head.weight is emb.weight
    head_params = 0 if tied or head is None else head.weight.numel()
    return {"total": total, "quantized": quantized, "share_quantized": quantized / total,
            "quantized_layers": len(layers), "embedding": emb.weight.numel(),
            "lm_head": "tied to the input embedding" if tied else head_params,
            "float_other": total - quantized - emb.weight.numel() - head_params}


def quantize(model=None, tokenizer=None, *, output: str | os.PathLike, overwrite: bool = False,
             cache_dir: str | None = None, verbose: bool = False, log: Callable[[str], None] | None = print,
             **options) -> QuantizeResult:
    """Quantize ``model`` (a loaded model with its tokenizer, or a source to load) into the directory ``output``.

    Options (``QuantizeOptions``): ``method`` ("gptq"), ``bits`` (4 or 8), ``group_size`` (128), calibration
    ``calib`` ("c4_sample"), ``calib_samples`` (128), ``seq_len`` (512), ``seed``, ``text_field``; ``dtype``
    ("bfloat16": scales and the unquantized weights), ``device``, ``dampening``. The LM head and the embeddings
    stay unquantized. ``output`` gets the compressed checkpoint (loads with ``AutoModelForCausalLM`` when
    compressed-tensors is installed), ``quantization.json``, and ``pruning.json``/``retrain.json`` of the source.
    """
    say = log or (lambda _msg: None)
    start = time.perf_counter()
    opts = build(QuantizeOptions, options, where="quantize.")
    out = check_output_dir(output, overwrite)
    if isinstance(model, (str, os.PathLike)) and Path(model).expanduser().resolve() == out.resolve():
        raise DepthpruneError(f"--output {out} is the source model's directory; choose another path")
    require_library()
    tmp = Path(tempfile.mkdtemp(prefix="depthprune-float-"))
    try:
        lm, source, src_dir = _float_copy(model, tokenizer, opts, tmp, cache_dir)
        layers = quantized_layers(lm.model)
        check_group_size(layers, opts.group_size)
        params = _param_record(lm.model, layers)
        calib = calibration_for(lm.tokenizer, lm.model, opts.calib, samples=opts.calib_samples, seq_len=opts.seq_len,
                                seed=opts.seed, text_field=opts.text_field)
        say(f"Calibration: {calib.spec.source}, {calib.spec.samples} x {calib.spec.seq_len} tokens (+ BOS), "
            f"seed {calib.spec.seed}")
        float_bytes = sum(p.numel() * p.element_size() for p in {id(p): p for p in lm.model.parameters()}.values())
        ignore = head_module_names(lm.model)
        kept = "the embeddings (tied to the LM head)" if isinstance(params["lm_head"], str) else \
            "the embeddings, the LM head"
        say(f"GPTQ {opts.scheme} (group {opts.group_size}) on {len(layers)} Linear layers = "
            f"{params['share_quantized']:.1%} of {params['total']:,} parameters; {kept} and the norms stay "
            f"{opts.dtype}")
        gptq_s = run_gptq(lm.model, lm.tokenizer, calib.input_ids, opts, ignore, verbose)
        saving = time.perf_counter()
        with staged_dir(out) as stage, warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*offloaded modules")  # llmcompressor's own bookkeeping
            lm.model.save_pretrained(stage, save_compressed=True)
            lm.tokenizer.save_pretrained(stage)
            carried = [n for n in CARRIED if src_dir is not None and (src_dir / n).is_file()]
            for name in carried:
                shutil.copy2(src_dir / name, stage / name)
            qc = directory_quantization(stage) or {}
            if qc.get("quant_method") != QUANT_METHOD:
                raise DepthpruneError(f"{LIBRARIES[0]} wrote no compressed-tensors quantization_config; not saved")
            info = {
                "method": opts.method, "scheme": opts.scheme, "bits": opts.bits, "group_size": opts.group_size,
                "symmetric": True, "format": qc.get("format"), "quant_method": QUANT_METHOD, "dtype": opts.dtype,
                "dampening": opts.dampening, "library": LIBRARIES[0], "recipe": gptq_recipe(opts, ignore),
                "calibration": {k: v for k, v in calib.to_json().items() if k != "batch_size"}, "source_model": source,
                "source_dir": str(src_dir.resolve()) if src_dir is not None else None, "carried": carried,
                "params": params, "not_quantized": ignore + ["embeddings", "norms", "biases"],
                "disk_bytes": {"source_weights": checkpoint_bytes(src_dir) if src_dir is not None else None,
                               "float_weights_at_dtype": float_bytes, "output_weights": checkpoint_bytes(stage)},
                "versions": library_versions(*LIBRARIES),
                "loading": "AutoModelForCausalLM.from_pretrained(dir) with compressed-tensors installed; depthprune "
                           "dequantizes to float at load (no integer kernels in transformers); vLLM runs it as is",
            }
            info["wall_s"] = {"gptq": gptq_s, "save": time.perf_counter() - saving,
                              "total": time.perf_counter() - start}
            (stage / QUANT_FILE).write_text(json.dumps(info, indent=2) + "\n")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    sizes = info["disk_bytes"]
    before = sizes["source_weights"] or sizes["float_weights_at_dtype"]
    say(f"Saved {out}: weights {before / 2**20:.1f} MiB -> {sizes['output_weights'] / 2**20:.1f} MiB on disk "
        f"in {info['wall_s']['total']:.0f}s (GPTQ {gptq_s:.0f}s)")
    return QuantizeResult(out, info)


