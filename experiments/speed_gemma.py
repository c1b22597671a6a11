"""Inference speed of Gemma 3 270M: dense vs depth-pruned by 4 and by 6 blocks (PPL criterion).

Runs ``depthprune bench`` with the paper's protocol (12 input tokens, M in {1, 4}, L = 128, 10 warm-ups,
mean of 20 runs) and prints the Markdown table; JSON, Markdown and the latency-throughput plot go to --out.

    python experiments/speed_gemma.py runs/gemma-ppl-4 runs/gemma-ppl-6 --make

The two pruned checkpoints are given as directories; with ``--make`` a missing one is produced first with
``depthprune prune --criterion ppl --num-blocks K`` (scoring takes a few minutes on CPU). Speed does not depend
on which blocks go for Gemma 3 at L <= 512 (sliding window 512), so ``--criterion magnitude`` makes quick
stand-ins for a smoke run.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from depthprune.cli import main as depthprune


def ensure_pruned(directory: Path, blocks: int, make: bool, criterion: str, device: str) -> None:
    """Check ``directory`` holds the model pruned by ``blocks`` blocks, or prune it with ``--make``."""
    if (directory / "config.json").is_file():
        info = directory / "pruning.json"
        if info.is_file():
            removed = json.loads(info.read_text()).get("removed_blocks", [])
            if len(removed) != blocks:
                print(f"warning: {directory} had {len(removed)} blocks removed, not {blocks}", file=sys.stderr)
        return
    cmd = ["prune", "--model", "gemma-3-270m", "--criterion", criterion, "--num-blocks", str(blocks),
           "--output", str(directory), "--eval-windows", "0", "--device", device]
    if not make:
        sys.exit(f"{directory} is not a checkpoint; make it with: depthprune {' '.join(cmd)}  (or pass --make)")
    print(f"Pruning Gemma 3 270M by {blocks} blocks ({criterion}) into {directory} ...", flush=True)
    if depthprune(cmd) != 0:
        sys.exit(f"pruning into {directory} failed")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("pruned4", type=Path, help="checkpoint pruned by 4 blocks")
    p.add_argument("pruned6", type=Path, help="checkpoint pruned by 6 blocks")
    p.add_argument("--make", action="store_true", help="prune missing checkpoints first")
    p.add_argument("--criterion", default="ppl", help="criterion for --make (default ppl)")
    p.add_argument("--batch-sizes", default="1,4")
    p.add_argument("--output-lengths", default="128")
    p.add_argument("--warmup", default="10")
    p.add_argument("--runs", default="20")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--threads", default=None, help="CPU threads for torch")
    p.add_argument("--out", type=Path, default=Path("runs/speed_gemma"), help="where bench.json/.md/.png go")
    args = p.parse_args(argv)

    ensure_pruned(args.pruned4, 4, args.make, args.criterion, args.device)
    ensure_pruned(args.pruned6, 6, args.make, args.criterion, args.device)
    cmd = ["bench", "--model", "gemma-3-270m", "--model", str(args.pruned4), "--model", str(args.pruned6),
           "--batch-sizes", args.batch_sizes, "--output-lengths", args.output_lengths, "--warmup", args.warmup,
           "--runs", args.runs, "--device", args.device, "--json", str(args.out / "bench.json"),
           "--markdown", str(args.out / "bench.md"), "--plot", str(args.out / "bench.png")]
    if args.threads:
        cmd += ["--threads", args.threads]
    return depthprune(cmd)


if __name__ == "__main__":
    sys.exit(main())
