"""Perplexity results kept by model identity, so the pipeline never computes the same one twice.

One experiment often evaluates the same weights more than once: a rerun that adds zero-shot tasks to a finished
eval stage, variants that end up removing the same blocks (calibration volumes that agree), the dense baseline.
A perplexity depends only on the weights, config, tokenizer, dtype, the dataset and the window settings, so its
result is stored under a digest of all of them and of the depthprune, torch and transformers versions (delete
the directory to recompute).
The fingerprints are the zero-shot cache's (``zeroshot_cache``); a hit returns the stored result itself.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

from depthprune.core.io import write_json_atomic
from depthprune.core.versions import library_versions
from depthprune.evaluation.zeroshot_cache import (
    config_fingerprint,
    model_dtype,
    tokenizer_fingerprint,
    weights_fingerprint,
)


def model_identity(model, tokenizer) -> dict:
    """What a perplexity depends on besides its settings."""
    cfg = model.config
    return {"model_type": cfg.model_type, "dtype": model_dtype(model),
            "removed_modules": getattr(cfg, "depthprune_removed_modules", None),
            "weights_sha256": weights_fingerprint(model), "config_sha256": config_fingerprint(cfg),
            "tokenizer_sha256": tokenizer_fingerprint(tokenizer), "versions": library_versions()}


def cached(cache_dir: str | Path, identity: dict, dataset: str, settings: dict,
           compute: Callable[[], dict]) -> tuple[dict, bool]:
    """``compute()``'s result (a JSON-ready dict) for this model and setting, from ``cache_dir`` when there.

    Returns (result, whether it came from the cache).
    """
    key = {"identity": identity, "dataset": dataset, "settings": settings}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:24]
    path = Path(cache_dir) / f"{digest}.json"
    if path.is_file():
        try:
            stored = json.loads(path.read_text())
            if stored.get("key") == json.loads(json.dumps(key, default=str)):
                return stored["result"], True
        except (OSError, ValueError, KeyError):
            pass  # unreadable: compute again and overwrite
    result = compute()
    write_json_atomic(path, {"key": key, "result": result})
    return result, False
