"""Dtype and device policy: which dtype ``auto`` means, and where a model goes (one GPU, several, the CPU).

``plan_device_map`` is a pure function of the model's size and each GPU's free memory, so it is tested with
fake sizes; the size comes from the config, built on the meta device (nothing allocated).
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import torch
from accelerate import init_empty_weights
from accelerate.utils import named_module_tensors
from transformers import AutoModelForCausalLM

from depthprune.errors import DepthpruneError

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEVICES = ("auto", "cpu", "cuda", "multi")
DEVICE_HELP = ("auto: one GPU when the model fits on it, split over the GPUs (device_map='auto') only when it "
               "does not, the CPU without GPUs; cuda: one GPU; multi: always split over all visible GPUs; cpu")
FIT_FRACTION = 0.85
"""Share of a GPU's free memory the weights may take for the model to count as fitting (the rest: activations,
KV cache, the allocator's slack)."""


AUTO_BF16_ON_CPU = False
"""Whether ``--dtype auto`` picks bfloat16 on CPUs with native bf16 instructions (see docs/results/dtype_*.md)."""


@functools.cache
def cpu_has_native_bf16() -> bool:
    """True on x86 CPUs with AVX-512 BF16 or AMX (Linux: read from /proc/cpuinfo); False when unknown."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(f in flags.split() for f in ("avx512_bf16", "amx_bf16"))


NATIVE_BF16 = "bfloat16-if-native"
"""A dtype choice for work that bf16 does not change beyond its noise (zero-shot accuracy): bfloat16 on a GPU or
a CPU with native bf16 instructions, float32 elsewhere (emulated bf16 matmuls are several times slower than
float32 on an AVX2-only CPU)."""


def native_bf16_or_float32(device: str = "auto") -> str:
    """``bfloat16`` where ``device`` computes it natively (CUDA, or a CPU with AVX-512 BF16 / AMX), else float32."""
    native = _effective_device(device) != "cpu" or cpu_has_native_bf16()
    return "bfloat16" if native else "float32"


def resolve_dtype(dtype: str | torch.dtype, device: str) -> torch.dtype | str:
    """``auto``: the checkpoint's dtype on GPUs; on CPUs float32, or bfloat16 where it is native and enabled."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        if _effective_device(device) != "cpu":
            return "auto"
        return torch.bfloat16 if AUTO_BF16_ON_CPU and cpu_has_native_bf16() else torch.float32
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


def named_tensors(model):
    """``(name, tensor on the model, its values)`` of every parameter (duplicates kept) then buffer, in
    ``named_parameters`` / ``named_buffers`` order. Weights that accelerate offloaded (a ``meta`` placeholder on the
    model, the values in the hook's ``weights_map``, on CPU or disk) are read back one at a time, so nothing reads
    a meta tensor; the placeholder is what ties (one object under two names) are told by."""
    offloaded = {}  # full name -> (weights map, its key)
    for mod_name, module in model.named_modules():
        hook = getattr(module, "_hf_hook", None)
        for hk in getattr(hook, "hooks", [hook]) if hook is not None else []:
            wmap = getattr(hk, "weights_map", None)
            if not getattr(hk, "offload", False) or wmap is None:
                continue
            for rel, t in named_module_tensors(module, include_buffers=hk.offload_buffers,
                                               recurse=hk.place_submodules):
                if t.device.type == "meta":
                    offloaded[f"{mod_name}.{rel}" if mod_name else rel] = (wmap, rel)
    for name, t in [*model.named_parameters(remove_duplicate=False), *model.named_buffers()]:
        values = t
        if t.device.type == "meta" and name in offloaded:
            wmap, key = offloaded[name]
            values = wmap[key]
        yield name, t, values
