"""Load a causal LM and its tokenizer from a local directory, a hub id, a .gguf file or the embedded default."""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

from depthprune.core.skip import make_pruned_class
from depthprune.errors import DepthpruneError
from depthprune.models.embedded import EMBEDDED_ALIASES, EMBEDDED_NAME, embedded_in_dtype
from depthprune.models.placement import _device_map, _effective_device, resolve_dtype
from depthprune.models.quantized import dequantize_kwargs, mark_dequantized, quantization_of, weight_files
from depthprune.models.specs import num_layers_key, spec_for

log = logging.getLogger(__name__)

@dataclass
class LoadedModel:
    """A model, its tokenizer, and where they came from."""
    model: PreTrainedModel
    tokenizer: object
    source: str


def load(source: str | None = None, dtype: str | torch.dtype = "auto", device: str = "auto",
         cache_dir: str | os.PathLike | None = None):
    """``(model, tokenizer)`` from a local directory, a ``.gguf`` file, a hub id or ``gemma-3-270m`` (the default).

    The model remembers its source (``model_source(model)``), recorded by pruning and retraining.
    """
    lm = load_model(source, dtype=dtype, device=device, cache_dir=cache_dir)
    return lm.model, lm.tokenizer


def model_source(model) -> str:
    """Where a model came from: the source it was loaded from, else its config's name or path."""
    return getattr(model, "depthprune_source", None) or getattr(model.config, "_name_or_path", "") or "in-memory"


def ensure_loaded(model, tokenizer=None, **load_options):
    """``(model, tokenizer)``: ``model`` itself, or loaded when it is a source string (a path, hub id, alias)."""
    if isinstance(model, (str, os.PathLike)):
        return load(str(model), **load_options)
    if model is None:
        return load(None, **load_options)
    return model, tokenizer


def _looks_like_path(src: str) -> bool:
    return src.startswith((".", "/", "~")) or src.endswith(".gguf") or os.sep in src.strip("/").split("/", 1)[-1]


def drop_gguf_marker(model: PreTrainedModel) -> None:
    """Forget that weights came from GGUF: they are dequantized, and save_pretrained refuses quantized models."""
    if getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config
    for attr in ("hf_quantizer", "quantization_method"):
        if hasattr(model, attr):
            setattr(model, attr, None)
    if hasattr(model, "is_quantized"):
        try:
            model.is_quantized = False
        except AttributeError:
            pass


def _check_supported(model) -> None:
    """Refuse a model whose decoder blocks cannot be found (named spec, else inference; see ``spec_for``)."""
    spec_for(model)


def load_model(
    src: str | None = None,
    dtype: str | torch.dtype = "auto",
    device: str = "auto",
    cache_dir: str | os.PathLike | None = None,
) -> LoadedModel:
    """Load ``src``: a local HF directory, a ``.gguf`` file, a hub id, or ``gemma-3-270m`` (the default)."""
    src = src or "gemma-3-270m"
    torch_dtype = resolve_dtype(dtype, device)
    _effective_device(device)  # a bad --device fails before anything loads
    kwargs = dict(dtype=torch_dtype, device=device)

    if src in EMBEDDED_ALIASES:
        path = embedded_in_dtype(cache_dir, torch_dtype, _convert_embedded,
                                 lambda p, dt: _load_dir(p, dict(dtype=dt, device="cpu"), source=src))
        return _load_dir(path, kwargs, source=src)

    path = Path(src).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise DepthpruneError(f"--model {src}: no such .gguf file")
        return load_gguf(path, kwargs, source=src)
    if path.exists():
        if not path.is_dir():
            raise DepthpruneError(f"--model {src}: is a file; give a model directory, a .gguf file or a hub id")
        if not (path / "config.json").is_file():
            raise DepthpruneError(
                f"--model {src}: directory has no config.json; point at a directory written by "
                "save_pretrained (config.json + *.safetensors/*.bin)"
            )
        return _load_dir(path, kwargs, source=src)
    if _looks_like_path(src) or src.count("/") > 1:
        raise DepthpruneError(f"--model {src}: no such file or directory")
    return _load_hub(src, kwargs)


def _placed(kwargs: dict, config) -> dict:
    """``from_pretrained`` kwargs: the dtype and the device map chosen for this config (see plan_device_map)."""
    out = dict(kwargs)
    device = out.pop("device")
    out["device_map"] = _device_map(device, config, out["dtype"])
    return out


def _load_dir(path: Path, kwargs: dict, source: str) -> LoadedModel:
    if not weight_files(path):
        raise DepthpruneError(f"--model {path}: directory has config.json but no weights (*.safetensors / *.bin); "
                              "point at a complete checkpoint written by save_pretrained")
    config = AutoConfig.from_pretrained(path)
    kwargs = _placed(kwargs, config)
    quant = quantization_of(config)
    if quant is not None:
        kwargs |= dequantize_kwargs(path, quant)
    with warnings.catch_warnings():  # ours overrides the checkpoint's loading attributes on purpose
        warnings.filterwarnings("ignore", message=".*already has a `quantization_config`")
        if getattr(config, "depthprune_removed_modules", None):
            model = load_module_pruned(path, config, kwargs)
        else:
            model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    _check_supported(model)
    if "quantization_config" in kwargs:
        info = mark_dequantized(model, path, quant)
        log.warning("%s: %s-bit %s checkpoint, %s (transformers has no integer kernels for it; the disk size is "
                    "what shrinks)", source, info["bits"], info["format"], info["in_memory"])
    tokenizer = AutoTokenizer.from_pretrained(path)
    return _loaded(model, tokenizer, source)


def _loaded(model, tokenizer, source: str) -> LoadedModel:
    model.eval()
    model.depthprune_source = source
    return LoadedModel(model, tokenizer, source)


def load_module_pruned(path: Path, config, kwargs: dict) -> PreTrainedModel:
    """Rebuild a module-pruned checkpoint: the stock class with the listed attention/MLP modules skipped."""
    removed = config.depthprune_removed_modules
    n = getattr(config, num_layers_key(config))
    bad = [f"{part} {i}" for part, idxs in removed.items() for i in idxs if not 0 <= int(i) < n]
    if bad or set(removed) - {"attn", "mlp"}:
        raise DepthpruneError(
            f"--model {path}: config.json lists removed modules out of range ({', '.join(bad) or removed}) "
            f"for a model with {n} blocks; the checkpoint is inconsistent, prune again"
        )
    cls = make_pruned_class(MODEL_FOR_CAUSAL_LM_MAPPING[type(config)])
    return cls.from_pretrained(path, config=config, **kwargs)


def _convert_embedded(gguf_path: Path) -> LoadedModel:
    return load_gguf(gguf_path, dict(dtype=torch.float32, device="cpu"), source=EMBEDDED_NAME)


def load_gguf(path: Path, kwargs: dict, source: str) -> LoadedModel:
    """Dequantize a GGUF file through transformers; the result can be saved with save_pretrained."""
    directory, name = str(path.parent), path.name
    model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, **_placed(kwargs, None))
    _check_supported(model)
    drop_gguf_marker(model)
    tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=name)
    return _loaded(model, tokenizer, source)


def _load_hub(repo_id: str, kwargs: dict) -> LoadedModel:
    try:
        config = AutoConfig.from_pretrained(repo_id)
    except (OSError, ValueError) as exc:
        raise DepthpruneError(
            f"--model {repo_id}: not a local path and could not be fetched from the Hugging Face hub "
            f"({type(exc).__name__}). Offline? Download it elsewhere and pass the local directory, "
            "e.g. --model ./my-model"
        ) from None
    model = AutoModelForCausalLM.from_pretrained(repo_id, **_placed(kwargs, config))
    _check_supported(model)
    tokenizer = AutoTokenizer.from_pretrained(repo_id)
    return _loaded(model, tokenizer, repo_id)


def input_device(model: torch.nn.Module) -> torch.device:
    """Where the model expects its input ids (the embedding's device, also under device_map)."""
    return model.get_input_embeddings().weight.device
