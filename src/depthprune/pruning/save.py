"""Saving pruned models atomically: a temporary directory beside the target, renamed when complete."""

from __future__ import annotations

import json
import os
from pathlib import Path

from depthprune.core.io import staged_dir
from depthprune.errors import DepthpruneError

PRUNING_FILE = "pruning.json"


def check_output_dir(output: str | os.PathLike, overwrite: bool = False) -> Path:
    """Refuse an existing non-empty ``output`` unless ``overwrite``."""
    out = Path(output)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise DepthpruneError(f"--output {out} exists and is not empty; pass --overwrite or choose another path")
    return out


def save_checkpoint(model, tokenizer, output: str | os.PathLike, extra: dict | None = None,
                    overwrite: bool = False, extra_name: str = PRUNING_FILE,
                    extra_files: dict[str, str] | None = None) -> Path:
    """``save_pretrained`` model and tokenizer (+ ``extra`` as JSON, + text files) into ``output``, all or nothing."""
    out = check_output_dir(output, overwrite)
    with staged_dir(out) as tmp:
        model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if extra is not None:
            (tmp / extra_name).write_text(json.dumps(extra, indent=2) + "\n")
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)
    return out
