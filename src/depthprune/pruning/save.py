"""Saving pruned models atomically (a temporary directory beside the target, renamed when complete)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from depthprune.core.io import staged_dir
from depthprune.errors import DepthpruneError
from depthprune.importance.plot import plot_block_scores
from depthprune.pruning.module_surgery import REMOTE_CODE_FILE, remote_code_files

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


def save_pruned(result, output: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write a ``PruneResult``: the checkpoint, ``pruning.json``, remote code when needed, ``scores.png``."""
    if result.model is None:
        raise DepthpruneError("this PruneResult holds no model (it was built from scores only); nothing to save")
    files = remote_code_files(result.model)
    out = save_checkpoint(result.model, result.tokenizer, output, result.info, overwrite=overwrite,
                          extra_files=files)
    if result.scores is not None and result.selection is not None:
        plot_block_scores(result.scores, out / "scores.png", removed=result.selection.removed,
                          protected=result.selection.protected)
    return out


def load_instructions_for(out: Path) -> str:
    """How the saved checkpoint loads (printed after saving)."""
    if (out / REMOTE_CODE_FILE).is_file():
        return "depthprune.load, or AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)"
    return "AutoModelForCausalLM.from_pretrained"
