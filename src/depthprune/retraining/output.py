"""Writing a retrained model into the run directory: staged in a temporary directory, then moved in."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from depthprune.core.versions import library_versions
from depthprune.errors import DepthpruneError
from depthprune.pruning.module_surgery import REMOTE_CODE_FILE
from depthprune.pruning.save import PRUNING_FILE
from depthprune.retraining.engine import set_activation_checkpointing

RETRAIN_FILE = "retrain.json"
SAVE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def source_dir(model_src: str | None) -> Path | None:
    """The local checkpoint directory a model was loaded from, if any."""
    if not model_src:
        return None
    path = Path(model_src).expanduser()
    return path if (path / "config.json").is_file() else None


def check_save_dtype(name: str) -> None:
    if name != "auto" and name not in SAVE_DTYPES:
        raise DepthpruneError(f"--save-dtype must be auto or one of {', '.join(SAVE_DTYPES)}, got {name!r}")


def cast_for_save(model: torch.nn.Module, name: str) -> torch.nn.Module:
    """``auto`` keeps the training dtype; otherwise cast floating-point weights before saving."""
    return model if name == "auto" else model.to(SAVE_DTYPES[name])


def versions() -> dict:
    return library_versions("accelerate", "peft")


def write_final(output: str | os.PathLike, writer: Callable[[Path], None], model_src: str | None,
                info: dict) -> Path:
    """``writer(tmp)`` saves the model; ``pruning.json`` of the input (if any) and ``retrain.json`` join it.

    Entries are moved into ``output`` one by one, ``retrain.json`` last, so its presence marks a finished run.
    """
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".final-", dir=out))
    try:
        writer(tmp)
        src = source_dir(model_src)
        for name in (PRUNING_FILE, REMOTE_CODE_FILE):  # the pruning record; a module-pruned model's code
            if src is not None and (src / name).is_file() and not (tmp / name).exists():
                shutil.copy2(src / name, tmp / name)
        (tmp / RETRAIN_FILE).write_text(json.dumps(info | {"versions": versions()}, indent=2) + "\n")
        stale = out / RETRAIN_FILE
        stale.unlink(missing_ok=True)
        for entry in sorted(tmp.iterdir(), key=lambda p: p.name == RETRAIN_FILE):
            target = out / entry.name
            if target.is_dir():
                shutil.rmtree(target)
            os.replace(entry, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def prepare_for_export(lm: torch.nn.Module) -> None:
    """Undo training-only settings so the saved config is the usual inference one."""
    set_activation_checkpointing(lm, False)
    if hasattr(lm, "config"):
        lm.config.use_cache = True
    lm.eval()
