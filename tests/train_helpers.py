"""Helpers shared by the training tests (CPT, LoRA, KD): the CLI, the training log, DDP over two CPU processes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from safetensors.torch import load_file

from depthprune.cli import main

ROOT = Path(__file__).resolve().parents[1]
ACCELERATE = Path(sys.executable).parent / "accelerate"
TRAIN_ARGS = ["--seq-len", "24", "--batch-size", "4", "--micro-batch-size", "2", "--lr", "3e-3", "--log-every", "1",
              "--warmup-steps", "2", "--no-progress", "--save-every", "0"]


def run(*argv) -> int:
    return main([str(a) for a in argv])


def log_of(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def assert_ddp_matches_single(common: list, single: Path, double: Path) -> None:
    """``common`` (a retrain command with ``--micro-batch-size 1 --cpu``) in one process, then in two DDP
    processes over gloo: the same losses and weights (1e-4)."""
    assert run(*common, "--output", single) == 0
    env = dict(os.environ, OMP_NUM_THREADS="1", TRANSFORMERS_VERBOSITY="error")
    # accelerate's own --cpu launcher starts one process (several need mpirun); --multi_gpu starts torchrun
    # workers, and depthprune's --cpu puts them on the CPU with the gloo backend
    cmd = [str(ACCELERATE), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
           "-m", "depthprune.cli", *map(str, common), "--output", str(double)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 process(es) x 2 accumulation" in proc.stdout
    for a, b in zip(log_of(single), log_of(double), strict=True):
        assert abs(a["loss"] - b["loss"]) < 1e-4 * a["loss"]
    wa, wb = load_file(single / "model.safetensors"), load_file(double / "model.safetensors")
    assert max(float((wa[k] - wb[k]).abs().max()) for k in wa) < 1e-4


def assert_resumed_equals_uninterrupted(full: Path, resumed: Path, steps: int) -> None:
    """A run interrupted and resumed logged every step once and ended with the uninterrupted run's weights."""
    a_log, b_log = log_of(full), log_of(resumed)
    assert [r["step"] for r in b_log] == list(range(1, steps + 1))
    for a, b in zip(a_log, b_log):
        assert abs(a["loss"] - b["loss"]) < 1e-5
    wa, wb = load_file(full / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert wa.keys() == wb.keys()
    assert max(float((wa[k] - wb[k]).abs().max()) for k in wa) < 1e-5
