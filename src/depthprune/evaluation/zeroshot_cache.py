"""Resumable zero-shot runs: lm-eval's per-request SQLite cache, tied to the model it was made for.

lm-eval's ``use_cache`` (``CachingLM``) stores each loglikelihood under a hash of the request strings only, so
the same directory reused with another model would silently return the first model's answers. Here a cache
directory holds a ``manifest.json`` naming the model (a fingerprint of its weights, its config, the removed
blocks, dtype, tokenizer, backend, lm-eval version) and the database file name carries the same identity.
Opening a directory made for anything else raises :class:`CacheMismatchError` listing what differs.
"""

from __future__ import annotations

import hashlib
import json
from importlib.metadata import version
from pathlib import Path

import torch

from depthprune.errors import DepthpruneError
from depthprune.models.placement import named_tensors

MANIFEST = "manifest.json"
FORMAT = 1
_SAMPLE = 4096  # elements hashed per tensor (evenly strided), on top of its float64 sum
_VOLATILE_CONFIG = {"_name_or_path", "transformers_version", "torch_dtype", "dtype", "_attn_implementation_autoset",
                    "_attn_implementation", "attn_implementation", "_commit_hash", "use_cache"}


class CacheMismatchError(DepthpruneError):
    """The cache directory was made for another model (or backend, dtype, tokenizer...)."""


def _tensor_digest(h, t: torch.Tensor) -> None:
    flat = t.detach().reshape(-1)
    step = max(1, flat.numel() // _SAMPLE)
    h.update(flat[::step][:_SAMPLE].float().cpu().numpy().tobytes())
    h.update(repr(float(flat.sum(dtype=torch.float64))).encode())


def weights_fingerprint(model) -> str:
    """sha256 over every parameter's and buffer's name, shape, dtype, a strided sample of it and its sum."""
    h = hashlib.sha256()
    with torch.no_grad():
        seen = set()
        for name, t, values in named_tensors(model):
            h.update(f"{name}|{tuple(t.shape)}|{t.dtype}|".encode())
            if id(t) in seen:  # tied weights: the name is enough, don't hash twice
                continue
            seen.add(id(t))
            if t.numel():
                _tensor_digest(h, values)
    return h.hexdigest()


def config_fingerprint(config) -> str:
    d = {k: v for k, v in config.to_dict().items() if k not in _VOLATILE_CONFIG}
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()


def tokenizer_fingerprint(tokenizer) -> str:
    h = hashlib.sha256()
    vocab = tokenizer.get_vocab()
    h.update(json.dumps(sorted(vocab.items(), key=lambda kv: kv[1]), ensure_ascii=False).encode())
    h.update(repr((tokenizer.bos_token_id, tokenizer.eos_token_id, getattr(tokenizer, "pad_token_id", None))).encode())
    h.update(repr(tokenizer("Hello world. Question: x?\nAnswer: y").input_ids).encode())
    return h.hexdigest()


def model_dtype(model) -> str:
    return str(next(model.parameters()).dtype).removeprefix("torch.")


def cache_identity(model, tokenizer, backend: str, add_bos_token: bool = True, max_length: int | None = None) -> dict:
    """What a cached answer depends on; two runs may share a cache only when all of it is equal."""
    cfg = model.config
    n_layers = getattr(cfg, "num_hidden_layers", None) or getattr(cfg, "num_layers", None)
    return {
        "format": FORMAT,
        "model_type": cfg.model_type,
        "num_layers": n_layers,
        "removed_modules": getattr(cfg, "depthprune_removed_modules", None),
        "dtype": model_dtype(model),
        "backend": backend,
        "add_bos_token": bool(add_bos_token),
        "max_length": max_length,
        "lm_eval_version": version("lm_eval"),
        "weights_sha256": weights_fingerprint(model),
        "config_sha256": config_fingerprint(cfg),
        "tokenizer_sha256": tokenizer_fingerprint(tokenizer),
    }


def cache_key(identity: dict) -> str:
    """A short hash of a cache identity: names the database file and, in a pipeline run, its directory."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def open_cache(cache_dir: str | Path, identity: dict) -> str:
    """The ``use_cache`` prefix for ``simple_evaluate`` in ``cache_dir``; refuses a directory made for another model.

    A new (or empty) directory gets the manifest; an existing one must have an identical manifest.
    """
    d = Path(cache_dir)
    if d.exists() and not d.is_dir():
        raise DepthpruneError(f"zero-shot cache {d}: exists and is not a directory")
    path = d / MANIFEST
    if path.exists():
        try:
            old = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise CacheMismatchError(f"zero-shot cache {d}: unreadable {MANIFEST} ({exc}); use another directory") \
                from None
        keys = sorted(set(old) | set(identity))
        diff = {k: (old.get(k), identity.get(k)) for k in keys if old.get(k) != identity.get(k)}
        if diff:
            lines = "; ".join(f"{k}: cache has {_short(a)}, this run {_short(b)}" for k, (a, b) in diff.items())
            raise CacheMismatchError(
                f"zero-shot cache {d} was made for another model or setting ({lines}); refusing to reuse its "
                "answers. Use a new directory (or delete this one) for this model")
    elif d.exists() and any(p.suffix == ".db" for p in d.iterdir()):
        raise CacheMismatchError(f"zero-shot cache {d}: has database files but no {MANIFEST}; its model is unknown, "
                                 "refusing to reuse it. Use a new directory")
    else:
        d.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(identity, indent=2) + "\n")
        tmp.replace(path)
    return str(d / f"lm_cache_{cache_key(identity)}")


def _short(v) -> str:
    s = json.dumps(v)
    return s if len(s) <= 24 else s[:20] + "..."


def close_cache(lm) -> None:
    """Flush and close the SQLite cache lm-eval attached to ``lm`` (so a later run in this process sees it)."""
    hook = getattr(lm, "cache_hook", None)
    db = getattr(hook, "dbdict", None)
    if db is not None:
        db.close()
        hook.dbdict = None
