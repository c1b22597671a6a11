"""Quantized checkpoints (``depthprune quantize``: compressed-tensors, pack-quantized): detection, sizes, loading.

Transformers and compressed-tensors have no integer-weight kernels for these checkpoints: a model loaded
compressed is decompressed on every forward pass. depthprune therefore dequantizes them once at load
(``CompressedTensorsConfig(dequantize=True)``): the weights are stored in 4 (or 8) bits on disk, and in memory
they are ordinary float ``nn.Linear`` weights of the load dtype. The win is disk (and download) size; for the
speed and memory of integer kernels run the directory in vLLM on a GPU.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from transformers import CompressedTensorsConfig

from depthprune.errors import DepthpruneError

QUANT_INSTALL = "pip install -e '.[quant]' && pip install --no-deps llmcompressor==0.14.0.1"
"""The install of the quantization extra (see the README): compressed-tensors and llmcompressor's runtime
dependencies from the extra, llmcompressor itself without its pins (which would downgrade transformers)."""
LOAD_INSTALL = "pip install -e '.[quant]'"
WEIGHT_SUFFIXES = (".safetensors", ".bin")
QUANT_METHOD = "compressed-tensors"


def weight_files(path: str | Path) -> list[Path]:
    """The weight files of a checkpoint directory (``*.safetensors``, ``*.bin``; not optimizer checkpoints)."""
    path = Path(path)
    return sorted(p for p in path.iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES
                  and p.name not in ("training_args.bin", "optimizer.bin")) if path.is_dir() else []


def checkpoint_bytes(path: str | Path) -> int | None:
    """Bytes of the weight files of a checkpoint directory on disk (None when ``path`` is not a directory)."""
    path = Path(path)
    return sum(p.stat().st_size for p in weight_files(path)) if path.is_dir() else None


def directory_bytes(path: str | Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def quantization_of(config) -> dict | None:
    """The ``quantization_config`` of a config (object or dict) as a dict, or None for a float checkpoint."""
    qc = config.get("quantization_config") if isinstance(config, dict) else getattr(config, "quantization_config",
                                                                                     None)
    if qc is None:
        return None
    return qc if isinstance(qc, dict) else qc.to_dict()


def directory_quantization(path: str | Path) -> dict | None:
    """The ``quantization_config`` in ``path/config.json`` (None when absent or unreadable)."""
    try:
        return quantization_of(json.loads((Path(path) / "config.json").read_text()))
    except (OSError, ValueError):
        return None


def describe(qc: dict) -> dict:
    """Method, format, bits, group size and ignored modules of a compressed-tensors ``quantization_config``."""
    weights = [g.get("weights") or {} for g in (qc.get("config_groups") or {}).values()]
    first = weights[0] if weights else {}
    return {"quant_method": qc.get("quant_method"), "format": qc.get("format"), "bits": first.get("num_bits"),
            "group_size": first.get("group_size"), "strategy": first.get("strategy"),
            "ignore": qc.get("ignore") or []}


def dequantize_kwargs(path: Path, qc: dict) -> dict:
    """``from_pretrained`` kwargs that dequantize a compressed-tensors checkpoint at load (see the module docs)."""
    if qc.get("quant_method") != QUANT_METHOD:
        return {}
    if importlib.util.find_spec("compressed_tensors") is None:
        raise DepthpruneError(f"--model {path} is quantized (compressed-tensors); loading it needs compressed-tensors: "
                              f"{LOAD_INSTALL}")
    return {"quantization_config": CompressedTensorsConfig(dequantize=True)}


def mark_dequantized(model, path: Path, qc: dict) -> dict:
    """Record on ``model`` that it was dequantized from the checkpoint at ``path`` (bench and eval report it)."""
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    info = describe(qc) | {"disk_bytes": checkpoint_bytes(path), "in_memory": f"dequantized to {dtype} at load"}
    model.depthprune_quantization = info
    return info
