"""Benchmark a list of models over (batch size, output length) settings; the first model is the baseline."""

from __future__ import annotations

import gc
import platform
from collections.abc import Callable
from pathlib import Path

import torch

from depthprune.core.options import build
from depthprune.core.versions import library_versions
from depthprune.errors import DepthpruneError
from depthprune.models.loading import LoadedModel, model_source
from depthprune.models.options import ModelOptions
from depthprune.models.quantized import checkpoint_bytes
from depthprune.models.specs import num_blocks
from depthprune.speed.ideal import attention_flops_per_token, cost_model
from depthprune.speed.measure import free_memory, is_oom, make_prompt, measure_setting, model_devices
from depthprune.speed.options import BenchOptions, int_list
from depthprune.speed.report import add_comparisons
from depthprune.speed.sources import check_source, load_bench_model, source_label

ATTENTION_NOTE = ("flops_per_token counts 2 x multiply-adds of the linear layers (kept blocks, LM head, linear "
                  "layers outside the blocks); attention-score FLOPs are excluded from it and given per setting "
                  "at the mean context (input_tokens + (L + 1) / 2) as attention_flops_per_token_mean_context")
BYTES_NOTE = ("bytes_per_token counts weights read per generated token: kept blocks, one input-embedding row "
              "(+ one learned-position row), final norm, the whole LM head (the whole embedding matrix when "
              "tied); KV-cache reads are not counted")


WEIGHTS_NOTE = ("in_memory_bytes: the loaded parameters (a quantized checkpoint is dequantized to float at load: "
                "transformers has no integer kernels for it, so latency and memory are those of the float model); "
                "on_disk_bytes: the checkpoint's weight files")


def parse_int_list(name: str, text: str) -> list[int]:
    """``"1,4,16"`` -> ``[1, 4, 16]`` (sorted, unique); anything but positive integers is a DepthpruneError."""
    try:
        return int_list(text)
    except ValueError as exc:
        raise DepthpruneError(f"{name} {exc}") from None


PROTOCOL_NOTES = {"generation": "greedy, min_new_tokens = max_new_tokens = L (EOS cannot stop)",
                  "throughput": "M x L / mean latency", "latency": "includes the prompt prefill",
                  "std": "sample standard deviation over the timed runs", "bytes_note": BYTES_NOTE,
                  "flops_note": ATTENTION_NOTE}


def environment() -> dict:
    env = library_versions() | {"python": platform.python_version(), "platform": platform.platform(),
                                "cpu": platform.processor() or platform.machine(),
                                "torch_threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        env["cuda_devices"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        env["cuda_version"] = torch.version.cuda
    return env


def _unique_labels(sources: list) -> list[str]:
    labels, seen = [], {}
    for src in sources:
        label = source_label(src) if isinstance(src, str) else model_source(_model_of(src))
        seen[label] = seen.get(label, 0) + 1
        labels.append(label if seen[label] == 1 else f"{label} #{seen[label]}")
    return labels


def _prompt_for(lm, n: int) -> torch.Tensor:
    cfg = lm.model.config
    return make_prompt(lm.tokenizer, n, cfg.vocab_size, getattr(cfg, "bos_token_id", None))


def weight_record(model, source: str) -> dict:
    """Weight bytes in memory (what the kernels read: dequantized float for a quantized checkpoint) and on disk."""
    params = {id(p): p for p in model.parameters()}.values()
    path = Path(source).expanduser()
    quant = getattr(model, "depthprune_quantization", None)
    return {"in_memory_bytes": sum(p.numel() * p.element_size() for p in params),
            "in_memory_dtypes": sorted({str(p.dtype).removeprefix("torch.") for p in params}),
            "on_disk_bytes": checkpoint_bytes(path) if path.is_dir() else None,
            "stored_as": (f"{quant['bits']}-bit {quant['format']} (group {quant['group_size']}), {quant['in_memory']}"
                          if quant else "float"),
            "note": WEIGHTS_NOTE}


def _pad_id(lm) -> int | None:
    tok = lm.tokenizer
    if tok is not None and tok.pad_token_id is not None:
        return tok.pad_token_id
    return getattr(lm.model.config, "pad_token_id", None)


def _model_of(src):
    return src[0] if isinstance(src, (tuple, list)) else src


def run_benchmark(sources: list, opts: BenchOptions, load: ModelOptions | None = None,
                  on_model_done: Callable[[dict], None] | None = None, log: Callable[[str], None] = print) -> dict:
    """Measure every (M, L) setting of each model in turn; the first is the baseline. Returns the results dict.

    A source is anything ``load_model`` takes (loaded with ``load``'s dtype/device), a ``config:`` path (random
    weights), a loaded model, or a (model, tokenizer) pair.
    """
    if not sources:
        raise DepthpruneError("give at least one --model")
    load = load or ModelOptions()
    for src in sources:
        if isinstance(src, str):
            check_source(src)
    result = {
        "protocol": opts.model_dump() | {"dtype": load.dtype, "device": load.device} | PROTOCOL_NOTES,
        "environment": environment(),
        "baseline": None,
        "models": [],
        "settings": [],
        "complete": False,
    }
    threads = torch.get_num_threads()
    if opts.threads:
        torch.set_num_threads(opts.threads)
    try:
        result["environment"]["torch_threads"] = torch.get_num_threads()
        for src, label in zip(sources, _unique_labels(sources)):
            result["baseline"] = result["baseline"] or label
            _bench_one(src, label, opts, load, result, log)
            add_comparisons(result)
            if on_model_done is not None:
                on_model_done(result)
    finally:
        torch.set_num_threads(threads)
    result["complete"] = True
    return result


def bench(models: list, *, log: Callable[[str], None] | None = print, on_model_done=None, dtype: str = "auto",
          device: str = "auto", cache_dir: str | None = None, **options) -> dict:
    """Latency, throughput and peak memory of ``models`` (loaded models, (model, tokenizer) pairs, or sources)
    at every (batch size, output length) of ``options`` (``BenchOptions``); the first model is the baseline."""
    opts = build(BenchOptions, options)
    load = build(ModelOptions, {"dtype": dtype, "device": device, "cache_dir": cache_dir})
    return run_benchmark(list(models), opts, load, on_model_done, log or (lambda _msg: None))


def _bench_one(src, label: str, opts: BenchOptions, load: ModelOptions, result: dict,
               log: Callable[[str], None]) -> None:
    live = not isinstance(src, str)
    if live:
        model = _model_of(src)
        lm = LoadedModel(model, src[1] if isinstance(src, (tuple, list)) else None, model_source(model))
        src = lm.source
    else:
        log(f"Loading {src} ...")
    try:
        lm = lm if live else load_bench_model(src, load.dtype, load.device, load.cache_dir)
    except Exception as exc:
        if not is_oom(exc):
            raise
        error = f"{type(exc).__name__} while loading"
        lm = None
    if lm is None:
        free_memory()
        log(f"  {label}: out of memory while loading; every setting is OOM")
        result["models"].append({"label": label, "source": src, "status": "OOM", "error": error})
        result["settings"] += [{"model": label, "batch_size": m, "output_length": n, "status": "OOM", "error": error}
                               for n in opts.output_lengths for m in opts.batch_sizes]
        return
    model = lm.model
    cost = cost_model(model)
    devices = model_devices(model)
    result["models"].append({
        "label": label, "source": src, "status": "ok", "random_weights": lm.tokenizer is None,
        "num_params": cost.num_params, "num_blocks": num_blocks(model), "dtype": str(next(model.parameters()).dtype),
        "devices": [str(d) for d in devices], "cost": cost.to_json(), "weights": weight_record(model, src),
    })
    if len(devices) > 1:
        log(f"  warning: {label} spans {len(devices)} devices ({', '.join(map(str, devices))}): its layers run one "
            "device after another (a naive pipeline), so latency includes the hops between them; peak memory is "
            "reported per device. Use --device cuda to keep a model that fits on one GPU")
    prompt = _prompt_for(lm, opts.input_tokens)
    max_pos = getattr(model.config, "max_position_embeddings", None)
    if max_pos and opts.input_tokens + max(opts.output_lengths) > max_pos:
        log(f"  warning: {opts.input_tokens} + {max(opts.output_lengths)} tokens exceed "
            f"max_position_embeddings={max_pos} of {label}")
    for length in opts.output_lengths:
        attn = attention_flops_per_token(model, opts.input_tokens + (length + 1) / 2)
        for batch in opts.batch_sizes:
            rec = measure_setting(model, prompt, batch, length, opts.warmup, opts.runs, _pad_id(lm))
            rec = {"model": label} | rec | {"attention_flops_per_token_mean_context": attn}
            result["settings"].append(rec)
            log(_progress_line(rec))
    del model, lm  # a model the caller passed in stays alive with the caller
    gc.collect()
    free_memory(devices)


def _progress_line(rec: dict) -> str:
    head = f"  {rec['model']} M={rec['batch_size']} L={rec['output_length']}:"
    if rec["status"] != "ok":
        return f"{head} OOM ({rec.get('error', '')})"
    mem = rec.get("peak_memory_bytes")
    mem_s = f", peak {mem / 2**30:.2f} GiB" if mem else ""
    return (f"{head} {rec['latency_mean_s']:.3f} s ± {rec['latency_std_s']:.3f}, "
            f"{rec['throughput_tok_s']:.1f} tok/s{mem_s}")
