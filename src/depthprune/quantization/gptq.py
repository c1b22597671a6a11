"""GPTQ through llmcompressor: which layers are quantized, the checks before anything runs, and the one call.

llmcompressor (vLLM's quantization library) is optional: it is imported only here, only when quantizing, so the
rest of depthprune never needs it. Its GPTQ quantizes every ``nn.Linear`` but the ones ignored (the LM head:
with tied embeddings, as in Gemma, it *is* the input embedding matrix) one block at a time on calibration
activations, with per-group symmetric integer scales, and saves compressed-tensors' ``pack-quantized`` format.
"""

from __future__ import annotations

import importlib.util
import os
import time

import torch
import torch.nn as nn
from datasets import Dataset

from depthprune.errors import DepthpruneError
from depthprune.models.quantized import QUANT_INSTALL
from depthprune.quantization.options import QuantizeOptions

LIBRARY = "llmcompressor"
LIBRARIES = ("llmcompressor", "compressed-tensors", "datasets", "accelerate")
"""Distributions whose versions go into quantization.json."""


def require_library() -> None:
    """Fail with the install command when llmcompressor (or compressed-tensors) is missing."""
    needed = (("llmcompressor", "llmcompressor"), ("compressed-tensors", "compressed_tensors"))
    missing = [dist for dist, module in needed if importlib.util.find_spec(module) is None]
    if missing:
        raise DepthpruneError(f"quantization needs {' and '.join(missing)} (not installed): {QUANT_INSTALL}")


def head_module_names(model) -> list[str]:
    """Names of the modules that hold the LM head (the output embeddings), which stay unquantized."""
    head = model.get_output_embeddings()
    return [name for name, mod in model.named_modules() if head is not None and mod is head]


def quantized_layers(model) -> list[tuple[str, nn.Linear]]:
    """The ``nn.Linear`` layers GPTQ quantizes: all of them except the LM head."""
    skip = set(head_module_names(model))
    return [(name, mod) for name, mod in model.named_modules() if isinstance(mod, nn.Linear) and name not in skip]


def check_group_size(layers: list[tuple[str, nn.Linear]], group_size: int) -> None:
    """Refuse a group size that does not divide every quantized layer's input features (nothing has run yet)."""
    if not layers:
        raise DepthpruneError("the model has no Linear layers to quantize (besides the LM head)")
    bad = [(name, mod.in_features) for name, mod in layers if mod.in_features % group_size]
    if not bad:
        return
    shown = ", ".join(f"{name} ({n})" for name, n in bad[:4]) + (f" and {len(bad) - 4} more" if len(bad) > 4 else "")
    widths = {mod.in_features for _, mod in layers}
    fits = [g for g in (256, 128, 64, 32, 16, 8) if all(w % g == 0 for w in widths)]
    hint = f"group sizes that divide every layer: {', '.join(map(str, fits))}" if fits else "no power of two fits"
    raise DepthpruneError(f"--group-size {group_size} does not divide the input features of {len(bad)} of "
                          f"{len(layers)} layers to quantize: {shown}; {hint}")


def gptq_recipe(opts: QuantizeOptions, ignore: list[str]) -> dict:
    """The GPTQModifier settings: symmetric integer weights per group, 16-bit activations (``W{bits}A16``)."""
    weights = {"num_bits": opts.bits, "type": "int", "symmetric": True, "strategy": "group",
               "group_size": opts.group_size}
    return {"ignore": ignore, "dampening_frac": opts.dampening,
            "config_groups": {"group_0": {"targets": ["Linear"], "weights": weights}}}


def run_gptq(model, tokenizer, input_ids: torch.Tensor, opts: QuantizeOptions, ignore: list[str],
             verbose: bool = False) -> float:
    """Calibrate and quantize ``model`` in place (llmcompressor ``oneshot``); returns the seconds it took.

    ``model`` must have been loaded from a local directory (``config._name_or_path``): llmcompressor reads the
    original config.json from there when it saves.
    """
    if not verbose:  # llmcompressor logs every layer (INFO, METRIC = 38); read when it is imported
        os.environ.setdefault("LLM_COMPRESSOR_LOG_LEVEL", "ERROR")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import llmcompressor.modifiers.quantization  # optional library (the quant extra): only quantizing needs it

    data = Dataset.from_dict({"input_ids": input_ids.tolist(),
                              "attention_mask": torch.ones_like(input_ids).tolist()})
    modifier = llmcompressor.modifiers.quantization.GPTQModifier(**gptq_recipe(opts, ignore))
    start = time.perf_counter()
    llmcompressor.oneshot(model=model, processor=tokenizer, dataset=data, recipe=modifier,
                          num_calibration_samples=input_ids.shape[0], max_seq_length=input_ids.shape[1],
                          shuffle_calibration_samples=False)
    return time.perf_counter() - start
