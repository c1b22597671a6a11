"""Token windows: non-overlapping evaluation windows and seeded random calibration samples."""

from __future__ import annotations

import ctypes
import random

import torch

from depthprune.errors import DepthpruneError


def bos_id(tokenizer) -> int | None:
    """The BOS id when the tokenizer defines one (Gemma needs it at every window's start)."""
    return getattr(tokenizer, "bos_token_id", None)


def tokenize(tokenizer, text: str) -> torch.Tensor:
    """All token ids of ``text``, without special tokens."""
    ids = tokenizer(text, add_special_tokens=False, return_attention_mask=False)["input_ids"]
    out = torch.tensor(ids, dtype=torch.long)
    del ids
    release_freed_memory()
    return out


def release_freed_memory() -> None:
    """Hand memory freed by a large tokenization back to the OS (glibc keeps it otherwise; ~0.15 GB for a book).

    Later peaks (Taylor scoring, training) then start from a lower resident baseline. No-op off glibc.
    """
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def with_bos(windows: torch.Tensor, bos: int | None) -> torch.Tensor:
    """Prepend BOS to every row when there is one: windows of L text tokens become inputs of L+1."""
    if bos is None:
        return windows
    return torch.cat([torch.full((windows.shape[0], 1), bos, dtype=windows.dtype), windows], dim=1)


def check_seq_len(seq_len: int, name: str = "--seq-len") -> None:
    if not isinstance(seq_len, int) or seq_len < 2:
        raise DepthpruneError(f"{name} must be an integer >= 2, got {seq_len}")


BOS_MODES = ("every", "first", "none")
"""Where BOS goes in perplexity windows: before every window (Gemma needs it; the default), once before the whole
text (the paper's LLaMA/Vicuna numbers: windows cut from [BOS] + text), or nowhere."""


def bos_windows(ids: torch.Tensor, bos: int | None, seq_len: int, mode: str = "every",
                limit: int | None = None) -> torch.Tensor:
    """Model inputs for perplexity, as the official Shortened-LLaMA code builds them.

    ``every``: windows of ``seq_len`` text tokens, each with BOS prepended (``seq_len + 1`` inputs, ``seq_len``
    predicted); ``first``: BOS prepended once to the whole text, then cut into windows of ``seq_len`` (only the
    first window starts with BOS); ``none``: windows of ``seq_len`` text tokens. Without a BOS token every mode
    is ``none``.
    """
    if mode not in BOS_MODES:
        raise DepthpruneError(f"--bos {mode!r} is not one of: {', '.join(BOS_MODES)}")
    if bos is None or mode == "none":
        return eval_windows(ids, seq_len, limit)
    if mode == "first":
        return eval_windows(torch.cat([torch.tensor([bos], dtype=ids.dtype), ids]), seq_len, limit)
    return with_bos(eval_windows(ids, seq_len, limit), bos)


def effective_bos_mode(tokenizer, mode: str) -> str:
    """The mode actually applied (``none`` when the tokenizer has no BOS)."""
    return "none" if bos_id(tokenizer) is None else mode


def eval_windows(ids: torch.Tensor, seq_len: int, limit: int | None = None) -> torch.Tensor:
    """Non-overlapping windows of ``seq_len`` text tokens (the partial tail is dropped), first ``limit``."""
    check_seq_len(seq_len)
    if limit is not None and limit < 1:
        raise DepthpruneError(f"--limit must be a positive number of windows, got {limit}")
    n = ids.numel() // seq_len
    if n == 0:
        raise DepthpruneError(f"the text has {ids.numel()} tokens, fewer than one window of {seq_len}")
    if limit is not None:
        n = min(n, limit)
    return ids[: n * seq_len].view(n, seq_len)


def sample_windows(ids: torch.Tensor, n: int, seq_len: int, seed: int = 0) -> torch.Tensor:
    """``n`` random windows of ``seq_len`` tokens, reproducible from ``seed``."""
    check_seq_len(seq_len, "--calib-seq-len")
    if n < 1:
        raise DepthpruneError(f"--calib-samples must be >= 1, got {n}")
    if ids.numel() <= seq_len:
        raise DepthpruneError(f"calibration text has {ids.numel()} tokens; need more than {seq_len}")
    rng = random.Random(seed)
    starts = [rng.randrange(0, ids.numel() - seq_len) for _ in range(n)]
    return torch.stack([ids[s : s + seq_len] for s in starts])
