"""Token windows: non-overlapping evaluation windows and seeded random calibration samples.

``tokenize`` keeps the last few long texts it tokenized, keyed by a digest of the (fast) tokenizer's definition and
of the text: a book takes seconds to tokenize, and one process scores, prunes and evaluates on the same texts
again and again. Nothing in the ecosystem caches a tokenizer's output across calls, hence this small cache.
"""

from __future__ import annotations

import ctypes
import hashlib
import random
import weakref
from collections import OrderedDict

import torch

from depthprune.errors import DepthpruneError


def bos_id(tokenizer) -> int | None:
    """The BOS id when the tokenizer defines one (Gemma needs it at every window's start)."""
    return getattr(tokenizer, "bos_token_id", None)


_TOKEN_CACHE: OrderedDict[tuple[bytes, bytes], torch.Tensor] = OrderedDict()
_CACHED_TEXTS = 8  # a tokenized book is ~1-3 M ids (8-24 MB)
_CACHE_MIN_CHARS = 100_000  # shorter texts tokenize in milliseconds
_FINGERPRINTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _tokenizer_digest(tokenizer) -> bytes | None:
    """A digest of a fast tokenizer's whole definition (two loads of one tokenizer share it); None otherwise."""
    try:
        return _FINGERPRINTS[tokenizer]
    except (KeyError, TypeError):
        pass
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    digest = hashlib.blake2b(f"{type(tokenizer).__name__}\n{backend.to_str()}".encode(), digest_size=16).digest()
    try:
        _FINGERPRINTS[tokenizer] = digest
    except TypeError:
        pass
    return digest


def tokenize(tokenizer, text: str) -> torch.Tensor:
    """All token ids of ``text``, without special tokens (long texts come from the cache, copied)."""
    fingerprint = _tokenizer_digest(tokenizer) if len(text) >= _CACHE_MIN_CHARS else None
    if fingerprint is None:
        return _tokenize(tokenizer, text)
    key = (fingerprint, hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest())
    if key in _TOKEN_CACHE:
        _TOKEN_CACHE.move_to_end(key)
        return _TOKEN_CACHE[key].clone()
    _TOKEN_CACHE[key] = out = _tokenize(tokenizer, text)
    while len(_TOKEN_CACHE) > _CACHED_TEXTS:
        _TOKEN_CACHE.popitem(last=False)
    return out.clone()


def _tokenize(tokenizer, text: str) -> torch.Tensor:
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
