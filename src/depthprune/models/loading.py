"""Load a causal LM and its tokenizer from a local directory, a hub id, a .gguf file or the embedded default."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from depthprune.errors import DepthpruneError
from depthprune.models.specs import num_layers_key, spec_for

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEVICES = ("auto", "cpu", "cuda", "multi")
DEVICE_HELP = ("auto: one GPU when the model fits on it, split over the GPUs (device_map='auto') only when it "
               "does not, the CPU without GPUs; cuda: one GPU; multi: always split over all visible GPUs; cpu")
FIT_FRACTION = 0.85
"""Share of a GPU's free memory the weights may take for the model to count as fitting (the rest: activations,
KV cache, the allocator's slack)."""


@dataclass
class LoadedModel:
    """A model, its tokenizer, and where they came from."""

    model: PreTrainedModel
    tokenizer: object
    source: str


def resolve_dtype(dtype: str | torch.dtype, device: str) -> torch.dtype | str:
    """``auto`` means float32 on CPU (half precision is slow there) and the checkpoint's dtype on GPUs."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return torch.float32 if _effective_device(device) == "cpu" else "auto"
    if dtype not in DTYPES:
        raise DepthpruneError(f"--dtype {dtype!r} is not one of: auto, {', '.join(DTYPES)}")
    return DTYPES[dtype]


def _effective_device(device: str) -> str:
    if device not in DEVICES:
        raise DepthpruneError(f"--device {device!r} is not one of: {', '.join(DEVICES)}")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device in ("cuda", "multi") and not torch.cuda.is_available():
        raise DepthpruneError(f"--device {device} was asked for but no CUDA device is available; use --device cpu")
    return "cuda" if device == "multi" else device


def plan_device_map(device: str, model_bytes: int | None, gpu_free_bytes: list[int]) -> str | dict | None:
    """Where to put a model of ``model_bytes`` given the free memory of each visible GPU (pure; tested with fakes).

    None = the CPU; ``{"": i}`` = all of it on GPU i (the one with the most free memory); ``"auto"`` = split by
    accelerate. ``auto`` and ``cuda`` keep the model on one GPU when it fits (splitting a model that fits only
    makes a slower pipeline); a model too large for any one GPU is split. ``multi`` always splits.
    """
    if device not in DEVICES:
        raise DepthpruneError(f"--device {device!r} is not one of: {', '.join(DEVICES)}")
    if device == "cpu" or (device == "auto" and not gpu_free_bytes):
        return None
    if not gpu_free_bytes:
        raise DepthpruneError(f"--device {device} was asked for but no CUDA device is available; use --device cpu")
    if device == "multi":
        return "auto"
    best = max(range(len(gpu_free_bytes)), key=lambda i: (gpu_free_bytes[i], -i))
    if model_bytes is None or model_bytes <= FIT_FRACTION * gpu_free_bytes[best]:
        return {"": best}
    log.warning("the model (%.1f GiB) does not fit on one GPU (%.1f GiB free on the best); splitting it over the "
                "GPUs (device_map='auto')", model_bytes / 2**30, gpu_free_bytes[best] / 2**30)
    return "auto"


def gpu_free_bytes() -> list[int]:
    """Free memory of each visible CUDA device (empty without CUDA)."""
    if not torch.cuda.is_available():
        return []
    return [torch.cuda.mem_get_info(i)[0] for i in range(torch.cuda.device_count())]


def estimate_model_bytes(config, dtype: torch.dtype | str) -> int | None:
    """Weight bytes of a model built from ``config`` in ``dtype`` (tied weights once), without allocating it."""
    from accelerate import init_empty_weights

    try:
        with init_empty_weights():
            model = AutoModelForCausalLM.from_config(config)
        model.tie_weights()  # not applied inside init_empty_weights
    except Exception:  # noqa: BLE001 - an estimate only; the load itself reports real problems
        return None
    if not isinstance(dtype, torch.dtype):
        dtype = getattr(config, "dtype", None) or torch.float16
        dtype = DTYPES.get(dtype, torch.float16) if isinstance(dtype, str) else dtype
    seen, n = set(), 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            n += p.numel()
    return n * torch.empty((), dtype=dtype).element_size()


def _device_map(device: str, config=None, dtype: torch.dtype | str = "auto") -> str | dict | None:
    free = gpu_free_bytes() if device != "cpu" else []
    need = estimate_model_bytes(config, dtype) if config is not None and free else None
    return plan_device_map(device, need, free)


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
    from depthprune.models.embedded import EMBEDDED_ALIASES, embedded_checkpoint

    src = src or "gemma-3-270m"
    torch_dtype = resolve_dtype(dtype, device)
    _effective_device(device)  # a bad --device fails before anything loads
    kwargs = dict(dtype=torch_dtype, device=device)

    if src in EMBEDDED_ALIASES:
        path = embedded_checkpoint(cache_dir)
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
    config = AutoConfig.from_pretrained(path)
    kwargs = _placed(kwargs, config)
    if getattr(config, "depthprune_removed_modules", None):
        model = load_module_pruned(path, config, kwargs)
    else:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    _check_supported(model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model.eval()
    return LoadedModel(model, tokenizer, source)


def load_module_pruned(path: Path, config, kwargs: dict) -> PreTrainedModel:
    """Rebuild a module-pruned checkpoint: the stock class with the listed attention/MLP modules skipped."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    from depthprune.pruning.modules import make_pruned_class

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


def load_gguf(path: Path, kwargs: dict, source: str) -> LoadedModel:
    """Dequantize a GGUF file through transformers; the result can be saved with save_pretrained."""
    directory, name = str(path.parent), path.name
    model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, **_placed(kwargs, None))
    _check_supported(model)
    drop_gguf_marker(model)
    tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=name)
    model.eval()
    return LoadedModel(model, tokenizer, source)


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
    model.eval()
    return LoadedModel(model, tokenizer, repo_id)


def input_device(model: torch.nn.Module) -> torch.device:
    """Where the model expects its input ids (the embedding's device, also under device_map)."""
    return model.get_input_embeddings().weight.device
