"""Model sources for benchmarks: everything ``load_model`` takes, plus random-weight models from a config.

``config:PATH[,key=value...]`` builds a model with random weights from a ``config.json`` (speed does not
depend on weight values, so a LLaMA-7B-shaped model can be timed where its weights can't travel). The
optional ``key=value`` overrides are applied to the config, e.g. ``config:llama-7b.json,num_hidden_layers=24``
for the shape of a depth-pruned model. Values are parsed as JSON when they can be (numbers, true/false).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from accelerate import dispatch_model, infer_auto_device_map
from transformers import AutoConfig, AutoModelForCausalLM

from depthprune.errors import DepthpruneError
from depthprune.models.loading import LoadedModel, load_model
from depthprune.models.placement import DTYPES, _effective_device, estimate_model_bytes, gpu_free_bytes, plan_device_map
from depthprune.models.specs import spec_for

CONFIG_PREFIX = "config:"


def parse_config_source(src: str) -> tuple[Path, dict]:
    """Split ``config:PATH[,key=value...]`` into the config path and the overrides."""
    path_str, *pairs = src[len(CONFIG_PREFIX):].split(",")
    path = Path(path_str).expanduser()
    if not path_str or not path.is_file():
        raise DepthpruneError(f"--model {src}: no such config file; use config:PATH/TO/config.json")
    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise DepthpruneError(f"--model {src}: override {pair!r} is not key=value (e.g. num_hidden_layers=24)")
        try:
            overrides[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key.strip()] = value
    return path, overrides


def source_label(src: str) -> str:
    """A short display name: the directory/file name, or the config's stem plus overrides."""
    if src.startswith(CONFIG_PREFIX):
        path_str, *pairs = src[len(CONFIG_PREFIX):].split(",")
        stem = Path(path_str).stem
        if stem == "config":
            stem = Path(path_str).parent.name or stem
        shown = [f"{p.partition('=')[2]} blocks" if p.startswith("num_hidden_layers=") else p for p in pairs]
        return f"{stem} (random{', ' + ', '.join(shown) if shown else ''})"
    path = Path(src).expanduser()
    return path.name if path.exists() and path.name else src


def check_source(src: str) -> None:
    """Fail early on sources that clearly cannot load (so a long run does not die at its second model)."""
    if src.startswith(CONFIG_PREFIX):
        parse_config_source(src)
    elif src.startswith((".", "/", "~")) and not Path(src).expanduser().exists():
        raise DepthpruneError(f"--model {src}: no such file or directory")


def _config_dtype(dtype: str, device: str, config) -> torch.dtype:
    if dtype != "auto":
        if dtype not in DTYPES:
            raise DepthpruneError(f"--dtype {dtype!r} is not one of: auto, {', '.join(DTYPES)}")
        return DTYPES[dtype]
    if device == "cpu":
        return torch.float32
    cfg = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if isinstance(cfg, str):
        cfg = DTYPES.get(cfg)
    return cfg if isinstance(cfg, torch.dtype) else torch.float16


def load_config_model(src: str, dtype: str = "auto", device: str = "auto") -> LoadedModel:
    """A random-weight model built directly on the target device (the first GPU, or the CPU)."""
    path, overrides = parse_config_source(src)
    try:
        fields = json.loads(path.read_text()) | overrides
        model_type = fields.pop("model_type")
        config = AutoConfig.for_model(model_type, **fields)  # __init__ sees the overrides (derived lists follow)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DepthpruneError(f"--model {src}: not a usable config.json ({type(exc).__name__}: {exc})") from None
    eff = _effective_device(device)
    torch_dtype = _config_dtype(dtype, eff, config)
    free = gpu_free_bytes() if eff == "cuda" else []
    placement = plan_device_map(device, estimate_model_bytes(config, torch_dtype) if free else None, free)
    if isinstance(placement, dict):
        target = torch.device("cuda", placement[""])
    else:
        target = torch.device("cpu")
    with torch.device(target):
        model = AutoModelForCausalLM.from_config(config, dtype=torch_dtype)
    if placement == "auto":  # too large for one GPU, or --device multi: split it as from_pretrained would

        no_split = list(getattr(model, "_no_split_modules", None) or [])
        model = dispatch_model(model, infer_auto_device_map(model, no_split_module_classes=no_split))
    spec_for(model)  # refuses a model whose decoder blocks cannot be found
    return LoadedModel(model.eval(), None, src)


def load_bench_model(src: str, dtype: str = "auto", device: str = "auto", cache_dir=None) -> LoadedModel:
    """``config:`` sources get random weights; anything else goes through ``load_model``."""
    if src.startswith(CONFIG_PREFIX):
        return load_config_model(src, dtype, device)
    return load_model(src, dtype=dtype, device=device, cache_dir=cache_dir)
