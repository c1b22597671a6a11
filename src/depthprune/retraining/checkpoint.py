"""Training checkpoints: atomic directories of Accelerate state plus our progress, and Ctrl-C handling."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from depthprune.errors import DepthpruneError

CHECKPOINTS = "checkpoints"
STATE_FILE = "trainer_state.json"
TRAINABLE_FILE = "trainable.safetensors"
_PREFIX = "step-"


def checkpoint_root(output: str | os.PathLike) -> Path:
    return Path(output) / CHECKPOINTS


def list_checkpoints(output: str | os.PathLike) -> list[Path]:
    """Complete checkpoints of a run, oldest first (temporary directories are ignored)."""
    root = checkpoint_root(output)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.name.startswith(_PREFIX) and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: int(p.name[len(_PREFIX):]))


def latest_checkpoint(output: str | os.PathLike) -> Path:
    """The newest checkpoint under ``output``, or a clear error for ``--resume``."""
    found = list_checkpoints(output)
    if not found:
        raise DepthpruneError(
            f"--resume: no checkpoint under {checkpoint_root(output)} (a run saves one every --save-every steps "
            "and on Ctrl-C); run without --resume to start from scratch"
        )
    return found[-1]


def read_state(ckpt: Path) -> dict:
    return json.loads((ckpt / STATE_FILE).read_text())


def checkpoint_name(step: int) -> str:
    return f"{_PREFIX}{step:08d}"


def save_trainable(model: torch.nn.Module, path: Path) -> None:
    """Parameters that train (all of them for CPT, the adapters for LoRA) as safetensors."""
    tensors = OrderedDict((n, p.detach().cpu().contiguous()) for n, p in model.named_parameters() if p.requires_grad)
    save_file(tensors, str(path), metadata={"format": "pt"})


def load_trainable(model: torch.nn.Module, path: Path) -> None:
    """Load what :func:`save_trainable` wrote, refusing a checkpoint of another configuration."""
    state = load_file(str(path))
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if set(state) != set(params):
        extra, missing = sorted(set(state) - set(params)), sorted(set(params) - set(state))
        raise DepthpruneError(
            f"--resume: checkpoint {path.parent} was made with another model or LoRA setup "
            f"({len(missing)} trainable tensors missing, {len(extra)} unexpected, e.g. "
            f"{(missing or extra)[0]}); resume with the same arguments or use a new --output"
        )
    with torch.no_grad():
        for name, p in params.items():
            if state[name].shape != p.shape:
                raise DepthpruneError(f"--resume: tensor {name} has shape {tuple(state[name].shape)} in the "
                                      f"checkpoint but {tuple(p.shape)} in the model; use a new --output")
            p.copy_(state[name].to(p.device, p.dtype))


def prune_old(output: str | os.PathLike, keep: int) -> None:
    if keep < 1:
        return
    for old in list_checkpoints(output)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def rng_snapshot() -> dict:
    """Python, NumPy, torch (and CUDA) RNG states, to rewind to the start of an interrupted step."""
    snap = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        snap["cuda"] = torch.cuda.get_rng_state_all()
    return snap


def rng_restore(snap: dict) -> None:
    random.setstate(snap["python"])
    np.random.set_state(snap["numpy"])
    torch.set_rng_state(snap["torch"])
    if "cuda" in snap:
        torch.cuda.set_rng_state_all(snap["cuda"])


class StopRequest:
    """SIGINT/SIGTERM ask the loop to finish its step, checkpoint and stop; a second Ctrl-C aborts at once."""
    def __init__(self, announce: bool = True):
        self.requested = False
        self.announce = announce
        self._old: dict = {}

    def _handle(self, signum, frame) -> None:
        if self.requested:
            self._restore()
            raise KeyboardInterrupt
        self.requested = True
        if self.announce:
            print("\nStopping: finishing this step and saving a checkpoint (Ctrl-C again to abort)", flush=True)

    def _restore(self) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old = {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        self._restore()
